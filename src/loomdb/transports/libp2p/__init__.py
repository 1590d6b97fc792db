"""The node's libp2p networking: a host on the node key (Noise, Yamux, TCP) and the
sync protocol ``/loomdb/sync/1.0.0`` over its streams. See ``docs/p2p.md``.

py-libp2p is trio-only: everything here runs in a trio loop (the daemon's).
"""

from loomdb.transports.libp2p.channel import Libp2pChannel
from loomdb.transports.libp2p.host import (
    DEFAULT_P2P_ADDR,
    SYNC_PROTOCOL,
    Backoff,
    P2PHost,
    check_listen_free,
    parse_listen_addr,
    parse_peer_addr,
)

__all__ = [
    "DEFAULT_P2P_ADDR",
    "SYNC_PROTOCOL",
    "Backoff",
    "Libp2pChannel",
    "P2PHost",
    "check_listen_free",
    "parse_listen_addr",
    "parse_peer_addr",
]
