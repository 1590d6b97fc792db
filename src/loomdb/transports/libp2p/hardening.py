"""Two py-libp2p 0.8.1 faults that let one stream take a node down, fixed process-wide.

**A protocol handler's exception stops the host.** ``BasicHost._swarm_stream_handler``
awaits the handler bare: an exception goes up through the connection's nursery to
the swarm and to the host's service, and the daemon exits. Gossipsub's reader raises
``DecodeError`` on an RPC that does not parse, so any peer could stop any node with
one bad frame. :func:`contain_handler_errors` wraps the method: the stream is reset,
the failure logged at WARNING (peer, protocol, error) and counted
(:data:`HANDLER_ERRORS`), and the node stays up.

**Writes on one Yamux stream interleave.** ``YamuxStream.write`` holds its lock per
frame: a write longer than a frame (64 KiB) or than the send window goes out in
pieces, and another task writing to the same stream slips its frames between them.
Gossipsub writes a peer's stream both from its send queue and directly (pending
messages flushed, recent messages sent on a graft), so the receiver reads a length
prefix followed by another message's bytes. Seen between two loomdb nodes under load
(``bench/p2p.py --gossip-only``, 4 subscribers: three nodes stopped on a pubsub
``DecodeError`` in 1 run of 4). :func:`atomic_stream_writes` gives each stream one
lock held over a whole ``write``, so one write's bytes are contiguous on the wire.

:func:`harden` applies both (idempotent); the node's host calls it when it is built.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Final

import trio
from libp2p.host.basic_host import BasicHost
from libp2p.stream_muxer.yamux.yamux import YamuxStream

logger = logging.getLogger(__name__)

HANDLER_ERRORS: Final[Counter[str]] = Counter()
"""Inbound streams whose protocol handler raised, by protocol (process-wide)."""

_original_handler = BasicHost._swarm_stream_handler
_original_write = YamuxStream.write
_LOCK: Final = "_loomdb_write_lock"


async def _contained_handler(self: Any, net_stream: Any) -> None:
    try:
        await _original_handler(self, net_stream)
    except Exception as error:  # one stream's fault is not the node's
        protocol = str(net_stream.get_protocol() or "?")
        HANDLER_ERRORS[protocol] += 1
        peer = getattr(getattr(net_stream, "muxed_conn", None), "peer_id", "?")
        logger.warning(
            "stream %s from peer %s failed, reset: %s: %s",
            protocol,
            peer,
            type(error).__name__,
            error,
        )
        try:
            await net_stream.reset()
        except Exception:  # already gone
            logger.debug("reset after a handler error failed", exc_info=True)


async def _atomic_write(self: Any, data: bytes) -> None:
    lock: trio.Lock | None = self.__dict__.get(_LOCK)
    if lock is None:
        lock = trio.Lock()
        setattr(self, _LOCK, lock)
    if lock.locked():
        await lock.acquire()
    else:
        lock.acquire_nowait()  # no checkpoint: the uncontended write costs nothing more
    try:
        await _original_write(self, data)
    finally:
        lock.release()


def contain_handler_errors() -> None:
    """See the module doc (idempotent)."""
    BasicHost._swarm_stream_handler = _contained_handler  # type: ignore[method-assign]


def atomic_stream_writes() -> None:
    """See the module doc (idempotent)."""
    YamuxStream.write = _atomic_write  # type: ignore[method-assign]


def harden() -> None:
    """Both fixes of the module doc (idempotent)."""
    contain_handler_errors()
    atomic_stream_writes()


def unharden_for_tests() -> None:
    """py-libp2p's own behaviour back (tests showing the faults only)."""
    BasicHost._swarm_stream_handler = _original_handler  # type: ignore[method-assign]
    YamuxStream.write = _original_write  # type: ignore[method-assign]
