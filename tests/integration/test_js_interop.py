"""A js-libp2p peer against a real ``loomdb start`` node, over TCP and over WebSocket.

``tests/interop/libp2p_peer.mjs`` (js-libp2p, its Noise, Yamux, gossipsub and
WebSocket packages, pinned in tests/interop/package-lock.json) dials the node,
subscribes to a collection topic and reports the gossip it receives, then speaks
``/loomdb/sync/1.0.0``: ``hello``, a ``reconcile`` (its own Negentropy v1 client,
from an empty set) and ``get``. It checks every entry with JS ``multiformats`` and
``@ipld/dag-cbor``: the CID (CIDv1, dag-cbor, sha2-256) recomputed from the bytes,
and the bytes canonical DAG-CBOR. Here we check what it reports against the node's
own view (its API): the connection is Noise and Yamux to the node's Peer ID; writes
made after the subscription arrive by gossip with the CIDs the node gives them; the
sync returns exactly the node's entries.

The node's space is open (a fresh home's ``main``): the JS peer is in no tenant
directory, so it reads as an anonymous peer, which an open space allows.

Skipped, with the reason, only when node is not installed, or older than 20 (run on
20 with tests/interop/with_resolvers.mjs and ``--experimental-websocket``, and on 22
as is; 18, Debian 12's own, has no WebSocket to dial with). ``scripts/setup dev``
installs node's packages (``npm ci`` in tests/interop). Gossip is best-effort
until gossipsub has heard the subscription (a heartbeat or so): the first write is
repeated, bounded, until one arrives; every write after that must arrive. A loomdb
node dialling another over WebSocket is checked here too.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loomdb.identity.keys import NamedKey
from loomdb.replication.topics import collection_topic
from loomdb.transports.libp2p.host import SYNC_PROTOCOL
from tests.doc_support import make_home
from tests.integration.nodes import Node, Nodes, client_sync, create_docs, documents, nodes
from tests.integration.test_p2p_e2e import cli_json

pytestmark = pytest.mark.integration

INTEROP = Path(__file__).resolve().parents[1] / "interop"
PEER = INTEROP / "libp2p_peer.mjs"
SETUP_HINT = "run `scripts/setup dev` (it runs `npm ci` in tests/interop)"
LISTEN = ("--p2p-addr", "/ip4/127.0.0.1/tcp/0", "--p2p-addr", "/ip4/127.0.0.1/tcp/0/ws")
SPACE, COLLECTION = "main", "notes"
WAIT = 30.0
FIRST_GOSSIP_TRIES = 20
FIRST_GOSSIP_WAIT = 2.0
DEADLINE = 180  # seconds the JS peer lives at most
MIN_NODE = 20
BULK = 300
SMALL_FRAME = 4096  # Negentropy's least frame limit: ~120 ids a message, so several rounds


def node_command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip(f"node is not installed: {SETUP_HINT}")
    if not (INTEROP / "node_modules" / "libp2p" / "package.json").is_file():
        pytest.fail(f"tests/interop/node_modules has no libp2p: {SETUP_HINT}", pytrace=False)
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    if major < MIN_NODE:  # Debian 12's own nodejs is 18
        pytest.skip(f"these tests need node {MIN_NODE} or later; this one is {major}")
    # Node 22 has a global WebSocket, which @libp2p/websockets dials with; 20 and 21
    # have it behind this flag.
    return [node, *(["--experimental-websocket"] if major < 22 else []), str(PEER)]


class JsPeer:
    """The node script in a subprocess: its JSON lines through a queue, read with a
    deadline (a thread reads its stdout, so no read blocks the test)."""

    def __init__(self, addr: str, topic: str) -> None:
        self.proc = subprocess.Popen(
            [*node_command(), addr, topic, str(DEADLINE)],
            cwd=INTEROP,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.gossip: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                self.events.put({"event": "error", "message": f"not JSON: {line[:200]!r}"})
        self.events.put(None)

    def next(self, event: str, timeout: float = WAIT) -> dict[str, Any]:
        """The next ``event`` (gossip seen meanwhile is kept in :attr:`gossip`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event!r} from the JS peer within {timeout} s")
            try:
                got = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if got is None:
                raise AssertionError(f"the JS peer ended: {self.proc.wait()} {self._stderr()}")
            if got["event"] == "error":
                raise AssertionError(f"the JS peer failed: {got['message']}")
            if got["event"] == "gossip":
                self.gossip.append(got)
            if got["event"] == event:
                return got

    def gossip_of(self, document: str, timeout: float) -> dict[str, Any] | None:
        """The gossip message of ``document``, waiting at most ``timeout`` s for it."""
        deadline = time.monotonic() + timeout
        while not (found := [g for g in self.gossip if g.get("document") == document]):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self.next("gossip", timeout=left)
            except AssertionError as exc:
                if "within" not in str(exc):
                    raise
        return found[0]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-2000:]

    def close(self) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError):  # it ended already
                self.send("quit")
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code


@pytest.fixture
def cluster() -> Iterator[Nodes]:
    with nodes() as group:
        yield group


@pytest.fixture
def js_peers() -> Iterator[list[JsPeer]]:
    peers: list[JsPeer] = []
    yield peers
    for peer in peers:
        peer.close()


def addr_of(node: Node, transport: str) -> str:
    [addr] = [a for a in node.p2p_addrs if ("/ws/" in a) == (transport == "ws")]
    return addr


def node_entries(node: Node) -> dict[str, str]:
    """Every entry of the node's documents in the collection: CID → document."""
    out: dict[str, str] = {}
    with node.http() as http:
        r = http.get(f"/collections/{COLLECTION}/docs", params={"limit": 1000})
        assert r.status_code == 200, r.text
        for doc in r.json()["documents"]:
            r = http.get(f"/collections/{COLLECTION}/docs/{doc['id']}/history")
            assert r.status_code == 200, r.text
            out.update({item["cid"]: doc["id"] for item in r.json()["history"]})
        count = http.get("/node").json()["stats"]["entries"]
    assert count == len(out), (count, out)  # nothing in the store but these
    return out


def check_entry(entry: dict[str, Any], expected: dict[str, str]) -> None:
    """An entry as the JS peer checked it: a CID of its bytes, canonical DAG-CBOR, and
    the node's entry of that document."""
    assert entry["canonical"] is True, entry
    assert entry["space"] == SPACE and entry["collection"] == COLLECTION, entry
    assert expected.get(entry["cid"]) == entry["document"], (entry, expected)


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_a_js_libp2p_peer_gets_gossip_and_syncs_every_entry(
    cluster: Nodes, tmp_path: Path, js_peers: list[JsPeer], transport: str
) -> None:
    node = cluster.start(tmp_path / "node", *LISTEN)
    assert sorted("/ws/" in a for a in node.p2p_addrs) == [False, True], node.p2p_addrs
    peer_id = node.p2p_addrs[0].rsplit("/p2p/", 1)[1]
    create_docs(node, COLLECTION, [("before-1", {"n": 1}), ("before-2", {"n": 2})])
    with node.http() as http:  # enough for a reconciliation of several rounds
        batch = [{"id": f"bulk-{i}", "value": {"i": i}} for i in range(BULK)]
        r = http.post(f"/collections/{COLLECTION}/docs:batch", json={"documents": batch})
        assert r.status_code in (200, 201), r.text
    with node.http() as http:  # a second entry in one document: a parent link
        r = http.patch(f"/collections/{COLLECTION}/docs/before-1", json={"set": {"n": 3}})
        assert r.status_code == 200, r.text

    peer = JsPeer(addr_of(node, transport), collection_topic(SPACE, COLLECTION))
    js_peers.append(peer)
    connected = peer.next("connected")
    assert connected["peer"] == connected["expected_peer"] == peer_id
    assert (connected["encryption"], connected["multiplexer"]) == ("/noise", "/yamux/1.0.0")
    assert ("/ws" in connected["remote_addr"]) == (transport == "ws"), connected

    # Gossip: the first write that arrives (the node publishes once it has heard the
    # subscription), then every later one.
    first = None
    for i in range(FIRST_GOSSIP_TRIES):
        create_docs(node, COLLECTION, [(f"first-{i}", {"i": i})])
        if (first := peer.gossip_of(f"first-{i}", FIRST_GOSSIP_WAIT)) is not None:
            break
    assert first is not None, f"no gossip after {FIRST_GOSSIP_TRIES} writes"
    later = [f"later-{i}" for i in range(3)]
    create_docs(node, COLLECTION, [(doc, {"later": True}) for doc in later])
    received = [peer.gossip_of(doc, WAIT) for doc in later]
    expected = node_entries(node)
    for message in [first, *received]:
        assert message is not None, (later, peer.gossip)
        assert message["type"] == "entry" and message["from"] == peer_id, message
        check_entry(message, expected)
    assert {g["document"] for g in peer.gossip} <= set(expected.values())

    # Sync: hello, reconcile from nothing, get: exactly the node's entries.
    peer.send(f"sync {SPACE} -")
    sync = peer.next("sync")
    hello = sync["hello"]
    assert hello["peer_id"] == peer_id and hello["versions"] == [1], hello
    assert "negentropy-v1" in hello["features"], hello
    assert sorted(sync["need"]) == sorted(expected), (sync["need"], expected)
    assert sorted(e["cid"] for e in sync["entries"]) == sorted(expected)
    for entry in sync["entries"]:
        assert entry["cid_matches"] is True, entry
        check_entry(entry, expected)
    by_cid = {e["cid"]: e for e in sync["entries"]}
    [change] = [e for e in sync["entries"] if e["kind"] == "change"]
    assert len(change["parents"]) == 1 and by_cid[change["parents"][0]]["document"] == "before-1"

    # The collection's set, in small messages: several rounds, fingerprints and cuts.
    peer.send(f"sync {SPACE} {COLLECTION} {SMALL_FRAME}")
    small = peer.next("sync")
    assert small["set"] == [SPACE, COLLECTION, None] and small["rounds"] > 2, small["rounds"]
    assert sorted(small["need"]) == sorted(expected)
    assert all(e["cid_matches"] and e["canonical"] for e in small["entries"])

    peer.send("quit")
    report = peer.next("report")
    assert report["synced"] == report["synced_cids_matching"] == len(expected), report
    assert report["gossip"] == report["gossip_entries_canonical"] == len(peer.gossip), report
    assert SYNC_PROTOCOL in report["streams"] and "/meshsub/1.2.0" in report["streams"], report
    # what the node advertised by identify: the addresses it printed, real ports
    printed = {a.rsplit("/p2p/", 1)[0] for a in node.p2p_addrs}
    assert {a.split("/p2p/")[0] for a in report["peer_addrs"]} == printed, report
    assert peer.close() == 0


def test_a_loomdb_node_connects_and_syncs_over_websocket(cluster: Nodes, tmp_path: Path) -> None:
    key = NamedKey.generate_fingerprinted("shared")
    for name in ("server", "client"):
        make_home(tmp_path / name, key)
    server = cluster.launch(tmp_path / "server", *LISTEN)
    client = cluster.launch(tmp_path / "client")  # TCP only: it dials WebSocket all the same
    cluster.wait_ready()
    create_docs(server, COLLECTION, [("w1", {"over": "ws"}), ("w2", {"over": "ws"})])
    ws = addr_of(server, "ws")
    server_id = ws.rsplit("/p2p/", 1)[1]
    assert cli_json(client, "p2p", "connect", ws) == {"peer_id": server_id, "connected": True}
    [shown] = cli_json(client, "p2p", "peers")["peers"]
    assert shown["peer_id"] == server_id and ws in shown["addrs"], shown
    report = client_sync(ws, "--pull", url=client.url)
    assert (report["pulled"], report["rejected"]) == (2, [])
    assert documents(client, COLLECTION) == {"w1": {"over": "ws"}, "w2": {"over": "ws"}}
