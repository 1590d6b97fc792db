"""The HTTP API as a Starlette application: :func:`create_app` over one database.

Routes come from the one table in :mod:`loomdb.api.routes`; errors become JSON
through the one table in :mod:`loomdb.api.errors`. The app does no I/O of its
own beyond the database it is given, so tests drive it in-process
(``httpx.ASGITransport``) and the daemon serves it with Hypercorn.

With a ``sync_handler`` the app also serves sync frames at ``/api/v0/sync``
(:mod:`loomdb.api.sync`). Without a database (a relay) it serves only that and
``GET /api/v0/node``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from loomdb.api.dispatch import API
from loomdb.api.errors import EXCEPTION_HANDLERS
from loomdb.api.routes import ENDPOINTS, PREFIX, Call, Endpoint, relay_node_info
from loomdb.api.sync import fixed, sync_routes
from loomdb.api.validation import MAX_BODY_BYTES, check, parse_query, read_json
from loomdb.errors import NotFoundError
from loomdb.transports.base import DEFAULT_MAX_FRAME, FrameHandler
from loomdb.trust.principal import Principal

SPACE_HEADER = "x-loomdb-space"
"""Names the space a document request works on (default: the node's space)."""

if TYPE_CHECKING:
    from loomdb.documents import Database
    from loomdb.node.databases import NodeDatabases
    from loomdb.trust.auth import AuthService


def create_app(
    db: Database | None,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    sync_handler: FrameHandler | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    extra_routes: Sequence[BaseRoute] = (),
    sync_handler_for: Callable[[Principal], FrameHandler] | None = None,
    auth: AuthService | None = None,
    databases: NodeDatabases | None = None,
) -> Starlette:
    """The API app serving ``db`` (the caller opens and closes it) and, with a
    ``sync_handler``, sync frames of at most ``max_frame`` bytes.

    Without ``db`` (a relay), only ``GET /api/v0/node`` and the sync routes."""
    routes: list[BaseRoute]
    direct: list[Route] = []  # the table's routes, served without Starlette's stack
    if db is None:
        routes = [Route(f"{PREFIX}/node", _relay_node, methods=["GET"], name="node")]
    else:
        by_path: dict[str, dict[str, Endpoint]] = {}
        for endpoint in ENDPOINTS:
            by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint
        # One route per path, so a wrong method gets a 405 naming every allowed one.
        direct = [
            Route(
                path,
                _serve(db, methods, max_body_bytes, databases),
                methods=list(methods),
                name=path,
            )
            for path, methods in by_path.items()
        ]
        routes = list(direct)
    if sync_handler is not None:
        sync_handler_for = fixed(sync_handler)
    if sync_handler_for is not None:
        routes += sync_routes(sync_handler_for, max_frame, auth)
    routes += extra_routes
    app = API(direct=direct, routes=routes, exception_handlers=EXCEPTION_HANDLERS)
    app.state.db = db
    return app


def _serve(
    db: Database,
    methods: Mapping[str, Endpoint],
    max_body_bytes: int,
    databases: NodeDatabases | None,
) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        endpoint = methods["GET" if request.method == "HEAD" else request.method]
        params = request.query_params.multi_items() if request.scope.get("query_string") else ()
        query = parse_query(params, endpoint.query)
        body = None
        if endpoint.body is not None:
            body = await read_json(request, max_body_bytes)
            check(endpoint.body, body)
        space = request.headers.get(SPACE_HEADER)
        if not space or space == db.space:
            result = await endpoint.handler(Call(db, request.path_params, query, body))
        elif databases is None:
            raise NotFoundError(f"this API serves space {db.space!r} only, not {space!r}")
        else:
            async with databases.using(space) as target:
                result = await endpoint.handler(Call(target, request.path_params, query, body))
        if endpoint.status == 204:
            return Response(status_code=204)
        return JSONResponse(result, status_code=endpoint.status)

    return serve


async def _relay_node(request: Request) -> Response:
    return JSONResponse(relay_node_info())
