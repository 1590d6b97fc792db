"""The HTTP API of trust: this node's identity, its managed spaces, their users,
roles and keys.

Thin routes over the node's :class:`~loomdb.trust.admin.NodeTrust`, which the
daemon puts on ``app.state.trust``; a node without one (a relay) answers 404
``route.not_found`` on every route here. :data:`TRUST_ENDPOINTS` is the one
table of these routes, in the style of :mod:`loomdb.api.routes`: each body is
checked against its schema (:func:`~loomdb.api.validation.check`, 400) before
the handler runs, and the library's errors become statuses through the API's
one table (:mod:`loomdb.api.errors`): a bad name, card or invitation is 422
``validation``, an unknown space or user 404 ``document.not_found``, a node
whose user is not an admin 403 ``trust.*``.

A ``POST`` whose fields are all optional (revoke, rotate) may come without a
body; one with required fields needs JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from loomdb.api.errors import ROUTE_NOT_FOUND, RequestError
from loomdb.api.routes import PREFIX
from loomdb.api.validation import (
    MAX_BODY_BYTES,
    Schema,
    check,
    parse_query,
    read_json,
    require_json,
)
from loomdb.trust.directory import ROLES
from loomdb.trust.spaces import ALL

if TYPE_CHECKING:
    from loomdb.trust.admin import NodeTrust

MAX_TRUST_BODY_BYTES: Final = MAX_BODY_BYTES  # an invitation carries a whole directory


@dataclass(frozen=True, slots=True)
class TrustCall:
    """What a handler gets: the node's trust facade, path parameters, the checked body."""

    trust: NodeTrust
    path: Mapping[str, str]
    body: Any

    @property
    def space(self) -> str:
        return self.path["space"]


TrustHandler = Callable[[TrustCall], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class TrustEndpoint:
    method: str
    path: str
    handler: TrustHandler
    summary: str
    status: int = 200
    body: Schema | None = None


# --- request schemas ------------------------------------------------------------------

_TEXT: Schema = {"type": "string", "minLength": 1}
_ROLE: Schema = {"type": "string", "enum": list(ROLES)}
_COLLECTION: Schema = {**_TEXT, "default": ALL, "description": "'*' (default): every collection"}


def _object(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


NEW_SPACE = _object(("name",), name=_TEXT)
JOIN = _object(("invitation",), invitation={**_TEXT, "description": "loomdb-invite1:…"})
NEW_USER = _object(
    ("card", "roles"),
    card={**_TEXT, "description": "the user's card (loomdb-user1:…, `client identity`)"},
    roles={"type": "array", "items": _ROLE},
    collection=_COLLECTION,
    label={"type": "string"},
)
REVOKE_USER = _object(
    (),
    effective_at={
        "type": "integer",
        "minimum": 0,
        "description": "HLC time from which the user's entries are refused (default: now)",
    },
)
CHANGE_ROLE = _object(
    ("user", "role", "action"),
    user=_TEXT,
    role=_ROLE,
    collection=_COLLECTION,
    action={"type": "string", "enum": ["grant", "revoke"]},
)
ROTATE = _object((), collection=_COLLECTION)


# --- handlers -----------------------------------------------------------------------------


async def get_identity(call: TrustCall) -> Any:
    return call.trust.identity()


async def list_spaces(call: TrustCall) -> Any:
    return {"spaces": call.trust.spaces()}


async def create_space(call: TrustCall) -> Any:
    return await call.trust.create_space(call.body["name"])


async def join_space(call: TrustCall) -> Any:
    return await call.trust.join(call.body["invitation"].strip())


async def list_users(call: TrustCall) -> Any:
    return {"users": call.trust.users(call.space)}


async def add_user(call: TrustCall) -> Any:
    body = call.body
    return await call.trust.add_user(
        call.space,
        body["card"].strip(),
        list(body["roles"]),
        collection=body.get("collection", ALL),
        label=body.get("label"),
    )


async def revoke_user(call: TrustCall) -> Any:
    return await call.trust.revoke_user(
        call.space, call.path["user"], effective_at=call.body.get("effective_at")
    )


async def change_role(call: TrustCall) -> Any:
    body = call.body
    change = call.trust.grant_role if body["action"] == "grant" else call.trust.revoke_role
    return await change(call.space, body["user"], body["role"], body.get("collection", ALL))


async def rotate_key(call: TrustCall) -> Any:
    return await call.trust.rotate_key(call.space, call.body.get("collection", ALL))


async def get_invitation(call: TrustCall) -> Any:
    return {"invitation": call.trust.invitation(call.space)}


# --- the table --------------------------------------------------------------------------------

_SPACES = f"{PREFIX}/spaces"
_SPACE = f"{_SPACES}/{{space}}"

TRUST_ENDPOINTS: tuple[TrustEndpoint, ...] = (
    TrustEndpoint(
        "GET", f"{PREFIX}/identity", get_identity, "This node's user: id, card, Peer ID, X25519"
    ),
    TrustEndpoint("GET", _SPACES, list_spaces, "Managed spaces this node holds"),
    TrustEndpoint(
        "POST",
        _SPACES,
        create_space,
        "Create a managed space, this node's user its root",
        status=201,
        body=NEW_SPACE,
    ),
    TrustEndpoint(
        "POST", f"{_SPACES}/join", join_space, "Join a space with an invitation", body=JOIN
    ),
    TrustEndpoint("GET", f"{_SPACE}/users", list_users, "The space's users and their roles"),
    TrustEndpoint(
        "POST",
        f"{_SPACE}/users",
        add_user,
        "Add a user by its card; an invitation for it",
        status=201,
        body=NEW_USER,
    ),
    TrustEndpoint(
        "POST",
        f"{_SPACE}/users/{{user}}/revoke",
        revoke_user,
        "Revoke a user (from a time on) and rotate the keys it held",
        body=REVOKE_USER,
    ),
    TrustEndpoint(
        "POST",
        f"{_SPACE}/roles",
        change_role,
        "Grant or revoke a role on a collection",
        body=CHANGE_ROLE,
    ),
    TrustEndpoint(
        "POST",
        f"{_SPACE}/keys/rotate",
        rotate_key,
        "A new version of a key, granted to readers",
        body=ROTATE,
    ),
    TrustEndpoint(
        "GET", f"{_SPACE}/invitation", get_invitation, "A fresh invitation carrying the directory"
    ),
)


def trust_routes(max_body_bytes: int = MAX_TRUST_BODY_BYTES) -> list[BaseRoute]:
    """Starlette routes for :data:`TRUST_ENDPOINTS`, serving ``request.app.state.trust``."""
    by_path: dict[str, dict[str, TrustEndpoint]] = {}
    for endpoint in TRUST_ENDPOINTS:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint
    # One route per path, so a wrong method gets a 405 naming every allowed one.
    return [
        Route(path, _serve(methods, max_body_bytes), methods=list(methods), name=f"trust:{path}")
        for path, methods in by_path.items()
    ]


def _serve(
    methods: Mapping[str, TrustEndpoint], max_body_bytes: int
) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        endpoint = methods["GET" if request.method == "HEAD" else request.method]
        trust = getattr(request.app.state, "trust", None)
        if trust is None:
            raise RequestError(
                404,
                ROUTE_NOT_FOUND,
                f"{request.url.path}: this node manages no spaces (a relay has no trust API)",
            )
        parse_query(request.query_params.multi_items(), {})  # none taken: unknown ones are 400
        body = None
        if endpoint.body is not None:
            body = await _read_body(request, endpoint.body, max_body_bytes)
            check(endpoint.body, body)
        result = await endpoint.handler(TrustCall(trust, request.path_params, body))
        return JSONResponse(result, status_code=endpoint.status)

    return serve


async def _read_body(request: Request, schema: Schema, limit: int) -> Any:
    """The JSON body; an absent body reads as ``{}`` when no field is required."""
    declared = request.headers.get("content-length")
    absent = declared == "0" or (declared is None and "transfer-encoding" not in request.headers)
    if absent and not schema.get("required"):
        await require_json(request, limit)  # even empty: a page's bodiless POST is "simple"
        return {}
    return await read_json(request, limit)
