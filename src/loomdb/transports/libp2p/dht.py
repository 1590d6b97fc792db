"""``NodeDHT``: py-libp2p's Kad-DHT on the node's host, for finding who holds history.

The node uses the DHT for **provider records** only: a node announces the
hashed keys of the spaces and collections it holds
(:mod:`loomdb.replication.providers`), and a node that lacks a document looks
up who provides its collection (then its space) and dials them. What py-libp2p
0.8.1 gets wrong here (``../shared/notes/py-libp2p.md``) is fixed in this module:

* **Values: none accepted.** py-libp2p's validator accepts a record in a
  namespace it has no validator for (with a warning), and any key without a
  namespace — even with ``strict_validation`` on the validator, because
  ``KadDHT`` resets that flag to its own argument. The DHT here gets
  :func:`value_validator` (the namespaces of :data:`VALUE_NAMESPACES`, strict)
  and ``strict_validation=True``: a ``PUT_VALUE`` in any other namespace is
  refused and its stream reset, so nothing lands in the value store and a
  ``GET_VALUE`` finds nothing. loomdb keeps no values in the DHT, so the table
  is empty; a namespace it needs one day goes there with its validator.
* **Providers: de-duplicated.** py-libp2p's ``find_providers`` lists a provider
  once per peer that told it, and returns only the local records as soon as
  there are any (a node that provides a key itself never asks the network).
  :meth:`NodeDHT.find_providers` asks the closest peers every time, merges the
  answers per Peer ID (:func:`merge_providers`), drops itself and addresses
  nobody can dial (``0.0.0.0``), and returns at most ``limit``.
* **Lookups: bounded, servers only.** When its routing table is small,
  py-libp2p's lookup of the closest peers asks every connected and known peer
  of its peerstore, dialling each: clients and nodes without the DHT (a stream
  refused, a warning each time), peers known only at ``0.0.0.0``, and peers the
  node was told to disconnect (reconnected behind the user's back).
  :meth:`_KadDHT.find_closest` replaces it (the provider store uses it too):
  the routing table and the connected peers, ``ALPHA`` asked at a time, at
  most :data:`MAX_LOOKUP_ROUNDS` rounds, and only peers that
  :meth:`_KadDHT.may_serve`.
* **Noise: quieted** (:class:`QuietDHTNoise`). Its warnings with an empty
  exception text (a peer closing a stream, in normal runs), those about one
  peer of a lookup that could not be reached or asked, and py-libp2p's
  seven-line error when a peer turns out not to speak the DHT (a client) go
  to DEBUG; every other warning and error is kept. What the lookups achieved
  is counted (``p2p info``).

**Mode.** A node that listens on an address of its own runs in **server** mode:
it answers the DHT protocol (``/ipfs/kad/1.0.0``), keeps other peers' provider
records, and is added to their routing tables. A node behind a NAT (it reserves
on ``--relays``) runs in **client** mode: others could not dial it back.

**Bootstrap.** The routing table starts from the connected peers (``--peers``
and whoever dials in): every :data:`PEER_POLL_SECONDS` new connections are added
to it, and when it goes from empty to not, the node asks each connected peer
for the peers closest to it (``FIND_NODE`` of its own id) and adds them. That
refresh (also py-libp2p's, every 10 minutes) **dials nobody**: py-libp2p's own
would connect to every peer of its iterative lookups, and each new connection
starts a head exchange (:mod:`loomdb.replication.heads`). The node dials when it
looks something up — a provide, a provider lookup.

Runs in the caller's trio loop, on the host's ``IHost``, beside the host.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.kad_dht.common import ALPHA, BUCKET_SIZE, PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.utils import sort_peer_ids_by_distance
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.records.validator import NamespacedValidator, Validator
from libp2p.tools.anyio_service import background_trio_service

log = logging.getLogger("loomdb.dht")

VALUE_NAMESPACES: Final[Mapping[str, Validator]] = {}
"""The value namespaces this node accepts, with their validators: none (loomdb
stores no values in the DHT; see the module doc)."""
PEER_POLL_SECONDS: Final = 1.0
"""How often new connections are added to the routing table."""
LOOKUP_TIMEOUT: Final = 30.0
"""A provider lookup ends after this many seconds, with what it found."""
QUERY_TIMEOUT: Final = 10.0  # one peer's GET_PROVIDERS answer
MAX_LOOKUP_ROUNDS: Final = 5
MIN_TABLE: Final = 5  # below this many peers in the table, the connected ones are asked too
DEFAULT_FIND_LIMIT: Final = 20

# The modules of py-libp2p's DHT whose warnings QuietDHTNoise looks at.
DHT_LOGGERS: Final = (
    "libp2p.kad_dht.kad_dht",
    "libp2p.kad_dht.provider_store",
    "libp2p.kad_dht.peer_routing",
    "libp2p.kad_dht.routing_table",
    "libp2p.kad_dht.value_store",
)


def value_validator() -> NamespacedValidator:
    """Strict: a key outside :data:`VALUE_NAMESPACES` (or without a namespace) is
    refused, whatever its value."""
    return NamespacedValidator(dict(VALUE_NAMESPACES), strict_validation=True)


def refuses_value(validator: NamespacedValidator, key: str, value: bytes) -> bool:
    """Whether ``validator`` refuses this value (what a ``PUT_VALUE`` meets)."""
    try:
        validator.validate(key, value)
    except Exception:  # InvalidRecordType, or a namespace validator's own error
        return True
    return False


# --- providers -----------------------------------------------------------------------


def usable_addrs(info: PeerInfo) -> list[multiaddr.Multiaddr]:
    """The addresses of ``info`` another node could dial: without a ``/p2p/<id>``
    suffix (of this peer; another peer's id: dropped), TCP on a specified IP
    address (``0.0.0.0`` and ``::`` are listen-anywhere, not addresses), or a
    relayed ``…/p2p-circuit`` one. In order, without repeats."""
    out: dict[str, multiaddr.Multiaddr] = {}
    me = info.peer_id.to_base58()
    for addr in info.addrs:
        try:
            text = str(addr)
            names = [p.name for p in addr.protocols()]
        except (ValueError, TypeError, LookupError):
            continue
        if "p2p-circuit" in names:
            out.setdefault(text, addr)
            continue
        bare = addr
        if names and names[-1] == "p2p":
            if str(addr.value_for_protocol("p2p")) != me:
                continue
            bare = addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{me}"))
            names = names[:-1]
        if names not in (["ip4", "tcp"], ["ip6", "tcp"]):
            continue
        try:
            ip = ipaddress.ip_address(str(bare.value_for_protocol(names[0])))
        except ValueError:
            continue
        if not ip.is_unspecified:
            out.setdefault(str(bare), bare)
    return list(out.values())


def merge_providers(
    found: Iterable[PeerInfo], *, exclude: Iterable[ID] = (), limit: int = DEFAULT_FIND_LIMIT
) -> list[PeerInfo]:
    """One :class:`PeerInfo` per provider, in the order first seen, its usable
    addresses merged from every answer; ``exclude`` (this node) dropped, and so is
    a provider with no usable address; at most ``limit``."""
    skip = set(exclude)
    merged: dict[ID, dict[str, multiaddr.Multiaddr]] = {}
    for info in found:
        if info.peer_id in skip:
            continue
        addrs = merged.setdefault(info.peer_id, {})
        for addr in usable_addrs(info):
            addrs.setdefault(str(addr), addr)
    out = [PeerInfo(peer, list(addrs.values())) for peer, addrs in merged.items() if addrs]
    return out[: max(0, limit)]


# --- logging --------------------------------------------------------------------------


PEER_FAILURES: Final = (
    "Failed to send ADD_PROVIDER to ",
    "Error sending ADD_PROVIDER to ",
    "Failed to open stream to ",
    "Failed to get providers from ",
    "Error getting providers from ",
)
"""How py-libp2p's DHT warnings about one unreachable or unwilling peer begin."""
HOST_LOGGER: Final = "libp2p.host.basic_host"


class QuietDHTNoise(logging.Filter):
    """Sends to DEBUG (shown only when DEBUG is enabled), from py-libp2p's DHT
    loggers, a warning whose text ends in an empty exception ``str()`` (``"Failed
    to read DHT message from stream: "``, a peer closing a stream) or that is
    about one peer (:data:`PEER_FAILURES`); and from its host, the error of a
    stream refused for the DHT's protocol alone (a client-mode peer). Every
    other record stays as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format is py-libp2p's: let logging report it
            return True
        if not self._noise(record, message):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    @staticmethod
    def _noise(record: logging.LogRecord, message: str) -> bool:
        if record.name == HOST_LOGGER:
            return (
                record.levelno == logging.ERROR
                and message.startswith("Failed to open stream to peer ")
                and f"Protocols: [{str(PROTOCOL_ID)!r}]" in message
                and "protocol not supported" in message
            )
        if record.levelno != logging.WARNING:
            return False
        return message.rstrip().endswith(":") or message.startswith(PEER_FAILURES)


_QUIET = QuietDHTNoise()


def quiet_dht_logs() -> None:
    """Put :class:`QuietDHTNoise` on py-libp2p's DHT loggers and its host's (once)."""
    for name in (*DHT_LOGGERS, HOST_LOGGER):
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)


# --- the DHT --------------------------------------------------------------------------


class _KadDHT(KadDHT):
    """py-libp2p's DHT with a routing-table refresh that dials nobody, and lookups
    that ask DHT servers only (module doc)."""

    def __init__(self, *args: Any, hands_off: Collection[ID] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hands_off = hands_off
        routing: Any = self.peer_routing  # the provider store calls it too
        routing.find_closest_peers_network = self.find_closest

    async def find_closest(self, target_key: bytes, count: int = BUCKET_SIZE) -> list[ID]:
        """The peers closest to ``target_key``: from the routing table (and the
        connected peers while it is small), asking the closest ``ALPHA`` at a time
        for closer ones, at most :data:`MAX_LOOKUP_ROUNDS` rounds; only peers that
        :meth:`may_serve` are asked or returned. (py-libp2p's own lookup also asks
        every peer of its peerstore, clients and peers disconnected on request
        included, dialling each.)"""
        me = self.local_peer_id
        start = self.routing_table.find_local_closest_peers(target_key, count)
        if len(start) < MIN_TABLE:
            start += sorted(self.host.get_connected_peers(), key=str)
        closest = sort_peer_ids_by_distance(
            target_key, [p for p in dict.fromkeys(start) if p != me and self.may_serve(p)]
        )[:count]
        asked: set[ID] = set()
        routing: Any = self.peer_routing
        for _ in range(MAX_LOOKUP_ROUNDS):
            batch = [p for p in closest if p not in asked][:ALPHA]
            if not batch:
                break
            asked.update(batch)
            heard: list[ID] = []

            async def ask(peer: ID, heard: list[ID] = heard) -> None:
                with trio.move_on_after(QUERY_TIMEOUT):
                    try:
                        # one FIND_NODE round trip (private in 0.8.1, pinned)
                        heard.extend(await routing._query_peer_for_closest(peer, target_key))
                    except Exception as exc:
                        log.debug("asking %s for the closest peers: %s", peer, exc)

            async with trio.open_nursery() as nursery:
                for peer in batch:
                    nursery.start_soon(ask, peer)
            fresh = [
                p
                for p in dict.fromkeys(heard)
                if p not in closest and p != me and self.may_serve(p)
            ]
            if not fresh:
                break
            closest = sort_peer_ids_by_distance(target_key, closest + fresh)[:count]
        return closest

    def may_serve(self, peer: ID) -> bool:
        """False for a peer whose protocols (identify's) lack the DHT's (a client,
        or a node without the DHT), and for one not connected that has no address
        anyone can dial (only ``0.0.0.0``: see :func:`usable_addrs`) or that the
        node was told to disconnect (``hands_off``, until it is dialled again). py-libp2p's
        lookups fall back to every connected and known peer when the routing
        table is small, and would open a stream to each (and warn each time)."""
        store = self.host.get_peerstore()
        try:
            protocols = store.get_protocols(peer)
            addrs = store.addrs(peer)
        except Exception:  # not in the peerstore: nothing known against it
            return True
        if protocols and str(PROTOCOL_ID) not in protocols:
            return False
        if peer in self.host.get_network().connections:
            return True
        return peer not in self.hands_off and bool(usable_addrs(PeerInfo(peer, addrs)))

    async def refresh_routing_table(self) -> None:
        me = self.local_peer_id.to_bytes()
        connected = sorted(self.host.get_connected_peers(), key=str)
        peers = [p for p in connected if self.may_serve(p)][:BUCKET_SIZE]
        routing: Any = self.peer_routing
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(self._ask_closest_to, routing, peer, me)

    @staticmethod
    async def _ask_closest_to(routing: Any, peer: ID, key: bytes) -> None:
        with trio.move_on_after(QUERY_TIMEOUT):
            try:
                # One FIND_NODE round trip; it adds the peers of the answer to the
                # peerstore and the routing table (private in 0.8.1, pinned).
                await routing._query_peer_for_closest(peer, key)
            except Exception as exc:
                log.debug("asking %s for the peers closest to this node: %s", peer, exc)


@dataclass
class DHTCounters:
    provides: int = 0  # provide calls
    provide_failures: int = 0  # reached no peer
    lookups: int = 0  # provider lookups
    lookup_failures: int = 0  # found no provider
    providers_found: int = 0  # distinct providers, summed over lookups
    bootstraps: int = 0  # self-lookups after the routing table was empty


class NodeDHT:
    """Kad-DHT on ``host`` (see the module doc). ``server``: answer the DHT protocol
    and keep others' records (else client mode). ``hands_off``: peers not to dial
    (:attr:`P2PHost.hands_off <loomdb.transports.libp2p.host.P2PHost.hands_off>`:
    disconnected on request)."""

    def __init__(self, host: IHost, *, server: bool = True, hands_off: Collection[ID] = ()) -> None:
        quiet_dht_logs()
        self.host = host
        self.mode = DHTMode.SERVER if server else DHTMode.CLIENT
        self.kad = _KadDHT(
            host,
            self.mode,
            validator=value_validator(),
            validator_changed=True,  # no pk/ipns fallbacks added
            strict_validation=True,  # else KadDHT turns the validator's off
            hands_off=hands_off,
        )
        self.counters = DHTCounters()
        self._me = host.get_id()
        self._seen: set[ID] = set()  # connected peers already offered to the table

    @asynccontextmanager
    async def run(self) -> AsyncIterator[NodeDHT]:
        """The DHT's service and the routing-table feeder, until the block ends."""
        async with background_trio_service(self.kad), trio.open_nursery() as nursery:
            nursery.start_soon(self._feed_table)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    async def _feed_table(self) -> None:
        while True:
            await self.add_connected_peers()
            await trio.sleep(PEER_POLL_SECONDS)

    async def add_connected_peers(self) -> int:
        """Offer newly connected peers to the routing table (DHT servers are kept);
        after it was empty, ask them for the peers close to this node (the
        bootstrap, see the module doc). The number added."""
        connected = set(self.host.get_network().connections)
        self._seen &= connected  # a peer that comes back is offered again
        was_empty = self.kad.get_routing_table_size() == 0
        added = 0
        for peer in sorted(connected - self._seen, key=str):
            self._seen.add(peer)
            try:
                added += bool(await self.kad.add_peer(peer))
            except Exception as exc:  # py-libp2p's own; the next lookup retries
                log.debug("adding %s to the routing table: %s", peer, exc)
        if added and was_empty:
            self.counters.bootstraps += 1
            with trio.move_on_after(LOOKUP_TIMEOUT):
                try:
                    await self.kad.refresh_routing_table()
                except Exception as exc:
                    log.info("bootstrapping the DHT: %s", exc)
        return added

    # --- providers --------------------------------------------------------------------

    async def provide(self, key: bytes) -> bool:
        """Announce this node as a provider of ``key`` to the peers closest to it;
        whether any peer was told. The caller re-provides (py-libp2p's own 22-hour
        republish of every key it ever provided, unpaced, is turned off by
        forgetting the key after each call)."""
        self.counters.provides += 1
        store = self.kad.provider_store
        try:
            reached = await store.provide(key)
        except Exception as exc:  # py-libp2p's own, none documented
            log.info("providing a key: %s", exc)
            reached = False
        finally:
            store.providing_keys.discard(key)
        if not reached:
            self.counters.provide_failures += 1
        return bool(reached)

    async def find_providers(self, key: bytes, limit: int = DEFAULT_FIND_LIMIT) -> list[PeerInfo]:
        """The providers of ``key`` (this node excluded), each once, at most
        ``limit``: the records held here and the answers of the closest peers,
        asked in rounds of ``ALPHA``, closer peers first; bounded by
        :data:`LOOKUP_TIMEOUT`."""
        self.counters.lookups += 1
        found: list[PeerInfo] = list(self.kad.provider_store.get_providers(key))
        with trio.move_on_after(LOOKUP_TIMEOUT):
            await self._ask_closest(key, found, limit)
        providers = merge_providers(found, exclude=[self._me], limit=limit)
        self.counters.providers_found += len(providers)
        if not providers:
            self.counters.lookup_failures += 1
        return providers

    async def _ask_closest(self, key: bytes, found: list[PeerInfo], limit: int) -> None:
        try:
            closest = await self.kad.peer_routing.find_closest_peers_network(key)
        except Exception as exc:
            log.info("looking up the peers closest to a key: %s", exc)
            closest = list(self.host.get_network().connections)
        candidates = [p for p in closest if p != self._me and self.kad.may_serve(p)]
        asked: set[ID] = set()
        for _ in range(MAX_LOOKUP_ROUNDS):
            batch = [p for p in candidates if p not in asked][:ALPHA]
            if not batch:
                return
            asked.update(batch)
            closer: list[ID] = []
            async with trio.open_nursery() as nursery:
                for peer in batch:
                    nursery.start_soon(self._ask_one, peer, key, found, closer)
            if len(merge_providers(found, exclude=[self._me], limit=limit + 1)) >= limit:
                return
            fresh = [
                p
                for p in dict.fromkeys(closer)
                if p not in asked and p != self._me and self.kad.may_serve(p)
            ]
            candidates = sort_peer_ids_by_distance(key, [*candidates, *fresh])

    async def _ask_one(self, peer: ID, key: bytes, found: list[PeerInfo], closer: list[ID]) -> None:
        store: Any = self.kad.provider_store
        with trio.move_on_after(QUERY_TIMEOUT):
            try:
                # py-libp2p's one GET_PROVIDERS round trip (private in 0.8.1, pinned):
                # its find_providers stops at local records, see the module doc.
                providers, peers = await store._get_providers_from_peer_with_closers(peer, key)
            except Exception as exc:
                log.debug("asking %s for providers: %s", peer, exc)
                return
            found.extend(providers)
            closer.extend(peers)

    # --- what the node shows ------------------------------------------------------------

    def info(self, extra: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        c = self.counters
        return {
            "mode": self.mode.value.lower(),
            "routing_table": self.kad.get_routing_table_size(),
            "provider_records": self.kad.provider_store.size(),
            "provides": c.provides,
            "provide_failures": c.provide_failures,
            "lookups": c.lookups,
            "lookup_failures": c.lookup_failures,
            "providers_found": c.providers_found,
            "bootstraps": c.bootstraps,
            **(extra() if extra is not None else {}),
        }
