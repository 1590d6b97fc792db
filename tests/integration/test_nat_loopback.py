"""Circuit relay v2 and DCUtR between in-process hosts on 127.0.0.1 (no NAT: the
namespace tests have those): a relayed request channel, the relay's limits
(reservations, bytes per circuit) enforced, the upgrade to a direct connection."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
import trio

from loomdb.errors import TransportError
from loomdb.identity.keys import SigningKey
from loomdb.transports.libp2p import P2PHost
from loomdb.transports.libp2p.nat import NatSettings, RelayServiceLimits

pytestmark = pytest.mark.integration

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
WAIT = 15.0


def run(fn: Callable[[], Awaitable[None]]) -> None:
    anyio.run(fn, backend="trio")


async def echo(frame: bytes) -> bytes:
    return frame


async def wait_for(check: Callable[[], object], what: str) -> None:
    with trio.fail_after(WAIT):
        while not check():
            await trio.sleep(0.05)


@asynccontextmanager
async def trio_hosts(
    limits: RelayServiceLimits, *, punch: bool
) -> AsyncIterator[tuple[P2PHost, P2PHost, P2PHost, str]]:
    """Relay R, B reserved on it, A (no reservation); B's circuit address."""
    async with AsyncExitStack() as stack:
        relay = P2PHost(
            SigningKey.generate(), LOOPBACK, gossip=False, nat=NatSettings(service=limits)
        )
        await stack.enter_async_context(relay.run())
        [relay_addr] = relay.listen_addrs()
        b = P2PHost(
            SigningKey.generate(),
            LOOPBACK,
            gossip=False,
            nat=NatSettings(relays=(relay_addr,), hole_punch=punch),
        )
        b.serve_sync(lambda peer: echo)
        await stack.enter_async_context(b.run())
        a = P2PHost(
            SigningKey.generate(), LOOPBACK, gossip=False, nat=NatSettings(hole_punch=punch)
        )
        await stack.enter_async_context(a.run())
        await wait_for(b.nat.circuit_addrs, "B's reservation")
        [circuit] = b.nat.circuit_addrs()
        assert circuit == f"{relay_addr}/p2p-circuit/p2p/{b.peer_id}"
        assert circuit in b.listen_addrs()
        yield relay, a, b, circuit


async def many_requests(channel: Any, n: int, frame: bytes) -> None:
    for _ in range(n):
        assert await channel.request(frame, timeout=5) == frame


def kinds(host: P2PHost, peer: str) -> list[str]:
    for p in host.peers():
        if p["peer_id"] == peer:
            return sorted(c["type"] for c in p["connection_types"])
    return []


def test_requests_go_through_the_relay_and_the_relay_counts_them() -> None:
    async def main() -> None:
        async with trio_hosts(RelayServiceLimits(), punch=False) as (relay, a, b, circuit):
            assert await a.connect(circuit) == b.peer_id
            assert kinds(a, b.peer_id) == ["relayed"]
            channel = a.channel(circuit)
            try:
                for i in range(20):
                    assert await channel.request(b"x%d" % i) == b"x%d" % i
            finally:
                await channel.aclose()
            info = relay.info()["nat"]["relay_service"]
            assert info["reservations"] == 1  # B's
            assert a.info()["nat"]["counters"]["relayed_dials"] == 1
            assert a.info()["nat"]["punches"] == {}  # --no-hole-punch: none tried

    run(main)


def test_a_circuit_past_its_byte_limit_is_reset_and_reservations_are_limited() -> None:
    async def main() -> None:
        limits = RelayServiceLimits(reservations=1, circuit_bytes=64 * 1024)
        async with trio_hosts(limits, punch=False) as (relay, a, _b, circuit):
            await a.connect(circuit)
            channel = a.channel(circuit)
            try:
                assert await channel.request(b"small") == b"small"
                with pytest.raises(TransportError):  # 8 x 2 x 16 KiB: past 64 KiB in all
                    await many_requests(channel, 8, b"y" * 16 * 1024)
            finally:
                await channel.aclose()
            # The relay's one reservation is B's: a third node is refused one.
            [relay_addr] = relay.listen_addrs()
            c = P2PHost(
                SigningKey.generate(),
                LOOPBACK,
                gossip=False,
                nat=NatSettings(relays=(relay_addr,), hole_punch=False),
            )
            async with c.run():
                [r] = c.nat.reservations
                await wait_for(lambda: r.failures >= 1, "C refused")
                assert c.nat.circuit_addrs() == []
                assert "refused" in (r.last_error or "")

    run(main)


def test_a_relayed_connection_is_upgraded_to_direct_in_the_background() -> None:
    async def main() -> None:
        async with trio_hosts(RelayServiceLimits(), punch=True) as (_, a, b, circuit):
            began = time.monotonic()
            await a.connect(circuit)
            relayed = time.monotonic() - began
            channel = a.channel(circuit)
            try:
                assert await channel.request(b"at once") == b"at once"  # no wait on the punch
                await wait_for(lambda: "direct" in kinds(a, b.peer_id), "a direct connection")
            finally:
                await channel.aclose()
            direct = [
                c
                for p in a.peers()
                if p["peer_id"] == b.peer_id
                for c in p["connection_types"]
                if c["type"] == "direct"
            ]
            assert direct[0]["addrs"][0].startswith("/ip4/127.0.0.1/tcp/")

            def b_direct() -> bool:
                punches = b.nat.info()["punches"]
                return any(p["state"] == "direct" for p in punches.values())

            await wait_for(b_direct, "B's record")
            [record] = b.nat.info()["punches"].values()  # B, the relayed connection's callee
            assert record["attempts"] == 1
            assert record["upgrade_seconds"] is not None
            assert relayed < 5

    run(main)


def test_a_circuit_ending_leaves_another_circuit_to_the_same_peer_alone() -> None:
    """py-libp2p's relay closed a peer's newest circuit when an older one ended."""

    async def main() -> None:
        async with trio_hosts(RelayServiceLimits(), punch=False) as (relay, a, b, circuit):
            a2 = P2PHost(
                SigningKey.generate(), LOOPBACK, gossip=False, nat=NatSettings(hole_punch=False)
            )
            async with a2.run():
                await a.connect(circuit)
                await a2.connect(circuit)
                first, second = a.channel(circuit), a2.channel(circuit)
                try:
                    assert await first.request(b"1") == b"1"
                    assert await second.request(b"2") == b"2"
                    assert relay.info()["nat"]["relay_service"]["circuits"] == 2
                    await first.aclose()
                    assert await a.disconnect(b.peer_id)
                    await wait_for(
                        lambda: relay.info()["nat"]["relay_service"]["circuits"] == 1,
                        "the first circuit's end",
                    )
                    await trio.sleep(0.5)
                    for i in range(10):
                        assert await second.request(b"%d" % i, timeout=5) == b"%d" % i
                finally:
                    await second.aclose()

    run(main)


def test_a_relay_read_before_identify_is_asked_again() -> None:
    """py-libp2p's relay discovery caches the protocols it reads from the peerstore;
    read before identify finished, the relay looked like no relay for good. The next
    reservation attempt asks again and reserves."""

    async def main() -> None:
        async with trio_hosts(RelayServiceLimits(), punch=False) as (relay, _a, b, _circuit):
            assert b.nat is not None
            [record] = b.nat.reservations
            relay_id = record.relay.peer_id
            b.nat.discovery._discovered_relays.pop(relay_id)
            b.nat.discovery._protocol_cache[relay_id] = set()  # what an early read leaves
            with trio.fail_after(WAIT):
                seconds = await b.nat._reserve(record)
            assert seconds > 0
            assert relay_id in b.nat.discovery.get_relays()
            assert relay.info()["nat"]["relay_service"]["reservations"] == 1

    run(main)
