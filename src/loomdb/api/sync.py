"""The server side of the HTTP and WebSocket transports: ``/api/v0/sync``.

Both routes hand each request frame to one
:data:`~loomdb.transports.base.FrameHandler` and send back its reply; they
never look inside a frame. A frame over ``max_frame`` is refused unread: HTTP
413 (the API's usual JSON error; see :func:`loomdb.api.validation.read_body`),
WebSocket close 1009.

``POST`` needs the sync content type: a browser cannot send that to another
origin without asking first (CORS preflight), so a web page cannot push frames
into a node on the visitor's machine.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from loomdb.api.errors import UNSUPPORTED_MEDIA_TYPE, RequestError
from loomdb.api.validation import read_body
from loomdb.transports.base import FrameHandler
from loomdb.transports.endpoint import SYNC_MEDIA_TYPE, SYNC_PATH

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TOO_BIG = 1009

log = logging.getLogger(__name__)


def sync_routes(handler: FrameHandler, max_frame: int) -> list[BaseRoute]:
    """``POST`` and WebSocket routes at :data:`SYNC_PATH`, both over ``handler``."""

    async def post(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").partition(";")[0].strip()
        if media_type.lower() != SYNC_MEDIA_TYPE:
            raise RequestError(
                415, UNSUPPORTED_MEDIA_TYPE, f"send sync frames as {SYNC_MEDIA_TYPE}"
            )
        frame = await read_body(request, max_frame)
        return Response(await handler(frame), media_type=SYNC_MEDIA_TYPE)

    async def websocket(ws: WebSocket) -> None:
        await ws.accept()
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
