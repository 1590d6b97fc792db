"""``EntryFeed``: news of the node's receipt log, for the followers of its store.

Every entry the node's store accepts — a local write, or an entry received by
sync or gossip — gets the next ``seq`` of the store's receipt log
(:meth:`~loomdb.stores.base.ContentAddressedStore.scan`). A follower (the gossip
publisher, a replicator) keeps its own cursor and loops::

    while True:
        rows = await feed.read(cursor, 1000)       # entries with seq > cursor
        ...send them...; cursor = rows[-1].seq     # persist it if it must survive
        if not rows:
            await feed.wait(cursor)                # until something lands past it

The store calls :meth:`EntryFeed.stored` after each batch it accepted (the
guarded store's ``on_stored``), which only wakes the waiters: the feed holds no
entries itself, so a slow follower costs nothing but its cursor, and one that
was stopped resumes from its cursor without loss.

:meth:`EntryFeed.is_local` tells entries authored by the node's user from
others'. :meth:`EntryFeed.written_here` is narrower: the entries this node wrote
itself (the guarded store's ``on_written``, for puts made on the write path:
:mod:`loomdb.stores.origin`) — not the same user's entries from another device,
which this node received. The origin is kept in memory, as runs of seqs, for the
last :data:`WRITTEN_RUNS` runs: enough for a follower that keeps up (gossip,
from the head at start); older entries count as received.

The last entries written here are also kept in memory (at most
:data:`RECENT_ENTRIES` and :data:`RECENT_BYTES`): :meth:`EntryFeed.written_after`
hands them to a follower that wants only those (gossip) without reading the
log — no store read between a write and its publication.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import Final

import anyio

from loomdb.entries.entry import Entry
from loomdb.stores.base import ContentAddressedStore, Received

WRITTEN_RUNS: Final = 100_000
"""Runs of consecutive seqs written here that the feed remembers."""
RECENT_ENTRIES: Final = 10_000
RECENT_BYTES: Final = 32 * 1024 * 1024
"""The entries written here last, kept for :meth:`EntryFeed.written_after`."""


class EntryFeed:
    """Wakes followers of ``store``'s receipt log when new entries land."""

    def __init__(self, store: ContentAddressedStore, own_author: bytes | None = None) -> None:
        self.store = store
        self.own_author = own_author
        self._latest = 0
        self._changed = anyio.Event()
        # Runs of seqs written here, in order: starts and (inclusive) ends.
        self._starts: list[int] = []
        self._ends: list[int] = []
        # The last entries written here, by seq; everything written at or below
        # _forgotten may be missing from them.
        self._recent: list[tuple[int, Entry]] = []
        self._recent_bytes = 0
        self._forgotten = 0

    @property
    def latest(self) -> int:
        """The highest seq this feed was told of (0 before the first :meth:`stored`)."""
        return self._latest

    async def start(self) -> None:
        """Learn where the log stands now (call once before following)."""
        head = await self.store.store_head()
        self._latest = max(self._latest, head.seq)

    def stored(self, seq: int | None = None) -> None:
        """New entries landed (up to ``seq``, if known): wake every waiter."""
        if seq is not None:
            self._latest = max(self._latest, seq)
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def written(self, written: Iterable[tuple[int, Entry | None]]) -> None:
        """These (seq, entry) are entries this node wrote itself (the guarded
        store's ``on_written``, before its :meth:`stored`; entry None: not at hand)."""
        rows = sorted(written, key=lambda row: row[0])
        self._remember(rows)
        for seq, _ in rows:
            if self._ends and self._starts[-1] <= seq <= self._ends[-1] + 1:
                self._ends[-1] = max(self._ends[-1], seq)
            elif not self._ends or seq > self._ends[-1]:
                self._starts.append(seq)
                self._ends.append(seq)
            elif not self._covers(seq):  # two writes' reports crossed: rare, kept apart
                i = bisect.bisect_right(self._starts, seq)
                self._starts.insert(i, seq)
                self._ends.insert(i, seq)
        if len(self._starts) > WRITTEN_RUNS:
            drop = len(self._starts) - WRITTEN_RUNS // 2
            del self._starts[:drop], self._ends[:drop]

    def _remember(self, rows: list[tuple[int, Entry | None]]) -> None:
        recent = self._recent
        for seq, entry in rows:
            if entry is None:  # not at hand: a follower must read the log up to here
                self._forgotten = max(self._forgotten, seq)
                continue
            if recent and seq < recent[-1][0]:
                bisect.insort(recent, (seq, entry), key=lambda row: row[0])
            else:
                recent.append((seq, entry))
            self._recent_bytes += len(entry.raw)
        if len(recent) > RECENT_ENTRIES or self._recent_bytes > RECENT_BYTES:
            drop, size = 0, self._recent_bytes  # down to three quarters of either limit
            while drop < len(recent) and (
                len(recent) - drop > RECENT_ENTRIES * 3 // 4 or size > RECENT_BYTES * 3 // 4
            ):
                size -= len(recent[drop][1].raw)
                drop += 1
            self._forgotten = max(self._forgotten, recent[drop - 1][0])
            del recent[:drop]
            self._recent_bytes = size

    def written_after(self, after: int, limit: int) -> list[tuple[int, Entry]] | None:
        """The entries written here with seq past ``after`` (at most ``limit``, in
        order), from memory; None when some may be missing there (read the log)."""
        if after < self._forgotten:
            return None
        recent = self._recent
        i = bisect.bisect_right(recent, after, key=lambda row: row[0])
        return recent[i : i + limit]

    def written_here(self, row: Received) -> bool:
        """Whether this node wrote this entry itself (see the module doc)."""
        return self._covers(row.seq)

    def _covers(self, seq: int) -> bool:
        i = bisect.bisect_right(self._starts, seq) - 1
        return i >= 0 and seq <= self._ends[i]

    async def wait(self, after: int, timeout: float | None = None) -> bool:
        """Sleep until an entry past ``after`` may have landed, or ``timeout``
        seconds passed; True if woken by news."""
        if self._latest > after:
            return True
        changed = self._changed
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            await changed.wait()
            return True
        return False

    async def read(self, after: int, limit: int = 1000) -> Sequence[Received]:
        """Entries with ``seq > after``, in receipt order, at most ``limit``."""
        rows = await self.store.scan(after, limit)
        if rows:
            self._latest = max(self._latest, rows[-1].seq)
        return rows

    def is_local(self, row: Received) -> bool:
        """Whether the node's own user wrote this entry."""
        return self.own_author is not None and row.entry.author == self.own_author
