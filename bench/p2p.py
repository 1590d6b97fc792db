#!/usr/bin/env python3
"""libp2p benchmark: the sync protocol over ``/loomdb/sync/1.0.0`` against WebSocket.

    python bench/p2p.py [--entries 20000] [--round-trips 2000] [--reps 3] [--out PATH]

One relay node (``loomdb start --relay --p2p-addr /ip4/127.0.0.1/tcp/0``, its store
prefilled with N signed, encrypted entries: bench/sync.py's cached workload) serves
both transports; this process is the client, on trio (py-libp2p is trio-only):

* round trips/s on one long-lived connection: ``hello`` requests, one after the
  other, over a ``WebSocketChannel`` and over a ``Libp2pChannel`` (one stream);
* the same over libp2p when every request opens a new stream (what a channel per
  request would cost);
* bulk pull: ``pull_changes_from`` of every entry into a fresh SQLiteStore (every
  entry verified), over ``RemoteStore.connect(url)`` and over
  ``RemoteStore(host.channel(multiaddr))``: wall time and entries/s.

Loopback, 2 shared cores: the node and this process compete for them, as in
bench/sync.py. Prints a table; writes JSON (meta, every rep) to ``--out``.

``--replicator-docs N`` (default 5000; 0: skip) adds the replicator case, with full
nodes (``loomdb start``, libp2p on 127.0.0.1), fresh ones each rep:

* A holds N documents (one entry each, written by ``docs:batch``); a replicator
  A→B is set: the **backfill** (push reconciliation over libp2p) until B has stored
  all N (A's ``GET /p2p/replicators`` says ``pushed``), in entries/s;
* **live**: A writes N more, 1,000 a request, while the replicator pushes each
  batch as it lands: entries/s from the first write to B holding the last, and the
  **catch-up** after the last write was acknowledged;
* **latency**: 50 single writes (``POST …/docs``), each timed until A's replicator
  says the peer stored it (polled every 5 ms);
* for comparison, ``client sync --push`` of the same entries into a fresh node
  (``POST /sync/run``): over HTTP POST, over WebSocket, and over libp2p.

**Head exchange** between equal stores (the relay's and a copy of it, N entries):
a pull of the space and of its collection, on a new connection (dial, Noise,
stream, one reconciliation) and on an open one: ms and round trips.

``--head-exchange-entries N`` (default 2,000; 0: skip): head exchange on connect
between two full nodes whose homes hold bench/sync.py's cached stores (N entries,
and N minus 100), both following their collection: (a) equal, (b) 100 differ. B
dials A; the time until both nodes' exchanges on connect are done (``p2p info``,
polled every 10 ms), their reconcile rounds, and the sync requests and bytes both
nodes' servers answered. Fresh copies of the homes each rep.

``--gossip-updates N`` (default 1000; 0: skip) at ``--gossip-rate`` (100/s): full
nodes sharing a key, a writer and 1, then 4, subscribers connected to it, all
following the collection; the writer makes N documents, one ``POST …/docs`` each,
paced. Per subscriber, the delay from each entry's HLC time to its storing there
(``p2p info``'s ``gossip_delay``: p50, the worst p99, max), the entries that did
not come by gossip, and those still missing after head exchange (every 5 s) repaired.

``--scale-docs N`` (default 10,000; 0: skip), in this process: N followed documents
of one collection as loomdb follows them (``Subscriptions``: one collection topic,
messages filtered locally) against a gossipsub topic per document — time to join,
the subscriptions a new peer is sent, one heartbeat, and how many topics the peer
takes (py-libp2p refuses a hello of more than 5,000 subscriptions whole).

``--nat-tries N`` (default 5; 0: skip; needs root): relay and hole punching through
real NATs, in the network namespaces of ``tests/integration/netns.py`` (relay R on a
public bridge, A and B each behind an nftables-masquerading router). R (``start
--relay-service``) and B (``--relays R``) are ``loomdb start`` processes; each try, a
fresh host A (a probe process in A's namespace, a new port each try) reserves on R,
dials B's ``/p2p-circuit/`` address, sends one request, and watches for a direct
connection: **time to relayed** (dial to connected), the first request's round trip,
and **time to direct** (dial to a direct connection seen, 10 ms polls) with the
success rate, for port-preserving NATs with stateful firewalls and for symmetric ones
(``masquerade random``, where the punch gives up after ``--hole-punch-seconds``).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import sync as bench_sync  # noqa: E402  (bench/sync.py: the cached workload)
from loomdb.identity.keys import NamedKey, SigningKey  # noqa: E402
from loomdb.node.home import NodeHome  # noqa: E402
from loomdb.replication.subscriptions import FILE as SUBSCRIPTIONS_FILE  # noqa: E402
from loomdb.replication.subscriptions import Subscriptions  # noqa: E402
from loomdb.replication.topics import document_topic  # noqa: E402
from loomdb.stores.base import SetKey  # noqa: E402
from loomdb.stores.remote import RemoteStore  # noqa: E402
from loomdb.stores.sqlite import SQLiteStore  # noqa: E402
from loomdb.sync import wire  # noqa: E402
from loomdb.sync.reconcile import ReconcileRequest  # noqa: E402
from loomdb.sync.replicate import SyncScope, pull_changes_from  # noqa: E402
from loomdb.transports.base import RequestChannel  # noqa: E402
from loomdb.transports.libp2p import P2PHost  # noqa: E402
from loomdb.transports.websocket import WebSocketChannel  # noqa: E402

DEFAULT_OUT = ROOT / "results" / "p2p.json"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 30.0
PULL_TIMEOUT = 600.0


class RelayNode:
    """``loomdb start --relay`` with libp2p on 127.0.0.1, over a copy of a store."""

    def __init__(self, home: Path, store: Path) -> None:
        bench_sync.copy_store(store, home / "store.db")
        self.log_path = home.parent / f"{home.name}.log"
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if k != "LOOMDB_KEYRING_SECRET"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p) != ROOT)
        command = [sys.executable, "-m", "loomdb", "start", "--relay", "--home", str(home)]
        command += ["--api", "127.0.0.1:0", "--p2p-addr", "/ip4/127.0.0.1/tcp/0"]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, env=env, bufsize=0
        )
        try:
            self.url, self.addr = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> tuple[str, str]:
        assert self.proc.stdout is not None
        fd, out = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + START_TIMEOUT
        while b" ready, API at " not in out or not out.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise SystemExit(f"bench: node not ready in {START_TIMEOUT} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise SystemExit(f"bench: node exited: {self.log_path.read_text()[-2000:]}")
            out += chunk
        line = out.decode().split(" ready, API at ", 1)[1]
        url = line.split()[0]
        if " and p2p at " not in line:
            raise SystemExit(f"bench: the node runs no libp2p host: {line!r}")
        return url, line.split(" and p2p at ", 1)[1].split()[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


async def round_trips(channel: RequestChannel, n: int) -> float:
    """Requests per second, ``n`` ``hello`` requests one after the other."""
    hello = wire.encode_request("hello", {})
    await channel.request(hello, timeout=REQUEST_TIMEOUT)  # connected before the clock
    started = bench_sync.clock()
    for _ in range(n):
        await channel.request(hello, timeout=REQUEST_TIMEOUT)
    return n / (time.perf_counter() - started)


async def fresh_streams(host: P2PHost, addr: str, n: int) -> float:
    """Requests per second when each opens its own stream (the connection stays up)."""
    hello = wire.encode_request("hello", {})
    warm = host.channel(addr)
    await warm.request(hello, timeout=REQUEST_TIMEOUT)  # the connection is up
    started = bench_sync.clock()
    for _ in range(n):
        channel = host.channel(addr)
        await channel.request(hello, timeout=REQUEST_TIMEOUT)
        await channel.aclose()
    rate = n / (time.perf_counter() - started)
    await warm.aclose()
    return rate


async def bulk_pull(remote: RemoteStore, tmp: Path, n: int) -> dict[str, float]:
    path = tmp / f"pull-{time.monotonic_ns()}.sqlite"
    local = SQLiteStore(path)
    try:
        started = bench_sync.clock()
        with anyio.fail_after(PULL_TIMEOUT):
            report = await pull_changes_from(local, remote, bench_sync.SPACE)
        seconds = time.perf_counter() - started
        if report.pulled != n or await local.count() != n:
            raise SystemExit(f"bench: pulled {report.pulled} of {n} entries")
    finally:
        await local.aclose()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {"s": seconds, "rate": n / seconds, "requests": float(remote.requests)}


async def one_rep(node: RelayNode, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"])
    async with host.run():
        ws = WebSocketChannel(node.url)
        out["ws_rtt_per_s"] = await round_trips(ws, args.round_trips)
        await ws.aclose()
        p2p = host.channel(node.addr)
        out["p2p_rtt_per_s"] = await round_trips(p2p, args.round_trips)
        out["p2p_streams_opened"] = float(p2p.streams_opened)
        await p2p.aclose()
        out["p2p_fresh_stream_per_s"] = await fresh_streams(
            host, node.addr, max(1, args.round_trips // 10)
        )
        async with RemoteStore.connect(node.url) as remote:
            ws_pull = await bulk_pull(remote, tmp, args.entries)
        async with RemoteStore(host.channel(node.addr)) as remote:
            p2p_pull = await bulk_pull(remote, tmp, args.entries)
    out |= {f"ws_pull_{k}": v for k, v in ws_pull.items()}
    out |= {f"p2p_pull_{k}": v for k, v in p2p_pull.items()}
    return out


ROWS: list[tuple[str, str, str]] = [
    ("ws_rtt_per_s", "round trips, one WebSocket", "req/s"),
    ("p2p_rtt_per_s", "round trips, one libp2p stream", "req/s"),
    ("p2p_fresh_stream_per_s", "round trips, a new libp2p stream each", "req/s"),
    ("ws_pull_rate", "bulk pull, WebSocket", "entries/s"),
    ("p2p_pull_rate", "bulk pull, libp2p", "entries/s"),
    ("ws_pull_s", "bulk pull, WebSocket", "s"),
    ("p2p_pull_s", "bulk pull, libp2p", "s"),
    ("ws_pull_requests", "bulk pull requests, WebSocket", "requests"),
    ("p2p_pull_requests", "bulk pull requests, libp2p", "requests"),
]


# --- replicators vs client sync --push ---------------------------------------------------

REPLICATE_TIMEOUT = 600.0
LATENCY_WRITES = 50
BENCH_COLL = "bench"


PROFILE_MAIN = """
import cProfile, runpy, sys, time
out, sys.argv = sys.argv[1], sys.argv[2:]
profile = cProfile.Profile(time.thread_time)  # the event loop's own CPU, not waits
profile.enable()
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
finally:
    profile.disable()
    profile.dump_stats(out)
"""
"""``python -c PROFILE_MAIN OUT MODULE ARGS…``: run MODULE under cProfile, timed by the
main thread's CPU (so time waiting for the loop or the other cores is not counted)."""


class FullNode(RelayNode):
    """``loomdb start`` (a full node) with libp2p on 127.0.0.1; its API as an httpx client."""

    def __init__(self, home: Path, *extra: str, profile: Path | None = None) -> None:
        """``profile``: run the node under cProfile (:data:`PROFILE_MAIN`), its stats
        written there when it stops."""
        self.log_path = home.parent / f"{home.name}.log"
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if k != "LOOMDB_KEYRING_SECRET"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p) != ROOT)
        profiling = ["-m"] if profile is None else ["-c", PROFILE_MAIN, str(profile)]
        command = [sys.executable, *profiling, "loomdb", "start", "--home", str(home)]
        command += ["--api", "127.0.0.1:0", "--p2p-addr", "/ip4/127.0.0.1/tcp/0", *extra]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, env=env, bufsize=0
        )
        try:
            self.url, self.addr = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        token = (home / "api.token").read_text().strip()
        self.api = httpx.Client(
            base_url=f"{self.url}/api/v0",
            headers={"Authorization": f"Bearer {token}"},
            timeout=REQUEST_TIMEOUT,
            trust_env=False,
        )

    def stop(self) -> None:
        if hasattr(self, "api"):
            self.api.close()
        super().stop()


def write_docs(node: FullNode, prefix: str, n: int) -> None:
    for start in range(0, n, 1000):
        docs = [
            {"id": f"{prefix}{i}", "value": {"i": i, "text": "x" * 100}}
            for i in range(start, min(n, start + 1000))
        ]
        r = node.api.post(f"/collections/{BENCH_COLL}/docs:batch", json={"documents": docs})
        if r.status_code != 201:
            raise SystemExit(f"bench: docs:batch answered {r.status_code}: {r.text}")


def wait_pushed(node: FullNode, n: int) -> float:
    """Poll A's replicator until it has pushed ``n`` entries; when it saw them."""
    deadline = time.monotonic() + REPLICATE_TIMEOUT
    while True:
        [rep] = node.api.get("/p2p/replicators").json()["replicators"]
        if rep["pushed"] >= n:
            return time.perf_counter()
        if rep["state"] in ("failing", "refused"):
            raise SystemExit(f"bench: the replicator is {rep['state']}: {rep['last_error']}")
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {rep['pushed']} of {n} entries pushed")
        time.sleep(0.005)  # a poll of the API, bounded by the deadline above


def sync_push(node: FullNode, remote: str, n: int, transport: str | None) -> float:
    """``POST /sync/run`` (what ``client sync --push`` does); its wall time."""
    body: dict[str, Any] = {"remote": remote, "direction": "push", "collections": [BENCH_COLL]}
    if transport is not None:
        body["transport"] = transport
    started = time.perf_counter()
    with node.api.stream("POST", "/sync/run", json=body, timeout=REPLICATE_TIMEOUT) as r:
        events = [json.loads(line) for line in r.iter_lines() if line.strip()]
    seconds = time.perf_counter() - started
    done = events[-1]
    if done["event"] != "done" or done["pushed"] != n:
        raise SystemExit(f"bench: the sync pushed {done.get('pushed')} of {n}: {done}")
    return seconds


def replicator_rep(tmp: Path, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    started: list[FullNode] = []

    def start(name: str) -> FullNode:
        node = FullNode(tmp / f"{name}-{time.monotonic_ns()}")
        started.append(node)
        return node

    try:
        a, b = start("a"), start("b")
        write_docs(a, "old", n)
        t = time.perf_counter()
        r = a.api.post("/p2p/replicators", json={"addr": b.addr, "collections": [BENCH_COLL]})
        if r.status_code != 200:
            raise SystemExit(f"bench: replicator set answered {r.status_code}: {r.text}")
        out["rep_backfill_s"] = wait_pushed(a, n) - t
        out["rep_backfill_rate"] = n / out["rep_backfill_s"]
        t = time.perf_counter()
        write_docs(a, "new", n)
        written = time.perf_counter()
        done = wait_pushed(a, 2 * n)
        out["rep_live_rate"] = n / (done - t)
        out["rep_write_rate"] = n / (written - t)
        out["rep_catch_up_ms"] = (done - written) * 1000
        latencies = []
        for i in range(LATENCY_WRITES):  # one write at a time: until the peer has it
            t = time.perf_counter()
            r = a.api.post(f"/collections/{BENCH_COLL}/docs", json={"id": f"one{i}", "value": {}})
            if r.status_code != 201:
                raise SystemExit(f"bench: a write answered {r.status_code}: {r.text}")
            latencies.append((wait_pushed(a, 2 * n + i + 1) - t) * 1000)
        out["rep_latency_p50_ms"] = statistics.median(latencies)
        out["rep_latency_max_ms"] = max(latencies)
        n_all = 2 * n + LATENCY_WRITES
        for key, transport in (("http", "http"), ("ws", "ws"), ("p2p", None)):
            target = start(key)
            remote = target.addr if transport is None else target.url
            seconds = sync_push(a, remote, n_all, transport)
            out[f"sync_{key}_push_rate"] = n_all / seconds
            target.stop()
    finally:
        for node in started:
            node.stop()
    return out


REPLICATOR_ROWS: list[tuple[str, str, str]] = [
    ("rep_backfill_rate", "replicator backfill (push reconcile, libp2p)", "entries/s"),
    ("rep_live_rate", "replicator live, writes of 1,000 + pushes", "entries/s"),
    ("rep_write_rate", "  the writes alone (docs:batch, same run)", "entries/s"),
    ("rep_catch_up_ms", "replicator catch-up after the last write", "ms"),
    ("rep_latency_p50_ms", "one write, until the peer stored it: p50", "ms"),
    ("rep_latency_max_ms", "one write, until the peer stored it: max", "ms"),
    ("sync_http_push_rate", "client sync --push, HTTP", "entries/s"),
    ("sync_ws_push_rate", "client sync --push, WebSocket", "entries/s"),
    ("sync_p2p_push_rate", "client sync --push, libp2p", "entries/s"),
]


# --- gossip: replication latency, and head exchange on connect --------------------------

GOSSIP_REPAIR_TIMEOUT = 120.0
GOSSIP_QUIET = 5.0  # no new gossip arrival for this long: delivery is over
GOSSIP_ANTI_ENTROPY = "5"  # seconds: the repair after gossip
GOSSIP_SETTLE = 0.3  # seconds after the last write before the CPU is read


def gossip_home(path: Path, key: NamedKey) -> Path:
    """A node home that writes and reads its open spaces with ``key`` (shared)."""
    home = NodeHome.open(path, environ={})
    home.keyring.import_key(key)
    home.keyring.set_default_key(key.key_id)
    home.keyring.save()
    return path


def gossip_counters(node: FullNode) -> dict[str, Any]:
    info: dict[str, Any] = node.api.get("/p2p/info").json()["replication"]
    return info


def doc_count(node: FullNode) -> int:
    r = node.api.get(f"/collections/{BENCH_COLL}/docs", params={"limit": 1})
    return int(r.json()["count"]) if r.status_code == 200 else 0


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what}: not within {timeout} s")
        time.sleep(0.05)  # a poll of the API, bounded by the deadline above


def cpu_seconds(node: FullNode) -> float:
    """User and system CPU the node's process has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gossip_rep(
    tmp: Path, n: int, rate: float, subscribers: int, profile: Path | None = None
) -> dict[str, float]:
    """A writes ``n`` documents at ``rate``/s (one entry each, one request each);
    ``subscribers`` nodes connected to A follow the collection. Delays are the
    subscribers' own (entry HLC time to stored here), lost counts before and after
    head exchange's repair; CPU per update of the writer and of a subscriber while
    the writes run. ``profile``: the writer and the first subscriber run under
    cProfile, their stats written in that directory."""
    key = NamedKey.generate_fingerprinted("bench-gossip")
    started: list[FullNode] = []

    def start(name: str, profiled: bool = False) -> FullNode:
        home = gossip_home(tmp / f"{name}-{time.monotonic_ns()}", key)
        out = None if profile is None or not profiled else profile / f"{name}.prof"
        node = FullNode(home, "--anti-entropy-seconds", GOSSIP_ANTI_ENTROPY, profile=out)
        started.append(node)
        return node

    tag = f"s{subscribers}"
    try:
        a = start(f"writer-{tag}", True)
        subs = [start(f"sub{i}-{tag}", i == 0) for i in range(subscribers)]
        for node in (a, *subs):
            r = node.api.post("/p2p/collections", json={"collections": [BENCH_COLL]})
            assert r.status_code == 200, r.text
        for node in subs:
            assert node.api.post("/p2p/connect", json={"addr": a.addr}).status_code == 200

        def joined() -> bool:
            pubsub = a.api.get("/p2p/info").json().get("pubsub") or {}  # None: not up yet
            return list(pubsub.get("topic_peers", {}).values()) == [subscribers]

        wait_for(joined, 30.0, "the subscribers join the topic")
        time.sleep(1.0)  # the exchanges on connect done: CPU from here on is the updates'
        cpu0 = [cpu_seconds(node) for node in (a, *subs)]
        t0 = time.perf_counter()
        for i in range(n):
            wait = t0 + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)  # pacing the writes, not waiting for a result
            r = a.api.post(
                f"/collections/{BENCH_COLL}/docs", json={"id": f"g{i}", "value": {"i": i}}
            )
            assert r.status_code == 201, r.text
        achieved = n / (time.perf_counter() - t0)
        time.sleep(GOSSIP_SETTLE)  # the last updates reach the subscribers
        cpu = [cpu_seconds(node) - c for node, c in zip((a, *subs), cpu0, strict=True)]
        last: list[int] = [-1]
        quiet_since = time.monotonic()

        def delivered() -> bool:
            nonlocal quiet_since
            stored = sum(
                c["stored"] + c["duplicate"] for c in (gossip_counters(s)["gossip"] for s in subs)
            )
            if stored != last[0]:
                last[0], quiet_since = stored, time.monotonic()
            return stored == n * subscribers or time.monotonic() - quiet_since > GOSSIP_QUIET

        wait_for(delivered, GOSSIP_REPAIR_TIMEOUT, "gossip delivery")
        by_gossip = [gossip_counters(s) for s in subs]
        wait_for(
            lambda: all(doc_count(s) == n for s in subs),
            GOSSIP_REPAIR_TIMEOUT,
            "head exchange repairs what gossip lost",
        )
        delays = [c["gossip_delay"] for c in by_gossip]
        # A duplicate came by gossip too, after head exchange (every 5 s) had pulled it.
        stored = sum(c["gossip"]["stored"] + c["gossip"]["duplicate"] for c in by_gossip)
        return {
            f"gossip_{tag}_rate": achieved,
            f"gossip_{tag}_p50_ms": statistics.median(d["p50_ms"] for d in delays),
            f"gossip_{tag}_p99_ms": max(d["p99_ms"] for d in delays),
            f"gossip_{tag}_max_ms": max(d["max_ms"] for d in delays),
            f"gossip_{tag}_lost": float(n * subscribers - stored),
            f"gossip_{tag}_lost_after_repair": float(sum(n - doc_count(s) for s in subs)),
            f"gossip_{tag}_writer_cpu_ms": cpu[0] * 1000 / n,
            f"gossip_{tag}_sub_cpu_ms": statistics.mean(cpu[1:]) * 1000 / n,
        }
    except BaseException:
        for node in started:  # a node that died says why
            if node.proc.poll() is not None:
                tail = node.log_path.read_text(errors="replace")[-3000:]
                shutil.copy(node.log_path, Path(tempfile.gettempdir()) / node.log_path.name)
                print(f"bench: {node.log_path.name} exited {node.proc.returncode}:\n{tail}")
        raise
    finally:
        for node in started:
            node.stop()


def gossip_rows(subscribers: tuple[int, ...]) -> list[tuple[str, str, str]]:
    rows = []
    for k in subscribers:
        tag, who = f"s{k}", f"{k} subscriber{'s' if k != 1 else ''}"
        rows += [
            (f"gossip_{tag}_rate", f"gossip to {who}: writes", "updates/s"),
            (f"gossip_{tag}_p50_ms", f"gossip to {who}: delay p50", "ms"),
            (f"gossip_{tag}_p99_ms", f"gossip to {who}: delay p99 (worst)", "ms"),
            (f"gossip_{tag}_max_ms", f"gossip to {who}: delay max", "ms"),
            (f"gossip_{tag}_lost", f"gossip to {who}: not by gossip", "entries"),
            (f"gossip_{tag}_lost_after_repair", f"gossip to {who}: lost after repair", "entries"),
            (f"gossip_{tag}_writer_cpu_ms", f"gossip to {who}: writer CPU/update", "ms"),
            (f"gossip_{tag}_sub_cpu_ms", f"gossip to {who}: subscriber CPU/update", "ms"),
        ]
    return rows


async def head_exchange(node: RelayNode, local_path: Path, reps: int) -> dict[str, float]:
    """Head exchange between equal stores (the relay's and a copy of it): a pull of
    the space, and of its collection (what a collection subscription reconciles),
    on a fresh connection (dial, Noise, stream, one reconciliation) and on an open one."""
    local = SQLiteStore(local_path)
    out: dict[str, list[float]] = {}
    try:
        for _ in range(reps):
            for name, scope in (
                ("space", SyncScope(bench_sync.SPACE)),
                ("coll", SyncScope(bench_sync.SPACE, collections=(bench_sync.COLLECTION,))),
            ):
                host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"])
                async with host.run():
                    t = time.perf_counter()
                    async with RemoteStore(host.peer_channel(node.addr)) as remote:
                        report = await pull_changes_from(local, remote, scope)
                        first = time.perf_counter() - t
                        t = time.perf_counter()
                        again = await pull_changes_from(local, remote, scope)
                        warm = time.perf_counter() - t
                if report.pulled or again.pulled:
                    raise SystemExit("bench: the stores differ")
                out.setdefault(f"heads_{name}_connect_ms", []).append(first * 1000)
                out.setdefault(f"heads_{name}_open_ms", []).append(warm * 1000)
                out.setdefault(f"heads_{name}_rounds", []).append(float(again.rounds))
    finally:
        await local.aclose()
    return {k: statistics.median(v) for k, v in out.items()}


HEAD_ROWS: list[tuple[str, str, str]] = [
    ("heads_space_connect_ms", "head exchange, equal, new connection", "ms"),
    ("heads_space_open_ms", "head exchange, equal, connection up", "ms"),
    ("heads_space_rounds", "head exchange, equal: round trips", "rounds"),
    ("heads_coll_open_ms", "  a collection's set, connection up", "ms"),
    ("heads_coll_rounds", "  a collection's set: round trips", "rounds"),
]


# --- head exchange on connect, between full nodes ----------------------------------------

HEADS_TIMEOUT = 300.0
HEADS_POLL = 0.01  # seconds between two looks at both nodes' counters


async def warm_store(src: Path, dst: Path) -> Path:
    """A copy of a cached store with its collection's fingerprint tree built too
    (the cache has the space's): a node that has exchanged heads before has both."""
    bench_sync.copy_store(src, dst)
    store = SQLiteStore(dst)
    try:
        await store.reconcile([ReconcileRequest(SetKey(bench_sync.SPACE, bench_sync.COLLECTION))])
    finally:
        await store.aclose()
    return dst


def heads_home(path: Path, store: Path) -> Path:
    """A full node's home over a copy of ``store``, following its collection, its
    database caught up with the store: the node is run once and asked for the space,
    which applies every entry (on the node's event loop; more than 10 s at 100k, so
    not timed), as on a node that had stored them through its database."""
    home = NodeHome.open(path, environ={})
    bench_sync.copy_store(store, home.store_path)
    Subscriptions(path / SUBSCRIPTIONS_FILE).add_collections(
        bench_sync.SPACE, [bench_sync.COLLECTION]
    )
    node = FullNode(path)
    try:
        r = node.api.get(
            f"/collections/{bench_sync.COLLECTION}/docs",
            params={"limit": 1},
            headers={"X-Loomdb-Space": bench_sync.SPACE},
            timeout=HEADS_TIMEOUT,
        )
        if r.status_code != 200:
            raise SystemExit(f"bench: reading the space answered {r.status_code}: {r.text}")
    finally:
        node.stop()
    return path


def heads_counters(node: FullNode) -> dict[str, int]:
    info = node.api.get("/p2p/info").json()
    sync = info["counters"]  # the sync server's: what it served the peer
    heads = info["replication"]["head_exchange"]
    return {
        "exchanges": heads["exchanges"],
        "rounds": heads["rounds"],
        "pulled": heads["pulled"],
        "failed": heads["failed"],
        "frames": sync["frames_served"],
        "bytes": sync["bytes_in"] + sync["bytes_out"],
    }


def heads_rep(tmp: Path, a_home: Path, b_home: Path, missing: int) -> dict[str, float]:
    """Full nodes A and B on copies of their homes (B lacks ``missing`` of A's entries), both
    following the collection; B dials A: from the dial until both have finished their
    head exchange (each pulls what it follows from the other), B holding all."""
    started: list[FullNode] = []
    try:
        for name, template in (("ha", a_home), ("hb", b_home)):
            home = tmp / f"{name}-{time.monotonic_ns()}"
            shutil.copytree(template, home)
            started.append(FullNode(home))
        a, b = started
        before = [heads_counters(n) for n in (a, b)]
        t = time.perf_counter()
        r = b.api.post("/p2p/connect", json={"addr": a.addr})
        if r.status_code != 200:
            raise SystemExit(f"bench: p2p connect answered {r.status_code}: {r.text}")
        deadline = time.monotonic() + HEADS_TIMEOUT
        while True:
            now = [heads_counters(n) for n in (a, b)]
            if all(n["exchanges"] > o["exchanges"] for n, o in zip(now, before, strict=True)):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: head exchange not done in {HEADS_TIMEOUT} s: {now}")
            time.sleep(HEADS_POLL)  # a poll of the API, bounded by the deadline above
        seconds = time.perf_counter() - t
        delta = [{k: n[k] - o[k] for k in n} for n, o in zip(now, before, strict=True)]
        if any(d["failed"] for d in delta):
            raise SystemExit(f"bench: a head exchange failed: {delta}")
        if (delta[0]["pulled"], delta[1]["pulled"]) != (0, missing):
            raise SystemExit(f"bench: pulled {delta[0]['pulled']} and {delta[1]['pulled']}")
        return {
            "s": seconds * 1000,
            "rounds": float(sum(d["rounds"] for d in delta)),
            "requests": float(sum(d["frames"] for d in delta)),
            "kb": sum(d["bytes"] for d in delta) / 1000,
        }
    finally:
        for node in started:
            node.stop()


async def heads_case(args: argparse.Namespace, tmp: Path) -> list[dict[str, float]]:
    """``--reps`` reps of :func:`heads_rep` for equal stores of N entries and for
    N against N - 100 (bench/sync.py's cached stores), fresh nodes each rep."""
    n = args.head_exchange_entries
    cached = await bench_sync.cached_entries(args.cache_dir, n, HEADS_MISSING)
    full = await warm_store(cached.full, tmp / "heads-full.sqlite")
    minus = await warm_store(cached.minus, tmp / "heads-minus.sqlite")
    a, b_equal, b_diff = (
        heads_home(tmp / name, store)
        for name, store in (("heads-a", full), ("heads-b", full), ("heads-b-minus", minus))
    )
    reps = []
    for rep in range(args.reps):
        out: dict[str, float] = {}
        for tag, b_home, missing in (("equal", b_equal, 0), ("diff", b_diff, cached.missing)):
            measured = heads_rep(tmp, a, b_home, missing)
            out |= {f"hx_{tag}_{k}": v for k, v in measured.items()}
        reps.append(out)
        print(f"  head exchange rep {rep + 1}/{args.reps} done", flush=True)
    return reps


HEADS_MISSING = 100
HX_ROWS: list[tuple[str, str, str]] = [
    (f"hx_{tag}_{key}", f"heads on connect, {what}: {label}", unit)
    for tag, what in (("equal", "equal"), ("diff", "100 differ"))
    for key, label, unit in (
        ("s", "both done", "ms"),
        ("rounds", "rounds", "rounds"),
        ("requests", "requests", "requests"),
        ("kb", "bytes", "KB"),
    )
]


# --- scale: 10,000 followed documents ------------------------------------------------------


async def topic_scale(n: int, tmp: Path) -> dict[str, float]:
    """``n`` followed documents of one collection as loomdb follows them (one
    collection topic, filtered locally) against one gossipsub topic each: what
    joining costs, what a new peer is sent, and one gossipsub heartbeat."""
    out: dict[str, float] = {}
    subs = Subscriptions(tmp / f"subs-{time.monotonic_ns()}.json")
    names = [f"{BENCH_COLL}/d{i}" for i in range(n)]
    t = time.perf_counter()
    for start in range(0, n, 1000):
        subs.add_documents("main", names[start : start + 1000])
    out["scale_add_ms"] = (time.perf_counter() - t) * 1000
    out["scale_file_kb"] = (subs.path.stat().st_size if subs.path else 0) / 1024
    out["scale_topics"] = float(len(subs.topics()))
    t = time.perf_counter()
    for i in range(10_000):
        subs.wants("main", BENCH_COLL, f"d{i}")
    out["scale_wants_us"] = (time.perf_counter() - t) / 10_000 * 1e6
    for label, topics in (("ours", list(subs.topics())), ("per_doc", None)):
        host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"])
        peer = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"])
        async with host.run(), peer.run():
            pubsub, other = host.pubsub, peer.pubsub
            assert pubsub is not None
            assert other is not None
            wanted = topics or [document_topic("main", BENCH_COLL, f"d{i}") for i in range(n)]
            t = time.perf_counter()
            for topic in wanted:
                await pubsub.subscribe(topic)
            out[f"scale_{label}_join_ms"] = (time.perf_counter() - t) * 1000
            out[f"scale_{label}_hello_kb"] = pubsub.get_hello_packet().ByteSize() / 1024
            t = time.perf_counter()
            pubsub.router.mesh_heartbeat()  # type: ignore[attr-defined]
            out[f"scale_{label}_heartbeat_ms"] = (time.perf_counter() - t) * 1000
            await peer.connect(host.listen_addrs()[0])
            deadline = time.monotonic() + 30
            seen = 0
            while time.monotonic() < deadline:
                seen = sum(
                    1 for t_ in wanted if host.host.get_id() in other.peer_topics.get(t_, ())
                )
                if seen == len(wanted):
                    break
                await anyio.sleep(0.1)
            out[f"scale_{label}_seen_by_peer"] = float(seen)
    return out


SCALE_ROWS: list[tuple[str, str, str]] = [
    ("scale_add_ms", "follow 10k documents: add, 10 batches", "ms"),
    ("scale_file_kb", "  their subscriptions file", "KiB"),
    ("scale_wants_us", "  filter a message (wants)", "us"),
    ("scale_topics", "  gossip topics joined", "topics"),
    ("scale_ours_join_ms", "  joining them", "ms"),
    ("scale_ours_hello_kb", "  subscriptions sent to each new peer", "KiB"),
    ("scale_ours_heartbeat_ms", "  one gossipsub heartbeat", "ms"),
    ("scale_ours_seen_by_peer", "  topics a new peer learns", "topics"),
    ("scale_per_doc_join_ms", "a topic per document: joining 10k", "ms"),
    ("scale_per_doc_hello_kb", "  subscriptions sent to each new peer", "KiB"),
    ("scale_per_doc_heartbeat_ms", "  one gossipsub heartbeat", "ms"),
    ("scale_per_doc_seen_by_peer", "  topics a new peer learns", "topics"),
]


NAT_ROWS = [
    ("nat_pp_relayed_ms", "NAT port-preserving: dial to relayed", "ms"),
    ("nat_pp_request_ms", "NAT port-preserving: 1st request, relayed", "ms"),
    ("nat_pp_direct_ms", "NAT port-preserving: dial to direct", "ms"),
    ("nat_pp_direct_rate", "NAT port-preserving: tries upgraded", "%"),
    ("nat_sym_relayed_ms", "NAT symmetric: dial to relayed", "ms"),
    ("nat_sym_direct_rate", "NAT symmetric: tries upgraded", "%"),
]
NAT_PUNCH_SECONDS = 4.0


class NsNode(RelayNode):
    """``loomdb start ARGS`` (a full node) run under ``prefix`` (``ip netns exec NS``)."""

    def __init__(self, home: Path, prefix: list[str], *extra: str) -> None:  # no store to copy
        self.log_path = home.parent / f"{home.name}.log"
        home.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if k != "LOOMDB_KEYRING_SECRET"}
        command = [*prefix, sys.executable, "-m", "loomdb", "start", "--home", str(home)]
        command += ["--api", "127.0.0.1:0", *extra]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, env=env, bufsize=0
        )
        try:
            self.url, self.addr = self._wait_ready()
        except BaseException:
            self.stop()
            raise


async def nat_probe(relay: str, circuit: str, port: int) -> dict[str, Any]:
    """In A's namespace: a fresh host reserves on ``relay``, dials ``circuit``, one
    request, then waits (at most twice the punch bound + 5 s) for a direct connection."""
    from loomdb.transports.libp2p.nat import NatSettings

    host = P2PHost(
        SigningKey.generate(),
        [f"/ip4/0.0.0.0/tcp/{port}"],
        gossip=False,
        nat=NatSettings(relays=(relay,), punch_timeout=NAT_PUNCH_SECONDS),
    )
    peer = circuit.rsplit("/", 1)[1]

    def direct() -> bool:
        return any(
            c["type"] == "direct"
            for p in host.peers()
            if p["peer_id"] == peer
            for c in p["connection_types"]
        )

    async with host.run():
        with anyio.fail_after(30):
            while not host.nat.circuit_addrs():  # as a node behind a NAT runs
                await anyio.sleep(0.01)
        began = time.perf_counter()
        await host.connect(circuit)
        relayed = time.perf_counter() - began
        channel = host.channel(circuit)
        sent = time.perf_counter()
        await channel.request(wire.encode_request("hello", {}))
        request = time.perf_counter() - sent
        await channel.aclose()
        upgraded = None
        with anyio.move_on_after(NAT_PUNCH_SECONDS * 2 + 5):
            while not direct():
                await anyio.sleep(0.01)
            upgraded = time.perf_counter() - began
    return {"relayed": relayed, "request": request, "direct": upgraded}


def nat_case(tmp: Path, nat: str, tries: int) -> dict[str, float]:
    """``tries`` probes through ``nat`` routers: medians in ms, the upgraded share in %."""
    sys.path.insert(0, str(ROOT.parent))
    from tests.integration.netns import RELAY_IP, nat_topology

    probes = []
    with nat_topology(nat) as t:
        nodes: list[NsNode] = []
        try:
            relay = NsNode(
                tmp / f"nat-{nat}-r",
                t.prefix(t.relay),
                "--p2p-addr",
                f"/ip4/{RELAY_IP}/tcp/4001",
                "--relay-service",
            )
            nodes.append(relay)
            relay_addr = relay.addr
            b = NsNode(
                tmp / f"nat-{nat}-b",
                t.prefix(t.b),
                "--p2p-addr",
                "/ip4/0.0.0.0/tcp/4102",
                "--relays",
                relay_addr,
                "--hole-punch-seconds",
                str(NAT_PUNCH_SECONDS),
            )
            nodes.append(b)
            b_peer = b.addr.rsplit("/", 1)[1]
            circuit = f"{relay_addr}/p2p-circuit/p2p/{b_peer}"
            for i in range(tries):
                probe = ["--nat-probe", relay_addr, circuit, str(4200 + i)]
                done = subprocess.run(
                    [*t.prefix(t.a), sys.executable, str(ROOT / "p2p.py"), *probe],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"NAT probe failed: {done.stderr[-2000:]}")
                probes.append(json.loads(done.stdout.strip().splitlines()[-1]))
        finally:
            for node in nodes:
                node.stop()
    key = "pp" if nat == "port-preserving" else "sym"
    directs = [p["direct"] for p in probes if p["direct"] is not None]
    out = {
        f"nat_{key}_relayed_ms": statistics.median(p["relayed"] for p in probes) * 1000,
        f"nat_{key}_direct_rate": 100.0 * len(directs) / len(probes),
    }
    if key == "pp":
        out["nat_pp_request_ms"] = statistics.median(p["request"] for p in probes) * 1000
        out["nat_pp_direct_ms"] = statistics.median(directs) * 1000 if directs else float("nan")
    return out


async def relay_cases(args: argparse.Namespace, tmp: Path, store: Path) -> list[dict[str, float]]:
    reps = []
    node = RelayNode(tmp / "relay", store)
    try:
        for rep in range(args.reps):
            reps.append(await one_rep(node, args, tmp))
            print(f"  rep {rep + 1}/{args.reps} done", flush=True)
        local_copy = bench_sync.copy_store(store, tmp / "heads-local.sqlite")
        heads = await head_exchange(node, local_copy, 5)
        for measured in reps:
            measured.update(heads)
    finally:
        node.stop()
    return reps


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cached = await bench_sync.cached_entries(args.cache_dir, args.entries, 100)
    reps: list[dict[str, float]] = [{} for _ in range(args.reps)] if args.gossip_only else []
    with tempfile.TemporaryDirectory(prefix="loomdb-bench-p2p-") as name:
        tmp = Path(name)
        rows = []
        if not args.gossip_only:
            rows = [*ROWS, *HEAD_ROWS]
            reps = await relay_cases(args, tmp, cached.full)
        if args.scale_docs:
            rows += SCALE_ROWS
            for rep in range(args.reps):
                reps[rep] |= await topic_scale(args.scale_docs, tmp)
            print("  scale done", flush=True)
        if args.gossip_updates:
            subscribers = (1, 4)
            rows += gossip_rows(subscribers)
            for rep in range(args.reps):
                for k in subscribers:
                    reps[rep] |= gossip_rep(
                        tmp, args.gossip_updates, args.gossip_rate, k, args.gossip_profile
                    )
                print(f"  gossip rep {rep + 1}/{args.reps} done", flush=True)
        if args.nat_tries:
            rows += NAT_ROWS
            for rep in range(args.reps):
                for nat in ("port-preserving", "symmetric"):
                    reps[rep] |= nat_case(tmp, nat, args.nat_tries)
                print(f"  NAT rep {rep + 1}/{args.reps} done", flush=True)
        if args.head_exchange_entries:
            rows += HX_ROWS
            for rep, measured in enumerate(await heads_case(args, tmp)):
                reps[rep] |= measured
        if args.replicator_docs:
            rows += REPLICATOR_ROWS
            for rep in range(args.reps):
                reps[rep] |= replicator_rep(tmp, args.replicator_docs)
                print(f"  replicator rep {rep + 1}/{args.reps} done", flush=True)
    results = []
    for key, what, unit in rows:
        values = [r[key] for r in reps]
        results.append(
            {
                "name": key,
                "what": what,
                "unit": unit,
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "values": values,
            }
        )
    return {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": sys.version.split()[0],
            "libp2p": version("libp2p"),
            "nproc": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "entries": args.entries,
            "entry_bytes": cached.entry_bytes,
            "round_trips": args.round_trips,
            "reps": args.reps,
            "replicator_docs": args.replicator_docs,
            "gossip_updates": args.gossip_updates,
            "gossip_rate": args.gossip_rate,
            "scale_docs": args.scale_docs,
            "nat_tries": args.nat_tries,
            "head_exchange_entries": args.head_exchange_entries,
        },
        "results": results,
    }


def show(doc: dict[str, Any]) -> None:
    meta = doc["meta"]
    print(
        f"\nlibp2p vs WebSocket, loopback, {meta['entries']:,} entries of "
        f"~{meta['entry_bytes']:.0f} B, {meta['reps']} rep(s), median (min-max)"
    )
    for row in doc["results"]:
        print(
            f"  {row['what']:<40} {row['median']:>10,.1f} {row['unit']:<9}"
            f" ({row['min']:,.1f}-{row['max']:,.1f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--replicator-docs", type=int, default=5000, help="the replicator case's N (0: skip it)"
    )
    parser.add_argument(
        "--gossip-updates",
        type=int,
        default=1000,
        help="the gossip case's updates, to 1 and to 4 subscribers (0: skip it)",
    )
    parser.add_argument("--gossip-rate", type=float, default=100.0, help="updates/s written")
    parser.add_argument(
        "--gossip-profile",
        type=Path,
        help="a directory: run the gossip case's writer and first subscriber under cProfile",
    )
    parser.add_argument(
        "--gossip-only", action="store_true", help="only the gossip case (no relay, no others)"
    )
    parser.add_argument(
        "--scale-docs",
        type=int,
        default=10_000,
        help="followed documents of the scale case (0: skip it)",
    )
    parser.add_argument(
        "--nat-tries",
        type=int,
        default=5,
        help="tries per NAT of the relay/hole-punch case (needs root; 0: skip it)",
    )
    parser.add_argument(
        "--nat-probe", nargs=3, metavar=("RELAY", "CIRCUIT", "PORT"), help=argparse.SUPPRESS
    )  # one try, run inside A's namespace
    parser.add_argument(
        "--head-exchange-entries",
        type=int,
        default=2000,
        help="entries in each store of the head-exchange-on-connect case (0: skip it)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache-dir", type=Path, default=bench_sync.DEFAULT_CACHE)
    args = parser.parse_args()
    if args.gossip_only:
        args.scale_docs = args.nat_tries = args.head_exchange_entries = args.replicator_docs = 0
    if args.gossip_profile is not None:
        args.gossip_profile.mkdir(parents=True, exist_ok=True)
        args.gossip_profile = args.gossip_profile.resolve()
    if args.nat_probe:
        relay, circuit, port = args.nat_probe
        probe = lambda: nat_probe(relay, circuit, int(port))  # noqa: E731
        print(json.dumps(anyio.run(probe, backend="trio")))
        return
    if args.nat_tries < 0:
        parser.error("--nat-tries is at least 0")
    if args.nat_tries and os.geteuid() != 0:
        parser.error("the NAT case builds network namespaces: run as root, or --nat-tries 0")
    if min(args.entries, args.round_trips, args.reps) < 1:
        parser.error("--entries, --round-trips and --reps are at least 1")
    if args.head_exchange_entries < 0 or 0 < args.head_exchange_entries <= HEADS_MISSING:
        parser.error(f"--head-exchange-entries is 0 or above {HEADS_MISSING}")
    if args.replicator_docs < 0:
        parser.error("--replicator-docs is at least 0")
    if args.gossip_updates < 0 or args.gossip_rate <= 0:
        parser.error("--gossip-updates is at least 0, --gossip-rate above 0")
    main_fn: Callable[[], Awaitable[dict[str, Any]]] = lambda: run(args)  # noqa: E731
    doc = anyio.run(main_fn, backend="trio")
    show(doc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
