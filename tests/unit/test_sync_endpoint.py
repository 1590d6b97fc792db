"""The server side of the sync transports in the API app, and the pieces the
transports share (URLs, TLS files), in-process.

Round trips over real sockets are the conformance suite's:
tests/conformance/test_channels.py.
"""

from __future__ import annotations

import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from cryptography import x509
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message

from loomdb.api import create_app
from loomdb.documents import Database
from loomdb.errors import TransportError, UnreachableError, ValidationError
from loomdb.transports.endpoint import SYNC_MEDIA_TYPE, SYNC_PATH, sync_endpoint
from loomdb.transports.http import HttpChannel
from loomdb.transports.tls import TlsFiles, client_context, self_signed_cert

pytestmark = pytest.mark.anyio

BASE = "http://loomdb.test"
FRAME_HEADERS = {"content-type": SYNC_MEDIA_TYPE}


async def reverse(frame: bytes) -> bytes:
    return frame[::-1]


async def broken(frame: bytes) -> bytes:
    raise RuntimeError("bug")


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


@pytest.fixture
async def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Database]:
    monkeypatch.delenv("LOOMDB_KEYRING_SECRET", raising=False)
    database = await Database.open(tmp_path / "home")
    try:
        yield database
    finally:
        await database.aclose()


class Chunks(httpx.AsyncByteStream):
    """A body without a declared length (not an async generator: a server that stops
    reading early leaves nothing to finalize)."""

    def __init__(self, chunk: bytes, count: int) -> None:
        self._left = [chunk] * count

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if not self._left:
            raise StopAsyncIteration
        return self._left.pop()


# --- the app -------------------------------------------------------------------------


async def test_a_relay_serves_node_info_and_sync_only() -> None:
    async with client(create_app(None, sync_handler=reverse)) as api:
        node = await api.get("/api/v0/node")
        assert node.status_code == 200
        assert node.json()["relay"] is True
        assert node.json()["version"]
        assert_error(await api.get("/api/v0/collections"), 404, "route.not_found")
        reply = await api.post(SYNC_PATH, content=b"abc", headers=FRAME_HEADERS)
        assert reply.status_code == 200
        assert reply.headers["content-type"] == SYNC_MEDIA_TYPE
        assert reply.content == b"cba"


async def test_a_node_keeps_its_routes_and_adds_sync(db: Database) -> None:
    async with client(create_app(db, sync_handler=reverse)) as api:
        node = (await api.get("/api/v0/node")).json()
        assert node["relay"] is False
        assert node["peer_id"] == db.peer_id
        assert (await api.post("/api/v0/collections", json={"name": "n"})).status_code == 201
        reply = await api.post(SYNC_PATH, content=b"xy", headers=FRAME_HEADERS)
        assert reply.content == b"yx"
    async with client(create_app(db)) as api:  # no handler: no sync route
        no_sync = await api.post(SYNC_PATH, content=b"xy", headers=FRAME_HEADERS)
        assert_error(no_sync, 404, "route.not_found")


async def test_a_frame_needs_its_content_type() -> None:
    async with client(create_app(None, sync_handler=reverse)) as api:
        assert_error(await api.post(SYNC_PATH, content=b"abc"), 415, "request.media_type")
        plain = {"content-type": "text/plain"}  # what a web page may send without asking
        assert_error(
            await api.post(SYNC_PATH, content=b"a", headers=plain), 415, "request.media_type"
        )
        with_charset = {"content-type": f"{SYNC_MEDIA_TYPE}; charset=binary"}
        assert (await api.post(SYNC_PATH, content=b"ab", headers=with_charset)).content == b"ba"


async def test_a_frame_over_the_limit_is_413_whether_its_length_is_declared_or_not() -> None:
    async with client(create_app(None, sync_handler=reverse, max_frame=100)) as api:
        declared = await api.post(SYNC_PATH, content=b"z" * 101, headers=FRAME_HEADERS)
        assert_error(declared, 413, "request.too_large")
        body = Chunks(b"z" * 40, 4)
        request = httpx.Request("POST", f"{BASE}{SYNC_PATH}", stream=body, headers=FRAME_HEADERS)
        assert "content-length" not in request.headers
        chunked = await api.send(request)
        assert_error(chunked, 413, "request.too_large")
        exact = await api.post(SYNC_PATH, content=b"z" * 100, headers=FRAME_HEADERS)
        assert exact.status_code == 200


async def websocket_session(app: Starlette, *messages: Message) -> list[Message]:
    """Drive the app's WebSocket route with ASGI messages; what it sent back."""
    inbox = [
        {"type": "websocket.connect"},
        *messages,
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": SYNC_PATH,
        "raw_path": SYNC_PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "subprotocols": [],
        "server": ("loomdb.test", 80),
        "client": ("127.0.0.1", 5000),
    }
    with anyio.fail_after(5):
        await app(scope, receive, send)
    return sent


def frame(data: bytes) -> Message:
    return {"type": "websocket.receive", "bytes": data}


async def test_the_websocket_route_answers_frames_and_closes_on_bad_ones() -> None:
    app = create_app(None, sync_handler=reverse, max_frame=10)
    sent = await websocket_session(app, frame(b"abc"), frame(b"d" * 10))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.send"]
    assert [m["bytes"] for m in sent[1:]] == [b"cba", b"d" * 10]

    def closed_with(sent: list[Message]) -> int:
        assert sent[-1]["type"] == "websocket.close"
        return int(sent[-1]["code"])

    text = {"type": "websocket.receive", "text": "abc"}
    assert closed_with(await websocket_session(app, text, frame(b"later"))) == 1003
    assert closed_with(await websocket_session(app, frame(b"x" * 11), frame(b"y"))) == 1009
    failing = create_app(None, sync_handler=broken)
    assert closed_with(await websocket_session(failing, frame(b"x"))) == 1011


# --- the HTTP channel against answers a node would not give --------------------------


async def test_the_http_channel_in_process_and_against_wrong_answers() -> None:
    async def not_loomdb(request: object) -> Response:
        return PlainTextResponse("<html>hello</html>")

    async def failing(request: object) -> Response:
        return Response(b'{"error": {"code": "internal", "message": "boom"}}', status_code=500)

    app = Starlette(
        routes=[
            Route(f"/web{SYNC_PATH}", not_loomdb, methods=["POST"]),
            Route(f"/bad{SYNC_PATH}", failing, methods=["POST"]),
        ]
    )
    good = HttpChannel(BASE, transport=httpx.ASGITransport(create_app(None, sync_handler=reverse)))
    assert await good.request(b"123", timeout=5) == b"321"
    await good.aclose()
    channels = {
        path: HttpChannel(f"{BASE}/{path}", transport=httpx.ASGITransport(app))
        for path in ("web", "bad", "none")
    }
    with pytest.raises(UnreachableError, match="not a loomdb sync endpoint"):
        await channels["web"].request(b"x", timeout=5)
    with pytest.raises(TransportError, match=r"500.*internal: boom"):
        await channels["bad"].request(b"x", timeout=5)
    with pytest.raises(TransportError, match="no sync endpoint"):
        await channels["none"].request(b"x", timeout=5)
    for channel in channels.values():
        await channel.aclose()


# --- URLs and TLS files ----------------------------------------------------------------


def test_node_urls_become_sync_endpoints() -> None:
    http = sync_endpoint("http://127.0.0.1:9181", websocket=False)
    assert http.url == "http://127.0.0.1:9181/api/v0/sync"
    assert sync_endpoint("https://node.example/", websocket=False).url == (
        "https://node.example/api/v0/sync"
    )
    ws = sync_endpoint("https://node.example:8443/base", websocket=True)
    assert (ws.scheme, ws.host, ws.port, ws.path) == (
        "wss",
        "node.example",
        8443,
        "/base/api/v0/sync",
    )
    assert ws.secure
    v6 = sync_endpoint("ws://[::1]:9181/api/v0/sync", websocket=True)
    assert (v6.host, v6.netloc, v6.path) == ("::1", "[::1]:9181", "/api/v0/sync")
    for bad in ("127.0.0.1:9181", "ftp://x", "http://", "http://x:99999", "http://x/?q=1"):
        with pytest.raises(ValidationError):
            sync_endpoint(bad, websocket=False)
    with pytest.raises(ValidationError):
        sync_endpoint("ws://x", websocket=False)


def test_a_self_signed_certificate_names_its_hosts_and_hides_its_key(tmp_path: Path) -> None:
    files = self_signed_cert(tmp_path / "tls", ("127.0.0.1", "localhost", "node.test"))
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    pem = files.cert.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "node.test"]
    assert isinstance(files.server_context(), ssl.SSLContext)
    assert client_context(files.cert).verify_mode == ssl.CERT_REQUIRED
    again = self_signed_cert(tmp_path / "tls")  # replaces the files
    assert again.cert.read_bytes() != pem


def test_tls_files_that_do_not_load_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot load the TLS certificate"):
        TlsFiles(tmp_path / "missing.pem", tmp_path / "key.pem").server_context()
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValidationError, match="cannot load the CA file"):
        client_context(tmp_path / "junk.pem")
