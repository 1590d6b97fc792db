"""A stranger speaks garbage on every libp2p protocol a real node serves.

For each protocol the node announces (identify, ping, gossipsub, the Kad-DHT, the
circuit relay, hole punching, our sync protocol, ...), a host in this process opens
streams and sends bytes no honest peer would: random bytes, a length prefix far over
any limit, a truncated message, a valid length with garbage after it, nothing at all.
The node must stay up (it answers its API and writes documents) and keep talking
libp2p (a fresh peer still pings it). Seeded, so a failure replays.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from loomdb.identity.keys import NamedKey, SigningKey
from loomdb.transports.libp2p import P2PHost
from tests.doc_support import make_home
from tests.integration.nodes import Nodes, nodes
from tests.integration.test_p2p_e2e import cli, p2p_addr, write

pytestmark = pytest.mark.integration
WAIT = 20.0
SEED = 20261204
PING = TProtocol("/ipfs/ping/1.0.0")


@pytest.fixture
def cluster() -> Iterator[Nodes]:
    with nodes() as group:
        yield group


def payloads(rng: random.Random) -> list[bytes]:
    return [
        b"",
        rng.randbytes(1),
        rng.randbytes(64),
        rng.randbytes(5000),
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint length of ~2^63
        b"\xff\xff\xff\x7f",  # 268 MB announced
        b"\x80\x80\x80",  # a varint that never ends
        b"\x40" + rng.randbytes(10),  # 64 bytes announced, 10 sent
        b"\x0a" + rng.randbytes(10),  # the right length, garbage inside
    ]


def test_garbage_on_every_protocol_leaves_the_node_up(cluster: Nodes, tmp_path: Path) -> None:
    make_home(tmp_path / "a", NamedKey.generate_fingerprinted("shared"))
    a = cluster.launch(tmp_path / "a")
    cluster.wait_ready()
    rng = random.Random(SEED)
    tried: list[str] = []

    async def fuzz() -> None:
        host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
        async with host.run():
            a_id = ID.from_base58(await host.connect(p2p_addr(a)))
            with trio.fail_after(WAIT):
                while not (protocols := host.host.get_peerstore().get_protocols(a_id)):
                    await trio.sleep(0.05)  # identify has not told us yet
            for protocol in sorted(str(p) for p in protocols):
                tried.append(protocol)
                for data in payloads(rng):
                    with trio.move_on_after(2.0):
                        try:
                            stream = await host.host.new_stream(a_id, [TProtocol(protocol)])
                            if data:
                                await stream.write(data)
                            await stream.close()
                            await stream.read(1024)
                        except Exception:  # the node may reset us: that is its right
                            pass
                if not host.host.get_network().get_connections(a_id):
                    await host.connect(p2p_addr(a))  # it may drop us too; we come back

    anyio.run(fuzz, backend="trio")
    assert {"/ipfs/id/1.0.0", "/loomdb/sync/1.0.0"} <= set(tried), tried
    assert any(p.startswith("/meshsub/") for p in tried), tried
    assert a.proc.poll() is None, a.stderr()[-3000:]
    write(a, "main", "notes", "after", {"up": True})
    info = json.loads(cli(a, "p2p", "info", "--json").stdout)
    # gossipsub's reader raises on garbage: each such stream reset, and counted
    assert any(p.startswith("/meshsub/") for p in info["counters"]["handler_errors"]), info

    async def ping() -> None:
        fresh = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
        async with fresh.run():
            a_id = ID.from_base58(await fresh.connect(p2p_addr(a)))
            with trio.fail_after(WAIT):
                stream = await fresh.host.new_stream(a_id, [PING])
                probe = rng.randbytes(32)
                await stream.write(probe)
                assert await stream.read(32) == probe

    anyio.run(ping, backend="trio")
