"""``CachingStore``: a local store in front of an upstream store.

A node serving a ``CachingStore`` answers like its upstream (the origin, or the
next hop) but keeps what passes through:

- reads of entries (``get_entries``, ``has_entries``, ``get_metadata``) are
  answered from the cache; only what it lacks is asked upstream, and what comes
  back is verified and kept, so a repeated request never reaches upstream;
- writes go upstream first (the upstream is the authority on what it accepts),
  then the accepted entries are kept in the cache;
- reconciliation runs on the cache's own index. Before answering, the cache
  pulls what upstream gained since it last looked, at most once per
  ``max_staleness`` seconds (0: every time), so a burst of clients costs
  upstream one reconciliation, not one each;
- document listings, heads and the receipt log are upstream's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import anyio

from loomdb.entries.cid import CID
from loomdb.entries.entry import Entry, EntryMeta
from loomdb.stores.base import (
    ContentAddressedStore,
    EntryInput,
    PutResult,
    Received,
    SetKey,
    StoreHead,
)
from loomdb.sync.reconcile import ReconcileReply, ReconcileRequest
from loomdb.sync.replicate import SyncProgress, reconcile, transfer


class CachingStore:
    """A :class:`~loomdb.stores.base.ContentAddressedStore` caching an upstream one."""

    def __init__(
        self,
        cache: ContentAddressedStore,
        upstream: ContentAddressedStore,
        *,
        max_staleness: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.upstream = upstream
        self.max_staleness = max_staleness
        self._clock = clock
        self._fresh: dict[SetKey, float] = {}
        self._refresh_lock = anyio.Lock()
        self.upstream_reads = 0  # entry reads that had to go upstream (for stats and tests)

    async def put_entries(self, entries: Iterable[EntryInput]) -> list[PutResult]:
        items = list(entries)
        results = await self.upstream.put_entries(items)
        keep = [item for item, r in zip(items, results, strict=True) if r.ok]
        if keep:
            await self.cache.put_entries(keep)
        return results

    async def _through(self, cids: Sequence[CID], have: list[bool]) -> None:
        """Fetch upstream what the cache lacks among ``cids`` and keep it."""
        lacking = [c for c, held in zip(cids, have, strict=True) if not held]
        if not lacking:
            return
        self.upstream_reads += 1
        fetched = [e for e in await self.upstream.get_entries(lacking) if e is not None]
        if fetched:
            await self.cache.put_entries(fetched)

    async def get_entries(self, cids: Sequence[CID]) -> list[Entry | None]:
        cids = list(cids)
        found = await self.cache.get_entries(cids)
        if any(e is None for e in found):
            await self._through(cids, [e is not None for e in found])
            found = await self.cache.get_entries(cids)
        return found

    async def has_entries(self, cids: Sequence[CID]) -> list[bool]:
        cids = list(cids)
        local = await self.cache.has_entries(cids)
        lacking = [c for c, held in zip(cids, local, strict=True) if not held]
        if not lacking:
            return local
        self.upstream_reads += 1
        remote = dict(zip(lacking, await self.upstream.has_entries(lacking), strict=True))
        return [held or remote[c] for c, held in zip(cids, local, strict=True)]

    async def get_metadata(self, cids: Sequence[CID]) -> list[EntryMeta | None]:
        cids = list(cids)
        found = await self.cache.get_metadata(cids)
        if any(m is None for m in found):
            await self._through(cids, [m is not None for m in found])
            found = await self.cache.get_metadata(cids)
        return found

    async def heads(self, space: str, collection: str, document: str) -> list[CID]:
        return await self.upstream.heads(space, collection, document)

    async def list_spaces(self) -> list[str]:
        return await self.upstream.list_spaces()

    async def list_collections(self, space: str) -> list[str]:
        return await self.upstream.list_collections(space)

    async def list_documents(self, space: str, collection: str) -> list[str]:
        return await self.upstream.list_documents(space, collection)

    async def list_entries(self, space: str, collection: str, document: str) -> list[EntryMeta]:
        return await self.upstream.list_entries(space, collection, document)

    async def missing_parents(self, cids: Sequence[CID]) -> list[CID]:
        return await self.upstream.missing_parents(cids)

    async def scan(self, after: int = 0, limit: int = 1000) -> list[Received]:
        return await self.upstream.scan(after, limit)

    async def store_head(self) -> StoreHead:
        return await self.upstream.store_head()

    async def count(self) -> int:
        return await self.upstream.count()

    async def refresh(self, sets: Sequence[SetKey]) -> None:
        """Pull into the cache what upstream holds in ``sets`` (if not fresh enough)."""
        async with self._refresh_lock:
            now = self._clock()
            stale = [
                s
                for s in dict.fromkeys(sets)
                if now - self._fresh.get(s, float("-inf")) >= self.max_staleness
            ]
            if not stale:
                return
            state = SyncProgress()
            _, need = await reconcile(self.cache, self.upstream, stale, state)
            if need:
                await transfer(self.upstream, self.cache, need, state, direction="pull")
            for s in stale:
                self._fresh[s] = now

    async def reconcile(self, requests: Sequence[ReconcileRequest]) -> list[ReconcileReply]:
        await self.refresh([r.set for r in requests])
        return await self.cache.reconcile(requests)

    async def aclose(self) -> None:
        try:
            await self.upstream.aclose()
        finally:
            await self.cache.aclose()
