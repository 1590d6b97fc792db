"""Pull, push and sync between stores: in process and over the memory network.

Fast tests on the sans-IO core and the driver; the same protocol over real
sockets and real node processes is tested in tests/integration/test_sync_e2e.py.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from loomdb.entries.cid import CID
from loomdb.entries.entry import Entry
from loomdb.errors import (
    FrameTooLargeError,
    ProtocolError,
    ProtocolVersionError,
    RemoteError,
    TransportTimeoutError,
    ValidationError,
)
from loomdb.stores import MemoryStore, SQLiteStore
from loomdb.stores.base import ContentAddressedStore, SetKey
from loomdb.stores.caching import CachingStore
from loomdb.stores.remote import RemoteStore, near
from loomdb.stores.server import StoreServer
from loomdb.sync import replicate, wire
from loomdb.sync.replicate import (
    SyncProgress,
    SyncScope,
    pull_changes_from,
    push_changes_to,
    sync,
)
from loomdb.transports.memory import MemoryNetwork
from tests.support import EntryFactory

pytestmark = pytest.mark.anyio


async def cids_of(store: ContentAddressedStore) -> set[CID]:
    out: set[CID] = set()
    after = 0
    while batch := await store.scan(after, 1000):
        out.update(r.entry.cid for r in batch)
        after = batch[-1].seq
    return out


def docs(make: EntryFactory, n_docs: int, per_doc: int, **kw: Any) -> list[Entry]:
    out: list[Entry] = []
    for d in range(n_docs):
        out.extend(make.chain(per_doc, document=f"doc-{d}", **kw))
    return out


def serve(net: MemoryNetwork, name: str, store: ContentAddressedStore, **kw: Any) -> StoreServer:
    server = StoreServer(store, **kw)
    net.serve(name, server.handle)
    return server


def remote(net: MemoryNetwork, dst: str, **kw: Any) -> RemoteStore:
    kw.setdefault("timeout", 0.05)
    kw.setdefault("backoff", 0.001)
    return RemoteStore(net.channel("client", dst), **kw)


# --- between two local stores --------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_sync_two_stores_makes_them_equal(
    kind: str, tmp_path: Path, make_entry: EntryFactory
) -> None:
    def new(name: str) -> ContentAddressedStore:
        return MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / f"{name}.db")

    a, b = new("a"), new("b")
    shared = docs(make_entry, 3, 5)
    only_a = docs(make_entry, 2, 4, collection="tasks")
    only_b = make_entry.chain(7, document="doc-b")
    await a.put_entries(shared + only_a)
    await b.put_entries(shared + only_b)

    report = await sync(a, b, "space-1")
    assert report.pulled == len(only_b) and report.pushed == len(only_a)
    assert report.rejected == [] and report.duplicates == 0
    assert await cids_of(a) == await cids_of(b) == {e.cid for e in shared + only_a + only_b}

    again = await sync(a, b, "space-1")
    assert (again.pulled, again.pushed, again.rounds) == (0, 0, 1)
    await a.aclose()
    await b.aclose()


async def test_pull_and_push_move_one_way_only(make_entry: EntryFactory) -> None:
    a, b = MemoryStore(), MemoryStore()
    ea, eb = make_entry.chain(3, document="a"), make_entry.chain(4, document="b")
    await a.put_entries(ea)
    await b.put_entries(eb)
    pulled = await pull_changes_from(a, b, "space-1")
    assert (pulled.pulled, pulled.pushed, pulled.to_push) == (4, 0, 0)
    assert await b.count() == 4
    pushed = await push_changes_to(a, b, "space-1")
    assert (pushed.pulled, pushed.pushed) == (0, 3)
    assert await cids_of(a) == await cids_of(b)


async def test_scopes_sync_only_what_they_name(make_entry: EntryFactory) -> None:
    a, b = MemoryStore(), MemoryStore()
    notes = docs(make_entry, 2, 3, collection="notes")
    tasks = docs(make_entry, 2, 3, collection="tasks")
    other_space = make_entry.chain(2, space="space-2")
    await a.put_entries(notes + tasks + other_space)

    await pull_changes_from(b, a, SyncScope("space-1", collections=("tasks",)))
    assert await cids_of(b) == {e.cid for e in tasks}
    await pull_changes_from(b, a, SyncScope("space-1", documents=(("notes", "doc-1"),)))
    assert await cids_of(b) == {
        e.cid for e in tasks + notes if e.document == "doc-1" or e.collection == "tasks"
    }
    report = await pull_changes_from(b, a)  # every space
    assert await cids_of(b) == await cids_of(a)
    assert report.pulled == len(notes) // 2 + len(other_space)


async def test_scope_needs_a_space_for_collections() -> None:
    with pytest.raises(ValidationError):
        SyncScope(None, collections=("x",))


async def test_database_target_applies_documents(tmp_path: Path) -> None:
    from tests.doc_support import open_peers

    writer, reader = await open_peers(tmp_path, 2)
    try:
        notes = writer.collection("notes")
        await notes.create({"title": "hello"}, id="n1")
        await notes.update("n1", {"title": "hello, world"})
        report = await pull_changes_from(reader, writer, writer.space)
        assert report.pulled >= 2
        got = await reader.collection("notes").get("n1")
        assert got.value["title"] == "hello, world"
        # The next pull scans what the writer appended (no reconciliation), and the
        # reader's documents follow it as well.
        await notes.update("n1", {"title": "third"})
        await notes.create({"title": "new"}, id="n2")
        again = await pull_changes_from(reader, writer, writer.space)
        assert again.rounds == 0 and again.pulled == 2
        assert (await reader.collection("notes").get("n1")).value["title"] == "third"
        assert (await reader.collection("notes").get("n2")).value["title"] == "new"
    finally:
        await writer.aclose()
        await reader.aclose()


# --- over the memory network -----------------------------------------------------------


async def test_remote_sync_idle_resync_is_one_round_trip(make_entry: EntryFactory) -> None:
    net = MemoryNetwork(seed=1)
    server_store, local = MemoryStore(), MemoryStore()
    await server_store.put_entries(docs(make_entry, 4, 5))
    await local.put_entries(docs(make_entry, 1, 3, collection="mine"))
    serve(net, "server", server_store)
    rs = remote(net, "server")
    first = await sync(local, rs, "space-1")
    assert (first.pulled, first.pushed) == (20, 3)
    assert await cids_of(local) == await cids_of(server_store)

    before = rs.requests
    again = await sync(local, rs, "space-1")
    assert (again.pulled, again.pushed) == (0, 0)
    assert rs.requests - before == 1  # one request, one reply: nothing else


async def test_sync_survives_a_lossy_network(make_entry: EntryFactory) -> None:
    net = MemoryNetwork(seed=7, loss=0.2)
    origin, local = MemoryStore(), MemoryStore()
    entries = docs(make_entry, 10, 10)
    await origin.put_entries(entries)
    serve(net, "origin", origin)
    rs = remote(net, "origin", retries=20)
    report = await pull_changes_from(local, rs, "space-1", batch_size=7)
    assert report.pulled == len(entries)
    assert await cids_of(local) == {e.cid for e in entries}
    assert rs.requests > report.rounds  # some were repeated after losses


async def test_partition_times_out_then_resumes(make_entry: EntryFactory) -> None:
    net = MemoryNetwork(seed=3)
    origin, local = MemoryStore(), MemoryStore()
    entries = docs(make_entry, 5, 4)
    await origin.put_entries(entries)
    serve(net, "origin", origin)
    net.partition({"client"}, {"origin"})
    with pytest.raises(TransportTimeoutError):
        await pull_changes_from(local, remote(net, "origin", retries=2), "space-1")
    assert await local.count() == 0
    net.heal()
    report = await pull_changes_from(local, remote(net, "origin"), "space-1")
    assert report.pulled == len(entries)


async def test_cancel_midway_then_resume_loses_and_repeats_nothing(
    make_entry: EntryFactory,
) -> None:
    net = MemoryNetwork(seed=5)
    origin, local = MemoryStore(), MemoryStore()
    entries = docs(make_entry, 20, 5)
    await origin.put_entries(entries)
    serve(net, "origin", origin)
    seen: list[dict[str, Any]] = []

    with anyio.CancelScope() as scope:

        def stop_after_two_batches(p: SyncProgress) -> None:
            seen.append(p.as_dict())
            if p.phase == "transfer" and p.pulled >= 20:
                scope.cancel()

        await pull_changes_from(
            local, remote(net, "origin"), "space-1", batch_size=10, progress=stop_after_two_batches
        )
    assert scope.cancelled_caught
    got = await local.count()
    assert 20 <= got < len(entries)
    assert any(s["phase"] == "reconcile" for s in seen)

    rest = await pull_changes_from(local, remote(net, "origin"), "space-1", batch_size=10)
    assert rest.pulled == len(entries) - got
    assert rest.duplicates == 0
    assert await cids_of(local) == {e.cid for e in entries}


class TamperingStore(MemoryStore):
    """A hop that flips a byte in the entries it hands out."""

    def __init__(self, victims: set[CID]) -> None:
        super().__init__()
        self.victims = victims

    async def get_raw(self, cids: Sequence[CID]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for cid, entry in zip(cids, await self.get_entries(cids), strict=True):
            raw = None if entry is None else entry.raw
            if raw is not None and cid in self.victims:
                raw = raw[:-1] + bytes([raw[-1] ^ 1])  # the signature's last byte
            out.append(raw)
        return out


async def test_tampered_entries_are_refused_and_the_rest_kept(make_entry: EntryFactory) -> None:
    entries = docs(make_entry, 3, 4)
    victims = {entries[2].cid, entries[7].cid}
    hop = TamperingStore(victims)
    await hop.put_entries(entries)
    local = MemoryStore()
    report = await pull_changes_from(local, hop, "space-1", batch_size=5)
    assert {r.cid for r in report.rejected} == victims
    assert all("entry.cid_mismatch" in r.reason for r in report.rejected)
    assert await cids_of(local) == {e.cid for e in entries} - victims


async def test_passthrough_and_caching_chains(make_entry: EntryFactory) -> None:
    net = MemoryNetwork(seed=11)
    origin = MemoryStore()
    entries = docs(make_entry, 4, 5)
    await origin.put_entries(entries)
    origin_server = serve(net, "origin", origin)
    # passthrough: a server whose store is a proxy to the origin
    serve(net, "relay", RemoteStore(net.channel("relay", "origin"), timeout=1))
    via_relay = MemoryStore()
    await pull_changes_from(via_relay, remote(net, "relay"), "space-1")
    assert await cids_of(via_relay) == {e.cid for e in entries}

    # caching: the second identical read does not reach the origin
    cache = CachingStore(MemoryStore(), RemoteStore(net.channel("cache", "origin"), timeout=1))
    serve(net, "cache", cache)
    client = remote(net, "cache")
    wanted = [e.cid for e in entries[:6]]
    assert [e.cid for e in await client.get_entries(wanted) if e] == wanted
    gets = origin_server.requests["get"]
    assert [e.cid for e in await client.get_entries(wanted) if e] == wanted
    assert origin_server.requests["get"] == gets

    # and a client reconciling through the cache gets everything, from the cache
    fresh = MemoryStore()
    await pull_changes_from(fresh, client, "space-1")
    assert await cids_of(fresh) == {e.cid for e in entries}
    reconciles = origin_server.requests["reconcile"]
    await pull_changes_from(MemoryStore(), client, "space-1")
    assert origin_server.requests["reconcile"] == reconciles  # fresh enough: not asked


async def test_mesh_of_five_converges_in_random_pairwise_order(make_entry: EntryFactory) -> None:
    rng = random.Random(42)
    stores = [MemoryStore() for _ in range(5)]
    total: set[CID] = set()
    for i, store in enumerate(stores):
        own = docs(make_entry, 2, 3, collection=f"c{i}")
        shared = make_entry.chain(2, document=f"shared-{i}")
        await store.put_entries(own + shared)
        await stores[(i + 1) % 5].put_entries(shared)
        total |= {e.cid for e in own + shared}
    pairs = [(i, j) for i in range(5) for j in range(5) if i < j]
    rng.shuffle(pairs)
    for i, j in pairs:
        await sync(stores[i], stores[j], "space-1")
    for store in stores:
        assert await cids_of(store) == total
        assert await store.count() == len(total)  # each entry stored once


# --- the wire ------------------------------------------------------------------------


async def test_server_refuses_garbage_and_foreign_versions() -> None:
    server = StoreServer(MemoryStore())
    for junk in (b"", b"\x07abc", b"\x00\xff\xff", wire.pack([1, 2]), wire.pack({"v": 1})):
        with pytest.raises((ProtocolError, RemoteError)):
            wire.decode_reply(await server.handle(junk))
    with pytest.raises(ProtocolVersionError, match=r"\[1\]"):
        wire.decode_reply(await server.handle(wire.encode_request("count", {}, version=9)))
    too_many = {"cids": [bytes(36)] * 20_000}
    with pytest.raises(RemoteError) as info:
        wire.decode_reply(await server.handle(wire.encode_request("has", too_many)))
    assert info.value.remote_code == "sync.protocol"


async def test_frames_are_bounded_and_compressed_when_it_pays() -> None:
    body = {"ids": [bytes(32)] * 200}
    frame = wire.pack(body)
    assert frame[0] == wire.ZLIB and len(frame) < 2000
    assert wire.unpack(frame) == body
    noise = {"x": random.Random(1).randbytes(5000)}
    assert wire.pack(noise)[0] == wire.RAW
    with pytest.raises(FrameTooLargeError):
        wire.unpack(frame, max_frame=100)
    bomb = bytes([wire.ZLIB]) + __import__("zlib").compress(bytes(10_000_000))
    with pytest.raises(FrameTooLargeError):
        wire.unpack(bomb, max_frame=1_000_000)


async def test_a_client_may_ask_for_uncompressed_replies(make_entry: EntryFactory) -> None:
    server = StoreServer(MemoryStore())
    ids = {"cids": [bytes(36)] * 200}  # compressible, and not a valid CID: an error reply
    plain = wire.encode_request("has", ids, compress=False)
    assert plain[0] == wire.RAW and wire.decode_request(plain).compress_reply is False
    assert wire.decode_request(wire.encode_request("has", ids)).compress_reply is True
    with pytest.raises(ProtocolError, match="'z'"):
        wire.decode_request(wire.pack({"v": 1, "op": "count", "a": {}, "z": 1}))
    # A big, compressible reply: compressed unless the request said "z": false (a
    # server that predates the key ignores it: the reply is valid either way).
    store = MemoryStore()
    entries = make_entry.chain(50)
    await store.put_entries(entries)
    server = StoreServer(store)
    args = {"cids": [e.cid.binary for e in entries]}
    packed = await server.handle(wire.encode_request("get", args))
    raw = await server.handle(wire.encode_request("get", args, compress=False))
    assert packed[0] == wire.ZLIB and raw[0] == wire.RAW
    assert wire.decode_reply(packed) == wire.decode_reply(raw) == [e.raw for e in entries]


@pytest.mark.parametrize(
    ("url", "is_near"),
    [
        ("http://127.0.0.1:9170", True),
        ("ws://localhost:9170", True),
        ("http://[::1]:9170", True),
        ("http://192.168.1.20:9170", True),
        ("http://10.0.0.5", True),
        ("http://[fe80::1]:9170", True),
        ("https://93.184.216.34", False),
        ("https://sync.example.org", False),
    ],
)
def test_loopback_and_lan_nodes_are_near(url: str, is_near: bool) -> None:
    assert near(url) is is_near
    assert RemoteStore.connect(url).compress is not is_near
    assert RemoteStore.connect(url, compress=True).compress is True


async def test_remote_put_reports_each_result(make_entry: EntryFactory) -> None:
    net = MemoryNetwork()
    serve(net, "s", MemoryStore())
    rs = remote(net, "s")
    good = make_entry.chain(3)
    forged = good[1].raw[:-1] + bytes([good[1].raw[-1] ^ 1])
    results = await rs.put_entries([good[0], forged, (good[2].cid, good[0].raw), good[2]])
    assert [r.status.value for r in results] == ["accepted", "rejected", "rejected", "accepted"]
    assert results[1].error is not None and results[1].error.code == "entry.signature"
    assert results[2].error is not None and results[2].error.code == "entry.cid_mismatch"


async def test_set_key_checks() -> None:
    assert SetKey("s").kind == "space"
    assert SetKey("s", "c", "d").kind == "document"
    with pytest.raises(ValidationError):
        SetKey("s", None, "d")
    with pytest.raises(ValidationError):
        SetKey("")


class SetOnlyStore:
    """Just enough of a store for reconciliation: synthetic items, no entries."""

    def __init__(self, items: list[tuple[int, bytes]]) -> None:
        from loomdb.sync.ranges import MemoryRangeIndex

        self.index = MemoryRangeIndex(items)

    async def reconcile(self, requests: Sequence[Any]) -> list[Any]:
        from loomdb.sync.reconcile import reconcile_on

        return [reconcile_on(self.index, r) for r in requests]


async def test_an_empty_side_learns_a_large_set_in_few_rounds() -> None:
    # 64 rounds of 60 KB once capped this at ~120k ids; rounds are now bounded by progress.
    rng = random.Random(4)
    items = [(1_700_000_000 + i, rng.randbytes(32)) for i in range(150_000)]
    full, empty = SetOnlyStore(items), SetOnlyStore([])
    from loomdb.sync.replicate import reconcile

    state = SyncProgress()
    have, need = await reconcile(empty, full, [SetKey("s")], state)  # type: ignore[arg-type]
    assert have == [] and len(need) == len(items)
    assert state.rounds <= 8


# --- pulling what a remote appended, from a cursor ------------------------------------


async def test_a_second_pull_scans_what_the_remote_appended(
    make_entry: EntryFactory, tmp_path: Path
) -> None:
    net = MemoryNetwork(seed=2)
    server_store = MemoryStore()
    await server_store.put_entries(docs(make_entry, 3, 4))
    server = serve(net, "server", server_store)
    local = SQLiteStore(tmp_path / "local.db")
    try:
        first = await pull_changes_from(local, remote(net, "server"), "space-1")
        assert first.pulled == 12 and first.rounds >= 1
        new = make_entry.chain(5, document="new")
        await server_store.put_entries([*new, *make_entry.chain(3, space="space-2")])
        server.requests.clear()
        seen: list[str] = []
        again = await pull_changes_from(
            local, remote(net, "server"), "space-1", progress=lambda s: seen.append(s.phase)
        )
        assert (again.pulled, again.to_pull, again.rounds, again.rejected) == (5, 5, 0, [])
        assert set(server.requests) == {"head", "scan"}  # no reconciliation
        assert seen[0] == "transfer" and seen[-1] == "done"
        assert await local.has_entries([e.cid for e in new]) == [True] * 5
        assert await local.count() == 17  # space-2 was not pulled
        # Nothing new: one head and one empty scan, still no reconciliation.
        server.requests.clear()
        idle = await pull_changes_from(local, remote(net, "server"), "space-1")
        assert idle.pulled == 0 and set(server.requests) <= {"head", "scan"}
        # Another scope has its own cursor: it reconciles first.
        other = await pull_changes_from(
            local, remote(net, "server"), SyncScope("space-1", collections=("notes",))
        )
        assert other.rounds >= 1
    finally:
        await local.aclose()
    # The cursor is kept in the store: a reopened store still scans.
    reopened = SQLiteStore(tmp_path / "local.db")
    try:
        await server_store.put_entries([make_entry(b"later", document="later")])
        server.requests.clear()
        later = await pull_changes_from(reopened, remote(net, "server"), "space-1")
        assert later.pulled == 1 and "reconcile" not in server.requests
    finally:
        await reopened.aclose()


async def test_a_cursor_falls_back_to_reconciling(
    make_entry: EntryFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, a = MemoryStore(), MemoryStore()
    await a.put_entries(docs(make_entry, 2, 2))
    assert (await pull_changes_from(local, a, "space-1")).rounds >= 1
    # Many entries appended: reconciling moves fewer than a scan of all of them.
    monkeypatch.setattr(replicate, "CURSOR_MAX", 3)
    await a.put_entries(docs(make_entry, 2, 2, collection="more"))
    many = await pull_changes_from(local, a, "space-1")
    assert many.pulled == 4 and many.rounds >= 1
    # Another store (another epoch): its log is not the one the cursor is in.
    b = MemoryStore()
    await b.put_entries([make_entry(b"b")])
    other = await pull_changes_from(local, b, "space-1")
    assert other.pulled == 1 and other.rounds >= 1


async def test_a_bad_entry_appended_is_reported_and_pulled_again(
    make_entry: EntryFactory,
) -> None:
    local, a = MemoryStore(), MemoryStore()
    await a.put_entries([make_entry(b"first")])
    await pull_changes_from(local, a, "space-1")
    good, bad = make_entry(b"good", document="g"), make_entry(b"bad", document="b")
    damaged = bad.raw[:-1] + bytes((bad.raw[-1] ^ 1,))
    forged = dataclasses.replace(bad, raw=damaged, verified=False)
    a._log += [good, forged]  # a remote whose log holds a damaged entry
    report = await pull_changes_from(local, a, "space-1")
    assert report.pulled == 1 and [r.cid for r in report.rejected] == [CID.of(damaged)]
    assert report.rejected[0].reason.startswith("entry.")
    again = await pull_changes_from(local, a, "space-1")  # the cursor did not move past it
    assert len(again.rejected) == 1 and again.pulled == 0
