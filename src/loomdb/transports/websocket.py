"""Sync frames over a WebSocket (``ws://`` or ``wss://``, path ``/api/v0/sync``).

One binary message per frame, one request in flight, on one long-lived
connection: cheaper than HTTP when a sync session sends many frames. The
client is :mod:`wsproto` (sans-IO) over an anyio TCP or TLS stream, so it runs
on asyncio and on trio alike.

The connection is opened on the first request. A time-out, a cancellation or
any error drops it (a late reply must never answer the next request) and the
next request opens a new one. Nothing is retried here: a request that fails
because the node closed an idle connection meanwhile is a ``TransportError``
for the caller to judge.

A reply is reassembled from its fragments up to ``max_frame`` bytes and no
further: a longer one closes the connection with 1009 and raises
``FrameTooLargeError``. The node closes with 1009 a request over its own limit.

With a token source, the handshake carries ``Authorization: Bearer <token>``.
The node refuses a token with close 4401 (at once, or before the frame it will
not handle once the token expired or its user was revoked); the reason is
``code: message``. The channel then connects again with a new token and sends
the request once more (rule 5 of :mod:`loomdb.transports.base`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError

from loomdb.errors import (
    AuthError,
    FrameTooLargeError,
    TransportError,
    UnreachableError,
)
from loomdb.transports.auth import TokenSource, api_error, auth_error, auth_error_from_reason
from loomdb.transports.base import DEFAULT_MAX_FRAME, SerialChannel, TokenRefused
from loomdb.transports.endpoint import SyncEndpoint, sync_endpoint
from loomdb.transports.tls import Verify, verify_context

DEFAULT_CONNECT_TIMEOUT = 10.0
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_TOO_BIG = 1009
CLOSE_UNAUTHORIZED = 4401  # the node refused the token (see loomdb.api.sync)
_RECEIVE_SIZE = 64 * 1024
_REJECT_BODY_LIMIT = 64 * 1024
_CLOSE_GRACE = 1.0  # seconds a polite close may take before the socket is just dropped

# What the stream and the protocol below may raise; translated once, here.
_STREAM_ERRORS = (
    OSError,  # ssl.SSLError included
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    ProtocolError,
)


class WebSocketChannel(SerialChannel):
    """A :class:`~loomdb.transports.base.RequestChannel` over one WebSocket.

    ``url``: the node's base URL, ``ws://``/``wss://`` or ``http://``/``https://``
    (mapped to ``ws``/``wss``). ``verify``: see :data:`loomdb.transports.tls.Verify`.
    ``connect_timeout`` bounds the TCP, TLS and WebSocket handshakes together.
    ``token_source`` gives the bearer token for the handshake (none: anonymous).
    """

    def __init__(
        self,
        url: str,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        verify: Verify = True,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        token_source: TokenSource | None = None,
    ) -> None:
        super().__init__(url, max_frame, token_source)
        self._endpoint = sync_endpoint(url, websocket=True)
        self.url = url
        self._ssl = verify_context(verify) if self._endpoint.secure else None
        self._connect_timeout = connect_timeout
        self._connection: _Connection | None = None

    @property
    def connected(self) -> bool:
        """Whether a connection is open (for tests: a time-out must drop it)."""
        return self._connection is not None

    async def _exchange(self, frame: bytes) -> bytes:
        try:
            if self._connection is None:
                self._connection = await self._connect()
            return await self._connection.exchange(frame)
        except BaseException:
            # Time-out, cancellation or error: the connection's state is
            # unknown (a reply may still come), so it is never reused.
            await self._drop()
            raise

    async def aclose(self) -> None:
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close(CLOSE_NORMAL)

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await anyio.aclose_forcefully(connection.stream)

    async def _connect(self) -> _Connection:
        endpoint = self._endpoint
        token = await self._bearer()  # the login has its own time-out
        stream: anyio.abc.ByteStream | None = None
        try:
            with anyio.fail_after(self._connect_timeout):
                if self._ssl is None:
                    stream = await anyio.connect_tcp(endpoint.host, endpoint.port)
                else:
                    stream = await anyio.connect_tcp(
                        endpoint.host,
                        endpoint.port,
                        ssl_context=self._ssl,
                        tls_hostname=endpoint.host,
                        tls_standard_compatible=False,  # WebSocket close ends the stream
                    )
                return await _handshake(stream, endpoint, self._max_frame, token)
        except TimeoutError:
            if stream is not None:
                await anyio.aclose_forcefully(stream)
            raise UnreachableError(
                f"cannot reach {self.url}: no WebSocket within {self._connect_timeout} s"
            ) from None
        except _STREAM_ERRORS as exc:
            if stream is not None:
                await anyio.aclose_forcefully(stream)
            raise UnreachableError(f"cannot reach {self.url}: {_reason(exc)}") from None
        except BaseException:
            if stream is not None:
                await anyio.aclose_forcefully(stream)
            raise


async def _handshake(
    stream: anyio.abc.ByteStream, endpoint: SyncEndpoint, max_frame: int, token: str | None
) -> _Connection:
    ws = WSConnection(ConnectionType.CLIENT)
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    request = Request(host=endpoint.netloc, target=endpoint.path, extra_headers=headers)
    await stream.send(ws.send(request))
    rejected: RejectConnection | None = None
    body = bytearray()
    while True:
        data = await stream.receive(_RECEIVE_SIZE)
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return _Connection(stream, ws, endpoint, max_frame)
            if isinstance(event, RejectConnection):
                rejected = event
                if not event.has_body:
                    raise _rejection(endpoint, rejected, b"")
            elif isinstance(event, RejectData) and rejected is not None:
                body += event.data
                if event.body_finished or len(body) > _REJECT_BODY_LIMIT:
                    raise _rejection(endpoint, rejected, bytes(body))


def _rejection(
    endpoint: SyncEndpoint, event: RejectConnection, body: bytes
) -> TransportError | TokenRefused:
    status = event.status_code
    detail = body[:200].decode("utf-8", "replace").strip() or "no details"
    if status == 401:  # a node may refuse the handshake itself rather than close 4401
        error = api_error(body)
        refusal = auth_error(*error) if error else AuthError(f"{endpoint.url} answered 401")
        return TokenRefused(refusal)
    if status == 404:
        return TransportError(
            f"{endpoint.url} has no sync endpoint (404: {detail}); is it a loomdb node?"
        )
    return TransportError(f"{endpoint.url} refused the WebSocket ({status}: {detail})")


@dataclass(slots=True)
class _Connection:
    """An open WebSocket: a stream and wsproto's state for it."""

    stream: anyio.abc.ByteStream
    ws: WSConnection
    endpoint: SyncEndpoint
    max_frame: int

    async def exchange(self, frame: bytes) -> bytes:
        try:
            await self.stream.send(self.ws.send(BytesMessage(data=frame)))
            reply = bytearray()
            while True:
                for event in await self._receive():
                    if isinstance(event, BytesMessage):
                        reply += event.data
                        if len(reply) > self.max_frame:
                            await self.close(CLOSE_TOO_BIG)
                            raise FrameTooLargeError(
                                f"the reply from {self.endpoint.url} is over the limit of "
                                f"{self.max_frame} bytes"
                            )
                        if event.message_finished:
                            return bytes(reply)
                    elif isinstance(event, TextMessage):
                        await self.close(CLOSE_UNSUPPORTED_DATA)
                        raise TransportError(f"{self.endpoint.url} sent text, not a frame")
                    elif isinstance(event, Ping):
                        await self.stream.send(self.ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        # No closing answer: the node may have shut the stream (TLS
                        # close_notify) already, and data after that is an error there.
                        raise self._closed_by_node(event)
        except _STREAM_ERRORS as exc:
            raise TransportError(
                f"the connection to {self.endpoint.url} failed: {_reason(exc)}"
            ) from None

    async def _receive(self) -> list[Event]:
        # Events already received first: a close sent right after the handshake
        # (4401) may have come in the same read as the handshake's answer, and the
        # node may have hung up since.
        pending = list(self.ws.events())
        if pending:
            return pending
        data = await self.stream.receive(_RECEIVE_SIZE)  # EndOfStream: the node hung up
        self.ws.receive_data(data)
        return list(self.ws.events())

    def _closed_by_node(self, event: CloseConnection) -> TransportError | TokenRefused:
        if event.code == CLOSE_UNAUTHORIZED:
            return TokenRefused(auth_error_from_reason(event.reason))
        reason = f" ({event.reason})" if event.reason else ""
        if event.code == CLOSE_TOO_BIG:
            return FrameTooLargeError(
                f"{self.endpoint.url} refused the request as too large{reason}"
            )
        return TransportError(
            f"{self.endpoint.url} closed the connection: code {event.code}{reason}"
        )

    async def close(self, code: int) -> None:
        """Say goodbye if the connection still allows it, then drop the socket."""
        try:
            with anyio.move_on_after(_CLOSE_GRACE, shield=True):
                await self.stream.send(self.ws.send(CloseConnection(code=code)))
        except (*_STREAM_ERRORS, ssl.SSLError):
            pass  # it is going away anyway
        finally:
            await anyio.aclose_forcefully(self.stream)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, anyio.EndOfStream):
        return "the connection was closed"
    return str(exc) or type(exc).__name__
