"""Loro snapshots in the views (a document not open loads with one import), and WAL
checkpoints off the commit path. Real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from loomdb.documents import Database
from loomdb.stores.checkpoints import Checkpointer
from loomdb.stores.sqlite import SQLiteStore
from tests.doc_support import exchange, make_home, open_peers

pytestmark = pytest.mark.anyio


def snapshot_count(home: Path) -> int:
    with sqlite3.connect(home / "views.db") as conn:
        return int(conn.execute("SELECT count(*) FROM snapshots").fetchone()[0])


def count_reads(db: Database) -> list[int]:
    """The number of entries each ``get_entries`` call of ``db``'s store asks for."""
    reads: list[int] = []
    get_entries = db.store.get_entries

    async def counting(cids: Any) -> Any:
        reads.append(len(cids))
        return await get_entries(cids)

    db.store.get_entries = counting  # type: ignore[method-assign]
    return reads


async def test_an_evicted_document_opens_from_its_snapshot(tmp_path: Path) -> None:
    home = make_home(tmp_path / "n")
    db = await Database.open(home, cache_size=2)
    items = db.collection("items")
    await items.create_many(
        [{"n": i, "tags": ["a"]} for i in range(6)], ids=[f"d{i}" for i in range(6)]
    )
    assert snapshot_count(tmp_path / "n") == 0  # new documents (one entry each) replay cheaply
    for round_ in range(3):
        await items.update_many([(f"d{i}", {"n": i + 10 * round_}) for i in range(6)])
    assert snapshot_count(tmp_path / "n") >= 4  # the cache holds 2: the others were saved
    reads = count_reads(db)
    again = await items.update_many([(f"d{i}", {"x": i}) for i in range(6)])
    assert reads == []  # every document opened from its snapshot, not from its entries
    assert [d.value for d in again] == [{"n": i + 20, "tags": ["a"], "x": i} for i in range(6)]
    await db.aclose()

    # On close the open documents were saved too; reopened, nothing is replayed.
    db = await Database.open(home, cache_size=2)
    reads = count_reads(db)
    assert (await db.collection("items").update("d5", {"x": 50})).value["x"] == 50
    assert reads == []
    history = await db.collection("items").history("d5")
    assert [h.kind for h in history] == ["create", "change", "change", "change", "change", "change"]
    await db.aclose()


async def test_a_stale_or_damaged_snapshot_is_replaced_by_a_replay(tmp_path: Path) -> None:
    home = make_home(tmp_path / "n")
    db = await Database.open(home, cache_size=1)
    items = db.collection("items")
    await items.create_many([{"n": 1}, {"n": 2}], ids=["a", "b"])
    await items.update("a", {"n": 3})
    await items.update("b", {"n": 4})  # evicts a: its snapshot is saved
    await items.update("a", {"n": 5})  # a open again, moved on
    db._views.close()  # a crash: nothing saved on close (the views stay as committed)
    db._closed = True
    await db.store.aclose()

    with sqlite3.connect(tmp_path / "n" / "views.db") as conn:  # damage b's snapshot
        conn.execute("UPDATE snapshots SET data = x'00ff' WHERE doc = ("
                     "SELECT id FROM docs WHERE name = 'b')")  # fmt: skip
    db = await Database.open(home, cache_size=1)
    items = db.collection("items")
    reads = count_reads(db)
    assert (await items.update("a", {"m": 1})).value == {"n": 5, "m": 1}  # stale: replayed
    assert (await items.update("b", {"m": 2})).value == {"n": 4, "m": 2}  # damaged: replayed
    assert reads == [3, 2]  # each document's applied entries, read to replay it
    await db.aclose()

    # The replayed documents were saved when evicted or closed: the next open needs no replay.
    db = await Database.open(home, cache_size=1)
    reads = count_reads(db)
    assert (await db.collection("items").update("a", {"m": 3})).value == {"n": 5, "m": 3}
    assert (await db.collection("items").update("b", {"m": 4})).value == {"n": 4, "m": 4}
    assert reads == []
    await db.aclose()


async def test_documents_from_snapshots_converge_with_a_peer(tmp_path: Path) -> None:
    one, two = await open_peers(tmp_path, 2)
    await one.aclose()
    one = await Database.open(tmp_path / "node0", cache_size=1)
    a, b = one.collection("c"), two.collection("c")
    await a.create_many([{"k": 0, "t": "x"}, {"k": 0}], ids=["x", "y"])
    await exchange(one, two)
    for k in range(1, 4):  # one alternates between x and y: each write opens one from its snapshot
        await a.update("x", {"k": k})
        await a.update("y", {"k": k})
        await b.update("x", {f"b{k}": k})
        await exchange(one, two)
    got = [(await db.collection("c").get("x")).value for db in (one, two)]
    assert got[0] == got[1] == {"k": 3, "t": "x", "b1": 1, "b2": 2, "b3": 3}
    await one.aclose()
    await two.aclose()


async def test_commits_do_not_checkpoint_a_thread_does(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    assert store._w.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    db = await Database.open(make_home(tmp_path / "n"), store=store)
    assert db._views._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    items = db.collection("items")
    for i in range(20):
        await items.create({"n": i, "pad": "x" * 2000})
    checkpoints = [store._checkpoints, db._views._checkpoints]
    with anyio.fail_after(10):
        while not all(c.checkpoints for c in checkpoints):
            await anyio.sleep(0.01)
    await db.aclose()
    for c in checkpoints:
        assert c._thread is None  # stopped on close
    with sqlite3.connect(tmp_path / "s.db") as conn:  # everything committed is there
        assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 20


def test_a_closed_checkpointer_starts_no_thread(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "f.db").close()
    c = Checkpointer(tmp_path / "f.db")
    c.close()
    c.committed()
    assert c._thread is None and c.checkpoints == 0
