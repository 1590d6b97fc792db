"""``PassiveReplication``: the driver of gossip and head exchange on the node's host.

It runs beside the node's libp2p host (trio) and does the IO around the
decisions of :mod:`~loomdb.replication.gossip`,
:mod:`~loomdb.replication.fetches` and :mod:`~loomdb.replication.heads`:

* **publish**: a follower of the node's receipt log (an
  :class:`~loomdb.replication.feed.EntryFeed` cursor, from the head at start:
  gossip is best effort and head exchange repairs the rest) announces each
  entry this node wrote itself (not what it received, even from its user's
  other devices: gossipsub forwards those by itself) on its document's and its
  collection's topic, sent only to topics some peer has joined. Entries stored
  together (one write of many documents), or landing within
  :data:`PUBLISH_WINDOW` of the last publish, go out together: one message per
  topic set, batched to the size limit (:func:`~loomdb.replication.message.pack`);
  an entry after a quiet spell goes at once;
* **topics**: joins the collection topic of every collection it follows (and of
  every followed document's collection), leaves those it no longer needs;
* **receive**: one task per topic decides each message and hands its verified
  entries to one **store** task, which stores them through the node's guarded
  store (``NodeDatabases.put_entries``: membership checked, documents applied
  in causal order) — a message's entries always in one call, several messages
  waiting together in one call up to :data:`STORE_BATCH` entries;
* **fetch**: documents whose entries arrived without their parents (or were
  announced by CID) are pulled in the background, first from the publisher,
  then from the topic's other peers, then from any connected peer; bounded
  (:class:`FetchQueue`), never blocking the receive loop;
* **head exchange**: on each new connection and every ``anti_entropy`` seconds,
  pulls what it follows from each peer (:class:`HeadSchedule`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio
from libp2p.peer.id import ID

from loomdb.clock import Clock, SystemClock
from loomdb.documents.database import DEFAULT_SPACE
from loomdb.entries.entry import Entry
from loomdb.errors import LoomError
from loomdb.replication.feed import EntryFeed
from loomdb.replication.fetches import FetchQueue
from loomdb.replication.gossip import Delays, GossipCounters, PublishWindow, decide
from loomdb.replication.heads import DEFAULT_INTERVAL, POLL_SECONDS, HeadSchedule
from loomdb.replication.message import pack
from loomdb.replication.providers import Providers
from loomdb.replication.subscriptions import Subscriptions, parse_document_name
from loomdb.replication.topics import topics_of
from loomdb.stores.base import PutStatus
from loomdb.stores.remote import RemoteStore
from loomdb.sync.replicate import SyncScope, pull_changes_from
from loomdb.transports.libp2p import P2PHost

log = logging.getLogger("loomdb.gossip")

INBOX_SIZE: Final = 10_000  # verified entries waiting to be stored
STORE_BATCH: Final = 2000  # entries of several waiting messages stored in one call
FETCH_WORKERS: Final = 2
FETCH_TIMEOUT: Final = 30.0
EXCHANGE_TIMEOUT: Final = 60.0
PUBLISH_BATCH: Final = 2000  # receipt-log rows read (and published) at a time
PUBLISH_WINDOW: Final = 0.005
"""Seconds after a publish during which new entries wait to go together."""


class PassiveReplication:
    """See the module doc. ``local`` is the node's store (its databases, or a
    relay's guarded store); ``check`` the guard's membership rule."""

    def __init__(
        self,
        host: P2PHost,
        local: Any,
        feed: EntryFeed,
        subscriptions: Subscriptions,
        check: Callable[[Entry], None],
        *,
        anti_entropy: float = DEFAULT_INTERVAL,
        default_space: str = DEFAULT_SPACE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = trio.sleep,
        wall: Clock | None = None,
        providers: Providers | None = None,
    ) -> None:
        """``clock`` and ``sleep`` pace head exchange; ``wall`` (the system clock by
        default) dates arrivals, for :class:`Delays`."""
        self.host = host
        self.local = local
        self.feed = feed
        self.subscriptions = subscriptions
        self.check = check
        self.default_space = default_space  # of the API's names without a space
        self.counters = GossipCounters()
        self.delays = Delays()
        self._wall = wall or SystemClock()
        self.heads: Counter[str] = Counter()
        self.schedule = HeadSchedule(anti_entropy)
        self.fetches = FetchQueue()
        self._clock = clock
        self._sleep = sleep
        self._topics: dict[str, trio.CancelScope] = {}
        self._topics_changed = trio.Event()
        self._fetch_ready = trio.Event()
        # One item per received message: its entries, publisher and topic.
        self._inbox_send, self._inbox = trio.open_memory_channel[_Inbound](math.inf)
        self._inbox_entries = 0  # entries waiting in the inbox, at most INBOX_SIZE
        self.providers = providers  # the DHT's, for history no peer at hand has

    # --- what the API calls -------------------------------------------------------------

    def subscriptions_changed(self) -> None:
        self._topics_changed.set()
        if self.providers is not None:
            self.providers.changed()

    def info(self) -> dict[str, Any]:
        subs = self.subscriptions
        return {
            "subscriptions": {
                "collections": len(subs.collections),
                "documents": len(subs.documents),
            },
            "topics": sorted(self._topics),
            "gossip": self.counters.as_dict(),
            "gossip_delay": self.delays.summary(),
            "fetch_queue": len(self.fetches),
            "head_exchange": {
                "interval_seconds": self.schedule.interval,
                "running": len(self.schedule.running),
                **{
                    k: self.heads.get(k, 0)
                    for k in ("exchanges", "runs", "rounds", "pulled", "failed")
                },
            },
        }

    async def sync_documents(self, space: str, names: Sequence[object]) -> list[dict[str, Any]]:
        """Pull the named documents (``COLLECTION/DOCUMENT``) from every connected peer."""
        documents = tuple(dict.fromkeys(parse_document_name(n) for n in names))
        scope = SyncScope(space, documents=documents)
        out = []
        for peer in self._connected():
            try:
                with trio.fail_after(EXCHANGE_TIMEOUT):
                    report = await self._pull(peer, scope, dial=False)
                out.append({"peer_id": peer, "pulled": report.pulled, "rounds": report.rounds})
            except (LoomError, trio.TooSlowError) as exc:
                message = getattr(exc, "message", "timed out")
                out.append({"peer_id": peer, "error": {"code": _code(exc), "message": message}})
            except Exception as exc:  # py-libp2p's own, not translated below us
                log.exception("pulling %s from %s", documents, peer)
                error = {"code": "transport", "message": f"{type(exc).__name__}: {exc}"}
                out.append({"peer_id": peer, "error": error})
        if self.providers is not None:  # what no connected peer had: ask the DHT
            out += await self.providers.sync_missing(scope, self._pull, {p["peer_id"] for p in out})
        return out

    # --- running -----------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_loop)
            nursery.start_soon(self._topics_loop, nursery)
            nursery.start_soon(self._store_loop)
            nursery.start_soon(self._fetch_loop, nursery)
            nursery.start_soon(self._heads_loop, nursery)

    def _connected(self) -> list[str]:
        return sorted(p.to_base58() for p in self.host.host.get_network().connections)

    async def _pull(self, peer: str, scope: SyncScope, *, dial: bool = True) -> Any:
        """Pull ``scope`` from ``peer``; ``dial=False`` for work done with connected
        peers: a peer that went meanwhile is not dialled back."""
        remote = RemoteStore(self.host.peer_channel(peer, dial=dial), retries=1)
        async with remote:
            return await pull_changes_from(self.local, remote, scope)

    # --- publishing ----------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        cursor = self.feed.latest
        window = PublishWindow(PUBLISH_WINDOW)
        while True:
            if self.feed.latest <= cursor:
                await self.feed.wait(cursor)
                continue
            # In a burst (a publish just went), what lands within the window joins
            # this one; after a quiet spell an entry goes at once.
            pause = window.pause(time.monotonic())
            if pause > 0:
                await trio.sleep(pause)
            cursor, mine, skipped = await self._written_after(cursor)
            self.counters["not_written_here"] += skipped
            if mine and await self._publish(mine):
                window.sent(time.monotonic())

    async def _written_after(self, cursor: int) -> tuple[int, list[Entry], int]:
        """The entries written here past ``cursor`` (at most :data:`PUBLISH_BATCH`):
        the new cursor, them, and how many received entries were passed over.
        From the feed's memory when it holds them all, else from the log."""
        latest = self.feed.latest
        recent = self.feed.written_after(cursor, PUBLISH_BATCH)
        if recent is not None:
            upto = recent[-1][0] if len(recent) == PUBLISH_BATCH else max(latest, cursor)
            # the log's seqs are consecutive (both stores): the rest were received
            return upto, [e for _, e in recent], max(0, upto - cursor - len(recent))
        rows = await self.feed.read(cursor, PUBLISH_BATCH)
        if not rows:  # told of more than the log shows: never loop on it
            return max(latest, cursor), [], 0
        mine = [r.entry for r in rows if self.feed.written_here(r)]
        return rows[-1].seq, mine, len(rows) - len(mine)

    async def _publish(self, entries: Sequence[Entry]) -> bool:
        """Publish ``entries`` (in receipt order) in as few messages as fit; whether
        any went out."""
        pubsub = self.host.pubsub
        if pubsub is None:
            return False
        groups: dict[tuple[str, ...], list[Entry]] = {}
        for entry in entries:
            heard = tuple(
                t
                for t in topics_of(entry.space, entry.collection, entry.document)
                if pubsub.peer_topics.get(t)
            )
            if heard:
                groups.setdefault(heard, []).append(entry)
            else:
                self.counters["unheard"] += 1  # no peer joined either topic
        sent = False
        for topics, group in groups.items():
            for data, carried in pack(group):
                try:
                    await pubsub.publish(list(topics), data)
                except Exception as exc:  # py-libp2p raises its own types, none documented
                    self.counters["publish_failed"] += 1
                    log.debug("publishing %d entries: %s", carried, exc)
                    continue
                self.counters["published"] += 1
                self.counters["published_entries"] += carried
                sent = True
        return sent

    # --- topics and receiving --------------------------------------------------------

    async def _topics_loop(self, nursery: trio.Nursery) -> None:
        while True:
            self._topics_changed = trio.Event()
            await self._sync_topics(nursery)
            await self._topics_changed.wait()

    async def _sync_topics(self, nursery: trio.Nursery) -> None:
        pubsub = self.host.pubsub
        if pubsub is None:
            return
        wanted = self.subscriptions.topics()
        for topic in [t for t in self._topics if t not in wanted]:
            self._topics.pop(topic).cancel()
            try:
                await pubsub.unsubscribe(topic)
            except Exception:  # py-libp2p's announce to peers; never fatal here
                log.exception("leaving a gossip topic")
        for topic in [t for t in wanted if t not in self._topics]:
            try:
                subscription = await pubsub.subscribe(topic)
            except Exception:
                log.exception("joining a gossip topic (tried again at the next change)")
                continue
            scope = self._topics[topic] = trio.CancelScope()
            nursery.start_soon(self._receive_loop, topic, subscription, scope)

    async def _receive_loop(self, topic: str, subscription: Any, scope: trio.CancelScope) -> None:
        my_id = self.host.host.get_id().to_bytes()
        with scope:
            while True:
                try:
                    message = await subscription.get()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return  # unsubscribed
                self._receive(topic, message, my_id)

    def _receive(self, topic: str, message: Any, my_id: bytes) -> None:
        self.counters["received"] += 1
        decision = decide(
            bytes(message.data),
            from_self=bytes(message.from_id) == my_id,
            wants=self.subscriptions.wants,
            check=self.check,
        )
        self.counters[decision.counter] += 1
        self.counters["batches"] += decision.batch
        self.counters["received_entries"] += decision.carried
        self.counters.update(decision.counts)
        for reason in decision.reasons:
            log.info("gossip dropped (%s): %s", decision.counter, reason)
        if not (decision.entries or decision.documents):
            return
        publisher = bytes(message.from_id)  # named (base58) only if a fetch needs it
        for document in decision.documents:
            self._fetch(document, _peer_of(publisher), topic)
        if not decision.entries:
            return
        if self._inbox_entries + len(decision.entries) > INBOX_SIZE:
            self.counters["inbox_full"] += len(decision.entries)
            return
        self._inbox_entries += len(decision.entries)
        self._inbox_send.send_nowait(_Inbound(decision.entries, publisher, topic))

    async def _store_loop(self) -> None:
        async for first in self._inbox:
            waiting = [first]
            size = len(first.entries)
            while size < STORE_BATCH:  # never splitting a message's entries
                try:
                    more = self._inbox.receive_nowait()
                except trio.WouldBlock:
                    break
                waiting.append(more)
                size += len(more.entries)
            self._inbox_entries -= size
            batch = [e for item in waiting for e in item.entries]
            origins = {e.cid: (item.origin, item.topic) for item in waiting for e in item.entries}
            self.counters["store_calls"] += 1
            try:
                results = await self.local.put_entries(batch)
            except LoomError as exc:
                self.counters["store_refused"] += len(batch)
                log.warning("storing %d gossiped entries: %s", len(batch), exc.message)
                continue
            accepted = []
            now_ms = self._wall.now_ms()
            for entry, result in zip(batch, results, strict=True):
                if result.status is PutStatus.ACCEPTED:
                    self.counters["stored"] += 1
                    self.delays.add(entry.created_at, now_ms)
                    accepted.append(entry)
                elif result.status is PutStatus.DUPLICATE:
                    self.counters["duplicate"] += 1
                else:
                    self.counters["store_refused"] += 1
            await self._check_parents(accepted, origins)

    async def _check_parents(
        self, accepted: list[Entry], origins: dict[Any, tuple[bytes, str]]
    ) -> None:
        parents = list(dict.fromkeys(p for e in accepted for p in e.parents))
        if not parents:
            return
        held = dict(zip(parents, await self.local.has_entries(parents), strict=True))
        for entry in accepted:
            if all(held[p] for p in entry.parents):
                continue
            self.counters["missing_parents"] += 1
            publisher, topic = origins.get(entry.cid, (b"", ""))
            origin = _peer_of(publisher) if publisher else None
            self._fetch((entry.space, entry.collection, entry.document), origin, topic)

    # --- fetching ------------------------------------------------------------------------

    def _fetch(self, document: tuple[str, str, str], origin: str | None, topic: str) -> None:
        connected = self._connected()
        pubsub = self.host.pubsub
        in_topic = (
            sorted(p.to_base58() for p in pubsub.peer_topics.get(topic, ()))
            if pubsub is not None
            else []
        )
        peers = [*([origin] if origin in connected else []), *in_topic, *connected]
        peers = [p for p in dict.fromkeys(peers) if p in connected]
        if not self.fetches.add(document, peers):
            self.counters["fetch_dropped"] += 1
            return
        self._fetch_ready.set()

    async def _fetch_loop(self, nursery: trio.Nursery) -> None:
        slots = trio.Semaphore(FETCH_WORKERS)
        while True:
            item = self.fetches.pop()
            if item is None:
                await self._fetch_ready.wait()
                self._fetch_ready = trio.Event()
                continue
            await slots.acquire()
            nursery.start_soon(self._fetch_one, item, slots)

    async def _fetch_one(
        self, item: tuple[tuple[str, str, str], list[str]], slots: trio.Semaphore
    ) -> None:
        try:
            (space, collection, document), peers = item
            self.counters["fetches"] += 1
            scope = SyncScope(space, documents=((collection, document),))
            for peer in peers:
                try:
                    with trio.fail_after(FETCH_TIMEOUT):
                        await self._pull(peer, scope)
                    # With the DHT to fall back on, a peer that lacked the history
                    # is not the end of the fetch.
                    if self.providers is None or await self._has_history(item[0]):
                        self.counters["fetched"] += 1
                        return
                except (LoomError, trio.TooSlowError) as exc:
                    log.info("fetching %s/%s from %s: %s", collection, document, peer, exc)
                except Exception:  # a background task never takes the node down
                    log.exception("fetching %s/%s from %s", collection, document, peer)
            if self.providers is not None:  # no peer at hand had it: ask the DHT

                async def done() -> bool:
                    return await self._has_history(item[0])

                found = await self.providers.pull_from_providers(
                    space, collection, lambda peer: self._pull(peer, scope), skip=peers, done=done
                )
                if any("error" not in p for p in found) and await done():
                    self.counters["fetched"] += 1
                    return
            self.counters["fetch_failed"] += 1
        finally:
            slots.release()

    async def _has_history(self, document: tuple[str, str, str]) -> bool:
        """Whether the document is here with the parents of its heads."""
        heads = await self.local.heads(*document)
        return bool(heads) and not await self.local.missing_parents(heads)

    # --- head exchange ---------------------------------------------------------------

    async def _heads_loop(self, nursery: trio.Nursery) -> None:
        while True:
            now = self._clock()
            self.schedule.on_peers(self._connected(), now)
            for peer in self.schedule.due(now):
                nursery.start_soon(self._exchange, peer)
            await self._sleep(min(POLL_SECONDS, self.schedule.next_wakeup(now)))

    async def _exchange(self, peer: str) -> None:
        try:
            for scope in self.subscriptions.scopes():
                self.heads["runs"] += 1
                try:
                    with trio.fail_after(EXCHANGE_TIMEOUT):
                        report = await self._pull(peer, scope, dial=False)
                    self.heads["rounds"] += report.rounds
                    self.heads["pulled"] += report.pulled
                except (LoomError, trio.TooSlowError) as exc:
                    self.heads["failed"] += 1
                    log.info("head exchange of %s with %s: %s", scope.space, peer, exc)
                except Exception:  # a background task never takes the node down
                    self.heads["failed"] += 1
                    log.exception("head exchange of %s with %s", scope.space, peer)
        finally:
            self.heads["exchanges"] += 1
            self.schedule.finished(peer, self._clock())


@dataclass(frozen=True, slots=True)
class _Inbound:
    """A received message's verified entries, waiting to be stored."""

    entries: tuple[Entry, ...]
    origin: bytes  # the publisher's peer id
    topic: str


def _peer_of(from_id: bytes) -> str | None:
    try:
        return ID(from_id).to_base58()
    except Exception:  # py-libp2p's ID takes any bytes; base58 of garbage is garbage
        return None


def _code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, LoomError) else "transport.timeout"
