"""``RemoteStore``: a ``ContentAddressedStore`` whose entries live on another node.

Every method is one or more requests over a
:class:`~loomdb.transports.base.RequestChannel` to a ``StoreServer``; the proxy
passes the same conformance suite as the local stores, so pull, push, sync and
``StoreServer`` itself take it like any store (a server backed by a
``RemoteStore`` is a passthrough hop).

Transfer is bounded: a put is split into frames of at most ``max_frame`` bytes
and ``max_items`` entries; a get asks for at most a frame's worth and asks again
for the rest. Every request waits at most ``timeout``; a request that timed out
or found the node unreachable is repeated (every operation of the protocol is
idempotent: putting an entry twice stores it once) up to ``retries`` times,
with exponential back-off, then the error is raised.

Replies come compressed (zlib, when that saves 1/8) unless ``compress`` is off,
which :meth:`RemoteStore.connect` does by default for a node on a loopback or
private address (:func:`near`): there zlib costs the serving node more CPU than the
bytes it saves.

Entries read from the remote are checked against the CID they were asked for,
but their signatures are not checked here (``verified`` is False): any store
they are put into verifies them, so a tampering hop is caught where it matters.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import anyio

from loomdb.entries.cid import CID
from loomdb.entries.entry import Entry, EntryMeta, decode_entry
from loomdb.errors import (
    ChallengeError,
    CidMismatchError,
    EntryError,
    FrameTooLargeError,
    ProtocolError,
    StoreClosedError,
    TransportError,
    TrustError,
    ValidationError,
    errors_by_code,
)
from loomdb.identity.user import UserIdentity
from loomdb.stores.base import (
    EntryInput,
    PutResult,
    PutStatus,
    Received,
    StoreHead,
    check_cids,
    check_limit,
)
from loomdb.sync import wire
from loomdb.sync.reconcile import ReconcileReply, ReconcileRequest
from loomdb.transports.auth import ChallengeLogin
from loomdb.transports.base import DEFAULT_MAX_FRAME, DEFAULT_TIMEOUT, RequestChannel
from loomdb.transports.http import HttpChannel
from loomdb.transports.tls import Verify
from loomdb.transports.websocket import WebSocketChannel

FRAME_OVERHEAD: Final = 64 * 1024
PER_ENTRY_OVERHEAD: Final = 16


# The errors a store may give for one refused entry, by code.
_ENTRY_ERRORS: Final = errors_by_code(EntryError, TrustError)


def near(url: str) -> bool:
    """Whether ``url`` names this host or a private network (loopback, RFC 1918,
    unique-local, link-local addresses, ``localhost``): where bytes are cheap."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: it may be anywhere
    return address.is_loopback or address.is_private or address.is_link_local


def put_result_from_wire(cid: CID, value: object) -> PutResult:
    if type(value) is not list or len(value) != 4:
        raise ProtocolError("a put result is [status, code, message, seq]")
    status, code, message, seq = value
    try:
        state = PutStatus(status)
    except ValueError:
        raise ProtocolError(f"unknown put status {status!r}") from None
    error = None
    if state is PutStatus.REJECTED:
        cls = _ENTRY_ERRORS.get(str(code), EntryError)
        error = cls(f"refused by the remote store: {message}")
    return PutResult(cid, state, error, seq if type(seq) is int else None)


class RemoteStore:
    """A :class:`~loomdb.stores.base.ContentAddressedStore` proxy over a request channel."""

    def __init__(
        self,
        channel: RequestChannel,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.2,
        max_items: int = 1000,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        compress: bool = True,
    ) -> None:
        self.channel = channel
        self.compress = compress  # False: frames both ways uncompressed ("z": false)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_items = max_items
        self._sleep = sleep
        self._closed = False
        self.requests = 0  # round trips made (retries included)
        self.bytes_sent = 0
        self.bytes_received = 0

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        transport: str = "ws",
        verify: Verify = True,
        max_frame: int = DEFAULT_MAX_FRAME,
        identity: UserIdentity | None = None,
        expected_server: str | None = None,
        compress: bool | None = None,
        **options: Any,
    ) -> RemoteStore:
        """A RemoteStore to the node at ``url`` (its base URL) over WebSocket
        (``transport="ws"``, the default) or HTTP POSTs (``"http"``).

        With an ``identity``, requests carry a token got by challenge-response
        (:class:`~loomdb.transports.auth.ChallengeLogin`) and act as that user. The
        login is bound to one node: ``expected_server`` (its Peer ID) if given,
        else the Peer ID the node at ``url`` gives in its ``hello`` (asked once, on
        a connection without a token); a challenge from any other node is refused.
        Without an identity requests are anonymous — and so are they with one the
        node does not know (a user in none of its directories, or a node with no
        login): anonymous requests reach the node's open spaces only.

        The only credential a RemoteStore ever sends is a token its own login got
        from that node: nothing is read from the environment or a node's home.

        ``compress`` None (the default): frames are compressed unless the node is
        :func:`near` (loopback or a private address)."""

        def channel(login: ChallengeLogin | None) -> RequestChannel:
            if transport == "ws":
                return WebSocketChannel(url, max_frame=max_frame, verify=verify, token_source=login)
            return HttpChannel(url, max_frame=max_frame, verify=verify, token_source=login)

        if transport not in ("ws", "http"):
            raise ValidationError(f"transport is 'ws' or 'http', not {transport!r}")
        options["compress"] = not near(url) if compress is None else compress
        login = None
        if identity is not None:

            async def identify() -> str:
                async with cls(channel(None), **options) as anonymous:
                    info = await anonymous.hello()
                peer_id = info.get("peer_id")
                if not isinstance(peer_id, str):
                    raise ChallengeError(
                        f"{url} does not say which node it is (no peer_id in its hello):"
                        " give its Peer ID to sign in there"
                    )
                return peer_id

            login = ChallengeLogin(
                url,
                identity,
                verify=verify,
                expected_server=expected_server,
                identify=identify,
                anonymous_if_stranger=True,
            )
        return cls(channel(login), **options)

    @property
    def max_frame(self) -> int:
        return self.channel.max_frame

    async def call(self, op: str, **args: Any) -> Any:
        """One request, repeated on time-outs and lost connections; the reply's result."""
        if self._closed:
            raise StoreClosedError("the remote store is closed")
        frame = wire.encode_request(op, args, compress=self.compress)
        attempt = 0
        while True:
            self.requests += 1
            self.bytes_sent += len(frame)
            try:
                reply = await self.channel.request(frame, timeout=self.timeout)
            except FrameTooLargeError:
                raise  # the same frame would be refused again
            except TransportError:
                # Timed out, unreachable, or the connection was lost (e.g. the node
                # restarted and closed an idle WebSocket): every operation is
                # idempotent, so asking again is safe.
                if attempt >= self.retries:
                    raise
                await self._sleep(self.backoff * 2**attempt)
                attempt += 1
                continue
            self.bytes_received += len(reply)
            return wire.decode_reply(reply, self.channel.max_frame)

    async def hello(self) -> dict[str, Any]:
        info = await self.call("hello")
        if not isinstance(info, dict):
            raise ProtocolError("hello replies with a map")
        return info

    # --- writes ---------------------------------------------------------------

    async def put_entries(self, entries: Iterable[EntryInput]) -> list[PutResult]:
        results: list[PutResult | None] = []
        pending: list[tuple[int, CID, bytes]] = []
        for item in entries:
            results.append(None)
            i = len(results) - 1
            if isinstance(item, Entry):
                pending.append((i, item.cid, item.raw))
            elif isinstance(item, bytes):
                pending.append((i, CID.of(item), item))
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], CID):
                claimed, data = item
                if not isinstance(data, bytes) or CID.of(data) != claimed:
                    error = CidMismatchError(f"entry bytes do not hash to {claimed}")
                    results[i] = PutResult(claimed, PutStatus.REJECTED, error)
                else:
                    pending.append((i, claimed, data))
            else:
                raise ValidationError(
                    f"put_entries takes Entry, bytes or (CID, bytes), not {type(item).__name__}"
                )
        for batch in self._frames(pending):
            replies = await self.call("put", entries=[raw for _, _, raw in batch])
            if type(replies) is not list or len(replies) != len(batch):
                raise ProtocolError("a put reply has one result per entry")
            for (i, cid, _), value in zip(batch, replies, strict=True):
                results[i] = put_result_from_wire(cid, value)
        return [r for r in results if r is not None]

    def _frames(
        self, items: list[tuple[int, CID, bytes]]
    ) -> Iterable[list[tuple[int, CID, bytes]]]:
        budget = max(1, self.max_frame - FRAME_OVERHEAD)
        batch: list[tuple[int, CID, bytes]] = []
        used = 0
        for item in items:
            size = len(item[2]) + PER_ENTRY_OVERHEAD
            if batch and (used + size > budget or len(batch) >= self.max_items):
                yield batch
                batch, used = [], 0
            batch.append(item)
            used += size
        if batch:
            yield batch

    # --- reads ----------------------------------------------------------------

    async def get_raw(self, cids: Sequence[CID]) -> list[bytes | None]:
        """The entries' bytes as the remote holds them, aligned with ``cids``."""
        wanted = check_cids(cids)
        out: list[bytes | None] = []
        budget = max(1, self.max_frame - FRAME_OVERHEAD)
        while len(out) < len(wanted):
            ask = wanted[len(out) : len(out) + self.max_items]
            got = await self.call("get", cids=wire.cids_to_wire(ask), max_bytes=budget)
            if type(got) is not list or not got or len(got) > len(ask):
                raise ProtocolError("a get reply holds 1 to n entries or nulls")
            for value in got:
                if value is not None and type(value) is not bytes:
                    raise ProtocolError("a get reply holds entry bytes or nulls")
                out.append(value)
        return out

    async def get_entries(self, cids: Sequence[CID]) -> list[Entry | None]:
        wanted = check_cids(cids)
        raws = await self.get_raw(wanted)
        return [
            None if raw is None else self._decode(raw, cid)
            for cid, raw in zip(wanted, raws, strict=True)
        ]

    def _decode(self, raw: bytes, cid: CID) -> Entry:
        try:
            return decode_entry(raw, expected_cid=cid, check_signature=False)
        except EntryError as exc:
            raise ProtocolError(f"the remote sent a bad entry for {cid}: {exc.message}") from exc

    async def _chunked(self, op: str, cids: Sequence[CID]) -> list[Any]:
        wanted = check_cids(cids)
        out: list[Any] = []
        for start in range(0, len(wanted), self.max_items):
            part = wanted[start : start + self.max_items]
            got = await self.call(op, cids=wire.cids_to_wire(part))
            if type(got) is not list or len(got) != len(part):
                raise ProtocolError(f"a {op} reply has one item per CID")
            out.extend(got)
        return out

    async def has_entries(self, cids: Sequence[CID]) -> list[bool]:
        got = await self._chunked("has", cids)
        if not all(type(v) is bool for v in got):
            raise ProtocolError("a has reply holds booleans")
        return got

    async def get_metadata(self, cids: Sequence[CID]) -> list[EntryMeta | None]:
        return [wire.meta_from_wire(v) for v in await self._chunked("meta", cids)]

    async def heads(self, space: str, collection: str, document: str) -> list[CID]:
        got = await self.call("heads", space=space, collection=collection, document=document)
        return self._cid_list(got)

    def _cid_list(self, value: object) -> list[CID]:
        if type(value) is not list:
            raise ProtocolError("expected a list of CIDs")
        return [wire.cid_of(v) for v in value]

    def _names(self, value: object) -> list[str]:
        if type(value) is not list or not all(type(v) is str for v in value):
            raise ProtocolError("expected a list of names")
        return value

    async def list_spaces(self) -> list[str]:
        return self._names(await self.call("spaces"))

    async def list_collections(self, space: str) -> list[str]:
        return self._names(await self.call("collections", space=space))

    async def list_documents(self, space: str, collection: str) -> list[str]:
        return self._names(await self.call("documents", space=space, collection=collection))

    async def list_entries(self, space: str, collection: str, document: str) -> list[EntryMeta]:
        got = await self.call("entries", space=space, collection=collection, document=document)
        if type(got) is not list:
            raise ProtocolError("expected a list of entry metadata")
        metas = [wire.meta_from_wire(v) for v in got]
        return [m for m in metas if m is not None]

    async def missing_parents(self, cids: Sequence[CID]) -> list[CID]:
        wanted = check_cids(cids)
        found: set[CID] = set()
        for start in range(0, len(wanted), self.max_items):
            part = wanted[start : start + self.max_items]
            found.update(self._cid_list(await self.call("missing", cids=wire.cids_to_wire(part))))
        return sorted(found)

    async def scan(self, after: int = 0, limit: int = 1000) -> list[Received]:
        n = check_limit(limit)
        out: list[Received] = []
        budget = max(1, self.max_frame - FRAME_OVERHEAD)
        cursor = max(after, 0)
        while len(out) < n:
            ask = min(n - len(out), self.max_items)
            got = await self.call("scan", after=cursor, limit=ask, max_bytes=budget)
            if type(got) is not list or len(got) != 2 or type(got[0]) is not list:
                raise ProtocolError("a scan reply is [items, truncated]")
            items, truncated = got
            for value in items:
                if type(value) is not list or len(value) != 2 or type(value[0]) is not int:
                    raise ProtocolError("a scan item is [seq, entry bytes]")
                seq, raw = value
                out.append(Received(seq, self._decode(wire.bytes_of(raw), CID.of(raw))))
                cursor = seq
            if not items or (len(items) < ask and not truncated):
                break  # the end of the remote's log
        return out

    async def store_head(self) -> StoreHead:
        got = await self.call("head")
        if type(got) is not list or len(got) != 2 or type(got[1]) is not int:
            raise ProtocolError("a head reply is [epoch, seq]")
        return StoreHead(str(got[0]), got[1])

    async def access(self) -> dict[str, Any] | None:
        """What this connection may reach on the remote (see :mod:`loomdb.trust.access`):
        None when unrestricted. Asked once per store."""
        if not hasattr(self, "_access"):
            got = await self.call("access")
            if got is not None and not isinstance(got, dict):
                raise ProtocolError("an access reply is a map or null")
            self._access: dict[str, Any] | None = got
        return self._access

    async def count(self) -> int:
        got = await self.call("count")
        if type(got) is not int:
            raise ProtocolError("a count reply is an integer")
        return got

    async def reconcile(self, requests: Sequence[ReconcileRequest]) -> list[ReconcileReply]:
        sets = [[wire.set_to_wire(r.set), r.message, r.initiator, r.frame_limit] for r in requests]
        got = await self.call("reconcile", sets=sets)
        if type(got) is not list or len(got) != len(requests):
            raise ProtocolError("a reconcile reply has one item per set")
        return [_reply_from_wire(v) for v in got]

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self.channel.aclose()

    async def __aenter__(self) -> RemoteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _reply_from_wire(value: object) -> ReconcileReply:
    if type(value) is not list or len(value) != 3:
        raise ProtocolError("a reconcile reply is [message, have, need]")
    message, have, need = value
    if message is not None and type(message) is not bytes:
        raise ProtocolError("a reconcile message is bytes or null")
    if type(have) is not list or type(need) is not list:
        raise ProtocolError("have and need are lists of ids")
    ids = [*have, *need]
    if not all(type(i) is bytes and len(i) == 32 for i in ids):
        raise ProtocolError("have and need hold 32-byte ids")
    return ReconcileReply(message, have, need)
