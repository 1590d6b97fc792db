"""py-libp2p's per-message gossip path, patched at host start
(``loomdb.transports.libp2p``: ``pubsub_reads``, ``task_parents``, ``yamux_env`` and
``NodePubsub``'s duplicate check): each patch keeps py-libp2p's behaviour where it
matters and is checked here against py-libp2p's own code where that is possible."""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.exceptions import ParseError
from libp2p.io.exceptions import IncompleteReadError, MessageTooLarge
from libp2p.network.stream.exceptions import StreamEOF, StreamReset
from libp2p.pubsub import pubsub as pubsub_module
from libp2p.pubsub.pb import rpc_pb2
from libp2p.stream_muxer.yamux import yamux as yamux_module
from libp2p.tools.anyio_service import Service, background_trio_service
from libp2p.tools.anyio_service.trio_manager import TrioManager
from libp2p.tools.anyio_service.trio_tasks import FunctionTask
from libp2p.utils.varint import encode_uvarint, read_varint_prefixed_bytes_limited

from loomdb.identity.keys import SigningKey
from loomdb.transports.libp2p import P2PHost, pubsub_reads, task_parents, yamux_env, yamux_reads
from loomdb.transports.libp2p.pubsub import tune_pubsub
from loomdb.transports.libp2p.pubsub_reads import read_rpc

pytestmark = pytest.mark.anyio
WAIT = 20.0


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


class Scripted:
    """A stream whose reads return the given pieces, one per read, then EOF (b"")."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self.pieces = list(pieces)
        self.reads: list[int] = []

    async def read(self, n: int | None = None) -> bytes:
        self.reads.append(-1 if n is None else n)
        await trio.lowlevel.checkpoint()
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        assert n is None or len(piece) <= n, "a read returned more than asked"
        return piece


def framed(*bodies: bytes) -> bytes:
    return b"".join(encode_uvarint(len(b)) + b for b in bodies)


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


async def read_all(reader: Any, count: int, max_length: int = 1 << 20) -> list[bytes]:
    return [await read_rpc(reader, max_length) for _ in range(count)]


# --- pubsub_reads: buffered RPC reads ------------------------------------------------


async def test_a_varint_split_across_reads_and_a_body_across_several() -> None:
    body = bytes(range(256)) * 2  # 512 bytes: a two-byte varint
    data = framed(body)
    reader = Scripted(split(data, [1, 2, 100, 101, 400]))  # the varint's bytes apart
    assert await read_all(reader, 1) == [body]


async def test_many_rpcs_in_one_read_are_served_without_more_reads() -> None:
    bodies = [bytes([i]) * (i * 37 % 300) for i in range(40)]  # some empty
    reader = Scripted([framed(*bodies)])
    assert await read_all(reader, len(bodies)) == bodies
    assert len(reader.reads) == 1


async def test_random_splits_read_like_py_libp2ps_own_reader() -> None:
    rng = random.Random(12)
    for _ in range(60):
        bodies = [rng.randbytes(rng.choice([0, 1, 127, 128, 300, 20_000])) for _ in range(5)]
        data = framed(*bodies)
        cuts = [rng.randrange(len(data) + 1) for _ in range(rng.randrange(12))]
        ours = await read_all(Scripted(split(data, cuts)), len(bodies))
        # py-libp2p's reader needs reads of exactly what it asks: a byte-feeding stream
        theirs_stream = ByteFeeder(data)
        theirs = [await read_varint_prefixed_bytes_limited(theirs_stream, 1 << 20) for _ in bodies]
        assert ours == theirs == bodies


class ByteFeeder:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, n: int | None = None) -> bytes:
        take = len(self.data) if n is None else n
        out, self.data = self.data[:take], self.data[take:]
        return out


async def test_a_length_over_the_limit_is_refused_before_its_body_is_awaited() -> None:
    reader = Scripted([encode_uvarint(5000) + b"x" * 10])  # then EOF: the body never comes
    with pytest.raises(MessageTooLarge):
        await read_rpc(reader, 4999)


async def test_bad_or_truncated_input_raises_py_libp2ps_errors() -> None:
    with pytest.raises(ParseError):
        await read_rpc(Scripted([b"\xff" * 10 + b"\x01"]), 1 << 20)
    with pytest.raises(IncompleteReadError):  # EOF inside the varint
        await read_rpc(Scripted([b"\x80"]), 1 << 20)
    with pytest.raises(IncompleteReadError) as inside:  # EOF inside the body
        await read_rpc(Scripted([encode_uvarint(100) + b"y" * 60]), 1 << 20)
    assert (inside.value.expected_bytes, inside.value.received_bytes) == (100, 60)
    with pytest.raises(ValueError, match="max_length"):
        await read_rpc(Scripted([]), 0)


async def test_each_stream_keeps_its_own_leftover_bytes() -> None:
    one = Scripted([framed(b"a1", b"a2")])
    two = Scripted([framed(b"b1", b"b2")])
    assert await read_rpc(one, 100) == b"a1"
    assert await read_rpc(two, 100) == b"b1"
    assert await read_rpc(one, 100) == b"a2"
    assert await read_rpc(two, 100) == b"b2"


def test_only_pubsubs_reader_is_replaced() -> None:
    from libp2p.utils import varint

    tune_pubsub()
    assert pubsub_module.read_varint_prefixed_bytes_limited is read_rpc  # type: ignore[attr-defined]
    assert varint.read_varint_prefixed_bytes_limited is not read_rpc
    pubsub_reads.byte_at_a_time_reads()
    assert pubsub_module.read_varint_prefixed_bytes_limited is not read_rpc  # type: ignore[attr-defined]
    pubsub_reads.buffer_pubsub_reads()


# --- task_parents: a spawned task's parent by lookup -----------------------------------


class Tree(Service):
    """Spawns root tasks that spawn children and grandchildren; records, at each spawn,
    the parent py-libp2p's walk finds and the one the index finds."""

    def __init__(self, fail: bool = False) -> None:
        self.answers: list[tuple[Any, Any]] = []
        self.fail = fail
        self.done = trio.Event()
        self.started = 0

    def spawn(self, fn: Any, *args: Any) -> None:
        manager: Any = self.manager
        current = trio.lowlevel.current_task()
        walked = task_parents._original_find(manager, current)
        indexed = task_parents._find_indexed(manager, current)
        self.answers.append((walked, indexed))
        manager.run_task(fn, *args)

    async def node(self, depth: int) -> None:
        self.started += 1
        if depth < 2:
            for _ in range(2):
                self.spawn(self.node, depth + 1)
        elif self.fail:
            raise RuntimeError("a task that fails")
        await trio.sleep(0.01)

    async def run(self) -> None:
        for _ in range(3):
            self.spawn(self.node, 0)
        await self.done.wait()


async def test_the_parent_found_is_the_one_py_libp2ps_walk_finds() -> None:
    task_parents.index_task_parents()
    tree = Tree()
    async with background_trio_service(tree) as manager:
        with trio.fail_after(WAIT):
            while tree.started < 21:  # 3 roots, 6 children, 12 grandchildren
                await trio.sleep(0.01)
        # and from a task that is not the manager's (a stream handler's, say): none
        outside = trio.lowlevel.current_task()
        assert task_parents._find_indexed(manager, outside) is None  # type: ignore[arg-type]
        assert task_parents._original_find(manager, outside) is None  # type: ignore[arg-type]
        tree.done.set()
    assert len(tree.answers) == 3 + 6 + 12
    assert all(walked is indexed for walked, indexed in tree.answers)
    parents = [indexed for _, indexed in tree.answers]
    assert all(isinstance(p, FunctionTask) for p in parents)
    assert len({id(p) for p in parents[:3]}) == 1  # the service's run() task
    assert len({id(p) for p in parents}) == 1 + 3 + 6  # each spawner, once per child pair
    assert not task_parents._running  # every finished task left the index


async def test_a_task_that_fails_is_still_reported() -> None:
    task_parents.index_task_parents()
    tree = Tree(fail=True)
    with pytest.raises(BaseExceptionGroup) as failed:  # noqa: PT012
        async with background_trio_service(tree):
            with trio.fail_after(WAIT):
                await trio.sleep_forever()
    assert "a task that fails" in repr(failed.value)
    assert not task_parents._running


def test_a_host_start_installs_the_index() -> None:
    tune_pubsub()
    assert TrioManager._find_parent_task is task_parents._find_indexed
    assert FunctionTask.run is task_parents._run_indexed


# --- yamux_env ------------------------------------------------------------------------


def test_yamux_reads_its_variables_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PY_YAMUX_BATCH_THRESHOLD_DIV", "4")
    try:
        yamux_env.read_yamux_env_once()
        assert yamux_module._yamux_batch_threshold_divisor() == 4
        assert yamux_module._py_yamux_env_set("BATCH_THRESHOLD_DIV")
        monkeypatch.setenv("PY_YAMUX_BATCH_THRESHOLD_DIV", "8")  # not read again
        assert yamux_module._yamux_batch_threshold_divisor() == 4
        monkeypatch.delenv("PY_YAMUX_BATCH_THRESHOLD_DIV")
        yamux_env.read_yamux_env_once()  # a new snapshot
        assert yamux_module._yamux_batch_threshold_divisor() == 2  # py-libp2p's default
        assert not yamux_module._py_yamux_env_set("BATCH_THRESHOLD_DIV")
    finally:
        yamux_env.read_yamux_env_once()


# --- NodePubsub: duplicates dropped before a task ------------------------------------


async def test_a_message_already_seen_is_dropped_before_its_task() -> None:
    a = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
    b = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
    async with AsyncExitStack() as stack:
        for host in (a, b):
            await stack.enter_async_context(host.run())
        assert a.pubsub is not None and b.pubsub is not None
        subscription = await b.pubsub.subscribe("t")
        await b.connect(a.listen_addrs()[0])
        with trio.fail_after(WAIT):
            while not a.pubsub.peer_topics.get("t"):
                await trio.sleep(0.01)
        pushed: list[bytes] = []
        original = b.pubsub.push_msg

        async def counting(forwarder: Any, msg: rpc_pb2.Message) -> None:
            pushed.append(msg.seqno)
            await original(forwarder, msg)

        b.pubsub.push_msg = counting  # type: ignore[method-assign]
        await a.pubsub.publish("t", b"once")
        with trio.fail_after(WAIT):
            got = await subscription.get()
        assert got.data == b"once"
        copy = rpc_pb2.Message()
        copy.CopyFrom(got)
        assert b.pubsub._is_msg_seen(copy)
        assert not b.pubsub._is_subscribed_to_msg(copy)  # the copy: no task
        fresh = rpc_pb2.Message()
        fresh.CopyFrom(got)
        fresh.seqno = b"\xff" * 8  # another message id, not seen
        assert b.pubsub._is_subscribed_to_msg(fresh)
        other = rpc_pb2.Message()
        other.CopyFrom(fresh)
        del other.topicIDs[:]
        other.topicIDs.append("not-followed")
        assert not b.pubsub._is_subscribed_to_msg(other)
        assert pushed == [got.seqno]


# --- yamux_reads: reads on open streams -------------------------------------------------

PROTOCOL = TProtocol("/loomdb-test/raw/1.0.0")


async def raw_pair(
    stack: AsyncExitStack, handler: Callable[[INetStream], Awaitable[None]]
) -> INetStream:
    """A stream from host A to host B, whose end on B is given to ``handler``."""
    a = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
    b = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
    for host in (a, b):
        await stack.enter_async_context(host.run())
    b.host.set_stream_handler(PROTOCOL, handler)
    await a.connect(b.listen_addrs()[0])
    peer = next(iter(a.host.get_network().connections))
    return await a.host.new_stream(peer, [PROTOCOL])


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often each fast path handed over to py-libp2p's own method."""
    counted = {"read_stream": 0, "read_body": 0}
    read_stream, read_body = yamux_reads._original_read_stream, yamux_reads._original_read_body

    async def counting_stream(self: Any, stream_id: int, n: int = -1) -> bytes:
        counted["read_stream"] += 1
        data: bytes = await read_stream(self, stream_id, n)
        return data

    async def counting_body(self: Any, length: int) -> bytes:
        counted["read_body"] += 1
        data: bytes = await read_body(self, length)
        return data

    monkeypatch.setattr(yamux_reads, "_original_read_stream", counting_stream)
    monkeypatch.setattr(yamux_reads, "_original_read_body", counting_body)
    yamux_reads.read_open_streams_directly()
    return counted


async def test_reads_of_an_open_stream_take_the_fast_paths_then_end_as_before(
    calls: dict[str, int],
) -> None:
    sent = [bytes([i % 251]) * (1 + i * 97 % 3000) for i in range(200)]
    got = bytearray()
    ended: list[str] = []
    finished = trio.Event()

    async def reader(stream: INetStream) -> None:
        try:
            while True:
                got.extend(await stream.read(777))  # reads cut across the writes
        except StreamEOF:
            ended.append("eof")
        finally:
            finished.set()

    async with AsyncExitStack() as stack:
        stream = await raw_pair(stack, reader)
        for chunk in sent:
            await stream.write(chunk)
        with trio.fail_after(WAIT):
            while len(got) < sum(map(len, sent)):
                await trio.sleep(0.01)
        open_calls = dict(calls)
        await stream.close()  # FIN: the reader's next read ends
        with trio.fail_after(WAIT):
            await finished.wait()
    assert bytes(got) == b"".join(sent)
    assert ended == ["eof"]
    assert open_calls["read_stream"] == 0  # while open, never py-libp2p's locked path
    assert open_calls["read_body"] < len(sent) // 10  # bodies came with their headers
    assert calls["read_stream"] >= 1  # the FIN: py-libp2p's method raised the EOF


@pytest.mark.parametrize("fast", [True, False], ids=["patched", "py-libp2p"])
async def test_a_reader_waiting_on_an_open_stream_ends_when_it_is_reset(
    fast: bool, calls: dict[str, int]
) -> None:
    """As py-libp2p 0.8.1 has it, a reader waiting when the stream is reset gets
    an EOF (the reset clears the stream's buffer first); the same with the patch."""
    if not fast:
        yamux_reads.read_streams_under_lock()
    outcome: list[str] = []
    finished = trio.Event()
    waiting = trio.Event()

    async def reader(stream: INetStream) -> None:
        try:
            assert await stream.read(10) == b"hello"
            waiting.set()
            await stream.read(10)  # blocks: no data, then the reset
        except StreamReset:
            outcome.append("reset")
        except StreamEOF:
            outcome.append("eof")
        finally:
            finished.set()

    async with AsyncExitStack() as stack:
        stream = await raw_pair(stack, reader)
        await stream.write(b"hello")
        with trio.fail_after(WAIT):
            await waiting.wait()
            await trio.sleep(0.05)  # the reader is waiting for data
            await stream.reset()
            await finished.wait()
    yamux_reads.read_open_streams_directly()
    assert outcome == ["eof"]
    assert calls["read_stream"] >= 1  # the reset state: py-libp2p's method decided
