"""Replicators end to end: real ``loomdb start`` processes on 127.0.0.1, driven by
``loomdb client p2p replicator …``, pushing over libp2p.

ACCEPTANCE.md P4 (backfill of the chosen collections and documents, live pushes,
direction, other collections stay, delete stops pushes) and P5 (the target goes
away while A writes and comes back; the same across a restart of A, whose
replicators and cursor persist), plus a managed space: refused while the target
does not admit this node, pushed once it does. Every wait polls the API with a
deadline.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loomdb.identity.keys import NamedKey
from tests.doc_support import make_home
from tests.integration.nodes import Node, Nodes, create_docs, documents, nodes
from tests.integration.test_p2p_e2e import cli, cli_json, p2p_addr, poll, read_all, write
from tests.integration.test_trust_e2e import card_of, invite, join

pytestmark = pytest.mark.integration

FAST = ("--replicator-retry-intervals", "0.2,0.5,1")
WAIT = 20.0


@pytest.fixture
def cluster() -> Iterator[Nodes]:
    with nodes() as group:
        yield group


@pytest.fixture
def key() -> NamedKey:
    return NamedKey.generate_fingerprinted("shared")


def free_p2p() -> tuple[str, str]:
    """``--p2p-addr`` on a port of its own, so a node comes back at the same address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return "--p2p-addr", f"/ip4/127.0.0.1/tcp/{sock.getsockname()[1]}"


def replicators(node: Node) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cli_json(node, "p2p", "replicator", "getall")["replicators"]
    return found


def the_replicator(node: Node) -> dict[str, Any]:
    [rep] = replicators(node)
    return rep


def has(node: Node, collection: str, *ids: str) -> bool:
    with node.http() as http:
        r = http.get(f"/collections/{collection}/docs", params={"limit": 1000})
    return r.status_code == 200 and set(ids) <= {d["id"] for d in r.json()["documents"]}


def test_p4_a_replicator_pushes_its_collections_one_way_until_deleted(
    cluster: Nodes, key: NamedKey, tmp_path: Path
) -> None:
    make_home(tmp_path / "a", key)
    make_home(tmp_path / "b", key)
    a = cluster.launch(tmp_path / "a", *FAST)
    b = cluster.launch(tmp_path / "b")
    cluster.wait_ready()
    create_docs(a, "notes", [(f"n{i}", {"i": i}) for i in range(3)])  # before the replicator
    create_docs(a, "todos", [("t1", {"do": "it"}), ("t2", {"do": "not this one"})])
    create_docs(a, "other", [("x1", {"no": True})])
    create_docs(b, "notes", [("b1", {"by": "b"})])

    b_peer = cli_json(b, "p2p", "info")["peer_id"]
    shown = cli_json(a, "p2p", "replicator", "set", "-c", "notes", "--document", "todos/t1",
                     p2p_addr(b))  # fmt: skip
    assert shown["peer"] == b_peer and shown["space"] == "main"
    assert shown["collections"] == ["notes"] and shown["documents"] == [["todos", "t1"]]
    assert shown["state"] == "backfilling"
    poll(lambda: has(b, "notes", "n0", "n1", "n2") and has(b, "todos", "t1"), WAIT, "backfill")
    poll(lambda: the_replicator(a)["state"] == "active", WAIT, "active")
    assert documents(b, "notes")["n1"] == {"i": 1}
    assert set(documents(b, "todos")) == {"t1"}  # only the document named
    assert not has(b, "other", "x1")  # another collection is not pushed
    assert set(documents(a, "notes")) == {"n0", "n1", "n2"}  # b's documents are not pulled

    # each new local entry is pushed at once: a new document, an update
    create_docs(a, "notes", [("n3", {"i": 3})])
    with a.http() as http:
        assert http.patch("/collections/notes/docs/n0", json={"set": {"i": 10}}).is_success
    poll(lambda: has(b, "notes", "n3"), WAIT, "live push")
    poll(lambda: documents(b, "notes")["n0"] == {"i": 10}, WAIT, "update pushed")
    rep = the_replicator(a)
    assert rep["state"] == "active" and rep["refused"] == 0 and rep["pushed"] >= 6
    assert rep["last_error"] is None and rep["cursor"] > 0
    info = cli_json(a, "p2p", "info")
    assert info["replicators"]["states"] == {"active": 1}
    shown_info = cli(a, "p2p", "info")
    assert "replicators" in shown_info.stdout and "1 active" in shown_info.stdout
    listed = cli(a, "p2p", "replicator", "getall")
    assert b_peer in listed.stdout and "main: notes, todos/t1  active" in listed.stdout
    served = cli_json(a, "p2p", "info")["counters"]
    assert served["streams_opened"] <= 2  # the peer's one long-lived stream (reopened once at most)

    done = cli_json(a, "p2p", "replicator", "delete", b_peer)
    assert [d["peer"] for d in done["deleted"]] == [b_peer]
    assert replicators(a) == []
    gone = cli(a, "p2p", "replicator", "delete", b_peer)
    assert gone.returncode == 8 and "no replicator" in gone.stderr
    create_docs(a, "notes", [("after-delete", {"late": True})])
    # a push of another scope over the same stream, then: the deleted one sent nothing
    with a.http() as http:
        body = {"remote": p2p_addr(b), "direction": "push", "collections": ["other"]}
        with http.stream("POST", "/sync/run", json=body) as r:
            events = [json.loads(line) for line in r.iter_lines() if line.strip()]
    assert events[-1]["event"] == "done" and events[-1]["pushed"] == 1
    assert has(b, "other", "x1") and not has(b, "notes", "after-delete")
    saved = json.loads((a.home / "replicators.json").read_text())
    assert saved["replicators"] == []

    # bad requests: 4xx and one clear line, never a traceback
    assert cli(a, "p2p", "replicator", "set", "/ip4/127.0.0.1/tcp/1").returncode == 2
    own = cli(a, "p2p", "replicator", "set", p2p_addr(a))
    assert own.returncode == 2 and "itself" in own.stderr
    with a.http() as http:
        r = http.post("/p2p/replicators", json={"addr": p2p_addr(b), "collections": [""]})
        assert r.status_code == 400
        r = http.request("DELETE", "/p2p/replicators", json={"peer": b_peer, "x": 1})
        assert r.status_code == 400


def test_p5_the_target_away_and_the_source_restarted_nothing_is_missed(
    cluster: Nodes, key: NamedKey, tmp_path: Path
) -> None:
    make_home(tmp_path / "a", key)
    make_home(tmp_path / "b", key)
    b_addr_opt = free_p2p()
    a = cluster.launch(tmp_path / "a", *FAST)
    b = cluster.launch(tmp_path / "b", *b_addr_opt)
    cluster.wait_ready()
    create_docs(a, "notes", [("first", {"i": 0})])
    cli_json(a, "p2p", "replicator", "set", "-c", "notes", p2p_addr(b))
    poll(lambda: has(b, "notes", "first"), WAIT, "backfill")

    # b goes away; a keeps writing: the push fails, it backs off and counts the lag
    assert b.stop() == 0
    create_docs(a, "notes", [(f"away{i}", {"i": i}) for i in range(5)])
    poll(lambda: the_replicator(a)["state"] in ("failing", "backfilling"), WAIT, "failing")
    poll(lambda: the_replicator(a)["lag"] >= 5, WAIT, "lag counted")
    rep = the_replicator(a)
    assert rep["last_error"]["code"].startswith("transport.")
    assert rep["failures"] >= 1
    b = cluster.start(tmp_path / "b", *b_addr_opt)
    ids = [f"away{i}" for i in range(5)]
    poll(lambda: has(b, "notes", "first", *ids), WAIT, "b has everything after its outage")
    poll(lambda: the_replicator(a)["state"] == "active", WAIT, "active again")
    assert the_replicator(a)["failures"] == 0

    # b away again, a writes, then a restarts: the replicator and its cursor persist
    assert b.stop() == 0
    create_docs(a, "notes", [(f"then{i}", {"i": i}) for i in range(3)])
    poll(lambda: the_replicator(a)["lag"] >= 3, WAIT, "lag counted")
    before = the_replicator(a)
    assert a.stop() == 0
    [saved] = json.loads((a.home / "replicators.json").read_text())["replicators"]
    assert saved["state"] == "inactive" and saved["cursor"] >= before["cursor"] > 0
    assert saved["collections"] == ["notes"] and saved["peer"] == before["peer"]
    b = cluster.start(tmp_path / "b", *b_addr_opt)
    a = cluster.start(tmp_path / "a", *FAST)
    ids += [f"then{i}" for i in range(3)]
    poll(lambda: has(b, "notes", "first", *ids), WAIT, "b has everything after a restarted")
    poll(lambda: the_replicator(a)["state"] == "active", WAIT, "active after the restart")
    after = the_replicator(a)
    assert after["cursor"] >= saved["cursor"] and "inactive" in after["history"]
    create_docs(a, "notes", [("live", {"after": "restart"})])
    poll(lambda: has(b, "notes", "live"), WAIT, "live after the restart")
    assert not has(a, "notes", "b-only")


def test_a_managed_space_is_refused_until_the_target_admits_this_node(
    cluster: Nodes, tmp_path: Path
) -> None:
    a = cluster.launch(tmp_path / "a", *FAST)
    b = cluster.launch(tmp_path / "b")
    cluster.wait_ready()
    space = cli_json(a, "space", "create", "team")["space"]
    write(a, space, "notes", "a1", {"by": "a"})
    b_peer = cli_json(b, "p2p", "info")["peer_id"]

    # b knows nothing of the space: it refuses a's pushes; reported, retried a few times only
    cli_json(a, "--space", space, "p2p", "replicator", "set", p2p_addr(b))
    poll(lambda: the_replicator(a)["state"] == "refused", WAIT, "refused")
    rep = the_replicator(a)
    assert rep["space"] == space and rep["last_error"]["code"].startswith("trust.")
    poll(lambda: the_replicator(a)["next_retry"] is None, WAIT, "given up after 3 tries")
    assert the_replicator(a)["failures"] == 4
    assert read_all(b, space, "notes") == {}

    # b joins the space: setting the replicator again pushes the space to it
    join(b, invite(a, space, card_of(b), "read", "write"))
    cli_json(a, "--space", space, "p2p", "replicator", "set", p2p_addr(b))
    poll(lambda: set(read_all(b, space, "notes")) == {"a1"}, WAIT, "pushed once admitted")
    poll(lambda: the_replicator(a)["state"] == "active", WAIT, "active")
    write(a, space, "notes", "a2", {"by": "a"})
    poll(lambda: set(read_all(b, space, "notes")) == {"a1", "a2"}, WAIT, "live push")
    assert cli_json(a, "p2p", "replicator", "delete", b_peer, "--space", space)["deleted"]


def test_a_failing_replicator_pushes_as_soon_as_its_peer_connects_again(
    cluster: Nodes, key: NamedKey, tmp_path: Path
) -> None:
    make_home(tmp_path / "a", key)
    make_home(tmp_path / "b", key)
    b_addr_opt = free_p2p()
    a = cluster.launch(tmp_path / "a")  # the default back-off: 30 s before the first retry
    b = cluster.launch(tmp_path / "b", *b_addr_opt)
    cluster.wait_ready()
    cli_json(a, "p2p", "replicator", "set", "-c", "notes", p2p_addr(b))
    poll(lambda: the_replicator(a)["state"] == "active", WAIT, "active")
    assert b.stop() == 0
    create_docs(a, "notes", [("while-away", {"i": 1})])
    poll(lambda: the_replicator(a)["state"] == "failing", WAIT, "failing")
    next_retry = the_replicator(a)["next_retry"]
    assert next_retry - time.time() > 20  # 30 s from the failure
    # b comes back and dials a (its bootstrap peer): a pushes at once, not in 30 s
    b = cluster.start(tmp_path / "b", *b_addr_opt, "--peers", p2p_addr(a))
    poll(lambda: has(b, "notes", "while-away"), WAIT, "pushed once b connected")
    assert time.time() < next_retry
    poll(lambda: the_replicator(a)["state"] == "active", WAIT, "active again")
