#!/usr/bin/env python3
"""HTTP server floor: what serving one small POST costs before any database work.

    python bench/http_floor.py [--posts 2000] [--callgrind PREFIX] [VARIANT …]

Each variant runs in a child process (trio, a socket on 127.0.0.1) and answers
``POST /api/v0/collections/bench/docs`` (``{"id", "value"}``) with a fixed
201 JSON document; the parent sends --posts of them one at a time on one
keep-alive httpx connection and reads the child's CPU from ``/proc``:

* ``hypercorn``: Hypercorn 0.18 (h11) serving a bare ASGI app (reads the body,
  ``json.loads``, sends the answer) — the node's server with nothing behind it;
* ``api``: Hypercorn serving LocalGuard and the API's dispatch, body read and
  checked as the route table's ``POST …/docs`` (``read_json``, ``check``);
* ``h11``: the bare ASGI app behind a minimal server written here: h11 and trio,
  the app run in the connection's own task, the response written with one
  ``send_all`` — what the HTTP/1.1 part of a leaner server would cost;
* ``h11-api``: that minimal server in front of LocalGuard and the API dispatch.

The minimal server is a measuring device, not a server to run: no TLS, no
WebSocket, no timeouts, no graceful shutdown. ``--callgrind PREFIX``: children
run under valgrind callgrind with instrumentation on only around the timed
POSTs (``callgrind_control -i``); instructions per POST are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from email.utils import formatdate
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import h11
import httpx
import trio

VARIANTS = ("hypercorn", "api", "h11", "h11-api")
TOKEN = "t" * 43
DOC = {"id": "x", "value": {"i": 1}, "heads": ["b" * 59], "created_at": 1, "updated_at": 1}
WARMUP = 200
START_S = 120.0

Scope = dict[str, Any]


async def bare(scope: Scope, receive: Any, send: Any) -> None:
    """The least an ASGI app can do for the POST: read, parse, answer."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    json.loads(body)
    out = json.dumps(DOC).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": out})


def api_app() -> Any:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from loomdb.api.dispatch import API
    from loomdb.api.errors import EXCEPTION_HANDLERS
    from loomdb.api.guard import GuardPolicy, LocalGuard
    from loomdb.api.routes import NEW_DOCUMENT
    from loomdb.api.validation import check, read_json

    async def route(request: Request) -> Response:
        body = await read_json(request)
        check(NEW_DOCUMENT, body)
        return JSONResponse(DOC, status_code=201)

    direct = [Route("/api/v0/collections/{collection}/docs", route, methods=["POST"])]
    app = API(direct=direct, routes=direct, exception_handlers=EXCEPTION_HANDLERS)
    return LocalGuard(app, GuardPolicy(admin_token=TOKEN))


async def minimal_server(app: Any, sock: socket.socket) -> None:
    """HTTP/1.1 keep-alive with h11; the app runs in the connection's task."""
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    async def connection(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        client, server = stream.socket.getpeername(), stream.socket.getsockname()
        out: list[bytes] = []  # one response's bytes, written at its end

        async def event() -> Any:
            while (got := conn.next_event()) is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            return got

        while isinstance(request := await event(), h11.Request):
            path, _, query = request.target.partition(b"?")
            scope: Scope = {
                "type": "http", "http_version": "1.1", "method": request.method.decode(),
                "asgi": {"spec_version": "2.1", "version": "3.0"}, "scheme": "http",
                "path": unquote(path.decode("ascii")), "raw_path": path, "query_string": query,
                "root_path": "", "headers": list(request.headers), "client": client,
                "server": server, "state": {}, "extensions": {},
            }  # fmt: skip

            async def receive() -> dict[str, Any]:
                got = await event()
                if isinstance(got, h11.Data):
                    return {"type": "http.request", "body": bytes(got.data), "more_body": True}
                if isinstance(got, h11.EndOfMessage):
                    return {"type": "http.request", "body": b"", "more_body": False}
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    headers = [*message.get("headers", [])]
                    headers += [(b"date", formatdate(usegmt=True).encode()), (b"server", b"h11")]
                    out.append(
                        conn.send(h11.Response(status_code=message["status"], headers=headers))
                    )
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        out.append(conn.send(h11.Data(data=message["body"])) or b"")
                    if not message.get("more_body"):
                        out.append(conn.send(h11.EndOfMessage()) or b"")
                        await stream.send_all(b"".join(out))
                        out.clear()

            await app(scope, receive, send)
            while conn.their_state is not h11.DONE:
                if isinstance(await event(), h11.ConnectionClosed):
                    return
            conn.start_next_cycle()

    await trio.serve_listeners(connection, [listener])


def child(variant: str, port_file: Path) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(100)
    port_file.write_text(str(sock.getsockname()[1]))
    app = api_app() if variant.endswith("api") else bare
    if variant.startswith("h11"):
        trio.run(minimal_server, app, sock)
        return
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None  # as the daemon without -v
    config.errorlog = logging.getLogger("bench.http")
    trio.run(partial(serve, app, config))


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(variant: str, posts: int, callgrind: str | None, tmp: Path) -> None:
    port_file = tmp / f"port-{variant}"
    command = [sys.executable, __file__, "--child", variant, str(port_file)]
    if callgrind is not None:
        out = f"--callgrind-out-file={callgrind}.{variant}.%p"
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", out, *command]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_S
        while not (port_file.exists() and port_file.read_text()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"bench: the {variant} server did not start")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=url, headers=headers, trust_env=False, timeout=60) as http:

            def post(i: int) -> None:
                body = {"id": f"g{i}", "value": {"i": i}}
                r = http.post("/api/v0/collections/bench/docs", json=body)
                if r.status_code != 201:
                    raise SystemExit(f"bench: {variant} answered {r.status_code}: {r.text}")

            for i in range(WARMUP):
                post(i)
            toggle = ["callgrind_control", "-i"]
            if callgrind is not None:
                subprocess.run([*toggle, "on", str(proc.pid)], check=True, capture_output=True)
            c0, t0 = cpu(proc.pid), time.perf_counter()
            for i in range(posts):
                post(i)
            wall, used = time.perf_counter() - t0, cpu(proc.pid) - c0
            if callgrind is not None:
                subprocess.run([*toggle, "off", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    line = (
        f"{variant:10s} server CPU {used * 1e3 / posts:.3f} ms/POST, wall {wall * 1e3 / posts:.3f}"
    )
    if callgrind is not None:
        total = 0
        for path in Path(callgrind).parent.glob(f"{Path(callgrind).name}.{variant}.*"):
            for text in path.read_text(errors="replace").splitlines():
                if text.startswith("totals:"):
                    total += int(text.split()[1])
        line += f", {total / posts / 1e3:,.0f}k instructions/POST"
    print(f"{line}  (load {os.getloadavg()[0]:.2f})", flush=True)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("variants", nargs="*", help=f"of {', '.join(VARIANTS)} (default: all)")
    ap.add_argument("--posts", type=int, default=2000, help="timed POSTs per variant")
    ap.add_argument("--callgrind", help="run the servers under callgrind: PREFIX.<variant>.<pid>")
    args = ap.parse_args()
    if unknown := set(args.variants) - set(VARIANTS):
        ap.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")

    with tempfile.TemporaryDirectory(prefix="loomdb-bench-floor-") as tmp:
        for variant in args.variants or VARIANTS:
            run(variant, args.posts, args.callgrind, Path(tmp))


if __name__ == "__main__":
    main()
