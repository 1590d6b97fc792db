"""The HTTP API as a Starlette application: :func:`create_app` over one database.

Routes come from the one table in :mod:`loomdb.api.routes`; errors become JSON
through the one table in :mod:`loomdb.api.errors`. The app does no I/O of its
own beyond the database it is given, so tests drive it in-process
(``httpx.ASGITransport``) and the daemon serves it with Hypercorn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from loomdb.api.errors import EXCEPTION_HANDLERS
from loomdb.api.routes import ENDPOINTS, Call, Endpoint
from loomdb.api.validation import MAX_BODY_BYTES, check, parse_query, read_json

if TYPE_CHECKING:
    from loomdb.documents import Database


def create_app(db: Database, *, max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    """The API app serving ``db``. The caller opens and closes the database."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for endpoint in ENDPOINTS:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint
    # One route per path, so a wrong method gets a 405 naming every allowed one.
    routes: list[BaseRoute] = [
        Route(path, _serve(db, methods, max_body_bytes), methods=list(methods), name=path)
        for path, methods in by_path.items()
    ]
    app = Starlette(routes=routes, exception_handlers=dict(EXCEPTION_HANDLERS))
    app.state.db = db
    return app


def _serve(
    db: Database, methods: Mapping[str, Endpoint], max_body_bytes: int
) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        endpoint = methods["GET" if request.method == "HEAD" else request.method]
        query = parse_query(request.query_params.multi_items(), endpoint.query)
        body = None
        if endpoint.body is not None:
            body = await read_json(request, max_body_bytes)
            check(endpoint.body, body)
        result = await endpoint.handler(Call(db, request.path_params, query, body))
        if endpoint.status == 204:
            return Response(status_code=204)
        return JSONResponse(result, status_code=endpoint.status)

    return serve
