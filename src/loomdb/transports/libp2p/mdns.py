"""Finding peers on the LAN by mDNS (``loomdb start --mdns``), per the libp2p mDNS
spec (``discovery/mdns.md``), so js-, go- and rust-libp2p nodes find us and we them:

* the service is ``_p2p._udp.local.``; each node registers an instance with a
  random name, and one TXT string ``dnsaddr=<multiaddr>/p2p/<Peer ID>`` per
  address (py-libp2p writes ``dnsaddr2=…``, ``dnsaddr3=…``: read too);
* zeroconf runs **only on the interfaces that carry our listen addresses**
  (``choose_interfaces``): a node listening on ``10.0.0.5`` speaks mDNS on
  that interface alone; one on ``0.0.0.0`` on every non-loopback IPv4 interface,
  chosen explicitly, listed in ``p2p info`` and logged. Loopback is never used
  (it has no multicast). IPv4 only. py-libp2p's own ``MDNSDiscovery`` binds every
  interface and looks up the default route by "connecting" to 8.8.8.8: not used.

The records, the interface choice and the checks are in
:mod:`~loomdb.transports.libp2p.mdns_records`. What is heard is checked before
anything is dialled (:func:`~loomdb.transports.libp2p.mdns_records.peer_from_txt`): the
addresses must parse as ours (:func:`~loomdb.transports.libp2p.host.parse_peer_addr`:
``/ip4/…/tcp/…/p2p/<Ed25519 Peer ID>``), all name one peer, lie inside the subnet
of one of the interfaces mDNS runs on (a LAN peer is reached on the LAN), at most
:attr:`MdnsSettings.max_addrs` of them; no circuit addresses; our own Peer ID and
service are ignored.

Bounds: at most :attr:`MdnsSettings.max_peers` peers are remembered (more are
counted and ignored) and forgotten when they say goodbye, or ``expiry`` seconds
after they were last heard or connected; the browser's events reach trio through
a memory channel of ``queue`` items (a full one drops and counts); one name is
resolved at a time; one dial at a time, at most one every ``dial_interval``
seconds; a peer that fails waits ``backoff``'s delays (doubling, capped) before
the next try. A connected peer is not dialled; one that drops is dialled again
while it is still announced. Once connected, a peer gets what every connection
gets (gossip, head exchange on connect).

zeroconf's receiving socket is ``*:5353`` (every responder's is): on Linux it also
hears the group on interfaces where another program joined it. Nothing is sent
there, and nothing heard from there passes the subnet check. ``IP_MULTICAST_ALL=0``
would stop the hearing, but with two such sockets in one namespace Linux 6.18 gave
one interface's packets to the other socket (measured): not set.

Threads: zeroconf runs its own thread and loop; its browser calls us on its own
thread, which only hands the event to trio (``TrioToken.run_sync_soon``, never
blocking). Blocking zeroconf calls (start, register, resolve, close) run in trio
worker threads, so the trio loop never waits on them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import anyio.to_thread
import trio
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from loomdb.errors import LoomError, TransportError
from loomdb.transports.libp2p.host import Backoff, parse_peer_addr
from loomdb.transports.libp2p.mdns_records import (
    SERVICE_TYPE,
    Interface,
    advertised_addrs,
    choose_interfaces,
    encode_txt,
    local_interfaces,
    parse_txt,
    peer_from_txt,
)

log = logging.getLogger("loomdb.p2p.mdns")

NAME_LENGTH: Final = 32  # the spec allows up to 63 random characters
DIAL_BACKOFF: Final = Backoff(initial=2.0, factor=2.0, maximum=120.0)


@dataclass(frozen=True, slots=True)
class MdnsSettings:
    """The bounds of :class:`MdnsDiscovery` (see the module doc)."""

    max_peers: int = 64
    max_addrs: int = 4
    expiry: float = 300.0
    queue: int = 64
    dial_interval: float = 0.5
    dial_timeout: float = 10.0
    resolve_timeout: float = 3.0
    tick: float = 0.5  # how often the dialler looks for a peer due
    backoff: Backoff = DIAL_BACKOFF


# --- what was discovered -----------------------------------------------------------------


@dataclass(slots=True)
class Discovered:
    peer: str
    addrs: list[str]
    service: str
    seen: float
    failures: int = 0
    next_dial: float = 0.0


@dataclass(slots=True)
class MdnsCounters:
    announcements: int = 0  # services heard (added or updated)
    resolved: int = 0
    unresolved: int = 0
    invalid: int = 0  # nothing usable in the TXT record
    own: int = 0  # our own announcement
    full: int = 0  # ignored: max_peers already known
    events_dropped: int = 0  # the browser's queue was full
    dials: int = 0
    dial_failures: int = 0


class DiscoveredPeers:
    """The peers heard of, bounded, with each one's dial back-off. Pure: ``now`` is
    given (seconds, any monotonic clock)."""

    def __init__(self, settings: MdnsSettings, counters: MdnsCounters) -> None:
        self._settings = settings
        self._counters = counters
        self._peers: dict[str, Discovered] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def get(self, peer: str) -> Discovered | None:
        return self._peers.get(peer)

    def heard(self, service: str, peer: str, addrs: list[str], now: float) -> bool:
        """``service`` announced ``peer`` at ``addrs``; False when the table is full."""
        known = self._peers.get(peer)
        if known is None:
            if len(self._peers) >= self._settings.max_peers:
                self._counters.full += 1
                return False
            self._peers[peer] = Discovered(peer, addrs, service, now)
            return True
        if known.addrs != addrs:  # new addresses: worth a try at once
            known.failures, known.next_dial = 0, now
        known.addrs, known.service, known.seen = addrs, service, now
        return True

    def removed(self, service: str) -> None:
        """The service said goodbye (or its record expired)."""
        for peer in [p for p, d in self._peers.items() if d.service == service]:
            del self._peers[peer]

    def expire(self, now: float, connected: Callable[[str], bool]) -> None:
        """Forget the peers neither connected nor heard for ``expiry`` seconds (zeroconf
        tells of a service once, not again while it lives: a connection keeps it)."""
        for d in self._peers.values():
            if connected(d.peer):
                d.seen = now
        old = [p for p, d in self._peers.items() if now - d.seen > self._settings.expiry]
        for peer in old:
            del self._peers[peer]

    def due(self, now: float, connected: Callable[[str], bool]) -> Discovered | None:
        """The next peer to dial: not connected, its back-off over (the longest waiting)."""
        ready = [d for d in self._peers.values() if d.next_dial <= now and not connected(d.peer)]
        return min(ready, key=lambda d: d.next_dial, default=None)

    def dialled(self, peer: str, ok: bool, now: float) -> None:
        known = self._peers.get(peer)
        if known is None:
            return
        if ok:  # a connection that drops is dialled again after the first delay
            known.failures, known.next_dial = 0, now + self._settings.backoff.initial
            return
        known.failures += 1
        b = self._settings.backoff
        delay = min(b.initial * b.factor ** (known.failures - 1), b.maximum)
        known.next_dial = now + delay

    def list(self) -> list[Discovered]:
        return sorted(self._peers.values(), key=lambda d: d.peer)


# --- the running part ----------------------------------------------------------------------


Dial = Callable[[str, Sequence[str]], Awaitable[None]]
"""Connect to a peer (Peer ID) at one of its addresses; ``LoomError`` when it cannot."""


@dataclass
class MdnsHost:
    """What discovery needs of the libp2p host (a :class:`P2PHost` gives it with
    :func:`host_hooks`; tests give fakes)."""

    peer_id: str
    transport_addrs: Callable[[], list[str]]
    connected: Callable[[str], bool]
    dial: Dial


class MdnsDiscovery:
    """Announce this node and find others on the chosen interfaces while :meth:`run`
    runs; see the module doc."""

    def __init__(
        self,
        host: MdnsHost,
        listen: Sequence[str],
        settings: MdnsSettings = MdnsSettings(),
        *,
        interfaces: Sequence[Interface] | None = None,
        clock: Callable[[], float] = trio.current_time,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
    ) -> None:
        """``interfaces``: what this machine has (default: :func:`local_interfaces`);
        mDNS runs on those :func:`choose_interfaces` picks for ``listen``."""
        self._host = host
        self.settings = settings
        self.interfaces = choose_interfaces(
            listen, local_interfaces() if interfaces is None else interfaces
        )
        self.wildcard = any(a.startswith("/ip4/0.0.0.0/") for a in listen)
        self.counters = MdnsCounters()
        self.peers = DiscoveredPeers(settings, self.counters)
        self._clock = clock
        self._sleep = sleep
        self.service_name = (
            "".join(
                secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(NAME_LENGTH)
            )
            + "."
            + SERVICE_TYPE
        )
        self.advertised: list[str] = []
        self.running = False
        self.registered = False
        self._zc: Zeroconf | None = None

    def info(self) -> dict[str, Any]:
        c = self.counters
        return {
            "enabled": True,
            "running": self.running,
            "announced": self.registered,
            "service": SERVICE_TYPE,
            "interfaces": [f"{i.name} {i.ip}/{i.prefix}" for i in self.interfaces],
            "advertised": list(self.advertised),
            "discovered": len(self.peers),
            "peers": [
                {
                    "peer_id": d.peer,
                    "addrs": list(d.addrs),
                    "connected": self._host.connected(d.peer),
                    "failures": d.failures,
                }
                for d in self.peers.list()
            ],
            "counters": {
                "announcements": c.announcements,
                "resolved": c.resolved,
                "unresolved": c.unresolved,
                "invalid": c.invalid,
                "own": c.own,
                "full": c.full,
                "events_dropped": c.events_dropped,
                "dials": c.dials,
                "dial_failures": c.dial_failures,
            },
        }

    # --- lifecycle -----------------------------------------------------------------------

    @asynccontextmanager
    async def run(self) -> AsyncIterator[MdnsDiscovery]:
        """Start zeroconf on the chosen interfaces, register, browse and dial until the
        block ends; then say goodbye and close (bounded)."""
        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[tuple[str, ServiceStateChange]](
            self.settings.queue
        )

        def on_change(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:  # on zeroconf's browser thread: hand over, never block
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(self._enqueue, send, name, state_change)

        ips = [i.ip for i in self.interfaces]
        try:
            zc = await anyio.to_thread.run_sync(
                partial(Zeroconf, interfaces=ips, ip_version=IPVersion.V4Only, use_asyncio=False)
            )
        except (OSError, RuntimeError) as exc:  # no such address any more, no multicast
            raise TransportError(f"--mdns: cannot run mDNS on {', '.join(ips)}: {exc}") from None
        self._zc = zc
        browser: ServiceBrowser | None = None
        where = ", ".join(f"{i.name} ({i.ip})" for i in self.interfaces)
        if self.wildcard:  # said by default: the user did not name these interfaces
            log.warning(
                "mdns on %s: every non-loopback IPv4 interface, for a 0.0.0.0 listen address "
                "(--p2p-addr /ip4/<address>/tcp/PORT to choose)",
                where,
            )
        else:
            log.info("mdns on %s", where)
        try:
            self.advertised = advertised_addrs(
                self._host.transport_addrs(), self.interfaces, self._host.peer_id
            )
            info = ServiceInfo(
                SERVICE_TYPE,
                self.service_name,
                port=_first_port(self.advertised),
                properties=encode_txt(self.advertised),
                server=f"{self.service_name.split('.', 1)[0]}.local.",
                parsed_addresses=ips,
            )
            browser = await anyio.to_thread.run_sync(
                partial(ServiceBrowser, zc, SERVICE_TYPE, handlers=[on_change])
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._register, zc, info)  # probing takes ~1.5 s
                nursery.start_soon(self._resolve_loop, receive)
                nursery.start_soon(self._dial_loop)
                self.running = True
                try:
                    yield self
                finally:
                    self.running = False
                    nursery.cancel_scope.cancel()
        finally:
            self._zc = None
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 5.0):
                if browser is not None:
                    await anyio.to_thread.run_sync(browser.cancel, abandon_on_cancel=True)
                await anyio.to_thread.run_sync(zc.close, abandon_on_cancel=True)  # goodbyes

    async def _register(self, zc: Zeroconf, info: ServiceInfo) -> None:
        try:
            await anyio.to_thread.run_sync(zc.register_service, info, abandon_on_cancel=True)
            self.registered = True
        except Exception as exc:  # a name conflict, a closing instance: others still find
            log.warning("mdns: cannot announce this node: %s", exc)

    def _enqueue(
        self,
        send: trio.MemorySendChannel[tuple[str, ServiceStateChange]],
        name: str,
        change: ServiceStateChange,
    ) -> None:
        try:
            send.send_nowait((name, change))
        except trio.WouldBlock:
            self.counters.events_dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    # --- hearing ------------------------------------------------------------------------------

    async def _resolve_loop(
        self, receive: trio.MemoryReceiveChannel[tuple[str, ServiceStateChange]]
    ) -> None:
        async for name, change in receive:
            if name.lower() == self.service_name.lower():
                self.counters.own += 1
                continue
            if change is ServiceStateChange.Removed:
                self.peers.removed(name)
                continue
            self.counters.announcements += 1
            text = await anyio.to_thread.run_sync(self._resolve, name, abandon_on_cancel=True)
            self.heard(name, text)

    def _resolve(self, name: str) -> bytes | None:
        """The TXT rdata of ``name`` (blocking, on a worker thread), or None."""
        zc = self._zc
        if zc is None:
            return None
        try:
            info = zc.get_service_info(
                SERVICE_TYPE, name, timeout=int(self.settings.resolve_timeout * 1000)
            )
        except Exception as exc:  # zeroconf's own errors, a closing instance
            log.debug("mdns: cannot resolve %s: %s", name, exc)
            return None
        return None if info is None else bytes(info.text or b"")

    def heard(self, name: str, text: bytes | None) -> None:
        """A resolved announcement: remember its peer (or count why not)."""
        if text is None:
            self.counters.unresolved += 1
            return
        self.counters.resolved += 1
        found = peer_from_txt(text, self._host.peer_id, self.interfaces, self.settings.max_addrs)
        if found is None:
            if any(self._host.peer_id in v for v in parse_txt(text)):
                self.counters.own += 1
            else:
                self.counters.invalid += 1
            return
        peer, addrs = found
        new = peer not in self.peers
        if self.peers.heard(name, peer, addrs, self._clock()) and new:
            log.info("mdns: found %s at %s", peer, " ".join(addrs))

    # --- dialling -----------------------------------------------------------------------------

    async def _dial_loop(self) -> None:
        while True:
            now = self._clock()
            self.peers.expire(now, self._host.connected)
            due = self.peers.due(now, self._host.connected)
            if due is None:
                await self._sleep(self.settings.tick)
                continue
            await self.dial(due)
            await self._sleep(self.settings.dial_interval)

    async def dial(self, due: Discovered) -> bool:
        """Dial one discovered peer (bounded by ``dial_timeout``); whether it connected."""
        self.counters.dials += 1
        ok = False
        with trio.move_on_after(self.settings.dial_timeout):
            try:
                await self._host.dial(due.peer, list(due.addrs))
                ok = True
            except LoomError as exc:
                log.info("mdns: cannot reach %s: %s", due.peer, exc.message)
        if ok:
            log.info("mdns: connected to %s", due.peer)
        else:
            self.counters.dial_failures += 1
        self.peers.dialled(due.peer, ok, self._clock())
        return ok


def _first_port(addrs: Sequence[str]) -> int:
    for addr in addrs:
        return int(parse_peer_addr(addr).addrs[0].value_for_protocol("tcp"))
    return 0


def host_hooks(p2p: Any) -> MdnsHost:
    """The :class:`MdnsHost` of a running :class:`~loomdb.transports.libp2p.P2PHost`:
    its dial tries each address in turn through ``P2PHost.connect`` (Noise, the
    host's connect time-out), after lifting py-libp2p's 60 s "negative cache" of
    failed peers (our back-off decides when to retry) and with the peer's other
    addresses forgotten (py-libp2p would dial only the first it knows)."""
    from libp2p.peer.id import ID

    network: Any = p2p.host.get_network()
    peerstore = p2p.host.get_peerstore()

    def connected(peer: str) -> bool:
        return ID.from_base58(peer) in network.connections

    async def dial(peer: str, addrs: Sequence[str]) -> None:
        error: LoomError | None = None
        peer_id = ID.from_base58(peer)
        for addr in addrs:
            network.unblock_peer(peer_id)
            # py-libp2p dials one address per transport class of those it knows (its
            # "smart address selection"): the first one it was given, however dead.
            # Forget the others (the peer is not connected), so it dials this one.
            peerstore.clear_addrs(peer_id)
            try:
                await p2p.connect(addr)
                return
            except LoomError as exc:
                error = exc
        if error is not None:
            raise error

    return MdnsHost(
        peer_id=p2p.peer_id,
        transport_addrs=lambda: [str(a) for a in p2p.host.get_transport_addrs()],
        connected=connected,
        dial=dial,
    )
