"""The persistent fingerprint trees of ``SQLiteStore`` (``loomdb.stores.fingerprints``).

Every tree is checked row by row against its definition (``check_tree``) and
its answers against a brute-force model, after random batches down each
maintenance path, across reopening, after a rolled-back and a killed catch-up,
and for the space, collection and document sets of a real store.
"""

from __future__ import annotations

import random
import sqlite3
import textwrap
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from loomdb.entries.entry import Entry
from loomdb.errors import StoreCorruptError, ValidationError
from loomdb.stores import SQLiteStore
from loomdb.stores import fingerprints as fp
from loomdb.stores.base import SetKey
from loomdb.sync.negentropy import Negentropy, minimal_bound
from loomdb.sync.ranges import INFINITY, SUM_MODULUS, ZERO, Item, MemoryRangeIndex, RangeIndex
from tests.support import EntryFactory, run_python

# --- helpers ----------------------------------------------------------------------------


class Model:
    """A sorted list: the obvious answers."""

    def __init__(self, items: list[Item] | set[Item]) -> None:
        self.items = sorted(set(items))

    def fingerprint_sum(self, lo: Item, hi: Item) -> tuple[int, int]:
        chosen = self.items[bisect_left(self.items, lo) : max(0, bisect_left(self.items, hi))]
        if not lo < hi:
            chosen = []
        return len(chosen), sum(int.from_bytes(i[1], "little") for i in chosen) % SUM_MODULUS

    def nth(self, lo: Item, k: int) -> Item | None:
        i = bisect_left(self.items, lo) + k
        return self.items[i] if i < len(self.items) else None


def check_answers(index: RangeIndex, model: Model, rng: random.Random, rounds: int = 30) -> None:
    items = model.items
    assert index.fingerprint_sum(ZERO, INFINITY) == model.fingerprint_sum(ZERO, INFINITY)
    if not items:
        assert index.nth(ZERO, 0) is None
        return
    for _ in range(rounds):
        lo, hi = (rng.choice(items) for _ in range(2))
        if rng.random() < 0.3:  # a bound between items: a zero-padded prefix
            lo = (lo[0], lo[1][: rng.randrange(32)].ljust(32, b"\0"))
        assert index.fingerprint_sum(lo, hi) == model.fingerprint_sum(lo, hi), (lo, hi)
        assert index.fingerprint_sum(lo, INFINITY) == model.fingerprint_sum(lo, INFINITY)
        k = rng.choice((0, 1, 5, 15, 16, 17, rng.randrange(len(items) + 2)))
        assert index.nth(lo, k) == model.nth(lo, k), (lo, k)
        assert index.items(lo, hi, 40) == [i for i in items if lo <= i < hi][:40]


def open_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    fp.create_schema(conn)
    return conn


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = open_db(tmp_path / "trees.db")
    yield conn
    conn.close()


def random_batch(rng: random.Random, n: int, timestamps: int) -> list[Item]:
    return [(rng.randrange(timestamps), rng.randbytes(32)) for _ in range(n)]


PATHS = ("auto", "in_place", "bulk")


def force_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Make every addition to a non-empty set take one maintenance path."""
    if path == "in_place":
        monkeypatch.setattr(fp, "BULK_AT_LEAST", 0)
        monkeypatch.setattr(fp, "COST_BULK", 10**12)
    elif path == "bulk":
        monkeypatch.setattr(fp, "BULK_AT_LEAST", 10**12)


def store_entries(make: EntryFactory, n: int, rng: random.Random) -> list[Entry]:
    """Entries over two spaces, three collections and five documents; a third of
    them share their timestamp with the entry before."""
    out = []
    for i in range(n):
        if rng.random() < 0.3:
            make.ts -= 1  # the factory ticks before building: the same timestamp again
        space = rng.choice(("sp-a", "sp-b"))
        out.append(
            make(
                b"%d" % i,
                space=space,
                collection=rng.choice(("c1", "c2", "c3")),
                document=f"d{rng.randrange(5)}",
            )
        )
    return out


def item_of(entry: Entry) -> Item:
    return entry.created_at, entry.cid.digest


def set_model(entries: list[Entry], key: SetKey) -> Model:
    return Model(
        [
            item_of(e)
            for e in entries
            if e.space == key.space
            and key.collection in (None, e.collection)
            and key.document in (None, e.document)
        ]
    )


ALL_SETS = [
    SetKey(space, collection) for space in ("sp-a", "sp-b") for collection in (None, "c1", "c2")
] + [SetKey("sp-a", "c3", "d1"), SetKey("sp-b", "c1", "d4")]


async def check_store(store: SQLiteStore, entries: list[Entry], rng: random.Random) -> None:
    for key in ALL_SETS:
        model = set_model(entries, key)
        await store.with_range_index(key, lambda index, m=model: check_answers(index, m, rng, 10))
        if key.document is None:
            checked = await store.with_range_index(
                key, lambda _, k=key: fp.check_tree(store._r, k.space, k.collection)
            )
            assert checked == len(model.items)


# --- the tree against the model ----------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_random_batches_match_the_model(
    db: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    force_path(monkeypatch, path)
    calls = {"_insert": 0, "_rebuild": 0}
    for name in calls:
        original = getattr(fp.FingerprintIndex, name)

        def spy(
            *args: object, _name: str = name, _original: Callable[..., None] = original
        ) -> None:
            calls[_name] += 1
            _original(*args)

        monkeypatch.setattr(fp.FingerprintIndex, name, spy)
    rng = random.Random(PATHS.index(path))
    index = fp.FingerprintIndex(db)
    held: set[Item] = set()
    for step in range(40):
        size = rng.choice((1, 1, 2, 3, 10, 50, 300, 2000 if step % 10 == 0 else 100))
        timestamps = rng.choice((1, 3, 1000, (1 << 64) - 1))
        batch = random_batch(rng, size, timestamps)
        if rng.random() < 0.25 and held:  # appends: past the last item
            last = max(held)[0]
            batch = [(last + rng.randrange(3), rng.randbytes(32)) for _ in range(size)]
        if rng.random() < 0.2 and held:  # some already held
            batch += rng.sample(sorted(held), min(len(held), 7))
        added = index.add_items("s", "c", batch)
        assert added == len(set(batch) - held)
        held |= set(batch)
        assert fp.check_tree(db, "s", "c") == len(held)
        check_answers(fp.open_view(db, "s", "c"), Model(held), rng, 8)
    if path == "in_place":
        assert calls["_rebuild"] == 1  # the first batch, into an empty set
        assert calls["_insert"] > 30
    elif path == "bulk":
        assert calls["_insert"] == 0
    else:
        assert calls["_insert"] > 5 and calls["_rebuild"] > 5


def test_both_ends_of_the_key_space(db: sqlite3.Connection) -> None:
    index = fp.FingerprintIndex(db)
    low = (0, bytes(32))
    high = ((1 << 64) - 2, b"\xff" * 32)
    index.add_items("s", None, [low, high, (1 << 63, b"\x80" * 32)])
    rng = random.Random(1)
    batches = [random_batch(rng, 40, (1 << 64) - 1), [(0, b"\x01" + bytes(31))]]
    batches.append([((1 << 64) - 2, b"\xfe" * 32)])
    held = {low, high, (1 << 63, b"\x80" * 32)}
    for batch in batches:
        index.add_items("s", None, batch)
        held |= set(batch)
        fp.check_tree(db, "s", None)
        check_answers(fp.open_view(db, "s", None), Model(held), rng, 40)


def test_bad_items_are_refused(db: sqlite3.Connection) -> None:
    index = fp.FingerprintIndex(db)
    for bad in [(1, b"short"), (-1, bytes(32)), ((1 << 64) - 1, bytes(32)), (1.5, bytes(32))]:
        with pytest.raises(ValidationError):
            index.add_items("s", None, [bad])  # type: ignore[list-item]
    assert isinstance(fp.open_view(db, "s", None), RangeIndex)
    assert fp.open_view(db, "s", None).fingerprint_sum(ZERO, INFINITY) == (0, 0)


def test_reopening_keeps_the_trees_and_the_level_secret(tmp_path: Path) -> None:
    rng = random.Random(2)
    held: set[Item] = set()
    secrets = set()
    for _ in range(3):
        conn = open_db(tmp_path / "trees.db")
        for size in (500, 3, 40):
            batch = random_batch(rng, size, 100)
            fp.FingerprintIndex(conn).add_items("s", None, batch)
            held |= set(batch)
        secrets.add(conn.execute("SELECT value FROM meta WHERE key='fp_key'").fetchone()[0])
        fp.check_tree(conn, "s", None)
        check_answers(fp.open_view(conn, "s", None), Model(held), rng)
        conn.close()
    assert len(secrets) == 1


def test_check_tree_finds_a_damaged_row(db: sqlite3.Connection) -> None:
    rng = random.Random(3)
    fp.FingerprintIndex(db).add_items("s", None, random_batch(rng, 300, 10**9))
    fp.check_tree(db, "s", None)
    db.execute(
        "UPDATE fp_nodes SET c = c + 1 WHERE level=0 AND k ="
        " (SELECT k FROM fp_nodes WHERE level=0 ORDER BY k LIMIT 1 OFFSET 100)"
    )
    with pytest.raises(StoreCorruptError):
        fp.check_tree(db, "s", None)


def test_levels_are_balanced(db: sqlite3.Connection) -> None:
    """About 1 item in 16 starts a level-1 node, 1 in 256 a level-2 node."""
    rng = random.Random(4)
    fp.FingerprintIndex(db).add_items("s", None, random_batch(rng, 20_000, 10**12))
    counts = dict(db.execute("SELECT level, count(*) FROM fp_nodes GROUP BY level").fetchall())
    assert counts[0] == 20_000
    assert 20_000 / 16 * 0.85 < counts[1] < 20_000 / 16 * 1.15
    assert 20_000 / 256 * 0.6 < counts[2] < 20_000 / 256 * 1.4
    (top,) = db.execute("SELECT top FROM fp_sets").fetchone()
    assert 3 <= top <= 5


# --- the view: memoised prefixes, cut points between neighbours, one snapshot ----------------


def test_a_split_costs_one_query_per_cut(db: sqlite3.Connection) -> None:
    """The engine cuts a range at the shortest bound between the neighbours
    nth finds: the bucket sums then come from what nth learnt, without a query."""
    rng = random.Random(5)
    items = random_batch(rng, 5000, 50)
    fp.FingerprintIndex(db).add_items("s", None, items)
    model = Model(items)
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    view = fp.open_view(db, "s", None)
    lower = model.items[100]
    start = lower
    for rank in range(300, 4800, 300):
        prev = view.nth(lower, rank - 1)
        assert prev is not None
        curr = view.nth(prev, 1)
        assert curr is not None
        end = minimal_bound(prev, curr)
        before = len(statements)
        assert view.fingerprint_sum(start, end) == model.fingerprint_sum(start, end)
        assert len(statements) == before  # no query
        start = end
    db.set_trace_callback(None)


def test_a_view_reads_one_snapshot(tmp_path: Path) -> None:
    rng = random.Random(6)
    first = random_batch(rng, 2000, 10**6)
    conn = open_db(tmp_path / "trees.db")
    fp.FingerprintIndex(conn).add_items("s", None, first)
    other = open_db(tmp_path / "trees.db")
    conn.execute("BEGIN")
    view = fp.open_view(conn, "s", None)
    model = Model(first)
    check_answers(view, model, rng, 5)
    fp.FingerprintIndex(other).add_items("s", None, random_batch(rng, 500, 10**6))  # commits
    check_answers(view, model, rng, 30)
    conn.execute("COMMIT")
    assert fp.open_view(conn, "s", None).fingerprint_sum(ZERO, INFINITY)[0] == 2500
    other.close()
    conn.close()


# --- a real store --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_store_sets_match_their_entries(tmp_path: Path) -> None:
    rng = random.Random(7)
    make = EntryFactory()
    entries = store_entries(make, 900, rng)
    store = SQLiteStore(tmp_path / "store.db")
    held: list[Entry] = []
    for size in (400, 1, 7, 60, 300, 132):  # bulk, then in place, then bulk again
        batch, entries = entries[:size], entries[size:]
        await store.put_entries(batch)
        held += batch
        await check_store(store, held, rng)
    assert store._fingerprints.cursor() == 900
    await store.aclose()
    reopened = SQLiteStore(tmp_path / "store.db")
    await check_store(reopened, held, rng)
    await reopened.aclose()


@pytest.mark.anyio
async def test_unknown_sets_are_empty_and_keys_are_checked(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    await store.put_entries([EntryFactory()()])
    for key in (SetKey("nowhere"), SetKey("space-1", "nothing"), SetKey("space-1", "notes", "x")):
        summary = await store.with_range_index(key, lambda i: i.fingerprint_sum(ZERO, INFINITY))
        assert summary == (0, 0)
        assert await store.with_range_index(key, lambda i: i.nth(ZERO, 0)) is None
    with pytest.raises(ValidationError):
        await store.with_range_index(("space-1", None), lambda i: None)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        SetKey("space-1", None, "doc")
    await store.aclose()


@pytest.mark.anyio
async def test_document_sets_come_from_the_documents_entries(tmp_path: Path) -> None:
    make = EntryFactory()
    chain = make.chain(30, document="doc-x")
    others = [make(b"o", document="doc-y") for _ in range(5)]
    store = SQLiteStore(tmp_path / "store.db")
    await store.put_entries(chain + others)
    kinds = await store.with_range_index(
        SetKey("space-1", "notes", "doc-x"), lambda i: (type(i), i.items(ZERO, INFINITY))
    )
    assert kinds == (MemoryRangeIndex, sorted(item_of(e) for e in chain))
    # no fingerprint tree was needed for it
    assert store._fingerprints.cursor() == 0
    await store.aclose()


@pytest.mark.anyio
async def test_catch_up_reads_only_the_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(8)
    entries = store_entries(EntryFactory(), 600, rng)
    store = SQLiteStore(tmp_path / "store.db")
    await store.put_entries(entries[:595])
    await store.with_range_index(SetKey("sp-a"), lambda _: None)
    index = store._fingerprints
    assert index.cursor() == 595

    statements: list[str] = []
    inserted: list[int] = []
    original = fp.FingerprintIndex._insert
    original_append = fp.FingerprintIndex._append

    def spy(self: fp.FingerprintIndex, info: object, keys: list[bytes]) -> None:
        inserted.append(len(keys))
        original(self, info, keys)  # type: ignore[arg-type]

    def spy_append(self: fp.FingerprintIndex, info: object, keys: list[bytes], *rest: Any) -> None:
        inserted.append(len(keys))
        original_append(self, info, keys, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(fp.FingerprintIndex, "_insert", spy)
    monkeypatch.setattr(fp.FingerprintIndex, "_append", spy_append)
    monkeypatch.setattr(fp.FingerprintIndex, "old_keys", lambda *_: pytest.fail("a rebuild"))
    await store.put_entries(entries[595:])
    store._w.set_trace_callback(statements.append)
    assert index.catch_up() == 5
    assert index.cursor() == 600
    assert sum(inserted) == 10  # five items, each into its space set and its collection set
    for sql in statements:
        if "entries" in sql and "max(seq)" not in sql:
            assert "seq > 595" in sql, sql  # the backlog only, by the seq index
    statements.clear()
    assert index.catch_up() == 0  # nothing new: two cheap reads, no transaction
    assert len(statements) == 2
    assert all("BEGIN" not in sql for sql in statements)
    store._w.set_trace_callback(None)
    await check_store(store, entries, rng)
    await store.aclose()


# --- crashes -----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["_save", "run", "feed", "_append"])
async def test_a_failed_catch_up_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    rng = random.Random(9)
    entries = store_entries(EntryFactory(), 1000, rng)
    if where == "run":  # the 10 added last are older than the rest: inserted inside the sets
        entries = entries[10:460] + entries[:10]
    store = SQLiteStore(tmp_path / "store.db")
    await store.put_entries(entries[:450])
    await check_store(store, entries[:450], rng)
    # 10 more are added in place (appended, or inside); 550 more are rebuilt in bulk
    more = entries[450:] if where == "feed" else entries[450:460]
    await store.put_entries(more)
    owner = OWNERS[where]
    original = getattr(owner, where)
    calls = 0

    def failing(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, where, failing)
    with pytest.raises(RuntimeError, match="crash"):
        await store.with_range_index(SetKey("sp-a"), lambda _: None)
    assert store._fingerprints.cursor() == 450
    await check_store_without_catch_up(store, entries[:450], rng)
    monkeypatch.setattr(owner, where, original)
    await check_store(store, entries[:450] + more, rng)
    await store.aclose()


# where a catch-up is made to fail: the bulk builder, an in-place recomputation, saving a set
OWNERS: dict[str, type] = {
    "feed": fp._Builder,
    "run": fp._Recompute,
    "_save": fp.FingerprintIndex,
    "_append": fp.FingerprintIndex,
}


async def check_store_without_catch_up(
    store: SQLiteStore, entries: list[Entry], rng: random.Random
) -> None:
    """The trees as they stand, read without catching up first."""

    def run() -> None:
        for key in ALL_SETS:
            if key.document is None:
                model = set_model(entries, key)
                assert fp.check_tree(store._r, key.space, key.collection) == len(model.items)
                check_answers(fp.open_view(store._r, key.space, key.collection), model, rng, 5)

    await anyio.to_thread.run_sync(run)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import anyio
    from loomdb.stores import SQLiteStore
    from loomdb.stores import fingerprints as fp
    from loomdb.stores.base import SetKey

    owner = {"feed": fp._Builder, "run": fp._Recompute}.get(sys.argv[2], fp.FingerprintIndex)
    original = getattr(owner, sys.argv[2])
    calls = 0

    def dying(*args, **kwargs):
        global calls
        calls += 1
        if calls == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, sys.argv[2], dying)
    fp._CHUNK = 50  # the builder writes its rows often
    if sys.argv[2] == "run":
        fp.COST_BULK = 10**12  # in place, never rebuilt

    async def main():
        store = SQLiteStore(sys.argv[1])
        store._w.execute("PRAGMA cache_size=8")  # pages spill to the WAL before commit
        await store.with_range_index(SetKey("sp-a"), lambda _: None)

    anyio.run(main)
    """
)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("where", "after"), [("feed", 1500), ("run", 5), ("_save", 3), ("_append", 2)]
)
async def test_a_killed_catch_up_leaves_a_consistent_store(
    tmp_path: Path, where: str, after: int
) -> None:
    rng = random.Random(10)
    entries = store_entries(EntryFactory(), 1000, rng)
    if where == "run":  # the 50 added last are older than the rest: inserted inside the sets
        entries = entries[50:] + entries[:50]
    path = tmp_path / "store.db"
    first = 0 if where == "feed" else 950
    store = SQLiteStore(path)
    await store.put_entries(entries[:first])
    if first:
        await store.with_range_index(SetKey("sp-a"), lambda _: None)
    await store.put_entries(entries[first:])
    await store.aclose()

    result = run_python("-c", KILL_SCRIPT, str(path), where, str(after))
    assert result.returncode == -9, result.stderr
    if where == "feed":  # a big transaction: it had spilled pages to the WAL when it died
        assert path.with_name(path.name + "-wal").stat().st_size > 32_768

    store = SQLiteStore(path)
    assert store._fingerprints.cursor() == first
    await check_store_without_catch_up(store, entries[:first], rng)
    await check_store(store, entries, rng)
    await store.aclose()


# --- with the engine ---------------------------------------------------------------------------


def reconcile(ours: RangeIndex, theirs: RangeIndex) -> tuple[set[bytes], set[bytes]]:
    initiator, responder = Negentropy(ours, 4096), Negentropy(theirs, 4096)
    message: bytes | None = initiator.initiate()
    have: set[bytes] = set()
    need: set[bytes] = set()
    while message is not None:
        message, h, n = initiator.reconcile_initiator(responder.reconcile(message))
        have.update(h)
        need.update(n)
    return have, need


@pytest.mark.parametrize("sides", ["sqlite-sqlite", "sqlite-memory"])
def test_negentropy_over_two_trees(tmp_path: Path, sides: str) -> None:
    rng = random.Random(11)
    common = random_batch(rng, 6000, 1000)
    only_ours = random_batch(rng, 40, 1000)
    only_theirs = random_batch(rng, 25, 1000)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ours = fp.standalone_index(tmp_path / "a", common + only_ours)
    make_theirs: Callable[[], RangeIndex] = (
        (lambda: fp.standalone_index(tmp_path / "b", common + only_theirs))
        if sides == "sqlite-sqlite"
        else (lambda: MemoryRangeIndex(common + only_theirs))
    )
    have, need = reconcile(ours, make_theirs())
    assert have == {i for _, i in only_ours}
    assert need == {i for _, i in only_theirs}


def test_sum_bytes_is_the_sum_modulo_2_256() -> None:
    rng = random.Random(5)
    values = [0, 1, -1, SUM_MODULUS - 1, SUM_MODULUS, SUM_MODULUS + 1, -SUM_MODULUS]
    values += [17 * SUM_MODULUS, 17 * SUM_MODULUS - 1]
    values += [rng.randrange(-(1 << 300), 1 << 300) for _ in range(200)]
    for value in values:
        assert fp._sum_bytes(value) == (value % SUM_MODULUS).to_bytes(32, "little")


def test_appends_whose_running_sums_wrap(
    db: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids near 2**256: the running sums of a level-1 node's items pass the modulus,
    on the append path (each batch beyond the last item, small next to the set)."""
    rng = random.Random(9)
    index = fp.FingerprintIndex(db)

    def big_id() -> bytes:
        return b"\xff" * 8 + rng.randbytes(24)

    held = {(ts, big_id()) for ts in range(1, 1201)}
    index.add_items("s", None, held)
    appended: list[int] = []
    original = fp.FingerprintIndex._append

    def spy(self: fp.FingerprintIndex, info: object, keys: list[bytes], *rest: Any) -> None:
        appended.append(len(keys))
        original(self, info, keys, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(fp.FingerprintIndex, "_append", spy)
    ts = 2000
    for size in (1, 7, 40, 100):
        batch = [(ts + i, big_id()) for i in range(size)]
        ts += size
        index.add_items("s", None, batch)
        held |= set(batch)
        fp.check_tree(db, "s", None)
        check_answers(fp.open_view(db, "s", None), Model(held), rng, 40)
    assert appended == [1, 7, 40, 100]
