"""``MemoryStore``: the whole store in dicts, for tests, caches and simulations.

No method awaits anything, so each call runs to completion without
interleaving: a batch is atomic for every other task on the loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from loomdb.entries.cid import CID
from loomdb.entries.entry import DEFAULT_POLICY, Entry, EntryMeta, EntryPolicy
from loomdb.errors import StoreClosedError
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
from loomdb.sync.ranges import MemoryRangeIndex
from loomdb.sync.reconcile import ReconcileReply, ReconcileRequest, reconcile_on

DocKey = tuple[str, str, str]


class MemoryStore:
    """A :class:`~loomdb.stores.base.ContentAddressedStore` held in memory."""

    def __init__(self, policy: EntryPolicy = DEFAULT_POLICY, epoch: str | None = None) -> None:
        self.policy = policy
        self._epoch = epoch or os.urandom(8).hex()
        self._log: list[Entry] = []  # receipt order; seq = index + 1
        self._cursors: dict[str, int] = {}  # sync: how far other stores' logs were pulled
        self._seq: dict[CID, int] = {}
        self._docs: dict[DocKey, list[CID]] = {}
        self._heads: dict[DocKey, set[CID]] = {}
        self._referenced: dict[DocKey, set[CID]] = {}  # CIDs named as parent within a doc
        # Reconciliation sets kept up to date: one per space and one per collection.
        self._sets: dict[tuple[str, str | None], MemoryRangeIndex] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed")

    def _entry(self, cid: CID) -> Entry | None:
        seq = self._seq.get(cid)
        return None if seq is None else self._log[seq - 1]

    async def put_entries(self, entries: Iterable[EntryInput]) -> list[PutResult]:
        self._check_open()
        batch = prepare_batch(
            entries, lambda cids: {c for c in cids if c in self._seq}, self.policy
        )
        first = len(self._log) + 1
        for _, entry in batch.new:
            self._insert(entry)
        return finish_results(batch, first)

    def _insert(self, entry: Entry) -> None:
        key = (entry.space, entry.collection, entry.document)
        self._log.append(entry)
        self._seq[entry.cid] = len(self._log)
        self._docs.setdefault(key, []).append(entry.cid)
        heads = self._heads.setdefault(key, set())
        referenced = self._referenced.setdefault(key, set())
        if entry.cid not in referenced:
            heads.add(entry.cid)
        for parent in entry.parents:
            referenced.add(parent)
            heads.discard(parent)
        item = (entry.created_at, entry.cid.digest)
        for set_key in ((entry.space, None), (entry.space, entry.collection)):
            self._sets.setdefault(set_key, MemoryRangeIndex()).add([item])

    def _range_index(self, key: SetKey) -> MemoryRangeIndex:
        if key.document is None:
            return self._sets.get((key.space, key.collection)) or MemoryRangeIndex()
        assert key.collection is not None
        cids = self._docs.get((key.space, key.collection, key.document), [])
        return MemoryRangeIndex(
            (e.created_at, e.cid.digest) for e in (self._log[self._seq[c] - 1] for c in cids)
        )

    async def reconcile(self, requests: Sequence[ReconcileRequest]) -> list[ReconcileReply]:
        self._check_open()
        return [reconcile_on(self._range_index(r.set), r) for r in requests]

    async def get_entries(self, cids: Sequence[CID]) -> list[Entry | None]:
        self._check_open()
        return [self._entry(c) for c in check_cids(cids)]

    async def get_raw(self, cids: Sequence[CID]) -> list[bytes | None]:
        self._check_open()
        return [None if (e := self._entry(c)) is None else e.raw for c in check_cids(cids)]

    async def has_entries(self, cids: Sequence[CID]) -> list[bool]:
        self._check_open()
        return [c in self._seq for c in check_cids(cids)]

    async def get_metadata(self, cids: Sequence[CID]) -> list[EntryMeta | None]:
        self._check_open()
        return [None if (e := self._entry(c)) is None else e.meta for c in check_cids(cids)]

    async def heads(self, space: str, collection: str, document: str) -> list[CID]:
        self._check_open()
        return sorted(self._heads.get((space, collection, document), ()))

    async def list_spaces(self) -> list[str]:
        self._check_open()
        return sorted({k[0] for k in self._docs})

    async def list_collections(self, space: str) -> list[str]:
        self._check_open()
        return sorted({k[1] for k in self._docs if k[0] == space})

    async def list_documents(self, space: str, collection: str) -> list[str]:
        self._check_open()
        return sorted(k[2] for k in self._docs if k[0] == space and k[1] == collection)

    async def list_entries(self, space: str, collection: str, document: str) -> list[EntryMeta]:
        self._check_open()
        cids = self._docs.get((space, collection, document), [])
        entries = [self._log[self._seq[c] - 1] for c in cids]
        entries.sort(key=lambda e: (e.height, e.cid))
        return [e.meta for e in entries]

    async def missing_parents(self, cids: Sequence[CID]) -> list[CID]:
        self._check_open()
        missing: set[CID] = set()
        for cid in check_cids(cids):
            entry = self._entry(cid)
            if entry is not None:
                missing.update(p for p in entry.parents if p not in self._seq)
        return sorted(missing)

    async def scan(self, after: int = 0, limit: int = 1000) -> list[Received]:
        self._check_open()
        start = max(after, 0)
        chunk = self._log[start : start + check_limit(limit)]
        return [Received(start + i + 1, e) for i, e in enumerate(chunk)]

    async def store_head(self) -> StoreHead:
        self._check_open()
        return StoreHead(self._epoch, len(self._log))

    async def count(self) -> int:
        self._check_open()
        return len(self._log)

    async def get_cursor(self, name: str) -> int | None:
        """See :meth:`SQLiteStore.get_cursor`."""
        self._check_open()
        return self._cursors.get(name)

    async def set_cursor(self, name: str, seq: int) -> None:
        self._check_open()
        self._cursors[name] = seq

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
