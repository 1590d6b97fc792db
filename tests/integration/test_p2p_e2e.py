"""libp2p end to end: real ``loomdb start`` processes listening on 127.0.0.1 (Noise,
Yamux, TCP), driven by ``loomdb client p2p …`` and ``loomdb client sync MULTIADDR``,
plus libp2p hosts in this process as strangers and misbehaving peers.

Covers ACCEPTANCE.md P1 (the Peer ID is kept across restarts; the printed
multiaddrs are the ones listened on), sync over ``/loomdb/sync/1.0.0`` both ways,
managed spaces over libp2p (a member's node acts as its user through the device
its card lists; a stranger's entries and pulls are refused), a plaintext-only
dialer refused, and an oversized frame refused with the node up.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import multiaddr
import pytest
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.exceptions import SwarmException
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from loomdb.entries.entry import build_entry
from loomdb.errors import FrameTooLargeError, RemoteError, TrustError
from loomdb.identity.keys import NamedKey, SigningKey
from loomdb.stores import MemoryStore
from loomdb.stores.base import PutStatus
from loomdb.stores.remote import RemoteStore
from loomdb.sync import wire
from loomdb.sync.replicate import pull_changes_from
from loomdb.transports.libp2p import P2PHost
from tests.doc_support import make_home
from tests.integration.nodes import (
    CLIENT_TIMEOUT,
    Node,
    Nodes,
    client_sync,
    create_docs,
    documents,
    loomdb,
    node_env,
    nodes,
)
from tests.integration.test_trust_e2e import card_of, invite, join, refused

pytestmark = pytest.mark.integration

T = TypeVar("T")
ADDR = re.compile(r"/ip4/127\.0\.0\.1/tcp/(\d+)/p2p/(12D3KooW\w+)")
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
WAIT = 10.0
SPACE_HEADER = "X-Loomdb-Space"


@pytest.fixture
def cluster() -> Iterator[Nodes]:
    with nodes() as group:
        yield group


@pytest.fixture
def key() -> NamedKey:
    """The open-space key the full nodes of a test share, so they read each other."""
    return NamedKey.generate_fingerprinted("shared")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn, backend="trio")  # py-libp2p is trio-only


def cli(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    done = loomdb("client", *args, "--url", node.url)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def cli_json(node: Node, *args: str) -> Any:
    done = cli(node, *args, "--json")
    assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout)


def write(node: Node, space: str, collection: str, doc_id: str, value: dict[str, Any]) -> None:
    with node.http() as http:
        r = http.post(
            f"/collections/{collection}/docs",
            json={"id": doc_id, "value": value},
            headers={SPACE_HEADER: space},
        )
        assert r.status_code == 201, r.text


def read_all(node: Node, space: str, collection: str) -> dict[str, Any]:
    with node.http() as http:
        r = http.get(
            f"/collections/{collection}/docs",
            params={"limit": 1000},
            headers={SPACE_HEADER: space},
        )
        if r.status_code == 404:
            return {}
        assert r.status_code == 200, r.text
        return {d["id"]: d["value"] for d in r.json()["documents"]}


def p2p_addr(node: Node) -> str:
    [addr] = node.p2p_addrs
    return addr


def peer_ids(node: Node) -> list[str]:
    return [p["peer_id"] for p in cli_json(node, "p2p", "peers")["peers"]]


# --- the host -----------------------------------------------------------------------------


def test_p1_the_peer_id_is_kept_and_the_printed_multiaddrs_are_listened_on(
    cluster: Nodes, tmp_path: Path
) -> None:
    home = tmp_path / "a"
    a = cluster.start(home)
    found = ADDR.fullmatch(p2p_addr(a))
    assert found is not None, a.p2p_addrs
    port, peer = int(found[1]), found[2]
    assert port > 0  # port 0 asked: the ready line has the one chosen
    with a.http() as http:
        node = http.get("/node").json()
        info = http.get("/p2p/info").json()
    assert node["peer_id"] == peer
    assert node["multiaddrs"] == a.p2p_addrs and node["multiaddr"] == a.p2p_addrs[0]
    assert info["peer_id"] == peer and info["listen"] == a.p2p_addrs
    assert info["security"] == ["/noise"] and info["protocols"] == ["/loomdb/sync/1.0.0"]
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT):
        pass  # it listens there
    with a.http(admin=False) as stranger:  # a control route: the admin token, or nothing
        assert stranger.get("/p2p/info").status_code == 401
        assert stranger.post("/p2p/connect", json={"addr": p2p_addr(a)}).status_code == 401
    with a.http() as http:
        as_text = {"content-type": "text/plain"}
        r = http.post("/p2p/connect", content=json.dumps({"addr": "x"}), headers=as_text)
        assert r.status_code == 415
        r = http.post("/p2p/connect", json={"addr": p2p_addr(a), "extra": 1})
        assert r.status_code == 400
        r = http.post("/p2p/connect", json={"addr": p2p_addr(a)})  # itself
        assert (r.status_code, r.json()["error"]["code"]) == (422, "validation")
    shown = json.loads(loomdb("id", "--home", str(home), "--json").stdout)
    assert shown["peer_id"] == peer and shown["listening"] == p2p_addr(a)

    assert a.stop() == 0
    shown = json.loads(loomdb("id", "--home", str(home), "--json").stdout)
    assert shown["peer_id"] == peer and shown["listening"] == "-"  # not running
    again = cluster.start(home)
    found = ADDR.fullmatch(p2p_addr(again))
    assert found is not None and found[2] == peer  # the same Peer ID after a restart
    assert cli_json(again, "p2p", "info")["peer_id"] == peer


def test_a_busy_p2p_port_is_a_clear_error_before_anything_opens(
    cluster: Nodes, tmp_path: Path
) -> None:
    a = cluster.start(tmp_path / "a")
    found = ADDR.fullmatch(p2p_addr(a))
    assert found is not None
    home = tmp_path / "h"
    busy = subprocess.run(
        [sys.executable, "-m", "loomdb", "start", "--home", str(home), "--api", "127.0.0.1:0",
         "--p2p-addr", f"/ip4/127.0.0.1/tcp/{found[1]}"],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT, env=node_env(), check=False,
    )  # fmt: skip
    assert busy.returncode == 7, busy.stderr  # AddressInUseError, like a busy API port
    assert "in use" in busy.stderr and "--p2p-addr" in busy.stderr
    assert "Traceback" not in busy.stderr
    assert not home.exists()  # refused before anything was made
    for bad in (["--p2p-addr", "/ip4/127.0.0.1/udp/1"], ["--no-p2p", "--peers", p2p_addr(a)]):
        done = loomdb("start", "--home", str(home), "--api", "127.0.0.1:0", *bad)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr


def test_without_p2p_the_node_has_no_host(cluster: Nodes, tmp_path: Path) -> None:
    a = cluster.start(tmp_path / "a", "--no-p2p")
    assert a.p2p_addrs == []
    with a.http() as http:
        r = http.get("/p2p/info")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "route.not_found")
        assert http.get("/node").status_code == 200


def poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (bounded) for a node's state as its API shows it."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def test_bootstrap_peers_are_connected_and_reconnected_after_an_outage(
    cluster: Nodes, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fixed = ("--p2p-addr", f"/ip4/127.0.0.1/tcp/{port}")  # the same address after a restart
    a = cluster.start(tmp_path / "a", *fixed)
    a_peer = cli_json(a, "p2p", "info")["peer_id"]
    b = cluster.start(tmp_path / "b", "--peers", p2p_addr(a))
    assert cli_json(b, "p2p", "info")["bootstrap"] == [p2p_addr(a)]
    poll(lambda: peer_ids(b) == [a_peer], WAIT, "b connects to its bootstrap peer")

    assert a.stop() == 0
    poll(lambda: peer_ids(b) == [], WAIT, "b sees a gone")
    a = cluster.start(tmp_path / "a", *fixed)
    # b looks every 5 s and redials after 1, 2, 4 … s: back within a few seconds
    poll(lambda: peer_ids(b) == [a_peer], 40.0, "b reconnects to a")
    counters = cli_json(b, "p2p", "info")["counters"]
    assert counters["dials"] >= 2 and counters["dial_failures"] < counters["dials"]


# --- sync over libp2p -----------------------------------------------------------------------


def test_two_nodes_connect_and_sync_both_ways_over_libp2p(
    cluster: Nodes, key: NamedKey, tmp_path: Path
) -> None:
    make_home(tmp_path / "a", key)
    make_home(tmp_path / "b", key)
    # The disconnect below is b's alone: with the DHT on, a's next provide dials b (a DHT
    # server in its table) at once, as Kademlia does; the DHT has tests of its own.
    a = cluster.launch(tmp_path / "a", "--no-dht")
    b = cluster.launch(tmp_path / "b", "--no-dht")
    cluster.wait_ready()
    create_docs(a, "notes", [(f"a{i}", {"by": "a", "i": i}) for i in range(5)])
    create_docs(b, "notes", [(f"b{i}", {"by": "b", "i": i}) for i in range(3)])
    a_peer = cli_json(a, "p2p", "info")["peer_id"]
    b_peer = cli_json(b, "p2p", "info")["peer_id"]

    connected = cli_json(b, "p2p", "connect", p2p_addr(a))
    assert connected == {"peer_id": a_peer, "connected": True}
    assert peer_ids(b) == [a_peer]
    assert peer_ids(a) == [b_peer]  # a knows the connection too (it completes before the reply)

    # b syncs with a over libp2p: both ways in one run
    report = client_sync(p2p_addr(a), url=b.url)
    assert report["rejected"] == []
    assert (report["pulled"], report["pushed"]) == (5, 3)
    assert documents(a, "notes") == documents(b, "notes")
    assert set(documents(a, "notes")) == {"a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2"}
    # one long-lived stream to the peer: the whole sync, and the next one (nothing to do)
    again = client_sync(p2p_addr(a), url=b.url)
    assert (again["pulled"], again["pushed"]) == (0, 0)
    assert cli_json(b, "p2p", "info")["counters"]["streams_opened"] == 1
    served = cli_json(a, "p2p", "info")["counters"]
    assert served["streams_served"] == 1 and served["frames_served"] >= 3

    # a syncs with b the other way: a new document reaches b
    create_docs(a, "notes", [("a-late", {"by": "a", "late": True})])
    report = client_sync(p2p_addr(b), "--push", url=a.url)
    assert (report["pushed"], report["pulled"]) == (1, 0)
    assert documents(b, "notes")["a-late"] == {"by": "a", "late": True}

    done = cli_json(b, "p2p", "disconnect", a_peer)
    assert done == {"peer_id": a_peer, "disconnected": True}
    assert peer_ids(b) == []
    unknown = SigningKey.generate()
    from loomdb.identity.peer_id import peer_id_from_public_key

    nobody = peer_id_from_public_key(unknown.public_key)
    assert cli_json(b, "p2p", "disconnect", nobody)["disconnected"] is False
    # a peer that is not there: exit 7, the transport's error, one line
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    gone = cli(b, "p2p", "connect", f"/ip4/127.0.0.1/tcp/{free}/p2p/{nobody}")
    refused(gone, (7,), "cannot reach")
    refused(cli(b, "sync", f"/ip4/127.0.0.1/tcp/{free}/p2p/{nobody}"), (7,), "cannot")
    refused(cli(b, "p2p", "connect", "/ip4/127.0.0.1/tcp/1"), (2,), "p2p")


def test_managed_spaces_over_libp2p_members_by_device_strangers_refused(
    cluster: Nodes, tmp_path: Path
) -> None:
    a = cluster.launch(tmp_path / "a")
    b = cluster.launch(tmp_path / "b")
    cluster.wait_ready()
    space = cli_json(a, "space", "create", "team")["space"]
    write(a, space, "notes", "a1", {"by": "a"})

    # b is a stranger: its node is anonymous over libp2p, and refused the space
    refused(cli(b, "sync", p2p_addr(a), "--space", space), (10,), "may not")
    assert read_all(b, space, "notes") == {}

    # a stranger's host pushes entries of the space and pulls it: refused by the node
    stranger = SigningKey.generate()
    entry = build_entry(
        author=stranger,
        space=space,
        collection="notes",
        document="forged",
        kind="create",
        payload=b"{}",
        created_at=1,
        key=NamedKey.generate("stranger@1"),
    )

    async def as_stranger() -> tuple[list[str], str]:
        host = P2PHost(SigningKey.generate(), LOOPBACK, connect_timeout=WAIT)
        async with host.run(), RemoteStore(host.channel(p2p_addr(a)), retries=0) as remote:
            [result] = await remote.put_entries([entry])
            assert result.status is PutStatus.REJECTED
            assert result.error is not None
            mirror = MemoryStore()
            try:
                await pull_changes_from(mirror, remote, space)
                pulled = "pulled"
            except (TrustError, RemoteError) as exc:
                pulled = str(getattr(exc, "remote_code", exc.code))
            assert await mirror.count() == 0
            return [result.error.code], pulled

    codes, pulled = run(as_stranger)
    assert codes == ["trust.forbidden"] and pulled.startswith("trust.")
    assert set(read_all(a, space, "notes")) == {"a1"}

    # a invites b: b's card lists b's node as a device, so over libp2p b's node acts as b
    join(b, invite(a, space, card_of(b), "read", "write"))
    write(b, space, "notes", "b1", {"by": "b"})
    report = client_sync(p2p_addr(a), "--space", space, url=b.url)
    assert report["rejected"] == [] and report["pulled"] >= 1 and report["pushed"] >= 1
    assert read_all(b, space, "notes") == read_all(a, space, "notes")
    assert set(read_all(a, space, "notes")) == {"a1", "b1"}

    # revoked: b's node is refused from then on
    b_user = cli_json(b, "identity")["user"]
    assert cli(a, "space", "revoke", space, b_user).returncode == 0
    refused(cli(b, "sync", p2p_addr(a), "--space", space), (10,), "may not")


# --- misbehaving peers -----------------------------------------------------------------------


def test_a_plaintext_dialer_is_refused(cluster: Nodes, tmp_path: Path) -> None:
    a = cluster.start(tmp_path / "a")

    async def dial() -> str:
        key_pair = create_new_key_pair(b"\x05" * 32)
        plain = new_host(
            key_pair=key_pair,
            sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)},
        )
        async with plain.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                with anyio.fail_after(WAIT):
                    await plain.connect(info_from_p2p_addr(multiaddr.Multiaddr(p2p_addr(a))))
                outcome = "connected"
            except SwarmException as exc:
                outcome = f"refused: {exc}"
            await plain.close()
            return outcome

    assert run(dial).startswith("refused")
    assert peer_ids(a) == []
    assert cli_json(a, "p2p", "info")["counters"]["streams_served"] == 0


def test_an_oversized_frame_is_refused_with_the_node_up(cluster: Nodes, tmp_path: Path) -> None:
    limit = 64 * 1024
    a = cluster.start(tmp_path / "a", "--max-frame", str(limit))
    hello = wire.encode_request("hello", {})

    async def send() -> tuple[str, Any]:
        host = P2PHost(SigningKey.generate(), LOOPBACK, connect_timeout=WAIT)
        async with host.run():
            big = host.channel(p2p_addr(a), max_frame=4 * limit)
            try:
                await big.request(b"\x00" * (limit + 1), timeout=WAIT)
                outcome = "answered"
            except FrameTooLargeError as exc:
                outcome = f"refused: {exc}"
            # the node is up, and so is the channel: the next request opens a new stream
            reply = wire.decode_reply(await big.request(hello, timeout=WAIT))
            await big.aclose()
            return outcome, reply

    outcome, reply = run(send)
    assert outcome.startswith("refused") and "too large" in outcome
    assert reply["max_frame"] == limit
    counters = cli_json(a, "p2p", "info")["counters"]
    assert counters["refused"] == {"too_large": 1}
    with a.http() as http:
        assert http.get("/node").status_code == 200
