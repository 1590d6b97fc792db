"""Another mDNS implementation for the interop test: a plain py-libp2p host with its
own ``enable_mDNS`` (its zeroconf binds every interface: run it only inside a
network namespace). Listens on ``ADDR``, prints its Peer ID, then one JSON line
per peer its mDNS discovers, and exits after ``SECONDS``.

    python -m tests.integration.pylibp2p_mdns_peer /ip4/10.78.0.2/tcp/4001 30
"""

from __future__ import annotations

import json
import sys

import multiaddr
import trio
from libp2p import new_host
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.peer.peerinfo import PeerInfo


async def main(addr: str, seconds: float) -> None:
    listen = multiaddr.Multiaddr(addr)
    host = new_host(listen_addrs=[listen], enable_mDNS=True)

    def found(info: PeerInfo) -> None:
        print(json.dumps({"found": info.peer_id.to_base58()}), flush=True)

    peerDiscovery.register_peer_discovered_handler(found)
    async with host.run(listen_addrs=[listen]):
        print(json.dumps({"peer_id": host.get_id().to_base58()}), flush=True)
        await trio.sleep(seconds)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], float(sys.argv[2]))
