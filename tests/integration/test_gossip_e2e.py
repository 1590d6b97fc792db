"""Passive replication end to end: real ``loomdb start`` processes on 127.0.0.1,
subscribed with ``loomdb client p2p collection|document …``, gossip over
gossipsub, missing history fetched over ``/loomdb/sync``, head exchange on
connect; plus a libp2p host in this process that publishes garbage and forgeries.

ACCEPTANCE.md P2 (document subscribers exchange updates both ways; a node not
subscribed, or not connected, receives nothing), P3 (a collection subscription
receives new documents of that collection only, until it is removed), P6 (missed
updates: the history is fetched on the next update, and on connect; divergent
offline edits converge), P9 (a five-node chain). Every wait polls an API with a
deadline.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import cbor2
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from loomdb.entries.entry import build_entry
from loomdb.identity.keys import NamedKey, SigningKey
from loomdb.replication.message import MAX_MESSAGE, encode_batch, encode_entry
from loomdb.replication.topics import collection_topic
from loomdb.transports.libp2p import P2PHost
from tests.doc_support import make_home
from tests.integration.nodes import Node, Nodes, nodes
from tests.integration.test_p2p_e2e import cli, cli_json, p2p_addr, peer_ids, read_all, write
from tests.integration.test_trust_e2e import card_of, invite, join

pytestmark = pytest.mark.integration

WAIT = 20.0
QUIET = ("--anti-entropy-seconds", "3600")  # head exchange on connect only


@pytest.fixture
def cluster() -> Iterator[Nodes]:
    with nodes() as group:
        yield group


@pytest.fixture
def key() -> NamedKey:
    return NamedKey.generate_fingerprinted("shared")


def poll(
    check: Callable[[], Any],
    what: str,
    timeout: float = WAIT,
    details: Callable[[], Any] = lambda: "",
) -> Any:
    """Wait (bounded) until ``check()`` is truthy; its value."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s {details()}"
        time.sleep(0.05)
    return found


def start(cluster: Nodes, tmp_path: Path, key: NamedKey, names: str, *args: str) -> list[Node]:
    for name in names:
        make_home(tmp_path / name, key)
    group = [cluster.launch(tmp_path / name, *args) for name in names]
    cluster.wait_ready()
    return group


def doc(node: Node, collection: str, doc_id: str, space: str = "main") -> Any:
    with node.http() as http:
        r = http.get(f"/collections/{collection}/docs/{doc_id}", headers={"X-Loomdb-Space": space})
        return r.json() if r.status_code == 200 else None


def update(node: Node, collection: str, doc_id: str, patch: dict[str, Any]) -> None:
    with node.http() as http:
        r = http.patch(f"/collections/{collection}/docs/{doc_id}", json={"set": patch})
        assert r.status_code == 200, r.text


def replication(node: Node) -> dict[str, Any]:
    info: dict[str, Any] = cli_json(node, "p2p", "info")["replication"]
    return info


def gossip(node: Node) -> dict[str, int]:
    counters: dict[str, int] = replication(node)["gossip"]
    return counters


def joined(node: Node, peers: int = 1) -> bool:
    """Every topic of ``node`` has ``peers`` peers in it (gossip can flow)."""
    topics = cli_json(node, "p2p", "info")["pubsub"]["topic_peers"]
    return bool(topics) and all(n >= peers for n in topics.values())


def connect(node: Node, other: Node) -> None:
    """``p2p connect``; on these 2 shared cores a dial can fail under load (py-libp2p's
    handshake time-outs), so a failed one is tried again until the deadline."""

    def dial() -> bool:
        done = cli(node, "p2p", "connect", p2p_addr(other), "--json")
        assert done.returncode in (0, 7), (done.returncode, done.stderr)
        return done.returncode == 0

    poll(dial, "the connection")


def follow(node: Node, kind: str, *names: str) -> None:
    done = cli_json(node, "p2p", kind, "add", *names)
    assert len(done["added"]) == len(set(names)), done


# --- P2 -------------------------------------------------------------------------------------


def test_p2_document_subscribers_exchange_updates_both_ways(
    cluster: Nodes, tmp_path: Path, key: NamedKey
) -> None:
    a, b, c, d = start(cluster, tmp_path, key, "abcd", *QUIET)
    for node in (a, b, d):
        follow(node, "document", "notes/n1")
    assert cli_json(b, "p2p", "document", "getall")["documents"] == [
        {"space": "main", "collection": "notes", "document": "n1"}
    ]
    connect(b, a)
    connect(c, a)  # c is connected but follows nothing; d follows n1 but is not connected
    poll(lambda: joined(a) and joined(b), "a and b in each other's topic")

    write(a, "main", "notes", "n1", {"by": "a"})
    write(a, "main", "notes", "n2", {"by": "a"})  # not followed by anyone
    poll(lambda: doc(b, "notes", "n1"), "b receives a's new document")
    update(b, "notes", "n1", {"seen_by": "b"})
    found = poll(lambda: (doc(a, "notes", "n1") or {}).get("value", {}).get("seen_by"), "a")
    assert found == "b"
    poll(lambda: gossip(b)["not_subscribed"] >= 1, "b drops the message of n2")
    assert doc(b, "notes", "n2") is None

    # a marker that c would have seen by now if it got anything: b's later update
    update(a, "notes", "n1", {"last": True})
    poll(lambda: (doc(b, "notes", "n1") or {}).get("value", {}).get("last"), "b sees the last")
    assert read_all(c, "main", "notes") == {} and gossip(c)["received"] == 0
    assert read_all(d, "main", "notes") == {}
    counters = gossip(a)
    assert counters["published"] >= 3 and counters["stored"] >= 1
    assert counters["malformed"] == counters["unverifiable"] == counters["refused"] == 0
    drops = cli_json(a, "p2p", "info")["pubsub"]["drops"]
    assert drops["rate_limited"] == drops["subscription_full"] == drops["outbound_dropped"] == 0
    shown = cli(a, "p2p", "info")
    assert "following" in shown.stdout and "head_exchange" in shown.stdout


# --- P3 -------------------------------------------------------------------------------------


def test_p3_a_collection_subscription_receives_new_documents_until_removed(
    cluster: Nodes, tmp_path: Path, key: NamedKey
) -> None:
    a, b = start(cluster, tmp_path, key, "ab", *QUIET)
    follow(a, "collection", "notes", "marks", "other")
    follow(b, "collection", "notes", "marks")
    # a batch with one bad name changes nothing
    bad = cli(b, "p2p", "collection", "add", "fine", "$bad")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert {c["collection"] for c in cli_json(b, "p2p", "collection", "getall")["collections"]} == {
        "notes",
        "marks",
    }
    connect(b, a)
    poll(lambda: joined(b), "b in a's topics")

    for i in range(3):
        write(a, "main", "notes", f"n{i}", {"i": i})
    write(a, "main", "other", "o1", {"x": 1})
    write(a, "main", "marks", "m1", {"x": 1})
    poll(lambda: len(read_all(b, "main", "notes")) == 3, "b receives every new document")
    poll(lambda: doc(b, "marks", "m1"), "b receives the marker")
    assert read_all(b, "main", "other") == {}

    assert cli_json(b, "p2p", "collection", "remove", "notes")["removed"] == [
        {"space": "main", "collection": "notes"}
    ]
    poll(lambda: len(cli_json(b, "p2p", "info")["pubsub"]["topic_peers"]) == 1, "b leaves")
    write(a, "main", "notes", "late", {"late": True})
    write(a, "main", "marks", "m2", {"x": 2})
    poll(lambda: doc(b, "marks", "m2"), "b receives the second marker")
    assert doc(b, "notes", "late") is None


# --- P6 -------------------------------------------------------------------------------------


def test_p6_missed_updates_are_fetched_on_the_next_update_and_on_connect(
    cluster: Nodes, tmp_path: Path, key: NamedKey
) -> None:
    # "Offline" below is a disconnect: with the DHT on, a's provide retries would dial b
    # (a DHT server in its table) again; the DHT is not what this test is about.
    a, b = start(cluster, tmp_path, key, "ab", *QUIET, "--no-dht")
    follow(a, "document", "notes/n1")
    follow(b, "document", "notes/n1")
    connect(b, a)
    poll(lambda: joined(a) and joined(b), "a and b in the topic")
    write(a, "main", "notes", "n1", {"v": 0})
    poll(lambda: doc(b, "notes", "n1"), "b receives n1")

    # b leaves the topic: a's next two updates are not sent to it
    cli_json(b, "p2p", "document", "remove", "notes/n1")
    poll(lambda: not joined(a), "a sees b leave")
    update(a, "notes", "n1", {"v": 1, "one": True})
    update(a, "notes", "n1", {"v": 2, "two": True})
    follow(b, "document", "notes/n1")
    poll(lambda: joined(a), "b back in the topic")
    assert doc(b, "notes", "n1")["value"] == {"v": 0}  # it missed them
    update(a, "notes", "n1", {"v": 3})
    # the new entry's parents are missing: b fetches the history from a
    value = {"v": 3, "one": True, "two": True}
    poll(
        lambda: (doc(b, "notes", "n1") or {}).get("value") == value,
        "b has the full history",
        details=lambda: (doc(b, "notes", "n1"), gossip(b), b.stderr()[-3000:]),
    )
    counters = gossip(b)
    assert counters["missing_parents"] >= 1 and counters["fetched"] >= 1

    # divergent offline edits: the connection goes, both edit, it comes back
    a_peer = cli_json(a, "p2p", "info")["peer_id"]
    assert cli_json(b, "p2p", "disconnect", a_peer)["disconnected"] is True
    poll(lambda: peer_ids(a) == [] and peer_ids(b) == [], "both see the connection gone")
    update(a, "notes", "n1", {"a_offline": 1})
    update(b, "notes", "n1", {"b_offline": 1})
    connect(b, a)  # head exchange on connect, both ways

    def converged() -> bool:
        x, y = doc(a, "notes", "n1"), doc(b, "notes", "n1")
        return bool(x and y and x["value"] == y["value"] and x["heads"] == y["heads"])

    poll(converged, "divergent edits converge")
    assert {"a_offline", "b_offline"} <= set(doc(a, "notes", "n1")["value"])

    # b offline (stopped): a writes; b restarts with its subscription and catches up
    assert b.stop() == 0
    update(a, "notes", "n1", {"while_b_was_down": True})
    b = cluster.start(tmp_path / "b", *QUIET, "--peers", p2p_addr(a))
    assert cli_json(b, "p2p", "document", "getall")["documents"] == [
        {"space": "main", "collection": "notes", "document": "n1"}
    ]
    poll(lambda: (doc(b, "notes", "n1") or {})["value"].get("while_b_was_down"), "b catches up")
    assert replication(b)["head_exchange"]["pulled"] >= 1


# --- P9 -------------------------------------------------------------------------------------


def test_p9_a_five_node_chain_delivers_end_to_end(
    cluster: Nodes, tmp_path: Path, key: NamedKey
) -> None:
    chain = start(cluster, tmp_path, key, "01234", *QUIET)
    for node in chain:
        follow(node, "document", "notes/c1")
    for left, right in itertools.pairwise(chain):
        connect(right, left)
    poll(lambda: all(joined(n) for n in chain), "every node in the topic")
    write(chain[0], "main", "notes", "c1", {"hop": 0})
    poll(lambda: doc(chain[4], "notes", "c1"), "the far end receives it")
    update(chain[4], "notes", "c1", {"back": True})
    poll(lambda: (doc(chain[0], "notes", "c1") or {})["value"].get("back"), "and back")
    assert gossip(chain[4])["stored"] >= 1 and gossip(chain[0])["stored"] >= 1


# --- misbehaving publishers -------------------------------------------------------------------


def test_bad_gossip_is_dropped_and_counted_with_the_node_up(
    cluster: Nodes, tmp_path: Path, key: NamedKey
) -> None:
    [a] = start(cluster, tmp_path, key, "a")
    space = cli_json(a, "space", "create", "team")["space"]
    follow(a, "collection", "notes")
    assert cli_json(a, "--space", space, "p2p", "collection", "add", "notes")["added"] == [
        {"space": space, "collection": "notes"}
    ]
    stranger = SigningKey.generate()

    def forged(space_: str, doc_id: str, payload: bytes = b"{}") -> Any:
        return build_entry(
            author=stranger,
            space=space_,
            collection="notes",
            document=doc_id,
            kind="create",
            payload=payload,
            created_at=1,
            key=NamedKey.generate("stranger@1"),
        )

    open_topic, team_topic = collection_topic("main", "notes"), collection_topic(space, "notes")

    async def publish() -> None:
        host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
        async with host.run():
            pubsub = host.pubsub
            assert pubsub is not None
            a_id = ID.from_base58(await host.connect(p2p_addr(a)))
            with trio.fail_after(WAIT):
                while a_id not in pubsub.peer_topics.get(team_topic, set()):
                    await trio.sleep(0.05)
            bad = forged("main", "bad")
            flipped = bytearray(bad.raw)
            flipped[-1] ^= 1
            member_only = forged(space, "forged")
            ok_batch = forged("main", "ok-in-a-batch")
            team_entry = encode_entry(member_only.raw, space, "notes", "forged", member_only.cid)
            for topic, data in (
                (open_topic, b"\x00garbage"),
                (open_topic, b"\xa0" * (MAX_MESSAGE + 1)),
                (open_topic, encode_entry(bytes(flipped), "main", "notes", "bad", bad.cid)),
                (team_topic, team_entry),
                (open_topic, cbor2.dumps({"v": 2, "b": [ok_batch.raw]})),  # a batch of one
                (open_topic, encode_batch([bytes(flipped), ok_batch.raw])),  # one bad in two
            ):
                await pubsub.publish([topic], data)
            ok = forged("main", "ok")  # an open space takes anyone's entries
            await pubsub.publish([open_topic], encode_entry(ok.raw, "main", "notes", "ok", ok.cid))
            with trio.fail_after(WAIT):
                while await trio.to_thread.run_sync(lambda: gossip(a)["stored"] < 2):
                    await trio.sleep(0.05)

    anyio.run(publish, backend="trio")
    counters = gossip(a)
    assert counters["malformed"] == 2 and counters["oversized"] == 1
    assert counters["unverifiable"] == 2 and counters["refused"] == 1
    assert counters["stored"] == 2 and counters["batches"] == 1
    assert read_all(a, space, "notes") == {}
    with a.http() as http:
        assert http.get("/node").status_code == 200
    assert json.loads(cli(a, "p2p", "info", "--json").stdout)["replication"]["gossip"] == counters


def test_a_gossipsub_rpc_that_does_not_parse_costs_its_stream_not_the_node(
    cluster: Nodes, tmp_path: Path, key: NamedKey
) -> None:
    """py-libp2p's gossipsub reader raised on such an RPC and that stopped the node."""
    [a] = start(cluster, tmp_path, key, "a")
    follow(a, "collection", "notes")

    async def garbage() -> None:
        host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
        async with host.run():
            assert host.pubsub is not None
            a_id = ID.from_base58(await host.connect(p2p_addr(a)))
            protocols = [TProtocol(str(p)) for p in host.pubsub.protocols]
            with trio.fail_after(WAIT):
                for _ in range(3):
                    stream = await host.host.new_stream(a_id, protocols)
                    await stream.write(b"\x05\xff\xff\xff\xff\xff")  # 5 bytes, not protobuf
                    await trio.sleep(0.2)

    anyio.run(garbage, backend="trio")
    info = json.loads(cli(a, "p2p", "info", "--json").stdout)
    assert sum(info["counters"]["handler_errors"].values()) >= 3
    write(a, "main", "notes", "after", {"up": True})  # and the node still works
    assert doc(a, "notes", "after")["value"] == {"up": True}


# --- batches and origin --------------------------------------------------------------------


def exchanged(*group: Node) -> bool:
    """Every node's head exchanges on connect are done: what comes next is gossip's."""
    return all(replication(n)["head_exchange"]["exchanges"] >= 1 for n in group)


def count(node: Node, collection: str) -> int:
    with node.http() as http:
        r = http.get(f"/collections/{collection}/docs", params={"limit": 1})
        return int(r.json()["count"]) if r.status_code == 200 else 0


def test_a_bulk_import_reaches_a_subscriber_in_few_messages(
    cluster: Nodes, tmp_path: Path, key: NamedKey
) -> None:
    a, b = start(cluster, tmp_path, key, "ab", *QUIET)
    for node in (a, b):
        follow(node, "collection", "bulk")
    connect(b, a)
    poll(lambda: joined(a) and joined(b), "a and b in the topic")
    poll(lambda: exchanged(a, b), "the head exchanges on connect")
    n = 2000
    lines = tmp_path / "docs.jsonl"
    lines.write_text("".join(json.dumps({"id": f"d{i}", "i": i, "text": "x" * 100}) + "\n"
                             for i in range(n)))  # fmt: skip
    done = cli_json(a, "doc", "import", "bulk", str(lines), "--id-field", "id")
    assert done["imported"] == n, done
    poll(lambda: gossip(b)["stored"] == n, "b stores every imported document by gossip",
         timeout=60, details=lambda: (gossip(a), gossip(b)))  # fmt: skip
    assert count(b, "bulk") == n
    sent, got = gossip(a), gossip(b)
    # 2 requests of 1,000 documents: each goes out in a few messages of ~129 KiB
    assert sent["published_entries"] == n and sent["published"] <= 12, sent
    assert got["received_entries"] == n and got["batches"] >= 2, got
    assert got["store_calls"] <= sent["published"]
    assert got["fetches"] == got["missing_parents"] == got["inbox_full"] == 0
    assert replication(b)["head_exchange"]["pulled"] == 0  # none came by head exchange
    drops = cli_json(a, "p2p", "info")["pubsub"]["drops"]
    assert drops["outbound_dropped"] == drops["subscription_full"] == 0
    # and a single update after it still goes in the version-1 form, alone
    update(a, "bulk", "d7", {"again": True})
    poll(lambda: (doc(b, "bulk", "d7") or {}).get("value", {}).get("again"), "b's update")
    assert gossip(a)["published"] == sent["published"] + 1


def test_a_node_does_not_republish_its_users_entries_from_another_device(
    cluster: Nodes, tmp_path: Path, key: NamedKey
) -> None:
    laptop, phone = make_home(tmp_path / "laptop", key), make_home(tmp_path / "phone", key)
    phone.keyring.add_user(laptop.user, default=True)  # one user, two devices
    phone.keyring.save()
    make_home(tmp_path / "other", key)
    a, p, b = (cluster.launch(tmp_path / name, *QUIET) for name in ("laptop", "phone", "other"))
    cluster.wait_ready()
    for node in (a, p, b):
        follow(node, "collection", "notes")
    connect(p, a)
    connect(b, a)  # b reaches the phone only through the laptop
    poll(lambda: joined(a, 2) and joined(p) and joined(b), "all in the topic")
    poll(lambda: exchanged(a, p, b), "the head exchanges on connect")
    for i in range(3):
        write(p, "main", "notes", f"p{i}", {"by": "phone"})
    poll(lambda: len(read_all(a, "main", "notes")) == 3, "the laptop receives the phone's")
    # gossipsub forwards the phone's messages to b; the laptop publishes none of its own
    poll(lambda: len(read_all(b, "main", "notes")) == 3, "b receives the phone's",
         details=lambda: (gossip(a), gossip(b)))  # fmt: skip
    laptop_counters = gossip(a)
    assert laptop_counters["not_written_here"] == 3
    assert laptop_counters["published"] == laptop_counters["published_entries"] == 0
    assert gossip(b)["stored"] == 3 and gossip(p)["published_entries"] == 3
    write(a, "main", "notes", "a0", {"by": "laptop"})  # what it wrote itself, it publishes
    poll(lambda: doc(b, "notes", "a0"), "b receives the laptop's own")
    assert gossip(a)["published_entries"] == 1


# --- managed spaces ---------------------------------------------------------------------------


def test_a_members_entries_reach_the_admin_over_gossip_and_are_accepted(
    cluster: Nodes, tmp_path: Path
) -> None:
    a = cluster.launch(tmp_path / "a", *QUIET)
    b = cluster.launch(tmp_path / "b", *QUIET)
    cluster.wait_ready()
    space = cli_json(a, "space", "create", "team")["space"]
    # b's card lists b's node as a device: a checks b's gossiped entries against b's roles
    join(b, invite(a, space, card_of(b), "read", "write"))
    for node in (a, b):
        added = cli_json(node, "--space", space, "p2p", "collection", "add", "notes")["added"]
        assert added == [{"space": space, "collection": "notes"}]
    connect(b, a)
    poll(lambda: joined(a) and joined(b), "a and b in the space's topic")
    # the exchanges on connect are over: what a stores from here came by gossip
    poll(
        lambda: all(replication(n)["head_exchange"]["exchanges"] >= 1 for n in (a, b)),
        "the head exchanges on connect",
    )
    pulled = replication(a)["head_exchange"]["pulled"]
    before = gossip(a)

    write(b, space, "notes", "b1", {"by": "b"})
    write(b, space, "notes", "b2", {"by": "b", "n": 2})
    poll(
        lambda: len(read_all(a, space, "notes")) == 2,
        "a receives b's entries",
        details=lambda: (gossip(a), a.stderr()[-3000:]),
    )
    assert doc(a, "notes", "b1", space)["value"] == {"by": "b"}
    assert read_all(a, space, "notes") == read_all(b, space, "notes")
    counters = gossip(a)
    assert counters["stored"] - before["stored"] == 2
    assert counters["refused"] == counters["store_refused"] == 0
    assert counters["unverifiable"] == counters["malformed"] == 0
    assert replication(a)["head_exchange"]["pulled"] == pulled  # not by head exchange
    assert gossip(b)["published"] >= 2
