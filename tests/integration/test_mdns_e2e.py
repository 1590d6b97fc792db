"""P8: nodes on the same LAN find each other by mDNS without configuration.

Real ``loomdb start`` processes, each in its own network namespace, the three
joined by a bridge (:mod:`tests.integration.lan`): mDNS runs on the namespaces'
``eth0`` alone, never on the host's interfaces. A and B start with ``--mdns`` and
no ``--peers`` (A on ``0.0.0.0``, B on its LAN address: both ways of choosing the
interface); C, on the same LAN, starts without it. A and B connect, and a
document written on either reaches the other (collection subscription: gossip,
or head exchange on connect); C stays unconnected and receives nothing though it
follows the same collection. B restarts: A and B find each other again and head
exchange on connect brings B what A wrote while it was away. A machine on two LANs
with a node on each interface: each finds its own LAN's peers only. And interop: a
plain py-libp2p host with its own mDNS (another implementation of the spec) and our
node find each other and connect.

Skipped (with the reason) only where namespaces cannot be made: not root, no ``ip``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from loomdb.identity.keys import NamedKey
from tests.doc_support import make_home
from tests.integration import lan as lan_module
from tests.integration.lan import Lan, lan
from tests.integration.nodes import CLIENT_TIMEOUT, Node, Nodes, loomdb, node_env, nodes
from tests.support import run_python

pytestmark = pytest.mark.integration

PORT = 4001
WAIT = 30.0
QUIET = ("--anti-entropy-seconds", "3600")  # head exchange on connect only


@pytest.fixture
def cluster() -> Iterator[Nodes]:
    with nodes() as group:
        yield group


def ns_run(prefix: Sequence[str], node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    """``loomdb client ARGS --url NODE`` inside the node's namespace (its API is there)."""
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "loomdb", "client", *args, "--url", node.url],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        env=node_env(),
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
    return done


def ns_json(prefix: Sequence[str], node: Node, *args: str) -> Any:
    return json.loads(ns_run(prefix, node, *args, "--json").stdout)


def poll(check: Callable[[], Any], what: str, details: Callable[[], Any] = lambda: "") -> Any:
    deadline = time.monotonic() + WAIT
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {WAIT} s {details()}"
        time.sleep(0.2)
    return found


def test_p8_mdns_nodes_find_each_other_and_sync_a_node_without_it_is_left_alone(
    cluster: Nodes, tmp_path: Path
) -> None:
    with lan(3) as net:
        run_lan(cluster, tmp_path, net)


def run_lan(cluster: Nodes, tmp_path: Path, net: Lan) -> None:
    key = NamedKey.generate_fingerprinted("shared")
    for name in "abc":
        make_home(tmp_path / name, key)
    anywhere = f"/ip4/0.0.0.0/tcp/{PORT}"
    listen = (anywhere, f"/ip4/{net.ip(1)}/tcp/{PORT}", anywhere)
    flags = (("--mdns", *QUIET), ("--mdns", *QUIET), QUIET)
    group = [
        cluster.launch(
            tmp_path / name, "--p2p-addr", listen[i], *flags[i], prefix=net.prefix(i), verbose=True
        )
        for i, name in enumerate("abc")
    ]
    cluster.wait_ready()
    a, b, c = group
    pa, pb, pc = (net.prefix(i) for i in range(3))
    for prefix, node in zip((pa, pb, pc), group, strict=True):
        ns_json(prefix, node, "p2p", "collection", "add", "notes")
    pairs = list(zip((pa, pb, pc), group, strict=True))
    ids = [ns_json(p, n, "p2p", "info")["peer_id"] for p, n in pairs]

    def peers(prefix: Sequence[str], node: Node) -> list[str]:
        return [p["peer_id"] for p in ns_json(prefix, node, "p2p", "peers")["peers"]]

    def logs() -> str:
        return "\n".join(f"--- {n.home.name}\n{n.stderr()[-3000:]}" for n in group)

    poll(lambda: ids[1] in peers(pa, a) and ids[0] in peers(pb, b), "A and B connect", logs)

    # What each says of its mDNS: the one interface of its namespace, the other found.
    info_a = ns_json(pa, a, "p2p", "info")["mdns"]
    assert info_a["enabled"] and info_a["running"]
    assert info_a["interfaces"] == [f"eth0 {net.ip(0)}/24"]
    assert info_a["advertised"] == [f"/ip4/{net.ip(0)}/tcp/{PORT}/p2p/{ids[0]}"]
    assert [p["peer_id"] for p in info_a["peers"]] == [ids[1]]
    assert info_a["peers"][0]["addrs"] == [f"/ip4/{net.ip(1)}/tcp/{PORT}/p2p/{ids[1]}"]
    # A (0.0.0.0) says which interfaces it chose, without -v; B (its address) need not.
    assert f"mdns on eth0 ({net.ip(0)}): every non-loopback IPv4 interface" in a.stderr()
    assert "every non-loopback" not in b.stderr()
    info_b = ns_json(pb, b, "p2p", "info")["mdns"]
    assert info_b["interfaces"] == [f"eth0 {net.ip(1)}/24"]
    assert [p["peer_id"] for p in info_b["peers"]] == [ids[0]]
    shown = ns_run(pa, a, "p2p", "info").stdout
    assert "mdns" in shown and "1 discovered, 1 connected" in shown, shown

    # A document written on B reaches A, and back: over gossip once both are in the
    # collection's topic (head exchange ran on connect, before anything was written).
    def joined(prefix: Sequence[str], node: Node) -> bool:
        topics = ns_json(prefix, node, "p2p", "info")["pubsub"]["topic_peers"]
        return bool(topics) and all(n >= 1 for n in topics.values())

    poll(lambda: joined(pa, a) and joined(pb, b), "A and B in each other's topic", logs)
    ns_run(pb, b, "doc", "create", "notes", "--id", "n1", json.dumps({"by": "b"}))
    poll(lambda: doc(pa, a, "n1"), "A receives B's document", logs)
    ns_run(pa, a, "doc", "create", "notes", "--id", "n2", json.dumps({"by": "a"}))
    poll(lambda: doc(pb, b, "n2"), "B receives A's document", logs)

    # C (no --mdns) follows the same collection on the same LAN: nobody dialled it,
    # it dialled nobody, it has nothing; its info says mDNS is off.
    assert peers(pc, c) == []
    assert ids[2] not in peers(pa, a) and ids[2] not in peers(pb, b)
    assert doc(pc, c, "n1") is None and doc(pc, c, "n2") is None
    info_c = ns_json(pc, c, "p2p", "info")
    assert info_c["mdns"] == {"enabled": False}
    assert "mdns" in ns_run(pc, c, "p2p", "info").stdout

    # B goes away, A writes, B comes back (same home and address): mDNS finds it again
    # and head exchange on connect brings it what it missed (no gossip reached it).
    assert b.stop() == 0
    poll(lambda: ids[1] not in peers(pa, a), "A sees B gone")
    ns_run(pa, a, "doc", "create", "notes", "--id", "n3", json.dumps({"by": "a"}))
    b = cluster.start(tmp_path / "b", "--p2p-addr", listen[1], *flags[1], prefix=pb)
    poll(lambda: doc(pb, b, "n3"), "B, back, gets what it missed", logs)
    assert ids[0] in peers(pb, b)


def doc(prefix: Sequence[str], node: Node, doc_id: str) -> Any:
    command = [sys.executable, "-m", "loomdb", "client", "doc", "get", "notes", doc_id]
    done = subprocess.run(
        [*prefix, *command, "--url", node.url, "--json"],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        env=node_env(),
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout) if done.returncode == 0 else None


def test_mdns_on_loopback_only_or_without_p2p_is_a_clear_error(tmp_path: Path) -> None:
    """No namespace needed: ``--mdns`` refused before anything opens."""
    home = tmp_path / "n"
    make_home(home, NamedKey.generate_fingerprinted("shared"))
    for extra in (["--p2p-addr", "/ip4/127.0.0.1/tcp/0"], ["--no-p2p"]):
        done = loomdb("start", "--home", str(home), "--api", "127.0.0.1:0", "--mdns", *extra)
        assert done.returncode == 2, (done.returncode, done.stderr)
        assert "Traceback" not in done.stderr
        assert "--mdns" in done.stderr, done.stderr


def test_p8_interop_py_libp2ps_own_mdns_and_ours_find_each_other_and_connect(
    cluster: Nodes, tmp_path: Path
) -> None:
    """The wire is the spec's: a plain py-libp2p host with its own mDNS (another
    implementation: numbered ``dnsaddrN`` keys, its own parsing) on the same LAN."""
    with lan(2) as net:
        make_home(tmp_path / "a", NamedKey.generate_fingerprinted("shared"))
        a = cluster.start(
            tmp_path / "a", "--p2p-addr", f"/ip4/0.0.0.0/tcp/{PORT}", "--mdns", prefix=net.prefix(0)
        )
        out = tmp_path / "other.jsonl"
        script = [sys.executable, "-m", "tests.integration.pylibp2p_mdns_peer"]
        with out.open("wb") as sink:
            other = subprocess.Popen(
                [*net.prefix(1), *script, f"/ip4/{net.ip(1)}/tcp/{PORT}", str(WAIT + 30)],
                stdout=sink,
                stderr=subprocess.DEVNULL,
                env=node_env(),
            )
        try:

            def lines() -> list[Any]:  # whole lines only (the last may be half written)
                text = out.read_text()
                return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]

            [hello] = poll(lambda: [x for x in lines() if "peer_id" in x], "the other host starts")
            theirs = hello["peer_id"]
            ours = ns_json(net.prefix(0), a, "p2p", "info")["peer_id"]

            def connected() -> bool:
                peers = ns_json(net.prefix(0), a, "p2p", "peers")["peers"]
                return theirs in [p["peer_id"] for p in peers]

            poll(connected, "our node finds py-libp2p's by mDNS and connects", a.stderr)
            mdns = ns_json(net.prefix(0), a, "p2p", "info")["mdns"]
            assert [p["peer_id"] for p in mdns["peers"]] == [theirs]
            poll(lambda: {"found": ours} in lines(), "py-libp2p's mDNS finds our node")
        finally:
            other.kill()
            other.wait(timeout=CLIENT_TIMEOUT)


def test_mdns_stays_on_the_interface_of_the_listen_address(cluster: Nodes, tmp_path: Path) -> None:
    """M has two interfaces, eth0 on LAN 1 and eth1 on LAN 2. Its node M1 listens on
    its LAN 1 address with ``--mdns``; a second node M2 on the same machine does so on
    LAN 2 (so the machine joins the mDNS group there too, as avahi would). M1 finds
    P (LAN 1) and neither Q (LAN 2) nor M2; Q never hears of M1, nor P of M2."""
    with lan(4, lans=[(0, 1), (0, 1), (0,), (1,)]) as net:
        key = NamedKey.generate_fingerprinted("shared")
        for name in ("m1", "m2", "p", "q"):
            make_home(tmp_path / name, key)
        m = net.prefix(0)
        m1, m2, p, q = (
            cluster.launch(tmp_path / name, "--p2p-addr", listen, "--mdns", prefix=prefix)
            for name, listen, prefix in (
                ("m1", f"/ip4/{net.ip(0, 0)}/tcp/{PORT}", m),
                ("m2", f"/ip4/{net.ip(0, 1)}/tcp/{PORT + 1}", m),
                ("p", f"/ip4/{net.ip(2, 0)}/tcp/{PORT}", net.prefix(2)),
                ("q", f"/ip4/{net.ip(3, 1)}/tcp/{PORT}", net.prefix(3)),
            )
        )
        cluster.wait_ready()
        pid = {
            name: ns_json(prefix, node, "p2p", "info")["peer_id"]
            for name, node, prefix in (
                ("m1", m1, m),
                ("m2", m2, m),
                ("p", p, net.prefix(2)),
                ("q", q, net.prefix(3)),
            )
        }

        def mdns(prefix: Sequence[str], node: Node) -> Any:
            return ns_json(prefix, node, "p2p", "info")["mdns"]

        def found(prefix: Sequence[str], node: Node) -> list[str]:
            return [x["peer_id"] for x in mdns(prefix, node)["peers"] if x["connected"]]

        poll(
            lambda: found(m, m1) == [pid["p"]],
            "M1 finds P on LAN 1",
            lambda: (mdns(m, m1), mdns(net.prefix(2), p), mdns(m, m2), m1.stderr()[-2000:]),
        )
        poll(lambda: found(m, m2) == [pid["q"]], "M2 finds Q on LAN 2")
        info = mdns(m, m1)
        assert info["interfaces"] == [f"eth0 {net.ip(0, 0)}/24"]
        # M1 may hear LAN 2 (its *:5353 socket gets the group from every interface the
        # machine joined it on, M2's eth1 too), but believes nothing from there.
        assert [x["peer_id"] for x in info["peers"]] == [pid["p"]]
        assert [x["peer_id"] for x in mdns(net.prefix(3), q)["peers"]] == [pid["m2"]]
        assert [x["peer_id"] for x in mdns(net.prefix(2), p)["peers"]] == [pid["m1"]]


def test_the_mdns_bench_keeps_working(tmp_path: Path) -> None:
    """``bench/mdns.py --reps 1`` runs and connects (its figure is printed, not asserted)."""
    lan_module.require_available()
    out = tmp_path / "mdns.json"
    bench = Path(__file__).resolve().parents[2] / "bench" / "mdns.py"
    run = run_python(str(bench), "--reps", "1", "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert "ready_to_connected_s: median" in run.stdout
    assert json.loads(out.read_text())["results"]["connected"] == "1/1"
