"""Sync frames on a libp2p stream: how ``/loomdb/sync/1.0.0`` cuts bytes into messages.

A libp2p stream is a byte stream, and its reads return whatever has arrived
(a few bytes of a header, half a frame): messages are read with
:func:`read_exact`. Each message is::

    kind (1 byte) | length (unsigned varint, at most 9 bytes) | payload (length bytes)

==========  ===================================================================
``FRAME``   a sync frame (:mod:`loomdb.sync.wire`): requests one way, replies back.
``CLOSE``   the server ends the stream and says why: a 2-byte code then UTF-8,
            the codes of a WebSocket close (1009 too large, 1003 not a frame,
            1011 handler failed), so both transports report the same refusals.
==========  ===================================================================

The header is read first and the length checked before a byte of the payload
is: a message over the reader's limit is refused unread. Nothing here does I/O
but the ``read``/``write`` of the stream it is given.
"""

from __future__ import annotations

from typing import Final, Protocol

from loomdb.errors import TransportError

FRAME: Final = 0
CLOSE: Final = 1
KINDS: Final = frozenset({FRAME, CLOSE})

CLOSE_UNSUPPORTED: Final = 1003
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL: Final = 1011
MAX_CLOSE_PAYLOAD: Final = 125  # as a WebSocket close: 2 bytes of code, 123 of reason
MAX_VARINT_BYTES: Final = 9  # 63 bits: far above any frame limit


class ByteStream(Protocol):
    """What a libp2p ``INetStream`` offers and this module needs."""

    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


class BufferedReader:
    """A stream's reads through a buffer: one ``read`` of the stream fetches what has
    arrived (up to ``chunk`` bytes), and headers and frames are served from it, so a
    small message costs one read of the stream, not one per header byte (each read
    of a libp2p stream goes through Yamux's locks). One reader per stream: the
    buffer holds the stream's next bytes."""

    def __init__(self, stream: ByteStream, chunk: int = 64 * 1024) -> None:
        self.stream = stream
        self.chunk = chunk
        self._buffer = bytearray()

    async def read(self, n: int | None = None) -> bytes:
        if self._buffer:
            size = len(self._buffer) if n is None else min(n, len(self._buffer))
            out = bytes(self._buffer[:size])
            del self._buffer[:size]
            return out
        if n is not None and n >= self.chunk:
            return await self.stream.read(n)  # a large read needs no buffer
        data = await self.stream.read(self.chunk)
        if n is None or len(data) <= n:
            return data
        self._buffer += data[n:]
        return data[:n]

    async def write(self, data: bytes) -> None:
        await self.stream.write(data)


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("a varint is not negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_message(kind: int, payload: bytes) -> bytes:
    """One message: kind, length, payload."""
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind}")
    return bytes([kind]) + encode_varint(len(payload)) + payload


def encode_close(code: int, reason: str) -> bytes:
    """A ``CLOSE`` message; the reason is cut to fit."""
    raw = reason.encode("utf-8")[: MAX_CLOSE_PAYLOAD - 2].decode("utf-8", "ignore").encode()
    return encode_message(CLOSE, code.to_bytes(2, "big") + raw)


def decode_close(payload: bytes) -> tuple[int, str]:
    if len(payload) < 2 or len(payload) > MAX_CLOSE_PAYLOAD:
        raise TransportError("a close message is a 2-byte code and at most 123 bytes of reason")
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")


async def read_exact(stream: ByteStream, n: int) -> bytes:
    """Exactly ``n`` bytes, however the stream cuts them; ``TransportError`` if it
    ends first. (libp2p streams signal their end with ``b""`` or an ``EOFError``.)"""
    if n == 0:
        return b""
    chunks: list[bytes] = []
    left = n
    while left:
        try:
            chunk = await stream.read(left)
        except EOFError:
            chunk = b""
        if not chunk:
            raise TransportError(f"the stream ended {n - left} bytes into {n}")
        if len(chunk) > left:  # a stream that returns more than asked: keep exactness
            raise TransportError("the stream returned more bytes than asked for")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


async def read_header(stream: ByteStream) -> tuple[int, int] | None:
    """``(kind, length)`` of the next message, or None when the stream ended cleanly
    (before a message). A bad kind or length is a ``TransportError``."""
    try:
        first = await stream.read(1)
    except EOFError:
        return None
    if not first:
        return None
    kind = first[0]
    if kind not in KINDS:
        raise TransportError(f"unknown message kind {kind} on a sync stream")
    length = 0
    for i in range(MAX_VARINT_BYTES):
        byte = (await read_exact(stream, 1))[0]
        length |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise TransportError("a length is encoded in its fewest bytes")
            return kind, length
    raise TransportError(f"a length takes at most {MAX_VARINT_BYTES} bytes")
