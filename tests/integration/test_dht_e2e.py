"""The Kad-DHT end to end: real ``loomdb start`` processes on 127.0.0.1.

A node that holds a collection provides it (hashed keys) on the DHT; a node that
was never told about it finds it there through a third node and fetches the
history from it (``client p2p document sync``); the DHT of a node refuses a
value record in a namespace it does not know; ``--no-dht`` runs none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
from libp2p.kad_dht.common import PROTOCOL_ID
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.utils.varint import read_varint_prefixed_bytes_limited
from multiaddr import Multiaddr
from varint import encode as varint_encode

from loomdb.identity.keys import NamedKey, SigningKey
from loomdb.transports.libp2p import P2PHost
from tests.doc_support import make_home
from tests.integration.nodes import Node, Nodes, nodes
from tests.integration.test_gossip_e2e import doc, poll
from tests.integration.test_p2p_e2e import cli, cli_json, p2p_addr, peer_ids, write

pytestmark = pytest.mark.integration

WAIT = 30.0
QUIET = ("--anti-entropy-seconds", "3600")  # head exchange on connect only


@pytest.fixture
def cluster() -> Iterator[Nodes]:
    with nodes() as group:
        yield group


@pytest.fixture
def key() -> NamedKey:
    return NamedKey.generate_fingerprinted("shared")


def start(cluster: Nodes, home: Path, key: NamedKey, *args: str) -> Node:
    make_home(home, key)
    return cluster.start(home, *QUIET, *args)


def dht(node: Node) -> dict[str, Any]:
    info: dict[str, Any] = cli_json(node, "p2p", "info")["dht"]
    return info


def peer_of(node: Node) -> str:
    return p2p_addr(node).rsplit("/", 1)[1]


@pytest.mark.parametrize("a_listens", ["127.0.0.1", "0.0.0.0"])
def test_a_node_finds_history_through_the_dht(
    cluster: Nodes, tmp_path: Path, key: NamedKey, a_listens: str
) -> None:
    """On ``0.0.0.0`` (the default), A's provider records carry its interfaces' addresses."""
    b = start(cluster, tmp_path / "b", key)  # a plain node: holds nothing of "notes"
    listen = ("--p2p-addr", f"/ip4/{a_listens}/tcp/0")
    a = start(cluster, tmp_path / "a", key, *listen, "--peers", p2p_addr(b))
    write(a, "main", "notes", "n1", {"title": "found through the DHT"})
    # A provides its space and its collection (to B, the one DHT server it knows).
    poll(lambda: dht(a)["keys_provided"] >= 2, "A's keys provided", WAIT, lambda: dht(a))
    assert dht(a)["mode"] == "server"

    c = start(cluster, tmp_path / "c", key, "--peers", p2p_addr(b))  # never told about A
    poll(lambda: peer_of(b) in peer_ids(c), "C connected to B", WAIT)
    assert doc(c, "notes", "n1") is None

    done = cli_json(c, "p2p", "document", "sync", "notes/n1")
    via_dht = [p for p in done["peers"] if p.get("via") == "dht"]
    assert [(p["peer_id"], p["pulled"] >= 1) for p in via_dht] == [(peer_of(a), True)], done
    assert doc(c, "notes", "n1")["value"] == {"title": "found through the DHT"}
    info = dht(c)
    assert info["lookups"] >= 1 and info["provider_dials"] + info["routing_table"] >= 1, info
    assert peer_of(a) in peer_ids(c)  # C dialled A, found through the DHT

    shown = cli(c, "p2p", "info")
    assert shown.returncode == 0 and "dht_lookups" in shown.stdout, shown.stdout
    told = cli(c, "p2p", "document", "sync", "notes/n1")
    assert told.returncode == 0 and "pulled" in told.stdout, told.stdout
    # py-libp2p's empty "Failed to read DHT message from stream: " warnings are quiet
    for node in (a, b, c):
        assert "DHT" not in node.stderr() and "Traceback" not in node.stderr(), node.stderr()


def test_a_value_in_an_unknown_namespace_is_refused(
    cluster: Nodes, tmp_path: Path, key: NamedKey
) -> None:
    a = start(cluster, tmp_path / "a", key)
    reply: dict[str, Any] = {}

    async def put_and_get() -> None:
        host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], gossip=False)
        async with host.run():
            info = info_from_p2p_addr(Multiaddr(p2p_addr(a)))
            await host.host.connect(info)
            for namespace in ("/stranger/key", "/pk/key", "no-namespace"):
                put = Message(type=Message.MessageType.PUT_VALUE, key=namespace.encode())
                put.record.key = namespace.encode()
                put.record.value = b"anything"
                reply[f"put {namespace}"] = await _request(host, info.peer_id, put)
                get = Message(type=Message.MessageType.GET_VALUE, key=namespace.encode())
                answer = await _request(host, info.peer_id, get)
                reply[f"get {namespace}"] = None if answer is None else answer.HasField("record")

    anyio.run(put_and_get, backend="trio")
    assert reply == {
        "put /stranger/key": None,  # refused: the stream is reset, no echo
        "get /stranger/key": False,  # nothing stored
        "put /pk/key": None,  # no pk namespace either: loomdb keeps no values
        "get /pk/key": False,
        "put no-namespace": None,
        "get no-namespace": False,
    }, reply
    assert "Traceback" not in a.stderr()


async def _request(host: P2PHost, peer: Any, message: Message) -> Message | None:
    """One DHT request; its answer, or None when the node reset the stream."""
    stream = await host.host.new_stream(peer, [PROTOCOL_ID])
    data = message.SerializeToString()
    try:
        with trio.fail_after(10):
            await stream.write(varint_encode(len(data)) + data)
            answer = Message()
            answer.ParseFromString(await read_varint_prefixed_bytes_limited(stream, 1 << 20))
            return answer
    except Exception:  # reset, closed: refused
        return None
    finally:
        with contextlib.suppress(Exception):  # already reset
            await stream.close()


def test_no_dht_runs_none(cluster: Nodes, tmp_path: Path, key: NamedKey) -> None:
    a = start(cluster, tmp_path / "a", key, "--no-dht")
    assert cli_json(a, "p2p", "info")["dht"] is None
    shown = cli(a, "p2p", "info")
    assert shown.returncode == 0 and "off" in shown.stdout
