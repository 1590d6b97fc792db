"""Yamux credit at half the window (``loomdb.transports.libp2p.yamux_credit``): two
real hosts on 127.0.0.1 pass many small frames and a few large ones over one
stream, both ways, with few window updates — and a transfer many times the
window never stalls."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
from libp2p.stream_muxer.yamux.yamux import YamuxStream

from loomdb.identity.keys import SigningKey
from loomdb.transports.libp2p import P2PHost
from loomdb.transports.libp2p.yamux_credit import credit_at_half_window, credit_on_every_read

pytestmark = pytest.mark.anyio
WAIT = 20.0


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.fixture
def updates(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The increments of every window update sent in this process."""
    sent: list[int] = []
    original = YamuxStream.send_window_update

    async def counting(self: Any, increment: int, skip_lock: bool = False) -> None:
        sent.append(increment)
        await original(self, increment, skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counting)
    return sent


async def exchange(small: int, large: int, size: int) -> None:
    a = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
    b = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)

    async def echo(frame: bytes) -> bytes:
        return frame

    async with AsyncExitStack() as stack:
        for host in (a, b):
            await stack.enter_async_context(host.run())
        b.serve_sync(lambda peer: echo)
        channel = a.peer_channel(b.listen_addrs()[0])
        with trio.fail_after(WAIT):
            for i in range(small):
                assert await channel.request(i.to_bytes(4, "big"), timeout=WAIT) == i.to_bytes(
                    4, "big"
                )
            for i in range(large):
                frame = bytes([i]) * size
                assert await channel.request(frame, timeout=WAIT) == frame
        await channel.aclose()


async def test_small_frames_cost_few_window_updates_and_large_ones_never_stall(
    updates: list[int],
) -> None:
    credit_at_half_window()
    await exchange(small=300, large=6, size=600_000)  # 3.6 MB each way: ~14 windows
    assert len(updates) < 100, len(updates)
    assert min(updates) >= 128 * 1024  # only ever half a window or more


async def test_py_libp2ps_own_rule_sends_an_update_per_read(
    updates: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOMDB_YAMUX_CREDIT_EVERY_READ", "1")  # a host's start keeps it
    credit_on_every_read()
    try:
        await exchange(small=300, large=0, size=0)
    finally:
        credit_at_half_window()
    assert len(updates) > 300  # what the patch saves
