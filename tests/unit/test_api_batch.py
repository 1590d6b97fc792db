"""The batch write route and the 404 of reads on an unknown collection, in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loomdb.api import create_app
from loomdb.api.routes import MAX_BATCH
from loomdb.documents import Database

pytestmark = pytest.mark.anyio

API = "/api/v0"
BATCH = f"{API}/collections/people/docs:batch"
SCHEMA = {"fields": {"name": {"type": "string", "required": True}, "age": "int"}}


@pytest.fixture
async def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Database]:
    monkeypatch.delenv("LOOMDB_KEYRING_SECRET", raising=False)
    database = await Database.open(tmp_path / "home")
    try:
        yield database
    finally:
        await database.aclose()


@pytest.fixture
async def api(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(create_app(db))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


async def entries(api: httpx.AsyncClient) -> int:
    return int((await api.get(f"{API}/node")).json()["stats"]["entries"])


async def test_a_batch_creates_every_document_in_one_write(
    api: httpx.AsyncClient, db: Database
) -> None:
    puts: list[int] = []
    put_entries = db.store.put_entries

    async def counting(batch: Any) -> Any:
        puts.append(len(batch))
        return await put_entries(batch)

    db.store.put_entries = counting  # type: ignore[method-assign]
    docs = [{"id": f"p{i}", "value": {"name": f"P{i}", "age": i}} for i in range(300)]
    docs.append({"value": {"name": "no id", "tags": {"$bytes": "AAE="}}})
    r = await api.post(BATCH, json={"documents": docs})
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["count"] == 301 and answer["ids"][:2] == ["p0", "p1"]
    assert len(answer["ids"][-1]) == 32  # the node picked it
    assert puts == [301]  # one store batch for the request
    got = (await api.get(f"{API}/collections/people/docs/p7")).json()
    assert got["value"] == {"name": "P7", "age": 7}
    last = (await api.get(f"{API}/collections/people/docs/{answer['ids'][-1]}")).json()
    assert last["value"]["tags"] == {"$bytes": "AAE="}
    empty = await api.post(BATCH, json={"documents": []})
    assert empty.status_code == 201 and empty.json() == {"ids": [], "count": 0}


@pytest.mark.parametrize(
    ("docs", "status", "code", "index", "fragment"),
    [
        # the schema refuses the third: nothing of the batch is written
        ([{"name": "A"}, {"name": "B"}, {"name": "C", "age": "old"}], 422, "document.schema", 2,
         "age"),
        ([{"name": "A"}, {"name": {"$bytes": "%%%"}}], 422, "validation", 1, "base64"),
        ([{"name": "A"}, {"name": "B", "$x": 1}], 422, "validation", 1, "$x"),
    ],
)  # fmt: skip
async def test_one_refused_document_refuses_the_batch_and_is_named(
    api: httpx.AsyncClient,
    docs: list[dict[str, Any]],
    status: int,
    code: str,
    index: int,
    fragment: str,
) -> None:
    assert (
        await api.post(f"{API}/collections", json={"name": "people", "schema": SCHEMA})
    ).is_success
    before = await entries(api)
    r = await api.post(BATCH, json={"documents": [{"value": v} for v in docs]})
    error = error_of(r, status, code)
    assert error["index"] == index
    assert error["message"].startswith(f"documents[{index}]: ") and fragment in error["message"]
    assert await entries(api) == before
    assert (await api.get(f"{API}/collections/people/docs")).json()["count"] == 0


async def test_conflicts_in_a_batch_name_the_document(api: httpx.AsyncClient) -> None:
    r = await api.post(BATCH, json={"documents": [{"id": "ada", "value": {"name": "Ada"}}]})
    assert r.status_code == 201
    taken = [{"id": "new", "value": {}}, {"id": "ada", "value": {}}]
    error = error_of(await api.post(BATCH, json={"documents": taken}), 409, "document.conflict")
    assert error["index"] == 1 and "'ada' already exists" in error["message"]
    twice = [{"id": "x", "value": {}}, {"id": "y", "value": {}}, {"id": "x", "value": {}}]
    error = error_of(await api.post(BATCH, json={"documents": twice}), 409, "document.conflict")
    assert error["index"] == 2
    bad_id = [{"id": "ok", "value": {}}, {"id": "..", "value": {}}]
    error = error_of(await api.post(BATCH, json={"documents": bad_id}), 422, "validation")
    assert error["index"] == 1
    assert (await api.get(f"{API}/collections/people/docs")).json()["count"] == 1


async def test_the_batch_size_is_bounded(api: httpx.AsyncClient) -> None:
    docs = [{"value": {"n": i}} for i in range(MAX_BATCH + 1)]
    error = error_of(await api.post(BATCH, json={"documents": docs}), 400, "request.invalid")
    assert f"at most {MAX_BATCH}" in error["message"] and "index" not in error
    shape = await api.post(BATCH, json={"documents": [{"value": []}]})
    assert "documents[0].value" in error_of(shape, 400, "request.invalid")["message"]
    doc = (await api.get("/openapi.json")).json()
    op = doc["paths"][BATCH.replace("people", "{collection}")]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["documents"]["maxItems"] == MAX_BATCH
    assert set(op["responses"]) >= {"201", "400", "409", "413", "422"}


async def test_reads_of_an_unknown_collection_are_404(api: httpx.AsyncClient) -> None:
    for r in (
        await api.get(f"{API}/collections/nope/docs"),
        await api.post(f"{API}/collections/nope/query", json={}),
    ):
        assert "no collection 'nope'" in error_of(r, 404, "document.not_found")["message"]
    assert (await api.post(f"{API}/collections", json={"name": "empty"})).is_success
    r = await api.get(f"{API}/collections/empty/docs")
    assert r.status_code == 200 and r.json() == {"documents": [], "count": 0}


async def test_collection_names_that_urls_cannot_carry_are_refused(
    api: httpx.AsyncClient,
) -> None:
    for name in (".", "..", " x", "x "):
        r = await api.post(f"{API}/collections", json={"name": name})
        error_of(r, 422, "validation")
