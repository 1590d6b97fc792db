"""Tickets end to end: real ``loomdb start`` processes on 127.0.0.1 (one on 0.0.0.0),
``loomdb client p2p ticket`` on one, ``loomdb client p2p connect TICKET`` on the
other: connected (directly, or through a circuit relay), and with an invitation in
the ticket, joined and syncing the space over libp2p. Bad tickets get one clear
line and a usage exit, never a traceback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loomdb.cli.qr import qr_code, qr_modules, read_back
from loomdb.identity.keys import SigningKey
from loomdb.identity.peer_id import peer_id_from_public_key
from loomdb.node.ticket import TICKET_PREFIX, Ticket
from tests.integration.nodes import Node, Nodes, client_sync, nodes
from tests.integration.test_p2p_e2e import peer_ids, read_all, write
from tests.integration.test_trust_e2e import card_of, cli, cli_json, refused
from tests.unit.test_p2p_ticket import scan

pytestmark = pytest.mark.integration

WAIT = 30.0  # a reservation on the relay, on 2 busy cores
DEAD = "/ip4/127.0.0.1/tcp/1"  # nothing listens on port 1


@pytest.fixture
def cluster() -> Iterator[Nodes]:
    with nodes() as group:
        yield group


def ticket_of(node: Node, *args: str) -> tuple[str, list[str]]:
    """``client p2p ticket ARGS`` on ``node``: the ticket (its last line) and every line."""
    done = cli(node, "p2p", "ticket", *args)
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = done.stdout.rstrip("\n").split("\n")
    assert lines[-1].startswith(TICKET_PREFIX), lines
    return lines[-1], lines


def test_a_ticket_printed_by_one_node_connects_the_other(cluster: Nodes, tmp_path: Path) -> None:
    # a listens on every interface: its ticket offers the machine's own addresses
    a = cluster.launch(tmp_path / "a", "--p2p-addr", "/ip4/0.0.0.0/tcp/0")
    b = cluster.launch(tmp_path / "b")
    cluster.wait_ready()
    a_peer = cli_json(a, "p2p", "info")["peer_id"]
    b_peer = cli_json(b, "p2p", "info")["peer_id"]

    text, lines = ticket_of(a)
    assert lines[0] == f"ticket to {a_peer}: {len(Ticket.decode(text).addrs)} address(es)"
    ticket = Ticket.decode(text)
    assert ticket.peer_id == a_peer
    [port] = {a.rsplit("/tcp/", 1)[1].split("/")[0] for a in a.p2p_addrs}
    assert f"/ip4/127.0.0.1/tcp/{port}/p2p/{a_peer}" in ticket.addrs
    assert not any("/0.0.0.0/" in addr for addr in ticket.addrs)
    # the QR code between them is the ticket's, module for module
    code = qr_code(text)
    assert code is not None
    drawing = "\n".join(lines[1:-1])
    expected = qr_modules(code)
    assert read_back(drawing)[: len(expected)] == expected
    assert scan(read_back(drawing)) == [text]  # what a phone would read
    # --json: the same ticket, no drawing; --no-qr: no drawing
    assert cli_json(a, "p2p", "ticket")["ticket"] == text
    assert ticket_of(a, "--no-qr")[1] == [lines[0], text]

    done = cli(b, "p2p", "connect", text)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"connected to {a_peer} at ")
    assert peer_ids(b) == [a_peer]
    assert peer_ids(a) == [b_peer]

    # bad tickets: one clear line, a usage exit
    refused(cli(b, "p2p", "connect", text[: len(text) // 2]), (2,), "does not decode", "cut")
    refused(cli(b, "p2p", "connect", "loomdb-ticket2:abc"), (2,), "starts with")
    refused(cli(a, "p2p", "connect", text), (2,), "own ticket")
    empty = cli(b, "p2p", "connect", "-", stdin="\n")  # argparse's usage error
    assert empty.returncode == 2 and "nothing read from stdin" in empty.stderr
    # a ticket whose every address is dead: unreachable, exit 7, each address tried
    nobody = peer_id_from_public_key(SigningKey.generate().public_key)
    dead = Ticket(nobody, (f"{DEAD}/p2p/{nobody}", f"{DEAD}/p2p/{nobody}")).encode()
    refused(cli(b, "p2p", "connect", dead), (7,), "any of the 2 address")
    # connected already: said so, nothing dialled
    assert cli_json(b, "p2p", "connect", text)["already"] is True
    # the API: one of addr and ticket
    with b.http() as http:
        both = http.post("/p2p/connect", json={"addr": a.p2p_addrs[0], "ticket": text})
        assert both.status_code == 400, both.text
        assert http.post("/p2p/connect", json={}).status_code == 400
        r = http.post("/p2p/ticket", json={"invite": {"card": "x", "roles": ["read"]}})
        assert r.status_code == 422 and "name it" in r.json()["error"]["message"]
        assert http.post("/p2p/ticket", json={"space": 1}).status_code == 400
        # no options, no body (sent as JSON all the same, like the trust routes)
        bare = http.post("/p2p/ticket", headers={"Content-Type": "application/json"})
        assert bare.status_code == 200 and bare.json()["peer_id"] == b_peer, bare.text
        assert http.post("/p2p/ticket").status_code == 415
        assert (
            http.post("/p2p/connect", headers={"Content-Type": "application/json"}).status_code
            == 400
        )


def test_a_ticket_with_an_invitation_joins_and_syncs_the_space(
    cluster: Nodes, tmp_path: Path
) -> None:
    a = cluster.launch(tmp_path / "a")
    b = cluster.launch(tmp_path / "b")
    cluster.wait_ready()
    space = cli_json(a, "space", "create", "team")["space"]
    write(a, space, "notes", "a1", {"by": "a"})
    b_user = cli_json(b, "identity")["user"]

    # the whole output of `ticket` piped into `connect -` (it reads the last line)
    done = cli(
        a, "p2p", "ticket", "--space", space, "--invite", card_of(b), "--role", "read",
        "--role", "write", "--label", "bob",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"an invitation for user {b_user}" in done.stdout.splitlines()[0]
    ticket = Ticket.decode(done.stdout.splitlines()[-1])
    assert ticket.space == space and ticket.invitation is not None
    assert read_all(b, space, "notes") == {}

    joined = cli(b, "p2p", "connect", "-", stdin=done.stdout)
    assert joined.returncode == 0, joined.stderr
    out = joined.stdout.splitlines()
    assert out[1] == f"joined space {space} (*: read,write)"
    hint = out[2].removeprefix("sync the space: ")
    assert hint.startswith("loomdb client sync /ip4/127.0.0.1/")
    spaces = cli_json(b, "space", "list")["spaces"]
    assert [(s["space"], s["roles"]) for s in spaces] == [(space, {"*": ["read", "write"]})]

    # then b syncs the space from a over libp2p (its node acts as b: the invited device)
    addr = hint.split()[3]
    write(b, space, "notes", "b1", {"by": "b"})
    report = client_sync(addr, "--space", space, url=b.url)
    assert report["rejected"] == [] and report["pulled"] >= 1 and report["pushed"] >= 1
    assert read_all(b, space, "notes") == {"a1": {"by": "a"}, "b1": {"by": "b"}}
    assert read_all(a, space, "notes") == read_all(b, space, "notes")

    # a ticket for someone else's node: connected, then refused the space
    c = cluster.start(tmp_path / "c")
    text = ticket_of(a, "--space", space, "--invite", card_of(c), "--role", "read")[0]
    d = cluster.start(tmp_path / "d")
    refused(cli(d, "p2p", "connect", text), (10,), "does not list")
    # only an admin invites; only to a space it holds
    invite_d = ("--invite", card_of(d), "--role", "read")
    refused(cli(b, "p2p", "ticket", "--space", space, *invite_d), (10,), "not an admin")
    refused(cli(a, "p2p", "ticket", "--space", "nope~z6Mk", *invite_d), (8,), "no directory")


def test_a_ticket_carries_the_relayed_address_and_connects_through_it(
    cluster: Nodes, tmp_path: Path
) -> None:
    relay = cluster.start(tmp_path / "r", "--relay-service")
    a = cluster.start(tmp_path / "a", "--relays", relay.p2p_addrs[0], "--no-hole-punch")
    b = cluster.start(tmp_path / "b", "--no-hole-punch")
    a_peer = cli_json(a, "p2p", "info")["peer_id"]
    deadline = time.monotonic() + WAIT
    while not any("/p2p-circuit/" in x for x in cli_json(a, "p2p", "info")["listen"]):
        assert time.monotonic() < deadline, "a holds no reservation on the relay"
        time.sleep(0.2)

    ticket = Ticket.decode(ticket_of(a, "--no-qr")[0])
    circuit = f"{relay.p2p_addrs[0]}/p2p-circuit/p2p/{a_peer}"
    assert ticket.addrs[-1] == circuit  # direct ones first, then the relayed one
    # a ticket whose direct address is dead: the relayed one is tried next, and answers
    text = Ticket(a_peer, (f"{DEAD}/p2p/{a_peer}", circuit)).encode()
    answer = cli_json(b, "p2p", "connect", text)
    assert answer["addr"] == circuit
    assert [f["addr"] for f in answer["failed"]] == [f"{DEAD}/p2p/{a_peer}"]
    [peer] = [p for p in cli_json(b, "p2p", "peers")["peers"] if p["peer_id"] == a_peer]
    assert {c["type"] for c in peer["connection_types"]} == {"relayed"}
