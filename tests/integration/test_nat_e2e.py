"""P7 through real NATs: ``loomdb start`` processes in network namespaces
(:mod:`tests.integration.netns`), relay R on the "public" bridge, A and B each
behind its own nftables-masquerading router.

(a) A and B cannot reach each other directly; they connect through R's circuit
    relay and sync a document.
(b) Port-preserving NATs with stateful firewalls: the relayed connection is
    upgraded to a direct one (DCUtR), shown by the connection's type and its
    address (B's router's public address and B's listen port); the success rate
    and the time to upgrade over several tries are printed.
(c) Symmetric NATs (``masquerade random``): the punch gives up within its bound,
    the connection stays relayed, and sync still works.

Needs root (CI runs as root): without it these tests fail with the reason, never skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from loomdb.identity.keys import NamedKey
from tests.doc_support import make_home
from tests.integration.netns import A_IP, B_IP, RELAY_IP, Topology, nat_topology
from tests.integration.nodes import CLIENT_TIMEOUT, Node, Nodes, node_env, nodes

pytestmark = pytest.mark.integration

RELAY_PORT = 4001
A_PORT = 4101
B_PORT = 4102
WAIT = 30.0
RESERVATION_SECONDS = 10  # R's: B renews after 7.5 s
PUNCH_SECONDS = 4.0  # the symmetric case waits out two attempts of this


@pytest.fixture
def cluster() -> Iterator[Nodes]:
    with nodes() as group:
        yield group


def ns_cli(t: Topology, ns: str, node: Node, *args: str) -> Any:
    """``loomdb client ARGS --url NODE --json`` inside ``ns`` (where the node's API is)."""
    done = subprocess.run(
        [
            *t.prefix(ns),
            sys.executable,
            "-m",
            "loomdb",
            "client",
            *args,
            "--url",
            node.url,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        env=node_env(),
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout)


def poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def connections_to(t: Topology, ns: str, node: Node, peer: str) -> list[dict[str, Any]]:
    for p in ns_cli(t, ns, node, "p2p", "peers")["peers"]:
        if p["peer_id"] == peer:
            return list(p["connection_types"])
    return []


def start_three(
    cluster: Nodes, t: Topology, tmp_path: Path, *extra: str
) -> tuple[Node, Node, Node, str]:
    """R (relay service), then A and B reserving on it; B's circuit address once reserved."""
    key = NamedKey.generate_fingerprinted("shared")
    for name in ("r", "a", "b"):
        make_home(tmp_path / name, key)
    relay = cluster.start(
        tmp_path / "r",
        "--p2p-addr",
        f"/ip4/{RELAY_IP}/tcp/{RELAY_PORT}",
        "--relay-service",
        "--relay-reservation-seconds",
        str(RESERVATION_SECONDS),
        prefix=t.prefix(t.relay),
    )
    [relay_addr] = relay.p2p_addrs
    a = cluster.launch(
        tmp_path / "a",
        *("--p2p-addr", f"/ip4/0.0.0.0/tcp/{A_PORT}", "--relays", relay_addr, *extra),
        prefix=t.prefix(t.a),
    )
    b = cluster.launch(
        tmp_path / "b",
        *("--p2p-addr", f"/ip4/0.0.0.0/tcp/{B_PORT}", "--relays", relay_addr, *extra),
        prefix=t.prefix(t.b),
    )
    cluster.wait_ready()

    def reserved(ns: str, node: Node) -> str | None:
        [r] = ns_cli(t, ns, node, "p2p", "info")["nat"]["relays"]
        return r["addr"] if r["state"] == "reserved" else None

    for name, ns, node in (("A", t.a, a), ("B", t.b, b)):  # both: each may be dialled via R
        try:
            circuit = poll(partial(reserved, ns, node), WAIT, f"{name}'s reservation on R")
        except AssertionError:
            nat = ns_cli(t, ns, node, "p2p", "info")["nat"]
            raise AssertionError(
                f"{name} reserved nothing on R: {nat}\n{node.stderr()[-2000:]}"
            ) from None
    assert circuit.startswith(f"{relay_addr}/p2p-circuit/p2p/12D3KooW")
    listed = ns_cli(t, t.b, b, "p2p", "info")["listen"]
    assert circuit in listed  # advertised
    return relay, a, b, circuit


def write_and_sync(t: Topology, a: Node, b: Node, circuit: str, doc: str) -> None:
    """B writes ``doc``; A syncs with B's circuit address; A has it."""
    ns_cli(t, t.b, b, "doc", "create", "notes", "--id", doc, json.dumps({"by": "b", "doc": doc}))
    report = ns_cli(t, t.a, a, "sync", circuit)
    assert report["event"] == "done", report
    assert report["rejected"] == []
    got = ns_cli(t, t.a, a, "doc", "get", "notes", doc)
    assert got["value"] == {"by": "b", "doc": doc}, got


# --- (a) through the relay -----------------------------------------------------------


def test_a_and_b_behind_nats_connect_through_the_relay_and_sync(
    cluster: Nodes, tmp_path: Path
) -> None:
    with nat_topology("port-preserving") as t:
        relay, a, b, circuit = start_three(cluster, t, tmp_path, "--no-hole-punch")
        b_peer = circuit.rsplit("/", 1)[1]
        # No direct way: A's dial of B's own address fails fast (no route).
        direct = f"/ip4/{B_IP}/tcp/{B_PORT}/p2p/{b_peer}"
        command = ["client", "p2p", "connect", direct, "--url", a.url]
        done = subprocess.run(
            [*t.prefix(t.a), sys.executable, "-m", "loomdb", *command],
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            env=node_env(),
            check=False,
        )
        assert done.returncode == 7, (done.stdout, done.stderr)

        connected = ns_cli(t, t.a, a, "p2p", "connect", circuit)
        assert connected == {"peer_id": b_peer, "connected": True}
        write_and_sync(t, a, b, circuit, "d1")
        [conn] = connections_to(t, t.a, a, b_peer)
        assert conn["type"] == "relayed"
        assert "/p2p-circuit/" in conn["addrs"][0]
        # ...and the other way: B pushes to A's circuit address, over the same connection
        a_info = ns_cli(t, t.a, a, "p2p", "info")
        a_peer = a_info["peer_id"]
        [a_circuit] = [x for x in a_info["listen"] if "/p2p-circuit/" in x]
        ns_cli(t, t.b, b, "doc", "create", "notes", "--id", "d2", json.dumps({"by": "b"}))
        pushed = ns_cli(t, t.b, b, "sync", a_circuit, "--push")
        assert pushed["pushed"] >= 1, pushed
        assert ns_cli(t, t.a, a, "doc", "get", "notes", "d2")["value"] == {"by": "b"}
        relay_info = ns_cli(t, t.relay, relay, "p2p", "info")["nat"]["relay_service"]
        assert relay_info["reservations"] == 2  # A's and B's
        assert relay_info["circuits"] >= 1
        [b_conn] = connections_to(t, t.b, b, a_peer)
        assert b_conn["type"] == "relayed"

        # Gossip over the relayed connection: A follows the collection, B's new
        # documents reach it as gossip (B writes until one is gossiped to A).
        ns_cli(t, t.a, a, "p2p", "collection", "add", "notes")
        sent = iter(range(1000))

        def gossiped() -> bool:
            ns_cli(t, t.b, b, "doc", "create", "notes", "--id", f"g{next(sent)}", "{}")
            return bool(ns_cli(t, t.a, a, "p2p", "info")["replication"]["gossip"]["stored"] >= 1)

        poll(gossiped, WAIT, "a gossiped document")

        # B renews its reservation before it runs out; still reachable through R.
        def renewed() -> bool:
            [r] = ns_cli(t, t.b, b, "p2p", "info")["nat"]["relays"]
            return bool(r["reservations"] >= 2 and r["state"] == "reserved")

        poll(renewed, RESERVATION_SECONDS + WAIT, "B's renewal")
        ns_cli(t, t.a, a, "p2p", "disconnect", b_peer)
        write_and_sync(t, a, b, circuit, "d3")


# --- (b) hole punching through port-preserving NATs -------------------------------------


def test_port_preserving_nats_upgrade_to_a_direct_connection(
    cluster: Nodes, tmp_path: Path
) -> None:
    with nat_topology("port-preserving") as t:
        _, a, b, circuit = start_three(cluster, t, tmp_path)
        b_peer = circuit.rsplit("/", 1)[1]
        b_public = f"/ip4/198.51.100.3/tcp/{B_PORT}"  # B's router, B's port kept
        tries, upgraded, seconds = 3, 0, []
        for i in range(tries):
            began = time.monotonic()
            ns_cli(t, t.a, a, "p2p", "connect", circuit)
            relayed_in = time.monotonic() - began
            # Traffic goes over the relay at once, the punch in the background.
            write_and_sync(t, a, b, circuit, f"p{i}")

            def direct() -> list[dict[str, Any]]:
                conns = connections_to(t, t.a, a, b_peer)
                return [c for c in conns if c["type"] == "direct"]

            try:
                [conn] = poll(direct, WAIT, "a direct connection")
            except AssertionError:
                continue
            upgraded += 1
            seconds.append(time.monotonic() - began)
            assert conn["addrs"] == [b_public], conn
            punches = ns_cli(t, t.a, a, "p2p", "info")["nat"]["punches"]
            print(
                f"try {i}: relayed in {relayed_in:.2f} s, direct after {seconds[-1]:.2f} s", punches
            )
            # Again, from a new relayed connection.
            ns_cli(t, t.a, a, "p2p", "disconnect", b_peer)
            poll(
                lambda: not connections_to(t, t.b, b, ns_cli(t, t.a, a, "p2p", "info")["peer_id"]),
                WAIT,
                "B sees A gone",
            )
        print(
            f"hole punching, port-preserving NAT: {upgraded}/{tries} direct, "
            f"time to direct {', '.join(f'{s:.2f}' for s in seconds)} s"
        )
        assert upgraded >= 1
        assert upgraded / tries >= 2 / 3


# --- (c) symmetric NATs -----------------------------------------------------------------


def test_symmetric_nats_stay_relayed_and_still_sync(cluster: Nodes, tmp_path: Path) -> None:
    with nat_topology("symmetric") as t:
        _, a, b, circuit = start_three(
            cluster, t, tmp_path, "--hole-punch-seconds", str(PUNCH_SECONDS)
        )
        b_peer = circuit.rsplit("/", 1)[1]
        ns_cli(t, t.a, a, "p2p", "connect", circuit)
        write_and_sync(t, a, b, circuit, "s1")

        def gave_up() -> bool:
            for node, ns in ((a, t.a), (b, t.b)):
                punches = ns_cli(t, ns, node, "p2p", "info")["nat"]["punches"]
                if any(p["state"] == "relayed" for p in punches.values()):
                    return True
            return False

        poll(gave_up, PUNCH_SECONDS * 2 + 15, "the punch gave up")
        conns = connections_to(t, t.a, a, b_peer)
        assert [c["type"] for c in conns] == ["relayed"], conns
        write_and_sync(t, a, b, circuit, "s2")  # still syncs, relayed
        assert A_IP not in json.dumps(conns)
