"""How a sync fails: the error that comes out of a transfer whose link is lost,
and the events ``POST /api/v0/sync/run`` streams for every kind of failure.

In process, over the memory network; the same with real node processes, a
proxy that cuts the connection and the CLI is in
tests/integration/test_sync_failures_e2e.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import httpx
import pytest

from loomdb.api import create_app
from loomdb.api.sync_run import Connect, sync_run_route
from loomdb.errors import StoreError, UnreachableError
from loomdb.stores import MemoryStore
from loomdb.stores.base import PutResult
from loomdb.stores.remote import RemoteStore
from loomdb.stores.server import StoreServer
from loomdb.sync.replicate import DEFAULT_BATCH, SyncProgress, pull_changes_from
from loomdb.transports.memory import MemoryNetwork
from tests.support import EntryFactory

pytestmark = pytest.mark.anyio

BATCH = 10
ENTRIES = 10 * BATCH


def remote(net: MemoryNetwork) -> RemoteStore:
    return RemoteStore(net.channel("client", "origin"), timeout=1.0, retries=2, backoff=0.0)


async def filled(make_entry: EntryFactory, net: MemoryNetwork, n: int = ENTRIES) -> None:
    """Serve "origin" on ``net``, holding ``n`` entries."""
    origin = MemoryStore()
    net.serve("origin", StoreServer(origin).handle)
    await origin.put_entries([make_entry(b"%d" % i, document=f"d{i}") for i in range(n)])


# --- the library --------------------------------------------------------------------


async def test_a_link_lost_mid_transfer_raises_its_transport_error_not_a_group(
    make_entry: EntryFactory,
) -> None:
    net = MemoryNetwork(seed=1)
    await filled(make_entry, net)
    local = MemoryStore()

    def lose_the_link_after_the_first_batch(state: SyncProgress) -> None:
        if state.pulled >= BATCH:
            net.stop("origin")

    with pytest.raises(UnreachableError) as raised:
        await pull_changes_from(
            local,
            remote(net),
            "space-1",
            batch_size=BATCH,
            progress=lose_the_link_after_the_first_batch,
        )
    assert "origin" in raised.value.message
    stored = await local.count()
    assert BATCH <= stored < ENTRIES  # whole batches landed before the loss
    assert stored % BATCH == 0


class BrokenStore(MemoryStore):
    """A store whose write number ``at`` raises ``error``."""

    def __init__(self, error: Exception, at: int = 2) -> None:
        super().__init__()
        self.error = error
        self.at = at
        self.writes = 0

    async def put_entries(self, entries: Any) -> list[PutResult]:
        self.writes += 1
        if self.writes == self.at:
            raise self.error
        return await super().put_entries(entries)


async def test_a_store_error_in_a_transfer_comes_out_as_itself(make_entry: EntryFactory) -> None:
    net = MemoryNetwork(seed=2)
    await filled(make_entry, net)
    with pytest.raises(StoreError, match="disk full"):
        await pull_changes_from(
            BrokenStore(StoreError("disk full")), remote(net), "space-1", batch_size=BATCH
        )


# --- the sync/run route -------------------------------------------------------------


async def run_events(local: object, connect: Connect, **body: Any) -> list[dict[str, Any]]:
    app = create_app(None, extra_routes=[sync_run_route(local, "space-1", connect)])
    transport = httpx.ASGITransport(app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://node.test") as client:
        response = await client.post(
            "/api/v0/sync/run", json={"remote": "http://remote.test:9", **body}
        )
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def connect_to(net: MemoryNetwork) -> Connect:
    async def connect(body: dict[str, Any]) -> RemoteStore:
        return remote(net)

    return connect


async def test_a_lost_link_is_an_error_event_naming_the_remote(
    make_entry: EntryFactory, caplog: pytest.LogCaptureFixture
) -> None:
    net = MemoryNetwork(seed=3)
    await filled(make_entry, net, 4 * DEFAULT_BATCH)  # the route's batches: 4

    class LosesTheLink(MemoryStore):
        async def put_entries(self, entries: Any) -> list[PutResult]:
            net.stop("origin")  # while the next batch is being fetched
            return await super().put_entries(entries)

    with caplog.at_level(logging.INFO, "loomdb.api.sync_run"):
        events = await run_events(LosesTheLink(), connect_to(net), direction="pull")
    final = events[-1]
    assert final["event"] == "error", events
    assert final["error"]["code"] == UnreachableError.code
    assert final["error"]["remote"] == "http://remote.test:9"
    assert "the connection to the remote http://remote.test:9 failed" in final["error"]["message"]
    assert all(e["event"] == "progress" for e in events[:-1])
    logged = [r for r in caplog.records if r.name == "loomdb.api.sync_run"]
    assert [r.levelno for r in logged] == [logging.WARNING]
    assert "transport.unreachable" in logged[0].getMessage()
    assert logged[0].exc_info is None  # one line, no traceback


@pytest.mark.parametrize("where", ["connect", "transfer"])
async def test_a_bug_in_the_job_is_an_internal_error_event_logged_once(
    make_entry: EntryFactory, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    net = MemoryNetwork(seed=4)
    await filled(make_entry, net)
    local: MemoryStore = MemoryStore()
    connect = connect_to(net)
    if where == "connect":

        async def connect(body: dict[str, Any]) -> RemoteStore:
            raise RuntimeError("bug in connect")

    else:
        local = BrokenStore(RuntimeError("bug in the store"), at=1)  # in the task group

    with caplog.at_level(logging.INFO, "loomdb.api.sync_run"):
        events = await run_events(local, connect, direction="pull")
    assert events[-1] == {
        "event": "error",
        "error": {"code": "internal", "message": "internal error (see the node's log)"},
    }
    logged = [r for r in caplog.records if r.name == "loomdb.api.sync_run"]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR
    assert logged[0].exc_info is not None  # a bug: its traceback, once
    assert "bug in" in repr(logged[0].exc_info[1])


async def test_a_sync_that_succeeds_ends_with_done_and_one_log_line(
    make_entry: EntryFactory, caplog: pytest.LogCaptureFixture
) -> None:
    net = MemoryNetwork(seed=5)
    await filled(make_entry, net)
    local = MemoryStore()
    with caplog.at_level(logging.INFO, "loomdb.api.sync_run"):
        events = await run_events(local, connect_to(net))
    assert events[-1]["event"] == "done"
    assert events[-1]["pulled"] == ENTRIES
    logged = [r.getMessage() for r in caplog.records if r.name == "loomdb.api.sync_run"]
    assert logged == [
        f"sync with http://remote.test:9 done: pulled {ENTRIES}, pushed 0, rejected 0"
    ]


async def test_a_malformed_peer_id_is_refused_before_the_sync() -> None:
    async def connect(body: dict[str, Any]) -> RemoteStore:
        raise AssertionError("a refused request opens no remote")

    app = create_app(None, extra_routes=[sync_run_route(MemoryStore(), "space-1", connect)])
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node.test") as client:
        response = await client.post(
            "/api/v0/sync/run", json={"remote": "http://remote.test:9", "peer_id": "12D3nope"}
        )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation"


async def test_a_client_gone_as_an_asgi_2_4_server_reports_it_stops_the_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Servers of ASGI 2.4 report a gone client as a failing write (Starlette turns it
    into ClientDisconnect): the job is cancelled and awaited, the request ends quietly."""

    async def connect(body: dict[str, Any]) -> RemoteStore:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    app = create_app(None, extra_routes=[sync_run_route(MemoryStore(), "space-1", connect)])
    body = json.dumps({"remote": "http://remote.test:9"}).encode()
    incoming = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            raise OSError("the client went away")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v0/sync/run",
        "raw_path": b"/api/v0/sync/run",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"node.test"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("node.test", 80),
    }
    with caplog.at_level(logging.INFO, "loomdb.api.sync_run"), anyio.fail_after(5):
        await app(scope, receive, send)
    logged = [r.getMessage() for r in caplog.records if r.name == "loomdb.api.sync_run"]
    assert logged == [
        "sync with http://remote.test:9 stopped: the client went away (pulled 0, pushed 0)"
    ]
