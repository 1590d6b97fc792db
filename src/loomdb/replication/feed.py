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

:meth:`EntryFeed.is_local` tells the node's own writes (authored by its user)
from entries it received.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import anyio

from loomdb.stores.base import ContentAddressedStore, Received


class EntryFeed:
    """Wakes followers of ``store``'s receipt log when new entries land."""

    def __init__(self, store: ContentAddressedStore, own_author: bytes | None = None) -> None:
        self.store = store
        self.own_author = own_author
        self._latest = 0
        self._changed = anyio.Event()

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
