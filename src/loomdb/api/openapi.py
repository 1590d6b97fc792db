"""The OpenAPI 3.1 document, built from the route table so it cannot drift."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from http import HTTPStatus
from typing import Any

from loomdb.api.auth import CHALLENGE_PATH, TOKEN_PATH
from loomdb.api.p2p import P2P_ENDPOINTS, P2PEndpoint
from loomdb.api.routes import ENDPOINTS, LOOMDB_VERSION, Endpoint
from loomdb.api.sync_run import BODY_SCHEMA as SYNC_RUN_BODY
from loomdb.api.sync_run import PATH as SYNC_RUN_PATH
from loomdb.api.trust import TRUST_ENDPOINTS, TrustEndpoint
from loomdb.api.validation import MAX_BODY_BYTES
from loomdb.transports.endpoint import SYNC_MEDIA_TYPE, SYNC_PATH

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
    "CreatedDocuments": _record(
        ids={**_array(_STRING), "description": "ids[i]: the id of documents[i]"},
        count=_INT,
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
    "Error": _record(
        error={
            "type": "object",
            "properties": {
                "code": _STRING,
                "message": _STRING,
                "index": {**_INT, "description": "a batch: the position of the refused item"},
            },
            "required": ["code", "message"],
        }
    ),
    "OpenAPI": {"type": "object"},
}


def _response(status: int, schema: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": HTTPStatus(status).phrase}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


def operation(endpoint: Endpoint | TrustEndpoint | P2PEndpoint) -> dict[str, Any]:
    query: Mapping[str, Any] = getattr(endpoint, "query", {})
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": _STRING}
        for name in _PATH_PARAM.findall(endpoint.path)
    ]
    params += [
        {"name": name, "in": "query", "required": False, "schema": dict(schema)}
        for name, schema in query.items()
    ]
    response = getattr(endpoint, "response", None)
    schema = _ref(response) if response else None
    responses = {str(endpoint.status): _response(endpoint.status, schema)}
    statuses = set(getattr(endpoint, "errors", ())) | {401, 500}
    if endpoint.body is not None or query:
        statuses.add(400)
    if endpoint.body is not None:
        statuses |= {413, 415}
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
            "required": bool(endpoint.body.get("required")),
            "content": {"application/json": {"schema": endpoint.body}},
        }
    return op


def _other_operations() -> dict[str, dict[str, dict[str, Any]]]:
    """Routes outside the two tables: sync, its runner, and sign-in."""
    error = _ref("Error")
    sync_frames = {"content": {SYNC_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}
    return {
        SYNC_PATH: {
            "post": {
                "operationId": "sync",
                "summary": (
                    "One sync frame in, its reply out (docs/sync.md). The same frames go over "
                    "a WebSocket at this path (binary messages; token also as ?access_token=)"
                ),
                "security": [{}, {"syncToken": []}],
                "requestBody": {"required": True, **sync_frames},
                "responses": {
                    "200": {"description": "the reply frame", **sync_frames},
                    **{str(s): _response(s, error) for s in (401, 413, 415, 500)},
                },
            }
        },
        SYNC_RUN_PATH: {
            "post": {
                "operationId": "sync_run",
                "summary": "Sync this node with another; progress as NDJSON events",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": SYNC_RUN_BODY}},
                },
                "responses": {
                    "200": {
                        "description": "progress, then done or error events, one per line",
                        "content": {"application/x-ndjson": {"schema": {"type": "object"}}},
                    },
                    **{str(s): _response(s, error) for s in (400, 401, 413, 415, 422, 500)},
                },
            }
        },
        CHALLENGE_PATH: {
            "post": {
                "operationId": "auth_challenge",
                "summary": "A challenge to sign with a user's key (docs/auth.md)",
                "security": [],
                "responses": {
                    "200": _response(200, {"type": "object"}),
                    "500": _response(500, error),
                },
            }
        },
        TOKEN_PATH: {
            "post": {
                "operationId": "auth_token",
                "summary": "A sync token for a signed answer to a challenge",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": _response(200, {"type": "object"}),
                    **{str(s): _response(s, error) for s in (400, 401, 403, 415, 422, 500)},
                },
            }
        },
    }


@cache
def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    tables: tuple[Endpoint | TrustEndpoint | P2PEndpoint, ...] = (
        *ENDPOINTS,
        *TRUST_ENDPOINTS,
        *P2P_ENDPOINTS,
    )
    for endpoint in tables:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation(endpoint)
    paths["/openapi.json"]["get"]["security"] = []
    paths.update(_other_operations())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "loomdb",
            "version": LOOMDB_VERSION,
            "description": (
                "A loomdb node's HTTP API. Errors: {'error': {'code', 'message'}}. "
                f"Request bodies are JSON (Content-Type: application/json), at most "
                f"{MAX_BODY_BYTES} bytes. Every request's Host must be the node's own "
                "address, and a request with an Origin must come from the node's own origin."
            ),
        },
        "paths": paths,
        "security": [{"adminToken": []}],
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the node's admin token, in <home>/api.token",
                },
                "syncToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "from /api/v0/auth/token; none: anonymous (open spaces)",
                },
            },
        },
    }
