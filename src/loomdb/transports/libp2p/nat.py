"""Reaching peers behind NATs: circuit relay v2 and DCUtR hole punching.

* **Relay service** (``--relay-service``): the host answers
  ``/libp2p/circuit/relay/0.2.0/hop``: it grants reservations and relays circuits
  between peers, within :class:`RelayServiceLimits` (reservations held at once,
  how long one lasts, and bytes and seconds per circuit: past either the circuit
  is reset; both ends dial again).
* **Reservations** (``--relays``): for each relay the node keeps a reservation:
  dial it, run relay *discovery* (py-libp2p refuses to reserve on a relay its
  discovery has not seen: "unknown relay"), reserve, renew when three quarters of
  its time have passed; a failure waits the host's :class:`Backoff` and starts
  again from the dial. While reserved, the node advertises
  ``<relay addr>/p2p-circuit/p2p/<its id>``.
* **Dialling** a ``…/p2p/R/p2p-circuit/p2p/B`` address opens a relayed connection
  (py-libp2p's swarm drops circuit addresses: they go through the circuit
  transport here). Every node accepts relayed connections (the stop protocol).
* **Hole punching** (DCUtR, ``/libp2p/dcutr``): for each peer connected only
  through a relay, one side (the one the relayed connection came in to, as the
  spec says; else the smaller Peer ID) tries an upgrade in the background,
  bounded by ``punch_timeout`` (py-libp2p's own attempt can take 22-44 s to give
  up behind a symmetric NAT), at most :data:`PUNCH_ATTEMPTS` times per
  connection. Traffic never waits for it: streams use the relayed connection
  until a direct one exists, and new streams prefer the direct one. py-libp2p
  closes the relayed connection 60 s after the upgrade.

Connection types (``direct``/``relayed``) and addresses:
:meth:`NatTraversal.peer_connections`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.connection_types import ConnectionType
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.discovery import RelayDiscovery
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from loomdb.errors import UnreachableError, ValidationError
from loomdb.identity.peer_id import public_key_from_peer_id

log = logging.getLogger("loomdb.p2p.nat")

DEFAULT_RESERVATIONS: Final = 128
DEFAULT_RESERVATION_SECONDS: Final = 3600
DEFAULT_CIRCUIT_SECONDS: Final = 3600
DEFAULT_CIRCUIT_BYTES: Final = 256 * 1024 * 1024
DEFAULT_CIRCUITS_PER_PEER: Final = 16
DEFAULT_PUNCH_TIMEOUT: Final = 10.0
PUNCH_ATTEMPTS: Final = 2
"""Upgrade attempts per relayed connection (a new relayed connection starts again)."""
PUNCH_DIAL_TIMEOUT: Final = 3
"""Seconds for each dial of a punch (py-libp2p's default, 10 s, is a whole budget)."""
DRIVE_EVERY: Final = 0.5
"""How often relayed-only peers are looked for."""
RELAY_TIMEOUT: Final = 10.0
"""Bound on one reservation attempt (dial, discovery, reserve)."""

_PARSE_ERRORS: Final = (ValueError, TypeError, LookupError)


# --- settings ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayServiceLimits:
    """What a relay grants: ``reservations`` held at once, each for
    ``reservation_seconds``; per circuit at most ``circuit_bytes`` (both directions
    together) and ``circuit_seconds``; ``circuits_per_peer`` at once to one peer."""

    reservations: int = DEFAULT_RESERVATIONS
    reservation_seconds: int = DEFAULT_RESERVATION_SECONDS
    circuit_seconds: int = DEFAULT_CIRCUIT_SECONDS
    circuit_bytes: int = DEFAULT_CIRCUIT_BYTES
    circuits_per_peer: int = DEFAULT_CIRCUITS_PER_PEER

    def check(self) -> None:
        if not 1 <= self.reservations <= 100_000:
            raise ValidationError("--relay-max-reservations is between 1 and 100000")
        if not 10 <= self.reservation_seconds <= 86_400:
            raise ValidationError("--relay-reservation-seconds is between 10 and 86400")
        if not 1 <= self.circuit_seconds <= 86_400:
            raise ValidationError("--relay-circuit-seconds is between 1 and 86400")
        if not 1024 <= self.circuit_bytes <= 1 << 40:
            raise ValidationError("--relay-circuit-bytes is between 1024 and 2**40")
        if not 1 <= self.circuits_per_peer <= 1024:
            raise ValidationError("circuits per peer is between 1 and 1024")

    def libp2p_limits(self) -> RelayLimits:
        return RelayLimits(
            duration=self.circuit_seconds,
            data=self.circuit_bytes,
            max_circuit_conns=self.circuits_per_peer,
            max_reservations=self.reservations,
            reservation_ttl=self.reservation_seconds,
        )


@dataclass(frozen=True, slots=True)
class NatSettings:
    """``service``: act as a relay (None: not); ``relays``: relay multiaddrs
    (``/ip4/…/tcp/…/p2p/R``) to reserve on; ``hole_punch``: try DCUtR upgrades;
    ``punch_timeout``: seconds one upgrade attempt may take."""

    service: RelayServiceLimits | None = None
    relays: tuple[str, ...] = ()
    hole_punch: bool = True
    punch_timeout: float = DEFAULT_PUNCH_TIMEOUT

    def check(self) -> None:
        if self.service is not None:
            self.service.check()
        for relay in self.relays:
            parse_relay_addr(relay)
        if not 0.5 <= self.punch_timeout <= 120:
            raise ValidationError("--hole-punch-seconds is between 0.5 and 120")


# --- addresses ---------------------------------------------------------------------


def is_circuit(addr: str | multiaddr.Multiaddr) -> bool:
    return "/p2p-circuit" in str(addr)


def _peer(text: str) -> ID:
    public_key_from_peer_id(text)  # an Ed25519 Peer ID, or ValidationError
    return ID.from_base58(text)


def parse_relay_addr(text: str) -> PeerInfo:
    """A relay to reserve on: ``/ip4/HOST/tcp/PORT/p2p/12D3KooW…`` (or ``/ip6/…``)."""
    try:
        addr = multiaddr.Multiaddr(text)
        names = [p.name for p in addr.protocols()]
        peer = str(addr.value_for_protocol("p2p")) if names[-1:] == ["p2p"] else None
    except _PARSE_ERRORS as exc:
        raise ValidationError(f"bad multiaddr {text!r}: {exc}") from None
    if peer is None or names[:2] not in (["ip4", "tcp"], ["ip6", "tcp"]) or len(names) != 3:
        raise ValidationError(
            f"bad relay address {text!r}: expected /ip4/HOST/tcp/PORT/p2p/PEER_ID"
        )
    return PeerInfo(_peer(peer), [addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer}"))])


def parse_circuit_addr(text: str) -> tuple[PeerInfo, ID, multiaddr.Multiaddr]:
    """``<relay addr>/p2p/R/p2p-circuit/p2p/B``: the relay, B, and the whole address."""
    relay_part, sep, dest_part = text.partition("/p2p-circuit")
    if not sep or not dest_part.startswith("/p2p/") or dest_part.count("/") != 2:
        raise ValidationError(
            f"bad circuit address {text!r}: "
            "expected /ip4/HOST/tcp/PORT/p2p/RELAY/p2p-circuit/p2p/PEER"
        )
    relay = parse_relay_addr(relay_part)
    dest = _peer(dest_part.removeprefix("/p2p/"))
    if dest == relay.peer_id:
        raise ValidationError(f"bad circuit address {text!r}: the relay is the peer")
    try:
        return relay, dest, multiaddr.Multiaddr(text)
    except _PARSE_ERRORS as exc:  # pragma: no cover - the parts parsed
        raise ValidationError(f"bad multiaddr {text!r}: {exc}") from None


def renew_after(ttl: float) -> float:
    """Seconds after a reservation was granted for ``ttl`` seconds to renew it:
    three quarters of it (at least 1 s)."""
    return max(1.0, ttl * 0.75)


def connection_kind(conn: Any) -> tuple[str, list[str]]:
    """``("direct" | "relayed", addresses)`` of a swarm connection."""
    try:
        addrs = [str(a) for a in conn.get_transport_addresses()]
    except Exception:
        addrs = []
    relayed = conn.get_connection_type() == ConnectionType.RELAYED or any(map(is_circuit, addrs))
    return ("relayed" if relayed else "direct"), addrs


def _direction(conn: Any) -> str | None:
    """``inbound``, ``outbound`` or None (py-libp2p did not say)."""
    direction = getattr(conn, "direction", None)
    name = getattr(direction, "name", None)
    return name.lower() if name in ("INBOUND", "OUTBOUND") else None


# --- state -------------------------------------------------------------------------


class ReservationState(Enum):
    CONNECTING = "connecting"  # dialling the relay, discovery, reserving
    RESERVED = "reserved"
    FAILING = "failing"  # the last attempt failed; again after the back-off


@dataclass
class RelayReservation:
    addr: str
    relay: PeerInfo
    state: ReservationState = ReservationState.CONNECTING
    expires: float | None = None  # Unix seconds
    reservations: int = 0  # granted (the first and renewals)
    failures: int = 0  # in a row
    last_error: str | None = None

    def circuit_addr(self, me: str) -> str:
        return f"{self.addr}/p2p-circuit/p2p/{me}"

    def info(self, me: str) -> dict[str, Any]:
        return {
            "relay": self.addr,
            "state": self.state.value,
            "expires": self.expires,
            "reservations": self.reservations,
            "failures": self.failures,
            "last_error": self.last_error,
            "addr": self.circuit_addr(me) if self.state is ReservationState.RESERVED else None,
        }


class PunchState(Enum):
    """Hole punching toward one peer: ``punching`` → ``direct`` (a direct connection
    appeared, by this side's punch or the peer's) or → ``relayed`` (the attempts are
    over: this side's, or, on the side that does not initiate, the peer's time for
    them); ``direct`` → ``punching`` again when only relayed connections are left."""

    PUNCHING = "punching"
    DIRECT = "direct"
    RELAYED = "relayed"


@dataclass
class PunchRecord:
    """Hole punching toward one peer: ``state`` ``punching``, ``direct`` or
    ``relayed`` (gave up), and seconds from its relayed connection to direct."""

    relayed_at: float
    attempts: int = 0
    state: PunchState = PunchState.PUNCHING
    upgrade_seconds: float | None = None


@dataclass
class NatCounters:
    relayed_dials: int = 0
    punches: int = 0
    punch_successes: int = 0
    punch_failures: int = 0
    punch_timeouts: int = 0


class _CircuitKey:
    """One direction of one circuit (hashable by identity)."""

    __slots__ = ("peer",)

    def __init__(self, peer: ID) -> None:
        self.peer = peer

    def __str__(self) -> str:
        return str(self.peer)


class _CircuitRelay(CircuitV2Protocol):
    """py-libp2p's relay, each circuit cleaned up on its own. py-libp2p keeps a
    circuit's streams by the peer's id, and when a circuit ended it closed the
    streams kept for that peer: those of the peer's *newest* circuit, a live one
    when two peers had circuits to it (seen: a dialer that went away killed the
    next dialer's circuit). Each direction here is kept under its own key."""

    async def _relay_data(
        self,
        src_stream: Any,
        dst_stream: Any,
        peer_id: ID,
        deadline: float | None = None,
        circuit_data_limit: list[int] | None = None,
    ) -> None:
        key: Any = _CircuitKey(peer_id)  # read only for logs and the clean-up below
        self._active_relays[key] = (src_stream, dst_stream)
        try:
            await super()._relay_data(src_stream, dst_stream, key, deadline, circuit_data_limit)
        finally:
            self._active_relays.pop(key, None)

    def circuits(self) -> int:
        return sum(isinstance(k, _CircuitKey) for k in self._active_relays) // 2


class _BoundedDCUtR(DCUtRProtocol):
    """py-libp2p's DCUtR without its own auto-drive loop (which would wait out
    each attempt, 22-44 s behind a symmetric NAT): :class:`NatTraversal` drives."""

    async def _auto_drive_loop(self) -> None:
        await trio.sleep_forever()

    async def _get_observed_addrs(self) -> list[bytes]:
        """Without an observed address py-libp2p sends its listen addresses, and
        ``0.0.0.0:PORT`` sends the peer dialling itself: those are left out."""
        return [a for a in await super()._get_observed_addrs() if _dialable(a)]

    def _decode_observed_addrs(self, addr_bytes: list[bytes]) -> list[multiaddr.Multiaddr]:
        return [a for a in super()._decode_observed_addrs(addr_bytes) if _dialable(a.to_bytes())]


def _dialable(raw: bytes) -> bool:
    """Not an unspecified address (``0.0.0.0``, ``::``)."""
    try:
        addr = multiaddr.Multiaddr(raw)
        names = {p.name for p in addr.protocols()}
        ips = [str(addr.value_for_protocol(p)) for p in ("ip4", "ip6") if p in names]
    except _PARSE_ERRORS:
        return False
    return not any(ip in ("0.0.0.0", "::") for ip in ips)


# --- the service -------------------------------------------------------------------


@dataclass
class NatTraversal:
    """Relay service, reservations, relayed dials and hole punching on ``host``
    (see the module doc). ``sleep`` and ``delays`` (the back-off between failed
    reservation attempts) are injected."""

    host: IHost
    settings: NatSettings
    delays: Callable[[], Any]
    sleep: Callable[[float], Awaitable[None]] = trio.sleep
    clock: Callable[[], float] = time.time
    counters: NatCounters = field(default_factory=NatCounters)

    def __post_init__(self) -> None:
        service = self.settings.service
        limits = (service or RelayServiceLimits()).libp2p_limits()
        self.protocol = _CircuitRelay(self.host, limits=limits, allow_hop=service is not None)
        # Stop role only: dialling through a relay needs no reservation of our own.
        self.transport = CircuitV2Transport(
            self.host, self.protocol, RelayConfig(roles=RelayRole.STOP, limits=limits)
        )
        self.discovery = RelayDiscovery(self.host, auto_reserve=False)
        self.dcutr = _BoundedDCUtR(self.host, dial_timeout=PUNCH_DIAL_TIMEOUT)
        self.reservations = [
            RelayReservation(text, parse_relay_addr(text)) for text in self.settings.relays
        ]
        self.punches: dict[ID, PunchRecord] = {}
        self._me = self.host.get_id().to_base58()
        self._give_up_after = self.settings.punch_timeout * PUNCH_ATTEMPTS + 5.0

    @asynccontextmanager
    async def run(self) -> AsyncIterator[NatTraversal]:
        async with (
            background_trio_service(self.protocol),
            background_trio_service(self.dcutr),
            trio.open_nursery() as nursery,
        ):
            for reservation in self.reservations:
                nursery.start_soon(self._keep_reserved, reservation)
            if self.settings.hole_punch:
                nursery.start_soon(self._drive_punches, nursery)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    # --- what the node shows --------------------------------------------------------

    def circuit_addrs(self) -> list[str]:
        """``…/p2p/R/p2p-circuit/p2p/ME`` for each relay this node holds a reservation on."""
        return [
            r.circuit_addr(self._me)
            for r in self.reservations
            if r.state is ReservationState.RESERVED
        ]

    def peer_connections(self, peer: ID) -> list[dict[str, Any]]:
        out = []
        for conn in self.host.get_network().get_connections(peer):
            kind, addrs = connection_kind(conn)
            direction = _direction(conn)
            out.append({"type": kind, "addrs": addrs, "direction": direction})
        return out

    def info(self) -> dict[str, Any]:
        service = self.settings.service
        punches = {
            peer.to_base58(): {
                "state": p.state.value,
                "attempts": p.attempts,
                "upgrade_seconds": p.upgrade_seconds,
            }
            for peer, p in self.punches.items()
        }
        return {
            "relay_service": None
            if service is None
            else {
                "max_reservations": service.reservations,
                "reservation_seconds": service.reservation_seconds,
                "circuit_seconds": service.circuit_seconds,
                "circuit_bytes": service.circuit_bytes,
                "reservations": len(self.protocol.resource_manager._reservations),
                "circuits": self.protocol.circuits(),
            },
            "relays": [r.info(self._me) for r in self.reservations],
            "hole_punch": self.settings.hole_punch,
            "punch_timeout": self.settings.punch_timeout,
            "punches": punches,
            "counters": {
                "relayed_dials": self.counters.relayed_dials,
                "punches": self.counters.punches,
                "punch_successes": self.counters.punch_successes,
                "punch_failures": self.counters.punch_failures,
                "punch_timeouts": self.counters.punch_timeouts,
            },
        }

    # --- relayed dials ------------------------------------------------------------------

    async def dial_circuit(self, text: str) -> None:
        """A relayed connection to the peer ``text`` names (callers bound the time)."""
        relay, dest, addr = parse_circuit_addr(text)
        if dest in self.host.get_network().connections:
            return
        self.counters.relayed_dials += 1
        self.host.get_peerstore().add_addrs(relay.peer_id, relay.addrs, 3600)
        try:
            await self.transport.dial(addr)
        except Exception as exc:  # ConnectionError, OSError, the swarm's own errors
            raise UnreachableError(f"cannot reach {text}: {exc}") from None

    # --- reservations ----------------------------------------------------------------

    async def _keep_reserved(self, r: RelayReservation) -> None:
        delays = self.delays()
        while True:
            # A renewal keeps the address advertised: the reservation still holds.
            if r.state is not ReservationState.RESERVED:
                r.state = ReservationState.CONNECTING
            try:
                with trio.fail_after(RELAY_TIMEOUT):
                    ttl = await self._reserve(r)
            except (UnreachableError, TimeoutError, trio.TooSlowError) as exc:
                r.state = ReservationState.FAILING
                r.failures += 1
                r.last_error = str(exc) or "no reservation within the time-out"
                delay = next(delays)
                log.info("no reservation on %s (%s): again in %.1f s", r.addr, r.last_error, delay)
                await self.sleep(delay)
                continue
            delays = self.delays()
            r.state, r.failures, r.last_error = ReservationState.RESERVED, 0, None
            r.reservations += 1
            log.info("reserved on relay %s for %.0f s", r.addr, ttl)
            if not await self._sleep_while_connected(r, renew_after(ttl)):
                r.state = ReservationState.CONNECTING  # the reservation went with it

    async def _sleep_while_connected(self, r: RelayReservation, seconds: float) -> bool:
        """Until it is time to renew (True), or the relay's connection is lost (False)."""
        waited = 0.0
        step = 1.0
        network = self.host.get_network()
        while waited < seconds:
            await self.sleep(min(step, seconds - waited))
            waited += step
            if r.relay.peer_id not in network.connections:
                log.info("lost the connection to relay %s", r.addr)
                return False
        return True

    async def _reserve(self, r: RelayReservation) -> float:
        """Dial, discover, reserve: the reservation's seconds left."""
        relay_id = r.relay.peer_id
        network = self.host.get_network()
        if relay_id not in network.connections:
            try:
                await self.host.connect(r.relay)
            except Exception as exc:
                raise UnreachableError(f"cannot reach relay {r.addr}: {exc}") from None
        if relay_id not in self.discovery.get_relays():
            # py-libp2p caches the protocols it read from the peerstore, for good: read
            # before identify had filled them in, an empty set kept this relay "not a
            # relay" at every later attempt (seen under load in the NAT tests).
            self.discovery._protocol_cache.pop(relay_id, None)
        await self.discovery.discover_relays()
        if relay_id not in self.discovery.get_relays():
            raise UnreachableError(
                f"{r.addr} offers no circuit relay (no /libp2p/circuit/relay/0.2.0/hop)"
            )
        if not await self.discovery.make_reservation(relay_id):
            raise UnreachableError(f"relay {r.addr} refused a reservation")
        info = self.discovery.get_relay_info(relay_id)
        expires = getattr(info, "reservation_expires_at", None)
        now = self.clock()
        r.expires = float(expires) if expires else None
        return (r.expires - now) if r.expires else float(DEFAULT_RESERVATION_SECONDS)

    # --- hole punching ------------------------------------------------------------------

    def _relayed_only(self, peer: ID) -> list[Any] | None:
        """The peer's relayed connections when it has no direct one, else None."""
        conns = self.host.get_network().get_connections(peer)
        kinds = [(connection_kind(c)[0], c) for c in conns]
        if not kinds or any(k == "direct" for k, _ in kinds):
            return None
        return [c for _, c in kinds]

    def _initiates(self, peer: ID, conns: Sequence[Any]) -> bool:
        """The side the relayed connection came in to initiates (DCUtR's rule)."""
        directions = {_direction(c) for c in conns}
        if "inbound" in directions:
            return True
        if "outbound" in directions:
            return False
        return self._me < peer.to_base58()

    async def _drive_punches(self, nursery: trio.Nursery) -> None:
        me = self.host.get_id()
        while True:
            network = self.host.get_network()
            for peer in list(network.connections):
                if peer == me:
                    continue
                record = self.punches.get(peer)
                conns = self._relayed_only(peer)
                if conns is None:
                    if record is not None and record.state is PunchState.PUNCHING:
                        self._upgraded(record)
                    continue
                if record is None or record.state is PunchState.DIRECT:
                    record = self.punches[peer] = PunchRecord(relayed_at=trio.current_time())
                if record.state is not PunchState.PUNCHING or record.attempts:
                    continue
                if self._initiates(peer, conns):
                    record.attempts = 1
                    nursery.start_soon(self._punch, peer, record)
                elif trio.current_time() - record.relayed_at > self._give_up_after:
                    record.state = PunchState.RELAYED  # the peer's attempts are over
            for peer in [p for p in self.punches if p not in network.connections]:
                del self.punches[peer]
            await self.sleep(DRIVE_EVERY)

    def _upgraded(self, record: PunchRecord) -> None:
        record.state = PunchState.DIRECT
        record.upgrade_seconds = round(trio.current_time() - record.relayed_at, 3)

    async def _punch(self, peer: ID, record: PunchRecord) -> None:
        for attempt in range(1, PUNCH_ATTEMPTS + 1):
            record.attempts = attempt
            self.counters.punches += 1
            ok = False
            with trio.move_on_after(self.settings.punch_timeout) as scope:
                ok = await self.dcutr.initiate_hole_punch(peer)
            if ok or self._relayed_only(peer) is None:
                self.counters.punch_successes += 1
                if record.state is PunchState.PUNCHING:
                    self._upgraded(record)
                log.info("direct connection to %s (hole punch)", peer)
                return
            if scope.cancelled_caught:
                self.counters.punch_timeouts += 1
            else:
                self.counters.punch_failures += 1
            if peer not in self.host.get_network().connections:
                return
        record.state = PunchState.RELAYED
        log.info("no direct connection to %s: staying relayed", peer)
