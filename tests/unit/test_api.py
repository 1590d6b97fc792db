"""The HTTP API in-process: every route against a real Database, every error shape."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from loomdb.api import create_app
from loomdb.api.auth import auth_routes
from loomdb.api.errors import STATUS_BY_ERROR, status_of
from loomdb.api.openapi import COMPONENTS, openapi_document
from loomdb.api.p2p import P2P_ENDPOINTS, p2p_routes
from loomdb.api.routes import ENDPOINTS
from loomdb.api.sync_run import sync_run_route
from loomdb.api.trust import TRUST_ENDPOINTS, trust_routes
from loomdb.documents import Database
from loomdb.errors import (
    ChangeRefusedError,
    ConflictError,
    LoomError,
    NotFoundError,
    QueryError,
    SchemaError,
    StoreError,
    ValidationError,
)
from loomdb.trust.auth import AuthService

pytestmark = pytest.mark.anyio

API = "/api/v0"
PEOPLE_SCHEMA = {
    "fields": {"name": {"type": "string", "required": True}, "age": "int", "city": "string"}
}


@pytest.fixture
async def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Database]:
    monkeypatch.delenv("LOOMDB_KEYRING_SECRET", raising=False)
    database = await Database.open(tmp_path / "home")
    try:
        yield database
    finally:
        await database.aclose()


def _client(db: Database, **kw: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(create_app(db, **kw))
    return httpx.AsyncClient(transport=transport, base_url="http://loomdb.test")


@pytest.fixture
async def api(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(db) as client:
        yield client


class ChunkedBody(httpx.AsyncByteStream):
    """A request body without a length. Not an async generator, so one the server
    stops reading early needs no finalizing."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = iter(chunks)

    def __aiter__(self) -> ChunkedBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None


AS_JSON = {"content-type": "application/json"}


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    return str(body["error"]["message"])


async def make_people(api: httpx.AsyncClient) -> None:
    r = await api.post(f"{API}/collections", json={"name": "people", "schema": PEOPLE_SCHEMA})
    assert r.status_code == 201, r.text
    people = [
        ("ada", "Ada", 36, "London"),
        ("bob", "Bob", 25, "Paris"),
        ("cy", "Cy", 41, "Paris"),
        ("dee", "Dee", 30, "Paris"),
        ("eve", "Eve", 19, "Rome"),
    ]
    for doc_id, name, age, city in people:
        r = await api.post(
            f"{API}/collections/people/docs",
            json={"id": doc_id, "value": {"name": name, "age": age, "city": city}},
        )
        assert r.status_code == 201, r.text


# --- node and collections ------------------------------------------------------------


async def test_node_describes_this_node(api: httpx.AsyncClient, db: Database) -> None:
    r = await api.get(f"{API}/node")
    assert r.status_code == 200
    info = r.json()
    assert info["peer_id"] == db.peer_id
    assert info["peer_id"].startswith("12D3KooW")
    assert info["user_id"] == db.user_id
    assert info["space"] == db.space
    assert info["multiaddr"].endswith(f"/p2p/{db.peer_id}")
    assert info["version"]
    assert info["stats"]["entries"] == 0


async def test_collections_create_get_list_and_schema(api: httpx.AsyncClient) -> None:
    r = await api.post(f"{API}/collections", json={"name": "notes"})
    assert r.status_code == 201
    assert r.json() == {"name": "notes", "schema": None, "documents": 0, "indexes": []}
    again = await api.post(f"{API}/collections", json={"name": "notes"})  # idempotent
    assert again.status_code == 201
    assert again.json() == r.json()

    r = await api.put(f"{API}/collections/notes/schema", json={"schema": PEOPLE_SCHEMA})
    assert r.status_code == 200
    assert r.json()["schema"]["fields"]["age"]["type"] == "int"
    assert (await api.get(f"{API}/collections/notes")).json()["schema"] == r.json()["schema"]

    r = await api.put(f"{API}/collections/notes/schema", json={"schema": None})
    assert r.json()["schema"] is None

    await api.post(f"{API}/collections", json={"name": "tasks", "schema": PEOPLE_SCHEMA})
    listed = (await api.get(f"{API}/collections")).json()["collections"]
    assert sorted(c["name"] for c in listed) == ["notes", "tasks"]
    assert next(c for c in listed if c["name"] == "tasks")["schema"] is not None


async def test_collection_errors(api: httpx.AsyncClient) -> None:
    assert_error(await api.get(f"{API}/collections/nothing"), 404, NotFoundError.code)
    assert_error(
        await api.post(f"{API}/collections", json={"name": "$bad"}), 422, ValidationError.code
    )
    bad_schema = {"name": "x", "schema": {"fields": {"age": "integer-ish"}}}
    message = assert_error(
        await api.post(f"{API}/collections", json=bad_schema), 422, "document.schema"
    )
    assert "integer-ish" in message


async def test_indexes(api: httpx.AsyncClient) -> None:
    await make_people(api)
    assert (await api.get(f"{API}/collections/people/indexes")).json() == {"indexes": []}
    r = await api.post(f"{API}/collections/people/indexes", json={"field": "age"})
    assert r.status_code == 201
    assert r.json() == {"indexes": ["age"]}
    assert (await api.get(f"{API}/collections/people/indexes")).json() == {"indexes": ["age"]}
    assert (await api.get(f"{API}/collections/people")).json()["indexes"] == ["age"]
    bad = await api.post(f"{API}/collections/people/indexes", json={"field": "a..b"})
    assert_error(bad, 422, ValidationError.code)


# --- documents ---------------------------------------------------------------------


async def test_document_crud(api: httpx.AsyncClient) -> None:
    docs = f"{API}/collections/notes/docs"
    await api.post(f"{API}/collections", json={"name": "notes"})
    value = {"title": "hi", "tags": ["a"], "blob": {"$bytes": base64.b64encode(b"\0\1").decode()}}
    r = await api.post(docs, json={"id": "n1", "value": value})
    assert r.status_code == 201
    doc = r.json()
    assert set(doc) == {"id", "collection", "value", "heads", "created_at", "updated_at", "deleted"}
    assert doc["id"] == "n1"
    assert doc["collection"] == "notes"
    assert doc["value"] == value  # bytes come back in the same JSON form
    assert len(doc["heads"]) == 1
    assert doc["heads"][0].startswith("bafy")
    assert doc["deleted"] is False

    fresh = await api.post(docs, json={"value": {"title": "no id"}})
    assert fresh.status_code == 201
    assert fresh.json()["id"]

    assert_error(await api.post(docs, json={"id": "n1", "value": {}}), 409, ConflictError.code)
    assert (await api.get(f"{docs}/n1")).json() == doc

    r = await api.patch(f"{docs}/n1", json={"set": {"title": "hello", "n": 1}, "unset": ["tags"]})
    assert r.status_code == 200
    updated = r.json()
    assert updated["value"] == {"title": "hello", "n": 1, "blob": value["blob"]}
    assert updated["heads"] != doc["heads"]
    assert updated["updated_at"] > doc["updated_at"]

    r = await api.delete(f"{docs}/n1")
    assert r.status_code == 204
    assert r.content == b""
    assert_error(await api.get(f"{docs}/n1"), 404, NotFoundError.code)
    assert_error(await api.delete(f"{docs}/missing"), 404, NotFoundError.code)
    assert_error(
        await api.patch(f"{docs}/missing", json={"set": {"a": 1}}), 404, NotFoundError.code
    )


async def test_list_pages_and_counts(api: httpx.AsyncClient) -> None:
    await make_people(api)
    r = await api.get(f"{API}/collections/people/docs")
    page = r.json()
    assert page["count"] == 5
    assert len(page["documents"]) == 5
    ids = [d["id"] for d in page["documents"]]
    r = await api.get(f"{API}/collections/people/docs", params={"limit": 2, "offset": 1})
    page = r.json()
    assert [d["id"] for d in page["documents"]] == ids[1:3]
    assert page["count"] == 5


async def test_schema_rejection_stores_nothing(api: httpx.AsyncClient) -> None:
    await make_people(api)
    before = (await api.get(f"{API}/node")).json()["stats"]["entries"]
    r = await api.post(
        f"{API}/collections/people/docs", json={"id": "zed", "value": {"name": "Zed", "age": "old"}}
    )
    assert "age" in assert_error(r, 422, SchemaError.code)
    missing = await api.post(f"{API}/collections/people/docs", json={"value": {"age": 3}})
    assert_error(missing, 422, SchemaError.code)
    patch = await api.patch(f"{API}/collections/people/docs/ada", json={"set": {"age": 1.5}})
    assert_error(patch, 422, SchemaError.code)
    assert (await api.get(f"{API}/node")).json()["stats"]["entries"] == before
    assert_error(await api.get(f"{API}/collections/people/docs/zed"), 404, NotFoundError.code)
    assert (await api.get(f"{API}/collections/people/docs/ada")).json()["value"]["age"] == 36
    assert (await api.get(f"{API}/collections/people/docs")).json()["count"] == 5


async def test_counters_and_text(api: httpx.AsyncClient) -> None:
    docs = f"{API}/collections/posts/docs"
    value = {"likes": {"$counter": 1}, "body": {"$text": "hello world"}}
    assert (await api.post(docs, json={"id": "p", "value": value})).status_code == 201
    r = await api.post(f"{docs}/p/increment", json={"field": "likes", "by": 2})
    assert r.status_code == 200
    assert r.json()["value"]["likes"] == 3
    r = await api.post(f"{docs}/p/increment", json={"field": "likes"})  # by defaults to 1
    assert r.json()["value"]["likes"] == 4
    r = await api.patch(f"{docs}/p", json={"set": {"likes": {"$inc": -4}}})
    assert r.json()["value"]["likes"] == 0

    r = await api.post(
        f"{docs}/p/text", json={"field": "body", "index": 6, "delete": 5, "insert": "loom"}
    )
    assert r.status_code == 200
    assert r.json()["value"]["body"] == "hello loom"
    r = await api.post(f"{docs}/p/text", json={"field": "body", "index": 0, "insert": ">> "})
    assert r.json()["value"]["body"] == ">> hello loom"
    bad = await api.post(f"{docs}/p/text", json={"field": "body", "index": -1})
    assert_error(bad, 400, "request.invalid")


async def test_history_and_versions(api: httpx.AsyncClient) -> None:
    docs = f"{API}/collections/notes/docs"
    first = (await api.post(docs, json={"id": "n", "value": {"v": 1}})).json()
    await api.patch(f"{docs}/n", json={"set": {"v": 2}})
    last = (await api.patch(f"{docs}/n", json={"set": {"v": 3}})).json()
    r = await api.get(f"{docs}/n/history")
    assert r.status_code == 200
    items = r.json()["history"]
    assert [i["height"] for i in items] == [1, 2, 3]
    assert items[0]["cid"] == first["heads"][0]
    assert items[0]["kind"] == "create"
    assert items[0]["parents"] == []
    assert items[1]["parents"] == [items[0]["cid"]]
    assert items[2]["cid"] == last["heads"][0]
    assert {i["state"] for i in items} == {"applied"}
    assert len({i["author"] for i in items}) == 1
    assert items[0]["created_at"] < items[1]["created_at"] < items[2]["created_at"]

    r = await api.get(f"{docs}/n/versions/{items[0]['cid']}")
    assert r.status_code == 200
    assert r.json()["value"] == {"v": 1}
    r = await api.get(f"{docs}/n/versions/{items[1]['cid']}")
    assert r.json()["value"] == {"v": 2}
    assert (await api.get(f"{docs}/n")).json()["value"] == {"v": 3}
    assert_error(await api.get(f"{docs}/nope/history"), 404, NotFoundError.code)
    other = (await api.post(docs, json={"id": "other", "value": {}})).json()["heads"][0]
    wrong = await api.get(f"{docs}/n/versions/{other}")
    assert wrong.status_code in (404, 422)
    assert "Traceback" not in wrong.text


async def test_query_filters_sort_limit(api: httpx.AsyncClient) -> None:
    await make_people(api)
    url = f"{API}/collections/people/query"
    r = await api.post(
        url,
        json={
            "where": [
                {"field": "city", "op": "eq", "value": "Paris"},
                {"field": "age", "op": "gte", "value": 25},
            ],
            "sort": [{"field": "age", "order": "desc"}],
            "limit": 2,
        },
    )
    assert r.status_code == 200
    result = r.json()
    assert [d["id"] for d in result["documents"]] == ["cy", "dee"]
    assert result["count"] == 3  # all matches, not just this page
    r = await api.post(url, json={"sort": [{"field": "age"}], "offset": 3})
    assert [d["id"] for d in r.json()["documents"]] == ["ada", "cy"]
    r = await api.post(
        url, json={"where": [{"field": "name", "op": "in", "value": ["Ada", "Eve"]}]}
    )
    assert sorted(d["id"] for d in r.json()["documents"]) == ["ada", "eve"]
    r = await api.post(url, json={})
    assert r.json()["count"] == 5

    bad_op = await api.post(url, json={"where": [{"field": "age", "op": "like", "value": 1}]})
    assert ".op" in assert_error(bad_op, 400, "request.invalid")
    bad_value = await api.post(url, json={"where": [{"field": "age", "op": "gt", "value": [1]}]})
    assert_error(bad_value, 422, QueryError.code)


# --- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"value": "not an object"}, "body.value: expected object"),
        ({"value": {}, "id": 7}, "body.id: expected string"),
        ({"value": {}, "extra": 1}, "unknown field 'extra'"),
        ({}, "missing 'value'"),
        ([], "expected object, got array"),
        ({"value": {}, "id": ""}, "must not be empty"),
    ],
)
async def test_wrong_json_types_are_400(api: httpx.AsyncClient, body: Any, fragment: str) -> None:
    r = await api.post(f"{API}/collections/notes/docs", json=body)
    assert fragment in assert_error(r, 400, "request.invalid")


@pytest.mark.parametrize("content", [b"{bad", b"", b"   ", b"NaN", b"\xff\xfe\x00", b"[" * 100_000])
async def test_malformed_json_is_400(api: httpx.AsyncClient, content: bytes) -> None:
    r = await api.post(f"{API}/collections", content=content, headers=AS_JSON)
    assert_error(r, 400, "request.json")


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"],
)
async def test_bodies_not_sent_as_json_are_415(
    api: httpx.AsyncClient, content_type: str | None
) -> None:
    """What a web page can POST to another origin without a preflight, refused."""
    headers = {} if content_type is None else {"content-type": content_type}
    body = b'{"name": "from-a-page"}'
    r = await api.post(f"{API}/collections", content=body, headers=headers)
    assert_error(r, 415, "request.media_type")
    assert (await api.get(f"{API}/collections")).json() == {"collections": []}
    ok = {"content-type": "application/json; charset=utf-8"}
    assert (await api.post(f"{API}/collections", content=body, headers=ok)).status_code == 201


async def test_bad_values_are_refused_by_the_database(api: httpx.AsyncClient) -> None:
    docs = f"{API}/collections/notes/docs"
    for value in ({"$weird": 1}, {"a": {"$bytes": "not base64!"}}, {"a.b": 1}):
        assert_error(await api.post(docs, json={"value": value}), 422, ValidationError.code)
    assert_error(await api.post(docs, json={"id": "a/b", "value": {}}), 422, ValidationError.code)


@pytest.mark.parametrize(
    "query",
    ["limit=abc", "limit=-1", "limit=100000", "offset=x", "limt=3", "limit=1&limit=2"],
)
async def test_bad_query_parameters_are_400(api: httpx.AsyncClient, query: str) -> None:
    r = await api.get(f"{API}/collections/notes/docs?{query}")
    assert_error(r, 400, "request.invalid")


async def test_unknown_routes_and_methods(api: httpx.AsyncClient) -> None:
    assert_error(await api.get("/nothing/here"), 404, "route.not_found")
    assert_error(await api.get(f"{API}/collections/a/b/c/d/e"), 404, "route.not_found")
    r = await api.delete(f"{API}/collections")
    assert "DELETE" in assert_error(r, 405, "route.method")
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert_error(await api.put(f"{API}/collections/x/docs/y"), 405, "route.method")


async def test_oversized_bodies_are_413(db: Database) -> None:
    async with _client(db, max_body_bytes=1024) as api:
        big = {"name": "x" * 2000}
        r = await api.post(f"{API}/collections", json=big)  # declared length
        assert_error(r, 413, "request.too_large")

        # No length: counted as it streams. The server stops reading early.
        body = ChunkedBody([b'{"name": "', *[b"x" * 200] * 10, b'"}'])
        request = httpx.Request(
            "POST", api.base_url.join(f"{API}/collections"), stream=body, headers=AS_JSON
        )
        assert "content-length" not in request.headers
        assert_error(await api.send(request), 413, "request.too_large")
        small = await api.post(f"{API}/collections", json={"name": "fits"})
        assert small.status_code == 201


async def test_the_default_limit_is_4_mib(api: httpx.AsyncClient) -> None:
    body = json.dumps({"name": "x" * (4 * 1024 * 1024)}).encode()
    r = await api.post(f"{API}/collections", content=body, headers=AS_JSON)
    assert_error(r, 413, "request.too_large")


async def test_library_errors_are_500_without_a_traceback(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_store() -> dict[str, Any]:
        raise StoreError("the disk is on fire")

    monkeypatch.setattr(db, "stats", broken_store)
    async with _client(db) as api:
        r = await api.get(f"{API}/node")
        assert assert_error(r, 500, StoreError.code) == "the disk is on fire"


async def test_bugs_are_500_internal_without_details(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def bug() -> dict[str, Any]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(db, "stats", bug)
    transport = httpx.ASGITransport(create_app(db), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://loomdb.test") as api:
        r = await api.get(f"{API}/node")
        assert_error(r, 500, "internal")
        assert "secret" not in r.text


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ValidationError("x"), 422),
        (SchemaError("x"), 422),
        (QueryError("x"), 422),
        (NotFoundError("x"), 404),
        (ConflictError("x"), 409),
        (ChangeRefusedError("x"), 500),
        (StoreError("x"), 500),
        (LoomError("x"), 500),
    ],
)
def test_status_table(error: LoomError, status: int) -> None:
    assert status_of(error) == status
    assert STATUS_BY_ERROR[-1] == (LoomError, 500)  # every LoomError has a status


# --- OpenAPI ---------------------------------------------------------------------


async def test_openapi_describes_every_route(api: httpx.AsyncClient, db: Database) -> None:
    r = await api.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    # every route the daemon serves (serve_node composes the same parts)
    auth = AuthService(db.home.keyring.node_key, lambda user: None)

    async def no_remote(body: Any) -> Any:
        raise AssertionError("not called")

    async def echo(frame: bytes) -> bytes:
        return frame

    full = create_app(
        db,
        sync_handler=echo,
        auth=auth,
        extra_routes=[
            sync_run_route(db, None, no_remote),
            *auth_routes(auth),
            *trust_routes(),
            *p2p_routes(),
        ],
    )
    served = {
        (route.path, method)
        for route in full.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
    assert len(served) == len(ENDPOINTS) + len(TRUST_ENDPOINTS) + len(P2P_ENDPOINTS) + 4
    # the admin token everywhere but the public routes
    assert doc["security"] == [{"adminToken": []}]
    public = {path for path, ops in doc["paths"].items() if "security" in ops.get("post", {})}
    assert public == {"/api/v0/sync", "/api/v0/auth/challenge", "/api/v0/auth/token"}

    refs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(doc)
    assert refs
    for ref in refs:
        assert ref.removeprefix("#/components/schemas/") in COMPONENTS
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op["summary"]
            assert "500" in op["responses"]
    assert doc == openapi_document()
