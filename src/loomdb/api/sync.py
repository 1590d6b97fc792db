"""The server side of the HTTP and WebSocket transports: ``/api/v0/sync``.

Both routes hand each request frame to the
:data:`~loomdb.transports.base.FrameHandler` of the request's
:class:`~loomdb.trust.principal.Principal` and send back its reply; they never
look inside a frame. A frame over ``max_frame`` is refused unread: HTTP 413
(the API's usual JSON error; see :func:`loomdb.api.validation.read_body`),
WebSocket close 1009.

``POST`` needs the sync content type: a browser cannot send that to another
origin without asking first (CORS preflight), so a web page cannot push frames
into a node on the visitor's machine.

Who is asking (with an :class:`~loomdb.trust.auth.AuthService`): the token in
``Authorization: Bearer <jwt>`` or, on a WebSocket only, the ``access_token``
query parameter (browsers cannot set headers on a WebSocket). No token is
:data:`~loomdb.trust.principal.ANONYMOUS`; the handler behind decides what an
anonymous request may reach. A token that does not verify is refused: HTTP 401
with the error's code, or WebSocket close 4401 with ``code: message`` as the
reason. An open WebSocket re-verifies its token before every frame, so an
expired token or a revoked user is cut off at the next frame; the frame is not
handled, and a client may reconnect with a new token and send it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Final

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from loomdb.api.errors import UNSUPPORTED_MEDIA_TYPE, RequestError, error_response
from loomdb.api.validation import read_body
from loomdb.errors import AuthError, AuthRequiredError, LoomError, TrustError
from loomdb.transports.base import FrameHandler
from loomdb.transports.endpoint import SYNC_MEDIA_TYPE, SYNC_PATH
from loomdb.trust.auth import AuthService
from loomdb.trust.principal import ANONYMOUS, Principal

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TOO_BIG = 1009
CLOSE_UNAUTHORIZED: Final = 4401
"""A WebSocket close for a token that does not (or no longer) verify; like HTTP 401."""
MAX_CLOSE_REASON: Final = 123  # bytes: a close frame's payload is at most 125
ACCESS_TOKEN_PARAM: Final = "access_token"

log = logging.getLogger(__name__)


def fixed(handler: FrameHandler) -> Callable[[Principal], FrameHandler]:
    """The same ``handler`` whoever asks (a node without access control, tests)."""

    def handler_for(principal: Principal) -> FrameHandler:
        return handler

    return handler_for


def sync_routes(
    handler_for: Callable[[Principal], FrameHandler],
    max_frame: int,
    auth: AuthService | None = None,
) -> list[BaseRoute]:
    """``POST`` and WebSocket routes at :data:`SYNC_PATH`; each request is handled by
    ``handler_for(principal)``. Without ``auth`` every request is anonymous."""

    async def post(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").partition(";")[0].strip()
        if media_type.lower() != SYNC_MEDIA_TYPE:
            raise RequestError(
                415, UNSUPPORTED_MEDIA_TYPE, f"send sync frames as {SYNC_MEDIA_TYPE}"
            )
        # The body is read before the token is judged: a 401 sent while the body
        # is still coming would reach the client as a reset connection.
        frame = await read_body(request, max_frame)
        try:
            principal = _principal(auth, _bearer(request.headers, auth))
        except (AuthError, TrustError) as exc:
            return _unauthorized(exc)
        handler = handler_for(principal)
        return Response(await handler(frame), media_type=SYNC_MEDIA_TYPE)

    async def websocket(ws: WebSocket) -> None:
        # Accepted first whatever the token: a refusal before accepting is an HTTP
        # 403 that browsers do not show, while a close carries its code and reason.
        await ws.accept()
        try:
            token = _websocket_token(ws, auth)
            principal = _principal(auth, token)
        except (AuthError, TrustError) as exc:
            await ws.close(CLOSE_UNAUTHORIZED, _reason(exc))
            return
        handler = handler_for(principal)
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                frame = message.get("bytes")
                if frame is None:
                    await ws.close(CLOSE_UNSUPPORTED_DATA, "send frames as binary messages")
                    return
                if len(frame) > max_frame:
                    await ws.close(CLOSE_TOO_BIG, f"a frame is at most {max_frame} bytes")
                    return
                if token is not None:
                    try:
                        _principal(auth, token)  # expired, or the user revoked, since?
                    except (AuthError, TrustError) as exc:
                        await ws.close(CLOSE_UNAUTHORIZED, _reason(exc))
                        return
                try:
                    reply = await handler(frame)
                except Exception:
                    log.exception("the sync handler failed on a WebSocket frame")
                    await ws.close(CLOSE_INTERNAL_ERROR, "internal error (see the node's log)")
                    return
                await ws.send_bytes(reply)
        except WebSocketDisconnect:
            return  # the client went away while we answered

    return [
        Route(SYNC_PATH, post, methods=["POST"], name="sync"),
        WebSocketRoute(SYNC_PATH, websocket, name="sync-websocket"),
    ]


def _principal(auth: AuthService | None, token: str | None) -> Principal:
    if auth is None or token is None:
        return ANONYMOUS
    return auth.verify(token)


def _bearer(headers: Mapping[str, str], auth: AuthService | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None without the header."""
    if auth is None:
        return None
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthRequiredError("the Authorization header must be 'Bearer <token>'")
    return token


def _websocket_token(ws: HTTPConnection, auth: AuthService | None) -> str | None:
    token = _bearer(ws.headers, auth)
    if token is None and auth is not None:
        values = ws.query_params.getlist(ACCESS_TOKEN_PARAM)
        if len(values) > 1:
            raise AuthRequiredError(f"{ACCESS_TOKEN_PARAM} is given more than once")
        if values:
            if not values[0]:
                raise AuthRequiredError(f"{ACCESS_TOKEN_PARAM} is empty")
            token = values[0]
    return token


def _unauthorized(exc: LoomError) -> Response:
    return error_response(
        401, exc.code, exc.message, headers={"www-authenticate": 'Bearer error="invalid_token"'}
    )


def _reason(exc: LoomError) -> str:
    """``code: message`` cut to what a close frame carries (whole UTF-8 characters)."""
    reason = f"{exc.code}: {exc.message}".encode()
    return reason[:MAX_CLOSE_REASON].decode("utf-8", "ignore")
