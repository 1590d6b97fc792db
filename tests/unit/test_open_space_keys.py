"""Keys of open spaces shared between independent nodes: every home's default key
has an id of its own (its fingerprint), an entry no held key reads waits for a key
instead of being refused (unless the held key is the one its id names), the waiting
is reported, and ``loomdb.connect(home, space=S)`` writes with the space's key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anyio
import pytest

import loomdb
from loomdb.documents import Database, KeyWait
from loomdb.entries.entry import build_entry
from loomdb.errors import MissingKeyError, ValidationError
from loomdb.identity.keyring import Keyring
from loomdb.identity.keys import NamedKey, SigningKey, fingerprinted_key_id, key_fingerprint
from loomdb.node.databases import NodeDatabases
from loomdb.node.home import LEGACY_DEFAULT_KEY_ID, NodeHome
from loomdb.stores import MemoryStore
from loomdb.sync.replicate import sync
from tests.doc_support import all_entries, make_home, share_keys

pytestmark = pytest.mark.anyio

DEFAULT_ID = re.compile(r"default-[a-z2-7]{26}@1\Z")


# --- the key-id rule ---------------------------------------------------------------------


def test_each_new_home_has_a_default_key_id_of_its_own(tmp_path: Path) -> None:
    a, b = NodeHome.open(tmp_path / "a", environ={}), NodeHome.open(tmp_path / "b", environ={})
    for home in (a, b):
        key = home.default_key
        assert DEFAULT_ID.match(key.key_id), key.key_id
        assert key.key_id == fingerprinted_key_id("default", key.secret)
        assert key.names_its_material
        assert key.secret.hex() not in key.key_id
    assert a.default_key.key_id != b.default_key.key_id
    reopened = NodeHome.open(tmp_path / "a", environ={})
    assert reopened.default_key == a.default_key  # kept, not made again


def test_fingerprints_are_stable_distinct_and_name_only_their_material() -> None:
    secret = bytes(range(32))
    assert key_fingerprint(secret) == key_fingerprint(bytes(range(32)))
    assert len(key_fingerprint(secret)) == 26
    assert key_fingerprint(secret) != key_fingerprint(bytes(32))
    key = NamedKey(fingerprinted_key_id("team", secret, 3), secret)
    assert key.key_id.startswith("team-") and key.key_id.endswith("@3")
    assert key.names_its_material
    assert not NamedKey(key.key_id, bytes(32)).names_its_material  # a forged id
    assert not NamedKey(LEGACY_DEFAULT_KEY_ID, secret).names_its_material
    assert not NamedKey(key.key_id.replace("@3", "@x"), secret).names_its_material


def test_a_home_that_wrote_under_default_at_1_keeps_reading_it(tmp_path: Path) -> None:
    """A keyring of format 1 holding ``default@1`` (what every home had): the home
    keeps that key for reading, and writes with a fingerprinted default from now on."""
    path = tmp_path / "old"
    legacy = NamedKey.generate(LEGACY_DEFAULT_KEY_ID)
    old = NodeHome.open(path, environ={})
    user = old.user.to_dict()
    (path / "keyring.json").write_text(
        json.dumps(
            {
                "format": "loomdb-keyring",
                "version": 1,
                "encryption": "none",
                "keys": {
                    "node_key": old.keyring.node_key.seed.hex(),
                    "users": [user],
                    "default_user": user["user_id"],
                    "named_keys": [{"key_id": legacy.key_id, "secret": legacy.secret.hex()}],
                },
            }
        )
    )

    async def scenario() -> None:
        home = NodeHome.open(path, environ={})
        assert home.keyring.get_named_key(LEGACY_DEFAULT_KEY_ID) == legacy
        assert DEFAULT_ID.match(home.default_key.key_id)
        assert json.loads((path / "keyring.json").read_text())["version"] == 2
        async with await Database.open(home, key=legacy) as db:  # as the old home wrote
            await db.collection("c").create({"v": 1}, id="old")
        (path / "views.db").unlink()  # rebuilt from the entries, with the home's keys
        async with await Database.open(NodeHome.open(path, environ={})) as db:
            assert (await db.collection("c").get("old")).value == {"v": 1}
            await db.collection("c").update("old", {"v": 2})
            kids = [e.key_id for e in await all_entries(db)]
            assert kids == [LEGACY_DEFAULT_KEY_ID, home.default_key.key_id]

    anyio.run(scenario)


def test_importing_keys(tmp_path: Path) -> None:
    ring = Keyring.open(tmp_path / "k.json", None)
    mine = NamedKey.generate_fingerprinted("default")
    assert ring.import_key(mine) and not ring.import_key(mine)
    with pytest.raises(ValidationError, match="fingerprint"):
        ring.import_key(NamedKey(mine.key_id, bytes(32)))  # no other key is that key
    first, second = NamedKey.generate("default@1"), NamedKey.generate("default@1")
    assert ring.import_key(first) and ring.import_key(second)  # two nodes' default@1
    ring.set_default_key(mine.key_id)
    ring.save()
    again = Keyring.open(tmp_path / "k.json", None)
    assert again.keys_for("default@1") == [first, second]
    assert again.default_key == mine and again.fingerprint() == ring.fingerprint()
    with pytest.raises(ValidationError):
        again.set_default_key("missing@1")


# --- entries that wait for a key ---------------------------------------------------------


async def legacy_peers(tmp: Path) -> tuple[Database, Database]:
    """Two homes of before the fingerprints: each writes with a ``default@1`` of its own."""
    return (
        await Database.open(make_home(tmp / "a", NamedKey.generate(LEGACY_DEFAULT_KEY_ID))),
        await Database.open(make_home(tmp / "b", NamedKey.generate(LEGACY_DEFAULT_KEY_ID))),
    )


async def test_other_material_under_a_held_id_waits_for_the_key(tmp_path: Path) -> None:
    a, b = await legacy_peers(tmp_path)
    try:
        await a.collection("notes").create({"t": "hi"}, id="n1")
        await a.collection("notes").update("n1", {"t": "hi!"})
        await b.put_entries([e.raw for e in await all_entries(a)])
        assert (await b.stats())["states"] == {"pending": 2}  # not refused
        with pytest.raises(MissingKeyError, match="2 entries wait for key 'default@1'"):
            await b.collection("notes").get("n1")
        history = await b.collection("notes").history("n1")
        assert [h.state for h in history] == ["pending", "pending"]
        assert [h.waits_for_key for h in history] == ["default@1", "default@1"]
        assert history[0].reason is not None and "other material" in history[0].reason
        assert await b.waiting_for_key() == KeyWait(2, ("default@1",))
        assert await b.waiting_for_key(["other"]) == KeyWait(0, ())

        assert b.home.keyring.import_key(a.home.default_key)  # B is given A's key
        assert await b.retry_pending() == 2
        assert (await b.collection("notes").get("n1")).value == {"t": "hi!"}
        assert await b.waiting_for_key() == KeyWait(0, ())
        assert [h.waits_for_key for h in await b.collection("notes").history("n1")] == [None] * 2
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_key_imported_while_closed_is_used_on_open(tmp_path: Path) -> None:
    a = await Database.open(make_home(tmp_path / "a"))
    b_home = make_home(tmp_path / "b")
    b = await Database.open(b_home)
    try:
        await a.collection("notes").create({"t": "hi"}, id="n1")
        await b.put_entries([e.raw for e in await all_entries(a)])
        wanted = a.home.default_key.key_id
        assert await b.waiting_for_key() == KeyWait(1, (wanted,))
        (item,) = await b.collection("notes").history("n1")
        assert (item.state, item.key_id, item.waits_for_key) == ("pending", wanted, wanted)
    finally:
        await b.aclose()
    ring = Keyring.open(b_home.path / "keyring.json", None)  # the library call a user makes
    ring.import_key(a.home.default_key)
    ring.save()
    try:
        async with await Database.open(NodeHome.open(b_home.path, environ={})) as again:
            assert (await again.collection("notes").get("n1")).value == {"t": "hi"}
            assert await again.waiting_for_key() == KeyWait(0, ())
    finally:
        await a.aclose()


async def test_a_payload_the_key_its_id_names_cannot_open_is_refused(tmp_path: Path) -> None:
    a = await Database.open(make_home(tmp_path / "a"))
    b = await Database.open(make_home(tmp_path / "b"))
    share_keys(a.home, b.home)
    try:
        await a.collection("notes").create({"t": "real"}, id="n1")
        key = a.home.default_key
        forged = build_entry(
            author=SigningKey.generate(),
            space="main",
            collection="notes",
            document="n2",
            kind="create",
            payload=b"\x00" * 16,
            created_at=1,
            key=NamedKey(key.key_id, bytes(32)),  # other material under A's key's id
        )
        await b.put_entries([*(e.raw for e in await all_entries(a)), forged.raw])
        assert (await b.collection("notes").get("n1")).value == {"t": "real"}
        (item,) = await b.collection("notes").history("n2")
        assert item.state == "refused" and item.waits_for_key is None
        assert item.reason is not None and "does not authenticate" in item.reason
        assert await b.waiting_for_key() == KeyWait(0, ())
    finally:
        await a.aclose()
        await b.aclose()


async def test_the_sync_report_counts_entries_waiting_for_a_key(tmp_path: Path) -> None:
    a = await Database.open(make_home(tmp_path / "a"), store=MemoryStore())
    b = await Database.open(make_home(tmp_path / "b"), store=MemoryStore())
    try:
        await a.collection("notes").create_many([{"i": i} for i in range(3)], ids=["x", "y", "z"])
        await a.collection("notes").update("x", {"i": 9})
        report = await sync(b, a)
        assert report.pulled == 4 and not report.rejected
        assert report.waiting_for_key == 4
        assert report.keys_wanted == [a.home.default_key.key_id]
        assert report.as_dict()["waiting_for_key"] == 4
        b.home.keyring.import_key(a.home.default_key)
        await b.retry_pending()
        again = await sync(b, a)
        assert again.waiting_for_key == 0 and again.keys_wanted == []
        assert (await b.collection("notes").get("x")).value == {"i": 9}
    finally:
        await a.aclose()
        await b.aclose()


# --- connect(home, space=S) --------------------------------------------------------------


def test_connect_to_a_managed_space_writes_with_the_space_key(tmp_path: Path) -> None:
    """A script on A's home writes a managed space: B, a member, accepts and reads it."""

    async def setup() -> str:
        a = await NodeDatabases.open(NodeHome.open(tmp_path / "a", environ={}), "main")
        b = await NodeDatabases.open(NodeHome.open(tmp_path / "b", environ={}), "main")
        try:
            space: str = (await a.trust.create_space("team"))["space"]
            added = await a.trust.add_user(space, b.trust.card(), ["read", "write"], "*")
            await b.trust.join(added["invitation"])
            return space
        finally:
            await a.aclose()
            await b.aclose()

    space = anyio.run(setup)
    with loomdb.connect(tmp_path / "a", space=space) as db:
        db.collection("notes").create({"t": "from a script"}, id="n1")

    async def check() -> None:
        a = await NodeDatabases.open(NodeHome.open(tmp_path / "a", environ={}), "main")
        b = await NodeDatabases.open(NodeHome.open(tmp_path / "b", environ={}), "main")
        try:
            held = [e for e in await all_entries(await a.get(space)) if e.space == space]
            written = [e for e in held if e.collection == "notes"]
            notes_key = await a.trust.key_for(space, "notes")  # made by that first write
            assert [e.key_id for e in written] == [notes_key.key_id]
            results = await b.put_entries([e.raw for e in held])  # its directory, and the note
            assert {r.status.value for r in results} <= {"accepted", "duplicate"}
            got = await (await b.get(space)).collection("notes").get("n1")
            assert got.value == {"t": "from a script"}
        finally:
            await a.aclose()
            await b.aclose()

    anyio.run(check)
