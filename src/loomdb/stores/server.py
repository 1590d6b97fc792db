"""``StoreServer``: serves any ``ContentAddressedStore`` over the sync wire protocol.

The server is a :data:`~loomdb.transports.base.FrameHandler`: one request frame
in, one reply frame out, whatever carries them (memory network, HTTP POST,
WebSocket). Its backing store may be anything that implements the store
interface: an SQLite store, a memory store, a ``CachingStore``, or a
``RemoteStore`` to another server, which makes this node a passthrough hop.

It never decrypts: every operation reads or writes entries as signed bytes
and metadata. Entries pushed to it are verified by the backing store (CID and
signature), one result per entry, so a bad entry never blocks the rest.

Limits: a request frame over ``max_frame`` is refused unread; a request naming
more than ``max_items`` ids or entries is refused; replies carrying entries stop
before ``max_frame`` (the client asks again for the rest).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Final

from loomdb.entries import codec
from loomdb.entries.cid import CID
from loomdb.entries.entry import EntryMeta, decode_entry
from loomdb.errors import EntryError, ForbiddenError, LoomError, ProtocolError
from loomdb.stores.base import ContentAddressedStore, PutResult, PutStatus, fetch_raw
from loomdb.sync import wire
from loomdb.sync.reconcile import ReconcileRequest
from loomdb.transports.base import FrameHandler
from loomdb.trust.access import Access
from loomdb.trust.principal import Principal

AccessPolicy = Callable[[Principal], Access]
"""Makes the :class:`Access` of a request's principal (see :mod:`loomdb.trust.access`)."""

log = logging.getLogger("loomdb.stores.server")

DEFAULT_MAX_ITEMS: Final = 10_000
REPLY_MARGIN: Final = 64 * 1024  # room for the reply's own structure around entries
MAX_RECONCILE_SETS: Final = 256


def put_result_to_wire(result: PutResult) -> list[Any]:
    code = None if result.error is None else result.error.code
    message = None if result.error is None else result.error.message
    return [result.status.value, code, message, result.seq]


class StoreServer:
    """Answers sync requests from the store it is given."""

    def __init__(
        self,
        store: ContentAddressedStore,
        *,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        max_items: int = DEFAULT_MAX_ITEMS,
        relay: bool = False,
        access: AccessPolicy | None = None,
        peer_id: str | None = None,
    ) -> None:
        self.store = store
        self.peer_id = peer_id  # the node's, in hello: who a client signs in to
        self.access = access
        self.max_frame = max_frame
        self.max_items = max_items
        self.relay = relay
        self.requests: Counter[str] = Counter()  # per operation, for stats and tests
        self._ops: dict[str, Callable[[dict[str, Any], Access | None], Awaitable[object]]] = {
            "hello": self._hello,
            "access": self._access,
            "put": self._put,
            "get": self._get,
            "has": self._has,
            "meta": self._meta,
            "heads": self._heads,
            "spaces": self._spaces,
            "collections": self._collections,
            "documents": self._documents,
            "entries": self._entries,
            "missing": self._missing,
            "scan": self._scan,
            "head": self._head,
            "count": self._count,
            "reconcile": self._reconcile,
        }

    def handler_for(self, principal: Principal) -> FrameHandler:
        """The frame handler of one authenticated (or anonymous) principal: with an
        access policy, it reaches only what the principal may."""
        access = None if self.access is None else self.access(principal)

        async def handle(frame: bytes) -> bytes:
            return await self.handle(frame, access)

        return handle

    async def handle(self, frame: bytes, access: Access | None = None) -> bytes:
        """A request frame in, a reply frame out; errors become error replies.
        ``access`` None: unrestricted (a node's own use, tests)."""
        try:
            request = wire.decode_request(frame, self.max_frame)
            self.requests[request.op] += 1
            result = await self._ops[request.op](request.args, access)
            return wire.encode_reply(result, compress=request.compress_reply)
        except LoomError as exc:
            return wire.encode_error(exc)
        except Exception:
            log.exception("sync request failed")
            return wire.encode_error(LoomError("internal error in the store server"))

    # --- argument helpers ----------------------------------------------------

    def _cids(self, args: dict[str, Any]) -> list[CID]:
        return wire.list_of(args, "cids", wire.cid_of, self.max_items)

    def _budget(self, args: dict[str, Any]) -> int:
        asked = wire.uint(args, "max_bytes", self.max_frame)
        return max(1, min(asked, self.max_frame - REPLY_MARGIN))

    # --- operations ----------------------------------------------------------

    async def _hello(self, args: dict[str, Any], access: Access | None) -> object:
        return {
            "versions": list(wire.SUPPORTED_VERSIONS),
            "features": list(wire.FEATURES),
            "max_frame": self.max_frame,
            "max_items": self.max_items,
            "relay": self.relay,
            **({} if self.peer_id is None else {"peer_id": self.peer_id}),
        }

    async def _put(self, args: dict[str, Any], access: Access | None) -> object:
        raws = wire.list_of(args, "entries", wire.bytes_of, self.max_items)
        if access is None:
            return [put_result_to_wire(r) for r in await self.store.put_entries(raws)]
        results: list[PutResult | None] = [None] * len(raws)
        allowed: list[int] = []
        for i, raw in enumerate(raws):
            try:  # the store verifies the signature; here only where the entry goes
                entry = decode_entry(raw, check_signature=False)
            except EntryError:
                allowed.append(i)  # the store refuses it with the precise error
                continue
            if access.can_push(entry.space, entry.collection):
                allowed.append(i)
            else:
                refusal = ForbiddenError(f"you may not push to {entry.space}/{entry.collection}")
                results[i] = PutResult(entry.cid, PutStatus.REJECTED, refusal)
        stored = await self.store.put_entries([raws[i] for i in allowed])
        for i, result in zip(allowed, stored, strict=True):
            results[i] = result
        return [put_result_to_wire(r) for r in results if r is not None]

    async def _get(self, args: dict[str, Any], access: Access | None) -> object:
        cids = self._cids(args)
        budget = self._budget(args)
        out: list[bytes | None] = []
        used = 0
        allowed: dict[tuple[str, str], bool] = {}
        # Fetch in slices so an over-budget reply does not read the whole request.
        step = 256
        for start in range(0, len(cids), step):
            part = cids[start : start + step]
            raws = await fetch_raw(self.store, part)
            if access is not None:
                # What the principal may not pull is answered as missing; where an
                # entry goes is read from its bytes (our store verified them), ~4 µs,
                # not from a metadata query (~20 µs per entry).
                raws = [_if_pullable(raw, access, allowed) for raw in raws]
            for raw in raws:
                size = 8 if raw is None else len(raw) + 8
                if out and used + size > budget:
                    return out  # a prefix: the client asks again for the rest
                used += size
                out.append(raw)
        return out

    async def _has(self, args: dict[str, Any], access: Access | None) -> object:
        cids = await self._visible(self._cids(args), access)
        held = iter(await self.store.has_entries([c for c in cids if c is not None]))
        return [c is not None and next(held) for c in cids]

    async def _meta(self, args: dict[str, Any], access: Access | None) -> object:
        metas = await self.store.get_metadata(self._cids(args))
        return [wire.meta_to_wire(_if_visible(m, access)) for m in metas]

    async def _heads(self, args: dict[str, Any], access: Access | None) -> object:
        key = (wire.text(args, "space"), wire.text(args, "collection"), wire.text(args, "document"))
        _need_pull(access, key[0], key[1])
        return wire.cids_to_wire(await self.store.heads(*key))

    async def _spaces(self, args: dict[str, Any], access: Access | None) -> object:
        spaces = await self.store.list_spaces()
        return spaces if access is None else [s for s in spaces if access.sees_space(s)]

    async def _collections(self, args: dict[str, Any], access: Access | None) -> object:
        space = wire.text(args, "space")
        found = await self.store.list_collections(space)
        return found if access is None else [c for c in found if access.can_pull(space, c)]

    async def _documents(self, args: dict[str, Any], access: Access | None) -> object:
        space, collection = wire.text(args, "space"), wire.text(args, "collection")
        _need_pull(access, space, collection)
        return await self.store.list_documents(space, collection)

    async def _entries(self, args: dict[str, Any], access: Access | None) -> object:
        key = (wire.text(args, "space"), wire.text(args, "collection"), wire.text(args, "document"))
        _need_pull(access, key[0], key[1])
        return [wire.meta_to_wire(m) for m in await self.store.list_entries(*key)]

    async def _missing(self, args: dict[str, Any], access: Access | None) -> object:
        return wire.cids_to_wire(await self.store.missing_parents(self._cids(args)))

    async def _scan(self, args: dict[str, Any], access: Access | None) -> object:
        after = wire.uint(args, "after", 0)
        limit = min(wire.uint(args, "limit", 1000), self.max_items)
        if limit < 1:
            raise ProtocolError("limit must be at least 1")
        budget = self._budget(args)
        out: list[list[Any]] = []
        used = 0
        for received in await self.store.scan(after, limit):
            if access is not None and not access.can_pull(
                received.entry.space, received.entry.collection
            ):
                continue  # the cursor still moves past it: the next page starts later
            size = len(received.entry.raw) + 16
            if out and used + size > budget:
                return [out, True]  # cut at the byte budget: the client asks again
            used += size
            out.append([received.seq, received.entry.raw])
        return [out, False]

    async def _head(self, args: dict[str, Any], access: Access | None) -> object:
        head = await self.store.store_head()
        return [head.epoch, head.seq]

    async def _count(self, args: dict[str, Any], access: Access | None) -> object:
        return await self.store.count()

    async def _reconcile(self, args: dict[str, Any], access: Access | None) -> object:
        requests = wire.list_of(args, "sets", _reconcile_request, MAX_RECONCILE_SETS)
        for r in requests:
            _need_pull(access, r.set.space, r.set.collection)
        # Every reply must fit one frame, whatever limit the client asked for.
        ceiling = (self.max_frame - REPLY_MARGIN) // max(1, len(requests))
        requests = [
            replace(r, frame_limit=max(4096, min(r.frame_limit or ceiling, ceiling)))
            for r in requests
        ]
        replies = await self.store.reconcile(requests)
        return [[r.message, r.have, r.need] for r in replies]

    async def _access(self, args: dict[str, Any], access: Access | None) -> object:
        return None if access is None else access.describe()

    async def _visible(self, cids: list[CID], access: Access | None) -> list[CID | None]:
        """``cids`` with those the principal may not pull replaced by None."""
        if access is None:
            return list(cids)
        metas = await self.store.get_metadata(cids)
        return [
            c if _if_visible(m, access) is not None else None
            for c, m in zip(cids, metas, strict=True)
        ]


def _if_visible(meta: EntryMeta | None, access: Access | None) -> EntryMeta | None:
    if meta is None or access is None or access.can_pull(meta.space, meta.collection):
        return meta
    return None


def _if_pullable(
    raw: bytes | None, access: Access, allowed: dict[tuple[str, str], bool]
) -> bytes | None:
    """``raw`` if the principal may pull the entry, else None (as if missing);
    ``allowed`` remembers the answer per (space, collection) within a request."""
    if raw is None:
        return None
    try:
        fields = codec.decode_fields(raw)
        where = (fields["space"], fields["coll"])
    except LoomError:
        return None  # not an entry (a damaged store): nothing to send
    if type(where[0]) is not str or type(where[1]) is not str:
        return None
    may = allowed.get(where)
    if may is None:
        may = allowed[where] = access.can_pull(*where)
    return raw if may else None


def _need_pull(access: Access | None, space: str, collection: str | None) -> None:
    if access is not None and not access.can_pull(space, collection):
        what = space if collection is None else f"{space}/{collection}"
        who = access.principal.user_id or "an anonymous client"
        raise ForbiddenError(f"{who} may not read {what}")


def _reconcile_request(value: object) -> ReconcileRequest:
    if type(value) is not list or len(value) != 4:
        raise ProtocolError("a reconcile request is [set, message, initiator, frame_limit]")
    key, message, initiator, frame_limit = value
    if message is not None and type(message) is not bytes:
        raise ProtocolError("a reconcile message is bytes or null")
    if type(initiator) is not bool or type(frame_limit) is not int or frame_limit < 0:
        raise ProtocolError("bad reconcile request")
    if frame_limit and frame_limit < 4096:
        raise ProtocolError("the Negentropy frame limit is 0 or at least 4096")
    return ReconcileRequest(wire.set_from_wire(key), message, initiator, frame_limit)
