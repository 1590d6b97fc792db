"""The fingerprint trees a pull keeps up as it stores.

``replicate.transfer`` has a store with trees (``SQLiteStore``) index each batch
it lands (``catch_up_fingerprints``), so the first reconciliation after an
initial sync finds nothing to build. Whatever the path (bulk for the first
batches, appends, insertions inside a set, entries already held, a pull cut
short and resumed), the trees must equal a build from scratch of what the store
holds, row for row.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import pytest

from loomdb.entries.entry import Entry
from loomdb.stores import SQLiteStore
from loomdb.stores import fingerprints as fp
from loomdb.stores.base import EntryInput, PutResult
from loomdb.stores.remote import RemoteStore
from loomdb.stores.server import StoreServer
from loomdb.sync import replicate
from loomdb.sync.replicate import SyncProgress, SyncScope, pull_changes_from, sync
from loomdb.transports.memory import MemoryNetwork
from tests.support import EntryFactory

pytestmark = pytest.mark.anyio

_OFFSET = 1 << 63


def mixed_entries(make: EntryFactory, n: int, rng: random.Random) -> list[Entry]:
    """Chains in several documents of three collections, interleaved in time."""
    chains: dict[tuple[str, str], list[Entry]] = {}
    out = []
    for _ in range(n):
        where = (rng.choice(("c1", "c2", "c3")), f"d{rng.randrange(12)}")
        chain = chains.setdefault(where, [])
        entry = make(b"x", parents=chain[-1:], collection=where[0], document=where[1])
        chain.append(entry)
        out.append(entry)
    return out


def tree_rows(conn: sqlite3.Connection, space: str, collection: str) -> list[tuple[Any, ...]]:
    row = conn.execute(
        "SELECT tree, top, n, s FROM fp_sets WHERE space=? AND collection=?", (space, collection)
    ).fetchone()
    assert row is not None, (space, collection)
    rows = conn.execute(
        "SELECT level, k, n, s, c, t FROM fp_nodes WHERE set_id=? ORDER BY level, k", (row[0],)
    ).fetchall()
    return [tuple(row[1:]), *rows]


def scratch_rows(
    store_conn: sqlite3.Connection, tmp: Path, space: str, collection: str
) -> list[tuple[Any, ...]]:
    """The rows of a tree built from scratch (one bulk pass) of the set's items, with
    the store's level secret, in a file of its own."""
    (secret,) = store_conn.execute("SELECT value FROM meta WHERE key='fp_key'").fetchone()
    sql = (
        "SELECT e.created_at, e.cid FROM entries e JOIN docs d ON d.id = e.doc WHERE d.space=?"
        + (" AND d.collection=?" if collection else "")
    )
    args = (space, collection) if collection else (space,)
    items = [(ts + _OFFSET, cid[4:]) for ts, cid in store_conn.execute(sql, args)]
    path = tmp / f"scratch-{space}-{collection}-{random.random()}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('fp_key', ?)", (secret,))
        fp.create_schema(conn)
        fp.FingerprintIndex(conn).add_items(space, collection or None, items)
        return tree_rows(conn, space, collection)
    finally:
        conn.close()


def check_trees(store: SQLiteStore | Path, tmp: Path, *, caught_up: bool = True) -> None:
    """Every tree of a store (or store file) equals a build from scratch of the entries
    it indexes; with ``caught_up``, that is every entry stored (nothing left to index)."""
    conn = sqlite3.connect(store.path if isinstance(store, SQLiteStore) else store)
    try:
        (head,) = conn.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()
        cursor = conn.execute("SELECT value FROM meta WHERE key='fp_cursor'").fetchone()
        if caught_up:
            assert int(cursor[0] if cursor else 0) == head
        sets = {
            (space, c) for space, coll in conn.execute("SELECT space, collection FROM docs")
            for c in ("", coll)
        }  # fmt: skip
        held = set(conn.execute("SELECT space, collection FROM fp_sets").fetchall())
        assert held == sets if caught_up else held <= sets
        for space, collection in sorted(held):
            assert fp.check_tree(conn, space, collection or None) > 0
            if caught_up:
                assert tree_rows(conn, space, collection) == scratch_rows(
                    conn, tmp, space, collection
                )
    finally:
        conn.close()


class CountingStore(SQLiteStore):
    """Counts the catch-ups and what each indexed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.indexed: list[int] = []

    async def catch_up_fingerprints(self) -> int:
        done = await super().catch_up_fingerprints()
        self.indexed.append(done)
        return done


async def test_a_pull_leaves_the_trees_built(tmp_path: Path, make_entry: EntryFactory) -> None:
    rng = random.Random(1)
    entries = mixed_entries(make_entry, 700, rng)
    origin = SQLiteStore(tmp_path / "origin.db")
    await origin.put_entries(entries)
    local = CountingStore(tmp_path / "local.db")
    report = await pull_changes_from(local, origin, "space-1", batch_size=37)
    assert report.pulled == len(entries)
    # indexed as the batches landed (at least every INDEX_EVERY of them), not at the end
    batches = -(-len(entries) // 37)
    assert batches // replicate.INDEX_EVERY <= len(local.indexed) <= batches
    assert sum(local.indexed) == len(entries)
    assert max(local.indexed) <= 37 * replicate.INDEX_EVERY
    check_trees(local, tmp_path)
    # the re-sync after it builds nothing
    assert local._fingerprints.catch_up() == 0
    again = await sync(local, origin, "space-1")
    assert (again.pulled, again.pushed, again.rounds) == (0, 0, 1)
    await local.aclose()
    await origin.aclose()


async def test_a_pull_over_the_wire_inside_the_sets_and_with_duplicates(
    tmp_path: Path, make_entry: EntryFactory
) -> None:
    rng = random.Random(2)
    entries = mixed_entries(make_entry, 900, rng)
    origin = SQLiteStore(tmp_path / "origin.db")
    await origin.put_entries(entries)
    net = MemoryNetwork(seed=3)
    net.serve("origin", StoreServer(origin).handle)
    local = CountingStore(tmp_path / "local.db")
    # A third already held (no trees yet), then one collection: the space's tree
    # then gets the other collections' entries inside its range, not appended.
    held = {e.cid for e in rng.sample(entries, 300)}
    await local.put_entries([e for e in entries if e.cid in held])
    first = await pull_changes_from(
        local, RemoteStore(net.channel("c", "origin")), SyncScope("space-1", ("c2",)), batch_size=50
    )
    assert first.pulled == sum(1 for e in entries if e.collection == "c2" and e.cid not in held)
    check_trees(local, tmp_path)

    # A writer beside the pull stores some of each batch first: the pull's puts
    # report them as duplicates, and the trees hold each entry once.
    put = local.put_entries

    async def racing_put(batch: Iterable[EntryInput]) -> list[PutResult]:
        items = list(batch)
        await put(items[::3])
        return await put(items)

    local.put_entries = racing_put  # type: ignore[method-assign]
    report = await pull_changes_from(
        local, RemoteStore(net.channel("c", "origin")), "space-1", batch_size=64
    )
    del local.put_entries
    assert report.duplicates > 0
    assert await local.count() == len(entries)
    check_trees(local, tmp_path)
    await local.aclose()
    await origin.aclose()


async def test_a_busy_store_stage_indexes_less_often(
    tmp_path: Path, make_entry: EntryFactory
) -> None:
    """While batches wait to be stored, indexing waits too (up to INDEX_EVERY batches):
    it runs when the store stage would idle, and once at the end."""
    entries = mixed_entries(make_entry, 400, random.Random(5))
    origin = SQLiteStore(tmp_path / "origin.db")
    await origin.put_entries(entries)
    local = CountingStore(tmp_path / "local.db")
    put = local.put_entries

    async def slow_put(batch: Iterable[EntryInput]) -> list[PutResult]:
        await anyio.sleep(0.02)  # the next batches are verified meanwhile
        return await put(batch)

    local.put_entries = slow_put  # type: ignore[method-assign]
    report = await pull_changes_from(local, origin, "space-1", batch_size=20)
    assert report.pulled == len(entries)
    assert len(local.indexed) < 20  # not once per batch
    assert sum(local.indexed) == len(entries)
    assert max(local.indexed) <= 20 * replicate.INDEX_EVERY
    check_trees(local, tmp_path)
    await local.aclose()
    await origin.aclose()


@pytest.mark.parametrize("where", ["after a batch", "inside the catch-up"])
async def test_an_interrupted_pull_resumes_with_the_trees_right(
    tmp_path: Path, make_entry: EntryFactory, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replicate, "INDEX_EVERY", 1)  # every batch, whatever waits
    rng = random.Random(4)
    entries = mixed_entries(make_entry, 600, rng)
    origin = SQLiteStore(tmp_path / "origin.db")
    await origin.put_entries(entries)
    local = CountingStore(tmp_path / "local.db")
    index = local.catch_up_fingerprints

    with anyio.CancelScope() as scope:
        if where == "inside the catch-up":
            # cancelled with the third batch stored, before its catch-up ran

            async def cut() -> int:
                if len(local.indexed) == 2:
                    scope.cancel()
                    await anyio.sleep(0)
                return await index()

            local.catch_up_fingerprints = cut  # type: ignore[method-assign]

        def stop(p: SyncProgress) -> None:
            if where == "after a batch" and p.phase == "transfer" and p.pulled >= 150:
                scope.cancel()

        await pull_changes_from(local, origin, "space-1", batch_size=50, progress=stop)
    assert scope.cancelled_caught
    held = await local.count()
    assert 100 <= held < len(entries)
    # what was indexed agrees with its definition; the backlog (if any) waits
    check_trees(local, tmp_path, caught_up=where == "after a batch")
    if where == "inside the catch-up":
        del local.catch_up_fingerprints
        (head,) = local._r.execute("SELECT max(seq) FROM entries").fetchone()
        assert local._fingerprints.cursor() < head

    rest = await pull_changes_from(local, origin, "space-1", batch_size=50)
    assert rest.pulled == len(entries) - held
    assert rest.duplicates == 0
    check_trees(local, tmp_path)
    await local.aclose()
    await origin.aclose()
