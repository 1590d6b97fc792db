"""A replicator's lifecycle, its retry schedule, and the file that keeps them.

A replicator pushes a scope of this node's entries (a space, optionally narrowed
to collections and/or documents) to one peer. Its record is what the node shows
and keeps across restarts; the state changes only through :data:`TRANSITIONS`::

    event \\ state   inactive     backfilling   active       failing      refused
    start           backfilling  -             -            -            -
    caught_up       -            active        -            -            -
    failed          -            failing       failing      -            -
    refused         -            refused       refused      -            -
    retry           -            -             -            backfilling  backfilling
    stop            inactive     inactive      inactive     inactive     inactive

* ``backfilling``: a push reconciliation of the whole scope is running (when the
  replicator is set, after a restart, after every failure), so nothing written
  while the peer was away, or the node was down, is missed.
* ``active``: caught up; each new local entry of the scope is pushed as it lands.
* ``failing``: the last push failed (peer unreachable, stream lost); the next try,
  a reconciliation, is at ``next_retry`` (:class:`RetrySchedule`).
* ``refused``: the peer refused the entries (its directory does not let this node
  write them). Retried on the same schedule, but only as many times as it has
  intervals: then ``next_retry`` is None and it waits for a restart or a new set.
* ``inactive``: not running (the node is stopping, or it has just loaded the record).

Invariants: ``next_retry`` is set only in ``failing`` and ``refused``; ``failures``
counts the failed tries since the last success (reset on ``caught_up``); the
cursor only grows (a seq of the node's receipt log up to which every local entry
of the scope was pushed or found on the peer).

Times are Unix seconds from an injected :class:`~loomdb.clock.Clock`. Nothing
here does I/O but :class:`ReplicatorFile`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from loomdb.errors import LoomError, StoreCorruptError, ValidationError
from loomdb.files import atomic_write

REPLICATORS_FILE: Final = "replicators.json"
DEFAULT_RETRY_INTERVALS: Final = (30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0)
"""30 s, then 1, 2, 4, 8, 16, 32 minutes (and 32 minutes from then on)."""


class ReplicatorState(StrEnum):
    INACTIVE = "inactive"
    BACKFILLING = "backfilling"
    ACTIVE = "active"
    FAILING = "failing"
    REFUSED = "refused"


class ReplicatorEvent(StrEnum):
    START = "start"
    CAUGHT_UP = "caught_up"
    FAILED = "failed"
    REFUSED = "refused"
    RETRY = "retry"
    STOP = "stop"


S, E = ReplicatorState, ReplicatorEvent
TRANSITIONS: Final[dict[tuple[ReplicatorState, ReplicatorEvent], ReplicatorState]] = {
    (S.INACTIVE, E.START): S.BACKFILLING,
    (S.BACKFILLING, E.CAUGHT_UP): S.ACTIVE,
    (S.BACKFILLING, E.FAILED): S.FAILING,
    (S.ACTIVE, E.FAILED): S.FAILING,
    (S.BACKFILLING, E.REFUSED): S.REFUSED,
    (S.ACTIVE, E.REFUSED): S.REFUSED,
    (S.FAILING, E.RETRY): S.BACKFILLING,
    (S.REFUSED, E.RETRY): S.BACKFILLING,
    **{(state, E.STOP): S.INACTIVE for state in S},
}
del S, E


class TransitionError(LoomError):
    """A replicator was driven by an event its state does not take (a bug)."""

    code = "replicator.transition"


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """How long to wait after the n-th failed try in a row: ``intervals[n-1]``, the
    last one from then on. A refusal is retried ``len(intervals)`` times only."""

    intervals: tuple[float, ...] = DEFAULT_RETRY_INTERVALS

    def __post_init__(self) -> None:
        if not self.intervals or any(not (i > 0) for i in self.intervals):
            raise ValidationError("retry intervals are one or more positive numbers of seconds")

    def delay(self, failures: int) -> float:
        return self.intervals[min(max(failures, 1), len(self.intervals)) - 1]

    @classmethod
    def parse(cls, text: str) -> RetrySchedule:
        """``"1,2,5"`` (seconds) → a schedule; ``ValidationError`` if it is not one."""
        try:
            intervals = tuple(float(part) for part in text.split(","))
        except ValueError:
            raise ValidationError(
                f"bad retry intervals {text!r}: expected seconds separated by commas, e.g. 1,2,5"
            ) from None
        return cls(intervals)


@dataclass(slots=True)
class ReplicatorRecord:
    """One replicator: where it pushes, what, and how it is doing."""

    peer: str  # the target's Peer ID
    addr: str  # its multiaddr, /ip4/…/tcp/…/p2p/<peer>
    space: str
    collections: tuple[str, ...] = ()
    documents: tuple[tuple[str, str], ...] = ()
    state: ReplicatorState = ReplicatorState.INACTIVE
    cursor: int = 0
    lag: int = 0  # entries of the scope known to be waiting for a push
    failures: int = 0
    next_retry: float | None = None
    last_error: dict[str, Any] | None = None  # {code, message, at}
    pushed: int = 0  # entries the peer stored from this replicator (new to it)
    refused: int = 0  # entries the peer refused
    created_at: float = 0.0
    updated_at: float = 0.0
    last_push: float | None = None
    history: list[str] = field(default_factory=list)  # the last states, for people

    @property
    def key(self) -> tuple[str, str]:
        return self.peer, self.space

    def handle(self, event: ReplicatorEvent, now: float) -> ReplicatorState:
        """Move to the state :data:`TRANSITIONS` gives; ``TransitionError`` if none."""
        target = TRANSITIONS.get((self.state, event))
        if target is None:
            raise TransitionError(f"a replicator in state {self.state} cannot take {event}")
        self.state = target
        self.updated_at = now
        if target not in (ReplicatorState.FAILING, ReplicatorState.REFUSED):
            self.next_retry = None
        self.history = [*self.history[-7:], target.value]
        return target

    def caught_up(self, now: float) -> None:
        self.handle(ReplicatorEvent.CAUGHT_UP, now)
        self.failures = 0
        self.lag = 0

    def failed(
        self,
        event: ReplicatorEvent,
        code: str,
        message: str,
        now: float,
        schedule: RetrySchedule,
    ) -> float | None:
        """A try failed (``FAILED``) or was refused (``REFUSED``): record it and say
        how long to wait before the next try (None: no more tries, for a refusal
        that has used up the schedule)."""
        self.handle(event, now)
        self.failures += 1
        self.last_error = {"code": code, "message": message, "at": now}
        if event is ReplicatorEvent.REFUSED and self.failures > len(schedule.intervals):
            self.next_retry = None
            return None
        delay = schedule.delay(self.failures)
        self.next_retry = now + delay
        return delay

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["collections"] = list(self.collections)
        out["documents"] = [list(d) for d in self.documents]
        out["state"] = self.state.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplicatorRecord:
        return cls(
            peer=str(data["peer"]),
            addr=str(data["addr"]),
            space=str(data["space"]),
            collections=tuple(str(c) for c in data.get("collections", ())),
            documents=tuple((str(c), str(d)) for c, d in data.get("documents", ())),
            state=ReplicatorState(data.get("state", "inactive")),
            cursor=int(data.get("cursor", 0)),
            lag=int(data.get("lag", 0)),
            failures=int(data.get("failures", 0)),
            next_retry=data.get("next_retry"),
            last_error=data.get("last_error"),
            pushed=int(data.get("pushed", 0)),
            refused=int(data.get("refused", 0)),
            created_at=float(data.get("created_at", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
            last_push=data.get("last_push"),
            history=[str(h) for h in data.get("history", ())],
        )


class ReplicatorFile:
    """``<home>/replicators.json``: every replicator's record, replaced atomically
    (written beside it, flushed to disk, renamed over it), so a crash leaves the
    old file or the new one, never half of one."""

    VERSION: Final = 1

    def __init__(self, home: Path) -> None:
        self.path = home / REPLICATORS_FILE

    def load(self) -> list[ReplicatorRecord]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            data = json.loads(text)
            if data.get("version") != self.VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            return [ReplicatorRecord.from_dict(r) for r in data["replicators"]]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StoreCorruptError(f"cannot read {self.path}: {exc}") from None

    def save(self, records: Sequence[ReplicatorRecord]) -> None:
        body = {"version": self.VERSION, "replicators": [r.as_dict() for r in records]}
        atomic_write(self.path, json.dumps(body, indent=1).encode())
