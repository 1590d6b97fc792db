"""The HTTP API's one route table: every route, its handler and its schemas.

:data:`ENDPOINTS` is the only list of routes. The Starlette app is built from
it (:mod:`loomdb.api.app`), and so is the OpenAPI document
(:mod:`loomdb.api.openapi`); a request body is checked against the same schema
the document shows (:func:`loomdb.api.validation.check`).

Handlers are thin: they take a :class:`Call` (the database, path and query
parameters, the checked body), call the database once or twice and return a
JSON-ready value. Values cross in the JSON form of
:mod:`loomdb.documents.values` (``from_json`` in, ``document_to_json`` out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import loomdb
from loomdb.api.validation import Schema
from loomdb.documents.model import CollectionInfo, Document, HistoryItem
from loomdb.documents.query import MAX_OFFSET
from loomdb.documents.values import document_to_json, from_json
from loomdb.errors import LoomError, NotFoundError
from loomdb.node.addrs import running_addrs

if TYPE_CHECKING:
    from loomdb.documents import Collection, Database

PREFIX = "/api/v0"
MAX_BATCH = 1000  # documents per POST …/docs:batch
QUERY_OPS = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "contains", "exists")


def _version() -> str:
    declared = getattr(loomdb, "__version__", None)  # the source tree's own, when it has one
    if isinstance(declared, str):
        return declared
    try:
        return version("loomdb")
    except PackageNotFoundError:  # running from a tree that was never installed
        return "unknown"


LOOMDB_VERSION = _version()


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler gets: the database and the request, already read and checked."""

    db: Database
    path: Mapping[str, str]
    query: Mapping[str, Any]
    body: Any

    def collection(self) -> Collection:
        return self.db.collection(self.path["collection"])

    async def existing_collection(self) -> Collection:
        """The path's collection; NotFoundError when this node has no such collection
        (reads answer 404 rather than an empty list for a misspelled name)."""
        coll = self.collection()
        if not await coll.exists():
            raise NotFoundError(f"no collection {coll.name!r}")
        return coll


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    status: int = 200  # on success
    body: Schema | None = None  # JSON request body, checked before the handler runs
    query: Mapping[str, Schema] = field(default_factory=dict)
    response: str | None = None  # name of a component schema in the OpenAPI document
    errors: tuple[int, ...] = ()  # statuses worth listing besides 400/500


# --- request schemas ------------------------------------------------------------

_NAME: Schema = {"type": "string", "minLength": 1}
_ANY: Schema = {"description": "any JSON value, in the JSON value form"}
_SCHEMA: Schema = {
    "type": ["object", "null"],
    "description": "the collection's schema; null removes it",
}
_LIMIT: Schema = {"type": "integer", "minimum": 0, "maximum": 1000, "default": 100}
_OFFSET: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}
_PAGE: Mapping[str, Schema] = {"limit": _LIMIT, "offset": _OFFSET}


def _object(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


CONDITION = _object(
    ("field", "op"),
    field=_NAME,
    op={"type": "string", "enum": list(QUERY_OPS)},
    value=_ANY,
)
SORT_KEY = _object(("field",), field=_NAME, order={"type": "string", "enum": ["asc", "desc"]})

NEW_COLLECTION = _object(("name",), name=_NAME, schema=_SCHEMA)
SET_SCHEMA = _object(("schema",), schema=_SCHEMA)
NEW_INDEX = _object(("field",), field=_NAME)
NEW_DOCUMENT = _object(
    ("value",),
    id={**_NAME, "description": "default: a new random id"},
    value={"type": "object", "description": "the document, in the JSON value form"},
)
NEW_DOCUMENTS = _object(
    ("documents",),
    documents={
        "type": "array",
        "items": NEW_DOCUMENT,
        "maxItems": MAX_BATCH,
        "description": "created all together, or none of them",
    },
)
PATCH = _object(
    (),
    set={"type": "object", "description": "fields merged into the document"},
    unset={"type": "array", "items": _NAME, "description": "dotted paths to remove"},
)
INCREMENT = _object(("field",), field=_NAME, by={"type": "number", "default": 1})
TEXT_EDIT = _object(
    ("field", "index"),
    field=_NAME,
    index={"type": "integer", "minimum": 0},
    delete={"type": "integer", "minimum": 0, "default": 0},
    insert={"type": "string", "default": ""},
)
QUERY = _object(
    (),
    where={"type": "array", "items": CONDITION, "description": "all must hold"},
    sort={"type": "array", "items": SORT_KEY},
    limit=_LIMIT,
    offset=_OFFSET,
)


# --- JSON forms of the library's records ----------------------------------------


def collection_json(info: CollectionInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "schema": info.schema,
        "documents": info.documents,
        "indexes": list(info.indexes),
    }


def history_json(item: HistoryItem) -> dict[str, Any]:
    out = dataclasses.asdict(item)
    out["parents"] = list(item.parents)
    return out


def documents_json(docs: list[Document], count: int) -> dict[str, Any]:
    return {"documents": [document_to_json(d) for d in docs], "count": count}


# --- handlers --------------------------------------------------------------------


def relay_node_info() -> dict[str, Any]:
    """``GET /api/v0/node`` of a node without a database: it only relays sync."""
    return {"relay": True, "version": LOOMDB_VERSION}


async def get_node(call: Call) -> Any:
    db = call.db
    return {
        "relay": False,
        "peer_id": db.peer_id,
        "user_id": db.user_id,
        "space": db.space,
        "multiaddr": (running_addrs(db.home.path) or [db.home.listen_multiaddr()])[0],
        "multiaddrs": running_addrs(db.home.path),  # where its libp2p host listens
        "version": LOOMDB_VERSION,
        "stats": await db.stats(),
    }


async def list_collections(call: Call) -> Any:
    return {"collections": [collection_json(c) for c in await call.db.collections()]}


async def create_collection(call: Call) -> Any:
    body = call.body
    return collection_json(await call.db.create_collection(body["name"], body.get("schema")))


async def get_collection(call: Call) -> Any:
    return collection_json(await call.db.collection_info(call.path["collection"]))


async def set_schema(call: Call) -> Any:
    return collection_json(await call.db.set_schema(call.path["collection"], call.body["schema"]))


async def list_indexes(call: Call) -> Any:
    return {"indexes": list(await call.collection().indexes())}


async def create_index(call: Call) -> Any:
    coll = call.collection()
    await coll.create_index(call.body["field"])
    return {"indexes": list(await coll.indexes())}


async def list_documents(call: Call) -> Any:
    coll = await call.existing_collection()
    docs = await coll.list(limit=call.query["limit"], offset=call.query["offset"])
    return documents_json(docs, await coll.count())


async def create_document(call: Call) -> Any:
    value = from_json(call.body["value"])
    return document_to_json(await call.collection().create(value, id=call.body.get("id")))


async def create_documents(call: Call) -> Any:
    """All or nothing: a refused document refuses the batch, and the error names it
    (``documents[i]: …`` and ``index: i``)."""
    items = call.body["documents"]
    try:
        values = []
        for index, item in enumerate(items):
            try:
                values.append(from_json(item["value"], "value"))
            except LoomError as exc:
                exc.index = index
                raise
        ids = await call.collection().create_many_ids(values, ids=[d.get("id") for d in items])
    except LoomError as exc:
        if exc.index is not None:
            exc.message = f"documents[{exc.index}]: {exc.message}"
            exc.args = (exc.message,)
        raise
    return {"ids": ids, "count": len(ids)}


async def get_document(call: Call) -> Any:
    return document_to_json(await call.collection().get(call.path["id"]))


async def update_document(call: Call) -> Any:
    patch = from_json(call.body.get("set", {}), "set")
    unset = call.body.get("unset", [])
    return document_to_json(await call.collection().update(call.path["id"], patch, unset=unset))


async def delete_document(call: Call) -> Any:
    await call.collection().delete(call.path["id"])


async def increment(call: Call) -> Any:
    body = call.body
    doc = await call.collection().increment(call.path["id"], body["field"], body.get("by", 1))
    return document_to_json(doc)


async def edit_text(call: Call) -> Any:
    body = call.body
    doc = await call.collection().edit_text(
        call.path["id"],
        body["field"],
        index=body["index"],
        delete=body.get("delete", 0),
        insert=body.get("insert", ""),
    )
    return document_to_json(doc)


async def history(call: Call) -> Any:
    return {"history": [history_json(h) for h in await call.collection().history(call.path["id"])]}


async def get_version(call: Call) -> Any:
    return document_to_json(await call.collection().get_version(call.path["id"], call.path["cid"]))


async def query(call: Call) -> Any:
    body = call.body
    where = body.get("where")
    if where is not None:
        where = [
            {**c, "value": from_json(c["value"], f"where[{i}].value")} if "value" in c else c
            for i, c in enumerate(where)
        ]
    coll = await call.existing_collection()
    docs = await coll.query(
        where,
        sort=body.get("sort"),
        limit=body.get("limit", _LIMIT["default"]),
        offset=body.get("offset", 0),
    )
    return documents_json(docs, await coll.count(where))


async def openapi(call: Call) -> Any:
    from loomdb.api.openapi import openapi_document  # it reads this module's table

    return openapi_document()


# --- the table ---------------------------------------------------------------------

_COLL = f"{PREFIX}/collections/{{collection}}"
_DOC = f"{_COLL}/docs/{{id}}"
_MISSING = (404,)
_REFUSED = (404, 422)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET", f"{PREFIX}/node", get_node, "This node: ids, space, version, counts", response="Node"
    ),
    Endpoint(
        "GET", f"{PREFIX}/collections", list_collections, "List collections", response="Collections"
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/collections",
        create_collection,
        "Create a collection (idempotent; with a schema, sets it)",
        status=201,
        body=NEW_COLLECTION,
        response="Collection",
        errors=(422,),
    ),
    Endpoint(
        "GET", _COLL, get_collection, "Read a collection", response="Collection", errors=_MISSING
    ),
    Endpoint(
        "PUT",
        f"{_COLL}/schema",
        set_schema,
        "Set or remove a collection's schema",
        body=SET_SCHEMA,
        response="Collection",
        errors=_REFUSED,
    ),
    Endpoint("GET", f"{_COLL}/indexes", list_indexes, "List indexed fields", response="Indexes"),
    Endpoint(
        "POST",
        f"{_COLL}/indexes",
        create_index,
        "Index a field",
        status=201,
        body=NEW_INDEX,
        response="Indexes",
        errors=(422,),
    ),
    Endpoint(
        "GET",
        f"{_COLL}/docs",
        list_documents,
        "List documents (count: all in the collection)",
        query=_PAGE,
        response="Documents",
        errors=_REFUSED,
    ),
    Endpoint(
        "POST",
        f"{_COLL}/docs",
        create_document,
        "Create a document",
        status=201,
        body=NEW_DOCUMENT,
        response="Document",
        errors=(409, 422),
    ),
    Endpoint(
        "POST",
        f"{_COLL}/docs:batch",
        create_documents,
        f"Create up to {MAX_BATCH} documents in one write: all of them, or none",
        status=201,
        body=NEW_DOCUMENTS,
        response="CreatedDocuments",
        errors=(409, 422),
    ),
    Endpoint("GET", _DOC, get_document, "Read a document", response="Document", errors=_MISSING),
    Endpoint(
        "PATCH",
        _DOC,
        update_document,
        "Update fields (merge into maps) and remove fields",
        body=PATCH,
        response="Document",
        errors=(404, 409, 422),
    ),
    Endpoint("DELETE", _DOC, delete_document, "Delete a document", status=204, errors=_MISSING),
    Endpoint(
        "POST",
        f"{_DOC}/increment",
        increment,
        "Add to a counter field (concurrent adds sum)",
        body=INCREMENT,
        response="Document",
        errors=_REFUSED,
    ),
    Endpoint(
        "POST",
        f"{_DOC}/text",
        edit_text,
        "Edit a text field (concurrent edits interleave)",
        body=TEXT_EDIT,
        response="Document",
        errors=_REFUSED,
    ),
    Endpoint(
        "GET",
        f"{_DOC}/history",
        history,
        "A document's entries, parents first",
        response="History",
        errors=_MISSING,
    ),
    Endpoint(
        "GET",
        f"{_DOC}/versions/{{cid}}",
        get_version,
        "A document as of one of its entries",
        response="Document",
        errors=_REFUSED,
    ),
    Endpoint(
        "POST",
        f"{_COLL}/query",
        query,
        "Query (count: all matches, before limit and offset)",
        body=QUERY,
        response="Documents",
        errors=_REFUSED,
    ),
    Endpoint("GET", "/openapi.json", openapi, "This document (OpenAPI 3.1)", response="OpenAPI"),
)
