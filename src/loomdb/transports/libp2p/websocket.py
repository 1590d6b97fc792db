"""libp2p over WebSocket (``/ip4/HOST/tcp/PORT/ws``) beside TCP, for peers that
cannot open raw TCP sockets (browsers; js-libp2p's ``@libp2p/websockets``).

Plain ``ws`` only, no ``wss``: the connection is secured inside the WebSocket by
Noise, as over TCP, and a node that needs TLS in front puts a proxy there.
The upgrade is the host's (Noise only, Yamux): py-libp2p's swarm upgrades every
raw connection with its own upgrader whatever the transport; the one this
transport is given is kept by py-libp2p but not used.

Bounds, as over TCP: the swarm's inbound cap (``ConnectionConfig``) counts WebSocket
connections too, and they are upgraded within the same time-outs; a dial's WebSocket
handshake must finish within the host's connect time-out (an accepted one within
trio-websocket's 60 s); trio-websocket refuses a received message over 1 MiB and
queues a bounded number of them (a Noise frame is at most 65,535 bytes, so a
peer never needs more); :data:`MAX_WS_MESSAGE` bounds what is buffered per connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import multiaddr
from libp2p.abc import ITransport
from libp2p.custom_types import TMuxerOptions, TSecurityOptions
from libp2p.network.config import ConnectionConfig
from libp2p.transport.upgrader import TransportUpgrader
from libp2p.transport.websocket.transport import WebsocketConfig, WebsocketTransport

from loomdb.errors import ValidationError

MAX_WS_MESSAGE: Final = 1024 * 1024
TCP_NAMES: Final = (["ip4", "tcp"], ["ip6", "tcp"])
"""Protocol names of a TCP address; a WebSocket one adds ``ws``."""
WS_NAMES: Final = (["ip4", "tcp", "ws"], ["ip6", "tcp", "ws"])


def is_websocket(names: list[str]) -> bool:
    return names in WS_NAMES


def tcp_only(addrs: Sequence[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """The TCP addresses of ``addrs``, without the WebSocket ones."""
    return [a for a in addrs if not is_websocket([p.name for p in a.protocols()])]


def check_own_ports(addrs: Sequence[multiaddr.Multiaddr]) -> None:
    """A WebSocket address does not share its port with a TCP one (``ValidationError``):
    py-libp2p would multiplex the port between both, which reset js-libp2p's dials."""
    ports: dict[tuple[str, int, bool], multiaddr.Multiaddr] = {}
    for addr in addrs:
        names = [p.name for p in addr.protocols()]
        host = str(addr.value_for_protocol(names[0]))
        port = int(addr.value_for_protocol("tcp"))
        ws = is_websocket(names)
        other = ports.get((host, port, not ws))
        if port and other is not None:
            raise ValidationError(
                f"cannot listen on {addr} and {other}: TCP and WebSocket need a port each"
            )
        ports[(host, port, ws)] = addr


def websocket_transport(
    sec_opt: TSecurityOptions, muxer_opt: TMuxerOptions, *, handshake_timeout: float
) -> ITransport:
    """A WebSocket transport with the host's security and muxers and the bounds above."""
    config = WebsocketConfig(
        handshake_timeout=handshake_timeout,
        max_connections=ConnectionConfig().max_connections,
        max_message_size=MAX_WS_MESSAGE,
        # Not None: py-libp2p would then dial through $HTTP_PROXY (and print that on
        # stdout); libp2p dials go direct, over WebSocket as over TCP.
        proxy_url="",
    )
    return WebsocketTransport(TransportUpgrader(sec_opt, muxer_opt), config=config)
