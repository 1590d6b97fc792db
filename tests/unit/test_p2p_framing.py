"""The framing of ``/loomdb/sync/1.0.0`` and its server loop, over an in-memory stream
that cuts reads wherever it likes (libp2p streams return partial chunks)."""

from __future__ import annotations

import random

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loomdb.errors import TransportError
from loomdb.transports.libp2p.framing import (
    CLOSE,
    CLOSE_INTERNAL,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    FRAME,
    BufferedReader,
    decode_close,
    encode_close,
    encode_message,
    encode_varint,
    read_exact,
    read_header,
)
from loomdb.transports.libp2p.server import ServerCounters, drain_limit, serve_sync_stream

pytestmark = pytest.mark.anyio


class ChoppyStream:
    """Reads return 1..n bytes of what is buffered, at random; writes are recorded.
    ``eof``: a read past the end returns b"" (or raises EOFError with ``raise_eof``)."""

    def __init__(
        self, data: bytes = b"", *, seed: int = 0, raise_eof: bool = False, whole: bool = False
    ) -> None:
        self.buffer = bytearray(data)
        self.whole = whole  # every read returns all it may
        self.reads = 0
        self.random = random.Random(seed)
        self.raise_eof = raise_eof
        self.written = bytearray()
        self.read_bytes = 0
        self.closed = False
        self.was_reset = False

    async def read(self, n: int | None = None) -> bytes:
        await anyio.lowlevel.checkpoint()
        self.reads += 1
        if not self.buffer:
            if self.raise_eof:
                raise EOFError
            return b""
        most = len(self.buffer) if n is None else min(n, len(self.buffer))
        take = most if self.whole else self.random.randint(1, most)
        chunk = bytes(self.buffer[:take])
        del self.buffer[:take]
        self.read_bytes += take
        return chunk

    async def write(self, data: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        self.written += data

    async def close(self) -> None:
        self.closed = True

    async def reset(self) -> None:
        self.was_reset = True


async def messages(data: bytes) -> list[tuple[int, bytes]]:
    """Parse what a server wrote."""
    stream = ChoppyStream(data)
    out = []
    while (header := await read_header(stream)) is not None:
        out.append((header[0], await read_exact(stream, header[1])))
    return out


@given(st.integers(min_value=0, max_value=2**63 - 1), st.integers(0, 2**32))
def test_a_header_reads_back_however_the_stream_cuts_it(length: int, seed: int) -> None:
    async def check() -> tuple[int, int] | None:
        return await read_header(ChoppyStream(bytes([FRAME]) + encode_varint(length), seed=seed))

    assert anyio.run(check) == (FRAME, length)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("raise_eof", [False, True])
async def test_messages_read_back_whole_from_partial_reads(seed: int, raise_eof: bool) -> None:
    frames = [b"", b"a", bytes(range(256)) * 300, b"\x00" * 70_000]
    stream = ChoppyStream(
        b"".join(encode_message(FRAME, f) for f in frames), seed=seed, raise_eof=raise_eof
    )
    got = []
    while (header := await read_header(stream)) is not None:
        kind, length = header
        assert kind == FRAME
        got.append(await read_exact(stream, length))
    assert got == frames


async def read_message(stream: ChoppyStream) -> bytes:
    header = await read_header(stream)
    assert header is not None
    return await read_exact(stream, header[1])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("chunk", [1, 7, 64 * 1024])
async def test_a_buffered_reader_gives_the_same_messages_with_fewer_reads(
    seed: int, chunk: int
) -> None:
    frames = [b"", b"a", b"hello" * 3, bytes(range(256)) * 300, b"z"]
    data = b"".join(encode_message(FRAME, f) for f in frames)
    stream = ChoppyStream(data, seed=seed)
    reader = BufferedReader(stream, chunk=chunk)
    got = []
    while (header := await read_header(reader)) is not None:
        got.append(await read_exact(reader, header[1]))
    assert got == frames
    assert stream.read_bytes == len(data)  # nothing read past the end, nothing lost


async def test_a_buffered_reader_keeps_what_it_read_ahead() -> None:
    stream = ChoppyStream(encode_message(FRAME, b"one") + encode_message(FRAME, b"two"), whole=True)
    reader = BufferedReader(stream)
    for expected in (b"one", b"two"):
        header = await read_header(reader)
        assert header == (FRAME, len(expected))
        assert await read_exact(reader, header[1]) == expected
    assert stream.reads == 1  # one read of the stream for both messages
    assert await read_header(reader) is None


@pytest.mark.parametrize("raise_eof", [False, True])
async def test_a_stream_that_ends_inside_a_message_is_a_transport_error(raise_eof: bool) -> None:
    whole = encode_message(FRAME, b"x" * 1000)
    for cut in (1, 2, 500):  # inside the length, inside the payload
        stream = ChoppyStream(whole[:cut], raise_eof=raise_eof)
        with pytest.raises(TransportError):
            await read_message(stream)


@pytest.mark.parametrize(
    "data",
    [
        bytes([7, 1, 0]),  # unknown kind
        bytes([FRAME]) + b"\xff" * 10,  # a length of more than 9 bytes
        bytes([FRAME, 0x80, 0x00]),  # not the shortest encoding
    ],
)
async def test_a_bad_header_is_a_transport_error(data: bytes) -> None:
    with pytest.raises(TransportError):
        await read_header(ChoppyStream(data))


async def test_a_close_carries_a_code_and_a_reason_cut_to_fit() -> None:
    [(kind, payload)] = await messages(encode_close(CLOSE_TOO_BIG, "é" * 200))
    assert kind == CLOSE
    code, reason = decode_close(payload)
    assert code == CLOSE_TOO_BIG
    assert len(reason.encode()) <= 123
    assert set(reason) == {"é"}  # cut on a character boundary
    with pytest.raises(TransportError):
        decode_close(b"\x03")


async def echo(frame: bytes) -> bytes:
    return frame[::-1]


@pytest.mark.parametrize("seed", range(3))
async def test_the_server_answers_each_frame_in_turn(seed: int) -> None:
    frames = [b"one", b"", b"three" * 1000]
    stream = ChoppyStream(b"".join(encode_message(FRAME, f) for f in frames), seed=seed)
    counters = ServerCounters()
    await serve_sync_stream(stream, echo, max_frame=10_000, counters=counters)
    assert await messages(bytes(stream.written)) == [(FRAME, f[::-1]) for f in frames]
    assert (counters.streams, counters.frames) == (1, 3)
    assert stream.closed and not stream.was_reset


async def test_the_server_refuses_an_oversize_frame_unread_and_drains_it() -> None:
    called = []

    async def handler(frame: bytes) -> bytes:
        called.append(frame)
        return b""

    body = b"y" * 5000
    stream = ChoppyStream(encode_message(FRAME, body) + encode_message(FRAME, b"later"))
    counters = ServerCounters()
    await serve_sync_stream(stream, handler, max_frame=4096, counters=counters)
    assert called == []  # neither the big frame nor what follows it was handled
    [(kind, payload)] = await messages(bytes(stream.written))
    assert kind == CLOSE and decode_close(payload)[0] == CLOSE_TOO_BIG
    assert counters.refused == {"too_large": 1}
    assert stream.closed and not stream.was_reset  # drained: the client hears the refusal


async def test_a_frame_too_big_to_drain_resets_the_stream() -> None:
    length = drain_limit(4096) + 1
    stream = ChoppyStream(bytes([FRAME]) + encode_varint(length) + b"z" * 100)
    await serve_sync_stream(stream, echo, max_frame=4096)
    assert stream.read_bytes < 200  # the declared size was never read
    [(_, payload)] = await messages(bytes(stream.written))
    assert decode_close(payload)[0] == CLOSE_TOO_BIG
    assert stream.was_reset


async def test_the_server_ends_a_stream_that_is_not_frames_or_whose_handler_fails() -> None:
    stream = ChoppyStream(encode_close(1000, "bye"))
    await serve_sync_stream(stream, echo)
    assert decode_close((await messages(bytes(stream.written)))[0][1])[0] == CLOSE_UNSUPPORTED

    async def broken(frame: bytes) -> bytes:
        raise RuntimeError("a bug")

    stream = ChoppyStream(encode_message(FRAME, b"x"))
    await serve_sync_stream(stream, broken)
    assert decode_close((await messages(bytes(stream.written)))[0][1])[0] == CLOSE_INTERNAL


async def test_the_server_resets_a_stream_cut_inside_a_frame() -> None:
    stream = ChoppyStream(encode_message(FRAME, b"x" * 100)[:50])
    await serve_sync_stream(stream, echo)
    assert stream.written == b"" and stream.was_reset


async def test_an_idle_stream_is_closed() -> None:
    class Silent(ChoppyStream):
        async def read(self, n: int | None = None) -> bytes:
            await anyio.sleep_forever()
            raise AssertionError

    stream = Silent()
    with anyio.fail_after(5):
        await serve_sync_stream(stream, echo, idle_timeout=0.05)
    assert stream.closed
