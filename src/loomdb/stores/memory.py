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
    StoreHead,
    check_cids,
    check_limit,
    finish_results,
    prepare_batch,
)

DocKey = tuple[str, str, str]


class MemoryStore:
    """A :class:`~loomdb.stores.base.ContentAddressedStore` held in memory."""

    def __init__(self, policy: EntryPolicy = DEFAULT_POLICY, epoch: str | None = None) -> None:
        self.policy = policy
        self._epoch = epoch or os.urandom(8).hex()
        self._log: list[Entry] = []  # receipt order; seq = index + 1
        self._seq: dict[CID, int] = {}
        self._docs: dict[DocKey, list[CID]] = {}
        self._heads: dict[DocKey, set[CID]] = {}
        self._referenced: dict[DocKey, set[CID]] = {}  # CIDs named as parent within a doc
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

    async def get_entries(self, cids: Sequence[CID]) -> list[Entry | None]:
        self._check_open()
        return [self._entry(c) for c in check_cids(cids)]

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

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
