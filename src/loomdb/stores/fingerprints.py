"""Persistent fingerprint trees: the :class:`~loomdb.sync.ranges.RangeIndex` of ``SQLiteStore``.

Reconciliation asks a set three things (count and id-sum of a range, the
items of a range, the item at a rank); this module answers them from trees
kept in the store's own SQLite file, so one question costs a handful of
B-tree seeks, never a scan of the set.

The tree (one per set: a space, or one collection of a space)
-------------------------------------------------------------
A content-defined search tree, as in a Merkle search tree. The *level* of an
item is the number of leading zero nibbles of a keyed hash of its id (the key
is a random secret of this store, kept in ``meta``, so no one can grind ids
that unbalance the tree), capped at :data:`MAX_LEVEL`. Level-0 nodes are the
items. A level-L node (L >= 1) starts at an item of level >= L, or at the
*sentinel* key ``b''`` (the leftmost node of every level), and spans the
items up to the next item of level >= L; its children are the level-(L-1)
nodes that start inside it. The fan-out is 16 on average. The top level is
the highest level of any item (at least 1); the *root* is the virtual parent
of the top level's nodes and is kept in ``fp_sets``.

Every node row holds its *own* count and sum (those of the items it spans;
``n = 1`` and the id itself for an item) and its *exclusive* running count and
sum within its parent: those of the siblings before it (``c``, ``t``). So the
count and sum of the items below a key is one row per level: the last node
below the key at that level, its ``c``/``t``, plus the item itself at level 0.
That is ``top + 1`` seeks, one SQL statement, answered per range boundary and
memoised within a view.

Keys are 40-byte blobs: the timestamp as 8 big-endian bytes, then the 32-byte
id, so blob order (memcmp) is item order. Sums are 32-byte little-endian
blobs, reduced modulo 2**256.

Schema (added to the store's schema; new tables only)::

    fp_sets(space, collection, tree, top, n, s)   collection '' = the whole space
    fp_nodes(set_id, level, k, n, s, c, t)        set_id = fp_sets.tree
    meta: fp_key (the level hash secret), fp_cursor (last seq indexed)

Maintenance is from the store's receipt log: :meth:`FingerprintIndex.catch_up`
indexes the entries with ``seq`` above the cursor and moves the cursor in the
same transaction, so the trees and the cursor always agree, whatever crashes.
It runs before each reconciliation, and as a pull stores its batches
(``SQLiteStore.catch_up_fingerprints``), so an initial sync leaves its trees built.
A set whose backlog is small next to it is updated in place. When every new item
lies beyond the set's last one (an append, the usual case since new entries
carry new timestamps, and a pull's order), the builder resumes from the tree's
right spine: one row per new node, the spine's own sums rewritten, no running
sum touched (:meth:`FingerprintIndex._append`). Otherwise the new items'
ancestors are recomputed from the first changed child on. A set whose backlog
is large next to it (a first catch-up) is rebuilt in one sorted pass, streamed,
into a new tree id that replaces the old one. Whichever path, the rows are
those of a build from scratch. Stores never delete entries, so items are only
ever added.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import weakref
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from loomdb.errors import StoreCorruptError, ValidationError
from loomdb.sync.ranges import ID_SIZE, INFINITY, MAX_TIMESTAMP, SUM_MODULUS, ZERO, Item

MAX_LEVEL: Final = 8
"""Levels are capped: 16**8 items per top-level node before the top widens."""

# Bulk or in place? Measured costs per item (µs, one core, a set of 1M items):
# adding an item inside a set rewrites the running sums of the siblings after
# it (~35 row writes); an item beyond the set's last one (an append, the usual
# case) touches one or two rows per level; a bulk rebuild costs about the same
# for every item of the resulting set.
COST_INNER: Final = 500
COST_APPEND: Final = 30
COST_BULK: Final = 12
BULK_AT_LEAST: Final = 2
"""A backlog of at least 1/BULK_AT_LEAST of the set is always built in bulk, streamed."""

KEY_SIZE: Final = 8 + ID_SIZE
_SENTINEL: Final = b""
_BEYOND: Final = b"\xff" * (KEY_SIZE + 1)  # above every key
_ZERO_SUM: Final = bytes(32)
_SUM_MASK: Final = SUM_MODULUS - 1  # x & _SUM_MASK == x % SUM_MODULUS, for every int x
_ZERO_KEY: Final = ZERO[0].to_bytes(8, "big") + ZERO[1]
_INFINITY_KEY: Final = INFINITY[0].to_bytes(8, "big") + INFINITY[1]
_CHUNK: Final = 20_000  # rows per executemany / per read of an old tree
_SMALL_NTH: Final = 16  # nth(lo, k) for k below this reads k+1 items instead of descending

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS fp_sets(
    space TEXT NOT NULL, collection TEXT NOT NULL,
    tree INTEGER NOT NULL UNIQUE, top INTEGER NOT NULL, n INTEGER NOT NULL, s BLOB NOT NULL,
    PRIMARY KEY(space, collection)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fp_nodes(
    set_id INTEGER NOT NULL, level INTEGER NOT NULL, k BLOB NOT NULL,
    n INTEGER NOT NULL, s BLOB, c INTEGER NOT NULL, t BLOB NOT NULL,
    PRIMARY KEY(set_id, level, k)) WITHOUT ROWID;
"""

_INSERT: Final = "INSERT INTO fp_nodes(set_id, level, k, n, s, c, t) VALUES (?,?,?,?,?,?,?)"
# An item row (its ``s`` is NULL: its sum is its id), for one tree.
_INSERT_ITEM: Final = "INSERT INTO fp_nodes(set_id, level, k, n, c, t) VALUES ({tree},0,?,1,?,?)"
# Python's sqlite3 (3.11) looks for an adapter for every ``bytes`` (and None)
# parameter, ~0.5 µs each; a ``bytearray`` is bound as it is, as the same blob.
_BLOB: Final = bytearray
_SET_EXCL: Final = "UPDATE fp_nodes SET c=?, t=? WHERE set_id=? AND level=? AND k=?"
_SET_OWN: Final = "UPDATE fp_nodes SET n=?, s=? WHERE set_id=? AND level=? AND k=?"
_PARENT_OF: Final = (
    "SELECT (SELECT max(k) FROM fp_nodes WHERE set_id=?1 AND level=?2 AND k<=?3),"
    " (SELECT min(k) FROM fp_nodes WHERE set_id=?1 AND level=?2 AND k>?3)"
)
_BEFORE: Final = "SELECT max(k) FROM fp_nodes WHERE set_id=? AND level=? AND k<?"
# The children of a parent from the last one before ``first`` (whose running
# sums are still right) to the parent's end.
_CHILDREN_FROM: Final = (
    "SELECT k, n, s, c, t FROM fp_nodes WHERE set_id=?1 AND level=?2"
    " AND k >= coalesce((SELECT max(k) FROM fp_nodes"
    " WHERE set_id=?1 AND level=?2 AND k>=?3 AND k<?4), ?4)"
    " AND k < ?5 ORDER BY k"
)
_ITEMS: Final = "SELECT k FROM fp_nodes WHERE set_id=? AND level=0 AND k>=? AND k<? ORDER BY k"
_DESCEND: Final = (
    "SELECT k, c, t FROM fp_nodes WHERE set_id=? AND level=? AND k>=? AND c+n>? ORDER BY k LIMIT 1"
)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables if missing (the caller holds the transaction)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def item_key(item: Item) -> bytes:
    """The blob an item (or bound) is stored and compared as."""
    ts, ident = item
    return ts.to_bytes(8, "big") + ident


def key_item(key: bytes) -> Item:
    return int.from_bytes(key[:8], "big"), key[8:]


def _check_item(item: object) -> Item:
    if (
        not isinstance(item, tuple)
        or len(item) != 2
        or type(item[0]) is not int
        or not 0 <= item[0] < MAX_TIMESTAMP
        or not isinstance(item[1], bytes)
        or len(item[1]) != ID_SIZE
    ):
        raise ValidationError(f"not an item (uint64 timestamp, {ID_SIZE}-byte id): {item!r:.80}")
    return item


def _sum_bytes(value: int) -> bytes:
    return (value & _SUM_MASK).to_bytes(32, "little")


def _own_sum(key: bytes, s: bytes | None) -> int:
    """A node's own sum: its ``s``, or for an item (``s`` is NULL) its id."""
    return int.from_bytes(key[8:] if s is None else s, "little")


# --- maintenance ------------------------------------------------------------------------


@dataclass(slots=True)
class _SetInfo:
    space: str
    collection: str
    tree: int
    top: int
    n: int
    s: bytes
    new: bool = False


class _Builder:
    """Builds a whole tree from its keys fed in ascending order, in one pass.

    ``pending[L]`` holds the finished level-L nodes whose parent (at L+1) is
    still open; ``start[L]`` is where the open level-L node starts. An item of
    level h closes the open nodes of levels 1..h (bottom up): each emits its
    children's rows with their running sums and joins its parent's pending list.
    """

    def __init__(
        self,
        tree: int,
        level: Callable[[bytes], int],
        emit: Callable[[str, list[tuple[object, ...]]], object],
    ) -> None:
        self.tree = tree
        self.level = level
        self.emit = emit  # (statement, rows): executemany
        self.pending: list[list[tuple[bytes, int, int]]] = [[] for _ in range(MAX_LEVEL + 1)]
        self.start: list[bytes] = [_SENTINEL] * (MAX_LEVEL + 1)
        self.top = 0
        self.rows: list[tuple[object, ...]] = []  # nodes of levels >= 1
        self.items: list[tuple[object, ...]] = []  # level 0, in their own statement
        self.insert_item = _INSERT_ITEM.format(tree=int(tree))
        self.last = b""

    def feed(self, key: bytes) -> None:
        if key <= self.last:
            if key == self.last:
                return  # a duplicate
            raise AssertionError("keys must be fed in ascending order")
        self.last = key
        h = self.level(key)
        for level in range(1, h + 1):
            self._close(level)
            self.start[level] = key
        self.top = max(self.top, h)
        self.pending[0].append((key, 1, int.from_bytes(key[8:], "little")))

    def _close(self, level: int) -> None:
        """Close the open node of ``level``: write its children, pass it up."""
        children = self.pending[level - 1]
        n, total = self._write_children(level - 1, children)
        self.pending[level].append((self.start[level], n, total))
        children.clear()

    def _write_children(
        self, level: int, children: list[tuple[bytes, int, int]]
    ) -> tuple[int, int]:
        n = 0
        total = 0
        if level == 0:
            items = self.items
            for key, _, cs in children:
                items.append((_BLOB(key), n, _BLOB(_sum_bytes(total))))
                n += 1
                total += cs
            if len(items) >= _CHUNK:
                self._flush()
            return n, total % SUM_MODULUS
        rows = self.rows
        tree = self.tree
        for key, cn, cs in children:
            rows.append(
                (tree, level, _BLOB(key), cn, _BLOB(_sum_bytes(cs)), n, _BLOB(_sum_bytes(total)))
            )
            n += cn
            total += cs
        if len(rows) >= _CHUNK:
            self._flush()
        return n, total % SUM_MODULUS

    def _flush(self) -> None:
        if self.items:
            self.emit(self.insert_item, self.items)
            self.items = []
        if self.rows:
            self.emit(_INSERT, self.rows)
            self.rows = []

    def finish(self) -> tuple[int, int, int]:
        """Write what is left; returns ``(top, count, sum)`` of the tree."""
        if self.last == b"":
            return 0, 0, 0
        top = max(self.top, 1)
        for level in range(1, top + 1):
            self._close(level)
        n, total = self._write_children(top, self.pending[top])
        self._flush()
        return top, n, total


class _Rebuild:
    """A set being rebuilt in bulk: its new keys come in ascending order and are
    merged with its old items (read in chunks) into a new tree."""

    def __init__(self, index: FingerprintIndex, info: _SetInfo) -> None:
        self.index = index
        self.info = info
        conn = index.conn
        self.old_tree = info.tree
        self.tree = info.tree if info.new else index.new_tree()
        self.builder = _Builder(self.tree, index.level, conn.executemany)
        self.old = index.old_keys(info.tree) if info.n else iter(())
        self.head = next(self.old, None)

    def feed(self, key: bytes) -> None:
        head = self.head
        if head is not None and head <= key:
            feed = self.builder.feed
            old = self.old
            while head is not None and head <= key:
                feed(head)
                head = next(old, None)
            self.head = head
        self.builder.feed(key)

    def finish(self) -> None:
        while self.head is not None:
            self.builder.feed(self.head)
            self.head = next(self.old, None)
        info = self.info
        info.top, info.n, total = self.builder.finish()
        info.s = _sum_bytes(total)
        if self.tree != self.old_tree:
            self.index.conn.execute("DELETE FROM fp_nodes WHERE set_id=?", (self.old_tree,))
            info.tree = self.tree


class FingerprintIndex:
    """Maintains the fingerprint trees of one SQLite file; give it the writer connection.

    Each public method is one transaction of its own.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._hash: hashlib.blake2b | None = None  # keyed blake2b, copied per id
        self._next_tree = 0

    # -- the level hash, the cursor, tree ids --

    def _begin(self) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('fp_key', ?)", (os.urandom(16).hex(),)
        )
        (secret,) = conn.execute("SELECT value FROM meta WHERE key='fp_key'").fetchone()
        self._hash = hashlib.blake2b(key=bytes.fromhex(secret), digest_size=8)
        (last,) = conn.execute("SELECT coalesce(max(tree), 0) FROM fp_sets").fetchone()
        self._next_tree = int(last) + 1

    def level(self, key: bytes) -> int:
        """An item's level: leading zero nibbles of the keyed hash of its id, capped."""
        assert self._hash is not None
        h = self._hash.copy()
        h.update(key[8:])
        zeros = (64 - int.from_bytes(h.digest(), "big").bit_length()) >> 2
        return zeros if zeros < MAX_LEVEL else MAX_LEVEL

    def cursor(self) -> int:
        """The last ``seq`` of the receipt log that the trees include."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='fp_cursor'").fetchone()
        return 0 if row is None else int(row[0])

    def new_tree(self) -> int:
        tree = self._next_tree
        self._next_tree += 1
        return tree

    # -- entry points (each one transaction) --

    def catch_up(self) -> int:
        """Index the entries received since the cursor, and move the cursor, in one
        transaction. Returns how many entries were indexed."""
        conn = self.conn
        after = self.cursor()
        (head,) = conn.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()
        if head <= after:
            return 0
        self._begin()
        try:
            done = self._catch_up()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return done

    def add_items(self, space: str, collection: str | None, items: Iterable[Item]) -> int:
        """Add raw items to a set without entries (a hook for tests and benchmarks).
        Items already held are ignored; returns how many were added."""
        keys = sorted({item_key(_check_item(item)) for item in items})
        self._begin()
        try:
            info = self._set_info(space, collection or "")
            before = info.n
            if info.n and len(keys) * BULK_AT_LEAST < info.n:
                self._grow(info, self._absent(info.tree, keys))
            else:
                self._rebuild(info, keys)
            self._save(info)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return info.n - before

    # -- catching up --

    def _catch_up(self) -> int:
        conn = self.conn
        after = self.cursor()
        (head,) = conn.execute("SELECT coalesce(max(seq), 0) FROM entries").fetchone()
        if head <= after:
            return 0
        # Which sets grow, and by how much: SQLite counts the backlog per collection.
        infos: dict[tuple[str, str], _SetInfo] = {}
        growth: dict[int, int] = {}  # id(info) -> backlog
        by_collection: dict[tuple[str, str], tuple[_SetInfo, _SetInfo]] = {}
        done = 0
        for space, collection, count in conn.execute(
            "SELECT d.space, d.collection, count(*) FROM entries e JOIN docs d ON d.id = e.doc"
            " WHERE e.seq > ? AND e.seq <= ? GROUP BY d.space, d.collection",
            (after, head),
        ).fetchall():
            pair: list[_SetInfo] = []
            for name in ((space, ""), (space, collection)):
                info = infos.get(name)
                if info is None:
                    info = infos[name] = self._set_info(*name)
                growth[id(info)] = growth.get(id(info), 0) + count
                pair.append(info)
            by_collection[(space, collection)] = (pair[0], pair[1])
            done += count
        # Small backlogs are collected and inserted; large ones stream into a rebuild.
        feeders: dict[int, Callable[[bytes], None]] = {}
        collected: list[tuple[_SetInfo, list[bytes]]] = []
        rebuilds: list[_Rebuild] = []
        for info in infos.values():
            if info.n and growth[id(info)] * BULK_AT_LEAST < info.n:
                keys: list[bytes] = []
                collected.append((info, keys))
                feeders[id(info)] = keys.append
            else:
                rebuild = _Rebuild(self, info)
                rebuilds.append(rebuild)
                feeders[id(info)] = rebuild.feed
        # Each document's feeders, found once per document (none to find when the
        # backlog is of one collection, as in a pull).
        by_doc: dict[int, tuple[Callable[[bytes], None], Callable[[bytes], None]]] = {}
        only = None
        if len(by_collection) == 1:
            space_set, collection_set = next(iter(by_collection.values()))
            only = (feeders[id(space_set)], feeders[id(collection_set)])
        for doc, space, collection in (
            ()
            if only
            else conn.execute(
                "SELECT d.id, d.space, d.collection FROM docs d WHERE d.id IN"
                " (SELECT DISTINCT doc FROM entries WHERE seq > ? AND seq <= ?)",
                (after, head),
            )
        ):
            space_set, collection_set = by_collection[(space, collection)]
            by_doc[doc] = (feeders[id(space_set)], feeders[id(collection_set)])
        # In item order: SQLite sorts the backlog (created_at is stored minus 2**63,
        # which keeps its order, and every CID starts with the same 4 bytes).
        offset = 1 << 63
        for ts, cid, doc in conn.execute(
            "SELECT created_at, cid, doc FROM entries WHERE seq > ? AND seq <= ?"
            " ORDER BY created_at, cid",
            (after, head),
        ):
            key = (ts + offset).to_bytes(8, "big") + cid[4:]
            feed_space, feed_collection = only or by_doc[doc]
            feed_space(key)
            feed_collection(key)
        for rebuild in rebuilds:
            rebuild.finish()
        levels: dict[bytes, int] = {}  # the sets of a collection share their keys' levels
        for info, keys in collected:
            self._grow(info, keys, levels)
        for info in infos.values():
            self._save(info)
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('fp_cursor', ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(head),),
        )
        return done

    # -- sets --

    def _set_info(self, space: str, collection: str) -> _SetInfo:
        row = self.conn.execute(
            "SELECT tree, top, n, s FROM fp_sets WHERE space=? AND collection=?",
            (space, collection),
        ).fetchone()
        if row is not None:
            return _SetInfo(space, collection, *row)
        return _SetInfo(space, collection, self.new_tree(), 0, 0, _ZERO_SUM, new=True)

    def _save(self, info: _SetInfo) -> None:
        self.conn.execute(
            "INSERT INTO fp_sets(space, collection, tree, top, n, s) VALUES (?,?,?,?,?,?)"
            " ON CONFLICT(space, collection) DO UPDATE SET"
            " tree=excluded.tree, top=excluded.top, n=excluded.n, s=excluded.s",
            (info.space, info.collection, info.tree, info.top, info.n, info.s),
        )
        info.new = False

    def _absent(self, tree: int, keys: list[bytes]) -> list[bytes]:
        held: set[bytes] = set()
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            held.update(
                row[0]
                for row in self.conn.execute(
                    "SELECT k FROM fp_nodes WHERE set_id=? AND level=0"
                    f" AND k IN ({','.join('?' * len(part))})",
                    (tree, *part),
                )
            )
        return [k for k in keys if k not in held]

    def old_keys(self, tree: int) -> Iterator[bytes]:
        """A tree's items in order, read in chunks (no statement is left open)."""
        after = b""
        while True:
            chunk = self.conn.execute(
                "SELECT k FROM fp_nodes WHERE set_id=? AND level=0 AND k>? ORDER BY k LIMIT ?",
                (tree, after, _CHUNK),
            ).fetchall()
            for (key,) in chunk:
                yield key
            if len(chunk) < _CHUNK:
                return
            after = chunk[-1][0]

    def _rebuild(self, info: _SetInfo, keys: Iterable[bytes]) -> None:
        rebuild = _Rebuild(self, info)
        for key in keys:
            rebuild.feed(key)
        rebuild.finish()

    def _grow(
        self, info: _SetInfo, keys: list[bytes], levels: dict[bytes, int] | None = None
    ) -> None:
        """Add ``keys`` (ascending, none held) to a non-empty set, in place or in
        bulk, whichever the cost model finds cheaper. ``levels``: a memo of the
        level hash, shared by the sets one catch-up grows."""
        if not keys:
            return
        (last,) = self.conn.execute(
            "SELECT max(k) FROM fp_nodes WHERE set_id=? AND level=0", (info.tree,)
        ).fetchone()
        appended = len(keys) - bisect_right(keys, last)
        if appended == len(keys):
            self._append(info, keys, {} if levels is None else levels)
            return
        in_place = (len(keys) - appended) * COST_INNER + appended * COST_APPEND
        if in_place > (info.n + len(keys)) * COST_BULK:
            self._rebuild(info, keys)
        else:
            self._insert(info, keys)

    # -- appends: new items all above the set's last one --

    def _append(self, info: _SetInfo, keys: list[bytes], levels: dict[bytes, int]) -> None:
        """Add ``keys`` (ascending, all above the set's last item) to a non-empty tree.

        An append changes no stored running sum (``c``/``t`` count the siblings
        *before* a node), so it only inserts the new nodes and rewrites the own
        sums of the right spine (the last node of each level). It runs as the
        bulk builder does, resumed from the spine: one pass over the keys, one
        row written per new node, a few statements per batch. The rows are those
        a build from scratch writes (the tree is a function of its items).

        The last node of a level spans every item from its start on, so its own
        sums are the set's totals now less the totals when it started (``base``).
        ``levels`` memoises the level hash across the sets of one catch-up."""
        conn = self.conn
        tree = info.tree
        top = info.top
        size = MAX_LEVEL + 2
        total_n = info.n
        total_s = int.from_bytes(info.s, "little")
        # The open (last) node of each level: its key, whether it has a row, its
        # running sums within its parent, and the set's totals where it starts.
        start: list[bytes] = [_SENTINEL] * size
        stored = [False] * size
        run_n = [0] * size
        run_s = [0] * size
        base_n = [0] * size
        base_s = [0] * size
        for level in range(1, top + 1):
            row = conn.execute(
                "SELECT k, n, s, c, t FROM fp_nodes WHERE set_id=? AND level=?"
                " ORDER BY k DESC LIMIT 1",
                (tree, level),
            ).fetchone()
            if row is None:
                raise StoreCorruptError(f"fingerprint tree {tree}: level {level} is empty")
            start[level], n, s, run_n[level], t = row
            stored[level] = True
            base_n[level] = total_n - n
            base_s[level] = total_s - int.from_bytes(s, "little")
            run_s[level] = int.from_bytes(t, "little")
        items: list[tuple[object, ...]] = []
        inserts: list[tuple[object, ...]] = []
        updates: list[tuple[object, ...]] = []

        def close(level: int) -> None:
            own = _BLOB(_sum_bytes(total_s - base_s[level]))
            if stored[level]:
                updates.append((total_n - base_n[level], own, tree, level, _BLOB(start[level])))
            else:
                inserts.append(
                    (tree, level, _BLOB(start[level]), total_n - base_n[level], own,
                     run_n[level], _BLOB(_sum_bytes(run_s[level])))
                )  # fmt: skip

        level_of = self.level
        zero = _BLOB(_ZERO_SUM)
        mask = _SUM_MASK
        # Where the open level-1 node starts, kept in locals for the 15 keys in 16
        # that are its items (the same as base_n[1], base_s[1], refreshed below).
        base_n1, base_s1 = base_n[1], base_s[1]
        for key in keys:
            h = levels.get(key)
            if h is None:
                h = levels[key] = level_of(key)
            if h == 0:  # (15 keys in 16) an item of the last level-1 node
                # ``& mask`` is ``% SUM_MODULUS`` (a power of two) without a division.
                run = ((total_s - base_s1) & mask).to_bytes(32, "little")
                items.append((_BLOB(key), total_n - base_n1, _BLOB(run)))
            else:
                items.append((_BLOB(key), 0, zero))
                for level in range(top + 1, h + 1):
                    # The tree grows a level: its sentinel spans every item so far.
                    start[level], stored[level] = _SENTINEL, False
                    run_n[level] = run_s[level] = base_n[level] = base_s[level] = 0
                top = max(top, h)
                for level in range(1, h + 1):
                    # Close the last node of this level; ``key`` starts the next one.
                    close(level)
                    start[level], stored[level] = key, False
                    base_n[level], base_s[level] = total_n, total_s
                    if level < h:
                        run_n[level] = run_s[level] = 0  # the first child of a new parent
                    elif level < top:  # after the siblings before it, in the parent above
                        run_n[level] = total_n - base_n[level + 1]
                        run_s[level] = total_s - base_s[level + 1]
                    else:  # a child of the root
                        run_n[level], run_s[level] = total_n, total_s
                base_n1, base_s1 = base_n[1], base_s[1]
            total_n += 1
            total_s += int.from_bytes(key[8:], "little")
        for level in range(1, top + 1):
            close(level)
        conn.executemany(_INSERT_ITEM.format(tree=int(tree)), items)
        conn.executemany(_INSERT, inserts)
        conn.executemany(_SET_OWN, updates)
        info.top, info.n, info.s = top, total_n, _sum_bytes(total_s)

    # -- incremental: recompute the new items' ancestors from the first change on --

    def _insert(self, info: _SetInfo, keys: list[bytes]) -> None:
        """Add ``keys`` (ascending, none held yet) to a non-empty tree, in place.

        Level by level, bottom up: each parent of a node that is new or changed
        one level down gets its children's running sums recomputed from the first
        change on, and its own sums. New nodes are not in the table while this
        runs: they are merged in, and written once, with their final sums, by
        their parent's recomputation.
        """
        conn = self.conn
        tree = info.tree
        levels = [self.level(k) for k in keys]
        old_top = info.top
        top = max(old_top, *levels, 1)
        # the new nodes one level down, with their own (count, sum)
        new: dict[bytes, tuple[int, int]] = {k: (1, int.from_bytes(k[8:], "little")) for k in keys}
        changed = keys  # the nodes one level down that are new or whose own sums changed
        for level in range(1, top + 2):
            job = _Recompute(self, tree, level, new)
            if level == top + 1:  # the root: the running sums of the top level, and the totals
                job.root = True
                info.n, total = job.run(_SENTINEL, changed[0], None)
                info.top, info.s = top, _sum_bytes(total)
                job.write()
                return
            # where new nodes start at this level (the sentinel too, if the tree grows)
            starts = [k for k, h in zip(keys, levels, strict=True) if h >= level]
            if level > old_top:
                starts.insert(0, _SENTINEL)
            job.new_parents = set(starts)
            in_table = level <= old_top
            i = 0
            while i < len(changed):
                first = changed[i]
                parent, end = (
                    conn.execute(_PARENT_OF, (tree, level, first)).fetchone()
                    if in_table
                    else (None, None)
                )
                j = bisect_right(starts, first)
                parent = _max(parent, starts[j - 1] if j else None)
                end = _min(end, starts[j] if j < len(starts) else None)
                i += 1
                while i < len(changed) and (end is None or changed[i] < end):
                    i += 1
                job.run(parent, first, end)
            # A node that a new one split lost its tail: its own sums changed.
            for j, key in enumerate(starts):
                if key != _SENTINEL:
                    before = (
                        conn.execute(_BEFORE, (tree, level, key)).fetchone()[0]
                        if in_table
                        else None
                    )
                    before = _max(before, starts[j - 1] if j else None)
                    if before not in job.done:
                        job.run(before, key, key)
            # A new sentinel (the tree grew a level) is summed whatever changed.
            if level > old_top and _SENTINEL not in job.done:
                job.run(_SENTINEL, _SENTINEL, starts[1] if len(starts) > 1 else None)
            job.write()
            new = job.parents_own
            changed = sorted(job.done)


def _max(a: bytes | None, b: bytes | None) -> bytes:
    if a is None:
        assert b is not None  # every level has a sentinel, in the table or new
        return b
    return a if b is None or a >= b else b


def _min(a: bytes | None, b: bytes | None) -> bytes | None:
    if a is None or (b is not None and b < a):
        return b
    return a


class _Recompute:
    """The recomputations of one level of an in-place insertion, and their writes."""

    def __init__(
        self,
        index: FingerprintIndex,
        tree: int,
        level: int,
        new: dict[bytes, tuple[int, int]],
    ) -> None:
        self.conn = index.conn
        self.tree = tree
        self.level = level
        self.new = new  # the new children (one level down) and their own sums
        self.new_keys = sorted(new)
        self.root = False  # the virtual parent of the top level: it has no row
        self.new_parents: set[bytes] = set()
        self.parents_own: dict[bytes, tuple[int, int]] = {}  # the new parents' own sums
        self.done: set[bytes] = set()
        self.inserts: list[tuple[object, ...]] = []
        self.excl: list[tuple[object, ...]] = []
        self.own: list[tuple[object, ...]] = []

    def run(self, parent: bytes, first: bytes, end: bytes | None) -> tuple[int, int]:
        """Recompute ``parent``'s children from ``first`` (its first new or changed
        child) to ``end`` (where the next parent starts), and its own sums."""
        tree = self.tree
        child_level = self.level - 1
        rows = self.conn.execute(
            _CHILDREN_FROM, (tree, child_level, parent, first, _BEYOND if end is None else end)
        ).fetchall()
        new_keys = self.new_keys
        lo = bisect_left(new_keys, first)
        added = new_keys[lo : len(new_keys) if end is None else bisect_left(new_keys, end, lo)]
        n = 0
        total = 0
        i = 0
        if rows and rows[0][0] < first:  # the last child before the change: its sums hold
            key, cn, cs, cc, ct = rows[0]
            n = cc + cn
            total = int.from_bytes(ct, "little") + _own_sum(key, cs)
            i = 1
        j = 0
        while i < len(rows) or j < len(added):
            if j < len(added) and (i == len(rows) or added[j] < rows[i][0]):
                key = added[j]
                j += 1
                cn, own = self.new[key]
                stored = None if child_level == 0 else _sum_bytes(own)
                self.inserts.append((tree, child_level, key, cn, stored, n, _sum_bytes(total)))
            else:
                key, cn, cs, cc, ct = rows[i]
                i += 1
                own = _own_sum(key, cs)
                t = _sum_bytes(total)
                if cc != n or ct != t:
                    self.excl.append((n, t, tree, child_level, key))
            n += cn
            total += own
        total %= SUM_MODULUS
        if parent in self.new_parents:
            self.parents_own[parent] = (n, total)
        elif not self.root:
            self.own.append((n, _sum_bytes(total), tree, self.level, parent))
        self.done.add(parent)
        return n, total

    def write(self) -> None:
        conn = self.conn
        conn.executemany(_INSERT, self.inserts)
        conn.executemany(_SET_EXCL, self.excl)
        conn.executemany(_SET_OWN, self.own)


# --- reading -------------------------------------------------------------------------------


def _prefix_sql(top: int) -> str:
    arms = [
        f"SELECT * FROM (SELECT level, k, c, t FROM fp_nodes WHERE set_id=?1 AND level={level}"
        " AND k<?2 ORDER BY k DESC LIMIT 1)"
        for level in range(top + 1)
    ]
    return " UNION ALL ".join(arms)


_PREFIX_SQL: Final = tuple(_prefix_sql(top) for top in range(MAX_LEVEL + 1))


class SQLiteRangeIndex:
    """A :class:`~loomdb.sync.ranges.RangeIndex` over one tree, read on ``conn``.

    For answers that agree with each other, the caller holds a read
    transaction on ``conn`` while it uses the view (``SQLiteStore`` does).
    Each boundary's ``(count, sum)`` is memoised: reconciliation asks about
    adjacent ranges, so each boundary costs one prefix query. ``nth`` memoises
    the prefix of the item it finds, and of the next few items when asked for
    them, so the cut points the engine makes between two neighbours cost nothing.
    """

    __slots__ = (
        "__weakref__",
        "_conn",
        "_gap_hi",
        "_gaps",
        "_memo",
        "_n",
        "_s",
        "_sql",
        "_top",
        "_tree",
    )

    def __init__(self, conn: sqlite3.Connection, tree: int, top: int, n: int, s: bytes) -> None:
        self._conn = conn
        self._tree = tree
        self._top = top
        self._n = n
        self._s = int.from_bytes(s, "little")
        self._sql = _PREFIX_SQL[top]
        self._memo: dict[bytes, tuple[int, int]] = {}
        # (lo, hi] intervals holding no item, each with the prefix of every key in it
        self._gap_hi: list[bytes] = []
        self._gaps: dict[bytes, tuple[bytes, tuple[int, int]]] = {}

    def __len__(self) -> int:
        return self._n

    def _prefix(self, key: bytes) -> tuple[int, int]:
        """``(count, sum)`` of the items below ``key`` (sum not reduced)."""
        if key <= _ZERO_KEY or self._n == 0:
            return 0, 0
        if key >= _INFINITY_KEY:
            return self._n, self._s
        found = self._memo.get(key)
        if found is not None:
            return found
        gap_hi = self._gap_hi
        i = bisect_left(gap_hi, key)
        if i < len(gap_hi):
            lo, value = self._gaps[gap_hi[i]]
            if lo < key:
                return value
        count = 0
        total = 0
        for level, k, c, t in self._conn.execute(self._sql, (self._tree, key)):
            count += c
            total += int.from_bytes(t, "little")
            if level == 0:
                count += 1
                total += int.from_bytes(k[8:], "little")
        found = (count, total)
        self._memo[key] = found
        return found

    def fingerprint_sum(self, lo: Item, hi: Item) -> tuple[int, int]:
        lo_key = item_key(lo)
        hi_key = item_key(hi)
        if not lo_key < hi_key:
            return 0, 0
        c1, s1 = self._prefix(hi_key)
        c0, s0 = self._prefix(lo_key)
        return c1 - c0, (s1 - s0) % SUM_MODULUS

    def items(self, lo: Item, hi: Item, limit: int | None = None) -> list[Item]:
        lo_key = item_key(lo)
        hi_key = item_key(hi)
        if not lo_key < hi_key or (limit is not None and limit <= 0) or self._n == 0:
            return []
        if limit is None:
            rows = self._conn.execute(_ITEMS, (self._tree, lo_key, hi_key))
        else:
            rows = self._conn.execute(_ITEMS + " LIMIT ?", (self._tree, lo_key, hi_key, limit))
        return [(int.from_bytes(k[:8], "big"), k[8:]) for (k,) in rows]

    def nth(self, lo: Item, k: int) -> Item | None:
        if k < 0 or self._n == 0:
            return None
        lo_key = item_key(lo)
        if k < _SMALL_NTH:
            keys = [
                row[0]
                for row in self._conn.execute(
                    _ITEMS + " LIMIT ?", (self._tree, lo_key, _BEYOND, k + 1)
                )
            ]
            known = self._memo.get(lo_key)
            if known is not None and keys:
                self._learn_run(lo_key, known, keys)
            return key_item(keys[k]) if len(keys) > k else None
        rank, _ = self._prefix(lo_key)
        rank += k
        if rank >= self._n:
            return None
        # Down from the root: at each level, the first child whose running count passes rank.
        execute = self._conn.execute
        tree = self._tree
        start = _SENTINEL
        left = rank
        total = 0
        for level in range(self._top, -1, -1):
            row = execute(_DESCEND, (tree, level, start, left)).fetchone()
            if row is None:
                raise StoreCorruptError(f"fingerprint tree {tree}: no node of rank {rank}")
            start, c, t = row
            left -= c
            total += int.from_bytes(t, "little")
        self._memo[start] = (rank, total)
        return key_item(start)

    def _learn_run(self, lo: bytes, known: tuple[int, int], keys: list[bytes]) -> None:
        """``keys`` are the first items >= ``lo``, whose prefix is ``known``: learn
        their prefixes, and that no item lies between two of them."""
        count, total = known
        prev = lo
        for key in keys:
            self._memo[key] = (count, total)
            if prev < key and key not in self._gaps:
                insort(self._gap_hi, key)
                self._gaps[key] = (prev, (count, total))
            prev = key
            count += 1
            total += int.from_bytes(key[8:], "little")


class _EmptyRangeIndex:
    """The index of a set that holds nothing yet."""

    __slots__ = ("__weakref__",)

    def fingerprint_sum(self, lo: Item, hi: Item) -> tuple[int, int]:
        return 0, 0

    def items(self, lo: Item, hi: Item, limit: int | None = None) -> list[Item]:
        return []

    def nth(self, lo: Item, k: int) -> Item | None:
        return None


def open_view(
    conn: sqlite3.Connection, space: str, collection: str | None
) -> SQLiteRangeIndex | _EmptyRangeIndex:
    """A view of the set's tree as of ``conn``'s snapshot (empty if there is no such set)."""
    row = conn.execute(
        "SELECT tree, top, n, s FROM fp_sets WHERE space=? AND collection=?",
        (space, collection or ""),
    ).fetchone()
    if row is None or row[2] == 0:
        return _EmptyRangeIndex()
    return SQLiteRangeIndex(conn, *row)


def document_items(
    conn: sqlite3.Connection, space: str, collection: str, document: str
) -> list[Item]:
    """A document's items, from the entries table's per-document index."""
    offset = 1 << 63
    return [
        (ts + offset, cid[4:])
        for ts, cid in conn.execute(
            "SELECT e.created_at, e.cid FROM docs d JOIN entries e ON e.doc = d.id"
            " WHERE d.space=? AND d.collection=? AND d.document=?",
            (space, collection, document),
        )
    ]


# --- checking and standalone use --------------------------------------------------------------


def check_tree(conn: sqlite3.Connection, space: str, collection: str | None) -> int:
    """Check a set's tree row by row against its definition; returns its size.

    Raises :class:`~loomdb.errors.StoreCorruptError` on the first inconsistency.
    Reads the whole tree: for tests and repair tools, not for sync.
    """
    row = conn.execute(
        "SELECT tree, top, n, s FROM fp_sets WHERE space=? AND collection=?",
        (space, collection or ""),
    ).fetchone()
    if row is None:
        return 0
    tree, top, n, s = row
    (secret,) = conn.execute("SELECT value FROM meta WHERE key='fp_key'").fetchone()
    base = hashlib.blake2b(key=bytes.fromhex(secret), digest_size=8)

    def fail(what: str) -> StoreCorruptError:
        return StoreCorruptError(f"fingerprint tree of {space!r}/{collection!r}: {what}")

    def level_of(key: bytes) -> int:
        h = base.copy()
        h.update(key[8:])
        return min((64 - int.from_bytes(h.digest(), "big").bit_length()) >> 2, MAX_LEVEL)

    items = [k for (k,) in conn.execute(_ITEMS, (tree, b"", _BEYOND))]
    levels = [level_of(k) for k in items]
    if len(items) != n or (n and top != max(1, *levels)):
        raise fail(f"{len(items)} items, the set says {n} (top {top})")
    if conn.execute(
        "SELECT count(*) FROM fp_nodes WHERE set_id=? AND level>?", (tree, top)
    ).fetchone()[0]:
        raise fail("nodes above the top level")
    # The nodes of one level, in order: (key, own count, own sum), and their keys' levels.
    children = [(k, 1, int.from_bytes(k[8:], "little")) for k in items]
    child_levels = levels
    for level in range(1, top + 2):
        rows = {
            k: (cn, cs, cc, ct)
            for k, cn, cs, cc, ct in conn.execute(
                "SELECT k, n, s, c, t FROM fp_nodes WHERE set_id=? AND level=?",
                (tree, level - 1),
            )
        }
        if len(rows) != len(children):
            raise fail(f"level {level - 1} holds {len(rows)} nodes, expected {len(children)}")
        root = level == top + 1
        parents = [(_SENTINEL, 0, 0)]
        parent_levels = [MAX_LEVEL + 1]
        run_n = run_s = 0
        for (key, own_n, own_s), child_level in zip(children, child_levels, strict=True):
            if not root and key != _SENTINEL and child_level >= level:
                parents.append((key, 0, 0))
                parent_levels.append(child_level)
                run_n = run_s = 0
            expected = (own_n, None if level == 1 else _sum_bytes(own_s), run_n, _sum_bytes(run_s))
            if rows.get(key) != expected:
                raise fail(f"level {level - 1} node {key.hex()}: {rows.get(key)} != {expected}")
            run_n += own_n
            run_s += own_s
            parent, parent_n, parent_s = parents[-1]
            parents[-1] = (parent, parent_n + own_n, parent_s + own_s)
        if root:
            if (parents[0][1], _sum_bytes(parents[0][2])) != (n, s):
                raise fail("the set's totals disagree with its top level")
            break
        children = parents
        child_levels = parent_levels
    return int(n)


def standalone_index(directory: Path, items: Iterable[Item]) -> SQLiteRangeIndex | _EmptyRangeIndex:
    """A view of a tree holding ``items``, in a new SQLite file under ``directory``
    (for the RangeIndex conformance suite and benchmarks)."""
    conn = sqlite3.connect(directory / "fingerprints.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    create_schema(conn)
    FingerprintIndex(conn).add_items("standalone", None, items)
    view = open_view(conn, "standalone", None)
    weakref.finalize(view, conn.close)  # the view owns the connection
    return view
