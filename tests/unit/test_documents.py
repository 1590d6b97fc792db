"""The document layer on real SQLite files: CRUD, values, schema, CRDT merges,
causal delivery, refusals, history, rebuilding views."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cbor2
import loro
import pytest

from loomdb.documents import Counter, Database, Text, crdt
from loomdb.documents.views import SCHEMA_DOC
from loomdb.entries.entry import build_entry
from loomdb.errors import (
    ConflictError,
    MissingKeyError,
    NotFoundError,
    QueryError,
    SchemaError,
    ValidationError,
)
from loomdb.identity.keys import NamedKey
from tests.doc_support import all_entries, exchange, make_home, open_peers

pytestmark = pytest.mark.anyio

PEOPLE = {
    "fields": {
        "name": {"type": "string", "required": True},
        "age": "int",
        "bio": "text",
        "likes": "counter",
    },
    "indexes": ["age"],
}


@pytest.fixture
async def db(tmp_path: Path) -> Any:
    (one,) = await open_peers(tmp_path, 1)
    yield one
    await one.aclose()


async def test_crud(db: Database) -> None:
    people = db.collection("people")
    ada = await people.create({"name": "Ada", "age": 36}, id="ada")
    assert ada.value == {"name": "Ada", "age": 36} and len(ada.heads) == 1
    assert (await people.get("ada")).value == ada.value
    updated = await people.update("ada", {"age": 37, "city": "London"})
    assert updated.value == {"name": "Ada", "age": 37, "city": "London"}
    assert (await people.update("ada", {}, unset=["city"])).value == {"name": "Ada", "age": 37}
    assert [d.id for d in await people.list()] == ["ada"]
    with pytest.raises(ConflictError):
        await people.create({"name": "again"}, id="ada")
    await people.delete("ada")
    with pytest.raises(NotFoundError):
        await people.get("ada")
    with pytest.raises(NotFoundError):
        await people.update("ada", {"age": 1})
    assert await people.list() == []
    # re-creating a deleted document starts from the new value only
    again = await people.create({"name": "Ada II"}, id="ada")
    assert again.value == {"name": "Ada II"}
    assert [h.kind for h in await people.history("ada")] == [
        "create",
        "change",
        "change",
        "delete",
        "create",
    ]


async def test_values_round_trip(db: Database) -> None:
    value = {
        "s": "x", "i": -(2**63), "j": 2**63 - 1, "f": 1.5, "t": True, "n": None,
        "b": b"\x00\xff", "m": {"a": {"b": [1, {"c": "d"}]}}, "l": [1, "two", [3.0]],
        "text": Text("hello"), "count": Counter(5),
    }  # fmt: skip
    doc = await db.collection("v").create(value, id="d")
    expected = dict(value, text="hello", count=5)
    assert doc.value == expected
    assert (await db.collection("v").get("d")).value == expected


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "bad",
    [
        {"i": 2**63},
        {"f": math.nan},
        {"f": math.inf},
        {"$x": 1},
        {"a.b": 1},
        {"o": object()},
        {"deep": _nested(40)},
    ],
)
async def test_bad_values_refused_and_nothing_stored(db: Database, bad: dict[str, Any]) -> None:
    before = await db.store.count()
    with pytest.raises(ValidationError):
        await db.collection("v").create(bad)
    assert await db.store.count() == before


async def test_schema(db: Database) -> None:
    info = await db.create_collection("people", PEOPLE)
    assert info.schema is not None and info.indexes == ("age",)
    people = db.collection("people")
    before = await db.store.count()
    with pytest.raises(SchemaError, match="age"):
        await people.create({"name": "Bob", "age": "old"})
    with pytest.raises(SchemaError, match="required"):
        await people.create({"age": 3})
    assert await db.store.count() == before
    bob = await people.create({"name": "Bob", "bio": "hi", "likes": 1}, id="bob")
    with pytest.raises(SchemaError):
        await people.update("bob", {"name": 5})
    assert (await people.increment("bob", "likes", 2)).value["likes"] == 3
    edited = await people.edit_text("bob", "bio", index=2, insert=" there")
    assert edited.value["bio"] == "hi there"
    assert (await people.get("bob")).value == {"name": "Bob", "bio": "hi there", "likes": 3}
    assert bob.id == "bob"
    with pytest.raises(SchemaError):
        await db.set_schema("people", {"fields": {"name": "int"}})
    with pytest.raises(SchemaError):
        await db.create_collection("x", {"fields": {"a": "nonsense"}})
    # the schema is stored as entries of the collection's schema document
    kinds = {e.kind for e in await all_entries(db) if e.document == SCHEMA_DOC}
    assert kinds == {"schema"}


async def test_bad_arguments(db: Database) -> None:
    with pytest.raises(ValidationError):
        db.collection("$bad")
    with pytest.raises(ValidationError):
        await db.collection("c").create({"a": 1}, id="$x")
    with pytest.raises(ValidationError):
        await db.collection("c").create(["not", "a", "map"])  # type: ignore[arg-type]
    with pytest.raises(QueryError):
        await db.collection("c").query([{"field": "a", "op": "like", "value": 1}])
    with pytest.raises(QueryError):
        await db.collection("c").query([{"field": "a", "op": "gt", "value": [1]}])
    with pytest.raises(QueryError):
        await db.collection("c").query(limit=-1)


async def test_create_many_is_one_batch_all_or_nothing(db: Database) -> None:
    await db.create_collection("people", PEOPLE)
    people = db.collection("people")
    before = await db.store.count()
    puts: list[int] = []
    put_entries = db.store.put_entries
    try_put_entries = db.store.try_put_entries  # type: ignore[attr-defined]

    async def counting(entries: Any) -> Any:
        puts.append(len(entries))
        return await put_entries(entries)

    def counting_now(entries: Any) -> Any:  # small batches are stored without a thread hop
        puts.append(len(entries))
        return try_put_entries(entries)

    db.store.put_entries = counting  # type: ignore[method-assign]
    db.store.try_put_entries = counting_now  # type: ignore[attr-defined]
    made = await people.create_many(
        [{"name": f"p{i}", "age": i} for i in range(50)], ids=[f"p{i}" for i in range(49)] + [None]
    )
    assert puts == [50]  # one store batch, one entry per document
    assert [d.id for d in made[:3]] == ["p0", "p1", "p2"] and len(made[-1].id) == 32
    assert await people.count() == 50 and (await people.get("p7")).value == {"name": "p7", "age": 7}
    assert await db.store.count() == before + 50

    refused: list[tuple[list[Any], list[Any], type[Exception], int]] = [
        ([{"name": "a"}, {"name": "b", "age": "old"}], ["a", "b"], SchemaError, 1),
        ([{"name": "a"}, {"name": "b"}, {"f": math.nan}], [None, None, None], ValidationError, 2),
        ([{"name": "a"}, {"name": "b"}], ["a", "$b"], ValidationError, 1),
        ([{"name": "a"}, {"name": "b"}], ["new", "p3"], ConflictError, 1),  # exists
        ([{"name": "a"}, {"name": "b"}, {"name": "c"}], ["x", "y", "x"], ConflictError, 2),
    ]
    for values, ids, error, index in refused:
        with pytest.raises(error) as info:
            await people.create_many(values, ids=ids)
        assert info.value.index == index, (values, ids)
        assert await db.store.count() == before + 50  # nothing of the batch was written
        assert await people.count() == 50
    with pytest.raises(NotFoundError):
        await people.get("a")
    with pytest.raises(SchemaError) as single:
        await people.create({"age": "old"})
    assert single.value.index is None  # one document: not a batch
    assert await people.create_many([]) == []


async def test_names_that_are_not_one_url_segment_are_refused(db: Database) -> None:
    for name in (".", "..", " ", " people", "people ", "a/b", "$x", "a\n"):
        with pytest.raises(ValidationError):
            await db.create_collection(name)
        with pytest.raises(ValidationError):
            await db.collection("c").create({"a": 1}, id=name)
    for name in ("a b", "c:batch", "...", "%2F", "ü"):
        assert (await db.create_collection(name)).name == name
    assert not await db.collection("nothing").exists()
    assert await db.collection("a b").exists()


async def test_queries(db: Database) -> None:
    people = db.collection("people")
    await people.create_many(
        [
            {"name": f"p{i}", "age": i, "tags": ["even" if i % 2 == 0 else "odd"],
             "addr": {"city": "Paris" if i < 5 else "Rome"}}
            for i in range(10)
        ],
        ids=[f"p{i}" for i in range(10)],
    )  # fmt: skip
    await people.create({"name": "no age"}, id="x")

    async def ids(where: Any, **kw: Any) -> list[str]:
        return [d.id for d in await people.query(where, **kw)]

    assert await ids([{"field": "age", "op": "eq", "value": 3}]) == ["p3"]
    assert len(await ids([{"field": "age", "op": "ne", "value": 3}])) == 10
    assert await ids([{"field": "age", "op": "lt", "value": 2}]) == ["p0", "p1"]
    assert await ids([{"field": "age", "op": "lte", "value": 1}]) == ["p0", "p1"]
    assert await ids([{"field": "age", "op": "gt", "value": 7}]) == ["p8", "p9"]
    assert await ids([{"field": "age", "op": "gte", "value": 8}]) == ["p8", "p9"]
    assert await ids([{"field": "age", "op": "in", "value": [1, 4]}]) == ["p1", "p4"]
    assert len(await ids([{"field": "tags", "op": "contains", "value": "odd"}])) == 5
    assert await ids([{"field": "name", "op": "contains", "value": "age"}]) == ["x"]
    assert await ids([{"field": "age", "op": "exists", "value": False}]) == ["x"]
    assert len(await ids([{"field": "addr.city", "op": "eq", "value": "Rome"}])) == 5
    assert await ids(None, sort=[{"field": "age", "order": "desc"}], limit=3) == [
        "p9", "p8", "p7"
    ]  # fmt: skip
    assert await ids(None, sort="age:desc", limit=2, offset=1) == ["p8", "p7"]
    assert await people.count([{"field": "age", "op": "gte", "value": 5}]) == 5
    where = [{"field": "age", "op": "gt", "value": 5}]
    assert "ix_" not in await people.explain(where)
    await people.create_index("age")
    assert "ix_" in await people.explain(where)  # the expression index on age
    assert await ids(where) == ["p6", "p7", "p8", "p9"]


async def test_history_and_versions(db: Database) -> None:
    notes = db.collection("notes")
    await notes.create({"title": "v1"}, id="n")
    await notes.update("n", {"title": "v2"})
    await notes.update("n", {"title": "v3", "extra": 1})
    history = await notes.history("n")
    assert [h.kind for h in history] == ["create", "change", "change"]
    assert history[1].parents == (history[0].cid,)
    assert [h.height for h in history] == [1, 2, 3]
    assert history[0].author == db.home.user.signing_key.public_key.hex()
    assert history[0].created_at < history[2].created_at
    old = await notes.get_version("n", history[1].cid)
    assert old.value == {"title": "v2"}
    with pytest.raises(NotFoundError):
        await notes.get_version("n", "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")


async def test_concurrent_edits_converge(tmp_path: Path) -> None:
    a, b = await open_peers(tmp_path, 2)
    try:
        doc = await a.collection("c").create(
            {"x": 0, "y": 0, "same": "a0", "n": Counter(0), "t": Text("hello world")}, id="d"
        )
        assert doc.value["t"] == "hello world"
        await exchange(a, b)
        ca, cb = a.collection("c"), b.collection("c")
        await ca.update("d", {"x": 1, "same": "from a"})
        await cb.update("d", {"y": 2, "same": "from b"})
        await ca.increment("d", "n", 3)
        await cb.increment("d", "n", 4)
        await ca.edit_text("d", "t", index=0, insert="A: ")
        await cb.edit_text("d", "t", index=11, insert=" (b)")
        await exchange(a, b, seed=1)
        va, vb = (await ca.get("d")).value, (await cb.get("d")).value
        assert va == vb
        assert va["x"] == 1 and va["y"] == 2 and va["n"] == 7
        assert va["same"] in ("from a", "from b")
        assert va["t"] == "A: hello world (b)"
        assert sorted((await ca.get("d")).heads) == sorted((await cb.get("d")).heads)
        assert len((await ca.get("d")).heads) == 2
        # a later edit on one side merges both heads
        merged = await ca.update("d", {"z": 1})
        assert len(merged.heads) == 1 and len((await ca.history("d"))[-1].parents) == 2
    finally:
        await a.aclose()
        await b.aclose()


async def test_child_before_parent_waits_then_applies(tmp_path: Path) -> None:
    a, b = await open_peers(tmp_path, 2)
    try:
        c = a.collection("c")
        await c.create({"v": 0}, id="d")
        for i in range(1, 5):
            await c.update("d", {"v": i})
        entries = await all_entries(a)
        raws = [e.raw for e in reversed(entries)]
        await b.put_entries(raws[:2])  # the two newest: nothing can apply
        with pytest.raises(NotFoundError):
            await b.collection("c").get("d")
        states = (await b.stats())["states"]
        assert states == {"pending": 2}
        await b.put_entries(raws[2:] + raws[:1])  # the rest, and a duplicate
        assert (await b.collection("c").get("d")).value == {"v": 4}
        assert (await b.stats())["states"] == {"applied": 5}
    finally:
        await a.aclose()
        await b.aclose()


def _forged(
    db: Database, delta: bytes, parents: Any = (), salt: bytes = b"s" * 16, **kw: Any
) -> Any:
    fields = {"space": db.space, "collection": "c", "document": "d", "kind": "change"}
    fields.update(kw)
    return build_entry(
        author=db.home.user.signing_key,
        payload=crdt.encode_payload(salt, delta),
        created_at=1,
        parents=parents,
        key=db.home.default_key,
        **fields,
    )


async def test_refusals(tmp_path: Path) -> None:
    a, b = await open_peers(tmp_path, 2)
    try:
        first = (await a.collection("c").create({"v": 1}, id="d")).heads
        (root,) = await all_entries(a)
        await b.put_entries([root.raw])
        author = a.home.user.signing_key.public_key
        salt = b"s" * 16

        # ops under a peer id that is not derived from the author → refused
        other = loro.LoroDoc()
        other.peer_id = 12345
        other.get_map("root").insert("v", 666)
        other.commit()
        stolen = _forged(a, other.export(loro.ExportMode.Updates(loro.VersionVector())))
        # a correctly bound delta, but with a parent of another document → refused
        mine = loro.LoroDoc()
        mine.peer_id = crdt.writer_peer(author, a.space, "c", "d", salt)
        mine.get_map("root").insert("v", 2)
        mine.commit()
        delta = mine.export(loro.ExportMode.Updates(loro.VersionVector()))
        other_doc = _forged(a, delta, parents=[root], document="e")
        # garbage payload → refused
        garbage = build_entry(
            author=a.home.user.signing_key, space=a.space, collection="c", document="d",
            kind="change", payload=b"\xff", created_at=1, parents=[root], key=a.home.default_key,
        )  # fmt: skip
        # a child of a refused entry is refused too
        child = _forged(a, b"", parents=[stolen])
        await b.put_entries([stolen.raw, other_doc.raw, garbage.raw, child.raw])
        history = {h.cid: h for h in await b.collection("c").history("d")}
        assert history[str(stolen.cid)].state == "refused"
        assert "another writer" in (history[str(stolen.cid)].reason or "")
        assert history[str(garbage.cid)].state == "refused"
        assert history[str(child.cid)].state == "refused"
        assert (await b.collection("c").get("d")).value == {"v": 1}
        assert (await b.collection("c").get("d")).heads == first
        refused = (await b.stats())["states"]["refused"]
        assert refused == 4
        # the forged payload decodes; it was the binding that refused it
        assert cbor2.loads(stolen.decrypt(a.home.default_key))["s"] == salt
    finally:
        await a.aclose()
        await b.aclose()


async def test_entry_without_key_waits(tmp_path: Path) -> None:
    team = NamedKey.generate("team@1")
    (b,) = await open_peers(tmp_path / "b", 1)
    a = await Database.open(make_home(tmp_path / "a", team), key=team)  # b lacks team@1
    try:
        await a.collection("c").create({"secret": 1}, id="d")
        await b.put_entries([e.raw for e in await all_entries(a)])
        assert await b.store.count() == await a.store.count()
        with pytest.raises(MissingKeyError, match="no key 'team@1'"):
            await b.collection("c").get("d")  # held but unreadable: "no key", not "not found"
        assert (await b.stats())["states"] == {"pending": 1}
        await a.collection("c").update("d", {"secret": 2})
        await b.put_entries([e.raw for e in await all_entries(a)])
        assert (await b.stats())["states"] == {"pending": 2}
        b.home.keyring.add_named_key(team)  # the key arrives
        assert await b.retry_pending() == 2
        assert (await b.collection("c").get("d")).value == {"secret": 2}
    finally:
        await a.aclose()
        await b.aclose()


async def test_views_rebuild_and_catch_up(tmp_path: Path) -> None:
    (a,) = await open_peers(tmp_path, 1)
    home = a.home
    c = a.collection("c")
    await a.create_collection("c", {"fields": {"n": "int"}, "indexes": ["n"]})
    await c.create_many([{"n": i} for i in range(20)], ids=[f"d{i}" for i in range(20)])
    await c.update("d3", {"n": 33})
    await a.aclose()
    # a crash between the store and the views: the views are behind the store
    (home.path / "views.db").unlink()
    db = await Database.open(home)
    try:
        assert (await db.collection("c").get("d3")).value == {"n": 33}
        assert await db.collection("c").count() == 20
        assert (await db.collection_info("c")).indexes == ("n",)
        assert len(await db.collection("c").history("d3")) == 2
    finally:
        await db.aclose()


async def test_reopen_keeps_writing_with_a_fresh_writer(tmp_path: Path) -> None:
    (a,) = await open_peers(tmp_path, 1)
    home = a.home
    await a.collection("c").create({"n": 1}, id="d")
    await a.aclose()
    db = await Database.open(home)
    try:
        doc = await db.collection("c").update("d", {"n": 2})
        assert doc.value == {"n": 2}
        history = await db.collection("c").history("d")
        assert [h.state for h in history] == ["applied", "applied"]
    finally:
        await db.aclose()


def test_blocking_facade(tmp_path: Path) -> None:
    import loomdb

    with loomdb.connect(tmp_path / "home") as db:
        notes = db.collection("notes")
        notes.create({"title": "hello", "n": Counter(1)}, id="n1")
        notes.increment("n1", "n", 2)
        assert notes.get("n1").value == {"title": "hello", "n": 3}
        assert [d.id for d in notes.query([{"field": "n", "op": "gt", "value": 2}])] == ["n1"]
        assert db.collection_info("notes").documents == 1
        with pytest.raises(NotFoundError):
            notes.get("missing")
    with loomdb.connect(tmp_path / "home") as db:  # reopened: still there
        assert db.collection("notes").get("n1").value["n"] == 3


def test_writer_peer_is_the_hash_of_the_length_prefixed_parts() -> None:
    """The derivation is part of the protocol: pinned to its definition, part by part."""
    import hashlib

    from loomdb.documents.crdt import writer_peer

    parts = (b"\x01" * 32, "main", "items", "d\u00e9", b"\x02" * 16)
    h = hashlib.blake2b(digest_size=8, person=b"loomdb-peer-v1")
    for part in (p if isinstance(p, bytes) else p.encode() for p in parts):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    want = int.from_bytes(h.digest(), "big") >> 1
    assert writer_peer(*parts) == want  # type: ignore[arg-type]
