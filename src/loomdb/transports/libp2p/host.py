"""``P2PHost``: the node's libp2p host, on its persistent Ed25519 node key.

* **Identity**: the node key of the home's keyring, so the host's Peer ID is the
  one ``loomdb id`` prints (``tests/unit/test_peer_id.py`` shows they match).
* **Security: Noise only.** py-libp2p's default also accepts secio and
  ``/plaintext/2.0.0`` (a plaintext dialer connected in our measurements); here
  a dialer that offers anything else fails to negotiate and is dropped.
* **Yamux** over **TCP** or **WebSocket** (``…/tcp/PORT/ws``, beside TCP or alone:
  :mod:`loomdb.transports.libp2p.websocket`), nothing else (no QUIC, mDNS, UPnP:
  each comes when something needs it).
* It runs in the caller's trio loop (py-libp2p is trio-only): ``async with
  host.run(): …``.
* **Gossipsub** (``/meshsub/1.2.0``, ``1.1.0``) runs on it unless ``gossip=False``,
  with py-libp2p's lossy defaults fixed and its drops counted
  (:mod:`loomdb.transports.libp2p.pubsub`); ``host.pubsub`` while it runs.

Listen addresses are ``/ip4/…/tcp/PORT`` or ``/ip6/…/tcp/PORT`` (``…/ws`` for
WebSocket); port 0 takes
any free port and :meth:`P2PHost.listen_addrs` gives the one chosen. py-libp2p
listens with ``SO_REUSEPORT``, so two hosts could share a port silently:
:func:`check_listen_free` binds each port without it first, and a busy one is
``AddressInUseError`` before anything is opened.

Bootstrap peers (``--peers``) are dialled at start and redialled whenever the
connection is lost, after a bounded exponential back-off (:class:`Backoff`)
that reads an injected ``sleep``.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PeerStoreError
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.tcp.tcp import TCP

from loomdb.errors import AddressInUseError, TransportError, UnreachableError, ValidationError
from loomdb.identity.keys import SigningKey
from loomdb.identity.peer_id import peer_id_from_public_key, public_key_from_peer_id
from loomdb.transports.announce import addrs_factory
from loomdb.transports.base import (
    DEFAULT_MAX_FRAME,
    DEFAULT_TIMEOUT,
    FrameHandler,
    RequestChannel,
    describe,
)
from loomdb.transports.libp2p.channel import DEFAULT_CONNECT_TIMEOUT, Libp2pChannel
from loomdb.transports.libp2p.hardening import HANDLER_ERRORS, harden
from loomdb.transports.libp2p.nat import NatSettings, NatTraversal, is_circuit, parse_circuit_addr
from loomdb.transports.libp2p.pubsub import NodePubsub, drops, make_pubsub, run_pubsub
from loomdb.transports.libp2p.server import ServerCounters, serve_sync_stream
from loomdb.transports.libp2p.stream import STREAM_ERRORS, SyncStream
from loomdb.transports.libp2p.websocket import (
    TCP_NAMES,
    check_own_ports,
    is_websocket,
    tcp_only,
    websocket_transport,
)

log = logging.getLogger("loomdb.p2p")

SYNC_PROTOCOL: Final = TProtocol("/loomdb/sync/1.0.0")
DEFAULT_P2P_PORT: Final = 9171
DEFAULT_P2P_ADDR: Final = f"/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}"
CHECK_EVERY: Final = 5.0
CLOSE_TIMEOUT: Final = 5.0  # how often a bootstrap peer's connection is looked at

_PARSE_ERRORS: Final = (ValueError, TypeError, LookupError)  # what multiaddr raises


# --- addresses -----------------------------------------------------------------------


def parse_listen_addr(text: str) -> multiaddr.Multiaddr:
    """``/ip4/HOST/tcp/PORT`` or ``/ip6/HOST/tcp/PORT``, ``…/ws`` for WebSocket (port 0:
    any free port)."""
    try:
        addr = multiaddr.Multiaddr(text)
        names = [p.name for p in addr.protocols()]
    except _PARSE_ERRORS as exc:
        raise ValidationError(f"bad multiaddr {text!r}: {exc}") from None
    if names not in TCP_NAMES and not is_websocket(names):
        raise ValidationError(
            f"cannot listen on {text!r}: expected /ip4/HOST/tcp/PORT or /ip6/HOST/tcp/PORT"
            " (…/ws for WebSocket)"
        )
    return addr


def parse_peer_addr(text: str) -> PeerInfo:
    """A peer to dial: ``/ip4/HOST/tcp/PORT/p2p/12D3KooW…`` (or ``/ip6/…``), or
    through a relay: ``/ip4/…/tcp/…/p2p/RELAY/p2p-circuit/p2p/12D3KooW…``."""
    if is_circuit(text):
        _, dest, addr = parse_circuit_addr(text)
        return PeerInfo(dest, [addr])
    try:
        addr = multiaddr.Multiaddr(text)
        names = [p.name for p in addr.protocols()]
        peer = addr.value_for_protocol("p2p") if names and names[-1] == "p2p" else None
    except _PARSE_ERRORS as exc:
        raise ValidationError(f"bad multiaddr {text!r}: {exc}") from None
    if peer is None or (names[:-1] not in TCP_NAMES and not is_websocket(names[:-1])):
        raise ValidationError(
            f"bad peer address {text!r}: expected /ip4/HOST/tcp/PORT/p2p/PEER_ID (…/ws/p2p/… for"
            " WebSocket)"
        )
    public_key_from_peer_id(str(peer))  # an Ed25519 Peer ID, or ValidationError
    transport = addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer}"))
    return PeerInfo(ID.from_base58(str(peer)), [transport])


def peer_id_arg(text: str) -> ID:
    public_key_from_peer_id(text)  # ValidationError for anything but an Ed25519 Peer ID
    return ID.from_base58(text)


def _host_port(addr: multiaddr.Multiaddr) -> tuple[str, int]:
    """``(host, port)`` of a listen address (:func:`parse_listen_addr`'s)."""
    family = next(p.name for p in addr.protocols())
    return str(addr.value_for_protocol(family)), int(addr.value_for_protocol("tcp"))


def check_listen_free(addrs: Sequence[multiaddr.Multiaddr]) -> None:
    """Bind each ``HOST:PORT`` (port 0 skipped) without ``SO_REUSEPORT`` and let go:
    a busy one is ``AddressInUseError``, an unusable one ``ValidationError``."""
    check_own_ports(addrs)
    for addr in addrs:
        host, port = _host_port(addr)
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUseError(
                        f"cannot listen on {addr}: the address is in use (another node?); "
                        "choose another with --p2p-addr MULTIADDR, or --no-p2p"
                    ) from None
                raise ValidationError(f"cannot listen on {addr}: {exc.strerror or exc}") from None


# --- reconnecting ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between redials: ``initial``, times ``factor`` after each failure, at
    most ``maximum`` seconds; back to ``initial`` after a success."""

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.maximum)


async def keep_connected(
    name: str,
    dial: Callable[[], Awaitable[None]],
    connected: Callable[[], bool],
    *,
    sleep: Callable[[float], Awaitable[None]] = trio.sleep,
    backoff: Backoff = Backoff(),
    check_every: float = CHECK_EVERY,
) -> None:
    """Keep a connection up until cancelled: dial; on failure wait the next back-off
    delay and dial again; once up, look again every ``check_every`` seconds."""
    delays = backoff.delays()
    while True:
        if connected():
            delays = backoff.delays()
            await sleep(check_every)
            continue
        try:
            await dial()
            log.info("connected to %s", name)
            delays = backoff.delays()
        except UnreachableError as exc:
            delay = next(delays)
            log.info("cannot reach %s (%s): again in %.1f s", name, exc.message, delay)
            await sleep(delay)


# --- the host ---------------------------------------------------------------------------


class Borrowed:
    """A :class:`RequestChannel` over a shared one: its ``aclose`` ends only this
    borrower's use."""

    def __init__(
        self, channel: RequestChannel, connected: Callable[[], bool] | None = None
    ) -> None:
        """``connected``: when given, a request is refused (``UnreachableError``) while it
        says False, so this borrower never makes the shared channel dial."""
        self._channel = channel
        self._connected = connected
        self._closed = False

    @property
    def max_frame(self) -> int:
        return self._channel.max_frame

    async def request(self, frame: bytes, *, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        if self._closed:
            raise TransportError("this channel is closed")
        if self._connected is not None and not self._connected():
            raise UnreachableError("the peer is not connected (and this channel does not dial)")
        return await self._channel.request(frame, timeout=timeout)

    async def aclose(self) -> None:
        self._closed = True


@dataclass
class P2PCounters:
    dials: int = 0
    dial_failures: int = 0
    streams_opened: int = 0
    server: ServerCounters = field(default_factory=ServerCounters)


class P2PHost:
    """The node's libp2p host; see the module doc."""

    def __init__(
        self,
        node_key: SigningKey,
        listen: Sequence[str],
        *,
        bootstrap: Sequence[str] = (),
        max_frame: int = DEFAULT_MAX_FRAME,
        backoff: Backoff = Backoff(),
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        gossip: bool = True,
        nat: NatSettings | None = None,
    ) -> None:
        """``gossip``: run gossipsub too (:mod:`~loomdb.transports.libp2p.pubsub`;
        ``self.pubsub`` while the host runs). ``nat``: relay service, reservations
        and hole punching (:mod:`~loomdb.transports.libp2p.nat`; relayed dials work
        without it too)."""
        harden()  # py-libp2p's stream faults that stop a node: see hardening.py
        self.peer_id: Final = peer_id_from_public_key(node_key.public_key)
        self._listen = [parse_listen_addr(a) for a in listen]
        if not self._listen:
            raise ValidationError("a libp2p host needs at least one listen address")
        check_own_ports(self._listen)
        self._bootstrap = [(a, parse_peer_addr(a)) for a in bootstrap]
        self.max_frame = max_frame
        self.connect_timeout = connect_timeout
        self._backoff = backoff
        self._sleep = sleep
        self.counters = P2PCounters()
        self._channels: dict[str, Libp2pChannel] = {}  # peer_channel's, by Peer ID
        # Peers disconnected on request, until dialled again: the DHT leaves them be.
        self.hands_off: set[ID] = set()
        key_pair = create_new_key_pair(node_key.seed)
        noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
        sec_opt = {NOISE_PROTOCOL_ID: noise}  # Noise only: see the module doc
        muxer_opt = {TProtocol(YAMUX_PROTOCOL_ID): Yamux}
        ws = websocket_transport(sec_opt, muxer_opt, handshake_timeout=connect_timeout)
        self.host: IHost = new_host(
            key_pair=key_pair,
            sec_opt=sec_opt,
            muxer_opt=muxer_opt,
            transports=[TCP(), ws],
            # Not the WebSocket addresses: given both kinds on one port py-libp2p would
            # share it between TCP and WebSocket (its PortDemultiplexer, which reset
            # js-libp2p's TCP dials in our tests); each listens on its own port.
            listen_addrs=tcp_only(self._listen),
            # Advertise what we listen on, only; but a node behind a NAT (--relays)
            # needs the address its relays see for hole punching.
            disable_identify_address_discovery=not (nat and nat.relays),
            # No dialling of peers on its own (its default aims at 50 connections):
            # the node dials what it is told to, and its bootstrap peers.
            connection_config=ConnectionConfig(min_connections=0, low_watermark=0),
            # 0.0.0.0 / :: advertised as the interfaces' addresses (identify, the DHT)
            addrs_factory=addrs_factory(),
        )
        assert self.host.get_id().to_base58() == self.peer_id
        self._gossip = make_pubsub(self.host) if gossip else None
        self.pubsub: NodePubsub | None = None  # set while running
        self.nat = NatTraversal(
            self.host,
            nat or NatSettings(hole_punch=False),
            delays=backoff.delays,
            sleep=sleep,
        )

    def check_free(self) -> None:
        """:func:`check_listen_free` on this host's listen addresses."""
        check_listen_free(self._listen)

    @asynccontextmanager
    async def run(self) -> AsyncIterator[P2PHost]:
        """Listen (and keep the bootstrap peers connected) until the block ends."""
        async with self.host.run(self._listen), trio.open_nursery() as nursery:
            if len(self.host.get_transport_addrs()) < len(self._listen):
                raise AddressInUseError(f"cannot listen on every one of {self._listen}")
            try:
                async with AsyncExitStack() as gossip:
                    if self._gossip is not None:
                        self.pubsub = await gossip.enter_async_context(run_pubsub(*self._gossip))
                    await gossip.enter_async_context(self.nat.run())
                    for text, info in self._bootstrap:
                        nursery.start_soon(self._keep, text, info)
                    yield self
            finally:
                self.pubsub = None
                nursery.cancel_scope.cancel()
                channels, self._channels = list(self._channels.values()), {}
                for channel in channels:
                    await channel.aclose()
                # Close every connection now (leaving the host's context alone does
                # not close their sockets).
                with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                    await self.host.close()

    async def _keep(self, text: str, info: PeerInfo) -> None:
        async def dial() -> None:
            await self._connect(info, text)

        await keep_connected(
            text,
            dial,
            lambda: info.peer_id in self.host.get_network().connections,
            sleep=self._sleep,
            backoff=self._backoff,
        )

    # --- what the node shows ----------------------------------------------------------

    def listen_addrs(self) -> list[str]:
        """The multiaddrs listened on, the chosen port for port 0, with ``/p2p/<id>``;
        then the relayed ones (``…/p2p-circuit/p2p/<id>``) of its reservations."""
        direct = [str(a) for a in self.host.get_transport_addrs()]
        return [f"{a}/p2p/{self.peer_id}" for a in direct] + self.nat.circuit_addrs()

    def peers(self) -> list[dict[str, Any]]:
        """Connected peers: Peer ID, addresses known, and whether it dialled us."""
        network = self.host.get_network()
        out = []
        for peer, conns in sorted(network.connections.items(), key=lambda kv: str(kv[0])):
            try:
                addrs = sorted({str(a) for a in self.host.get_peerstore().addrs(peer)})
            except PeerStoreError:  # connected, its addresses not (yet, or no longer) known
                addrs = []
            out.append(
                {
                    "peer_id": peer.to_base58(),
                    "addrs": addrs,
                    "connections": len(conns),
                    "connection_types": self.nat.peer_connections(peer),
                }
            )
        return out

    def info(self) -> dict[str, Any]:
        server = self.counters.server
        return {
            "peer_id": self.peer_id,
            "listen": self.listen_addrs(),
            "protocols": [SYNC_PROTOCOL],
            "security": [NOISE_PROTOCOL_ID],
            "muxers": [YAMUX_PROTOCOL_ID],
            "peers": self.peers(),
            "bootstrap": [text for text, _ in self._bootstrap],
            "counters": {
                "dials": self.counters.dials,
                "dial_failures": self.counters.dial_failures,
                "streams_opened": self.counters.streams_opened,
                "streams_served": server.streams,
                "frames_served": server.frames,
                "bytes_in": server.bytes_in,
                "bytes_out": server.bytes_out,
                "refused": dict(server.refused),
                "handler_errors": dict(HANDLER_ERRORS),
            },
            "pubsub": self.pubsub_info(),
            "nat": self.nat.info(),
        }

    def pubsub_info(self) -> dict[str, Any] | None:
        """Gossipsub's state: topics joined, peers in them, py-libp2p's drops."""
        if self.pubsub is None:
            return None
        peer_topics = self.pubsub.peer_topics
        return {
            "protocols": [str(p) for p in self.pubsub.protocols],
            "topics": len(self.pubsub.topic_ids),
            "peers": len(self.pubsub.peers),
            "topic_peers": {t: len(peer_topics.get(t, ())) for t in sorted(self.pubsub.topic_ids)},
            "drops": drops(),
        }

    # --- connecting ------------------------------------------------------------------

    async def connect(self, addr: str) -> str:
        """Dial ``addr`` (``…/p2p/<Peer ID>``); the peer's id. ``UnreachableError`` when
        nobody answers as that peer within the connect time-out."""
        info = parse_peer_addr(addr)
        if info.peer_id.to_base58() == self.peer_id:
            raise ValidationError("that is this node's own address")
        await self._connect(info, addr)
        return info.peer_id.to_base58()

    async def _connect(self, info: PeerInfo, name: str) -> None:
        self.counters.dials += 1
        self.hands_off.discard(info.peer_id)
        # A failed dial (a redial while the peer was away, a DHT query) puts the
        # peer in py-libp2p's 60-second "negative cache", which refuses every dial
        # to it meanwhile: a dial the node decides on is tried.
        network: Any = self.host.get_network()
        network.unblock_peer(info.peer_id)
        try:
            with anyio.fail_after(self.connect_timeout):
                if info.addrs and is_circuit(info.addrs[0]):
                    await self.nat.dial_circuit(str(info.addrs[0]))
                else:
                    await self.host.connect(info)
        except UnreachableError:
            self.counters.dial_failures += 1
            raise
        except TimeoutError:
            self.counters.dial_failures += 1
            raise UnreachableError(
                f"cannot reach {name}: no connection within {self.connect_timeout} s"
            ) from None
        except STREAM_ERRORS as exc:
            self.counters.dial_failures += 1
            raise UnreachableError(f"cannot reach {name}: {describe(exc)}") from None

    async def disconnect(self, peer: str) -> bool:
        """Close every connection to ``peer``; whether there was one."""
        peer_id = peer_id_arg(peer)
        if peer_id not in self.host.get_network().connections:
            return False
        self.hands_off.add(peer_id)
        try:
            await self.host.disconnect(peer_id)
        except STREAM_ERRORS as exc:
            log.debug("disconnecting %s: %s", peer, describe(exc))
        return True

    # --- sync streams ----------------------------------------------------------------

    def serve_sync(self, handler_for: Callable[[str], FrameHandler]) -> None:
        """Answer ``/loomdb/sync/1.0.0`` streams: each with ``handler_for(peer)``, the
        handler of the peer's Peer ID as Noise authenticated it."""

        async def on_stream(stream: INetStream) -> None:
            peer = stream.muxed_conn.peer_id.to_base58()
            await serve_sync_stream(
                stream,
                handler_for(peer),
                max_frame=self.max_frame,
                counters=self.counters.server,
                peer=peer,
            )

        self.host.set_stream_handler(SYNC_PROTOCOL, on_stream)

    async def open_sync_stream(self, target: str, timeout: float) -> SyncStream:
        """A new sync stream to ``target``: a multiaddr ending in ``/p2p/<id>``, or the
        Peer ID of a peer this host knows addresses of (connected, or dialled once)."""
        if target.startswith("/"):
            info = parse_peer_addr(target)
        else:
            peer_id = peer_id_arg(target)
            try:
                # A peer that dialled this node may have no address here yet (its
                # signed record comes later): its connection is enough.
                connected = peer_id in self.host.get_network().connections
                addrs = [] if connected else self.host.get_peerstore().addrs(peer_id)
            except PeerStoreError:  # gone, and its addresses with it (or never known)
                raise UnreachableError(f"cannot reach {target}: no address known") from None
            info = PeerInfo(peer_id, addrs)
        if info.peer_id.to_base58() == self.peer_id:
            raise ValidationError("a node does not sync with itself")
        try:
            with anyio.fail_after(timeout):
                if info.peer_id not in self.host.get_network().connections:
                    await self._connect(info, target)
                stream = await self.host.new_stream(info.peer_id, [SYNC_PROTOCOL])
        except TimeoutError:
            raise UnreachableError(
                f"cannot open a sync stream to {target} within {timeout} s"
            ) from None
        except STREAM_ERRORS as exc:
            raise UnreachableError(
                f"cannot open a sync stream to {target}: {describe(exc)}"
            ) from None
        self.counters.streams_opened += 1
        return stream

    def channel(
        self, target: str, *, max_frame: int | None = None, connect_timeout: float | None = None
    ) -> Libp2pChannel:
        """A request channel to ``target`` (see :meth:`open_sync_stream`)."""
        if target.startswith("/"):
            parse_peer_addr(target)  # a bad address fails now, not at the first request
        else:
            peer_id_arg(target)
        return Libp2pChannel(
            self,
            target,
            max_frame=self.max_frame if max_frame is None else max_frame,
            connect_timeout=self.connect_timeout if connect_timeout is None else connect_timeout,
        )

    def peer_channel(self, target: str, *, dial: bool = True) -> RequestChannel:
        """The host's one channel to ``target``'s peer, shared: every caller's requests
        go over the same long-lived stream, one at a time (a stream that died is
        reopened by the next request, dialling the peer if need be). With ``dial=False``
        this caller's requests are refused while the peer is not connected: the work
        done for connected peers (head exchange) never dials back a peer that just went
        or was told to go. Closing what this returns leaves the shared channel open;
        the host closes it when it stops."""
        peer = str(parse_peer_addr(target).peer_id) if target.startswith("/") else target
        peer_id = peer_id_arg(peer)
        shared = self._channels.get(peer)
        if shared is None:
            shared = self._channels[peer] = self.channel(target)
        elif target.startswith("/"):
            shared.target = target  # dial the address given last, when it must dial
        if dial:
            return Borrowed(shared)
        return Borrowed(shared, lambda: peer_id in self.host.get_network().connections)
