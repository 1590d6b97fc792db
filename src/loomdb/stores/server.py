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

from loomdb.entries.cid import CID
from loomdb.errors import LoomError, ProtocolError
from loomdb.stores.base import ContentAddressedStore, PutResult, fetch_raw
from loomdb.sync import wire
from loomdb.sync.reconcile import ReconcileRequest

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
    ) -> None:
        self.store = store
        self.max_frame = max_frame
        self.max_items = max_items
        self.relay = relay
        self.requests: Counter[str] = Counter()  # per operation, for stats and tests
        self._ops: dict[str, Callable[[dict[str, Any]], Awaitable[object]]] = {
            "hello": self._hello,
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

    async def handle(self, frame: bytes) -> bytes:
        """A request frame in, a reply frame out; errors become error replies."""
        try:
            request = wire.decode_request(frame, self.max_frame)
            self.requests[request.op] += 1
            return wire.encode_reply(await self._ops[request.op](request.args))
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

    async def _hello(self, args: dict[str, Any]) -> object:
        return {
            "versions": list(wire.SUPPORTED_VERSIONS),
            "features": list(wire.FEATURES),
            "max_frame": self.max_frame,
            "max_items": self.max_items,
            "relay": self.relay,
        }

    async def _put(self, args: dict[str, Any]) -> object:
        raws = wire.list_of(args, "entries", wire.bytes_of, self.max_items)
        results = await self.store.put_entries(raws)
        return [put_result_to_wire(r) for r in results]

    async def _get(self, args: dict[str, Any]) -> object:
        cids = self._cids(args)
        budget = self._budget(args)
        out: list[bytes | None] = []
        used = 0
        # Fetch in slices so an over-budget reply does not read the whole request.
        step = 256
        for start in range(0, len(cids), step):
            for raw in await fetch_raw(self.store, cids[start : start + step]):
                size = 8 if raw is None else len(raw) + 8
                if out and used + size > budget:
                    return out  # a prefix: the client asks again for the rest
                used += size
                out.append(raw)
        return out

    async def _has(self, args: dict[str, Any]) -> object:
        return await self.store.has_entries(self._cids(args))

    async def _meta(self, args: dict[str, Any]) -> object:
        return [wire.meta_to_wire(m) for m in await self.store.get_metadata(self._cids(args))]

    async def _heads(self, args: dict[str, Any]) -> object:
        key = (wire.text(args, "space"), wire.text(args, "collection"), wire.text(args, "document"))
        return wire.cids_to_wire(await self.store.heads(*key))

    async def _spaces(self, args: dict[str, Any]) -> object:
        return await self.store.list_spaces()

    async def _collections(self, args: dict[str, Any]) -> object:
        return await self.store.list_collections(wire.text(args, "space"))

    async def _documents(self, args: dict[str, Any]) -> object:
        space, collection = wire.text(args, "space"), wire.text(args, "collection")
        return await self.store.list_documents(space, collection)

    async def _entries(self, args: dict[str, Any]) -> object:
        key = (wire.text(args, "space"), wire.text(args, "collection"), wire.text(args, "document"))
        return [wire.meta_to_wire(m) for m in await self.store.list_entries(*key)]

    async def _missing(self, args: dict[str, Any]) -> object:
        return wire.cids_to_wire(await self.store.missing_parents(self._cids(args)))

    async def _scan(self, args: dict[str, Any]) -> object:
        after = wire.uint(args, "after", 0)
        limit = min(wire.uint(args, "limit", 1000), self.max_items)
        if limit < 1:
            raise ProtocolError("limit must be at least 1")
        budget = self._budget(args)
        out: list[list[Any]] = []
        used = 0
        for received in await self.store.scan(after, limit):
            size = len(received.entry.raw) + 16
            if out and used + size > budget:
                return [out, True]  # cut at the byte budget: the client asks again
            used += size
            out.append([received.seq, received.entry.raw])
        return [out, False]

    async def _head(self, args: dict[str, Any]) -> object:
        head = await self.store.store_head()
        return [head.epoch, head.seq]

    async def _count(self, args: dict[str, Any]) -> object:
        return await self.store.count()

    async def _reconcile(self, args: dict[str, Any]) -> object:
        requests = wire.list_of(args, "sets", _reconcile_request, MAX_RECONCILE_SETS)
        # Every reply must fit one frame, whatever limit the client asked for.
        ceiling = (self.max_frame - REPLY_MARGIN) // max(1, len(requests))
        requests = [
            replace(r, frame_limit=max(4096, min(r.frame_limit or ceiling, ceiling)))
            for r in requests
        ]
        replies = await self.store.reconcile(requests)
        return [[r.message, r.have, r.need] for r in replies]


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
