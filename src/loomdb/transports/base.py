"""What every transport offers: a request channel on the client side, a frame
handler on the server side.

A *frame* is an opaque ``bytes`` message of the sync protocol
(:mod:`loomdb.sync.wire`); transports move frames and never look inside. The
protocol is request/response: the client sends one request frame and waits for
its one reply frame. A channel carries one request at a time (callers that want
concurrency open several channels).

Every implementation (memory network, HTTP, WebSocket) passes the channel
conformance suite, ``tests/conformance/test_channels.py``, and keeps these rules:

1. A frame larger than ``max_frame`` is refused unsent (``FrameTooLargeError``),
   and a server refuses to read one (HTTP 413, WebSocket close 1009).
2. ``request`` waits at most ``timeout`` seconds, then raises
   ``TransportTimeoutError``. After a time-out the channel drops its connection
   (a late reply must never be taken for the answer to the next request) and
   connects again on the next request.
3. Nobody listening, a refused connection or a failed TLS handshake raise
   ``UnreachableError``. Errors of the libraries below (httpx, wsproto, ssl,
   OSError) never escape: they are translated once, in the transport.
4. Nothing is retried here: the caller (``RemoteStore``) decides, because only
   it knows which requests are safe to repeat. The one exception is rule 5.
5. With a :class:`~loomdb.transports.auth.TokenSource`, the channel sends its
   bearer token (HTTP: every request; WebSocket: the handshake). When the node
   refuses the token (HTTP 401, WebSocket close 4401) it has not handled the
   request, so the channel asks the source for a new token and sends the request
   once more; a second refusal raises the node's error (an ``AuthError``, or a
   ``TrustError`` such as ``RevokedError``), which is never a ``TransportError``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

import anyio

from loomdb.errors import LoomError, TransportError, TransportTimeoutError
from loomdb.transports.endpoint import check_frame_size

if TYPE_CHECKING:
    from loomdb.transports.auth import TokenSource  # which needs this module

DEFAULT_MAX_FRAME: Final = 8 * 1024 * 1024
"""Largest frame a transport carries by default (8 MiB)."""

DEFAULT_TIMEOUT: Final = 30.0

FrameHandler = Callable[[bytes], Awaitable[bytes]]
"""The server side: one request frame in, one reply frame out. It handles its own
errors (an error is a reply frame), so transports only see bytes."""


@runtime_checkable
class RequestChannel(Protocol):
    """The client side of a transport: one request frame out, its reply back."""

    @property
    def max_frame(self) -> int: ...

    async def request(self, frame: bytes, *, timeout: float = DEFAULT_TIMEOUT) -> bytes: ...

    async def aclose(self) -> None: ...


class TokenRefused(Exception):  # a signal inside a channel, never raised out of it
    """The node refused the channel's token (HTTP 401, WebSocket close 4401) and did
    not handle the request; ``error`` is what the node said, as our error class."""

    def __init__(self, error: LoomError) -> None:
        super().__init__(error.message)
        self.error = error


class SerialChannel:
    """What every channel does around one exchange: the size rule (1), one request
    at a time, the closed check, the time-out (2) and the token refresh (5).
    Subclasses supply ``_exchange``, which carries one frame and returns the reply;
    it takes the token to send from ``_bearer`` and raises :class:`TokenRefused`
    when the node refuses it."""

    def __init__(self, peer: str, max_frame: int, token_source: TokenSource | None = None) -> None:
        self._peer = peer  # how errors name the other side
        self._max_frame = max_frame
        self._token_source = token_source
        self._refresh = False  # the next _bearer asks for a new token
        self._lock = anyio.Lock()
        self._closed = False

    @property
    def max_frame(self) -> int:
        return self._max_frame

    async def request(self, frame: bytes, *, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        check_frame_size(frame, self._max_frame, "request")
        try:
            with anyio.fail_after(timeout):
                async with self._lock:
                    if self._closed:
                        raise TransportError(f"the channel to {self._peer} is closed")
                    return await self._authorized_exchange(frame)
        except TimeoutError:
            raise TransportTimeoutError(f"no reply from {self._peer} within {timeout} s") from None

    async def _authorized_exchange(self, frame: bytes) -> bytes:
        try:
            return await self._exchange(frame)
        except TokenRefused as refused:
            if self._token_source is None:
                raise refused.error from None
        self._refresh = True  # the request was not handled: once more, with a new token
        try:
            return await self._exchange(frame)
        except TokenRefused as refused:
            raise refused.error from None
        finally:
            self._refresh = False

    async def _bearer(self) -> str | None:
        """The token to send now (None without a token source)."""
        if self._token_source is None:
            return None
        refresh, self._refresh = self._refresh, False
        return await self._token_source.token(refresh=refresh)

    async def _exchange(self, frame: bytes) -> bytes:
        raise NotImplementedError


def describe(exc: BaseException) -> str:
    """The first non-empty message along the exception's causes (httpx often wraps
    an ssl or socket error in an exception with no message of its own)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if str(seen):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__
