"""``POST /api/v0/sync/run``: the node syncs its store with another node, and
streams its progress.

Body (JSON)::

    {"remote": "http://host:port",          the other node's base URL (ws, wss, https too)
     "peer_id": "12D3KooW…",                the other node's Peer ID: sign in there only
     "direction": "both" | "pull" | "push",   default "both"
     "space": "main",                       default: the node's space (every space on a relay)
     "collections": ["todos"], "documents": [["todos", "t1"]],
     "transport": "ws" | "http",            default "ws"
     "insecure": false, "cafile": null}     TLS: skip verification / trust this CA file

The node signs in to the remote as its user, and only to the node it means:
the one ``peer_id`` names, else the one the remote's ``hello`` names (see
:meth:`~loomdb.stores.remote.RemoteStore.connect`).

The reply is ``application/x-ndjson``: one JSON object per line, ``{"event":
"progress", ...}`` at most every :data:`PROGRESS_EVERY` seconds and at each
phase change, then exactly one of ``{"event": "done", ...}`` or ``{"event":
"error", "error": {code, message[, remote]}}``. ``remote`` is there when the
connection to the remote failed (a ``transport.*`` code): the link that broke
is the remote's, not this node's. An error that is not a LoomError (a bug) is
logged here, with its traceback, and reported as ``internal``.

Closing the connection cancels the sync: the job stops (a batch being stored
is stored whole first), then the node logs one line, ``sync with <remote>
stopped: the client went away``; what was stored stays, so running it again
resumes. The job runs in the request's own task (:class:`SyncRunResponse`),
so it never outlives the response.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from loomdb.api.errors import INTERNAL, INVALID_REQUEST, RequestError
from loomdb.api.validation import check, read_json
from loomdb.errors import LoomError, TransportError
from loomdb.identity.peer_id import public_key_from_peer_id
from loomdb.identity.user import UserIdentity
from loomdb.stores.remote import RemoteStore
from loomdb.sync.replicate import SyncProgress, SyncScope, pull_changes_from, push_changes_to, sync
from loomdb.transports.tls import Verify

PATH: Final = "/api/v0/sync/run"
PROGRESS_EVERY: Final = 0.25

log = logging.getLogger(__name__)

BODY_SCHEMA: Final = {
    "type": "object",
    "additionalProperties": False,
    "required": ["remote"],
    "properties": {
        "remote": {"type": "string", "minLength": 1},
        "peer_id": {"type": "string", "minLength": 1},
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


def remote_connector(identity: UserIdentity | None, max_frame: int) -> Connect:
    """How the node opens the remote a body names, signing in as ``identity``."""

    async def connect(body: dict[str, Any]) -> RemoteStore:
        verify: Verify = body.get("cafile") or not body.get("insecure", False)
        return RemoteStore.connect(
            body["remote"],
            transport=body.get("transport", "ws"),
            verify=verify,
            max_frame=max_frame,
            identity=identity,
            expected_server=body.get("peer_id"),
        )

    return connect


def _line(event: str, **fields: Any) -> bytes:
    return (json.dumps({"event": event, **fields}) + "\n").encode()


def _error(exc: LoomError, remote: str) -> bytes:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if isinstance(exc, TransportError):
        # Only the remote is reached over a network: it is that link that broke.
        error["message"] = f"the connection to the remote {remote} failed: {exc.message}"
        error["remote"] = remote
    return _line("error", error=error)


def sync_run_route(local: object, default_space: str | None, connect: Connect) -> Route:
    """The route, syncing ``local`` (a store or a database) with the node a request names."""

    async def run(request: Request) -> StreamingResponse:
        body = await read_json(request)
        check(BODY_SCHEMA, body)
        documents = body.get("documents", [])
        if any(len(d) != 2 for d in documents):
            raise RequestError(422, INVALID_REQUEST, "a document is [collection, document]")
        if "peer_id" in body:
            public_key_from_peer_id(body["peer_id"])  # ValidationError: 422
        scope = SyncScope(
            body.get("space", default_space),
            tuple(body.get("collections", ())),
            tuple((c, d) for c, d in documents),
        )
        return SyncRunResponse(SyncJob(local, scope, body, connect))

    return Route(PATH, run, methods=["POST"], name=PATH)


class SyncJob:
    """One sync with the remote a body names; writes its events to ``send``."""

    def __init__(
        self, local: object, scope: SyncScope, body: dict[str, Any], connect: Connect
    ) -> None:
        self.local = local
        self.scope = scope
        self.body = body
        self.remote: str = body["remote"]
        self.connect = connect
        self.state = SyncProgress()  # the latest progress, for the log
        self._sent = (0.0, "")  # when, and in which phase, progress was last sent

    async def run(self, send: MemoryObjectSendStream[bytes], cancel: anyio.CancelScope) -> None:
        """Run until done, failed or ``cancel`` is cancelled (the client went away);
        every outcome is logged once."""
        async with send:
            try:
                with cancel:
                    await self._run(send)
                    return
            except Exception as exc:  # failed as it was cancelled: nobody listens now
                log.info("sync with %s: %r on the way out", self.remote, exc)
            log.info(
                "sync with %s stopped: the client went away (pulled %d, pushed %d)",
                self.remote,
                self.state.pulled,
                self.state.pushed,
            )

    async def _run(self, send: MemoryObjectSendStream[bytes]) -> None:
        def progress(state: SyncProgress) -> None:
            self.state = state
            now = time.monotonic()
            if state.phase == self._sent[1] and now - self._sent[0] < PROGRESS_EVERY:
                return
            self._sent = (now, state.phase)
            # The client reads slowly: skip this update, a later one follows.
            with contextlib.suppress(anyio.WouldBlock):
                send.send_nowait(_line("progress", **state.as_dict()))

        try:
            remote = await self.connect(self.body)
            async with remote:
                run = _RUNS[self.body.get("direction", "both")]
                report = await run(self.local, remote, self.scope, progress=progress)
        except LoomError as exc:
            log.warning("sync with %s failed: %s: %s", self.remote, exc.code, exc.message)
            await send.send(_error(exc, self.remote))
            return
        except Exception:
            log.exception("sync with %s crashed", self.remote)
            message = "internal error (see the node's log)"
            await send.send(_line("error", error={"code": INTERNAL, "message": message}))
            return
        log.info(
            "sync with %s done: pulled %d, pushed %d, rejected %d",
            self.remote,
            report.pulled,
            report.pushed,
            len(report.rejected),
        )
        await send.send(_line("done", **report.as_dict()))


class SyncRunResponse(StreamingResponse):
    """Streams a :class:`SyncJob`'s events while the job runs beside the stream, in
    the request's task: when the client goes away the stream ends, the job is
    cancelled and waited for, and only then does the response return. (A job
    inside the body's generator would go on running when the stream stops at a
    ``yield``: nothing closes that generator then.)"""

    def __init__(self, job: SyncJob) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[bytes](16)
        super().__init__(self._receive, media_type="application/x-ndjson")
        self._job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cancel = anyio.CancelScope()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._job.run, self._send, cancel)
                try:
                    await super().__call__(scope, receive, send)
                except ClientDisconnect:
                    pass  # ASGI 2.4 servers say so when a write fails: the job stops below
                finally:
                    cancel.cancel()
        finally:
            self._receive.close()
