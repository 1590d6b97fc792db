"""Sync failures and sign-in end to end: real ``loomdb start`` processes on
127.0.0.1, driven by ``loomdb client sync`` and the API.

* a remote lost mid-transfer (a proxy that cuts the link after N bytes) fails
  the sync with an ``error`` event naming the remote; the CLI exits 7 naming it;
  the node logs one line, no traceback; running it again resumes;
* a client that vanishes while sending its body is one log line;
* a malicious server relaying another node's challenges gets no signature and
  no token; the node's admin token never leaves for a remote.

Every wait is bounded; every node is killed at teardown (``cluster``).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from loomdb.api.sync import fixed, sync_routes
from loomdb.documents import Database
from loomdb.identity.keys import NamedKey, SigningKey
from loomdb.identity.peer_id import peer_id_from_public_key
from loomdb.stores import MemoryStore
from loomdb.stores.server import StoreServer
from tests.conformance.test_channels import hypercorn_serving
from tests.doc_support import make_home
from tests.integration.nodes import Node, Nodes, client_sync, loomdb, nodes
from tests.integration.proxy import Proxy

pytestmark = pytest.mark.integration

DOCS = 5_000
BATCH = 1_000  # the sync's batch size
WAIT = 30.0


@pytest.fixture
def cluster() -> Iterator[Nodes]:
    with nodes() as group:
        yield group


@pytest.fixture(scope="module")
def key() -> NamedKey:
    return NamedKey.generate_fingerprinted("shared")


def prefill(home: Path, key: NamedKey, n: int) -> None:
    async def fill() -> None:
        async with await Database.open(make_home(home, key)) as db:
            await db.collection("c").create_many(
                [{"i": i, "pad": "x" * 40} for i in range(n)], ids=[f"d{i}" for i in range(n)]
            )

    anyio.run(fill, backend="trio")


def stored_bytes(store: Path) -> int:
    with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        total: int = db.execute("SELECT sum(length(raw)) FROM entries").fetchone()[0]
        return total


def entries_of(node: Node) -> int:
    with node.http() as http:
        count: int = http.get("/node").json()["stats"]["entries"]
        return count


def peer_id_of(node: Node) -> str:
    with node.http() as http:
        peer_id: str = http.get("/node").json()["peer_id"]
        return peer_id


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


# --- a remote lost mid-transfer ---------------------------------------------------------


def test_a_remote_lost_mid_transfer_fails_the_sync_naming_the_remote_then_resumes(
    cluster: Nodes, key: NamedKey, tmp_path: Path
) -> None:
    prefill(tmp_path / "source", key, DOCS)
    source = cluster.launch(tmp_path / "source")
    target = cluster.launch(make_home(tmp_path / "target", key).path, verbose=True)
    cluster.wait_ready()
    # Half the entries' bytes: the link drops during the transfer, after the
    # reconciliation, before the last batch.
    with Proxy(source.port, budget=stored_bytes(source.store_path) // 2, mode="cut") as proxy:
        run = loomdb("client", "sync", proxy.url, "--url", target.url, "--pull")
        assert proxy.tripped.is_set()
    assert run.returncode == 7, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert any("entries (pulled" in line for line in lines[:-1]), run.stderr  # mid-transfer
    error = lines[-1]
    assert f"the connection to the remote {proxy.url} failed" in error, error
    assert "stopped before" not in error and target.url not in error  # not its own node

    log = target.stderr()
    assert "Traceback" not in log, log
    failed = [line for line in log.splitlines() if f"sync with {proxy.url} failed" in line]
    assert len(failed) == 1, log
    assert "transport." in failed[0]

    stored = entries_of(target)
    assert stored < DOCS and stored % BATCH == 0, stored  # whole batches only
    report = client_sync(source.url, "--pull", url=target.url)  # resumes
    assert (report["to_pull"], report["pulled"], report["duplicates"]) == (
        DOCS - stored,
        DOCS - stored,
        0,
    )
    assert entries_of(target) == DOCS


# --- a client gone mid-body -------------------------------------------------------------


def send_half_a_body(node: Node, path: str, headers: dict[str, str]) -> None:
    """A POST promising 100 kB, 1 kB of it sent, then the connection closed."""
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{node.port}", "Content-Length: 100000"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", node.port), timeout=WAIT) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b"x" * 1000)


@pytest.mark.parametrize("route", ["sync", "sync/run"])
def test_a_client_gone_mid_body_is_one_log_line(
    cluster: Nodes, key: NamedKey, tmp_path: Path, route: str
) -> None:
    node = cluster.start(make_home(tmp_path / "node", key).path, verbose=True)
    if route == "sync":
        headers = {"Content-Type": "application/vnd.loomdb.sync"}
    else:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {node.token}"}
    send_half_a_body(node, f"/api/v0/{route}", headers)
    wait_for(lambda: "went away" in node.stderr() or "Traceback" in node.stderr(), "a log line")
    log = node.stderr()
    assert "Traceback" not in log, log
    gone = [line for line in log.splitlines() if "went away" in line]
    assert len(gone) == 1 and f"POST /api/v0/{route}" in gone[0], log
    assert entries_of(node) == 0  # and the node serves on


# --- a malicious server relaying another node's sign-in ---------------------------------


class Recorder:
    """ASGI middleware keeping every request's headers and query string."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = [(k.decode(), v.decode()) for k, v in scope["headers"]]
            self.seen.append(f"{scope['path']}?{scope['query_string'].decode()} {headers}")
        await self.app(scope, receive, send)


class Relay:
    """A server that says it is ``peer_id`` (its sync ``hello``, over an empty store)
    but relays every sign-in request to ``victim``: a node that wants to sign in
    here is handed the victim's challenges. It keeps the answers and tokens it gets."""

    def __init__(self, victim: str, peer_id: str) -> None:
        self.victim = victim
        self.answers: list[Any] = []
        self.tokens: list[Any] = []
        server = StoreServer(MemoryStore(), peer_id=peer_id)
        routes = [
            Route("/api/v0/auth/challenge", self.challenge, methods=["POST"]),
            Route("/api/v0/auth/token", self.token, methods=["POST"]),
            *sync_routes(fixed(server.handle), 8 * 1024 * 1024),
        ]
        self.app = Recorder(Starlette(routes=routes))
        self.seen = self.app.seen

    async def _forward(self, what: str, body: bytes) -> httpx.Response:
        async with httpx.AsyncClient(timeout=WAIT, trust_env=False) as client:
            headers = {"content-type": "application/json"} if body else {}
            return await client.post(
                f"{self.victim}/api/v0/auth/{what}", content=body, headers=headers
            )

    async def challenge(self, request: Request) -> Response:
        reply = await self._forward("challenge", b"")
        return JSONResponse(reply.json(), status_code=reply.status_code)

    async def token(self, request: Request) -> Response:
        body = await request.body()
        self.answers.append(json.loads(body))
        reply = await self._forward("token", body)
        if reply.status_code == 200:
            self.tokens.append(reply.json()["token"])  # valid at the victim, as our user
        return JSONResponse(reply.json(), status_code=reply.status_code)


@asynccontextmanager
async def relay_to(victim: Node) -> AsyncIterator[tuple[Relay, str]]:
    relay = Relay(victim.url, peer_id_from_public_key(SigningKey.generate().public_key))
    async with hypercorn_serving(relay.app, "trio", None) as url:
        yield relay, url


def cli(*args: str) -> Any:
    return anyio.to_thread.run_sync(lambda: loomdb("client", *args))


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_relayed_challenge_gets_no_signature_and_no_token(
    cluster: Nodes, key: NamedKey, tmp_path: Path
) -> None:
    victim = cluster.launch(make_home(tmp_path / "victim", key).path)
    node = cluster.launch(make_home(tmp_path / "node", key).path, verbose=True)
    cluster.wait_ready()
    # The node's user is a member at the victim: the victim gives it tokens.
    created = await cli("space", "create", "team", "--url", victim.url, "--json")
    space = json.loads(created.stdout)["space"]
    card = (await cli("identity", "--card", "--url", node.url)).stdout.strip()
    invited = await cli("space", "invite", space, card, "--role", "read", "--url", victim.url)
    assert invited.returncode == 0, invited.stderr
    victim_id = peer_id_of(victim)

    async with relay_to(victim) as (relay, url):
        for extra in ([], ["--peer-id", peer_id_from_public_key(SigningKey.generate().public_key)]):
            done = await cli("sync", url, "--url", node.url, "--transport", "http", *extra)
            assert done.returncode == 11, (done.returncode, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr
            assert url in done.stderr and victim_id in done.stderr, done.stderr
        ws = await cli("sync", url, "--url", node.url)  # WebSocket, the Peer ID learned
        assert ws.returncode == 11, ws.stderr
        assert relay.answers == [] and relay.tokens == []  # nothing was signed for it
        assert not any(node.token in seen for seen in relay.seen)  # nor the admin token
        assert any("/api/v0/auth/challenge" in seen for seen in relay.seen)  # it was asked

    # The victim itself: the node learns its Peer ID and signs in there.
    synced = await anyio.to_thread.run_sync(lambda: client_sync(victim.url, url=node.url))
    assert synced["event"] == "done"
    pinned = await cli("sync", victim.url, "--url", node.url, "--peer-id", victim_id)
    assert pinned.returncode == 0, pinned.stderr
    other = peer_id_from_public_key(SigningKey.generate().public_key)
    wrong = await cli("sync", victim.url, "--url", node.url, "--peer-id", other)
    assert wrong.returncode == 11, wrong.stderr
    assert other in wrong.stderr
    assert "Traceback" not in node.stderr()
