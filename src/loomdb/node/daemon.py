"""The node daemon: one trio process that serves the HTTP API over the node's database.

It runs on trio because libp2p (to come, in this same process) is trio-only.

Lifecycle:

1. bind the API socket first, so a busy port is refused (``AddressInUseError``)
   before anything is opened;
2. open the database on the node's home;
3. serve the API with Hypercorn; once it accepts connections, print one line
   on stdout (:data:`READY`) with the node's Peer ID and the API's URL — with
   port 0 the URL holds the port the system chose;
4. on SIGINT or SIGTERM: stop accepting, let requests in flight finish (at most
   :data:`GRACE_SECONDS`), close the database, return (the CLI exits 0).

Writes are acknowledged only once the store committed them, so a SIGKILL loses
nothing that a client was told is written.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
from collections.abc import Callable
from functools import partial
from typing import cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

from loomdb.api import create_app
from loomdb.documents import Database
from loomdb.errors import AddressInUseError, ValidationError
from loomdb.node.home import NodeHome

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 9181
GRACE_SECONDS = 5.0
READY = "loomdb: node {peer_id} ready, API at {url}"

log = logging.getLogger(__name__)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → ``(host, port)``; port 0 means any free port."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValidationError(f"bad address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9181")
    return host.removeprefix("[").removesuffix("]"), int(port_text)


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``; a busy or unusable address is a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not SO_REUSEPORT
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUseError(
                f"cannot listen on {where}: the address is in use (another node?); "
                "choose another with --api HOST:PORT"
            ) from None
        raise ValidationError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return sock


def run_daemon(
    home_path: str | os.PathLike[str],
    api_host: str = DEFAULT_API_HOST,
    api_port: int = DEFAULT_API_PORT,
    *,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run a node until SIGINT or SIGTERM. Raises LoomError for a bad home or port.

    ``announce`` gets the ready line (default: print it on stdout, flushed)."""
    announce = announce or partial(print, flush=True)
    sock = listen_socket(api_host, api_port)  # first: a busy port creates nothing
    try:
        home = NodeHome.open(home_path)
        trio.run(serve_node, home, sock, announce)
    finally:
        if sock.fileno() != -1:  # not handed over to the server
            sock.close()


async def serve_node(home: NodeHome, sock: socket.socket, announce: Callable[[str], None]) -> None:
    """Serve the API on ``sock`` (bound, not yet listening) until a signal arrives."""
    # Opened first: a signal during start-up still stops the node in order.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        db = await Database.open(home)
        try:
            config = Config()
            config.bind = [f"fd://{sock.detach()}"]  # Hypercorn owns the socket from here
            config.graceful_timeout = GRACE_SECONDS
            config.errorlog = logging.getLogger("loomdb.http")
            config.accesslog = logging.getLogger("loomdb.http.access")
            # Starlette's ASGI types are looser than Hypercorn's; the app is ASGI 3.
            app = cast(ASGIFramework, create_app(db))
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
                announce(READY.format(peer_id=home.peer_id, url=binds[0]))
                async for signum in signals:
                    log.info("%s: stopping", signal.Signals(signum).name)
                    break
                stop.set()
        finally:
            await db.aclose()
    log.info("stopped")
