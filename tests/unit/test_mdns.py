"""mDNS discovery's pieces: TXT records (ours, py-libp2p's, garbage), which
addresses are believed, which interfaces are chosen, the bounded table of peers
and its back-off, and the dialler on trio's fake clock with a fake host (no
sockets). The real thing runs in tests/integration/test_mdns_e2e.py."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import ServiceInfo, ServiceStateChange

from loomdb.cli.p2p import show_info
from loomdb.errors import UnreachableError, ValidationError
from loomdb.identity.keys import SigningKey
from loomdb.identity.peer_id import peer_id_from_public_key
from loomdb.node.p2p import P2PSettings, p2p_settings, with_mdns
from loomdb.transports.libp2p import Backoff
from loomdb.transports.libp2p.mdns import (
    DiscoveredPeers,
    MdnsCounters,
    MdnsDiscovery,
    MdnsHost,
    MdnsSettings,
)
from loomdb.transports.libp2p.mdns_records import (
    SERVICE_TYPE,
    Interface,
    advertised_addrs,
    choose_interfaces,
    encode_txt,
    parse_txt,
    peer_from_txt,
)
from tests.integration import lan


def new_peer() -> str:
    return peer_id_from_public_key(SigningKey.generate().public_key)


ME = new_peer()
PEER = new_peer()
OTHER = new_peer()
ETH0 = Interface("eth0", "10.1.0.5", 24)
WLAN = Interface("wlan0", "192.168.7.20", 24)
LO = Interface("lo", "127.0.0.1", 8)
LINK_LOCAL = Interface("eth1", "169.254.3.4", 16)
MACHINE = [LO, ETH0, WLAN, LINK_LOCAL]


def addr(ip: str, peer: str = PEER, port: int = 4001) -> str:
    return f"/ip4/{ip}/tcp/{port}/p2p/{peer}"


# --- TXT records ---------------------------------------------------------------------------


def test_txt_records_round_trip_with_the_key_repeated_as_the_spec_writes_it() -> None:
    addrs = [addr("10.1.0.7"), addr("192.168.7.9")]
    text = encode_txt(addrs)
    assert text.count(b"dnsaddr=") == 2  # one string per address, same key
    assert parse_txt(text) == addrs
    with pytest.raises(ValidationError, match="too long"):
        encode_txt(["/ip4/10.0.0.1/tcp/1/p2p/" + "x" * 300])


def test_py_libp2p_style_numbered_keys_are_read_and_other_keys_ignored() -> None:
    info = ServiceInfo(
        SERVICE_TYPE,
        f"abc.{SERVICE_TYPE}",
        port=4001,
        properties={
            b"dnsaddr": addr("10.1.0.7").encode(),
            b"dnsaddr2": addr("10.1.0.8").encode(),
            b"id": PEER.encode(),
            b"dnsaddrx": b"/ip4/6.6.6.6/tcp/1",
        },
    )
    assert parse_txt(info.text) == [addr("10.1.0.7"), addr("10.1.0.8")]


def test_truncated_or_non_ascii_txt_strings_are_skipped() -> None:
    good = encode_txt([addr("10.1.0.7")])
    assert parse_txt(good + b"\x30dnsaddr=/ip4/1") == [addr("10.1.0.7")]  # truncated tail
    assert parse_txt(b"\x0bdnsaddr=\xff\xfe\xfd" + good) == [addr("10.1.0.7")]
    assert parse_txt(b"\x00" + good) == [addr("10.1.0.7")]  # an empty string
    assert len(parse_txt(encode_txt([addr("10.1.0.7")] * 50), limit=32)) == 32


@given(st.binary(max_size=600))
def test_any_bytes_parse_to_a_list_or_nothing_never_an_exception(text: bytes) -> None:
    values = parse_txt(text)
    assert all(isinstance(v, str) for v in values)
    assert peer_from_txt(text, ME, [ETH0], 4) is None or values


# --- what is believed ----------------------------------------------------------------------


def test_a_peer_on_the_lan_is_believed_with_its_lan_addresses_only() -> None:
    text = encode_txt(
        [
            addr("10.1.0.7"),
            addr("8.8.8.8"),  # not on a LAN mDNS runs on
            addr("127.0.0.1"),  # nor loopback
            f"/ip4/10.1.0.9/tcp/1/p2p/{OTHER}",  # another peer in the same record
            f"/ip4/10.1.0.2/tcp/1/p2p/{OTHER}/p2p-circuit/p2p/{PEER}",  # relayed
            "/ip4/10.1.0.7/udp/4001/quic-v1",  # not ours
            "/ip4/10.1.0.7/tcp/4001",  # no Peer ID
            "/ip4/10.1.0.7/tcp/4001/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # RSA
            addr("10.1.0.7", port=4002),
            addr("10.1.0.7"),  # twice
        ]
    )
    assert peer_from_txt(text, ME, [ETH0], 4) == (
        PEER,
        [addr("10.1.0.7"), addr("10.1.0.7", port=4002)],
    )
    assert peer_from_txt(text, ME, [ETH0], 1) == (PEER, [addr("10.1.0.7")])  # bounded
    assert peer_from_txt(text, ME, [WLAN], 4) is None  # nothing on that LAN


def test_our_own_announcement_and_garbage_give_no_peer() -> None:
    assert peer_from_txt(encode_txt([addr("10.1.0.5", ME)]), ME, [ETH0], 4) is None
    assert peer_from_txt(b"\x05hello", ME, [ETH0], 4) is None
    assert peer_from_txt(encode_txt(["/ip4/999.1.1.1/tcp/1/p2p/" + PEER]), ME, [ETH0], 4) is None


# --- interfaces ------------------------------------------------------------------------------


def test_a_specific_listen_address_chooses_its_interface_alone() -> None:
    assert choose_interfaces(["/ip4/10.1.0.5/tcp/4001"], MACHINE) == [ETH0]
    both = ["/ip4/10.1.0.5/tcp/4001", "/ip4/192.168.7.20/tcp/0", "/ip4/10.1.0.5/tcp/4002"]
    assert choose_interfaces(both, MACHINE) == [ETH0, WLAN]


def test_the_wildcard_chooses_every_non_loopback_non_link_local_interface_explicitly() -> None:
    assert choose_interfaces(["/ip4/0.0.0.0/tcp/4001"], MACHINE) == [ETH0, WLAN]


def test_loopback_or_ipv6_only_is_a_clear_error() -> None:
    for listen in (["/ip4/127.0.0.1/tcp/0"], ["/ip6/::/tcp/0"], ["/ip4/0.0.0.0/tcp/0"]):
        available = MACHINE if listen != ["/ip4/0.0.0.0/tcp/0"] else [LO, LINK_LOCAL]
        with pytest.raises(ValidationError, match="--mdns needs an IPv4 listen address"):
            choose_interfaces(listen, available)
    with pytest.raises(ValidationError, match="bad multiaddr"):
        choose_interfaces(["nonsense"], MACHINE)


def test_what_is_advertised_expands_the_wildcard_and_leaves_loopback_out() -> None:
    transport = [
        "/ip4/0.0.0.0/tcp/4001",
        "/ip4/127.0.0.1/tcp/4002",
        f"/ip4/10.1.0.5/tcp/4003/p2p/{ME}",
    ]
    assert advertised_addrs(transport, [ETH0, WLAN], ME) == [
        addr("10.1.0.5", ME),
        addr("192.168.7.20", ME),
        addr("10.1.0.5", ME, 4003),
    ]


# --- the table -------------------------------------------------------------------------------

FAST = MdnsSettings(
    max_peers=2, expiry=100.0, backoff=Backoff(initial=2.0, factor=2.0, maximum=10.0)
)


def nobody(peer: str) -> bool:
    return False


def test_the_table_is_bounded_and_forgets_what_leaves_or_goes_quiet() -> None:
    counters = MdnsCounters()
    table = DiscoveredPeers(FAST, counters)
    assert table.heard("s1", PEER, [addr("10.1.0.7")], now=0)
    assert table.heard("s2", OTHER, [addr("10.1.0.8", OTHER)], now=0)
    third = new_peer()
    assert not table.heard("s3", third, [addr("10.1.0.9", third)], now=0)
    assert counters.full == 1 and third not in table and len(table) == 2
    table.removed("s2")  # its goodbye
    assert OTHER not in table
    table.heard("s1", PEER, [addr("10.1.0.7")], now=50)  # heard again: stays
    table.expire(now=120, connected=nobody)
    assert PEER in table
    table.expire(now=140, connected=lambda peer: True)  # connected: as good as heard
    table.expire(now=230, connected=nobody)
    assert PEER in table
    table.expire(now=241, connected=nobody)
    assert len(table) == 0


def test_failures_back_off_doubling_to_the_cap_and_success_resets() -> None:
    table = DiscoveredPeers(FAST, MdnsCounters())
    table.heard("s1", PEER, [addr("10.1.0.7")], now=0)
    assert table.due(0, nobody) is not None
    waits = []
    now = 0.0
    for _ in range(5):
        table.dialled(PEER, False, now)
        entry = table.get(PEER)
        assert entry is not None
        waits.append(entry.next_dial - now)
        assert table.due(entry.next_dial - 0.01, nobody) is None
        now = entry.next_dial
    assert waits == [2.0, 4.0, 8.0, 10.0, 10.0]
    table.dialled(PEER, True, now)
    entry = table.get(PEER)
    assert entry is not None and entry.failures == 0
    assert table.due(now + 2.0, lambda peer: True) is None  # connected: not dialled
    table.dialled(PEER, False, now)
    table.heard("s1", PEER, [addr("10.1.0.70")], now=now)  # new addresses: try at once
    assert table.due(now, nobody) is not None


# --- the dialler, on a fake clock ----------------------------------------------------------


class FakeHost:
    def __init__(
        self, fail: frozenset[str] = frozenset(), hang: frozenset[str] = frozenset()
    ) -> None:
        self.fail, self.hang = fail, hang
        self.up: set[str] = set()
        self.dials: list[tuple[float, str]] = []

    def hooks(self) -> MdnsHost:
        async def dial(peer: str, addrs: Sequence[str]) -> None:
            self.dials.append((trio.current_time(), peer))
            if peer in self.hang:
                await trio.sleep_forever()
            if peer in self.fail:
                raise UnreachableError(f"cannot reach {peer}")
            self.up.add(peer)

        return MdnsHost(ME, lambda: ["/ip4/0.0.0.0/tcp/4001"], self.up.__contains__, dial)


DEFAULTS = MdnsSettings()


def discovery(host: FakeHost, settings: MdnsSettings = DEFAULTS, **kw: Any) -> MdnsDiscovery:
    listen = ["/ip4/0.0.0.0/tcp/4001"]
    return MdnsDiscovery(host.hooks(), listen, settings, interfaces=MACHINE, **kw)


def run_for(d: MdnsDiscovery, seconds: float, heard: list[tuple[str, bytes]]) -> None:
    """Hear ``heard`` (service name, TXT), then run the dialler for ``seconds`` of
    fake time."""

    async def main() -> None:
        for name, text in heard:
            d.heard(name, text)
        with trio.move_on_after(seconds):
            await d._dial_loop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_dials_are_one_at_a_time_spaced_and_connected_peers_left_alone() -> None:
    host = FakeHost()
    d = discovery(host, MdnsSettings(dial_interval=0.5, tick=0.5))
    peers = [new_peer() for _ in range(4)]
    heard = [
        (f"s{i}.{SERVICE_TYPE}", encode_txt([addr(f"10.1.0.{10 + i}", peer)]))
        for i, peer in enumerate(peers)
    ]
    run_for(d, 30, heard)
    assert sorted(p for _, p in host.dials) == sorted(peers)  # each once: then connected
    times = [t for t, _ in host.dials]
    assert all(b - a >= 0.5 for a, b in itertools.pairwise(times))
    assert d.info()["discovered"] == 4 and all(p["connected"] for p in d.info()["peers"])


def test_a_failing_peer_is_backed_off_and_a_hanging_dial_is_cut() -> None:
    bad, stuck = new_peer(), new_peer()
    host = FakeHost(fail=frozenset({bad}), hang=frozenset({stuck}))
    settings = MdnsSettings(
        dial_interval=0.5, tick=0.5, dial_timeout=3.0, backoff=Backoff(2.0, 2.0, 60.0)
    )
    d = discovery(host, settings)
    heard = [
        (f"bad.{SERVICE_TYPE}", encode_txt([addr("10.1.0.20", bad)])),
        (f"stuck.{SERVICE_TYPE}", encode_txt([addr("10.1.0.21", stuck)])),
    ]
    run_for(d, 40, heard)
    bad_times = [t for t, p in host.dials if p == bad]
    gaps = [b - a for a, b in itertools.pairwise(bad_times)]
    assert len(bad_times) <= 5, bad_times  # 0, ~2, ~6, ~14, ~30: not every tick
    assert all(g >= 2.0 for g in gaps) and gaps == sorted(gaps), gaps
    stuck_times = [t for t, p in host.dials if p == stuck]
    assert 2 <= len(stuck_times) <= 5  # each cut at 3 s, then backed off
    assert d.counters.dial_failures == len(host.dials)


def test_our_own_announcement_garbage_and_a_full_queue_are_counted() -> None:
    host = FakeHost()
    d = discovery(host, MdnsSettings(queue=2), clock=lambda: 0.0)
    d.heard(f"me.{SERVICE_TYPE}", encode_txt([addr("10.1.0.5", ME)]))
    d.heard(f"junk.{SERVICE_TYPE}", b"\x05hello")
    d.heard(f"gone.{SERVICE_TYPE}", None)
    c = d.counters
    assert (c.own, c.invalid, c.unresolved, len(d.peers)) == (1, 1, 1, 0)

    async def main() -> None:
        send, _receive = trio.open_memory_channel[tuple[str, ServiceStateChange]](2)
        for i in range(5):
            d._enqueue(send, f"s{i}", ServiceStateChange.Added)
        assert d.counters.events_dropped == 3

    trio.run(main)


# --- settings, CLI ---------------------------------------------------------------------------


def test_mdns_is_off_by_default_and_refused_with_no_p2p_or_loopback_only() -> None:
    settings = p2p_settings(None, False, [])
    assert settings is not None and settings.mdns is False
    assert with_mdns(settings, False) is settings
    on = with_mdns(p2p_settings(["/ip4/0.0.0.0/tcp/0"], False, []), True)
    assert on is not None and on.mdns and on.listen == ("/ip4/0.0.0.0/tcp/0",)
    with pytest.raises(ValidationError, match="--no-p2p and --mdns"):
        with_mdns(p2p_settings(None, True, []), True)
    assert with_mdns(None, False) is None
    with pytest.raises(ValidationError, match="--mdns needs"):
        P2PSettings(("/ip4/127.0.0.1/tcp/0",), mdns=True).check()


def test_p2p_info_shows_mdns_off_or_on(capsys: pytest.CaptureFixture[str]) -> None:
    base = {
        "peer_id": ME,
        "listen": [],
        "peers": [],
        "bootstrap": [],
        "counters": {
            "dials": 0,
            "dial_failures": 0,
            "streams_opened": 0,
            "streams_served": 0,
            "frames_served": 0,
            "refused": {},
        },
    }
    show_info({**base, "mdns": {"enabled": False}})
    assert "off" in capsys.readouterr().out
    d = discovery(FakeHost(), clock=lambda: 0.0)
    d.heard(f"s.{SERVICE_TYPE}", encode_txt([addr("10.1.0.7")]))
    show_info({**base, "mdns": d.info()})
    out = capsys.readouterr().out
    assert "eth0 10.1.0.5/24, wlan0 192.168.7.20/24" in out and "1 discovered, 0 connected" in out


def test_the_lan_tests_fail_with_the_reason_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never a skip: CI runs them as root, and a skip would hide them."""
    monkeypatch.setattr(lan.os, "geteuid", lambda: 1000)
    with pytest.raises(lan.NetnsUnavailable, match="must run as root"):
        lan.require_available()
    monkeypatch.setattr(lan.shutil, "which", lambda tool: None)
    with pytest.raises(lan.NetnsUnavailable, match="need ip"):
        lan.require_available()


# --- the hooks into a real P2PHost (loopback) ----------------------------------------------


def test_host_hooks_dial_the_addresses_in_turn_and_see_the_connection() -> None:
    """The first address answers nobody (a closed port), the second is the peer: the
    dial goes on to it; ``connected`` then says so; a peer with no address that
    answers is ``UnreachableError``."""
    import socket

    from loomdb.transports.libp2p import P2PHost
    from loomdb.transports.libp2p.mdns import host_hooks

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]

    async def main() -> None:
        a = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=5)
        b = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=5)
        async with a.run(), b.run():
            hooks = host_hooks(a)
            assert hooks.peer_id == a.peer_id
            assert hooks.transport_addrs()[0].startswith("/ip4/127.0.0.1/tcp/")
            assert not hooks.connected(b.peer_id)
            [good] = b.listen_addrs()
            bad = f"/ip4/127.0.0.1/tcp/{closed}/p2p/{b.peer_id}"
            with trio.fail_after(20):
                await hooks.dial(b.peer_id, [bad, good])
            assert hooks.connected(b.peer_id)
            with pytest.raises(UnreachableError), trio.fail_after(20):
                await hooks.dial(OTHER, [f"/ip4/127.0.0.1/tcp/{closed}/p2p/{OTHER}"])

    trio.run(main)
