"""``SQLiteStore``: the embedded default store, one SQLite file in WAL mode.

Threading: SQLite calls are blocking, so every method runs its work on a
worker thread (``anyio.to_thread``), which keeps the event loop free and works
under asyncio and trio alike. There is one writer connection (SQLite allows
one writer; a lock serialises our writes) and one reader connection, so reads
are not held up by a long write batch (WAL lets them see the last commit).

Durability: each ``put_entries`` call is one transaction: after a crash
(kill -9 included) a batch is wholly there or wholly absent. With the default
``synchronous=NORMAL`` a commit survives a process crash; only a power loss
or OS crash may undo the last commits (never corrupt the file). Pass
``durability="full"`` to fsync every commit.

Schema (version 1)::

    meta(key, value)                    epoch, schema version
    docs(id, space, collection, document)
    entries(seq, cid, doc, kind, height, author, created_at, key_id, parents, raw)
    parent_refs(parent, doc)            CIDs named as a parent within a document (not
                                        written for a parent stored in the same batch)
    heads(doc, cid)                     current heads of each document
    fp_sets, fp_nodes                   fingerprint trees for sync (``stores.fingerprints``)

The fingerprint trees were added without a version bump: their tables are
created if missing, and are caught up lazily from the receipt log (``seq``),
so a store written before them gets its trees on first use.

``created_at`` is an unsigned 64-bit HLC value; it is stored minus 2**63 so it
fits SQLite's signed integers with its order kept.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import anyio.to_thread

from loomdb.entries.cid import CID, CID_SIZE
from loomdb.entries.entry import DEFAULT_POLICY, Entry, EntryMeta, EntryPolicy, decode_entry
from loomdb.errors import (
    LoomError,
    StoreClosedError,
    StoreCorruptError,
    StoreError,
    ValidationError,
)
from loomdb.stores import fingerprints
from loomdb.stores.base import (
    EntryInput,
    PutResult,
    Received,
    SetKey,
    StoreHead,
    check_cids,
    check_limit,
    finish_results,
    prepare_batch,
)
from loomdb.stores.checkpoints import Checkpointer
from loomdb.sync.ranges import MemoryRangeIndex
from loomdb.sync.reconcile import ReconcileReply, ReconcileRequest, reconcile_on

if TYPE_CHECKING:
    from loomdb.sync.ranges import RangeIndex

log = logging.getLogger("loomdb.stores.sqlite")

SCHEMA_VERSION: Final = 1
_TS_OFFSET: Final = 1 << 63
_CHUNK: Final = 500  # bound on SQL parameters per statement
INLINE_READ: Final = 32
"""Reads of at most this many rows or keys run on the caller's thread when the reader
is free (:meth:`SQLiteStore._read_small`)."""
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS docs(
    id INTEGER PRIMARY KEY,
    space TEXT NOT NULL, collection TEXT NOT NULL, document TEXT NOT NULL,
    UNIQUE(space, collection, document));
CREATE TABLE IF NOT EXISTS entries(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    cid BLOB NOT NULL UNIQUE,
    doc INTEGER NOT NULL,
    kind TEXT NOT NULL,
    height INTEGER NOT NULL,
    author BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    key_id TEXT,
    parents BLOB NOT NULL,
    raw BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS entries_by_doc ON entries(doc, height);
CREATE TABLE IF NOT EXISTS parent_refs(
    parent BLOB NOT NULL, doc INTEGER NOT NULL, PRIMARY KEY(parent, doc)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS heads(
    doc INTEGER NOT NULL, cid BLOB NOT NULL, PRIMARY KEY(doc, cid)) WITHOUT ROWID;
"""

_META_COLUMNS = (
    "e.cid, d.space, d.collection, d.document, e.kind, e.parents, e.height, e.author,"
    " e.created_at, e.key_id, length(e.raw)"
)


# Python's sqlite3 (3.11) looks for an adapter for every ``bytes`` parameter (a
# failed attribute lookup each, ~0.5 µs); a ``bytearray`` is bound as it is, as the
# same blob. The write path binds its blobs as bytearrays.
_BLOB: Final = bytearray


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _split_parents(blob: bytes) -> tuple[CID, ...]:
    return tuple(CID(blob[i : i + CID_SIZE]) for i in range(0, len(blob), CID_SIZE))


def _meta_from_row(row: tuple[Any, ...]) -> EntryMeta:
    cid, space, coll, doc, kind, parents, height, author, ts, key_id, size = row
    return EntryMeta(
        CID(cid),
        kind,
        space,
        coll,
        doc,
        _split_parents(parents),
        height,
        author,
        ts + _TS_OFFSET,
        key_id,
        size,
    )


@contextmanager
def _translate(path: Path) -> Iterator[None]:
    """One place where sqlite3's errors become loomdb's."""
    try:
        yield
    except LoomError:
        raise
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            raise StoreCorruptError(f"{path}: not a readable loomdb store ({text})") from exc
        raise StoreError(f"{path}: {text}") from exc


class SQLiteStore:
    """A :class:`~loomdb.stores.base.ContentAddressedStore` in one SQLite file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        policy: EntryPolicy = DEFAULT_POLICY,
        durability: Literal["normal", "full"] = "normal",
    ) -> None:
        if durability not in ("normal", "full"):
            raise StoreError("durability is 'normal' or 'full'")
        self.path = Path(path)
        self.policy = policy
        self._closed = False
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._doc_ids: dict[tuple[str, str, str], int] = {}
        self._checkpoints = Checkpointer(self.path)  # not in commits: no latency spikes
        with _translate(self.path):
            self._w = self._connect(durability)
            self._epoch = self._init_schema()
            self._r = self._connect(durability)
        self._fingerprints = fingerprints.FingerprintIndex(self._w)

    def _connect(self, durability: str) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={durability.upper()}")
        conn.execute("PRAGMA busy_timeout=10000")
        Checkpointer.take_over(conn)
        return conn

    def _init_schema(self) -> str:
        w = self._w
        w.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    w.execute(statement)
            fingerprints.create_schema(w)
            rows = dict(w.execute("SELECT key, value FROM meta").fetchall())
            if not rows:
                rows = {"schema_version": str(SCHEMA_VERSION), "epoch": os.urandom(8).hex()}
                w.executemany("INSERT INTO meta VALUES (?, ?)", rows.items())
            w.execute("COMMIT")
        except BaseException:
            w.execute("ROLLBACK")
            raise
        if rows.get("schema_version") != str(SCHEMA_VERSION):
            raise StoreCorruptError(
                f"{self.path}: store schema version {rows.get('schema_version')!r};"
                f" this loomdb reads version {SCHEMA_VERSION}"
            )
        return str(rows["epoch"])

    # --- plumbing -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self.path}: the store is closed")

    def _locked(self, lock: threading.Lock, fn: Callable[[], T]) -> T:
        with lock, _translate(self.path):
            self._check_open()
            return fn()

    async def _read(self, fn: Callable[[], T]) -> T:
        self._check_open()
        return await anyio.to_thread.run_sync(self._locked, self._rlock, fn)

    async def _read_small(self, fn: Callable[[], T], size: int) -> T:
        """:meth:`_read` of at most ``size`` rows or keys: on the caller's thread when
        ``size`` is at most :data:`INLINE_READ` and the reader is free. A small indexed
        read costs less than the worker-thread hop around it (a node receiving gossip
        made five hops per entry); a large one, or a busy reader, goes to the thread."""
        self._check_open()
        if size > INLINE_READ or not self._rlock.acquire(blocking=False):
            return await anyio.to_thread.run_sync(self._locked, self._rlock, fn)
        try:
            with _translate(self.path):
                self._check_open()
                return fn()
        finally:
            self._rlock.release()

    async def _write(self, fn: Callable[[], T]) -> T:
        self._check_open()
        return await anyio.to_thread.run_sync(self._locked, self._wlock, fn)

    def _held(self, conn: sqlite3.Connection, cids: Sequence[CID]) -> set[CID]:
        found: set[CID] = set()
        for part in _chunks([_BLOB(c.binary) for c in cids]):
            rows = conn.execute(f"SELECT cid FROM entries WHERE cid IN ({_marks(len(part))})", part)
            found.update(CID(r[0]) for r in rows)
        return found

    def _doc_ids_of(self, keys: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], int]:
        """The ``docs`` row ids of documents (space, collection, document), the
        missing rows made: a few statements for a batch, not two per document. New
        rows get the ids SQLite would choose (max + 1: one writer, inside its
        transaction)."""
        w = self._w
        out: dict[tuple[str, str, str], int] = {}
        todo: dict[tuple[str, str], list[str]] = {}
        for key in keys:
            doc = self._doc_ids.get(key)
            if doc is not None:
                out[key] = doc
            elif key not in out:
                out[key] = -1  # placeholder, keeps each key once
                todo.setdefault(key[:2], []).append(key[2])
        if not todo:
            return out
        missing: list[tuple[str, str, str]] = []
        for (space, collection), names in todo.items():
            found: dict[str, int] = {}
            for part in _chunks(names):
                found.update(
                    w.execute(
                        "SELECT document, id FROM docs WHERE space=? AND collection=?"
                        f" AND document IN ({_marks(len(part))})",
                        (space, collection, *part),
                    )
                )
            for name in names:
                doc = found.get(name)
                if doc is None:
                    missing.append((space, collection, name))
                else:
                    out[(space, collection, name)] = doc
        if missing:
            first = int(w.execute("SELECT coalesce(max(id), 0) + 1 FROM docs").fetchone()[0])
            w.executemany(
                "INSERT INTO docs(id, space, collection, document) VALUES (?,?,?,?)",
                [(first + i, *key) for i, key in enumerate(missing)],
            )
            out.update((key, first + i) for i, key in enumerate(missing))
        for key, doc in out.items():
            self._doc_ids[key] = doc
        return out

    # --- writes ---------------------------------------------------------------

    async def put_entries(self, entries: Iterable[EntryInput]) -> list[PutResult]:
        items = list(entries)  # iterate the caller's iterable on the caller's thread
        return await self._write(lambda: self._put(items))

    def try_put_entries(self, entries: Iterable[EntryInput]) -> list[PutResult] | None:
        """:meth:`put_entries` on the caller's thread, if no other write holds the
        writer; else None (then await :meth:`put_entries`). For callers that run on
        the event loop anyway and write small batches (the document layer's own
        writes): no worker-thread hop, which cost more than the insert."""
        if not self._wlock.acquire(blocking=False):
            return None
        try:
            with _translate(self.path):
                self._check_open()
                return self._put(list(entries))
        finally:
            self._wlock.release()

    def _put(self, items: list[EntryInput]) -> list[PutResult]:
        w = self._w
        w.execute("BEGIN IMMEDIATE")
        try:
            # Inside the write transaction: what ``held`` reports cannot change before commit.
            batch = prepare_batch(items, lambda cids: self._held(w, cids), self.policy)
            first = 0
            if batch.new:
                first = self._insert([entry for _, entry in batch.new])
            w.execute("COMMIT")
            self._checkpoints.committed()
        except BaseException:
            w.execute("ROLLBACK")
            self._doc_ids.clear()  # ids handed out in the rolled-back transaction are void
            raise
        return finish_results(batch, first)

    def _insert(self, entries: list[Entry]) -> int:
        """Insert verified new entries and update heads, inside the open transaction.

        Set-at-a-time: a few ``executemany`` calls per batch rather than several
        statements per entry (3x faster). Heads rule: an entry is a head unless
        an entry of its document names it as a parent; naming a parent removes
        it from the heads. A parent that is itself in the batch is settled here,
        without asking SQLite: it has no heads row to remove yet, it is named, and
        no ``parent_refs`` row is written for it (none would ever be read).
        """
        w = self._w
        keys = [(e.space, e.collection, e.document) for e in entries]
        docs = self._doc_ids_of(keys)
        # Parallel lists of bytes and ints, and rows made as SQLite takes them: few
        # objects that outlive the batch for the garbage collector to walk.
        cids: list[bytes] = []
        cid_docs: list[int] = []
        ref_parents: list[bytes] = []
        ref_docs: list[int] = []

        def rows() -> Iterator[tuple[Any, ...]]:
            for e, doc in zip(entries, map(docs.__getitem__, keys), strict=True):
                cid = e.cid.binary
                cids.append(cid)
                cid_docs.append(doc)
                ps = e.parents
                if len(ps) == 1:  # the usual case: no join
                    parent = ps[0].binary
                    ref_parents.append(parent)
                    ref_docs.append(doc)
                    parents = _BLOB(parent)
                else:
                    for p in ps:
                        ref_parents.append(p.binary)
                        ref_docs.append(doc)
                    parents = _BLOB(b"".join(p.binary for p in ps))
                yield (_BLOB(cid), doc, e.kind, e.height, _BLOB(e.author),
                       e.created_at - _TS_OFFSET, e.key_id, parents, _BLOB(e.raw))  # fmt: skip

        insert = (
            "INSERT INTO entries(cid, doc, kind, height, author, created_at, key_id, parents, raw)"
            " VALUES (?,?,?,?,?,?,?,?,?)"
        )
        if len(entries) == 1:  # (a local write's entry: its seq without another statement)
            first = w.execute(insert, next(rows())).lastrowid or 0
        else:
            w.executemany(insert, rows())
            # One writer, one transaction, AUTOINCREMENT: the batch's seqs are contiguous.
            first = int(w.execute("SELECT max(seq) FROM entries").fetchone()[0]) - len(entries) + 1
        here = set(cids)
        # (parent, doc) pairs named by an entry of this batch, and the refs to parents
        # outside it. Only those go to ``parent_refs``: the table answers "is a new entry
        # named by one stored before it?" (below), and an entry of this batch is never
        # new again (a CID is stored once), so a row naming it would never be read.
        named: set[tuple[bytes, int]] = set()
        outside: list[tuple[bytearray, int]] = []
        for ref in zip(ref_parents, ref_docs, strict=True):
            if ref[0] in here:
                named.add(ref)
            else:
                outside.append((_BLOB(ref[0]), ref[1]))
        if outside:
            w.executemany("INSERT OR IGNORE INTO parent_refs(parent, doc) VALUES (?,?)", outside)
            w.executemany("DELETE FROM heads WHERE cid=? AND doc=?", outside)
        # Named by an entry stored before (one that arrived before its parent)?
        ask = [_BLOB(c) for c, d in zip(cids, cid_docs, strict=True) if (c, d) not in named]
        for part in _chunks(ask):
            named.update(
                w.execute(
                    f"SELECT parent, doc FROM parent_refs WHERE parent IN ({_marks(len(part))})",
                    part,
                )
            )
        w.executemany(
            "INSERT INTO heads(cid, doc) VALUES (?,?)",
            ((_BLOB(c), d) for c, d in zip(cids, cid_docs, strict=True) if (c, d) not in named),
        )
        return first

    # --- reads ----------------------------------------------------------------

    def _decode(self, raw: bytes) -> Entry:
        # Verified on the way in; reading back skips the signature (the costly part).
        return decode_entry(raw, policy=self.policy, check_signature=False)

    def _raw_by_cid(self, cids: Sequence[CID]) -> dict[CID, bytes]:
        out: dict[CID, bytes] = {}
        for part in _chunks([c.binary for c in cids]):
            rows = self._r.execute(
                f"SELECT cid, raw FROM entries WHERE cid IN ({_marks(len(part))})", part
            )
            out.update((CID(c), raw) for c, raw in rows)
        return out

    async def get_entries(self, cids: Sequence[CID]) -> list[Entry | None]:
        wanted = check_cids(cids)

        def run() -> list[Entry | None]:
            found = self._raw_by_cid(wanted)
            return [None if (raw := found.get(c)) is None else self._decode(raw) for c in wanted]

        return await self._read_small(run, len(wanted))

    async def get_raw(self, cids: Sequence[CID]) -> list[bytes | None]:
        """The entries' bytes as stored, aligned with ``cids`` (no decoding)."""
        wanted = check_cids(cids)

        def run() -> list[bytes | None]:
            # Keyed by the CIDs' bytes: no CID object made per row read.
            found: dict[bytes, bytes] = {}
            for part in _chunks([c.binary for c in wanted]):
                found.update(
                    self._r.execute(
                        f"SELECT cid, raw FROM entries WHERE cid IN ({_marks(len(part))})", part
                    )
                )
            return [found.get(c.binary) for c in wanted]

        return await self._read(run)

    async def has_entries(self, cids: Sequence[CID]) -> list[bool]:
        wanted = check_cids(cids)

        def run() -> list[bool]:
            held = self._held(self._r, wanted)
            return [c in held for c in wanted]

        return await self._read_small(run, len(wanted))

    async def get_metadata(self, cids: Sequence[CID]) -> list[EntryMeta | None]:
        wanted = check_cids(cids)

        def run() -> list[EntryMeta | None]:
            found: dict[CID, EntryMeta] = {}
            for part in _chunks([c.binary for c in wanted]):
                rows = self._r.execute(
                    f"SELECT {_META_COLUMNS} FROM entries e JOIN docs d ON d.id = e.doc"
                    f" WHERE e.cid IN ({_marks(len(part))})",
                    part,
                )
                for row in rows:
                    meta = _meta_from_row(row)
                    found[meta.cid] = meta
            return [found.get(c) for c in wanted]

        return await self._read(run)

    async def heads(self, space: str, collection: str, document: str) -> list[CID]:
        def run() -> list[CID]:
            rows = self._r.execute(
                "SELECT h.cid FROM heads h JOIN docs d ON d.id = h.doc"
                " WHERE d.space=? AND d.collection=? AND d.document=? ORDER BY h.cid",
                (space, collection, document),
            )
            return [CID(r[0]) for r in rows]

        return await self._read(run)

    async def list_spaces(self) -> list[str]:
        return await self._read(
            lambda: [r[0] for r in self._r.execute("SELECT DISTINCT space FROM docs ORDER BY 1")]
        )

    async def list_collections(self, space: str) -> list[str]:
        sql = "SELECT DISTINCT collection FROM docs WHERE space=? ORDER BY 1"
        return await self._read(lambda: [r[0] for r in self._r.execute(sql, (space,))])

    async def list_documents(self, space: str, collection: str) -> list[str]:
        sql = "SELECT document FROM docs WHERE space=? AND collection=? ORDER BY 1"
        return await self._read(lambda: [r[0] for r in self._r.execute(sql, (space, collection))])

    async def list_entries(self, space: str, collection: str, document: str) -> list[EntryMeta]:
        sql = (
            f"SELECT {_META_COLUMNS} FROM entries e JOIN docs d ON d.id = e.doc"
            " WHERE d.space=? AND d.collection=? AND d.document=? ORDER BY e.height, e.cid"
        )
        key = (space, collection, document)
        return await self._read(lambda: [_meta_from_row(r) for r in self._r.execute(sql, key)])

    async def missing_parents(self, cids: Sequence[CID]) -> list[CID]:
        wanted = check_cids(cids)

        def run() -> list[CID]:
            named: set[CID] = set()
            for part in _chunks([c.binary for c in wanted]):
                rows = self._r.execute(
                    f"SELECT parents FROM entries WHERE cid IN ({_marks(len(part))})", part
                )
                for (blob,) in rows:
                    named.update(_split_parents(blob))
            parents = sorted(named)
            return sorted(set(parents) - self._held(self._r, parents))

        return await self._read(run)

    async def scan(self, after: int = 0, limit: int = 1000) -> list[Received]:
        n = check_limit(limit)

        def run() -> list[Received]:
            rows = self._r.execute(
                "SELECT seq, raw FROM entries WHERE seq > ? ORDER BY seq LIMIT ?", (after, n)
            )
            return [Received(seq, self._decode(raw)) for seq, raw in rows]

        return await self._read_small(run, n)

    async def store_head(self) -> StoreHead:
        def run() -> StoreHead:
            row = self._r.execute("SELECT max(seq) FROM entries").fetchone()
            return StoreHead(self._epoch, int(row[0] or 0))

        return await self._read(run)

    async def count(self) -> int:
        return await self._read(
            lambda: int(self._r.execute("SELECT count(*) FROM entries").fetchone()[0])
        )

    # --- sync cursors ---------------------------------------------------------

    async def get_cursor(self, name: str) -> int | None:
        """A receipt-log position noted by :meth:`set_cursor` (sync: how far this
        store has pulled another store's log), or None."""

        def run() -> int | None:
            row = self._r.execute("SELECT value FROM meta WHERE key = ?", ("cursor " + name,))
            found = row.fetchone()
            return None if found is None else int(found[0])

        return await self._read(run)

    async def set_cursor(self, name: str, seq: int) -> None:
        def run() -> None:
            key = "cursor " + name
            self._w.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(seq)))

        await self._write(run)

    # --- sync -----------------------------------------------------------------

    async def with_range_index(self, set_key: SetKey, fn: Callable[[RangeIndex], T]) -> T:
        """Run ``fn`` with a :class:`~loomdb.sync.ranges.RangeIndex` of a set's entries.

        Space and collection sets are answered from their persistent fingerprint
        trees, first caught up with every entry stored so far (one write
        transaction); a document set from the document's entries. ``fn`` runs
        on a worker thread, inside one read transaction, so all it reads
        agrees; it should be quick, as other reads of this store wait for it.
        A set that holds nothing yet is empty, not an error.
        """
        if not isinstance(set_key, SetKey):
            raise ValidationError(f"expected a SetKey, got {type(set_key).__name__}")
        if set_key.document is None:
            await self._write(self._fingerprints.catch_up)
        return await self._read(lambda: self._with_view(set_key, fn))

    async def catch_up_fingerprints(self) -> int:
        """Index in the fingerprint trees every entry stored so far (what a
        reconciliation does first), in one write transaction; returns how many
        entries that was. A pull calls it as it stores its batches
        (:func:`loomdb.sync.replicate.transfer`), so the next reconciliation
        finds the trees built."""
        return await self._write(self._fingerprints.catch_up)

    async def reconcile(self, requests: Sequence[ReconcileRequest]) -> list[ReconcileReply]:
        """One Negentropy step per request, on this store's fingerprint trees."""
        wanted = list(requests)
        if any(r.set.document is None for r in wanted):
            await self._write(self._fingerprints.catch_up)  # once for all the sets

        def run() -> list[ReconcileReply]:
            return [self._with_view(r.set, partial(reconcile_on, request=r)) for r in wanted]

        return await self._read(run)

    def _with_view(self, set_key: SetKey, fn: Callable[[RangeIndex], T]) -> T:
        r = self._r
        r.execute("BEGIN")  # one snapshot for everything fn reads
        try:
            index: RangeIndex
            if set_key.document is None:
                index = fingerprints.open_view(r, set_key.space, set_key.collection)
            else:
                assert set_key.collection is not None
                index = MemoryRangeIndex(
                    fingerprints.document_items(
                        r, set_key.space, set_key.collection, set_key.document
                    )
                )
            return fn(index)
        finally:
            if r.in_transaction:
                r.execute("ROLLBACK")

    # --- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        """Close both connections (waits for a write in progress to finish)."""
        with self._wlock, self._rlock:
            if not self._closed:
                self._closed = True
                self._checkpoints.close()
                self._r.close()
                self._w.close()

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)

    async def __aenter__(self) -> SQLiteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
