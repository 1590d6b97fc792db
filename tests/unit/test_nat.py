"""NAT traversal's pure parts: circuit addresses, relay limits, the start options,
the renewal time, which side punches, and the namespace tests' refusal to skip."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio
from libp2p.peer.id import ID

from loomdb.cli.main import build_parser, start_nat_settings
from loomdb.errors import UnreachableError, ValidationError
from loomdb.node.p2p import P2PSettings, p2p_settings
from loomdb.transports.libp2p import parse_peer_addr
from loomdb.transports.libp2p.nat import (
    NatSettings,
    NatTraversal,
    RelayServiceLimits,
    parse_circuit_addr,
    parse_relay_addr,
    renew_after,
)
from tests.integration import netns

RELAY = "12D3KooWCugzopk9fYBy1pvYVi94Qr2y9PL4CjSpYZUaXir3YWb7"
PEER = "12D3KooWRszXfPPGexF4ZZ7snjt4LnfRCxFdoMXowYvh6pyLpyNc"
RELAY_ADDR = f"/ip4/198.51.100.1/tcp/4001/p2p/{RELAY}"
CIRCUIT = f"{RELAY_ADDR}/p2p-circuit/p2p/{PEER}"


def test_circuit_addresses_parse_and_bad_ones_are_refused() -> None:
    relay, dest, addr = parse_circuit_addr(CIRCUIT)
    assert relay.peer_id.to_base58() == RELAY
    assert [str(a) for a in relay.addrs] == ["/ip4/198.51.100.1/tcp/4001"]
    assert dest.to_base58() == PEER
    assert str(addr) == CIRCUIT
    info = parse_peer_addr(CIRCUIT)  # what connect, sync and --peers take
    assert info.peer_id.to_base58() == PEER
    assert [str(a) for a in info.addrs] == [CIRCUIT]
    for bad in [
        f"{RELAY_ADDR}/p2p-circuit",  # no peer
        f"/p2p/{RELAY}/p2p-circuit/p2p/{PEER}",  # no relay address
        f"{RELAY_ADDR}/p2p-circuit/p2p/{RELAY}",  # the relay as the peer
        f"{RELAY_ADDR}/p2p-circuit/p2p/notapeer",
        f"{RELAY_ADDR}/p2p-circuit/p2p/{PEER}/tcp/1",
        "/ip4/198.51.100.1/udp/1/p2p-circuit/p2p/" + PEER,
    ]:
        with pytest.raises(ValidationError):
            parse_circuit_addr(bad)
    with pytest.raises(ValidationError):
        parse_relay_addr("/ip4/198.51.100.1/tcp/4001")  # no /p2p/


def test_reservations_are_renewed_at_three_quarters_of_their_time() -> None:
    assert renew_after(3600) == 2700
    assert renew_after(10) == 7.5
    assert renew_after(0.5) == 1.0  # never a busy loop


def test_relay_limits_are_bounded_and_given_to_py_libp2p() -> None:
    limits = RelayServiceLimits(reservations=5, circuit_bytes=4096, circuit_seconds=30)
    limits.check()
    lib = limits.libp2p_limits()
    assert (lib.max_reservations, lib.data, lib.duration) == (5, 4096, 30)
    assert lib.reservation_ttl == 3600
    for bad in [
        RelayServiceLimits(reservations=0),
        RelayServiceLimits(reservation_seconds=1),
        RelayServiceLimits(circuit_bytes=10),
        RelayServiceLimits(circuit_seconds=0),
    ]:
        with pytest.raises(ValidationError):
            bad.check()
    with pytest.raises(ValidationError):
        NatSettings(punch_timeout=0.1).check()
    with pytest.raises(ValidationError):
        NatSettings(relays=("/ip4/1.2.3.4/tcp/1",)).check()


def settings(*argv: str) -> P2PSettings | None:
    args = build_parser().parse_args(["start", *argv])
    nat = start_nat_settings(args)
    return p2p_settings(args.p2p_addr, args.no_p2p, args.peers, None, nat)


def test_start_options() -> None:
    plain = settings()
    assert plain is not None and plain.nat == NatSettings()
    relay = settings(
        "--relay-service", "--relay-max-reservations", "3", "--relay-circuit-bytes", "65536"
    )
    assert relay is not None
    assert relay.nat.service == RelayServiceLimits(reservations=3, circuit_bytes=65536)
    behind = settings("--relays", RELAY_ADDR, "--hole-punch-seconds", "4")
    assert behind is not None
    assert behind.nat == NatSettings(relays=(RELAY_ADDR,), punch_timeout=4.0)
    stay = settings("--relays", RELAY_ADDR, "--no-hole-punch")
    assert stay is not None and not stay.nat.hole_punch
    with pytest.raises(ValidationError, match="need --relay-service"):
        settings("--relay-circuit-seconds", "60")
    with pytest.raises(ValidationError, match="--no-p2p"):
        settings("--no-p2p", "--relay-service")
    with pytest.raises(SystemExit):
        settings("--relay-max-reservations", "0")  # argparse: exit 2


class FakeConn:
    def __init__(self, direction: str) -> None:
        self.direction = SimpleNamespace(name=direction)


def test_the_side_the_relayed_connection_came_in_to_punches() -> None:
    nat: Any = NatTraversal.__new__(NatTraversal)
    nat._me = RELAY
    peer = ID.from_base58(PEER)
    assert nat._initiates(peer, [FakeConn("INBOUND")])
    assert not nat._initiates(peer, [FakeConn("OUTBOUND")])
    # Direction unknown: the smaller Peer ID, so exactly one of the two sides.
    assert nat._initiates(peer, [FakeConn("UNKNOWN")]) == (RELAY < PEER)


def test_namespace_tests_fail_with_the_reason_when_not_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    with pytest.raises(netns.NetnsUnavailable, match="must run as root"):
        netns.check_available()
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None)
    with pytest.raises(netns.NetnsUnavailable, match="apt-get install iproute2 nftables"):
        netns.check_available()


def test_a_reservation_is_renewed_retried_after_failures_and_stays_advertised() -> None:
    """The reservation loop on a fake clock: failures wait the back-off (1, 2, 4 s),
    success resets it, a renewal keeps the address advertised, a lost relay
    connection withdraws it until reserved again."""
    from loomdb.transports.libp2p import Backoff
    from loomdb.transports.libp2p.nat import RelayReservation

    class Stop(Exception):
        pass

    relay_id = ID.from_base58(RELAY)
    connections: dict[ID, object] = {relay_id: object()}
    outcomes = ["fail", "fail", "fail", 20.0, 20.0, "drop", 20.0, "stop"]
    slept: list[float] = []
    seen: list[tuple[str, bool]] = []
    nat: Any = NatTraversal.__new__(NatTraversal)
    nat._me = PEER
    nat.host = SimpleNamespace(get_network=lambda: SimpleNamespace(connections=connections))
    nat.delays = Backoff(initial=1.0, factor=2.0, maximum=60.0).delays
    r = RelayReservation(RELAY_ADDR, parse_relay_addr(RELAY_ADDR))
    nat.reservations = [r]

    async def reserve(_: Any) -> float:
        seen.append((r.state.value, bool(nat.circuit_addrs())))
        outcome = outcomes.pop(0)
        if outcome == "fail":
            raise UnreachableError("relay refused a reservation")
        if outcome == "stop":
            raise Stop  # end the loop
        return float(outcome)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if outcomes and outcomes[0] == "drop":
            outcomes.pop(0)
            connections.clear()  # the relay's connection is lost during the wait

    nat._reserve = reserve
    nat.sleep = sleep

    async def main() -> None:
        with pytest.raises(Stop):
            await nat._keep_reserved(r)

    trio.run(main)
    assert slept[:3] == [1.0, 2.0, 4.0]  # the back-off between failures
    assert r.reservations == 3
    assert seen[3] == ("connecting", False)  # a new try after three failures
    assert seen[4] == ("reserved", True)  # renewing: still advertised
    assert seen[6] == ("connecting", False)  # after the relay's connection was lost
    assert sum(slept[3:18]) == pytest.approx(15.0)  # renewed at 3/4 of 20 s


def test_unspecified_addresses_are_not_sent_for_a_punch() -> None:
    import multiaddr

    from loomdb.transports.libp2p.nat import _dialable

    assert _dialable(multiaddr.Multiaddr("/ip4/198.51.100.2/tcp/4101").to_bytes())
    assert not _dialable(multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/4101").to_bytes())
    assert not _dialable(multiaddr.Multiaddr("/ip6/::/tcp/4101").to_bytes())
    assert not _dialable(b"\xff\xff")
