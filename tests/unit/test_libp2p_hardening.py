"""``loomdb.transports.libp2p.hardening`` on two real hosts over 127.0.0.1: a protocol
handler that raises costs its stream, not the node; a garbage gossipsub RPC is one
such handler error; and concurrent writes on one stream arrive whole, each one's
bytes contiguous, where py-libp2p alone interleaves them."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF, StreamReset
from libp2p.peer.id import ID

from loomdb.identity.keys import SigningKey
from loomdb.transports.libp2p import P2PHost
from loomdb.transports.libp2p.hardening import HANDLER_ERRORS, harden, unharden_for_tests

pytestmark = pytest.mark.anyio
WAIT = 20.0
RAISES = TProtocol("/loomdb-test/raises/1")
ECHO = TProtocol("/loomdb-test/echo/1")
SINK = TProtocol("/loomdb-test/sink/1")


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@asynccontextmanager
async def two_hosts(
    gossip: bool = False, hardened: bool = True
) -> AsyncIterator[tuple[P2PHost, P2PHost, ID]]:
    """``hardened=False``: py-libp2p's own behaviour (a host's start hardens it)."""
    a, b = (
        P2PHost(
            SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT, gossip=gossip
        )
        for _ in range(2)
    )
    if not hardened:
        unharden_for_tests()
    async with AsyncExitStack() as stack:
        for host in (a, b):
            await stack.enter_async_context(host.run())
        b_id = ID.from_base58(await a.connect(b.listen_addrs()[0]))
        yield a, b, b_id


async def echo(stream: object) -> None:
    data = await stream.read(100)  # type: ignore[attr-defined]
    await stream.write(data)  # type: ignore[attr-defined]
    await stream.close()  # type: ignore[attr-defined]


async def raises(stream: object) -> None:
    await stream.read(100)  # type: ignore[attr-defined]
    raise ValueError("a handler's own bug")


async def test_a_handler_that_raises_resets_its_stream_and_the_node_stays_up() -> None:
    before = HANDLER_ERRORS[str(RAISES)]
    async with two_hosts() as (a, b, b_id):
        b.host.set_stream_handler(RAISES, raises)
        b.host.set_stream_handler(ECHO, echo)
        with trio.fail_after(WAIT):
            for _ in range(3):
                bad = await a.host.new_stream(b_id, [RAISES])
                await bad.write(b"boom")
                with pytest.raises((StreamReset, StreamEOF)):  # b reset it: no answer
                    await bad.read(100)
                good = await a.host.new_stream(b_id, [ECHO])  # same host, same connection
                await good.write(b"still here")
                assert await good.read(100) == b"still here"
    assert HANDLER_ERRORS[str(RAISES)] == before + 3
    assert b.info()["counters"]["handler_errors"][str(RAISES)] >= 3


async def test_a_garbage_gossipsub_rpc_does_not_stop_the_node() -> None:
    """py-libp2p's gossipsub reader raises DecodeError on an RPC that does not parse;
    unwrapped, that stopped the whole host."""
    async with two_hosts(gossip=True) as (a, b, b_id):
        assert b.pubsub is not None
        protocols = [TProtocol(str(p)) for p in b.pubsub.protocols]
        before = sum(HANDLER_ERRORS.values())
        with trio.fail_after(WAIT):
            stream = await a.host.new_stream(b_id, protocols)
            await stream.write(b"\x05\xff\xff\xff\xff\xff")  # length 5, then not protobuf
            while sum(HANDLER_ERRORS.values()) == before:
                await trio.sleep(0.02)
            b.host.set_stream_handler(ECHO, echo)
            good = await a.host.new_stream(b_id, [ECHO])
            await good.write(b"up")
            assert await good.read(100) == b"up"


async def concurrent_writes(size: int, hardened: bool = True) -> bytes:
    """Two tasks write ``size`` bytes each (``a``s and ``b``s) on one stream, more
    than the Yamux window, to a reader that drains slowly; what it read."""
    got = bytearray()
    done = trio.Event()

    async def sink(stream: object) -> None:
        while len(got) < 2 * size:
            chunk = await stream.read(16 * 1024)  # type: ignore[attr-defined]
            if not chunk:
                break
            got.extend(chunk)
            await trio.sleep(0.001)
        done.set()

    async with two_hosts(hardened=hardened) as (a, b, b_id):
        b.host.set_stream_handler(SINK, sink)
        with trio.fail_after(WAIT):
            stream = await a.host.new_stream(b_id, [SINK])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.write, b"a" * size)
                nursery.start_soon(stream.write, b"b" * size)
            await done.wait()
    return bytes(got)


def runs(data: bytes) -> int:
    return 1 + sum(1 for x, y in itertools.pairwise(data) if x != y)


async def test_concurrent_writes_on_one_stream_arrive_whole() -> None:
    size = 600 * 1024  # over two windows (256 KiB) and many frames (64 KiB)
    got = await concurrent_writes(size)
    assert len(got) == 2 * size
    assert runs(got) == 2, "one write's bytes were split by the other's"


async def test_py_libp2p_alone_interleaves_concurrent_writes() -> None:
    """The fault the lock fixes, shown (so the test above can fail)."""
    try:
        got = await concurrent_writes(600 * 1024, hardened=False)
    finally:
        harden()
    assert len(got) == 2 * 600 * 1024 and runs(got) > 2


def test_harden_is_idempotent() -> None:
    harden()
    harden()
    from libp2p.host.basic_host import BasicHost

    from loomdb.transports.libp2p import hardening

    assert BasicHost._swarm_stream_handler is hardening._contained_handler
