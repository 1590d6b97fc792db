"""``Libp2pChannel``: a :class:`~loomdb.transports.base.RequestChannel` over one
long-lived ``/loomdb/sync/1.0.0`` stream to a peer.

Opening a stream costs ~13 ms (multistream negotiation) against ~2 ms for a
round trip on an open one, so the channel opens its stream on the first request
and keeps it for every later one. A time-out, a cancellation or any error
resets it (a late reply must never answer the next request) and the next
request opens a new one, on the same connection if it is still up.

The peer is named by a multiaddr ending in ``/p2p/<Peer ID>`` (or by a Peer ID
the host already knows addresses of); Noise checks that whoever answers holds
that Peer ID's key, so the channel talks to that node and no other.

The node refuses a request over its limit with a ``CLOSE`` message (code 1009,
as a WebSocket), read here as ``FrameTooLargeError``; a reply over the
channel's own limit is refused unread, the same way.
"""

from __future__ import annotations

from typing import Final, Protocol

import anyio

from loomdb.errors import FrameTooLargeError, TransportError
from loomdb.transports.base import DEFAULT_MAX_FRAME, SerialChannel, describe
from loomdb.transports.libp2p.framing import (
    CLOSE,
    CLOSE_TOO_BIG,
    FRAME,
    MAX_CLOSE_PAYLOAD,
    BufferedReader,
    decode_close,
    encode_message,
    read_exact,
    read_header,
)
from loomdb.transports.libp2p.stream import STREAM_ERRORS, SyncStream, end_stream, write_all

DEFAULT_CONNECT_TIMEOUT: Final = 10.0
_LATE_CLOSE: Final = 1.0  # after a failed write, how long a CLOSE saying why may take


class StreamOpener(Protocol):
    """Opens sync streams to peers (the node's :class:`~loomdb.transports.libp2p.host.P2PHost`)."""

    async def open_sync_stream(self, target: str, timeout: float) -> SyncStream:
        """A new stream to ``target`` (multiaddr or Peer ID), dialling it if need be;
        ``UnreachableError`` when that fails within ``timeout``."""
        ...


class Libp2pChannel(SerialChannel):
    """Sync frames to ``target`` over streams that ``opener`` opens."""

    def __init__(
        self,
        opener: StreamOpener,
        target: str,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        super().__init__(target, max_frame)
        self.target = target
        self._opener = opener
        self._connect_timeout = connect_timeout
        self._stream: SyncStream | None = None
        self._reader: BufferedReader | None = None  # the stream's, through a buffer
        self.streams_opened = 0  # for tests and the bench: the stream is reused

    @property
    def connected(self) -> bool:
        """Whether a stream is open (for tests: a time-out must drop it)."""
        return self._stream is not None

    async def _exchange(self, frame: bytes) -> bytes:
        try:
            if self._stream is None:
                self._stream = await self._opener.open_sync_stream(
                    self.target, self._connect_timeout
                )
                self._reader = BufferedReader(self._stream)
                self.streams_opened += 1
            assert self._reader is not None
            return await self._round_trip(self._stream, self._reader, frame)
        except BaseException:
            # Time-out, cancellation or error: a reply may still come on this
            # stream, so it is never reused.
            await self._drop()
            raise

    async def _round_trip(self, stream: SyncStream, reader: BufferedReader, frame: bytes) -> bytes:
        try:
            await write_all(stream, encode_message(FRAME, frame))
        except STREAM_ERRORS as exc:
            # The node may have refused the request and reset the stream: say why if it did.
            with anyio.move_on_after(_LATE_CLOSE):
                await self._read_reply(reader)
            raise TransportError(
                f"the stream to {self.target} failed while sending: {describe(exc)}"
            ) from None
        return await self._read_reply(reader)

    async def _read_reply(self, stream: BufferedReader) -> bytes:
        try:
            header = await read_header(stream)
            if header is None:
                raise TransportError(f"{self.target} closed the sync stream")
            kind, length = header
            if kind == CLOSE:
                if length > MAX_CLOSE_PAYLOAD:
                    raise TransportError(f"{self.target} sent a malformed close")
                raise _refusal(self.target, *decode_close(await read_exact(stream, length)))
            if length > self.max_frame:
                raise FrameTooLargeError(
                    f"the reply from {self.target} is {length} bytes, over the limit of "
                    f"{self.max_frame} bytes"
                )
            assert kind == FRAME
            return await read_exact(stream, length)
        except STREAM_ERRORS as exc:
            raise TransportError(f"the stream to {self.target} failed: {describe(exc)}") from None

    async def _drop(self) -> None:
        stream, self._stream, self._reader = self._stream, None, None
        if stream is not None:
            await end_stream(stream, reset=True)

    async def aclose(self) -> None:
        self._closed = True
        stream, self._stream, self._reader = self._stream, None, None
        if stream is not None:
            await end_stream(stream, reset=False)


def _refusal(target: str, code: int, reason: str) -> TransportError:
    detail = f" ({reason})" if reason else ""
    if code == CLOSE_TOO_BIG:
        return FrameTooLargeError(f"{target} refused the request as too large{detail}")
    return TransportError(f"{target} closed the sync stream: code {code}{detail}")
