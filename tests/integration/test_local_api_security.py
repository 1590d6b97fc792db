"""The local API against a web page in the node owner's browser (issue 11).

Each test replays, against a real ``loomdb start`` process, what a page can
make a browser send: "simple" cross-origin POSTs (``text/plain``, form and
multipart bodies, no body at all — none needs a CORS preflight), requests
under a rebound DNS name (``Host: evil.example:PORT``), and WebSocket
handshakes from a foreign origin. Every one is refused, and nothing is written.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.nodes import Node, loomdb, nodes

pytestmark = pytest.mark.integration

EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with nodes() as group:
        yield group.start(tmp_path_factory.mktemp("sec") / "home")


def _stranger(node: Node, **headers: str) -> httpx.Client:
    """What a page can reach: the node's address, no token, the browser's headers."""
    return httpx.Client(base_url=f"{node.url}/api/v0", trust_env=False, headers=headers)


def _count(node: Node, collection: str) -> int:
    with node.http() as http:
        r = http.get(f"/collections/{collection}/docs")
        if r.status_code == 404:
            return 0
        assert r.status_code == 200, r.text
        return int(r.json()["count"])


def test_the_admin_token_is_private_to_the_nodes_user(node: Node) -> None:
    mode = stat.S_IMODE(os.stat(node.home / "api.token").st_mode)
    assert mode == 0o600
    assert len(node.token) >= 32


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (json.dumps({"value": {"owned": True}}), "text/plain"),
        ("value=%7B%22owned%22%3Atrue%7D", "application/x-www-form-urlencoded"),
        (
            '--b\r\nContent-Disposition: form-data; name="value"\r\n\r\n'
            '{"owned":true}\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
    ],
)
def test_simple_cross_origin_posts_write_nothing(
    node: Node, content: str, content_type: str
) -> None:
    before = _count(node, "pwn")
    headers = {"Origin": EVIL, "Content-Type": content_type}
    with _stranger(node, **headers) as page:
        r = page.post("/collections/pwn/docs", content=content)
        assert r.status_code in (401, 403), r.text
    # even with the token (a page cannot have it), a body not sent as JSON is refused
    with node.http() as http:
        r = http.post(
            "/collections/pwn/docs", content=content, headers={"content-type": content_type}
        )
        assert (r.status_code, r.json()["error"]["code"]) == (415, "request.media_type")
    assert _count(node, "pwn") == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/node", None),
        ("GET", "/collections", None),
        ("POST", "/collections", {"name": "x"}),
        ("POST", "/spaces", {"name": "evil"}),
        ("POST", "/spaces/join", {"invitation": "loomdb-invite1:x"}),
        ("GET", "/identity", None),
        ("POST", "/sync/run", {"remote": "http://127.0.0.1:1"}),
    ],
)
def test_every_control_route_needs_the_admin_token(
    node: Node, method: str, path: str, body: object
) -> None:
    with _stranger(node) as stranger:
        r = stranger.request(method, path, json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "auth.admin_token"), r.text
        wrong = {"Authorization": "Bearer " + "x" * 43}
        r = stranger.request(method, path, json=body, headers=wrong)
        assert r.status_code == 401


def test_a_foreign_origin_is_refused_even_with_the_token(node: Node) -> None:
    with node.http() as http:
        r = http.post("/collections", json={"name": "o"}, headers={"Origin": EVIL})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "request.origin")
        r = http.post("/collections", json={"name": "o"}, headers={"Origin": "null"})
        assert r.status_code == 403
        # the node's own origin (its UI, one day) is fine
        r = http.post("/collections", json={"name": "o"}, headers={"Origin": node.url})
        assert r.status_code == 201, r.text


@pytest.mark.parametrize("path", ["/collections", "/sync", "/auth/challenge", "/node"])
def test_a_rebound_dns_name_is_refused_everywhere(node: Node, path: str) -> None:
    with node.http() as http:
        r = http.post(path, json={}, headers={"Host": f"evil.example:{node.port}"})
        assert (r.status_code, r.json()["error"]["code"]) == (421, "request.host"), r.text
    # loopback names are the node's own
    with node.http() as http:
        for host in ("127.0.0.1", "localhost"):
            r = http.get("/node", headers={"Host": f"{host}:{node.port}"})
            assert r.status_code == 200, (host, r.text)


def _handshake(node: Node, **headers: str) -> bytes:
    """A raw WebSocket upgrade on the sync path; the status line the node answers."""
    lines = [
        "GET /api/v0/sync HTTP/1.1",
        f"Host: {headers.pop('Host', f'127.0.0.1:{node.port}')}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


def test_websocket_upgrades_from_a_foreign_origin_or_name_are_refused(node: Node) -> None:
    assert b" 101 " in _handshake(node)  # a node (no Origin) connects
    assert b" 101 " in _handshake(node, Origin=node.url)
    assert b" 403 " in _handshake(node, Origin=EVIL)
    assert b" 403 " in _handshake(node, Host=f"evil.example:{node.port}")


def test_the_cli_finds_the_token_and_sends_it_only_to_its_node(node: Node) -> None:
    run = loomdb("client", "collection", "add", "cli-ok", "--url", node.url, "--json")
    assert run.returncode == 0, run.stderr
    # a listener posing as a node on another port never gets the token
    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen(1)
        trap.settimeout(10)
        port = trap.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "loomdb", "client", "node", "--url", f"http://127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            conn, _ = trap.accept()
            with conn:
                conn.settimeout(10)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
        finally:
            proc.kill()
            proc.wait(timeout=10)
    assert request.startswith(b"GET /api/v0/node")
    assert b"authorization" not in request.lower()
    assert node.token.encode() not in request


def _nested(depth: int, open_: str = '{"a": ', close: str = "}") -> str:
    return '{"value": ' + open_ * depth + "1" + close * depth + "}"


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "code"),
    [
        ("GET", f"/collections/c/docs?offset={2**70}", None, 400, "request.invalid"),
        ("GET", f"/collections/c/docs?offset={2**63}", None, 400, "request.invalid"),
        ("POST", "/collections/c/query", json.dumps({"offset": 2**70}), 400, "request.invalid"),
        ("POST", "/collections/c/docs", _nested(1000), 400, "request.json"),
        ("POST", "/collections/c/docs", _nested(1000, "[", "]"), 400, "request.json"),
        ("POST", "/collections/c/docs", _nested(300), 400, "request.json"),
        ("POST", "/collections/c/docs", _nested(40), 422, "validation"),
        # just under the 4 MiB body limit: the entry it makes is over the 1 MiB entry limit
        (
            "POST",
            "/collections/c/docs",
            json.dumps({"value": {"big": "x" * (4 * 1024 * 1024 - 100)}}),
            413,
            "entry.too_large",
        ),
        ("POST", "/spaces", json.dumps({"name": {"a": [[[[]]]]}}), 400, "request.invalid"),
        ("POST", "/sync/run", _nested(500), 400, "request.json"),
    ],
)
def test_client_input_never_yields_a_500(
    node: Node, method: str, path: str, content: str | None, status: int, code: str
) -> None:
    headers = {"content-type": "application/json"}
    with node.http() as http:
        r = http.request(method, path, content=content, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text[:300]
        assert http.get("/node").status_code == 200  # and the node is fine
    assert "Traceback" not in node.stderr()
