"""The RequestChannel conformance suite.

Every transport runs exactly these tests (the ``harness`` fixture is
parametrised over them), on asyncio and on trio: the memory network, and HTTP,
WebSocket, HTTPS and WSS over real sockets on 127.0.0.1 to a real Hypercorn
server serving ``create_app(None, sync_handler=...)`` in this process. A new
transport joins by adding a kind to ``KINDS``.

The server answers through :class:`Service`: it echoes a frame reversed, sends
``size:N`` back as N bytes, and holds ``stall:…`` until released. The main
server reads frames up to ``MAX``; a second one at ``…/small`` (a Mount, so base
URLs with a path are covered too) only up to ``SMALL``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from hypercorn.config import Config
from hypercorn.typing import ASGIFramework
from starlette.applications import Starlette
from starlette.routing import Mount

from loomdb.api import create_app
from loomdb.errors import (
    FrameTooLargeError,
    TransportError,
    TransportTimeoutError,
    UnreachableError,
)
from loomdb.transports.base import DEFAULT_MAX_FRAME, RequestChannel
from loomdb.transports.http import HttpChannel
from loomdb.transports.memory import MemoryNetwork
from loomdb.transports.tls import TlsFiles, Verify, self_signed_cert
from loomdb.transports.websocket import WebSocketChannel

pytestmark = pytest.mark.anyio

KINDS = ["memory", "http", "ws", "https", "wss"]
MAX = DEFAULT_MAX_FRAME
SMALL = 4096
STALL_TIMEOUT = 0.2  # how long a request waits for a stalled handler
WAIT = 10.0  # the bound on any wait that should end at once


class Service:
    """The frame handler behind every server of the suite."""

    def __init__(self) -> None:
        self.calls = 0
        self.stalled = anyio.Event()  # a stall request arrived
        self.release = anyio.Event()  # let it answer
        self.finished = anyio.Event()  # it answered (or was cancelled)

    async def __call__(self, frame: bytes) -> bytes:
        self.calls += 1
        if frame.startswith(b"stall:"):
            try:
                self.stalled.set()
                with anyio.fail_after(WAIT):
                    await self.release.wait()
                return b"late:" + frame.removeprefix(b"stall:")
            finally:
                self.finished.set()
        if frame.startswith(b"size:"):
            return b"x" * int(frame.removeprefix(b"size:"))
        return frame[::-1]


def free_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def hypercorn_serving(
    app: Starlette, backend: str, tls: TlsFiles | None
) -> AsyncIterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 in this process; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections queue from here: no need to wait for the server
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.graceful_timeout = 1.0
    config.errorlog = logging.getLogger("tests.hypercorn")
    if tls is not None:
        config.certfile, config.keyfile = str(tls.cert), str(tls.key)
    serve: Callable[..., Awaitable[None]]
    if backend == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve
    stop = anyio.Event()

    async def run() -> None:
        await serve(cast(ASGIFramework, app), config, shutdown_trigger=stop.wait)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        finally:
            stop.set()


class Harness:
    """Opens channels of one kind to the suite's servers and closes them all after."""

    def __init__(self, kind: str, service: Service, url: str, cafile: Path | None) -> None:
        self.kind = kind
        self.service = service
        self.url = url  # the base URL; "" for the memory network
        self.cafile = cafile
        self.network = MemoryNetwork(seed=1)
        self.network.serve("node", service)
        self.network.serve("small", service, max_frame=SMALL)
        self.opened: list[RequestChannel] = []

    def channel(
        self, *, small: bool = False, max_frame: int = MAX, verify: Verify | None = None
    ) -> RequestChannel:
        """A channel to the main server, or with ``small`` to the one with the small limit."""
        if self.kind == "memory":
            dst = "small" if small else "node"
            return self._keep(self.network.channel("client", dst, max_frame=max_frame))
        return self._open(f"{self.url}/small" if small else self.url, max_frame, verify)

    def unreachable(self) -> RequestChannel:
        """A channel to an address where nobody listens."""
        if self.kind == "memory":
            return self._keep(self.network.channel("client", "nobody"))
        scheme = "https" if self.kind in ("https", "wss") else "http"
        return self._open(f"{scheme}://127.0.0.1:{free_port()}", MAX, None)

    def _open(self, url: str, max_frame: int, verify: Verify | None) -> RequestChannel:
        trust: Verify = verify if verify is not None else (str(self.cafile or "") or True)
        if self.kind in ("http", "https"):
            return self._keep(
                HttpChannel(url, max_frame=max_frame, verify=trust, connect_timeout=WAIT)
            )
        return self._keep(
            WebSocketChannel(url, max_frame=max_frame, verify=trust, connect_timeout=WAIT)
        )

    def _keep(self, channel: RequestChannel) -> RequestChannel:
        self.opened.append(channel)
        return channel

    async def aclose(self) -> None:
        for channel in self.opened:
            await channel.aclose()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def other_tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A certificate of somebody else: trusting it must not let the node through."""
    return self_signed_cert(tmp_path_factory.mktemp("other-tls"))


@pytest.fixture(params=KINDS)
async def harness(
    request: pytest.FixtureRequest, anyio_backend: str, tls_files: TlsFiles
) -> AsyncIterator[Harness]:
    kind: str = request.param
    service = Service()
    if kind == "memory":
        channels = Harness(kind, service, "", None)
        try:
            yield channels
        finally:
            await channels.aclose()
        return
    secure = kind in ("https", "wss")
    app = Starlette(
        routes=[
            Mount("/small", create_app(None, sync_handler=service, max_frame=SMALL)),
            Mount("", create_app(None, sync_handler=service, max_frame=MAX)),
        ]
    )
    async with hypercorn_serving(app, anyio_backend, tls_files if secure else None) as url:
        channels = Harness(kind, service, url, tls_files.cert if secure else None)
        try:
            yield channels
        finally:
            await channels.aclose()
            service.release.set()  # a stalled handler must not hold the server's shutdown


async def test_is_a_request_channel(harness: Harness) -> None:
    channel = harness.channel()
    assert isinstance(channel, RequestChannel)
    assert channel.max_frame == MAX
    assert harness.channel(max_frame=1234).max_frame == 1234


async def test_round_trips_empty_small_and_large_frames_up_to_the_limit(
    harness: Harness,
) -> None:
    channel = harness.channel()
    for frame in [b"", b"a", b"hello", bytes(range(256)) * 400, b"\x01" + b"\x00" * (MAX - 1)]:
        reply = await channel.request(frame, timeout=WAIT)
        assert len(reply) == len(frame)
        assert reply == frame[::-1]
    assert harness.service.calls == 5


async def test_many_requests_on_one_channel(harness: Harness) -> None:
    channel = harness.channel()
    for i in range(30):
        assert await channel.request(b"n%d" % i, timeout=WAIT) == (b"n%d" % i)[::-1]


async def test_concurrent_users_on_separate_channels(harness: Harness) -> None:
    results: dict[int, list[bytes]] = {}

    async def user(n: int) -> None:
        channel = harness.channel()
        results[n] = [await channel.request(b"u%d-%d" % (n, i), timeout=WAIT) for i in range(5)]

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(user, n)
    assert results == {n: [(b"u%d-%d" % (n, i))[::-1] for i in range(5)] for n in range(8)}


async def test_one_channel_carries_one_request_at_a_time(harness: Harness) -> None:
    """Concurrent callers on one channel queue; each gets its own reply."""
    channel = harness.channel()
    results: dict[int, bytes] = {}

    async def call(n: int) -> None:
        results[n] = await channel.request(b"c%d" % n, timeout=WAIT)

    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(call, n)
    assert results == {n: (b"c%d" % n)[::-1] for n in range(6)}


async def test_an_oversize_frame_is_refused_unsent(harness: Harness) -> None:
    channel = harness.channel(max_frame=1000)
    with pytest.raises(FrameTooLargeError):
        await channel.request(b"x" * 1001, timeout=WAIT)
    assert harness.service.calls == 0
    assert await channel.request(b"x" * 1000, timeout=WAIT) == b"x" * 1000


async def test_the_server_refuses_a_frame_over_its_own_limit(harness: Harness) -> None:
    channel = harness.channel(small=True)  # the channel would take them; the server will not
    for size in (SMALL + 1, MAX):  # just over, and far over (the server must still be heard)
        with pytest.raises(FrameTooLargeError):
            await channel.request(b"y" * size, timeout=WAIT)
    assert harness.service.calls == 0
    assert await channel.request(b"y" * SMALL, timeout=WAIT) == b"y" * SMALL
    assert harness.service.calls == 1


async def test_an_oversize_reply_is_refused_and_the_channel_recovers(harness: Harness) -> None:
    channel = harness.channel(max_frame=1000)
    assert await channel.request(b"size:1000", timeout=WAIT) == b"x" * 1000
    with pytest.raises(FrameTooLargeError):
        await channel.request(b"size:5000", timeout=WAIT)
    assert await channel.request(b"abc", timeout=WAIT) == b"cba"


async def test_a_stalled_handler_times_out_and_its_late_reply_is_never_taken(
    harness: Harness,
) -> None:
    service = harness.service
    channel = harness.channel()
    assert await channel.request(b"warm", timeout=WAIT) == b"mraw"  # a connection is open
    started = time.monotonic()
    with pytest.raises(TransportTimeoutError):
        await channel.request(b"stall:1", timeout=STALL_TIMEOUT)
    assert time.monotonic() - started < STALL_TIMEOUT + 2.0
    if isinstance(channel, WebSocketChannel):
        assert not channel.connected  # dropped: its late reply can never be read
    with anyio.fail_after(WAIT):
        await service.stalled.wait()
    service.release.set()  # its reply ("late:1") is on its way, or was dropped
    with anyio.fail_after(WAIT):
        await service.finished.wait()
    assert await channel.request(b"next", timeout=WAIT) == b"txen"
    assert await channel.request(b"again", timeout=WAIT) == b"niaga"


async def test_nobody_listening_is_unreachable(harness: Harness) -> None:
    channel = harness.unreachable()
    with anyio.fail_after(WAIT), pytest.raises(UnreachableError):
        await channel.request(b"hello", timeout=WAIT)


@pytest.mark.parametrize("harness", ["https", "wss"], indirect=True)  # the TLS kinds
async def test_a_certificate_that_is_not_trusted_is_unreachable(
    harness: Harness, other_tls_files: TlsFiles
) -> None:
    for verify in (True, str(other_tls_files.cert)):  # system authorities; another node's cert
        channel = harness.channel(verify=verify)
        with anyio.fail_after(WAIT), pytest.raises(UnreachableError):
            await channel.request(b"hello", timeout=WAIT)
    assert harness.service.calls == 0
    insecure = harness.channel(verify=False)  # for tests and emergencies only
    assert await insecure.request(b"hi", timeout=WAIT) == b"ih"


async def test_a_closed_channel_refuses_requests(harness: Harness) -> None:
    channel = harness.channel()
    assert await channel.request(b"ab", timeout=WAIT) == b"ba"
    await channel.aclose()
    with pytest.raises(TransportError):
        await channel.request(b"ab", timeout=WAIT)
    await channel.aclose()  # twice is fine


async def test_errors_are_loom_errors_only(harness: Harness) -> None:
    """Whatever goes wrong, nothing from the libraries below escapes (rule 3)."""
    failures: list[Any] = []
    for channel, frame in [
        (harness.unreachable(), b"x"),
        (harness.channel(max_frame=10), b"x" * 11),
        (harness.channel(small=True), b"x" * (SMALL + 1)),
    ]:
        try:
            await channel.request(frame, timeout=WAIT)
        except TransportError as exc:
            failures.append(type(exc))
    assert failures == [UnreachableError, FrameTooLargeError, FrameTooLargeError]
