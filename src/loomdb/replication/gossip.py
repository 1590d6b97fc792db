"""What a node does with a gossip message: the decision, without IO.

:func:`decide` takes one received message (untrusted bytes and who published
it) and returns a :class:`Decision`: the entries to store (verified), the
documents to fetch (announced), and where the message and each entry it carried
went in the counters. The driver (:mod:`loomdb.replication.passive`) stores a
message's entries in one call through the node's guarded store and, when a
stored entry's parents are missing, fetches the document.

Invariants:

1. Every message lands in exactly one of :data:`MESSAGE_COUNTERS`; every entry
   (or announcement) a message that was read carries lands in exactly one of
   :data:`ENTRY_COUNTERS`. A version-1 message carries one.
2. Nothing unverified is stored: an entry is decoded with its CID and
   signature checked here, and checked for membership (``check``, the guarded
   store's own rule) before it is handed on; the store checks again.
3. Own messages (py-libp2p hands a publisher its own) and entries of
   documents this node does not follow are dropped, never stored.
4. Garbage never raises: any bytes end in a decision. One bad entry in a
   batch is dropped alone; a batch that does not parse is dropped whole.
5. A batch's entries keep their order (the publisher's receipt order:
   parents before children).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from loomdb.clock import LOGICAL_BITS
from loomdb.entries.entry import Entry, decode_entry
from loomdb.errors import EntryError, ProtocolError, TrustError
from loomdb.replication.message import (
    Announcement,
    GossipBatch,
    GossipEntry,
    OversizedError,
    parse_message,
)

MESSAGE_COUNTERS: Final = ("own", "oversized", "malformed", "read")
"""Where each received message goes (:func:`decide`)."""
ENTRY_COUNTERS: Final = ("unverifiable", "not_subscribed", "refused", "to_store", "announced")
"""Where each entry of a message that was read goes."""
RECEIVE_COUNTERS: Final = (*MESSAGE_COUNTERS, *ENTRY_COUNTERS)

DocumentKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Decision:
    counter: str  # the message's, one of MESSAGE_COUNTERS
    entries: tuple[Entry, ...] = ()  # to store, in the message's order
    documents: tuple[DocumentKey, ...] = ()  # to fetch (space, collection, doc)
    counts: Counter[str] = field(default_factory=Counter)  # entries, by ENTRY_COUNTERS
    reasons: tuple[str, ...] = ()  # why entries or the message were dropped
    batch: bool = False  # a version-2 batch

    @property
    def carried(self) -> int:
        """Entries (and announcements) the message carried."""
        return sum(self.counts.values())


def decide(
    data: bytes,
    *,
    from_self: bool,
    wants: Callable[[str, str, str], bool],
    check: Callable[[Entry], None],
) -> Decision:
    """The decision for one message; see the module doc."""
    if from_self:
        return Decision("own")
    try:
        message = parse_message(data)
    except OversizedError as exc:
        return Decision("oversized", reasons=(exc.message,))
    except ProtocolError as exc:
        return Decision("malformed", reasons=(exc.message,))
    counts: Counter[str] = Counter()
    if isinstance(message, Announcement):
        doc = (message.space, message.collection, message.document)
        if not wants(*doc):
            counts["not_subscribed"] += 1
            return Decision("read", counts=counts)
        counts["announced"] += 1
        return Decision("read", documents=(doc,), counts=counts)
    raws = message.raws if isinstance(message, GossipBatch) else (message.raw,)
    assert isinstance(message, GossipBatch | GossipEntry)
    entries: list[Entry] = []
    reasons: list[str] = []
    for raw in raws:
        try:
            entry = decode_entry(raw)
        except EntryError as exc:
            counts["unverifiable"] += 1
            reasons.append(f"{exc.code}: {exc.message}")
            continue
        if not wants(entry.space, entry.collection, entry.document):
            counts["not_subscribed"] += 1
            continue
        try:
            check(entry)
        except TrustError as exc:
            counts["refused"] += 1
            reasons.append(f"{exc.code}: {exc.message}")
            continue
        counts["to_store"] += 1
        entries.append(entry)
    batch = isinstance(message, GossipBatch)
    return Decision("read", tuple(entries), counts=counts, reasons=tuple(reasons), batch=batch)


class PublishWindow:
    """When the publisher sends what it has read (timers are outputs): at once
    after a quiet spell — a lone update is never delayed — and, in a burst,
    ``window`` seconds after the last send, so what lands meanwhile goes with it
    (one message instead of many, each entry delayed by at most ``window``)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._last = -math.inf

    def pause(self, now: float) -> float:
        """Seconds to wait before sending (0: send now)."""
        return max(0.0, self._last + self.window - now)

    def sent(self, now: float) -> None:
        self._last = now


class GossipCounters(Counter[str]):
    """The node's gossip counters (``p2p info``), every name present.

    Publishing: ``published`` messages carrying ``published_entries`` entries
    (so their ratio is the batching), ``publish_failed`` messages, ``unheard``
    entries no peer's topic wanted, ``not_written_here`` entries the node
    received (by sync or gossip) and does not publish. Receiving: ``received``
    messages (``batches`` of them version-2 batches) carrying
    ``received_entries``, then :data:`RECEIVE_COUNTERS` (see :func:`decide`);
    ``stored`` entries in ``store_calls`` calls to the store."""

    NAMES: Final = (
        "published",
        "published_entries",
        "publish_failed",
        "unheard",
        "not_written_here",
        "received",
        "batches",
        "received_entries",
        *RECEIVE_COUNTERS,
        "stored",
        "store_calls",
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
