"""Documents in a managed space: two nodes' ``NodeDatabases`` over guarded SQLite
stores, synced in process. Writes are checked and keyed by the directory; a
document whose entries wait for a key reads as "no key"."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loomdb.entries.entry import Entry
from loomdb.errors import (
    ForbiddenError,
    MissingKeyError,
    NotFoundError,
    RevokedError,
    ValidationError,
)
from loomdb.node.databases import NodeDatabases
from loomdb.node.home import NodeHome
from loomdb.stores import SQLiteStore
from loomdb.sync.replicate import SyncScope, sync
from loomdb.trust.admin import NodeTrust
from loomdb.trust.book import DirectoryBook
from loomdb.trust.guard import GuardedStore
from loomdb.trust.spaces import DIRECTORY_COLLECTION, make_space_id

pytestmark = pytest.mark.anyio


@dataclass
class Peer:
    trust: NodeTrust
    dbs: NodeDatabases
    store: GuardedStore

    @property
    def user_id(self) -> str:
        return self.trust.user_id


async def all_entries(peer: Peer) -> list[Entry]:
    out: list[Entry] = []
    after = 0
    while batch := await peer.store.scan(after, 1000):
        out += [r.entry for r in batch]
        after = batch[-1].seq
    return out


@pytest.fixture
async def peers(tmp_path: Path) -> AsyncIterator[tuple[Peer, Peer]]:
    made: list[Peer] = []
    for name in ("a", "b"):
        home = NodeHome.open(tmp_path / name, environ={})
        inner = SQLiteStore(tmp_path / f"{name}.db")
        book = DirectoryBook()
        await book.load(inner)
        store = GuardedStore(inner, book)
        trust = NodeTrust(home, store, book)
        dbs = NodeDatabases(home, store, trust, "main")
        await dbs.start()
        made.append(Peer(trust, dbs, store))
    try:
        yield made[0], made[1]
    finally:
        for peer in made:
            await peer.dbs.aclose()
            await peer.store.aclose()


async def invite(a: Peer, b: Peer, space: str, roles: list[str], coll: str) -> None:
    inv = (await a.trust.add_user(space, b.trust.card(), roles, coll))["invitation"]
    await b.trust.join(inv)


async def test_a_member_reads_documents_written_after_it_was_invited(
    peers: tuple[Peer, Peer],
) -> None:
    a, b = peers
    space = (await a.trust.create_space("team"))["space"]
    await invite(a, b, space, ["read", "write"], "notes")
    notes = (await a.dbs.get(space)).collection("notes")
    await notes.create({"title": "one"}, id="n1")
    await notes.create({"title": "two"}, id="n2")
    await (await a.dbs.get(space)).collection("todo").create({"task": "x"}, id="t1")
    b_db = await b.dbs.get(space)
    report = await sync(b.dbs, a.dbs, SyncScope(space))
    assert not report.rejected
    got = b_db.collection("notes")
    assert (await got.get("n1")).value == {"title": "one"}
    assert sorted(d.id for d in await got.list()) == ["n1", "n2"]
    # the entries are under the notes key, which B was granted
    kids = {e.key_id for e in await all_entries(b) if e.collection == "notes"}
    notes_key = await a.trust.key_for(space, "notes")
    assert kids == {notes_key.key_id}
    assert await b.trust.key_for(space, "notes") == notes_key


async def test_a_member_reads_documents_written_before_it_was_invited(
    peers: tuple[Peer, Peer],
) -> None:
    """A writes notes, then invites B with read on notes. The notes written so far
    were encrypted with the *space* key (``current_key`` falls back to it while
    ``notes`` has no key of its own); inviting B makes a notes key and grants B
    only that one, so B can never read the notes A wrote before: they wait for a
    key forever."""
    a, b = peers
    space = (await a.trust.create_space("team"))["space"]
    notes = (await a.dbs.get(space)).collection("notes")
    await notes.create({"title": "early"}, id="early")
    await invite(a, b, space, ["read", "write"], "notes")
    b_db = await b.dbs.get(space)
    report = await sync(b.dbs, a.dbs, SyncScope(space))
    assert not report.rejected
    assert (await b_db.collection("notes").get("early")).value == {"title": "early"}


async def test_a_member_writes_its_collection_and_the_admin_reads_it(
    peers: tuple[Peer, Peer],
) -> None:
    a, b = peers
    space = (await a.trust.create_space("team"))["space"]
    await invite(a, b, space, ["read", "write"], "notes")
    await a.dbs.get(space)
    b_notes = (await b.dbs.get(space)).collection("notes")
    await b_notes.create({"by": "b"}, id="from-b")
    report = await sync(b.dbs, a.dbs, SyncScope(space))
    assert report.pushed >= 1 and not report.rejected
    assert (await (await a.dbs.get(space)).collection("notes").get("from-b")).value == {"by": "b"}


async def test_a_write_outside_the_members_roles_is_refused_locally(
    peers: tuple[Peer, Peer],
) -> None:
    a, b = peers
    space = (await a.trust.create_space("team"))["space"]
    await invite(a, b, space, ["read", "write"], "notes")
    b_db = await b.dbs.get(space)
    before = await b.store.count()
    with pytest.raises(ForbiddenError):
        await b_db.collection("todo").create({"task": "sneaky"}, id="t1")
    with pytest.raises(ValidationError):  # not a collection name at all
        await b_db.collection(DIRECTORY_COLLECTION).create({"op": "x"}, id="log")
    assert await b.store.count() == before
    with pytest.raises(NotFoundError):
        await b_db.collection("todo").get("t1")
    # its own collection still works
    await b_db.collection("notes").create({"ok": True}, id="fine")
    assert await b.store.count() == before + 1


async def test_after_revocation_new_documents_wait_for_a_key_and_old_ones_stay_readable(
    peers: tuple[Peer, Peer],
) -> None:
    a, b = peers
    space = (await a.trust.create_space("team"))["space"]
    await invite(a, b, space, ["read", "write"], "notes")
    a_notes = (await a.dbs.get(space)).collection("notes")
    await a_notes.create({"v": 1}, id="old")
    b_db = await b.dbs.get(space)
    await sync(b.dbs, a.dbs, SyncScope(space))
    assert (await b_db.collection("notes").get("old")).value == {"v": 1}

    rotated = (await a.trust.revoke_user(space, b.user_id))["rotated"]
    assert rotated and all(k.endswith("@2") for k in rotated)
    await a_notes.create({"v": 2}, id="new")
    await a_notes.update("old", {"v": 1, "edited": True})
    assert (await a.trust.key_for(space, "notes")).key_id in rotated
    # The access layer is not involved here: B gets A's entries in process.
    report = await sync(b.dbs, a.store, SyncScope(space))
    assert report.pulled >= 3 and not report.rejected
    b_notes = b_db.collection("notes")
    with pytest.raises(MissingKeyError, match="no key"):
        await b_notes.get("new")
    # A's edit of "old" is under the new key too: the document now waits for it
    with pytest.raises(MissingKeyError, match="no key"):
        await b_notes.get("old")
    # and B may not write any more
    with pytest.raises(RevokedError):
        await b_notes.create({"late": True}, id="late")


async def test_after_revocation_untouched_documents_stay_readable(
    peers: tuple[Peer, Peer],
) -> None:
    a, b = peers
    space = (await a.trust.create_space("team"))["space"]
    await invite(a, b, space, ["read", "write"], "notes")
    a_notes = (await a.dbs.get(space)).collection("notes")
    await a_notes.create({"v": 1}, id="old")
    b_db = await b.dbs.get(space)
    await sync(b.dbs, a.dbs, SyncScope(space))
    await a.trust.revoke_user(space, b.user_id)
    await a_notes.create({"v": 2}, id="new")
    await sync(b.dbs, a.store, SyncScope(space))
    b_notes = b_db.collection("notes")
    assert (await b_notes.get("old")).value == {"v": 1}
    with pytest.raises(MissingKeyError, match="no key"):
        await b_notes.get("new")
    assert b.trust.refresh_keys() == []


async def test_the_default_space_works_unchanged(peers: tuple[Peer, Peer]) -> None:
    a, _ = peers
    await a.trust.create_space("team")
    main = await a.dbs.get()
    assert main is a.dbs.default and main.space == "main"
    await main.collection("notes").create({"plain": True}, id="p")
    assert (await main.collection("notes").get("p")).value == {"plain": True}
    (entry,) = [e for e in await all_entries(a) if e.space == "main"]
    assert entry.key_id == a.dbs.home.default_key.key_id
    assert await a.dbs.get("main") is main


async def test_spaces_the_node_does_not_hold(peers: tuple[Peer, Peer]) -> None:
    a, b = peers
    with pytest.raises(NotFoundError, match="join"):
        await a.dbs.get(make_space_id("team", b.user_id))
    with pytest.raises(ValidationError):
        await a.dbs.get("team~not-a-user")
