"""``POST /api/v0/sync/run``: the node syncs its store with another node, and
streams its progress.

Body (JSON)::

    {"remote": "http://host:port",          the other node's base URL (ws, wss, https too)
     "direction": "both" | "pull" | "push",   default "both"
     "space": "main",                       default: the node's space (every space on a relay)
     "collections": ["todos"], "documents": [["todos", "t1"]],
     "transport": "ws" | "http",            default "ws"
     "insecure": false, "cafile": null}     TLS: skip verification / trust this CA file

The reply is ``application/x-ndjson``: one JSON object per line, ``{"event":
"progress", ...}`` at most every :data:`PROGRESS_EVERY` seconds and at each
phase change, then ``{"event": "done", ...}`` or ``{"event": "error", "error":
{code, message}}``. Closing the connection cancels the sync; what was stored
stays (each batch lands whole), so running it again resumes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from loomdb.api.errors import INVALID_REQUEST, RequestError
from loomdb.api.validation import check, read_json
from loomdb.errors import LoomError
from loomdb.stores.remote import RemoteStore
from loomdb.sync.replicate import SyncProgress, SyncScope, pull_changes_from, push_changes_to, sync

PATH: Final = "/api/v0/sync/run"
PROGRESS_EVERY: Final = 0.25

BODY_SCHEMA: Final = {
    "type": "object",
    "additionalProperties": False,
    "required": ["remote"],
    "properties": {
        "remote": {"type": "string", "minLength": 1},
        "direction": {"type": "string", "enum": ["both", "pull", "push"]},
        "space": {"type": "string", "minLength": 1},
        "collections": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "documents": {
            "type": "array",
            "items": {"type": "array", "items": {"type": "string", "minLength": 1}},
        },
        "transport": {"type": "string", "enum": ["ws", "http"]},
        "insecure": {"type": "boolean"},
        "cafile": {"type": "string", "minLength": 1},
    },
}

Connect = Callable[[dict[str, Any]], Awaitable[RemoteStore]]
"""Opens a RemoteStore to the node named in the request body."""

_RUNS = {"both": sync, "pull": pull_changes_from, "push": push_changes_to}


def _line(event: str, **fields: Any) -> bytes:
    return (json.dumps({"event": event, **fields}) + "\n").encode()


def _error(exc: LoomError) -> bytes:
    return _line("error", error={"code": exc.code, "message": exc.message})


def sync_run_route(local: object, default_space: str | None, connect: Connect) -> Route:
    """The route, syncing ``local`` (a store or a database) with the node a request names."""

    async def run(request: Request) -> StreamingResponse:
        body = await read_json(request)
        check(BODY_SCHEMA, body)
        documents = body.get("documents", [])
        if any(len(d) != 2 for d in documents):
            raise RequestError(422, INVALID_REQUEST, "a document is [collection, document]")
        scope = SyncScope(
            body.get("space", default_space),
            tuple(body.get("collections", ())),
            tuple((c, d) for c, d in documents),
        )
        return StreamingResponse(
            _stream(local, scope, body, connect), media_type="application/x-ndjson"
        )

    return Route(PATH, run, methods=["POST"], name=PATH)


async def _stream(
    local: object, scope: SyncScope, body: dict[str, Any], connect: Connect
) -> AsyncIterator[bytes]:
    send, receive = anyio.create_memory_object_stream[bytes](16)
    last: list[Any] = [0.0, ""]  # when, and in which phase, progress was last sent

    def progress(state: SyncProgress) -> None:
        now = time.monotonic()
        if state.phase == last[1] and now - last[0] < PROGRESS_EVERY:
            return
        last[:] = [now, state.phase]
        # The client reads slowly: skip this update, a later one follows.
        with contextlib.suppress(anyio.WouldBlock):
            send.send_nowait(_line("progress", **state.as_dict()))

    async def work() -> None:
        async with send:
            try:
                remote = await connect(body)
                async with remote:
                    report = await _RUNS[body.get("direction", "both")](
                        local, remote, scope, progress=progress
                    )
                await send.send(_line("done", **report.as_dict()))
            except LoomError as exc:
                await send.send(_error(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(work)
        async with receive:
            async for line in receive:
                yield line
