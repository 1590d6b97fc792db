"""The API's Starlette app, with the route table's routes served directly.

Starlette sends every request through two middlewares (server errors, then
exceptions), a router that tries each route in turn (each try builds a child
scope) and a per-route exception wrapper, and wraps ``send`` twice on the way.
For the routes of :data:`loomdb.api.routes.ENDPOINTS` — which come first in
the app's route list — :class:`API` does what that stack would do, in one
frame: match the path (the same compiled pattern, the same convertors), call
the endpoint, send its response, and on an exception answer with the same
handler Starlette would pick (:data:`loomdb.api.errors.EXCEPTION_HANDLERS`).

Anything else — another route, a path that matches a table route but not
its method (405 could come from a later route), a WebSocket, lifespan, a
``root_path`` — goes through Starlette unchanged. So clients see the same
statuses, headers and bodies either way; tests drive both through
``create_app``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from re import Pattern
from typing import Any, cast

from starlette.applications import Starlette
from starlette.convertors import Convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ExceptionHandler, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
_Direct = tuple[Pattern[str], Mapping[str, Convertor[Any]], frozenset[str], Endpoint]


class API(Starlette):
    """A Starlette app whose first ``direct`` routes skip its middleware stack."""

    def __init__(
        self,
        *,
        direct: Sequence[Route],
        routes: Sequence[BaseRoute],
        exception_handlers: Mapping[Any, ExceptionHandler],
    ) -> None:
        super().__init__(routes=list(routes), exception_handlers=dict(exception_handlers))
        if list(routes[: len(direct)]) != list(direct):
            raise ValueError("the direct routes must come first, in order")
        self._direct: tuple[_Direct, ...] = tuple(
            (
                route.path_regex,
                route.param_convertors,
                frozenset(route.methods or ()),
                route.endpoint,
            )
            for route in direct
        )
        # As Starlette's build_middleware_stack splits them: Exception (and 500)
        # go to the server-error middleware, the rest to the exception middleware,
        # which starts with its own HTTPException handler.
        self._on_error: ExceptionHandler | None = None
        self._handlers: dict[Any, ExceptionHandler] = {HTTPException: _plain_http_exception}
        self._status_handlers: dict[int, ExceptionHandler] = {}
        for key, handler in exception_handlers.items():
            if key in (500, Exception):
                self._on_error = handler
            elif isinstance(key, int):
                self._status_handlers[key] = handler
            else:
                self._handlers[key] = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not scope.get("root_path")
            and not self.user_middleware
            and self.max_body_size is None
        ):
            path: str = scope["path"]
            for regex, convertors, methods, endpoint in self._direct:
                match = regex.match(path)
                if match is None:
                    continue
                if scope["method"] not in methods:
                    break  # Starlette looks further for a full match, then answers 405
                params = {key: convertors[key].convert(v) for key, v in match.groupdict().items()}
                scope["app"] = self
                scope["path_params"] = {**scope.get("path_params", {}), **params}
                await self._serve(endpoint, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._lookup(exc)
            if handler is None:  # the server-error layer answers, then re-raises
                await self._report(request, exc, send)
                raise
            answer = await _call(handler, request, exc)
            if answer is not None:
                await answer(scope, receive, send)
            exc.__traceback__ = None  # as Starlette: a reused instance keeps no tracebacks
            return
        try:
            await response(scope, receive, send)
        except Exception as exc:
            # The response had started: Starlette's layers can only report the
            # error (a handled one as a RuntimeError) and re-raise it.
            if self._lookup(exc) is not None:
                error = RuntimeError("Caught handled exception, but response already started.")
                await self._report(request, error)
                raise error from exc
            await self._report(request, exc)
            raise

    def _lookup(self, exc: Exception) -> ExceptionHandler | None:
        if isinstance(exc, HTTPException) and exc.status_code in self._status_handlers:
            return self._status_handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in self._handlers:
                return self._handlers[cls]
        return None

    async def _report(self, request: Request, exc: Exception, send: Send | None = None) -> None:
        """What Starlette's server-error layer does before it re-raises: its handler
        runs, and with ``send`` (nothing was sent yet) its response is sent."""
        if self._on_error is None:
            response: Response | None = PlainTextResponse("Internal Server Error", status_code=500)
        else:
            response = await _call(self._on_error, Request(request.scope), exc)
        if send is not None and response is not None:
            await response(request.scope, request.receive, send)


async def _call(handler: ExceptionHandler, request: Request, exc: Exception) -> Response | None:
    result: Any = cast(Callable[[Request, Exception], Any], handler)(request, exc)
    if inspect.isawaitable(result):
        result = await result
    return cast("Response | None", result)


async def _plain_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTPException handler (for an app without ours)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in {204, 304}:
        return Response(status_code=exc.status_code, headers=exc.headers)
    return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
