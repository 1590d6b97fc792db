"""Head exchange: on every new connection, and every N seconds (anti-entropy),
reconcile what this node follows with each connected peer.

Gossip is best effort; this repairs every gap. Each node **pulls** its own
subscriptions' scope from each peer (Negentropy over ``/loomdb/sync``, on the
host's one stream to that peer): the peer runs the same on its side, so each
connection reconciles both ways — each side gets exactly what *it* follows, and
a node is never sent documents it did not subscribe to. Equal sets cost one
round trip per scope (space); divergent offline edits on both sides are
exchanged on connect and the CRDT merge converges them.

:class:`HeadSchedule` is the decision, without IO or clock: it is told which
peers are connected at ``now`` and which exchanges finished, and answers which
peers are due and when to look again (timers are outputs, never sleeps).

Invariants:

1. A peer newly connected is due at once (``on_peers``), whatever its last run.
2. One exchange per peer at a time; a finished one is due again ``interval``
   seconds after it finished.
3. A peer that went away is forgotten (due at once when it comes back).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

DEFAULT_INTERVAL: Final = 30.0
POLL_SECONDS: Final = 0.5  # how often the driver looks at the host's connections


@dataclass
class HeadSchedule:
    interval: float = DEFAULT_INTERVAL
    _due: dict[str, float] = field(default_factory=dict)  # peer -> when next due
    _running: set[str] = field(default_factory=set)

    def on_peers(self, connected: Iterable[str], now: float) -> None:
        """The peers connected at ``now``: new ones are due now, gone ones forgotten."""
        current = set(connected)
        for peer in current - set(self._due):
            self._due[peer] = now
        for peer in set(self._due) - current:
            del self._due[peer]

    def due(self, now: float) -> list[str]:
        """Peers to exchange with now (marked running: call :meth:`finished`)."""
        ready = sorted(p for p, t in self._due.items() if t <= now and p not in self._running)
        self._running.update(ready)
        return ready

    def finished(self, peer: str, now: float) -> None:
        self._running.discard(peer)
        if peer in self._due:
            self._due[peer] = now + self.interval

    def next_wakeup(self, now: float) -> float:
        """Seconds until something may be due (inf: nothing known)."""
        waiting = [t for p, t in self._due.items() if p not in self._running]
        return max(0.0, min(waiting) - now) if waiting else math.inf

    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._running)
