"""What a node does with a gossip message: the decision, without IO.

:func:`decide` takes one received message (untrusted bytes and who published
it) and returns a :class:`Decision`: drop it (with the counter it goes to),
store the verified entry it carries, or fetch the document it announces. The
driver (:mod:`loomdb.replication.passive`) stores through the node's guarded
store and, when a stored entry's parents are missing, fetches the document.

Invariants:

1. Every message lands in exactly one counter of :data:`RECEIVE_COUNTERS`.
2. Nothing unverified is stored: an entry is decoded with its CID and
   signature checked here, and checked for membership (``check``, the guarded
   store's own rule) before it is handed on; the store checks again.
3. Own messages (py-libp2p hands a publisher its own) and messages of
   documents this node does not follow are dropped, never stored.
4. Garbage never raises: any bytes end in a decision.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from loomdb.clock import LOGICAL_BITS
from loomdb.entries.entry import Entry, decode_entry
from loomdb.errors import EntryError, ProtocolError, TrustError
from loomdb.replication.message import Announcement, OversizedError, parse_message

RECEIVE_COUNTERS: Final = (
    "own",
    "oversized",
    "malformed",
    "unverifiable",
    "not_subscribed",
    "refused",
    "to_store",
    "announced",
)
"""Where each received message goes (:func:`decide`)."""


class Verdict(enum.Enum):
    DROP = "drop"
    STORE = "store"
    FETCH = "fetch"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    counter: str
    entry: Entry | None = None
    document: tuple[str, str, str] | None = None  # what to fetch (space, collection, doc)
    reason: str = ""


def decide(
    data: bytes,
    *,
    from_self: bool,
    wants: Callable[[str, str, str], bool],
    check: Callable[[Entry], None],
) -> Decision:
    """The decision for one message; see the module doc."""
    if from_self:
        return Decision(Verdict.DROP, "own")
    try:
        message = parse_message(data)
    except OversizedError as exc:
        return Decision(Verdict.DROP, "oversized", reason=exc.message)
    except ProtocolError as exc:
        return Decision(Verdict.DROP, "malformed", reason=exc.message)
    if isinstance(message, Announcement):
        doc = (message.space, message.collection, message.document)
        if not wants(*doc):
            return Decision(Verdict.DROP, "not_subscribed")
        return Decision(Verdict.FETCH, "announced", document=doc)
    try:
        entry = decode_entry(message.raw)
    except EntryError as exc:
        return Decision(Verdict.DROP, "unverifiable", reason=f"{exc.code}: {exc.message}")
    if not wants(entry.space, entry.collection, entry.document):
        return Decision(Verdict.DROP, "not_subscribed")
    try:
        check(entry)
    except TrustError as exc:
        return Decision(Verdict.DROP, "refused", reason=f"{exc.code}: {exc.message}")
    return Decision(Verdict.STORE, "to_store", entry=entry)


class GossipCounters(Counter[str]):
    """The node's gossip counters (``p2p info``), every name present."""

    NAMES: Final = (
        "published",
        "publish_failed",
        "unheard",
        "received",
        *RECEIVE_COUNTERS,
        "stored",
        "duplicate",
        "store_refused",
        "inbox_full",
        "missing_parents",
        "fetches",
        "fetched",
        "fetch_failed",
        "fetch_dropped",
    )

    def as_dict(self) -> dict[str, int]:
        return {name: self.get(name, 0) for name in self.NAMES}


class Delays:
    """How long gossiped entries took from their author's clock to this node's store
    (ms; the entry's HLC wall time against the node's clock, so only meaningful
    between clocks in step): the last ``keep`` samples."""

    def __init__(self, keep: int = 10_000) -> None:
        self._samples: deque[int] = deque(maxlen=keep)

    def add(self, created_at: int, now_ms: int) -> None:
        self._samples.append(max(0, now_ms - (created_at >> LOGICAL_BITS)))

    def summary(self) -> dict[str, float | int | None]:
        ordered = sorted(self._samples)
        if not ordered:
            return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}

        def at(q: float) -> int:
            return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

        return {"count": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": ordered[-1]}
