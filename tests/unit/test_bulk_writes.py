"""The bulk-write path's shortcuts give what the general code gives."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import cbor2
import pytest

from loomdb.documents import Counter, Database, Text, crdt
from loomdb.documents.values import MAX_DEPTH, check_value, from_json
from loomdb.errors import ConflictError, EntryTooLargeError, ValidationError
from loomdb.stores.base import PutStatus
from loomdb.stores.sqlite import SQLiteStore
from tests.doc_support import all_entries, open_peers

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(tmp_path: Path) -> Any:
    (one,) = await open_peers(tmp_path, 1)
    yield one
    await one.aclose()


@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_payload_is_cbor2s_encoding(size: int) -> None:
    salt, delta = os.urandom(crdt.SALT_SIZE), os.urandom(size)
    payload = crdt.encode_payload(salt, delta)
    assert payload == cbor2.dumps({"s": salt, "d": delta})
    assert crdt.decode_payload(payload) == (salt, delta)


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize("leaf", ["s", 1, 1.5, True, None, b"x"])
def test_plain_fields_checked_in_line_as_before(leaf: Any) -> None:
    check_value(_nested(MAX_DEPTH, leaf))  # a plain value at depth 32: stored
    with pytest.raises(ValidationError, match="nested deeper than 32 levels"):
        check_value(_nested(MAX_DEPTH + 1, leaf))
    with pytest.raises(ValidationError, match="nested deeper than 32 levels"):
        check_value(_nested(MAX_DEPTH, [leaf]))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": {"b": 2**63}}, "value.a.b: integer out of the 64-bit range"),
        ({"a": -(2**63) - 1}, "value.a: integer out of the 64-bit range"),
        ({"a": float("nan")}, "value.a: NaN and infinities are not stored"),
        ({"a": {"b": float("inf")}}, "value.a.b: NaN and infinities are not stored"),
        ({"a": object()}, "value.a: cannot store a object"),
    ],
)
def test_bad_plain_fields_named_as_before(value: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_value(value)
    assert caught.value.message == message


def test_from_json_keeps_plain_values_and_decodes_tags() -> None:
    got = from_json({"a": 1, "b": "x", "c": None, "d": {"$text": "t"}, "e": [{"$bytes": "AA=="}]})
    assert got == {"a": 1, "b": "x", "c": None, "d": Text("t"), "e": [b"\x00"]}
    with pytest.raises(ValidationError, match=r"value.f: unknown tag '\$x'"):
        from_json({"a": 1, "f": {"$x": 1, "y": 2}})


async def test_create_many_ids_is_create_many_without_documents(db: Database) -> None:
    coll = db.collection("c")
    values = [
        {"n": i, "t": Text("x"), "c": Counter(i), "m": {"k": [1, {"z": None}]}} for i in range(5)
    ]
    ids = await coll.create_many_ids(values, ids=["a", None, "b", None, "c"])
    assert len(ids) == 5 and ids[0] == "a" and ids[2] == "b" and ids[4] == "c"
    assert len(set(ids)) == 5
    for i, doc_id in enumerate(ids):
        got = await coll.get(doc_id)
        assert got.value == {"n": i, "t": "x", "c": i, "m": {"k": [1, {"z": None}]}}
        assert len(got.heads) == 1
    with pytest.raises(ConflictError) as caught:
        await coll.create_many_ids([{"n": 9}, {"n": 10}], ids=["new", "b"])
    assert caught.value.index == 1
    assert await coll.count() == 5  # "new" was not written either
    states = await db.stats()
    assert states["entries"] == len(await all_entries(db)) == 5


async def test_new_rows_take_the_next_ids(db: Database, tmp_path: Path) -> None:
    coll = db.collection("c")
    await coll.create_many_ids([{"n": i} for i in range(3)], ids=["a", "b", "c"])
    await coll.delete("b")
    await coll.create_many_ids([{"n": i} for i in range(3)], ids=["b", "d", "e"])  # b revived
    assert sorted(d.id for d in await coll.list()) == ["a", "b", "c", "d", "e"]
    # The store made its document rows in a batch too: every entry's document is its own.
    store = SQLiteStore(tmp_path / "s.db")
    try:
        results = await store.put_entries(await all_entries(db))
        assert all(r.status is PutStatus.ACCEPTED for r in results)
        again = await store.put_entries(await all_entries(db))
        assert all(r.status is PutStatus.DUPLICATE for r in again)
        for entry in await all_entries(db):
            where = (entry.space, entry.collection, entry.document)
            assert await store.heads(*where) == await db.store.heads(*where)
            assert len(await store.heads(*where)) == 1
    finally:
        await store.aclose()


async def test_a_failed_batch_leaves_no_row_and_the_ids_stay_usable(db: Database) -> None:
    coll = db.collection("c")
    await coll.create_many_ids([{"n": 0}], ids=["old"])
    with pytest.raises(ConflictError):  # refused by the check, after the rows were given ids
        await coll.create_many_ids([{"n": 1}, {"n": 2}, {"n": 3}], ids=["x", "y", "old"])
    with pytest.raises(EntryTooLargeError):  # refused while its entry was made
        await coll.create_many_ids([{"n": 4}, {"big": "z" * (1 << 20)}], ids=["x", "w"])
    assert db._doc_id("c", "x") is None and db._doc_id("c", "w") is None
    assert await coll.create_many_ids([{"n": 5}, {"n": 6}], ids=["x", "w"]) == ["x", "w"]
    assert (await coll.get("x")).value == {"n": 5}
    assert (await coll.get("w")).value == {"n": 6}
    assert sorted(d.id for d in await coll.list()) == ["old", "w", "x"]
    await db.aclose()
    again = await Database.open(db.home, store=None)
    try:  # what the views hold is what the entries say
        assert sorted(d.id for d in await again.collection("c").list()) == ["old", "w", "x"]
        assert (await again.collection("c").get("x")).value == {"n": 5}
    finally:
        await again.aclose()


async def test_a_batch_signed_in_waves_chains_a_documents_entries(tmp_path: Path) -> None:
    """One ``update_many`` that changes some documents several times: their entries are
    signed a wave at a time (one entry per document per wave), and each one still has
    the previous one as its parent; a second node replays them to the same values."""
    db, other = await open_peers(tmp_path, 2)
    try:
        await _waves(db, other)
    finally:
        await db.aclose()
        await other.aclose()


async def _waves(db: Database, other: Database) -> None:
    items = db.collection("items")
    await items.create_many([{"n": 0} for _ in range(200)], ids=[f"d{i}" for i in range(200)])
    patches = [(f"d{i}", {"n": 1}) for i in range(200)]
    patches += [("d7", {"n": 2}), ("d7", {"n": 3}), ("d9", {"m": 1}), ("d7", {"n": 4})]
    patches += [(f"d{i}", {"n": 5}) for i in range(100, 200)]
    got = await items.update_many(patches)
    assert [d.value["n"] for d in got[200:204]] == [4, 4, 1, 4]  # each as the batch left it
    assert got[202].value == {"n": 1, "m": 1}
    history = await items.history("d7")
    assert [h.height for h in history] == [1, 2, 3, 4, 5]
    for parent, child in itertools.pairwise(history):
        assert child.parents == (parent.cid,)
    assert got[203].heads == (history[-1].cid,)
    results = await other.put_entries(await all_entries(db))
    assert all(r.status is PutStatus.ACCEPTED for r in results)
    for i in (7, 9, 150):
        theirs = await other.collection("items").get(f"d{i}")
        assert theirs.value == (await items.get(f"d{i}")).value
    assert (await other.collection("items").get("d150")).value == {"n": 5}
