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
   it knows which requests are safe to repeat.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, Protocol, runtime_checkable

import anyio

from loomdb.errors import TransportError, TransportTimeoutError
from loomdb.transports.endpoint import check_frame_size

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


class SerialChannel:
    """What every channel does around one exchange: the size rule (1), one request
    at a time, the closed check and the time-out (2). Subclasses supply
    ``_exchange``, which carries one frame and returns the reply."""

    def __init__(self, peer: str, max_frame: int) -> None:
        self._peer = peer  # how errors name the other side
        self._max_frame = max_frame
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
                    return await self._exchange(frame)
        except TimeoutError:
            raise TransportTimeoutError(f"no reply from {self._peer} within {timeout} s") from None

    async def _exchange(self, frame: bytes) -> bytes:
        raise NotImplementedError
