"""What the client and the server of ``/loomdb/sync/1.0.0`` do the same way on a
libp2p stream: write a message without corrupting the connection, end a stream,
and translate the library's errors.

**Writes are never cancelled half-way.** A stream's bytes go, Noise-encrypted,
over the one TCP connection every stream to that peer shares: a write cancelled
in the middle of an encrypted record leaves the peer a record that does not
authenticate, and the whole connection dies (seen: "Failed authentication of
message"). So a message is written in chunks, each one shielded from
cancellation; a cancel (a time-out) takes effect between chunks. A chunk waits
at most for Yamux's own bound on a full window (5 s in py-libp2p 0.8.1).
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

import anyio
import trio
from libp2p.exceptions import BaseLibp2pError

from loomdb.transports.base import describe
from loomdb.transports.libp2p.framing import ByteStream

log = logging.getLogger("loomdb.p2p")

WRITE_CHUNK: Final = 64 * 1024
CLOSE_GRACE: Final = 1.0  # seconds an ending stream may take to say so

STREAM_ERRORS: Final = (
    BaseLibp2pError,  # stream reset, closed, muxer and swarm errors
    OSError,
    EOFError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)
"""What a libp2p stream or dial may raise; translated once, in the channel and server."""


class SyncStream(ByteStream, Protocol):
    """A libp2p ``INetStream`` as this package uses it."""

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


async def write_all(stream: ByteStream, data: bytes) -> None:
    """Write ``data``; a cancel lands between chunks, never inside one."""
    view = memoryview(data)
    for start in range(0, len(data), WRITE_CHUNK):
        with anyio.CancelScope(shield=True):
            await stream.write(bytes(view[start : start + WRITE_CHUNK]))
        await anyio.lowlevel.checkpoint_if_cancelled()


async def end_stream(stream: SyncStream, *, reset: bool) -> None:
    """Close (``reset`` False: the peer reads what was sent, then the end) or reset
    ``stream``, whatever state it is in; never raises, never waits long."""
    with anyio.move_on_after(CLOSE_GRACE, shield=True):
        try:
            if reset:
                await stream.reset()
            else:
                await stream.close()
        except STREAM_ERRORS as exc:
            log.debug("ending a sync stream: %s", describe(exc))
