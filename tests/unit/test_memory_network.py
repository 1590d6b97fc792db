"""The memory network's own promises: seeded loss, delay, partitions, counters.

(That it is a RequestChannel like the others is the conformance suite's job:
tests/conformance/test_channels.py.)
"""

from __future__ import annotations

import time

import anyio
import pytest

from loomdb.errors import (
    AddressInUseError,
    TransportError,
    TransportTimeoutError,
    UnreachableError,
    ValidationError,
)
from loomdb.transports.memory import MemoryNetwork

pytestmark = pytest.mark.anyio

LOST = 0.02  # time-out for requests expected to be lost: they wait it out
WAIT = 10.0


async def echo(frame: bytes) -> bytes:
    return b"re:" + frame


async def outcomes(network: MemoryNetwork, n: int) -> list[bool]:
    """Send ``n`` requests client → node; which got a reply."""
    channel = network.channel("client", "node")
    got: list[bool] = []
    for i in range(n):
        try:
            assert await channel.request(b"%d" % i, timeout=LOST) == b"re:%d" % i
            got.append(True)
        except TransportTimeoutError:
            got.append(False)
    return got


def lossy(seed: int) -> MemoryNetwork:
    network = MemoryNetwork(seed=seed, loss=0.4)
    network.serve("node", echo)
    return network


async def test_the_same_seed_loses_the_same_frames() -> None:
    first = await outcomes(lossy(7), 30)
    again = await outcomes(lossy(7), 30)
    other = await outcomes(lossy(8), 30)
    assert first == again
    assert first != other
    assert 0 < first.count(False) < 30  # each way loses 40 %: some lost, some not


async def test_counters_account_for_every_frame_of_a_lossy_run() -> None:
    network = lossy(3)
    got = await outcomes(network, 30)
    c = network.counters
    out, back = c.link("client", "node"), c.link("node", "client")
    assert c.round_trips == got.count(True) == c.replies_delivered
    assert c.requests_delivered + c.requests_dropped == 30 == out.frames
    assert out.dropped == c.requests_dropped
    assert back.frames == c.requests_delivered  # every delivered request was answered
    assert back.dropped == c.replies_dropped
    assert c.requests_dropped > 0
    assert c.replies_dropped > 0  # both directions lose frames, independently


async def test_counters_count_frames_and_bytes_per_direction() -> None:
    network = MemoryNetwork()
    network.serve("node", echo)
    channel = network.channel("client", "node")
    for frame in (b"", b"ab", b"abcd"):
        await channel.request(frame, timeout=WAIT)
    c = network.counters
    assert c.round_trips == 3
    assert (c.link("client", "node").frames, c.link("client", "node").bytes) == (3, 6)
    assert (c.link("node", "client").frames, c.link("node", "client").bytes) == (3, 6 + 9)
    assert c.link("node", "client").delivered == 3
    assert c.link("node", "elsewhere").frames == 0


async def test_a_lost_request_never_reaches_the_handler_a_lost_reply_does() -> None:
    calls: list[bytes] = []

    async def record(frame: bytes) -> bytes:
        calls.append(frame)
        return frame

    network = MemoryNetwork()
    network.serve("node", record)
    channel = network.channel("client", "node")

    network.set_link("client", "node", loss=1.0)
    with pytest.raises(TransportTimeoutError):
        await channel.request(b"one", timeout=LOST)
    assert calls == []
    assert network.counters.requests_dropped == 1

    network.reset_links()
    network.set_link("node", "client", loss=1.0)
    with pytest.raises(TransportTimeoutError):
        await channel.request(b"two", timeout=LOST)
    assert calls == [b"two"]  # applied, but the caller never hears of it
    assert network.counters.replies_dropped == 1

    network.reset_links()
    assert await channel.request(b"three", timeout=WAIT) == b"three"


async def test_partitions_cut_links_until_healed() -> None:
    network = MemoryNetwork()
    for name in ("a", "b", "c", "d"):
        network.serve(name, echo)
    network.partition({"a", "b"}, {"c"})
    assert network.connected("a", "b")
    assert not network.connected("a", "c")
    assert await network.channel("a", "b").request(b"x", timeout=WAIT) == b"re:x"
    with pytest.raises(TransportTimeoutError):
        await network.channel("a", "c").request(b"x", timeout=LOST)
    # Names in no group ("client", "d") are a group of their own.
    with pytest.raises(TransportTimeoutError):
        await network.channel("client", "c").request(b"x", timeout=LOST)
    assert await network.channel("client", "d").request(b"x", timeout=WAIT) == b"re:x"
    network.heal()
    assert await network.channel("a", "c").request(b"x", timeout=WAIT) == b"re:x"
    with pytest.raises(ValidationError):
        network.partition({"a", "b"}, {"b"})


async def test_delay_holds_each_direction_and_can_outlast_the_time_out() -> None:
    network = MemoryNetwork(delay=(0.05, 0.05))
    network.serve("node", echo)
    channel = network.channel("client", "node")
    started = time.monotonic()
    assert await channel.request(b"x", timeout=WAIT) == b"re:x"
    assert time.monotonic() - started >= 0.1  # there and back
    with pytest.raises(TransportTimeoutError):
        await channel.request(b"x", timeout=0.07)
    network.set_link("client", "node", delay=(0.0, 0.0))
    network.set_link("node", "client", delay=(0.0, 0.0))
    with anyio.fail_after(0.09):  # under the 0.1 s the delays took
        assert await channel.request(b"y", timeout=WAIT) == b"re:y"


async def test_names_nobody_serves_are_unreachable() -> None:
    network = MemoryNetwork()
    channel = network.channel("client", "node")  # fine before the node is up
    with pytest.raises(UnreachableError):
        await channel.request(b"x", timeout=WAIT)
    network.serve("node", echo)
    assert await channel.request(b"x", timeout=WAIT) == b"re:x"
    with pytest.raises(AddressInUseError):
        network.serve("node", echo)
    network.stop("node")
    with pytest.raises(UnreachableError):
        await channel.request(b"x", timeout=WAIT)


async def test_a_failing_handler_is_a_transport_error() -> None:
    async def broken(frame: bytes) -> bytes:
        raise RuntimeError("bug")

    network = MemoryNetwork()
    network.serve("node", broken)
    with pytest.raises(TransportError, match="bug"):
        await network.channel("client", "node").request(b"x", timeout=WAIT)


def test_settings_are_checked() -> None:
    with pytest.raises(ValidationError):
        MemoryNetwork(loss=1.5)
    with pytest.raises(ValidationError):
        MemoryNetwork(delay=(0.2, 0.1))
    with pytest.raises(ValidationError):
        MemoryNetwork().set_link("a", "b", loss=-0.1)
