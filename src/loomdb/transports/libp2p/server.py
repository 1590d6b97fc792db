"""The server side of ``/loomdb/sync/1.0.0``: one stream, many request frames, each
answered by the node's frame handler in turn.

A request over ``max_frame`` is refused unread: the server says so (``CLOSE``
1009), reads and drops the rest of it, up to :func:`drain_limit` bytes, so that
the client, still writing, gets to read the refusal (as HTTP does with a 413),
then ends the stream. Anything that is not a frame ends the stream with 1003; a
handler that raises (it should answer errors as frames) with 1011. A stream
that sends nothing for ``idle_timeout`` seconds is closed; a frame must arrive
whole within ``frame_timeout`` seconds of its header.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Final

import anyio

from loomdb.errors import TransportError
from loomdb.transports.base import DEFAULT_MAX_FRAME, FrameHandler, describe
from loomdb.transports.libp2p.framing import (
    CLOSE_INTERNAL,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    FRAME,
    BufferedReader,
    ByteStream,
    encode_close,
    encode_message,
    read_exact,
    read_header,
)
from loomdb.transports.libp2p.stream import STREAM_ERRORS, SyncStream, end_stream, write_all

log = logging.getLogger("loomdb.p2p")

DEFAULT_IDLE_TIMEOUT: Final = 600.0
DEFAULT_FRAME_TIMEOUT: Final = 120.0
_DRAIN_CHUNK: Final = 256 * 1024


def drain_limit(max_frame: int) -> int:
    """How much of a refused request is read and dropped (HTTP's rule: 16 MiB, or
    twice a larger limit); beyond that the stream is reset at once."""
    return max(16 * 1024 * 1024, 2 * max_frame)


@dataclass
class ServerCounters:
    """What the node's sync streams did, for ``p2p info``."""

    streams: int = 0
    frames: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def refuse(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1


async def serve_sync_stream(
    stream: SyncStream,
    handler: FrameHandler,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
    counters: ServerCounters | None = None,
    peer: str = "a peer",
) -> None:
    """Answer request frames on ``stream`` until it ends; never raises for what the
    peer or the network does."""
    counters = counters if counters is not None else ServerCounters()
    counters.streams += 1
    reader = BufferedReader(stream)
    reset = False
    try:
        while True:
            header = None
            with anyio.move_on_after(idle_timeout):
                header = await read_header(reader)
            if header is None:
                return  # the client is done, or was idle for too long
            kind, length = header
            if kind != FRAME:
                counters.refuse("not_a_frame")
                await write_all(stream, encode_close(CLOSE_UNSUPPORTED, "expected a frame"))
                return
            if length > max_frame:
                counters.refuse("too_large")
                reason = f"request of {length} bytes is over the limit of {max_frame} bytes"
                await write_all(stream, encode_close(CLOSE_TOO_BIG, reason))
                reset = not await _drain(reader, length, max_frame, frame_timeout)
                return
            with anyio.fail_after(frame_timeout):
                frame = await read_exact(reader, length)
            counters.frames += 1
            counters.bytes_in += length
            try:
                reply = await handler(frame)
            except Exception:
                log.exception("the sync handler failed on a frame from %s", peer)
                counters.refuse("handler_failed")
                await write_all(stream, encode_close(CLOSE_INTERNAL, "the handler failed"))
                return
            await write_all(stream, encode_message(FRAME, reply))
            counters.bytes_out += len(reply)
    except TimeoutError:
        log.info("sync stream from %s: a frame did not arrive in %s s", peer, frame_timeout)
        reset = True
    except (TransportError, *STREAM_ERRORS) as exc:
        log.debug("sync stream from %s ended: %s", peer, describe(exc))
        reset = True
    finally:
        await end_stream(stream, reset=reset)


async def _drain(stream: ByteStream, length: int, max_frame: int, timeout: float) -> bool:
    """Read and drop ``length`` bytes if they are few enough; whether it did."""
    if length > drain_limit(max_frame):
        return False
    with anyio.move_on_after(timeout):
        left = length
        while left:
            left -= len(await read_exact(stream, min(left, _DRAIN_CHUNK)))
        return True
    return False
