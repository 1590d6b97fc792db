"""Materialized views of documents, in their own SQLite file (``views.db``).

The entry store is the truth; this file is derived from it and can be deleted:
it is rebuilt from the entries. It holds

* ``docs``: each document's current value (JSON), heads, times, deleted flag —
  reads and queries never run the CRDT;
* ``states``: what the document layer did with each entry (applied, pending,
  refused), with the Loro op range an applied entry holds, so a delta's
  dependencies can be traced to the entries that hold them, the key a
  pending entry waits for (``wants_key``: none held under its id reads it) and,
  for the first entries of a document, their Loro delta (``delta``: a document of
  a few entries opens by importing them, with no store read and no snapshot);
* ``waits``: pending entries by the parent they wait for;
* ``snapshots``: Loro snapshots of documents, each with the heads it was taken
  at, so a document that is not open loads with one import, not a replay of
  every entry; one whose heads moved on since is replayed (and saved again);
* ``meta``: the store epoch and the store sequence number consumed so far.

One writer (the :class:`~loomdb.documents.database.Database`) owns it.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

from loomdb.documents import query as q
from loomdb.documents.values import dumps, loads
from loomdb.entries.cid import CID
from loomdb.errors import QueryError, StoreCorruptError
from loomdb.stores.checkpoints import Checkpointer

SCHEMA_VERSION: Final = 4  # bump when the layout changes: the file is rebuilt
APPLIED: Final = 0
PENDING: Final = 1
REFUSED: Final = 2
STATE_NAMES: Final = {APPLIED: "applied", PENDING: "pending", REFUSED: "refused"}
SCHEMA_DOC: Final = "$schema"

_DDL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, schema TEXT);
CREATE TABLE IF NOT EXISTS docs(
    id INTEGER PRIMARY KEY, coll INTEGER NOT NULL, name TEXT NOT NULL,
    value TEXT, live INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL DEFAULT 0, updated_at INTEGER NOT NULL DEFAULT 0,
    heads BLOB NOT NULL DEFAULT x'', UNIQUE(coll, name));
CREATE INDEX IF NOT EXISTS docs_live ON docs(coll, live, name);
CREATE TABLE IF NOT EXISTS states(
    cid BLOB PRIMARY KEY, doc INTEGER NOT NULL, state INTEGER NOT NULL, kind TEXT NOT NULL,
    height INTEGER NOT NULL, parents BLOB NOT NULL, created_at INTEGER NOT NULL,
    peer INTEGER, op_start INTEGER, op_end INTEGER, deleted INTEGER NOT NULL DEFAULT 0,
    reason TEXT, wants_key TEXT, delta BLOB) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS states_keys ON states(wants_key) WHERE wants_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS states_doc ON states(doc, height);
CREATE INDEX IF NOT EXISTS states_ops ON states(doc, peer, op_start) WHERE peer IS NOT NULL;
CREATE TABLE IF NOT EXISTS waits(
    parent BLOB NOT NULL, child BLOB NOT NULL, PRIMARY KEY(parent, child)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots(
    doc INTEGER PRIMARY KEY, heads BLOB NOT NULL, heights BLOB NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS indexes(
    coll INTEGER NOT NULL, path TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY(coll, path));
"""


# StateRow and DocRow are made once per entry written or document opened: not frozen,
# since a frozen dataclass's __init__ sets each field through object.__setattr__
# (3.8 against 0.34 µs for StateRow's 14 fields). Nothing changes one after it is made.
@dataclass(slots=True)
class StateRow:
    cid: CID
    doc: int
    state: int
    kind: str
    height: int
    parents: tuple[CID, ...]
    created_at: int
    peer: int | None
    op_start: int | None
    op_end: int | None
    deleted: bool
    reason: str | None
    wants_key: str | None = None  # pending: the key id no held material reads
    delta: bytes | None = None  # applied: its Loro delta, when kept (see Views.replay_plans)


@dataclass(frozen=True, slots=True)
class KeyWaits:
    """Pending entries that wait for a key: their own, or one an ancestor they wait
    on needs. ``keys`` are the key ids; ``reason`` is one such entry's reason."""

    entries: int
    keys: tuple[str, ...]
    reason: str | None


@dataclass(slots=True)  # not frozen: see StateRow
class DocRow:
    id: int
    coll: int
    name: str
    value: dict[str, Any] | None
    live: bool
    deleted: bool
    created_at: int
    updated_at: int
    heads: tuple[CID, ...]


class Replay(NamedTuple):
    """What a replay reads of one applied entry: its CID's binary form, its height and
    its kept delta (None: read it from the store)."""

    cid: bytes
    height: int
    delta: bytes | None


class Snapshot(NamedTuple):
    """A document's Loro snapshot (``data``) as it was at ``heads``, of ``heights``."""

    heads: tuple[CID, ...]
    heights: tuple[int, ...]
    data: bytes


class DocWrite(NamedTuple):
    """A document's materialized row, as :meth:`Views.write_docs` writes it (a tuple:
    one is made per document written)."""

    doc: int
    value: dict[str, Any]
    live: bool
    deleted: bool
    created_at: int
    updated_at: int
    heads: Sequence[CID]


# Python's sqlite3 (3.11) looks for an adapter for every ``bytes`` and ``None``
# parameter (a failed attribute lookup each, ~0.5 µs); a ``bytearray`` is bound as
# it is, as the same blob. The batch writes bind their blobs as bytearrays.
_BLOB: Final = bytearray


def _pack(cids: Iterable[CID]) -> bytes:
    return b"".join(c.binary for c in cids)


def _unpack(blob: bytes) -> tuple[CID, ...]:
    return tuple(CID(blob[i : i + 36]) for i in range(0, len(blob), 36))


_STATE_COLS = (
    "cid, doc, state, kind, height, parents, created_at, peer, op_start, op_end, deleted, reason,"
    " wants_key"
)
_DOC_COLS = "id, coll, name, value, live, deleted, created_at, updated_at, heads"


def _state(row: tuple[Any, ...]) -> StateRow:
    # (No read selects the delta into a StateRow: a replay reads it as a Replay.)
    return StateRow(
        CID(row[0]), row[1], row[2], row[3], row[4], _unpack(row[5]), row[6],
        row[7], row[8], row[9], bool(row[10]), row[11], row[12],
    )  # fmt: skip


def _doc(row: tuple[Any, ...]) -> DocRow:
    value = loads(row[3]) if row[3] is not None else None
    return DocRow(
        row[0], row[1], row[2], value, bool(row[4]), bool(row[5]), row[6], row[7],
        _unpack(row[8]),
    )  # fmt: skip


class Views:
    """The ``views.db`` file. Methods are synchronous; callers hold ``lock``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            Checkpointer.take_over(self._db)  # checkpoints on their own thread, not in commits
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                self._drop_all()  # derived data: rebuilt from the entry store
            self._db.executescript(_DDL)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptError(f"{path}: not a views file loomdb can read ({exc})") from exc
        self._checkpoints = Checkpointer(path)
        self._depth = 0
        self._coll_ids: dict[str, int] = {}
        self._doc_ids: dict[tuple[int, str], int] = {}
        # Rows given an id by ``doc_ids(reserve=True)`` and not written yet: id -> (coll, name).
        self._reserved: dict[int, tuple[int, str]] = {}

    def _drop_all(self) -> None:
        rows = self._db.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'index')"
            " AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        for kind, name in rows:
            if kind == "table":
                self._db.execute(f'DROP TABLE IF EXISTS "{name}"')

    def close(self) -> None:
        self._checkpoints.close()
        self._db.close()

    @contextmanager
    def tx(self) -> Iterator[None]:
        """One write transaction; nested calls join the outer one."""
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                self._coll_ids.clear()
                self._doc_ids.clear()
                self._reserved.clear()
                raise
            finally:
                self._depth -= 1
            self._db.execute("COMMIT")
            self._checkpoints.committed()

    # --- meta -----------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def reset(self) -> None:
        """Forget everything derived (the store was replaced)."""
        for table in ("collections", "docs", "states", "waits", "snapshots", "meta"):
            self._db.execute(f"DELETE FROM {table}")
        for (name,) in self._db.execute("SELECT name FROM indexes").fetchall():
            self._db.execute(f'DROP INDEX IF EXISTS "{name}"')
        self._db.execute("DELETE FROM indexes")
        self._coll_ids.clear()
        self._doc_ids.clear()
        self._reserved.clear()

    # --- collections and documents --------------------------------------------

    def coll_id(self, name: str, create: bool = True) -> int | None:
        cached = self._coll_ids.get(name)
        if cached is not None:
            return cached
        row = self._db.execute("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
        if row is None:
            if not create:
                return None
            row = self._db.execute(
                "INSERT INTO collections(name) VALUES (?) RETURNING id", (name,)
            ).fetchone()
        self._coll_ids[name] = int(row[0])
        return int(row[0])

    def collections(self) -> list[tuple[int, str, str | None]]:
        return self._db.execute("SELECT id, name, schema FROM collections ORDER BY name").fetchall()

    def set_schema(self, coll: int, schema: str | None) -> None:
        self._db.execute("UPDATE collections SET schema = ? WHERE id = ?", (schema, coll))

    def schema_of(self, coll: int) -> str | None:
        row = self._db.execute("SELECT schema FROM collections WHERE id = ?", (coll,)).fetchone()
        return None if row is None else row[0]

    def _next_doc_id(self) -> int:
        """The id SQLite would give a new row (max + 1: one writer, inside its
        transaction), above the ids reserved too."""
        first = int(self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM docs").fetchone()[0])
        return max(first, max(self._reserved, default=0) + 1)

    def doc_id(self, coll: int, name: str, create: bool = True) -> int | None:
        """The row id of a document; without ``create``, None when it has no row (a
        reserved one, not written yet, counts as none)."""
        key = (coll, name)
        cached = self._doc_ids.get(key)
        if cached is not None:
            return None if not create and cached in self._reserved else cached
        row = self._db.execute(
            "SELECT id FROM docs WHERE coll = ? AND name = ?", (coll, name)
        ).fetchone()
        if row is None:
            if not create:
                return None
            doc = self._next_doc_id()
            self._db.execute("INSERT INTO docs(id, coll, name) VALUES (?, ?, ?)", (doc, coll, name))
            row = (doc,)
        self._doc_ids[key] = int(row[0])
        return int(row[0])

    def known_doc_id(self, collection: str, name: str) -> int | None:
        """The row id of a document this object has seen a row of (no SQL), else None."""
        coll = self._coll_ids.get(collection)
        doc = None if coll is None else self._doc_ids.get((coll, name))
        return None if doc is None or doc in self._reserved else doc

    def doc_ids(
        self, coll: int, names: Sequence[str], *, reserve: bool = False
    ) -> tuple[dict[str, int], set[str]]:
        """The row ids of documents ``names`` of ``coll``, creating the missing rows
        (call inside :meth:`tx`: one transaction for them all), and the names whose
        rows were created here (documents with nothing yet: no states, no value).

        With ``reserve``, the missing rows get ids but are not inserted: the
        batch that writes them writes each row once, whole (:meth:`write_docs`),
        and :meth:`drop_reserved` forgets them if it fails. Until then
        :meth:`doc_id` without ``create`` does not see them."""
        ids: dict[str, int] = {}
        todo: list[str] = []
        for name in dict.fromkeys(names):
            cached = self._doc_ids.get((coll, name))
            if cached is not None:
                ids[name] = cached
            else:
                todo.append(name)
        for i in range(0, len(todo), 500):
            chunk = todo[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT name, id FROM docs WHERE coll = ? AND name IN ({marks})", (coll, *chunk)
            ).fetchall()
            ids.update(rows)
        created = [name for name in todo if name not in ids]
        if created:
            # The ids given here, so that one statement inserts them all (or none, reserved).
            first = self._next_doc_id()
            rows = [(first + i, coll, name) for i, name in enumerate(created)]
            if reserve:
                self._reserved.update((doc, (coll, name)) for doc, coll, name in rows)
            else:
                self._db.executemany("INSERT INTO docs(id, coll, name) VALUES (?, ?, ?)", rows)
            ids.update((name, doc) for doc, _, name in rows)
        for name in todo:
            self._doc_ids[(coll, name)] = ids[name]
        return ids, set(created)

    def doc(self, doc: int) -> DocRow:
        row = self._db.execute(f"SELECT {_DOC_COLS} FROM docs WHERE id = ?", (doc,)).fetchone()
        return _doc(row)

    def load_docs(self, docs: Sequence[int]) -> dict[int, tuple[DocRow, Snapshot | None]]:
        """The rows of documents ``docs``, each with its snapshot when one was taken
        at the heads the row has now (else None: the document moved on since)."""
        out: dict[int, tuple[DocRow, Snapshot | None]] = {}
        cols = ", ".join(f"d.{c}" for c in _DOC_COLS.split(", "))
        for i in range(0, len(docs), 500):
            chunk = docs[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT {cols}, s.heights, s.data FROM docs d LEFT JOIN snapshots s"
                f" ON s.doc = d.id AND s.heads = d.heads WHERE d.id IN ({marks})",
                chunk,
            ).fetchall()
            for r in rows:
                row = _doc(r)
                snap = None
                if r[10] is not None:
                    heights = struct.unpack(f">{len(r[9]) // 8}Q", r[9])
                    snap = Snapshot(row.heads, heights, r[10])
                out[row.id] = (row, snap)
        return out

    def put_snapshots(self, rows: Iterable[tuple[int, Snapshot]]) -> None:
        """Save documents' snapshots (each replaces the document's last one)."""
        self._db.executemany(
            "INSERT OR REPLACE INTO snapshots(doc, heads, heights, data) VALUES (?, ?, ?, ?)",
            (
                (doc, _BLOB(_pack(s.heads)), _BLOB(struct.pack(f">{len(s.heights)}Q", *s.heights)),
                 _BLOB(s.data))
                for doc, s in rows
            ),
        )  # fmt: skip

    def drop_reserved(self) -> None:
        """Forget the rows reserved and not written (their batch failed)."""
        for key in self._reserved.values():
            self._doc_ids.pop(key, None)
        self._reserved.clear()

    def write_docs(self, rows: Iterable[DocWrite]) -> None:
        """Write documents' materialized rows (value, heads, times, flags): an update
        of the rows there are, an insert of the reserved ones (one statement each)."""
        # Rows are made one at a time, as they are written (a batch's worth alive at
        # once would set the garbage collector off several times per batch).
        updates: list[tuple[Any, ...]] = []
        count = 0

        def inserts() -> Iterator[tuple[Any, ...]]:
            for w in rows:
                data = (dumps(w.value), int(w.live), int(w.deleted), w.created_at, w.updated_at,
                        _BLOB(_pack(w.heads)))  # fmt: skip
                reserved = self._reserved.pop(w.doc, None)
                if reserved is None:
                    updates.append((*data, w.doc))
                else:
                    yield (w.doc, *reserved, *data)

        def all_updates() -> Iterator[tuple[Any, ...]]:
            nonlocal count
            for w in rows:
                count += 1
                yield (dumps(w.value), int(w.live), int(w.deleted), w.created_at, w.updated_at,
                       _BLOB(_pack(w.heads)), w.doc)  # fmt: skip

        update = (
            "UPDATE docs SET value = ?, live = ?, deleted = ?, created_at = ?, updated_at = ?,"
            " heads = ? WHERE id = ?"
        )
        if self._reserved:
            self._db.executemany(
                f"INSERT INTO docs({_DOC_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", inserts()
            )
            count = len(updates)
            done = self._db.executemany(update, updates).rowcount if updates else 0
        else:
            done = self._db.executemany(update, all_updates()).rowcount
        if done != count:
            raise StoreCorruptError(f"{self.path}: {count - done} document rows missing")

    def count_docs(self, coll: int) -> int:
        return int(
            self._db.execute(
                "SELECT count(*) FROM docs WHERE coll = ? AND live = 1", (coll,)
            ).fetchone()[0]
        )

    def query(
        self,
        coll: int,
        filters: Sequence[q.Filter],
        sorts: Sequence[q.Sort],
        limit: int,
        offset: int,
    ) -> list[DocRow]:
        params: list[Any] = [coll]
        where = ["coll = ?", "live = 1"] + [q.filter_sql(f, params) for f in filters]
        order = q.order_sql(sorts, params, self._uses_index(coll, filters))
        params += [limit, offset]
        sql = (
            f"SELECT {_DOC_COLS} FROM docs WHERE {' AND '.join(where)}"
            f" ORDER BY {order} LIMIT ? OFFSET ?"
        )
        return [_doc(r) for r in self._db.execute(sql, params).fetchall()]

    def count(self, coll: int, filters: Sequence[q.Filter]) -> int:
        params: list[Any] = [coll]
        where = ["coll = ?", "live = 1"] + [q.filter_sql(f, params) for f in filters]
        sql = f"SELECT count(*) FROM docs WHERE {' AND '.join(where)}"
        return int(self._db.execute(sql, params).fetchone()[0])

    def explain(self, coll: int, filters: Sequence[q.Filter], sorts: Sequence[q.Sort]) -> str:
        params: list[Any] = [coll]
        where = ["coll = ?", "live = 1"] + [q.filter_sql(f, params) for f in filters]
        order = q.order_sql(sorts, params, self._uses_index(coll, filters))
        sql = f"EXPLAIN QUERY PLAN SELECT id FROM docs WHERE {' AND '.join(where)} ORDER BY {order}"
        return "\n".join(str(r[-1]) for r in self._db.execute(sql, params).fetchall())

    # --- indexes ----------------------------------------------------------------

    def _uses_index(self, coll: int, filters: Sequence[q.Filter]) -> bool:
        """Whether a filter is on an indexed field (then the id order must not
        compete with that index; without one, walking the id index and stopping
        at ``limit`` matches is the better plan)."""
        if not filters:
            return False
        indexed = set(self.indexes(coll))
        return any(f.field in indexed for f in filters)

    def indexes(self, coll: int) -> list[str]:
        rows = self._db.execute("SELECT path FROM indexes WHERE coll = ? ORDER BY path", (coll,))
        return [r[0] for r in rows.fetchall()]

    def ensure_index(self, coll: int, path: str) -> None:
        if not q.is_indexable(path):
            raise QueryError(f"cannot index {path!r}: use names of letters, digits and '_'")
        row = self._db.execute(
            "SELECT 1 FROM indexes WHERE coll = ? AND path = ?", (coll, path)
        ).fetchone()
        if row is not None:
            return
        name = f"ix_{coll}_{path.replace('.', '__')}"
        # (coll, live, field): queries always pin coll and live, so this index
        # is preferred over docs_live as soon as the field is constrained too.
        self._db.execute(
            f'CREATE INDEX IF NOT EXISTS "{name}" ON docs(coll, live, {q.path_sql(path, [])})'
        )
        self._db.execute(
            "INSERT INTO indexes(coll, path, name) VALUES (?, ?, ?)", (coll, path, name)
        )

    # --- entry states -------------------------------------------------------------

    def states(self, cids: Sequence[CID]) -> dict[CID, StateRow]:
        out: dict[CID, StateRow] = {}
        for i in range(0, len(cids), 500):
            chunk = [c.binary for c in cids[i : i + 500]]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT {_STATE_COLS} FROM states WHERE cid IN ({marks})",
                chunk,
            ).fetchall()
            for r in rows:
                s = _state(r)
                out[s.cid] = s
        return out

    def doc_states(self, doc: int) -> list[StateRow]:
        rows = self._db.execute(
            f"SELECT {_STATE_COLS} FROM states WHERE doc = ? ORDER BY height, cid",
            (doc,),
        ).fetchall()
        return [_state(r) for r in rows]

    def replay_plans(self, docs: Sequence[int]) -> dict[int, list[Replay]]:
        """The applied entries of documents ``docs``, each document's by height and CID,
        as much as a replay reads of them (:class:`Replay`: no full :class:`StateRow`
        is made; one statement per 500 documents, not one per document)."""
        out: dict[int, list[Replay]] = {d: [] for d in docs}
        for i in range(0, len(docs), 500):
            chunk = docs[i : i + 500]
            rows = self._db.execute(
                "SELECT doc, cid, height, delta FROM states"
                f" WHERE doc IN ({','.join('?' * len(chunk))}) AND state = ?"
                " ORDER BY doc, height, cid",
                (*chunk, APPLIED),
            ).fetchall()
            for doc, cid, height, delta in rows:
                out[doc].append(Replay(cid, height, delta))
        return out

    def put_state(self, s: StateRow) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO states({_STATE_COLS}, delta)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                s.cid.binary, s.doc, s.state, s.kind, s.height, _pack(s.parents), s.created_at,
                s.peer, s.op_start, s.op_end, int(s.deleted), s.reason, s.wants_key, s.delta,
            ),
        )  # fmt: skip

    def put_states(self, rows: Iterable[StateRow], *, reasons: bool = True) -> None:
        """:meth:`put_state` for many rows, in one statement, each row made as it is
        written (``rows`` may be a generator). ``reasons=False`` says no row has a
        reason or a wanted key: they go as NULLs in the statement (see :data:`_BLOB`)."""
        if reasons:
            self._db.executemany(
                f"INSERT OR REPLACE INTO states({_STATE_COLS}, delta)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    (_BLOB(s.cid.binary), s.doc, s.state, s.kind, s.height,
                     _BLOB(_pack(s.parents)), s.created_at, s.peer, s.op_start, s.op_end,
                     int(s.deleted), s.reason, s.wants_key, s.delta)
                    for s in rows
                ),
            )  # fmt: skip
            return

        def plain() -> Iterator[tuple[Any, ...]]:
            for s in rows:
                if s.reason is not None or s.wants_key is not None:
                    raise ValueError("put_states(reasons=False) given a row with a reason")
                yield (_BLOB(s.cid.binary), s.doc, s.state, s.kind, s.height,
                       _BLOB(_pack(s.parents)), s.created_at, s.peer, s.op_start, s.op_end,
                       int(s.deleted), s.delta)  # fmt: skip

        self._db.executemany(
            f"INSERT OR REPLACE INTO states({_STATE_COLS}, delta)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL,NULL,?)",
            plain(),
        )

    def owner(self, doc: int, peer: int, counter: int) -> StateRow | None:
        """The applied entry of ``doc`` holding op ``counter@peer``."""
        row = self._db.execute(
            f"SELECT {_STATE_COLS} FROM states WHERE doc = ? AND peer = ? AND op_start <= ?"
            " ORDER BY op_start DESC LIMIT 1",
            (doc, peer, counter),
        ).fetchone()
        if row is None:
            return None
        s = _state(row)
        return s if s.state == APPLIED and s.op_end is not None and counter < s.op_end else None

    def add_waits(self, child: CID, parents: Iterable[CID]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO waits(parent, child) VALUES (?, ?)",
            [(p.binary, child.binary) for p in parents],
        )

    def take_waiters(self, parent: CID) -> list[CID]:
        rows = self._db.execute(
            "DELETE FROM waits WHERE parent = ? RETURNING child", (parent.binary,)
        ).fetchall()
        return [CID(r[0]) for r in rows]

    def waiting_on(self, child: CID) -> list[CID]:
        rows = self._db.execute("SELECT parent FROM waits WHERE child = ?", (child.binary,))
        return [CID(r[0]) for r in rows.fetchall()]

    def stalled(self) -> list[CID]:
        """Pending entries that wait for no parent (they lacked a key)."""
        rows = self._db.execute(
            "SELECT cid FROM states WHERE state = ? AND cid NOT IN (SELECT child FROM waits)",
            (PENDING,),
        ).fetchall()
        return [CID(r[0]) for r in rows]

    def key_waits(
        self, *, doc: int | None = None, colls: Sequence[int] = (), docs: Sequence[int] = ()
    ) -> KeyWaits:
        """The entries that wait for a key, of one document (``doc``), or of the
        collections ``colls`` and documents ``docs`` (none given: of all).

        O(answer), cheaply (a sync report asks this after every pull; at 100,000
        waiting entries a recursive walk from every one of them took 1.2 s): those
        whose own key is lacking are counted per key on the ``states_keys`` index,
        with no set of them built; only the entries that wait on one of them through
        ``waits`` (which holds only what waits for a parent, and drives that part)
        are walked."""
        params: list[Any] = []
        scope, index = "", " INDEXED BY states_keys"
        if doc is not None:
            scope, params, index = " AND s.doc = ?", [doc], ""  # states_doc is better here
        elif colls or docs:
            marks = ",".join("?" * len(colls)) or "NULL"
            doc_marks = ",".join("?" * len(docs)) or "NULL"
            scope = (
                f" AND (s.doc IN ({doc_marks})"
                f" OR (SELECT coll FROM docs WHERE id = s.doc) IN ({marks}))"
            )
            params = [*docs, *colls]
        root = f"s.wants_key IS NOT NULL AND s.state = {PENDING}{scope}"
        rows = self._db.execute(
            f"SELECT s.wants_key, count(*), min(s.reason) FROM states s{index}"
            f" WHERE {root} GROUP BY s.wants_key ORDER BY s.wants_key",
            params,
        ).fetchall()
        roots = sum(int(r[1]) for r in rows)
        # Every entry waiting (through ``waits``) on a root, less those that are roots
        # themselves: ``waits`` drives the seed (CROSS JOIN keeps it outer).
        below = self._db.execute(
            "WITH RECURSIVE blocked(cid) AS ("
            f"SELECT w.child FROM waits w CROSS JOIN states s ON s.cid = w.parent WHERE {root}"
            " UNION SELECT w.child FROM waits w JOIN blocked b ON w.parent = b.cid) "
            "SELECT count(*) FROM blocked b WHERE NOT EXISTS"
            f" (SELECT 1 FROM states s WHERE s.cid = b.cid AND {root})",
            [*params, *params],
        ).fetchone()[0]
        return KeyWaits(roots + int(below), tuple(r[0] for r in rows), rows[0][2] if rows else None)

    def count_states(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, count(*) FROM states GROUP BY state").fetchall()
        return {STATE_NAMES[s]: n for s, n in rows}
