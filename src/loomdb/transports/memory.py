"""An in-process network of named nodes with seeded loss, delay and partitions.

Most sync tests run on it: no sockets, no threads, and for a given seed and the
same sequence of requests the same frames are lost and delayed. It keeps the
rules of :mod:`loomdb.transports.base` as the socket transports do:

* a request goes ``src → dst``, its reply ``dst → src``; each direction is lost
  (``loss``, a probability) and delayed (``delay``, uniform between two bounds,
  in seconds) on its own;
* a lost request or reply, or one across a partition, is never seen: the
  caller waits out its time-out and gets ``TransportTimeoutError``;
* a name nobody serves is ``UnreachableError`` at once;
* frames over the limit are refused: the channel's limit before sending
  (and for replies), the server's limit on arrival (as an HTTP 413 would).

Randomness is drawn when a request starts — four draws, always, whatever the
settings — so the fates of requests depend only on the seed and on the order
in which requests start, not on how handlers interleave.

The handler runs in the caller's task (``await handler(frame)`` after the
delay). So, unlike a real server, a handler still running when the caller
times out is cancelled with it; a lost *reply* is lost after the handler
finished, as on a real network.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import anyio

from loomdb.errors import (
    AddressInUseError,
    FrameTooLargeError,
    TransportError,
    UnreachableError,
    ValidationError,
)
from loomdb.transports.base import DEFAULT_MAX_FRAME, FrameHandler, SerialChannel
from loomdb.transports.endpoint import check_frame_size

Delay = tuple[float, float]


@dataclass(slots=True)
class LinkCounters:
    """What went into one direction of one link (``src → dst``)."""

    frames: int = 0  # sent into the link, delivered or not
    bytes: int = 0
    dropped: int = 0  # lost or cut by a partition

    @property
    def delivered(self) -> int:
        return self.frames - self.dropped


@dataclass(slots=True)
class NetworkCounters:
    """Totals over the network; ``round_trips`` are replies that reached their caller."""

    requests_delivered: int = 0
    requests_dropped: int = 0
    replies_delivered: int = 0
    replies_dropped: int = 0
    links: dict[tuple[str, str], LinkCounters] = field(default_factory=dict)

    @property
    def round_trips(self) -> int:
        return self.replies_delivered

    def link(self, src: str, dst: str) -> LinkCounters:
        """The counters of ``src → dst`` (zeros for a link never used)."""
        return self.links.setdefault((src, dst), LinkCounters())


@dataclass(frozen=True, slots=True)
class _Conditions:
    loss: float
    delay: Delay


@dataclass(frozen=True, slots=True)
class _Fate:
    """What will happen to one request and its reply, drawn when it starts."""

    request_lost: bool
    request_delay: float
    reply_lost: bool
    reply_delay: float


@dataclass(frozen=True, slots=True)
class _Server:
    handler: FrameHandler
    max_frame: int


def _checked(loss: float, delay: Delay) -> _Conditions:
    if not 0.0 <= loss <= 1.0:
        raise ValidationError(f"loss must be between 0 and 1, not {loss}")
    low, high = delay
    if not 0.0 <= low <= high:
        raise ValidationError(f"delay must be (low, high) with 0 <= low <= high, not {delay}")
    return _Conditions(loss, (low, high))


class MemoryNetwork:
    """Named nodes in one process; see the module docstring for the rules."""

    def __init__(
        self,
        seed: int = 0,
        loss: float = 0.0,
        delay: Delay = (0.0, 0.0),
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self._default = _checked(loss, delay)
        self._random = random.Random(seed)
        self._max_frame = max_frame
        self._servers: dict[str, _Server] = {}
        self._groups: list[frozenset[str]] = []
        self._links: dict[tuple[str, str], _Conditions] = {}
        self.counters = NetworkCounters()

    # --- nodes ---------------------------------------------------------------------

    def serve(self, name: str, handler: FrameHandler, *, max_frame: int | None = None) -> None:
        """Answer requests to ``name`` with ``handler``; ``max_frame`` caps the requests
        it reads (default: the network's limit)."""
        if name in self._servers:
            raise AddressInUseError(f"{name!r} is already served on the memory network")
        self._servers[name] = _Server(handler, max_frame or self._max_frame)

    def stop(self, name: str) -> None:
        """Stop serving ``name``: later requests to it are ``UnreachableError``."""
        self._servers.pop(name, None)

    def channel(self, src: str, dst: str, *, max_frame: int | None = None) -> MemoryChannel:
        """A channel from ``src`` (any name, served or not) to the node ``dst``.

        ``dst`` need not be served yet: that is checked on each request."""
        return MemoryChannel(self, src, dst, max_frame or self._max_frame)

    # --- conditions ----------------------------------------------------------------

    def partition(self, *groups: set[str] | frozenset[str]) -> None:
        """Cut the network: two names can talk only if they are in the same group.

        Names in no group form one more group of their own, so ``partition({"a"})``
        cuts ``a`` off from everyone. Replaces any earlier partition."""
        seen: set[str] = set()
        for group in groups:
            if seen & group:
                raise ValidationError(f"{sorted(seen & group)} are in more than one group")
            seen |= group
        self._groups = [frozenset(g) for g in groups]

    def heal(self) -> None:
        """Undo :meth:`partition` (per-link loss and delay stay as set)."""
        self._groups = []

    def connected(self, a: str, b: str) -> bool:
        """Whether a frame from ``a`` to ``b`` crosses no partition."""
        return self._group_of(a) == self._group_of(b)

    def _group_of(self, name: str) -> int:
        return next((i for i, g in enumerate(self._groups) if name in g), -1)

    def set_link(
        self, src: str, dst: str, *, loss: float | None = None, delay: Delay | None = None
    ) -> None:
        """Override loss and/or delay for frames going ``src → dst`` (one direction)."""
        current = self._conditions(src, dst)
        self._links[(src, dst)] = _checked(
            current.loss if loss is None else loss, current.delay if delay is None else delay
        )

    def reset_links(self) -> None:
        """Every link back to the network's loss and delay."""
        self._links.clear()

    def _conditions(self, src: str, dst: str) -> _Conditions:
        return self._links.get((src, dst), self._default)

    # --- delivery --------------------------------------------------------------------

    def _draw(self, src: str, dst: str) -> _Fate:
        out, back = self._conditions(src, dst), self._conditions(dst, src)
        rng = self._random
        # Always four draws in this order, whatever the settings: the sequence of
        # fates then depends only on the seed and the order of requests.
        request_lost = rng.random() < out.loss
        request_delay = rng.uniform(*out.delay)
        reply_lost = rng.random() < back.loss
        reply_delay = rng.uniform(*back.delay)
        return _Fate(request_lost, request_delay, reply_lost, reply_delay)

    def _send(self, src: str, dst: str, frame: bytes, lost: bool) -> bool:
        """Count a frame into ``src → dst``; whether it arrives."""
        link = self.counters.link(src, dst)
        link.frames += 1
        link.bytes += len(frame)
        if lost or not self.connected(src, dst):
            link.dropped += 1
            return False
        return True

    async def _exchange(self, src: str, dst: str, frame: bytes, max_frame: int) -> bytes:
        """One request and its reply; waits forever for a lost frame (the caller's
        time-out ends the wait)."""
        server = self._servers.get(dst)
        if server is None:
            raise UnreachableError(f"nobody serves {dst!r} on the memory network")
        fate = self._draw(src, dst)
        await anyio.sleep(fate.request_delay)
        if not self._send(src, dst, frame, fate.request_lost):
            self.counters.requests_dropped += 1
            await anyio.sleep_forever()
        self.counters.requests_delivered += 1
        if len(frame) > server.max_frame:
            raise FrameTooLargeError(
                f"{dst!r} refused a request of {len(frame)} bytes "
                f"(its limit is {server.max_frame} bytes)"
            )
        try:
            reply = await server.handler(frame)
        except Exception as exc:  # a real server would answer 500 / close 1011
            raise TransportError(f"the handler of {dst!r} failed: {exc!r}") from exc
        await anyio.sleep(fate.reply_delay)
        if not self._send(dst, src, reply, fate.reply_lost):
            self.counters.replies_dropped += 1
            await anyio.sleep_forever()
        self.counters.replies_delivered += 1
        check_frame_size(reply, max_frame, "reply")
        return reply


class MemoryChannel(SerialChannel):
    """A :class:`~loomdb.transports.base.RequestChannel` on a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, src: str, dst: str, max_frame: int) -> None:
        super().__init__(repr(dst), max_frame)
        self._network = network
        self.src = src
        self.dst = dst

    async def _exchange(self, frame: bytes) -> bytes:
        return await self._network._exchange(self.src, self.dst, frame, self._max_frame)

    async def aclose(self) -> None:
        self._closed = True
