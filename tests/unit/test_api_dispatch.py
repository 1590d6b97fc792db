"""The API's direct dispatch answers exactly as Starlette's own stack would.

:class:`loomdb.api.dispatch.API` serves the route table's routes without
Starlette's middlewares and router; these tests send the same requests to it
and to a plain ``Starlette`` app over the very same routes and handlers, and
compare status, headers and body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loomdb.api import create_app, validation
from loomdb.api.dispatch import API
from loomdb.api.errors import EXCEPTION_HANDLERS
from loomdb.documents import Database

pytestmark = pytest.mark.anyio

PREFIX = "/api/v0"
AS_JSON = {"content-type": "application/json"}


@pytest.fixture
async def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Database]:
    monkeypatch.delenv("LOOMDB_KEYRING_SECRET", raising=False)
    database = await Database.open(tmp_path / "home")
    try:
        coll = database.collection("notes")
        await coll.create({"title": "hello"}, id="a")
        yield database
    finally:
        await database.aclose()


def _clients(app: Starlette) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    """(the API itself, plain Starlette over the same routes and handlers)."""
    assert isinstance(app, API)
    plain = Starlette(routes=list(app.routes), exception_handlers=dict(EXCEPTION_HANDLERS))

    def client(asgi: Starlette) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(asgi, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://loomdb.test")

    return client(app), client(plain)


REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/collections/notes/docs/a", {}),
    ("HEAD", "/collections/notes/docs/a", {}),
    ("GET", "/collections/notes/docs/missing", {}),
    ("GET", "/collections/notes/docs?limit=1", {}),
    ("GET", "/collections/notes/docs?limit=x", {}),
    ("GET", "/collections/notes/docs?limit=1&limit=2", {}),
    ("GET", "/collections/nowhere/docs", {}),
    ("POST", "/collections/notes/docs", {"json": {"id": "a", "value": {}}}),  # 409
    ("POST", "/collections/notes/docs", {"json": {"value": 3}}),
    ("POST", "/collections/notes/docs", {"json": {"value": {}, "extra": 1}}),
    ("POST", "/collections/notes/docs", {"content": b"{not json", "headers": AS_JSON}),
    ("POST", "/collections/notes/docs", {"content": b"", "headers": AS_JSON}),
    (
        "POST",
        "/collections/notes/docs",
        {"content": b"{}", "headers": {"content-type": "text/plain"}},
    ),
    ("POST", "/collections/notes/docs", {"content": b"[" * 100 + b"]" * 100, "headers": AS_JSON}),
    ("POST", "/collections/notes/docs", {"json": {"value": {"x": "y" * 5000}}, "big": True}),
    ("PATCH", "/collections/notes/docs/missing", {"json": {"set": {"x": 1}}}),
    ("PATCH", "/collections/notes/docs/a", {"json": {"set": 3}}),
    ("PUT", "/collections/notes/docs/a", {}),  # 405: the path matches, the method not
    ("DELETE", "/collections", {}),
    ("GET", "/collections/notes/docs/a/", {}),  # no route: a redirect or 404, as Starlette
    ("GET", "/nothing", {}),
    ("POST", "/collections/notes/query", {"json": {"where": [{"field": "title", "op": "zz"}]}}),
    ("GET", "/collections/notes/docs/a/history", {}),
    ("GET", "/openapi.json", {}),
]


def _same(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.status_code, a.headers.multi_items(), a.content) == (
        b.status_code,
        b.headers.multi_items(),
        b.content,
    )


@pytest.mark.parametrize(("method", "path", "kw"), REQUESTS)
async def test_the_direct_routes_answer_as_starlette(
    db: Database, method: str, path: str, kw: dict[str, Any]
) -> None:
    kw = dict(kw)
    limit = {"max_body_bytes": 1024} if kw.pop("big", False) else {}
    direct, plain = _clients(create_app(db, **limit))
    url = f"{PREFIX}{path}" if not path.startswith("/openapi") else path
    async with direct, plain:
        _same(await direct.request(method, url, **kw), await plain.request(method, url, **kw))


async def test_errors_of_handlers_are_answered_as_starlette(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}

    async def bug() -> dict[str, Any]:
        calls["n"] += 1
        raise RuntimeError("secret internals")

    monkeypatch.setattr(db, "stats", bug)
    direct, plain = _clients(create_app(db))
    async with direct, plain:
        a, b = await direct.get(f"{PREFIX}/node"), await plain.get(f"{PREFIX}/node")
    _same(a, b)
    assert a.status_code == 500 and "secret" not in a.text
    assert calls["n"] == 2


async def test_a_bug_is_raised_to_the_server_after_the_500(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def bug() -> dict[str, Any]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(db, "stats", bug)
    transport = httpx.ASGITransport(create_app(db))  # raises what the app raises
    async with httpx.AsyncClient(transport=transport, base_url="http://loomdb.test") as api:
        with pytest.raises(RuntimeError, match="secret internals"):
            await api.get(f"{PREFIX}/node")


async def test_the_created_document_is_the_same_shape(db: Database) -> None:
    direct, plain = _clients(create_app(db))
    async with direct, plain:
        a = await direct.post(f"{PREFIX}/collections/notes/docs", json={"id": "d1", "value": {}})
        b = await plain.post(f"{PREFIX}/collections/notes/docs", json={"id": "d2", "value": {}})
    assert a.status_code == b.status_code == 201
    assert a.headers.keys() == b.headers.keys()
    assert a.json().keys() == b.json().keys() and a.json()["id"] == "d1"


async def _ok(request: Request) -> Response:
    return JSONResponse({"path": request.path_params})


def test_the_direct_routes_must_come_first() -> None:
    first, second = Route("/a/{x}", _ok), Route("/b", _ok)
    with pytest.raises(ValueError, match="first"):
        API(direct=[second], routes=[first, second], exception_handlers={})


async def test_a_later_route_still_gets_a_path_a_direct_route_holds_for_another_method() -> None:
    async def other(request: Request) -> Response:
        return JSONResponse({"other": True})

    direct = Route("/a/{x}", _ok, methods=["GET"])
    app = API(
        direct=[direct],
        routes=[direct, Route("/a/{x}", other, methods=["POST"])],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/a/1")).json() == {"path": {"x": "1"}}
        assert (await client.post("/a/1")).json() == {"other": True}
        assert (await client.put("/a/1")).status_code == 405


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": [1, 2.5, "x"]}',
        '{"a": "é"}'.encode("utf-16"),
        '{"a": "é"}'.encode("utf-32-le"),
        b"\xef\xbb\xbf{}",
        b"NaN",
        b'{"a": -Infinity}',
        b'{"a": "\xff"}',
        b"[1,]",
        b'"\\ud800"',
    ],
)
def test_the_body_is_decoded_as_json_loads_would(body: bytes) -> None:
    def outcome(decode: Any) -> tuple[str, Any]:
        try:
            return "ok", decode(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return type(exc).__name__, str(exc)

    expected = outcome(lambda b: json.loads(b, parse_constant=validation._refuse_constant))
    assert outcome(validation._loads) == expected
