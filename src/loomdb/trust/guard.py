"""``GuardedStore``: enforcement on receive, in front of any store.

Every entry that reaches a node — pushed by a peer, pulled by a sync, written
locally — goes through ``put_entries``. For entries of a **managed** space
(see :mod:`loomdb.trust.spaces`) the guard refuses, each with its own result
and keeping the rest of the batch:

* a directory entry whose author was not an admin of the scope it touches
  when it was made (``trust.not_admin``), or one that is malformed;
* any other entry whose author was not a member with a write role on its
  collection when it was made (``trust.not_member``, ``trust.forbidden``), or
  had been revoked by then (``trust.revoked``).

It needs no decryption key: directories are public and entries' authors,
times and collections are signed metadata, so a blind relay enforces exactly
what a full node does. Directory entries of a batch are checked and stored
first (parents first), so a batch may carry a user's grant and that user's
first entries together. Open spaces pass unchecked unless ``open_spaces`` is
False.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from loomdb.entries.cid import CID
from loomdb.entries.entry import DEFAULT_POLICY, DIRECTORY_KIND, Entry, EntryMeta, EntryPolicy
from loomdb.errors import (
    ForbiddenError,
    LoomError,
    MalformedEntryError,
    NotAdminError,
    NotMemberError,
    TrustError,
    ValidationError,
)
from loomdb.stores.base import (
    ContentAddressedStore,
    EntryInput,
    PutResult,
    PutStatus,
    Received,
    StoreHead,
    fetch_raw,
    prepare_batch,
)
from loomdb.stores.origin import is_written_here
from loomdb.sync.reconcile import ReconcileReply, ReconcileRequest
from loomdb.trust.book import DirectoryBook
from loomdb.trust.directory import fold, fold_order
from loomdb.trust.spaces import DIRECTORY_COLLECTION, is_managed, parse_space_id

INLINE_FORWARD: Final = 16
"""Checked entries a put stores on the caller's thread, when the inner store can."""


class GuardedStore:
    """A :class:`~loomdb.stores.base.ContentAddressedStore` that checks membership on put."""

    def __init__(
        self,
        inner: ContentAddressedStore,
        book: DirectoryBook,
        *,
        open_spaces: bool = True,
        policy: EntryPolicy = DEFAULT_POLICY,
        on_stored: Callable[[int], None] | None = None,
        on_written: Callable[[Sequence[tuple[int, Entry | None]]], None] | None = None,
    ) -> None:
        """``on_stored(seq)`` is called after each batch that stored an entry, with
        the highest seq it got (an :class:`~loomdb.replication.feed.EntryFeed`);
        before it, ``on_written`` with the (seq, entry) of the batch's new entries
        when the batch is this node's own write (:mod:`loomdb.stores.origin`; the
        entry is None when it was given as bytes)."""
        self.inner = inner
        self.book = book
        self.open_spaces = open_spaces
        self.policy = policy
        self.on_stored = on_stored
        self.on_written = on_written

    def check(self, entry: Entry) -> None:
        """Raise the TrustError that refuses ``entry`` (not a directory entry), if any."""
        if not is_managed(entry.space):
            if not self.open_spaces:
                raise NotMemberError(f"this node takes only managed spaces, not {entry.space!r}")
            if entry.kind == DIRECTORY_KIND or entry.collection == DIRECTORY_COLLECTION:
                raise ForbiddenError("an open space has no directory")
            return
        state = self.book.state(entry.space)
        if state is None or state.genesis is None:
            raise NotMemberError(f"no directory is held for space {entry.space}")
        state.check_author(entry)

    async def put_entries(self, entries: Iterable[EntryInput]) -> list[PutResult]:
        items = list(entries)
        cids = [_cid_of(item) for item in items]
        known = [c for c in cids if c is not None]
        held = {c for c, h in zip(known, await self.inner.has_entries(known), strict=True) if h}
        batch = prepare_batch(items, lambda _: held, self.policy)
        results: list[PutResult | None] = list(batch.results)
        # Held entries already have their DUPLICATE result; only new ones go on.
        forward: list[tuple[int, EntryInput]] = []
        directory = sorted(
            ((i, e) for i, e in batch.new if _is_directory(e)), key=lambda t: fold_order(t[1])
        )
        scratch: dict[str, Any] = {}
        admitted: list[Entry] = []
        for i, entry in directory:
            try:
                if not is_managed(entry.space):
                    raise ForbiddenError("an open space has no directory")
                state = scratch.get(entry.space) or self.book.scratch(entry.space)
                scratch[entry.space] = state
                state.check_directory_entry(entry)
                state.apply(entry)
            except TrustError as exc:
                results[i] = _refused(entry.cid, exc)
                continue
            except ValidationError as exc:
                bad = MalformedEntryError(f"bad directory operation: {exc.message}")
                results[i] = _refused(entry.cid, bad)
                continue
            forward.append((i, entry))
            admitted.append(entry)
        if admitted and not self.book.appends_only(admitted):
            # Checked one by one, an op can pass that the fold of the whole set ignores
            # (its author's revocation arrived in this batch, later in fold order).
            for space in {e.space for e in admitted}:
                managed = parse_space_id(space)
                assert managed is not None
                mine = [e for e in admitted if e.space == space]
                final = fold(managed, [*self.book.entries(space), *mine])
                late = {e.cid for e in mine if e.cid in final.ignored}
                for i, item in forward:
                    if isinstance(item, Entry) and item.cid in late:
                        results[i] = _refused(item.cid, NotAdminError(final.ignored[item.cid]))
                forward = [
                    (i, e) for i, e in forward if not (isinstance(e, Entry) and e.cid in late)
                ]
                admitted = [e for e in admitted if e.cid not in late]
        if admitted:
            # Store the directory first: content in this batch is checked against it.
            stored = await self._forward(forward, results)
            self.book.add(e for e in admitted if stored.get(e.cid) is PutStatus.ACCEPTED)
            forward = []
        for i, entry in batch.new:
            if _is_directory(entry):
                continue
            try:
                self.check(entry)
            except TrustError as exc:
                results[i] = _refused(entry.cid, exc)
                continue
            forward.append((i, entry))
        if forward:
            await self._forward(forward, results)
        self._stored(items, results)
        return [r for r in results if r is not None]

    def try_put_entries(self, entries: Iterable[EntryInput]) -> list[PutResult] | None:
        """:meth:`put_entries` on the caller's thread for this node's own small writes,
        or None (then await :meth:`put_entries`): only when every item is an entry built
        or verified here, none is a directory entry, each passes :meth:`check` and the
        inner store can store them at once (:meth:`SQLiteStore.try_put_entries
        <loomdb.stores.sqlite.SQLiteStore.try_put_entries>`). The inner store sorts out
        duplicates inside its write transaction; the same hooks run as after a put."""
        put_now = getattr(self.inner, "try_put_entries", None)
        if put_now is None:
            return None
        items = list(entries)
        for item in items:
            if not isinstance(item, Entry) or not item.verified or _is_directory(item):
                return None
            try:
                self.check(item)
            except TrustError:
                return None  # the full path says why, entry by entry
        done: list[PutResult] | None = put_now(items)
        if done is not None:
            self._stored(items, done)
        return done

    def _stored(self, items: list[EntryInput], done: Sequence[PutResult | None]) -> None:
        """The hooks after a batch: ``on_written`` for this node's own writes, then
        ``on_stored`` with the highest new seq."""
        accepted = [
            (item, r.seq)
            for item, r in zip(items, done, strict=True)
            if r is not None and r.status is PutStatus.ACCEPTED and r.seq is not None
        ]
        if self.on_written is not None and is_written_here():
            self.on_written(
                [(seq, item if isinstance(item, Entry) else None) for item, seq in accepted]
            )
        if self.on_stored is not None and accepted:
            self.on_stored(max(seq for _, seq in accepted))

    async def _forward(
        self, forward: list[tuple[int, EntryInput]], results: list[PutResult | None]
    ) -> dict[CID, PutStatus]:
        items = [item for _, item in forward]
        # A small batch of entries checked here (gossip's usual one) is stored on this
        # thread when the inner store's writer is free: no worker-thread hop.
        put_now = getattr(self.inner, "try_put_entries", None)
        got = None
        if put_now is not None and len(items) <= INLINE_FORWARD:
            got = put_now(items)
        if got is None:
            got = await self.inner.put_entries(items)
        for (i, _), result in zip(forward, got, strict=True):
            results[i] = result
        return {r.cid: r.status for r in got}

    # --- everything else is the inner store's ----------------------------------------------

    async def get_entries(self, cids: Sequence[CID]) -> list[Entry | None]:
        return await self.inner.get_entries(cids)

    async def get_raw(self, cids: Sequence[CID]) -> list[bytes | None]:
        return await fetch_raw(self.inner, cids)

    async def has_entries(self, cids: Sequence[CID]) -> list[bool]:
        return await self.inner.has_entries(cids)

    async def get_metadata(self, cids: Sequence[CID]) -> list[EntryMeta | None]:
        return await self.inner.get_metadata(cids)

    async def heads(self, space: str, collection: str, document: str) -> list[CID]:
        return await self.inner.heads(space, collection, document)

    async def list_spaces(self) -> list[str]:
        return await self.inner.list_spaces()

    async def list_collections(self, space: str) -> list[str]:
        return await self.inner.list_collections(space)

    async def list_documents(self, space: str, collection: str) -> list[str]:
        return await self.inner.list_documents(space, collection)

    async def list_entries(self, space: str, collection: str, document: str) -> list[EntryMeta]:
        return await self.inner.list_entries(space, collection, document)

    async def missing_parents(self, cids: Sequence[CID]) -> list[CID]:
        return await self.inner.missing_parents(cids)

    async def scan(self, after: int = 0, limit: int = 1000) -> list[Received]:
        return await self.inner.scan(after, limit)

    async def store_head(self) -> StoreHead:
        return await self.inner.store_head()

    async def count(self) -> int:
        return await self.inner.count()

    async def reconcile(self, requests: Sequence[ReconcileRequest]) -> list[ReconcileReply]:
        return await self.inner.reconcile(requests)

    async def catch_up_fingerprints(self) -> int:
        """The inner store's (``SQLiteStore``: a pull indexes the batches it stores)."""
        catch_up = getattr(self.inner, "catch_up_fingerprints", None)
        return 0 if catch_up is None else int(await catch_up())

    async def aclose(self) -> None:
        await self.inner.aclose()


def _is_directory(entry: Entry) -> bool:
    return entry.kind == DIRECTORY_KIND or entry.collection == DIRECTORY_COLLECTION


def _refused(cid: CID, error: LoomError) -> PutResult:
    return PutResult(cid, PutStatus.REJECTED, error)


def _cid_of(item: EntryInput) -> CID | None:
    if isinstance(item, Entry):
        return item.cid
    if isinstance(item, bytes):
        return CID.of(item)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], CID):
        return item[0]
    return None
