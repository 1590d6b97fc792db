"""Time, injected: a wall clock protocol and the hybrid logical clock of entries.

Nothing in loomdb reads the system time directly; it is handed a :class:`Clock`.
Tests pass a :class:`ManualClock` and move it by hand.

An entry's ``created-at`` is a hybrid logical clock (HLC) value packed into
one unsigned 64-bit integer: the top 48 bits are milliseconds since the Unix
epoch, the low 16 bits a logical counter that orders events inside the same
millisecond (and carries on when the wall clock stands still or goes back).
Packed this way, HLC values sort as integers, which is the order the sync
protocol reconciles in (created-at, then entry id).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from loomdb.errors import ValidationError

LOGICAL_BITS = 16
LOGICAL_MAX = (1 << LOGICAL_BITS) - 1
MAX_HLC = (1 << 64) - 1


class Clock(Protocol):
    """A source of wall-clock time."""

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...


class SystemClock:
    """The machine's clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to (tests, simulations)."""

    def __init__(self, start_ms: int = 1_760_000_000_000) -> None:
        self._ms = start_ms

    def now_ms(self) -> int:
        return self._ms

    def advance(self, ms: int) -> None:
        self._ms += ms

    def set(self, ms: int) -> None:
        self._ms = ms


def pack_hlc(wall_ms: int, logical: int) -> int:
    if not 0 <= logical <= LOGICAL_MAX or not 0 <= wall_ms < (1 << 48):
        raise ValidationError("HLC out of range")
    return (wall_ms << LOGICAL_BITS) | logical


def unpack_hlc(value: int) -> tuple[int, int]:
    """``(wall milliseconds, logical counter)`` of a packed HLC value."""
    return value >> LOGICAL_BITS, value & LOGICAL_MAX


def hlc_to_seconds(value: int) -> float:
    """The wall-clock part of an HLC value as Unix seconds (for display)."""
    return (value >> LOGICAL_BITS) / 1000.0


class HybridLogicalClock:
    """Hands out strictly increasing HLC values; :meth:`observe` merges remote ones.

    Thread-safe: a node's writers may run in several threads.
    """

    def __init__(self, clock: Clock, max_drift_ms: int = 60_000) -> None:
        self._clock = clock
        self._max_drift_ms = max_drift_ms
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        with self._lock:
            wall = self._clock.now_ms() << LOGICAL_BITS
            self._last = wall if wall > self._last else self._last + 1
            return self._last

    def observe(self, remote: int) -> None:
        """Take a value seen from another node into account.

        A remote value further than ``max_drift_ms`` ahead of our wall clock is
        not adopted (a peer with a wrong clock must not drag every node's clock
        into the future); the entry itself is still accepted.
        """
        if not 0 <= remote <= MAX_HLC:
            return
        with self._lock:
            limit = (self._clock.now_ms() + self._max_drift_ms) << LOGICAL_BITS
            if self._last < remote <= limit:
                self._last = remote
