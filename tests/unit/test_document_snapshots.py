"""Loro snapshots in the views (a document not open loads with one import), the deltas
the views keep of a document's first entries (it loads from them, without the store),
and WAL checkpoints off the commit path. Real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from loomdb.documents import Database
from loomdb.documents.database import REPLAY_MAX
from loomdb.errors import NotFoundError
from loomdb.stores.checkpoints import Checkpointer
from loomdb.stores.sqlite import SQLiteStore
from tests.doc_support import exchange, make_home, open_peers

pytestmark = pytest.mark.anyio


def snapshot_count(home: Path) -> int:
    with sqlite3.connect(home / "views.db") as conn:
        return int(conn.execute("SELECT count(*) FROM snapshots").fetchone()[0])


def kept_deltas(home: Path) -> int:
    with sqlite3.connect(home / "views.db") as conn:
        return int(
            conn.execute("SELECT count(*) FROM states WHERE delta IS NOT NULL").fetchone()[0]
        )


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
    rounds = REPLAY_MAX  # the last one makes documents of more entries than the views keep
    for round_ in range(rounds - 1):
        await items.update_many([(f"d{i}", {"n": i + 10 * round_}) for i in range(6)])
    assert snapshot_count(tmp_path / "n") == 0  # short documents open from their deltas
    await items.update_many([(f"d{i}", {"n": i + 10 * (rounds - 1)}) for i in range(6)])
    assert snapshot_count(tmp_path / "n") >= 4  # the cache holds 2: the others were saved
    assert kept_deltas(tmp_path / "n") == 6 * REPLAY_MAX
    reads = count_reads(db)
    again = await items.update_many([(f"d{i}", {"x": i}) for i in range(6)])
    assert reads == []  # every document opened from its snapshot, not from its entries
    last = 10 * (rounds - 1)
    assert [d.value for d in again] == [{"n": i + last, "tags": ["a"], "x": i} for i in range(6)]
    await db.aclose()

    # On close the open documents were saved too; reopened, nothing is replayed.
    db = await Database.open(home, cache_size=2)
    reads = count_reads(db)
    assert (await db.collection("items").update("d5", {"x": 50})).value["x"] == 50
    assert reads == []
    history = await db.collection("items").history("d5")
    assert [h.kind for h in history] == ["create"] + ["change"] * (REPLAY_MAX + 2)
    await db.aclose()


async def test_a_stale_or_damaged_snapshot_is_replaced_by_a_replay(tmp_path: Path) -> None:
    home = make_home(tmp_path / "n")
    db = await Database.open(home, cache_size=1)
    items = db.collection("items")
    await items.create_many([{"n": 1}, {"n": 2}], ids=["a", "b"])
    for _ in range(REPLAY_MAX - 1):  # documents of as many entries as the views keep deltas of
        await items.update("a", {"n": 1})
        await items.update("b", {"n": 2})
    assert snapshot_count(tmp_path / "n") == 0
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
    assert reads == [2, 1]  # each document's entries the views keep no delta of
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


async def test_a_short_document_opens_from_its_kept_deltas(tmp_path: Path) -> None:
    home = make_home(tmp_path / "n")
    db = await Database.open(home, cache_size=1)
    items = db.collection("items")
    await items.create_many([{"n": 1, "t": "x"}, {"n": 2}], ids=["a", "b"])
    reads = count_reads(db)
    for k in range(REPLAY_MAX - 2):  # each write opens the other document again
        assert (await items.update("a", {"k": k})).value == {"n": 1, "t": "x", "k": k}
        assert (await items.update("b", {"k": k})).value == {"n": 2, "k": k}
    await items.delete("b")  # an entry without ops: its delta is empty, and kept
    assert (await items.update("a", {"k": 9})).value == {"n": 1, "t": "x", "k": 9}
    assert reads == []  # every open replayed the views' deltas, not the store's entries
    assert snapshot_count(tmp_path / "n") == 0
    assert kept_deltas(tmp_path / "n") == 2 * REPLAY_MAX
    await db.aclose()

    # The views rebuilt from the store keep the same deltas; a damaged one is read again.
    (tmp_path / "n" / "views.db").unlink()
    db = await Database.open(home, cache_size=1)
    assert kept_deltas(tmp_path / "n") == 2 * REPLAY_MAX
    with pytest.raises(NotFoundError):
        await db.collection("items").get("b")
    await db.aclose()
    with sqlite3.connect(tmp_path / "n" / "views.db") as conn:
        conn.execute("UPDATE states SET delta = x'00ff' WHERE height = 1 AND doc = ("
                     "SELECT id FROM docs WHERE name = 'a')")  # fmt: skip
    db = await Database.open(home, cache_size=1)
    reads = count_reads(db)
    got = await db.collection("items").update("a", {"z": 1})
    assert got.value == {"n": 1, "t": "x", "k": 9, "z": 1}
    assert reads == [REPLAY_MAX]  # the damaged document's entries, from the store
    assert len(await db.collection("items").history("a")) == REPLAY_MAX + 1
    await db.aclose()
