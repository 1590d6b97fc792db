"""Providing what this node holds on the DHT, and fetching from the providers.

**Keys.** A provider key is a BLAKE2b-256 digest, keyed by a domain string of its
own (:data:`DOMAIN`, not the gossip topics'), over the length-prefixed parts —
(space) or (space, collection) — written as a multihash (``blake2b-256``). The
DHT learns no names: whoever knows a space's and a collection's names computes
the key; a DHT server keeping the record sees 36 opaque bytes.

**What is provided**: the key of every space and of every collection this node's
store holds documents of, and of those it follows by gossip. :class:`Providers`
lists them at start, again when entries land (at most every
:data:`RESCAN_SECONDS`) or the subscriptions change.

**When** (:class:`ProvideSchedule`, pure, on an injected clock):

1. at most ``max_keys`` keys, spaces first, in name order; the rest are
   counted (``skipped``), not provided;
2. one provide every ``interval`` seconds at most: py-libp2p's DHT servers
   accept 10 ``ADD_PROVIDER`` per peer per 10 s and reset the stream beyond;
3. a key is provided when it appears, then again every ``republish`` seconds
   (py-libp2p's 22 hours; its records live 48);
4. a provide that reached no peer is tried again after a back-off, or as soon
   as the node has more connected peers than before.

**Fetching** (:meth:`Providers.pull_from_providers`): the providers of the
collection, then of the space, each once, this node and the peers already tried
left out; at most ``max_dials`` of them are dialled (each within the host's
connect time-out) and pulled from, until ``done``.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio
from libp2p.kad_dht.provider_store import PROVIDER_RECORD_REPUBLISH_INTERVAL

from loomdb.errors import LoomError, UnreachableError
from loomdb.replication.feed import EntryFeed
from loomdb.replication.subscriptions import Subscriptions
from loomdb.replication.topics import name_digest
from loomdb.sync.replicate import SyncScope
from loomdb.transports.libp2p.dht import NodeDHT
from loomdb.transports.libp2p.host import Backoff, P2PHost

log = logging.getLogger("loomdb.dht")

DOMAIN: Final = b"loomdb/dht-provider/v1"
MULTIHASH_BLAKE2B_256: Final = b"\xa0\xe4\x02\x20"  # varint code 0xb220, length 32
DEFAULT_MAX_KEYS: Final = 1000
DEFAULT_INTERVAL: Final = 1.2
"""Seconds between two provides (under py-libp2p's 10 per peer per 10 s)."""
DEFAULT_REPUBLISH: Final = float(PROVIDER_RECORD_REPUBLISH_INTERVAL)
DEFAULT_RETRY: Final = Backoff(initial=5.0, factor=2.0, maximum=300.0)
DEFAULT_MAX_DIALS: Final = 5
RESCAN_SECONDS: Final = 5.0
RESCAN_IDLE_ROUNDS: Final = 11  # with nothing new, list again after a minute
LOOKUP_PULL_TIMEOUT: Final = 60.0
"""One pull from one provider ends after this many seconds."""
POLL_SECONDS: Final = 1.0  # the provide loop looks at the peers and the clock this often


# --- keys -------------------------------------------------------------------------------


def _digest(kind: bytes, *parts: str) -> bytes:
    return MULTIHASH_BLAKE2B_256 + name_digest(DOMAIN, kind, *parts)


def space_key(space: str) -> bytes:
    return _digest(b"s", space)


def collection_key(space: str, collection: str) -> bytes:
    return _digest(b"c", space, collection)


def key_text(key: bytes) -> str:
    """A key for logs (it names nothing)."""
    return base64.b32encode(key[len(MULTIHASH_BLAKE2B_256) :]).decode()[:16].lower()


def wanted_keys(
    spaces: Iterable[str], collections: Iterable[tuple[str, str]]
) -> list[tuple[str, bytes]]:
    """``(kind, key)`` of every space, then every collection, each once, in name
    order (kind: ``space`` or ``collection``)."""
    pairs = sorted(set(collections))
    names = sorted(set(spaces) | {s for s, _ in pairs})
    return [("space", space_key(s)) for s in names] + [
        ("collection", collection_key(s, c)) for s, c in pairs
    ]


# --- the schedule ---------------------------------------------------------------------


@dataclass
class _Key:
    kind: str
    due: float
    provided_at: float | None = None
    failures: int = 0


class ProvideSchedule:
    """Which key to provide next, and when (see the module doc, points 1 to 4)."""

    def __init__(
        self,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        interval: float = DEFAULT_INTERVAL,
        republish: float = DEFAULT_REPUBLISH,
        retry: Backoff = DEFAULT_RETRY,
    ) -> None:
        self.max_keys = max_keys
        self.interval = interval
        self.republish = republish
        self.retry = retry
        self.skipped = 0
        self._keys: dict[bytes, _Key] = {}
        self._last: float | None = None  # when the last provide started

    def want(self, keys: Sequence[tuple[str, bytes]], now: float) -> int:
        """The keys to provide from now on (what is not listed is forgotten); new
        ones are due now. The number of new keys."""
        listed = {key: kind for kind, key in keys}
        kept = list(listed.items())[: self.max_keys]
        self.skipped = len(listed) - len(kept)
        old, self._keys = self._keys, {}
        new = 0
        for key, kind in kept:
            state = old.get(key)
            if state is None:
                state, new = _Key(kind, now), new + 1
            self._keys[key] = state
        return new

    def _delay(self, failures: int) -> float:
        delays = self.retry.delays()
        delay = next(delays)
        for _ in range(failures - 1):
            delay = next(delays)
        return delay

    def next_due(self, now: float) -> bytes | None:
        """The key to provide now (the longest due), or None: none due, or the
        last provide began less than ``interval`` ago."""
        if self._last is not None and now - self._last < self.interval:
            return None
        due = [(s.due, k) for k, s in self._keys.items() if s.due <= now]
        if not due:
            return None
        self._last = now
        return min(due)[1]

    def done(self, key: bytes, reached: bool, now: float) -> None:
        state = self._keys.get(key)
        if state is None:  # forgotten meanwhile
            return
        if reached:
            state.provided_at, state.failures, state.due = now, 0, now + self.republish
        else:
            state.failures += 1
            state.due = now + self._delay(state.failures)

    def peers_appeared(self, now: float) -> None:
        """More peers than before: every key not yet provided is due now."""
        for state in self._keys.values():
            if state.provided_at is None:
                state.due = min(state.due, now)

    def wakeup(self, now: float) -> float:
        """Seconds until :meth:`next_due` may give a key (inf: no keys)."""
        if not self._keys:
            return float("inf")
        soonest = min(s.due for s in self._keys.values())
        gap = 0.0 if self._last is None else self._last + self.interval - now
        return max(0.0, soonest - now, gap)

    def summary(self) -> dict[str, int]:
        provided = sum(s.provided_at is not None for s in self._keys.values())
        return {
            "keys": len(self._keys),
            "keys_provided": provided,
            "keys_pending": len(self._keys) - provided,
            "keys_skipped": self.skipped,
        }


# --- the driver -----------------------------------------------------------------------


Pull = Callable[[str], Awaitable[Any]]  # pull from this Peer ID: a report with .pulled


class Providers:
    """Provides what ``local`` holds and ``subscriptions`` follow on ``dht``; finds
    and dials providers for the fetches of :mod:`~loomdb.replication.passive`."""

    def __init__(
        self,
        dht: NodeDHT,
        host: P2PHost,
        local: Any,
        feed: EntryFeed,
        subscriptions: Subscriptions,
        *,
        schedule: ProvideSchedule | None = None,
        max_dials: int = DEFAULT_MAX_DIALS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
    ) -> None:
        self.dht = dht
        self.host = host
        self.local = local
        self.feed = feed
        self.subscriptions = subscriptions
        self.schedule = schedule or ProvideSchedule()
        self.max_dials = max_dials
        self._clock = clock
        self._sleep = sleep
        self._changed = trio.Event()
        self.dials = 0
        self.dial_failures = 0

    def changed(self) -> None:
        """The subscriptions changed: list the keys again now."""
        self._changed.set()

    def info(self) -> dict[str, Any]:
        return {
            **self.schedule.summary(),
            "provider_dials": self.dials,
            "provider_dial_failures": self.dial_failures,
        }

    # --- providing ----------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._scan_loop)
            nursery.start_soon(self._provide_loop)

    async def held(self) -> list[tuple[str, bytes]]:
        """The keys of what the store holds and the subscriptions follow."""
        subs = self.subscriptions
        collections = set(subs.collections) | {(s, c) for s, c, _ in subs.documents}
        spaces = await self.local.list_spaces()
        for space in spaces:
            if len(collections) > self.schedule.max_keys:
                break  # enough to fill the schedule; the rest would be skipped
            collections.update((space, c) for c in await self.local.list_collections(space))
        return wanted_keys(spaces, collections)

    async def _scan_loop(self) -> None:
        while True:
            self._changed = trio.Event()
            cursor = self.feed.latest
            try:
                added = self.schedule.want(await self.held(), self._clock())
                if added:
                    log.info("%d new keys to provide on the DHT", added)
            except LoomError as exc:
                log.warning("listing what this node holds: %s", exc.message)
            except Exception:  # a background task never takes the node down
                log.exception("listing what this node holds")
            await self._sleep(RESCAN_SECONDS)  # at most one listing per period
            for _ in range(RESCAN_IDLE_ROUNDS):  # and one at least every minute
                if self._changed.is_set() or await self.feed.wait(cursor, RESCAN_SECONDS):
                    break

    async def _provide_loop(self) -> None:
        peers = 0
        while True:
            now = self._clock()
            connected = len(self.host.host.get_network().connections)
            if connected > peers:
                self.schedule.peers_appeared(now)
            peers = connected
            key = self.schedule.next_due(now)
            if key is None:
                await self._sleep(min(POLL_SECONDS, self.schedule.wakeup(now)))
                continue
            reached = await self.dht.provide(key)
            self.schedule.done(key, reached, self._clock())
            log.debug("provided %s: %s", key_text(key), "ok" if reached else "no peer reached")

    # --- fetching -----------------------------------------------------------------------

    async def pull_from_providers(
        self,
        space: str,
        collection: str,
        pull: Pull,
        *,
        skip: Collection[str] = (),
        done: Callable[[], Awaitable[bool]] | None = None,
    ) -> list[dict[str, Any]]:
        """Find the providers of ``collection`` (then of ``space``), dial at most
        ``max_dials`` not in ``skip``, and ``pull`` from each until one succeeds
        and ``done()`` (default: a success is enough). One outcome per provider
        tried: ``{"peer_id", "pulled" | "error", "via": "dht"}``."""
        out: list[dict[str, Any]] = []
        tried = set(skip)
        for key in (collection_key(space, collection), space_key(space)):
            # (more than max_dials: some may be peers tried already)
            for info in await self.dht.find_providers(key, self.max_dials + len(tried)):
                peer = info.peer_id.to_base58()
                if peer in tried or len(out) >= self.max_dials:
                    continue
                tried.add(peer)
                outcome = await self._pull_one(info, pull)
                out.append(outcome)
                if "error" not in outcome and (done is None or await done()):
                    return out
            if len(out) >= self.max_dials:
                break
        return out

    async def sync_missing(
        self,
        scope: SyncScope,
        pull: Callable[[str, SyncScope], Awaitable[Any]],
        tried: set[str],
    ) -> list[dict[str, Any]]:
        """The documents of ``scope`` (a space's) still missing from ``local``,
        pulled from the providers of their collections (``tried``: peers asked
        already, left out and added to); the outcomes."""
        space = scope.space
        assert space is not None
        out: list[dict[str, Any]] = []
        for collection in dict.fromkeys(c for c, _ in scope.documents):
            docs = [d for c, d in scope.documents if c == collection]

            async def missing(c: str = collection, docs: list[str] = docs) -> list[str]:
                heads = [await self.local.heads(space, c, d) for d in docs]
                return [d for d, h in zip(docs, heads, strict=True) if not h]

            lacking = await missing()
            if not lacking:
                continue
            part = SyncScope(space, documents=tuple((collection, d) for d in lacking))

            async def pull_part(peer: str, part: SyncScope = part) -> Any:
                return await pull(peer, part)

            async def done(missing: Any = missing) -> bool:
                return not await missing()

            found = await self.pull_from_providers(
                space, collection, pull_part, skip=tried, done=done
            )
            tried.update(p["peer_id"] for p in found)
            out += found
        return out

    async def _pull_one(self, info: Any, pull: Pull) -> dict[str, Any]:
        peer = info.peer_id.to_base58()
        try:
            if info.peer_id not in self.host.host.get_network().connections:
                await self._dial(info)
            with trio.fail_after(LOOKUP_PULL_TIMEOUT):
                report = await pull(peer)
            return {"peer_id": peer, "pulled": report.pulled, "via": "dht"}
        except (LoomError, trio.TooSlowError) as exc:
            message = getattr(exc, "message", "timed out")
            code = exc.code if isinstance(exc, LoomError) else "transport.timeout"
            return {"peer_id": peer, "error": {"code": code, "message": message}, "via": "dht"}
        except Exception as exc:  # py-libp2p's own, not translated below us
            log.exception("pulling from provider %s", peer)
            error = {"code": "transport", "message": f"{type(exc).__name__}: {exc}"}
            return {"peer_id": peer, "error": error, "via": "dht"}

    async def _dial(self, info: Any) -> None:
        """Dial a provider at each of its addresses in turn (each within the host's
        connect time-out, py-libp2p's negative cache lifted); UnreachableError if
        none answers."""
        self.dials += 1
        peer = info.peer_id.to_base58()
        last: UnreachableError | None = None
        for addr in info.addrs:
            try:
                await self.host.connect(f"{addr}/p2p/{peer}")
                return
            except UnreachableError as exc:
                last = exc
        self.dial_failures += 1
        raise last or UnreachableError(f"cannot reach provider {peer}: no address")
