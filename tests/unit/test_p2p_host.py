"""``P2PHost`` in one process, real libp2p on 127.0.0.1 (trio only): its identity,
addresses, Noise-only security, connect/disconnect, and the bootstrap back-off
(with a fake sleep)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.exceptions import SwarmException
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from loomdb.errors import AddressInUseError, TransportError, UnreachableError, ValidationError
from loomdb.identity.keys import SigningKey
from loomdb.identity.peer_id import peer_id_from_public_key
from loomdb.transports.libp2p import P2PHost, check_listen_free, parse_listen_addr
from loomdb.transports.libp2p.host import Backoff, keep_connected, parse_peer_addr

pytestmark = pytest.mark.anyio

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
WAIT = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.fixture
async def two_hosts() -> AsyncIterator[tuple[P2PHost, P2PHost]]:
    a = P2PHost(SigningKey.generate(), LOOPBACK, connect_timeout=WAIT)
    b = P2PHost(SigningKey.generate(), LOOPBACK, connect_timeout=WAIT)
    async with AsyncExitStack() as stack:
        for host in (a, b):
            await stack.enter_async_context(host.run())
        yield a, b


async def test_the_host_is_the_node_key_and_shows_the_port_it_listens_on() -> None:
    key = SigningKey(b"\x07" * 32)
    host = P2PHost(key, LOOPBACK)
    assert host.peer_id == peer_id_from_public_key(key.public_key)
    async with host.run():
        [addr] = host.listen_addrs()
        prefix, _, rest = addr.partition("/ip4/127.0.0.1/tcp/")
        port, _, peer = rest.partition("/p2p/")
        assert prefix == "" and int(port) > 0 and peer == host.peer_id
        with pytest.raises(AddressInUseError):  # it really holds that port
            check_listen_free([parse_listen_addr(f"/ip4/127.0.0.1/tcp/{port}")])


async def test_two_hosts_connect_and_disconnect(two_hosts: tuple[P2PHost, P2PHost]) -> None:
    a, b = two_hosts
    assert await a.connect(b.listen_addrs()[0]) == b.peer_id
    assert [p["peer_id"] for p in a.peers()] == [b.peer_id]
    with trio.fail_after(WAIT):
        while not b.peers():  # b learns of the connection as it completes
            await trio.sleep(0.01)
    assert b.peers()[0]["peer_id"] == a.peer_id
    assert await a.disconnect(b.peer_id)
    assert a.peers() == []
    assert not await a.disconnect(b.peer_id)
    info = a.info()
    assert info["peer_id"] == a.peer_id and info["security"] == ["/noise"]
    assert info["counters"]["dials"] == 1


async def test_the_peer_channel_is_one_stream_shared_by_its_borrowers(
    two_hosts: tuple[P2PHost, P2PHost],
) -> None:
    a, b = two_hosts

    async def echo(frame: bytes) -> bytes:
        return frame[::-1]

    b.serve_sync(lambda peer: echo)
    first, second = a.peer_channel(b.listen_addrs()[0]), a.peer_channel(b.peer_id)
    assert await first.request(b"ab", timeout=WAIT) == b"ba"
    await first.aclose()  # this borrower is done; the shared channel is not
    with pytest.raises(TransportError):
        await first.request(b"ab", timeout=WAIT)
    assert await second.request(b"cd", timeout=WAIT) == b"dc"
    assert a.counters.streams_opened == 1
    assert b.counters.server.streams == 1 and b.counters.server.frames == 2


async def test_a_peer_channel_that_may_not_dial_does_not_dial_back_a_peer_that_went(
    two_hosts: tuple[P2PHost, P2PHost],
) -> None:
    """Work done for connected peers (head exchange) borrows with ``dial=False``: once
    the peer went, its requests are refused and nothing dials it; a borrower that may
    dial (a replicator, a sync) brings the connection back."""
    a, b = two_hosts

    async def echo(frame: bytes) -> bytes:
        return frame

    b.serve_sync(lambda peer: echo)
    await a.connect(b.listen_addrs()[0])
    quiet = a.peer_channel(b.peer_id, dial=False)
    assert await quiet.request(b"x", timeout=WAIT) == b"x"
    assert await b.disconnect(a.peer_id)  # b sends a away; a was told nothing
    with trio.fail_after(WAIT):
        while a.peers():
            await trio.sleep(0.01)
    with pytest.raises(UnreachableError, match="not connected"):
        await quiet.request(b"y", timeout=WAIT)
    assert a.peers() == [] and a.counters.dials == 1
    loud = a.peer_channel(b.peer_id)
    try:
        reply = await loud.request(b"z", timeout=WAIT)
    except TransportError:  # the stream the disconnect reset: the next request reopens
        reply = await loud.request(b"z", timeout=WAIT)
    assert reply == b"z"
    assert [p["peer_id"] for p in a.peers()] == [b.peer_id]
    assert await quiet.request(b"w", timeout=WAIT) == b"w"  # connected again: served


async def test_peers_lists_a_connected_peer_whose_addresses_are_not_known(
    two_hosts: tuple[P2PHost, P2PHost],
) -> None:
    """A connected peer with no addresses in the peerstore (mDNS clears them before a
    dial; expired ones raise too) is listed with none, not an internal error."""
    a, b = two_hosts
    await a.connect(b.listen_addrs()[0])
    store = a.host.get_peerstore()
    store.peer_data_map.pop(next(iter(a.host.get_network().connections)))
    [peer] = a.peers()
    assert peer["peer_id"] == b.peer_id and peer["addrs"] == []


async def test_a_plaintext_dialer_is_refused(two_hosts: tuple[P2PHost, P2PHost]) -> None:
    _, b = two_hosts
    key_pair = create_new_key_pair(b"\x09" * 32)
    plain = new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)},
    )
    async with plain.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        with trio.fail_after(WAIT), pytest.raises(SwarmException, match="connect"):
            await plain.connect(info_from_p2p_addr(multiaddr.Multiaddr(b.listen_addrs()[0])))
        assert b.peers() == [] and plain.get_connected_peers() == []
        await plain.close()


async def test_a_dial_to_nobody_or_to_the_wrong_peer_is_unreachable(
    two_hosts: tuple[P2PHost, P2PHost],
) -> None:
    a, b = two_hosts
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    with pytest.raises(UnreachableError):
        await a.connect(f"/ip4/127.0.0.1/tcp/{free}/p2p/{b.peer_id}")
    impostor = peer_id_from_public_key(SigningKey.generate().public_key)
    port = b.listen_addrs()[0].split("/tcp/")[1].split("/")[0]
    with pytest.raises(UnreachableError):  # b answers, but Noise proves it is not the impostor
        await a.connect(f"/ip4/127.0.0.1/tcp/{port}/p2p/{impostor}")
    assert a.peers() == []


@pytest.mark.parametrize(
    "text",
    ["", "nonsense", "/ip4/127.0.0.1", "/ip4/127.0.0.1/udp/1", "/ip4/1.2.3.4/tcp/1/p2p/x"],
)
def test_bad_listen_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_listen_addr(text)


@pytest.mark.parametrize(
    "text",
    [
        "/ip4/127.0.0.1/tcp/1",  # no peer
        "/ip4/127.0.0.1/tcp/1/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # not Ed25519
        "/p2p/12D3KooWCugzopk9fYBy1pvYVi94Qr2y9PL4CjSpYZUaXir3YWb7",  # no address
        "/dns4/example.org/tcp/1/p2p/12D3KooWCugzopk9fYBy1pvYVi94Qr2y9PL4CjSpYZUaXir3YWb7",
        "garbage",
    ],
)
def test_bad_peer_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_peer_addr(text)


def test_a_busy_port_is_address_in_use() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(AddressInUseError):
            check_listen_free([parse_listen_addr(f"/ip4/127.0.0.1/tcp/{port}")])
    check_listen_free([parse_listen_addr(f"/ip4/127.0.0.1/tcp/{port}")])  # free again


class Done(Exception):
    pass


async def test_a_bootstrap_peer_is_redialled_with_a_bounded_back_off() -> None:
    waits: list[float] = []
    up = False
    attempts = 0

    async def dial() -> None:
        nonlocal up, attempts
        attempts += 1
        if attempts in (1, 2, 3, 4, 5, 7):
            raise UnreachableError("down")
        up = True

    async def sleep(seconds: float) -> None:
        nonlocal up
        waits.append(seconds)
        if len(waits) == 6:  # connected once: the link drops
            up = False
        if len(waits) == 9:
            raise Done
        await trio.lowlevel.checkpoint()

    with pytest.raises(Done):
        await keep_connected(
            "peer",
            dial,
            lambda: up,
            sleep=sleep,
            backoff=Backoff(initial=1.0, factor=2.0, maximum=8.0),
            check_every=5.0,
        )
    # five failures (1, 2, 4, 8, 8: capped), up (checked every 5 s), lost, one failure
    # (back-off starts again at 1), up again
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 5.0, 1.0, 5.0, 5.0]
