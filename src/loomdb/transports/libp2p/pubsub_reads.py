"""Gossipsub RPCs read out of a buffer, not a byte at a time.

py-libp2p 0.8.1's ``Pubsub.continuously_read_stream`` reads each RPC with
``read_varint_prefixed_bytes_limited``: the varint length by ``stream.read(1)``
calls, one per byte, then the body with ``read_exactly``. Each read goes down
through ``NetStream.read`` (its state lock), ``YamuxStream.read`` and
``Yamux.read_stream`` (the streams lock, and debug f-strings built whether they
are logged or not) and the window-credit check (the window lock): two or three
such trips per message, each several trio checkpoints — measured, the largest
single part of a subscriber's receive path.

:func:`buffer_pubsub_reads` gives that loop :func:`read_rpc` instead, which keeps
what a read returned beyond the RPC it needs: one ``stream.read`` of up to
:data:`CHUNK` bytes holds the prefix and the body, and often the next RPCs too.
py-libp2p's limits are kept: a length above ``max_length`` is refused before its
body is waited for (``MessageTooLarge``), a varint of more than 10 bytes is a
``ParseError``, a stream that ends inside an RPC an ``IncompleteReadError``.
Flow control is unchanged in effect: the bytes held here are at most one RPC and
one chunk, and they are read only when the RPC being assembled needs them.

Only pubsub's reads change: the name is replaced in ``libp2p.pubsub.pubsub``,
not in ``libp2p.utils.varint`` (the DHT, relay and others keep theirs). Pubsub
reads each inbound stream from one task, so one buffer per stream is enough.
"""

from __future__ import annotations

import weakref
from typing import Final

from libp2p.exceptions import ParseError
from libp2p.io.abc import Reader
from libp2p.io.exceptions import IncompleteReadError, MessageTooLarge
from libp2p.pubsub import pubsub as _pubsub_module
from libp2p.utils.varint import decode_uvarint

CHUNK: Final = 64 * 1024
"""Bytes asked of the stream per read (Yamux hands over what it holds, up to this)."""
MAX_VARINT: Final = 10
"""A 64-bit varint's longest encoding (py-libp2p reads at most this many bytes)."""

_buffers: weakref.WeakKeyDictionary[Reader, bytearray] = weakref.WeakKeyDictionary()
_original = _pubsub_module.read_varint_prefixed_bytes_limited  # type: ignore[attr-defined]


def _prefix(buf: bytearray) -> tuple[int, int] | None:
    """(length, prefix size) of the varint at the start of ``buf``, or None while
    it is incomplete."""
    for i in range(min(len(buf), MAX_VARINT)):
        if not buf[i] & 0x80:
            return decode_uvarint(bytes(buf[: i + 1])), i + 1
    if len(buf) >= MAX_VARINT:
        raise ParseError("Varint decoding error: integer exceeds maximum size of 64 bits")
    return None


async def _more(reader: Reader, buf: bytearray, want: int) -> int:
    """Append one read (at least ``want`` bytes asked) to ``buf``; its size."""
    chunk = await reader.read(max(CHUNK, want))
    buf += chunk
    return len(chunk)


async def read_rpc(reader: Reader, max_length: int) -> bytes:
    """One varint-prefixed RPC from ``reader``, whatever the reads' boundaries."""
    if max_length <= 0:
        raise ValueError("max_length must be greater than 0")
    buf = _buffers.get(reader)
    if buf is None:
        buf = _buffers[reader] = bytearray()
    while (prefix := _prefix(buf)) is None:
        if not await _more(reader, buf, 1):
            raise IncompleteReadError(
                "Stream ended while reading varint length prefix",
                expected_bytes=1,
                received_bytes=0,
            )
    length, size = prefix
    if length > max_length:
        raise MessageTooLarge(f"Message length {length} exceeds maximum allowed {max_length}")
    end = size + length
    while len(buf) < end:
        if not await _more(reader, buf, end - len(buf)):
            raise IncompleteReadError(
                f"Connection closed during read operation: expected {length} bytes but "
                f"received {len(buf) - size} bytes",
                expected_bytes=length,
                received_bytes=len(buf) - size,
            )
    data = bytes(buf[size:end])
    del buf[:end]
    return data


def buffer_pubsub_reads() -> None:
    """Make pubsub read RPCs with :func:`read_rpc` (idempotent; see the module doc)."""
    _pubsub_module.read_varint_prefixed_bytes_limited = read_rpc  # type: ignore[attr-defined]


def byte_at_a_time_reads() -> None:
    """py-libp2p's reader back (for measuring; a buffered stream's bytes stay unread)."""
    _pubsub_module.read_varint_prefixed_bytes_limited = _original  # type: ignore[attr-defined]
