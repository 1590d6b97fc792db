"""The OpenAPI 3.1 document, built from the route table so it cannot drift."""

from __future__ import annotations

import re
from functools import cache
from http import HTTPStatus
from typing import Any

from loomdb.api.routes import ENDPOINTS, LOOMDB_VERSION, Endpoint
from loomdb.api.validation import MAX_BODY_BYTES

_PATH_PARAM = re.compile(r"\{(\w+)\}")
_STRING = {"type": "string"}
_INT = {"type": "integer"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _record(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


COMPONENTS: dict[str, dict[str, Any]] = {
    "Document": _record(
        id=_STRING,
        collection=_STRING,
        value={"type": "object", "description": "JSON value form: bytes are {'$bytes': b64}"},
        heads=_array(_STRING),
        created_at={**_INT, "description": "HLC: ms since epoch << 16 | logical"},
        updated_at=_INT,
        deleted={"type": "boolean"},
    ),
    "Documents": _record(
        documents=_array(_ref("Document")),
        count={**_INT, "description": "all matches, before limit and offset"},
    ),
    "Collection": _record(
        name=_STRING,
        schema={"type": ["object", "null"]},
        documents=_INT,
        indexes=_array(_STRING),
    ),
    "Collections": _record(collections=_array(_ref("Collection"))),
    "Indexes": _record(indexes=_array(_STRING)),
    "HistoryItem": _record(
        cid=_STRING,
        kind=_STRING,
        parents=_array(_STRING),
        height=_INT,
        author={**_STRING, "description": "hex of the author's Ed25519 public key"},
        created_at=_INT,
        state={"type": "string", "enum": ["applied", "pending", "refused"]},
        reason={"type": ["string", "null"]},
        key_id={"type": ["string", "null"], "description": "the key of its payload"},
        waits_for_key={
            "type": ["string", "null"],
            "description": "pending: the key it (or a parent it waits on) needs",
        },
    ),
    "History": _record(history=_array(_ref("HistoryItem"))),
    "Node": _record(
        relay={"type": "boolean", "description": "false: a relay serves only sync"},
        peer_id=_STRING,
        user_id=_STRING,
        space=_STRING,
        multiaddr=_STRING,
        version=_STRING,
        stats={"type": "object", "description": "counts from the database (entries, …)"},
    ),
    "Error": _record(error=_record(code=_STRING, message=_STRING)),
    "OpenAPI": {"type": "object"},
}


def _response(status: int, schema: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": HTTPStatus(status).phrase}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


def operation(endpoint: Endpoint) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": _STRING}
        for name in _PATH_PARAM.findall(endpoint.path)
    ]
    params += [
        {"name": name, "in": "query", "required": False, "schema": dict(schema)}
        for name, schema in endpoint.query.items()
    ]
    schema = _ref(endpoint.response) if endpoint.response else None
    responses = {str(endpoint.status): _response(endpoint.status, schema)}
    statuses = set(endpoint.errors) | {500}
    if endpoint.body is not None or endpoint.query:
        statuses.add(400)
    if endpoint.body is not None:
        statuses.add(413)
    for status in sorted(statuses):
        responses[str(status)] = _response(status, _ref("Error"))
    op: dict[str, Any] = {
        "operationId": endpoint.handler.__name__,
        "summary": endpoint.summary,
        "responses": responses,
    }
    if params:
        op["parameters"] = params
    if endpoint.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": endpoint.body}},
        }
    return op


@cache
def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "loomdb",
            "version": LOOMDB_VERSION,
            "description": (
                "A loomdb node's HTTP API. Errors: {'error': {'code', 'message'}}. "
                f"Request bodies are JSON, at most {MAX_BODY_BYTES} bytes."
            ),
        },
        "paths": paths,
        "components": {"schemas": COMPONENTS},
    }
