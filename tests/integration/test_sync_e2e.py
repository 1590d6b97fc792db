"""Store-to-store sync end to end: real ``loomdb start`` processes on 127.0.0.1,
real SQLite files, driven by ``loomdb client sync``, the sync API and the library.

Covers ACCEPTANCE.md S1-S8 (client-server, peer-to-peer, blind relay over HTTP
and HTTPS, store chain with cache, multi-hop, mesh, large stores, cancel and
resume) and a tampered entry pushed through relays.

Every wait is bounded (subprocess time-outs, ready lines, polls with a
deadline); every node is killed at teardown, whatever happened (``cluster``).
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing
from itertools import combinations
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest

from loomdb.documents import Database
from loomdb.entries import codec
from loomdb.entries.cid import CID
from loomdb.entries.entry import Entry, decode_entry
from loomdb.errors import LoomError, NotFoundError, RemoteError, SignatureError
from loomdb.identity.keys import NamedKey
from loomdb.stores import MemoryStore
from loomdb.stores.base import PutStatus, SetKey
from loomdb.stores.remote import RemoteStore
from loomdb.stores.sqlite import SQLiteStore
from loomdb.sync.reconcile import ReconcileRequest
from loomdb.sync.replicate import SyncProgress, pull_changes_from, sync
from loomdb.transports.http import HttpChannel
from tests.doc_support import all_entries, make_home
from tests.integration.nodes import (
    Node,
    Nodes,
    api_sync,
    client_sync,
    create_docs,
    documents,
    loomdb,
    node_env,
    nodes,
)
from tests.integration.proxy import Proxy
from tests.support import EntryFactory, fields_of
from tests.unit.test_sync_fingerprints import check_trees

pytestmark = pytest.mark.integration

T = TypeVar("T")
SPACE = "main"  # a full node's space
SOAK = os.environ.get("LOOMDB_SOAK") == "1"


# --- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> NamedKey:
    """A key every full node of this module is given and writes with, so they read
    each other's documents (each also has its own default key, unused here)."""
    return NamedKey.generate_fingerprinted("shared")


@pytest.fixture
def cluster() -> Iterator[Nodes]:
    """Starts nodes for one test and kills every one of them at teardown."""
    with nodes() as group:
        yield group


def full_home(path: Path, key: NamedKey) -> Path:
    make_home(path, key)
    return path


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn, backend="trio")


def stored_raws(store: Path) -> list[tuple[bytes, bytes]]:
    """Every ``(cid, raw)`` row of a store file, read with SQLite itself, read-only."""
    with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        return list(db.execute("SELECT cid, raw FROM entries"))


def stored_cids(store: Path) -> list[bytes]:
    return [cid for cid, _ in stored_raws(store)]


def assert_same_entries(*stores: Path) -> set[bytes]:
    """Every store holds the same CIDs, each once; that set."""
    sets = []
    for store in stores:
        cids = stored_cids(store)
        assert len(cids) == len(set(cids)), f"{store}: an entry is stored twice"
        sets.append(set(cids))
    assert all(s == sets[0] for s in sets), [len(s) for s in sets]
    return sets[0]


def stats(node: Node) -> dict[str, Any]:
    with node.http() as http:
        result: dict[str, Any] = http.get("/node").json()["stats"]
        return result


def marker_hits(root: Path, marker: str) -> list[str]:
    """Files under ``root`` holding ``marker`` (UTF-8 or UTF-16), by their raw bytes."""
    needles = [marker.encode(), marker.encode("utf-16-le"), marker.encode("utf-16-be")]
    return [
        str(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and any(n in path.read_bytes() for n in needles)
    ]


def assert_blind(relay: Node, marker: str) -> None:
    """The relay holds no key to read entries, and no plaintext in its files or log."""
    ring = json.loads((relay.home / "keyring.json").read_text())
    assert ring["encryption"] == "none"  # so the check below sees what it holds
    keys = ring["keys"]
    fields = {"node_key", "users", "default_user", "named_keys", "default_key", "other_keys"}
    assert set(keys) == fields
    assert keys["named_keys"] == keys["other_keys"] == [] and keys["default_key"] is None
    # Its one user identity signs it in to other nodes; nothing can be granted to it
    # without a directory listing it with a read role.
    assert [u["user_id"] for u in keys["users"]] == [keys["default_user"]]
    assert marker_hits(relay.home, marker) == []
    assert marker.encode() not in relay.log.read_bytes()


# --- S1 client-server ------------------------------------------------------------------


def test_s1_client_server_sync_then_an_idle_sync_costs_one_round_trip(
    cluster: Nodes, key: NamedKey, tmp_path: Path
) -> None:
    a = cluster.launch(full_home(tmp_path / "a", key))
    b = cluster.launch(full_home(tmp_path / "b", key))
    cluster.wait_ready()
    mine = {f"a{i}": {"by": "a", "i": i} for i in range(5)}
    theirs = {f"b{i}": {"by": "b", "i": i, "tags": ["x", i]} for i in range(5)}
    create_docs(a, "s1", list(mine.items()))
    create_docs(b, "s1", list(theirs.items()))

    first = client_sync(b.url, url=a.url)  # A is the client, B the server
    assert (first["to_pull"], first["to_push"]) == (5, 5)
    assert (first["pulled"], first["pushed"], first["rejected"]) == (5, 5, [])
    # each reads the other's documents through its API
    assert documents(a, "s1") == documents(b, "s1") == {**mine, **theirs}
    assert stats(a)["entries"] == stats(b)["entries"] == 10

    again = client_sync(b.url, "--transport", "http", url=a.url)
    assert again["rounds"] == 1
    assert (again["to_pull"], again["to_push"], again["pulled"], again["pushed"]) == (0, 0, 0, 0)

    # The same idle sync from the library, A's store against B over a WebSocket:
    # one request reaches B, and it is the whole sync.
    assert a.stop() == 0

    async def idle() -> tuple[SyncProgress, int, int]:
        async with SQLiteStore(a.store_path) as local, RemoteStore.connect(b.url) as remote:
            report = await sync(local, remote, SPACE)
            return report, remote.requests, remote.bytes_sent + remote.bytes_received

    report, requests, traffic = run(idle)
    assert (report.rounds, report.pulled, report.pushed, report.duplicates) == (1, 0, 0, 0)
    assert requests == 1
    assert traffic < 1024
    assert b.stop() == 0
    assert len(assert_same_entries(a.store_path, b.store_path)) == 10


# --- S2 peer-to-peer -------------------------------------------------------------------


def test_s2_two_peers_each_act_once_as_client_and_end_identical(
    cluster: Nodes, key: NamedKey, tmp_path: Path
) -> None:
    a = cluster.launch(full_home(tmp_path / "a", key))
    b = cluster.launch(full_home(tmp_path / "b", key))
    cluster.wait_ready()
    create_docs(a, "s2", [("a1", {"n": 1}), ("a2", {"n": 2})])
    create_docs(b, "s2", [("b1", {"n": 10})])

    report = client_sync(b.url, url=a.url)  # A asks B
    assert (report["pulled"], report["pushed"]) == (1, 2)

    # new writes on both sides, then B asks A
    create_docs(a, "s2", [("a3", {"n": 3})])
    with b.http() as http:
        r = http.patch("/collections/s2/docs/a1", json={"set": {"seen_by": "b"}})
        assert r.status_code == 200, r.text
    create_docs(b, "s2", [("b2", {"n": 20})])
    report = client_sync(a.url, url=b.url)
    assert (report["pulled"], report["pushed"], report["rejected"]) == (1, 2, [])

    expected = {
        "a1": {"n": 1, "seen_by": "b"},
        "a2": {"n": 2},
        "a3": {"n": 3},
        "b1": {"n": 10},
        "b2": {"n": 20},
    }
    assert documents(a, "s2") == documents(b, "s2") == expected
    with a.http() as ha, b.http() as hb:  # the same heads and history on both
        assert (
            ha.get("/collections/s2/docs/a1/history").json()
            == hb.get("/collections/s2/docs/a1/history").json()
        )
    assert cluster.stop_all(a, b) == [0, 0]
    assert len(assert_same_entries(a.store_path, b.store_path)) == 6


# --- S3 blind relay --------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_s3_a_blind_relay_carries_documents_it_cannot_read(
    cluster: Nodes, key: NamedKey, tmp_path: Path, tls: bool
) -> None:
    a = cluster.launch(full_home(tmp_path / "a", key))
    c = cluster.launch(full_home(tmp_path / "c", key))
    relay_args = ["--relay", *(["--self-signed-tls"] if tls else [])]
    r = cluster.launch(tmp_path / "relay", *relay_args, verbose=True)  # the relay makes its home
    cluster.wait_ready()
    assert r.url.startswith("https://" if tls else "http://")
    marker = f"MARKER-{secrets.token_hex(16)}"
    secret = {"text": f"the code is {marker}", "nested": {"list": [marker, 1]}}
    create_docs(a, "s3", [("secret", secret), ("plain", {"n": 1})])
    cafile = r.home / "tls" / "tls-cert.pem" if tls else None
    trust = ["--cafile", str(cafile)] if cafile else []
    if tls:
        # without trusting the relay's certificate: refused, with one clear line
        messages = {}
        for transport in ("ws", "http"):
            refused = loomdb("client", "sync", r.url, "--url", a.url, "--push",
                             "--transport", transport)  # fmt: skip
            assert refused.returncode == 7, (transport, refused.stdout, refused.stderr)
            assert "Traceback" not in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            assert f"cannot reach {r.url}" in refused.stderr
            messages[transport] = refused.stderr
        assert "certificate verify failed" in messages["ws"]
        assert stats(a)["entries"] == 2

    pushed = client_sync(r.url, "--push", *trust, url=a.url)
    assert (pushed["pushed"], pushed["rejected"]) == (2, [])
    pulled = client_sync(r.url, "--pull", *trust, url=c.url)
    assert (pulled["pulled"], pulled["rejected"]) == (2, [])
    assert documents(c, "s3") == {"secret": secret, "plain": {"n": 1}}

    with r.http(cafile) as http:  # a relay serves sync, not documents
        assert http.get("/node").json()["relay"] is True
        assert http.get("/collections").status_code == 404
    assert len(stored_cids(r.store_path)) == 2
    assert_blind(r, marker)  # while it runs (WAL and shared-memory files included)
    assert r.stop() == 0
    assert_blind(r, marker)  # and once it closed its store
    assert "GET /api/v0/sync" in r.stderr()  # -v: it did log, its access log included
    assert a.stop() == 0
    assert "POST /api/v0" not in a.stderr()  # no -v: no access log (nor its cost)
    # The search would have found the marker where it is in plaintext: C's views.
    assert marker_hits(c.home, marker)


# --- S4 store chain with a cache ---------------------------------------------------------


def test_s4_passthrough_and_caching_relays_answer_like_the_origin(
    cluster: Nodes, key: NamedKey, tmp_path: Path
) -> None:
    origin = cluster.start(full_home(tmp_path / "origin", key))
    create_docs(origin, "s4", [(f"d{i}", {"i": i, "s": "v" * i}) for i in range(20)])
    with origin.http() as http:
        for i in range(5):
            http.patch(f"/collections/s4/docs/d{i}", json={"set": {"edited": True}})
    passthrough = cluster.launch(tmp_path / "pass", "--relay", "--upstream", origin.url)
    cache = cluster.launch(tmp_path / "cache", "--relay", "--upstream", origin.url, "--cache")
    client = cluster.launch(full_home(tmp_path / "client", key))
    cluster.wait_ready()

    # a node pulling through the passthrough gets the origin's documents
    report = client_sync(passthrough.url, "--pull", url=client.url)
    assert (report["pulled"], report["rejected"]) == (25, [])
    assert documents(client, "s4") == documents(origin, "s4")

    async def through_each() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for name, node in (("origin", origin), ("pass", passthrough), ("cache", cache)):
            async with RemoteStore.connect(node.url) as remote:
                mirror = MemoryStore()
                pulled = await pull_changes_from(mirror, remote, SPACE)
                cids = sorted(r.entry.cid for r in await mirror.scan(0, 1000))
                seen[name] = (
                    pulled.pulled,
                    cids,
                    await remote.count(),
                    await remote.list_spaces(),
                    await remote.list_documents(SPACE, "s4"),
                    await remote.heads(SPACE, "s4", "d0"),
                )
        return seen

    seen = run(through_each)
    assert seen["pass"] == seen["origin"]
    assert seen["cache"] == seen["origin"]
    cids: list[CID] = seen["origin"][1]
    assert len(cids) == 25

    # The origin goes away: the cache still answers reads of what it served...
    assert origin.stop(signal.SIGKILL) == -signal.SIGKILL

    async def read(node: Node) -> list[Entry | None]:
        async with RemoteStore.connect(node.url, retries=0) as remote:
            first = await remote.get_entries(cids)
            assert first == await remote.get_entries(cids)  # and again
            return first

    entries = run(lambda: read(cache))
    assert [e.cid for e in entries if e is not None] == cids
    # ...while the passthrough, which keeps nothing, cannot
    with pytest.raises(RemoteError) as refused:
        run(lambda: read(passthrough))
    assert refused.value.remote_code.startswith("transport"), refused.value


def test_s4_a_passthrough_relay_carries_on_after_its_upstream_restarts(
    cluster: Nodes, tmp_path: Path
) -> None:
    origin = cluster.start(tmp_path / "origin", "--relay")
    passthrough = cluster.start(tmp_path / "pass", "--relay", "--upstream", origin.url)
    factory = EntryFactory()
    entries = [factory(b"x", document=f"d{i}") for i in range(3)]

    async def count(put: bool = False) -> int:
        async with RemoteStore.connect(passthrough.url, retries=0) as remote:
            if put:
                assert all(r.ok for r in await remote.put_entries(entries))
            return await remote.count()

    assert run(lambda: count(put=True)) == 3
    assert origin.stop(signal.SIGKILL) == -signal.SIGKILL  # a crash, or a graceful stop
    cluster.start(origin.home, "--relay", api=f"127.0.0.1:{origin.port}")  # same address
    assert run(count) == 3  # the passthrough's idle upstream connection was closed


# --- S5 multi-hop ------------------------------------------------------------------------


def test_s5_origin_regional_office_device_each_hop_pulls_the_previous(
    cluster: Nodes, key: NamedKey, tmp_path: Path
) -> None:
    origin = cluster.launch(full_home(tmp_path / "origin", key))
    regional = cluster.launch(tmp_path / "regional", "--relay")
    office = cluster.launch(tmp_path / "office", "--relay")
    device = cluster.launch(full_home(tmp_path / "device", key))
    cluster.wait_ready()
    create_docs(
        origin, "s5", [(f"d{i}", {"i": i, "body": {"$text": f"text {i}"}}) for i in range(30)]
    )
    with origin.http() as http:
        for i in range(0, 30, 3):
            edit = {"field": "body", "index": 0, "insert": ">"}
            r = http.post(f"/collections/s5/docs/d{i}/text", json=edit)
            assert r.status_code == 200, r.text
        assert http.delete("/collections/s5/docs/d29").status_code == 204
    total = stats(origin)["entries"]
    assert total == 30 + 10 + 1

    for source, target in ((origin, regional), (regional, office), (office, device)):
        report = client_sync(source.url, "--pull", url=target.url)
        assert (report["pulled"], report["duplicates"], report["rejected"]) == (total, 0, [])

    device_stats = stats(device)
    assert device_stats["entries"] == total
    assert device_stats["states"] == {"applied": total}  # every entry decrypted and applied
    assert documents(device, "s5") == documents(origin, "s5")
    with device.http() as http:
        assert http.get("/collections/s5/docs/d3").json()["value"]["body"] == ">text 3"
        assert http.get("/collections/s5/docs/d29").status_code == 404
    assert device.stop() == 0
    # what the device stored is what the origin signed: every CID and signature checks
    rows = stored_raws(device.store_path)
    assert len(rows) == total
    for cid, raw in rows:
        decode_entry(raw, expected_cid=CID(cid))
    assert origin.stop() == 0
    assert_same_entries(origin.store_path, regional.store_path, office.store_path,
                        device.store_path)  # fmt: skip


# --- S6 mesh -----------------------------------------------------------------------------

MESH_SEED = 6_2025


def test_s6_five_peers_sync_pairwise_in_random_order_and_converge(
    cluster: Nodes, key: NamedKey, tmp_path: Path
) -> None:
    peers = [cluster.launch(full_home(tmp_path / f"p{i}", key)) for i in range(5)]
    cluster.wait_ready()
    for i, peer in enumerate(peers):
        create_docs(peer, "s6", [(f"p{i}-{j}", {"peer": i, "j": j}) for j in range(3)])
        # every peer also creates the same document, concurrently: one merged value
        create_docs(peer, "s6", [("shared", {f"from{i}": i, "last": i})])

    rng = random.Random(MESH_SEED)
    pairs = list(combinations(range(5), 2))
    rng.shuffle(pairs)
    order = [(i, j) if rng.random() < 0.5 else (j, i) for i, j in pairs]
    # One pass over every pair converges: nobody writes during the pass, each pair
    # syncs both ways, and a peer always holds its own writes, so every peer gets
    # every other peer's writes straight from their writer (no relaying needed).
    # A second pass must therefore move nothing: it checks that, once converged,
    # the peers agree on the sets (one round each, nothing to transfer).
    moved = 0
    for client, server in order:
        report = api_sync(peers[client], peers[server].url)
        assert report["rejected"] == [], (client, server, report)
        moved += report["pulled"] + report["pushed"]
    assert moved == 5 * 4 * 4  # each peer received each other peer's 4 entries, once
    for client, server in order:
        report = api_sync(peers[client], peers[server].url)
        assert (report["pulled"], report["pushed"], report["rounds"]) == (0, 0, 1), (
            MESH_SEED,
            order,
            client,
            server,
        )

    values = [documents(peer, "s6") for peer in peers]
    assert all(v == values[0] for v in values), MESH_SEED
    assert len(values[0]) == 16
    shared = values[0]["shared"]
    assert {k: v for k, v in shared.items() if k != "last"} == {f"from{i}": i for i in range(5)}
    assert [stats(peer)["entries"] for peer in peers] == [20] * 5
    assert cluster.stop_all(*peers) == [0] * 5
    assert len(assert_same_entries(*(p.store_path for p in peers))) == 20


# --- S7 large stores ---------------------------------------------------------------------


def _fill(path: Path, entries: list[Entry], index: str | None = None) -> None:
    """Put ``entries`` into a store file (and build the fingerprint tree of the
    space ``index``, as a first reconciliation would)."""

    async def fill() -> None:
        async with SQLiteStore(path) as store:
            for start in range(0, len(entries), 10_000):
                await store.put_entries(entries[start : start + 10_000])
            if index is not None:
                await store.reconcile([ReconcileRequest(SetKey(index))])

    run(fill)


def _large_reconcile(cluster: Nodes, tmp_path: Path, n: int, max_bytes: int) -> int:
    """A node's store of ``n`` entries and a local one that differ by 100 (60 only
    on the node, 40 only here) reconcile over a WebSocket; the reconcile bytes."""
    factory = EntryFactory()
    space = "space-1"  # the factory's
    entries = [factory(b"p" * 32, document=f"doc-{i % 5000}") for i in range(n + 40)]
    common, only_remote, only_local = entries[: n - 60], entries[n - 60 : n], entries[n:]
    # Both stores are written before the node starts: the common part once, then
    # copied (a closed store is one file), then each side's own entries.
    relay_home = tmp_path / "relay"
    relay_home.mkdir()
    _fill(relay_home / "store.db", common, index=space)
    assert not (relay_home / "store.db-wal").exists()  # all in the one file
    shutil.copyfile(relay_home / "store.db", tmp_path / "local.db")
    _fill(relay_home / "store.db", only_remote)
    relay = cluster.launch(relay_home, "--relay")
    _fill(tmp_path / "local.db", only_local)
    cluster.wait_ready()

    async def reconcile() -> tuple[SyncProgress, int, int]:
        reconciled: list[int] = []
        async with (
            SQLiteStore(tmp_path / "local.db") as local,
            RemoteStore.connect(relay.url) as remote,
        ):

            def progress(state: SyncProgress) -> None:
                if state.phase == "transfer" and not reconciled:
                    reconciled.append(remote.bytes_sent + remote.bytes_received)

            report = await sync(local, remote, space, progress=progress)
            assert await local.count() == await remote.count() == n + 40
            assert all(await local.has_entries([e.cid for e in only_remote]))
            assert all(await remote.has_entries([e.cid for e in only_local]))
            return report, reconciled[0], remote.bytes_sent + remote.bytes_received

    report, reconcile_bytes, total_bytes = run(reconcile)
    assert (report.to_pull, report.to_push) == (60, 40)
    assert (report.pulled, report.pushed, report.duplicates, report.missing) == (60, 40, 0, 0)
    assert report.rejected == []
    id_list = 32 * n
    assert reconcile_bytes < max_bytes, (reconcile_bytes, id_list, report.rounds)
    # the transfer moved the 100 entries, not the stores
    entry_bytes = sum(len(e.raw) for e in entries[n - 60 :])
    assert total_bytes - reconcile_bytes < 2 * entry_bytes + 4096
    return reconcile_bytes


def test_s7_large_stores_reconcile_with_a_few_kilobytes(cluster: Nodes, tmp_path: Path) -> None:
    n = 20_000
    assert _large_reconcile(cluster, tmp_path, n, max_bytes=20_000) < 32 * n // 30


@pytest.mark.slow
def test_s7_soak_larger_stores_reconcile_with_a_few_kilobytes(
    cluster: Nodes, tmp_path: Path
) -> None:
    """200,000 entries with LOOMDB_SOAK=1; a bounded size otherwise (the benchmark
    covers 1,000,000)."""
    n = 200_000 if SOAK else 40_000
    _large_reconcile(cluster, tmp_path, n, max_bytes=40_000)


# --- S8 cancel and resume ------------------------------------------------------------------

S8_DOCS = 5_000


def _prefill_documents(home: Path, key: NamedKey, n: int) -> None:
    async def fill() -> None:
        async with await Database.open(make_home(home, key)) as db:
            await db.collection("s8").create_many(
                [{"i": i, "pad": "x" * 40} for i in range(n)], ids=[f"d{i}" for i in range(n)]
            )

    run(fill)


def _read_until(proc: subprocess.Popen[bytes], pattern: bytes, timeout: float) -> bytes:
    """Read ``proc``'s stderr until ``pattern`` shows (bounded); what was read."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    out = b""
    deadline = time.monotonic() + timeout
    while re.search(pattern, out) is None:
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern!r} in {timeout} s: {out!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            assert chunk, f"the client exited first: {out!r}"
            out += chunk
    return out


def _poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def test_s8_a_sync_interrupted_midway_resumes_without_loss_or_repeats(
    cluster: Nodes, key: NamedKey, tmp_path: Path
) -> None:
    _prefill_documents(tmp_path / "source", key, S8_DOCS)
    source = cluster.launch(tmp_path / "source")
    target = cluster.launch(full_home(tmp_path / "target", key), verbose=True)  # access log
    cluster.wait_ready()
    assert stats(source)["entries"] == S8_DOCS

    # The source is reached through a proxy that stalls once half of the entries'
    # bytes have passed: the sync cannot finish before it is interrupted, however
    # slow the machine. Progress lines go to stderr (not a tty: one line per update).
    budget = sum(len(raw) for _, raw in stored_raws(source.store_path)) // 2
    with Proxy(source.port, budget=budget, mode="stall") as proxy:
        client = subprocess.Popen(
            [sys.executable, "-m", "loomdb", "client", "sync", proxy.url, "--url", target.url,
             "--pull"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=node_env(),
        )  # fmt: skip
        try:
            progress = _read_until(client, rb"\] \d+/5000 entries", timeout=60)  # transferring
            assert proxy.tripped.wait(60), "the transfer did not reach the proxy's budget"
            _poll(lambda: stats(target)["entries"] > 0, 60, "a first batch to land")
            client.send_signal(signal.SIGINT)
            _, rest = client.communicate(timeout=30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(timeout=15)
        assert client.returncode == 130, rest
        assert b"interrupted" in rest
        assert b"Traceback" not in progress + rest
        assert b"reconciling" in progress  # progress was reported: the rounds...
        bar = rb"\] \d+/5000 entries \(pulled \d+, pushed 0\)"
        assert re.search(bar, progress + rest)  # ...and the bar

        # The node logs this once the job has ended, a batch being stored with it
        # (not its access line: Hypercorn writes that as soon as the connection
        # closes, before the app even hears of it, while a batch may still land).
        _poll(lambda: f"sync with {proxy.url} stopped" in target.stderr(), 30, "the sync to stop")
        stored = stats(target)["entries"]
    assert 0 < stored < S8_DOCS, stored  # midway: some batches, not all
    assert stored % 1000 == 0  # whole batches only

    report = client_sync(source.url, "--pull", url=target.url)
    assert report["to_pull"] == S8_DOCS - stored  # acknowledged work is not repeated
    assert (report["pulled"], report["duplicates"], report["rejected"]) == (
        S8_DOCS - stored,
        0,
        [],
    )
    assert stats(target) == {
        "entries": S8_DOCS,
        "collections": 1,
        "states": {"applied": S8_DOCS},
    }
    with target.http() as http:
        got = http.get("/collections/s8/docs", params={"limit": 1000, "offset": 2000}).json()
        assert got["count"] == S8_DOCS
        assert all(d["value"] == {"i": int(d["id"][1:]), "pad": "x" * 40} for d in got["documents"])
    assert cluster.stop_all(target, source) == [0, 0]
    assert len(assert_same_entries(source.store_path, target.store_path)) == S8_DOCS
    # The pulls indexed what they stored: the trees equal a build from scratch.
    check_trees(target.store_path, tmp_path)


# --- refused entries through relays ------------------------------------------------------


def _tampered(entry: Entry) -> bytes:
    """``entry`` with one bit of its signature flipped: well formed, badly signed."""
    fields = fields_of(entry)
    signature = bytearray(fields["signature"])
    signature[10] ^= 0x01
    header = codec.encode_header({k: fields[k] for k in codec.HEADER_FIELDS})
    return codec.entry_bytes(codec.signed_bytes(header, fields["payload"]), bytes(signature))


def test_a_tampered_entry_pushed_through_relays_is_refused_and_the_rest_kept(
    cluster: Nodes, tmp_path: Path
) -> None:
    store = cluster.start(tmp_path / "store", "--relay")
    hop = cluster.start(tmp_path / "hop", "--relay", "--upstream", store.url)
    factory = EntryFactory()
    good1, victim, good2 = factory(b"one"), factory(b"two"), factory(b"three")
    tampered = _tampered(victim)
    with pytest.raises(SignatureError):
        decode_entry(tampered)
    malformed = b"\xa1\x61x\x01"  # CBOR, but not an entry

    async def push() -> list[Any]:
        out: list[Any] = []
        for transport in ("ws", "http"):
            async with RemoteStore.connect(hop.url, transport=transport) as remote:
                results = await remote.put_entries([good1, tampered, malformed, good2])
                out.append([(r.status, r.error and r.error.code, r.reason) for r in results])
        async with RemoteStore.connect(store.url) as direct:
            out.append(await direct.count())
            out.append(await direct.get_entries([good1.cid, CID.of(tampered), good2.cid]))
        return out

    via_ws, via_http, count, held = run(push)
    assert [s for s, _, _ in via_ws] == [
        PutStatus.ACCEPTED,
        PutStatus.REJECTED,
        PutStatus.REJECTED,
        PutStatus.ACCEPTED,
    ]
    assert via_ws[1][1] == "entry.signature"
    assert "signature" in via_ws[1][2]
    assert via_ws[2][1] == "entry.malformed"
    # again over HTTP: the good ones are known, the bad ones refused again
    assert [s for s, _, _ in via_http] == [
        PutStatus.DUPLICATE,
        PutStatus.REJECTED,
        PutStatus.REJECTED,
        PutStatus.DUPLICATE,
    ]
    assert via_http[1][1] == "entry.signature"
    assert count == 2
    assert [e and e.raw for e in held] == [good1.raw, None, good2.raw]


# --- TLS certificates of --self-signed-tls -----------------------------------------------


def test_a_self_signed_certificate_is_kept_across_restarts(cluster: Nodes, tmp_path: Path) -> None:
    """Clients trust the file they were given: a restart must not replace it."""
    home = tmp_path / "relay"
    first = cluster.start(home, "--relay", "--self-signed-tls")
    cert = home / "tls" / "tls-cert.pem"
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(cert.read_bytes())
    assert first.stop() == 0
    second = cluster.start(home, "--relay", "--self-signed-tls")
    assert cert.read_bytes() == trusted.read_bytes()

    async def hello() -> dict[str, Any]:
        async with RemoteStore.connect(second.url, verify=str(trusted), retries=0) as remote:
            return await remote.hello()

    assert run(hello)["relay"] is True


def test_an_untrusted_certificate_over_http_is_named_in_the_error(
    cluster: Nodes, tmp_path: Path
) -> None:
    relay = cluster.start(tmp_path / "relay", "--relay", "--self-signed-tls")

    async def untrusted() -> str:
        channel = HttpChannel(relay.url)
        try:
            await channel.request(b"x", timeout=20)
        except LoomError as exc:
            return exc.message
        finally:
            await channel.aclose()
        raise AssertionError("an untrusted certificate was accepted")

    assert "certificate verify failed" in run(untrusted)


# --- a cancelled batch and the documents of a full node -------------------------------


class _CancelOnCatchUp:
    """A store that cancels ``scope`` when the database starts catching up (scan),
    i.e. right after a batch was stored: where a cancelled sync can stop."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.scope: anyio.CancelScope | None = None

    async def scan(self, after: int = 0, limit: int = 1000) -> Any:
        if self.scope is not None:
            self.scope.cancel()
            self.scope = None
            await anyio.lowlevel.checkpoint()
        return await self.inner.scan(after, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_documents_of_a_batch_stored_before_a_cancel_are_readable(
    key: NamedKey, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with await Database.open(make_home(tmp_path / "src", key)) as src:
            await src.collection("c").create({"v": 1}, id="doc")
            entries = await all_entries(src)
        home = make_home(tmp_path / "dst", key)
        store = _CancelOnCatchUp(home.open_store())
        async with await Database.open(home, store=store) as dst:
            with anyio.CancelScope() as scope:
                store.scope = scope
                await dst.put_entries(entries)
                await anyio.lowlevel.checkpoint()  # a cancel deferred by a shield lands here
            assert scope.cancelled_caught
            assert await dst.store.count() == len(entries)  # the batch landed...
            # ...and a resumed sync finds nothing to transfer, so nothing applies it
            try:
                doc = await dst.collection("c").get("doc")
            except NotFoundError:
                raise AssertionError("the stored document is not readable") from None
            assert doc.value == {"v": 1}

    run(scenario)
