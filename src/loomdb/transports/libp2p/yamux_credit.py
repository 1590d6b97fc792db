"""Yamux receive credit as go-yamux gives it: once half the window is consumed.

py-libp2p 0.8.1's ``YamuxStream`` sends a WINDOW_UPDATE frame after nearly
every read (its "partial slack" branch fires whenever any credit is owed, and
``PY_YAMUX_RELEASE_ON_READ`` only decides the remaining case). A gossipsub or
sync frame is read as a varint a byte at a time and then its body, so each
small message made the reader send several window updates — each one a Noise
frame, a socket write, and on the other side a read, a decryption and a parse:
measured, ~15 update frames per gossip message on the receiver, as many frames
as the messages themselves several times over.

:func:`credit_at_half_window` replaces that method, process-wide, by go-yamux's
rule (``sendWindowUpdate`` with its ``GrowTo`` hysteresis): credit is returned
when what the reader consumed reaches half the target window, together with the
window auto-tuning py-libp2p already does. A sender is never stalled by it: it
blocks only once the whole window is in flight, by then the reader has either
consumed half of it (and the update goes) or holds it unread (backpressure,
as before).

Most reads owe less than that: then the answer is known without the window lock
(nothing else holds it, so nothing is half-updated) and the lock round trip — a
trio checkpoint each way, on every read — is skipped.
"""

from __future__ import annotations

from typing import Any

from libp2p.stream_muxer.yamux.yamux import YamuxStream

_original = YamuxStream._auto_tune_and_send_window_update


async def _credit_at_half(self: Any, *, bytes_read: int = 0) -> None:
    if not self.window_lock.locked():
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        owed = self.target_recv_window - (self.recv_window + buffered)
        if owed <= 0 or owed < self._grow_threshold():
            return
    total = 0
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        owed = self.target_recv_window - (self.recv_window + buffered)
        if owed > 0 and owed >= self._grow_threshold():
            total = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
    if total > 0:
        await self.send_window_update(total, skip_lock=True)


def credit_at_half_window() -> None:
    """Patch :class:`YamuxStream` (idempotent; see the module doc)."""
    YamuxStream._auto_tune_and_send_window_update = _credit_at_half  # type: ignore[method-assign]


def credit_on_every_read() -> None:
    """py-libp2p's own behaviour back (for measuring the difference)."""
    YamuxStream._auto_tune_and_send_window_update = _original  # type: ignore[method-assign]
