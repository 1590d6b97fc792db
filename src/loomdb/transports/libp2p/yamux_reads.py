"""Yamux reads on an open stream without the connection-wide lock and log lines.

py-libp2p 0.8.1's ``Yamux.read_stream`` takes the connection's ``streams_lock``
and builds three or four debug f-strings (the peer id, the stream's flags and
buffer size) on every call, logged or not, and again after each wait for data;
``Yamux._read_data_body`` opens a ``trio.fail_after`` scope for every DATA frame's
body, although a frame's body nearly always came in the same Noise message as
its header and already waits in the session's buffer. Per gossip message that
is a lock round trip, a cancel scope and half a dozen formatted strings.

:func:`read_open_streams_directly` adds a fast path to each and leaves every
other case to py-libp2p's own code:

* ``read_stream``: while the stream is open (known, not closed or reset, its
  buffer present, the connection not shutting down) buffered bytes are taken at
  once and, when there are none, the stream's data event is awaited — the same
  steps py-libp2p takes, minus the lock (the checks and the take are synchronous,
  so under trio nothing can run between them) and the strings. Any other state
  goes to py-libp2p's method, which raises what it raises.
* ``_read_data_body``: when the secure session already holds the body, it is
  taken from there (no I/O, so nothing to time out); otherwise py-libp2p reads
  it under its timeout.
"""

from __future__ import annotations

from typing import Any

from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.yamux.yamux import Yamux

_original_read_stream = Yamux.read_stream
_original_read_body = Yamux._read_data_body


async def _read_stream(self: Any, stream_id: int, n: int = -1) -> bytes:
    if n is None:
        n = -1
    while True:
        stream = self.streams.get(stream_id)
        buffer = self.stream_buffers.get(stream_id)
        event = self.stream_events.get(stream_id)
        if (
            stream is None
            or buffer is None
            or event is None
            or stream.recv_closed
            or stream.reset_received
            or stream.closed
            or self.event_shutting_down.is_set()
        ):
            data: bytes = await _original_read_stream(self, stream_id, n)
            return data
        if buffer:
            if n == -1 or n >= len(buffer):
                data = bytes(buffer)
                buffer.clear()
            else:
                data = bytes(buffer[:n])
                del buffer[:n]
            return data
        await event.wait()
        if self.stream_events.get(stream_id) is event:
            self.stream_events[stream_id] = type(event)()


async def _read_data_body(self: Any, length: int) -> bytes:
    conn = self.secured_conn
    if isinstance(conn, SecureSession) and conn.high_watermark - conn.low_watermark >= length:
        return conn._drain(length)
    body: bytes = await _original_read_body(self, length)
    return body


def read_open_streams_directly() -> None:
    """Patch :class:`Yamux` (idempotent; see the module doc)."""
    Yamux.read_stream = _read_stream  # type: ignore[method-assign]
    Yamux._read_data_body = _read_data_body  # type: ignore[method-assign]


def read_streams_under_lock() -> None:
    """py-libp2p's methods back (for measuring the difference)."""
    Yamux.read_stream = _original_read_stream  # type: ignore[method-assign]
    Yamux._read_data_body = _original_read_body  # type: ignore[method-assign]
