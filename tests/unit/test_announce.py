"""``loomdb.transports.announce``: ``0.0.0.0`` and ``::`` advertised as the interfaces'
addresses — by the function, and by a real host listening on ``0.0.0.0`` as its peer
learns it through identify."""

from __future__ import annotations

import ipaddress
from contextlib import AsyncExitStack

import multiaddr
import pytest
import trio
from libp2p.peer.id import ID

from loomdb.identity.keys import SigningKey
from loomdb.transports.announce import REFRESH_SECONDS, addrs_factory, expand_unspecified
from loomdb.transports.libp2p import P2PHost

WAIT = 20.0
IPS = [
    ipaddress.ip_address("127.0.0.1"),
    ipaddress.ip_address("192.168.1.20"),
    ipaddress.ip_address("93.184.216.34"),
    ipaddress.ip_address("::1"),
    ipaddress.ip_address("2a00:1450:4001::5"),
]


def m(*texts: str) -> list[multiaddr.Multiaddr]:
    return [multiaddr.Multiaddr(t) for t in texts]


def test_unspecified_addresses_become_each_interface_of_their_family_public_first() -> None:
    got = expand_unspecified(m("/ip4/0.0.0.0/tcp/9171", "/ip6/::/tcp/9171"), IPS)
    assert [str(a) for a in got] == [
        "/ip4/93.184.216.34/tcp/9171",
        "/ip4/192.168.1.20/tcp/9171",
        "/ip4/127.0.0.1/tcp/9171",
        "/ip6/2a00:1450:4001::5/tcp/9171",
        "/ip6/::1/tcp/9171",
    ]


def test_concrete_and_websocket_addresses_are_kept_and_duplicates_dropped() -> None:
    addrs = m("/ip4/10.0.0.5/tcp/1", "/ip4/0.0.0.0/tcp/2/ws", "/ip4/10.0.0.5/tcp/1")
    got = expand_unspecified(addrs, [ipaddress.ip_address("10.0.0.5")])
    assert [str(a) for a in got] == ["/ip4/10.0.0.5/tcp/1", "/ip4/10.0.0.5/tcp/2/ws"]


def test_an_unspecified_address_without_an_interface_of_its_family_is_left_out() -> None:
    assert expand_unspecified(m("/ip6/::/tcp/1"), IPS[:3]) == []


def test_the_factory_reads_interfaces_only_when_needed_and_at_most_every_refresh() -> None:
    reads: list[float] = []
    now = [100.0]

    def interfaces() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        reads.append(now[0])
        return IPS[:1]

    factory = addrs_factory(interfaces, clock=lambda: now[0])
    concrete = m("/ip4/10.1.1.1/tcp/1")
    assert factory(concrete) == concrete and reads == []
    assert [str(a) for a in factory(m("/ip4/0.0.0.0/tcp/1"))] == ["/ip4/127.0.0.1/tcp/1"]
    now[0] += REFRESH_SECONDS / 2
    factory(m("/ip4/0.0.0.0/tcp/1"))
    assert reads == [100.0]
    now[0] += REFRESH_SECONDS
    factory(m("/ip4/0.0.0.0/tcp/1"))
    assert len(reads) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_host_on_0000_is_learnt_at_dialable_addresses(anyio_backend: str) -> None:
    a = P2PHost(SigningKey.generate(), ["/ip4/0.0.0.0/tcp/0"], connect_timeout=WAIT)
    b = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
    async with AsyncExitStack() as stack:
        for host in (a, b):
            await stack.enter_async_context(host.run())
        advertised = [str(x) for x in a.host.get_addrs()]
        assert advertised and not any("/0.0.0.0/" in x for x in advertised), advertised
        port = a.listen_addrs()[0].split("/")[4]
        assert f"/ip4/127.0.0.1/tcp/{port}/p2p/{a.peer_id}" in advertised
        dial = a.listen_addrs()[0].replace("/0.0.0.0/", "/127.0.0.1/")
        a_id = ID.from_base58(await b.connect(dial))
        with trio.fail_after(WAIT):  # what b stores is what a's identify told it
            while not b.host.get_peerstore().get_protocols(a_id):
                await trio.sleep(0.05)
        known = [str(x) for x in b.host.get_peerstore().addrs(a_id)]
        assert known and not any("/0.0.0.0/" in x for x in known), known
