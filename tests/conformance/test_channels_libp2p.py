"""The RequestChannel conformance suite over libp2p (``/loomdb/sync/1.0.0``).

The same tests as ``test_channels.py`` (imported from it), with a harness of
real libp2p hosts on 127.0.0.1 — Noise, Yamux, TCP — on trio only: py-libp2p
runs on nothing else. The main server host reads frames up to ``MAX``, a second
host only up to ``SMALL``; channels go from a third, the client host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from loomdb.identity.keys import SigningKey
from loomdb.transports.base import RequestChannel
from loomdb.transports.libp2p import P2PHost
from loomdb.transports.tls import Verify
from tests.conformance.test_channels import (
    MAX,
    SMALL,
    WAIT,
    Service,
    free_port,
    test_a_closed_channel_refuses_requests,
    test_a_stalled_handler_times_out_and_its_late_reply_is_never_taken,
    test_an_oversize_frame_is_refused_unsent,
    test_an_oversize_reply_is_refused_and_the_channel_recovers,
    test_concurrent_users_on_separate_channels,
    test_errors_are_loom_errors_only,
    test_is_a_request_channel,
    test_many_requests_on_one_channel,
    test_nobody_listening_is_unreachable,
    test_one_channel_carries_one_request_at_a_time,
    test_round_trips_empty_small_and_large_frames_up_to_the_limit,
    test_the_server_refuses_a_frame_over_its_own_limit,
)

__all__ = [  # the suite's tests, collected here with this module's harness
    "test_a_closed_channel_refuses_requests",
    "test_a_stalled_handler_times_out_and_its_late_reply_is_never_taken",
    "test_an_oversize_frame_is_refused_unsent",
    "test_an_oversize_reply_is_refused_and_the_channel_recovers",
    "test_concurrent_users_on_separate_channels",
    "test_errors_are_loom_errors_only",
    "test_is_a_request_channel",
    "test_many_requests_on_one_channel",
    "test_nobody_listening_is_unreachable",
    "test_one_channel_carries_one_request_at_a_time",
    "test_round_trips_empty_small_and_large_frames_up_to_the_limit",
    "test_the_server_refuses_a_frame_over_its_own_limit",
]

pytestmark = pytest.mark.anyio

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


class Libp2pHarness:
    """Channels from the client host to the main and the small server hosts."""

    kind = "libp2p"

    def __init__(self, service: Service, client: P2PHost, main: str, small: str) -> None:
        self.service = service
        self.client = client
        self.main = main  # the servers' multiaddrs, /p2p/… included
        self.small = small
        self.opened: list[RequestChannel] = []

    def channel(
        self, *, small: bool = False, max_frame: int = MAX, verify: Verify | None = None
    ) -> RequestChannel:
        target = self.small if small else self.main
        return self._keep(self.client.channel(target, max_frame=max_frame, connect_timeout=WAIT))

    def unreachable(self) -> RequestChannel:
        nobody = SigningKey.generate()
        from loomdb.identity.peer_id import peer_id_from_public_key

        addr = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{peer_id_from_public_key(nobody.public_key)}"
        return self._keep(self.client.channel(addr, connect_timeout=WAIT))

    def _keep(self, channel: RequestChannel) -> RequestChannel:
        self.opened.append(channel)
        return channel

    async def aclose(self) -> None:
        for channel in self.opened:
            await channel.aclose()


@pytest.fixture
async def harness() -> AsyncIterator[Libp2pHarness]:
    service = Service()
    main = P2PHost(SigningKey.generate(), LOOPBACK, max_frame=MAX)
    small = P2PHost(SigningKey.generate(), LOOPBACK, max_frame=SMALL)
    client = P2PHost(SigningKey.generate(), LOOPBACK)
    for server in (main, small):
        server.serve_sync(lambda peer: service)
    async with AsyncExitStack() as stack:
        for host in (main, small, client):
            await stack.enter_async_context(host.run())
        channels = Libp2pHarness(service, client, main.listen_addrs()[0], small.listen_addrs()[0])
        try:
            yield channels
        finally:
            await channels.aclose()
            service.release.set()  # a stalled handler must not hold the host's shutdown
