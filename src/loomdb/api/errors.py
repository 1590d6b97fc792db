"""Errors at the HTTP boundary: one table from the LoomError tree to statuses.

Every error response, whatever raised it, has one shape::

    {"error": {"code": "<stable code>", "message": "<for people>"}}

(plus ``index`` when one item of a batch is refused: its position).

``code`` is :attr:`LoomError.code` for errors of the library, or one of the
``request.*`` / ``route.*`` / ``internal`` codes below for errors of the
request itself. No body ever holds a traceback.

Statuses (first match in :data:`STATUS_BY_ERROR` wins):

* 400: the API could not read the request (not JSON, wrong JSON types, unknown
  query parameter) — ``request.*``;
* 422: the request was read but the database refused its content: a bad name or
  value (``validation``), a schema violation or a bad schema (``document.schema``),
  a query it cannot run (``document.query``);
* 401 ``auth.*``: no valid token (sync with a managed space, the token route);
* 403 ``trust.*`` (not a member, revoked, no role) and ``key.missing`` ("no key":
  the document's entries are held but this node was not granted their key);
* 404 ``document.not_found`` / ``route.not_found``, 405 ``route.method``,
  409 ``document.conflict``, 413 ``request.too_large`` (the body) and
  ``entry.too_large`` (the entry the body's values would make), 415 ``request.media_type``
  (a sync frame sent without its content type);
* 500 for every other LoomError (its code and message, which are written for
  people) and ``internal`` for anything else (logged here, never sent).
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from loomdb.errors import (
    AuthError,
    ConflictError,
    EntryTooLargeError,
    LoomError,
    MissingKeyError,
    NotFoundError,
    QueryError,
    SchemaError,
    TrustError,
    ValidationError,
)

log = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type[LoomError], int]] = [  # first match wins
    (AuthError, 401),
    (TrustError, 403),
    (MissingKeyError, 403),  # "no key": the entries are held, this node may not read them
    (NotFoundError, 404),
    (ConflictError, 409),
    (ValidationError, 422),
    (EntryTooLargeError, 413),  # the request's values make an entry over the limit
    (SchemaError, 422),
    (QueryError, 422),
    (LoomError, 500),
]

# Codes of errors about the request itself (not raised by the library).
MALFORMED_JSON = "request.json"
INVALID_REQUEST = "request.invalid"
TOO_LARGE = "request.too_large"
UNSUPPORTED_MEDIA_TYPE = "request.media_type"
ROUTE_NOT_FOUND = "route.not_found"
METHOD_NOT_ALLOWED = "route.method"
INTERNAL = "internal"


class RequestError(Exception):
    """The API cannot read a request: raised by the HTTP layer, never by the library."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def status_of(error: LoomError) -> int:
    return next(status for cls, status in STATUS_BY_ERROR if isinstance(error, cls))


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    index: int | None = None,
) -> JSONResponse:
    error: dict[str, object] = {"code": code, "message": message}
    if index is not None:  # a batch: which item was refused
        error["index"] = index
    return JSONResponse({"error": error}, status_code=status, headers=headers)


async def on_loom_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoomError)
    status = status_of(exc)
    if status >= 500:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, exc.code, exc.message)
    return error_response(status, exc.code, exc.message, index=exc.index)


async def on_request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return error_response(exc.status, exc.code, exc.message)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (route without that method)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        code, message = ROUTE_NOT_FOUND, f"no route {request.url.path}"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        code = METHOD_NOT_ALLOWED
        message = f"{request.method} is not allowed on {request.url.path} (allowed: {allowed})"
    else:
        code = INVALID_REQUEST if exc.status_code < 500 else INTERNAL
        message = exc.detail or HTTPStatus(exc.status_code).phrase
    return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}))


async def on_client_disconnect(request: Request, exc: Exception) -> Response:
    """The client went away while its body was being read (Starlette's
    ``ClientDisconnect``, raised while the body is read): nothing failed here, so one
    line, no traceback. The answer goes nowhere."""
    log.info(
        "%s %s: the client went away before its body was read", request.method, request.url.path
    )
    return error_response(400, INVALID_REQUEST, "the request's body did not arrive")


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: the client learns only that it happened. Starlette re-raises it after
    this response, so the server logs the traceback."""
    log.error("%s %s crashed: %r", request.method, request.url.path, exc)
    return error_response(500, INTERNAL, "internal error (see the node's log)")


EXCEPTION_HANDLERS = {
    LoomError: on_loom_error,
    RequestError: on_request_error,
    HTTPException: on_http_exception,
    ClientDisconnect: on_client_disconnect,
    Exception: on_unexpected,
}
