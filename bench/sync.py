#!/usr/bin/env python3
"""Sync benchmark: loomdb pull / sync / reconciliation against a real node and in process.

    python bench/sync.py [--sizes 10000,100000] [--big] [--recon-sizes 10000,100000,1000000]
                         [--reps 3] [--idle-runs 50] [--out PATH] [--quick] [--profile]

Figures (see bench/README.md, "Sync", for the method, the targets and the anchors):

* initial sync: a relay node (``loomdb start --relay``, its store prefilled with N
  signed, encrypted 515-byte entries) and a fresh SQLiteStore in this process that
  pulls everything over loopback WebSocket (``RemoteStore.connect`` +
  ``pull_changes_from``), every entry verified; wall time, entries/s, bytes, rounds,
  and the split (reconcile / transfer; fetch, verify and store busy times);
* idle re-sync: ``sync(local, remote, space)`` with nothing to exchange, on the open
  connection (and on a new connection each time): requests and latency;
* reconcile N vs N - 100: in process, synthetic items (random ids, timestamps as in
  the Negentropy anchor), on two real SQLite fingerprint trees and on two
  MemoryRangeIndex; and over the node with real entries (a local store missing 100);
* +100 entries: 100 new entries put on the node by another client, then the pull of
  exactly those, on the store synced before.

Generated entries are cached (``--cache-dir``, default bench/results/cache/) as SQLite
stores with their fingerprint trees built, so a rep copies a file instead of signing
N entries again. Every node is stopped at the end, even on error; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import gc
import hashlib
import json
import logging
import os
import pstats
import random
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import anyio
import nacl.bindings

from loomdb.clock import pack_hlc
from loomdb.entries import codec
from loomdb.entries.cid import CID
from loomdb.entries.entry import Entry, build_entry, decode_entry
from loomdb.errors import LoomError
from loomdb.identity.keys import NamedKey, SigningKey
from loomdb.stores import fingerprints
from loomdb.stores.base import PutStatus, SetKey
from loomdb.stores.remote import RemoteStore
from loomdb.stores.sqlite import SQLiteStore
from loomdb.sync import replicate, wire
from loomdb.sync.ranges import INFINITY, ZERO, MemoryRangeIndex
from loomdb.sync.reconcile import ReconcileReply, ReconcileRequest, reconcile_on
from loomdb.sync.replicate import Rejection, SyncProgress, pull_changes_from, sync

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "sync.json"
DEFAULT_CACHE = ROOT / "results" / "cache"
CACHE_VERSION = 1
SPACE = "bench"
COLLECTION = "tasks"
PAYLOAD_SIZE = 248  # plaintext: a 10-field document's first change encrypts to ~276 B
BASE_MS = 1_760_000_000_000
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
HEADLINE_REAL = 100_000
HEADLINE_RECON = 1_000_000
T = TypeVar("T")

# figure id -> (row name, unit, lower is better)
FIGURES: dict[str, tuple[str, str, bool]] = {
    "initial_s": ("initial sync into an empty store, WebSocket", "s", True),
    "initial_rate": ("initial sync rate", "entries/s", False),
    "initial_mb": ("initial sync bytes on the wire (both ways)", "MB", True),
    "initial_requests": ("initial sync requests", "requests", True),
    "initial_rounds": ("initial sync reconcile rounds", "rounds", True),
    "initial_reconcile_s": ("initial sync: reconcile phase (all rounds)", "s", True),
    "initial_transfer_s": ("initial sync: transfer phase (fetch, verify, store)", "s", True),
    "initial_fetch_us": ("initial sync: waiting on get replies, per entry", "µs", True),
    "initial_verify_us": ("initial sync: verify (decode + Ed25519), per entry", "µs", True),
    "initial_store_us": ("initial sync: local put_entries, per entry", "µs", True),
    "initial_index_us": ("initial sync: fingerprint trees caught up, per entry", "µs", True),
    "initial_cpu_us": ("initial sync: CPU of this process (all threads), per entry", "µs", True),
    "initial_node_cpu_us": ("initial sync: CPU of the node process, per entry", "µs", True),
    "first_resync_ms": ("first re-sync after it (trees built during the pull)", "ms", True),
    "idle_ms": ("idle re-sync, open connection", "ms", True),
    "idle_requests": ("idle re-sync requests", "requests", True),
    "idle_fresh_ms": ("idle re-sync, new connection each time", "ms", True),
    "add_ms": ("pull of +100 new entries", "ms", True),
    "add_reconcile_ms": ("pull of +100: reconcile phase", "ms", True),
    "add_transfer_ms": ("pull of +100: transfer phase", "ms", True),
    "add_requests": ("pull of +100 new entries: requests", "requests", True),
    "add_rounds": ("pull of +100 new entries: rounds", "rounds", True),
    "add_kb": ("pull of +100 new entries: bytes", "KB", True),
    "stage_select_us": ("stage: SELECT raw by CID (no decode)", "µs", True),
    "stage_get_us": ("stage: SQLiteStore.get_entries, as the node's get", "µs", True),
    "stage_reply_us": ("stage: encode a 1000-entry get reply (CBOR+zlib)", "µs", True),
    "stage_reply_raw_us": ("stage: encode it uncompressed, as on loopback", "µs", True),
    "stage_unpack_us": ("stage: decode that reply (zlib+CBOR)", "µs", True),
    "stage_verify_us": ("stage: decode_entry with signature", "µs", True),
    "stage_sodium_us": ("stage: libsodium crypto_sign_open alone", "µs", True),
    "stage_sodium2_us": ("stage: libsodium crypto_sign_open, 2 threads (wall)", "µs", True),
    "stage_put_us": ("stage: put_entries(verified), fresh store", "µs", True),
    "wire_recon_ms": ("reconcile N vs N-100 over the node (real entries)", "ms", True),
    "wire_recon_rounds": ("reconcile over the node: rounds", "rounds", True),
    "wire_recon_kb": ("reconcile over the node: bytes (both ways)", "KB", True),
    "sqlite_recon_ms": ("reconcile N vs N-100, SQLite fingerprint trees", "ms", True),
    "sqlite_recon_rounds": ("reconcile, SQLite trees: rounds", "rounds", True),
    "sqlite_recon_kb": ("reconcile, SQLite trees: bytes (both ways)", "KB", True),
    "memory_recon_ms": ("reconcile N vs N-100, MemoryRangeIndex", "ms", True),
    "memory_recon_rounds": ("reconcile, MemoryRangeIndex: rounds", "rounds", True),
    "memory_recon_kb": ("reconcile, MemoryRangeIndex: bytes (both ways)", "KB", True),
}
# (figure id, size) -> (op, target, anchor text)
TARGETS: dict[tuple[str, int], tuple[str, float, str]] = {
    ("initial_s", HEADLINE_REAL): ("<=", 8.0, "PouchDB 30.8 s"),
    ("idle_ms", HEADLINE_REAL): ("<=", 10.0, "PouchDB 36 ms"),
    ("idle_requests", HEADLINE_REAL): ("<=", 1, "PouchDB 6 requests"),
    ("add_ms", HEADLINE_REAL): ("<=", 30.0, "PouchDB 91 ms"),
    **{
        (f"{kind}_recon_{what}", HEADLINE_RECON): target
        for kind in ("sqlite", "memory")
        for what, target in (
            ("ms", ("<=", 1000.0, "Negentropy JS 3.0 s")),
            ("rounds", ("<=", 3, "Negentropy JS 3 rounds")),
            ("kb", ("<=", 170.0, "Negentropy JS 168 KB")),
        )
    },
}


def clock() -> float:
    gc.collect()  # start every timed section from the same heap state
    return time.perf_counter()


def log(text: str) -> None:
    print(text, flush=True)


# --- entries and the cache ------------------------------------------------------------------


class Workload:
    """One author and one named key; entry ``i`` creates document ``i`` (one entry per
    document, no parents, as when N documents are created), with a random payload."""

    def __init__(self) -> None:
        self.author = SigningKey.generate()
        self.key = NamedKey.generate(f"{SPACE}/default@1")

    def entry(self, i: int, wall_ms: int) -> Entry:
        return build_entry(
            author=self.author,
            space=SPACE,
            collection=COLLECTION,
            document=f"task-{i:08d}-{os.urandom(4).hex()}",
            kind="create",
            payload=os.urandom(PAYLOAD_SIZE),
            created_at=pack_hlc(wall_ms, 0),
            key=self.key,
        )


@dataclass(frozen=True)
class Cached:
    """The cached stores of size ``n``: all entries, and the same without ``missing``."""

    n: int
    full: Path
    minus: Path
    missing: int
    entry_bytes: float  # mean size of an entry


async def start_trees(store: SQLiteStore) -> None:
    """Build the space's fingerprint tree now (as a node that has served sync has)."""
    await store.reconcile([ReconcileRequest(SetKey(SPACE))])


async def cached_entries(cache_dir: Path, n: int, missing: int) -> Cached:
    """The stores of ``n`` entries, built once and reused while the manifest matches."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    ignore = cache_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # generated data: never committed
    full, minus = (
        cache_dir / f"entries-{n}.sqlite",
        cache_dir / f"entries-{n}-minus{missing}.sqlite",
    )
    manifest = cache_dir / f"entries-{n}-minus{missing}.json"
    want = {"version": CACHE_VERSION, "n": n, "missing": missing, "payload": PAYLOAD_SIZE}
    if manifest.exists() and full.exists() and minus.exists():
        got = json.loads(manifest.read_text())
        if {k: got.get(k) for k in want} == want:
            return Cached(n, full, minus, missing, got["entry_bytes"])
    log(f"  generating {n:,} signed entries into {cache_dir} (once; cached for later runs) …")
    t = time.perf_counter()
    for p in (full, minus, manifest):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{p}{suffix}").unlink(missing_ok=True)
    tmp_full, tmp_minus = full.with_suffix(".tmp"), minus.with_suffix(".tmp")
    for p in (tmp_full, tmp_minus):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{p}{suffix}").unlink(missing_ok=True)
    w = Workload()
    skip = set(random.Random(n).sample(range(n), missing))
    size = 0
    a, b = SQLiteStore(tmp_full), SQLiteStore(tmp_minus)
    try:
        for start in range(0, n, 1000):
            batch = [w.entry(i, BASE_MS + i) for i in range(start, min(n, start + 1000))]
            size += sum(len(e.raw) for e in batch)
            for store, chosen in (
                (a, batch),
                (b, [e for i, e in enumerate(batch, start) if i not in skip]),
            ):
                results = await store.put_entries(chosen)
                if any(r.status is not PutStatus.ACCEPTED for r in results):
                    raise SystemExit("bench: generating the cache: an entry was not accepted")
        await start_trees(a)
        await start_trees(b)
    finally:
        a.close()
        b.close()
    tmp_full.rename(full)
    tmp_minus.rename(minus)
    got = {**want, "entry_bytes": size / n, "generated_s": round(time.perf_counter() - t, 1)}
    manifest.write_text(json.dumps(got) + "\n")
    log(f"  generated in {got['generated_s']} s")
    return Cached(n, full, minus, missing, size / n)


def copy_store(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


# --- the node ------------------------------------------------------------------------------


class Node:
    """A ``loomdb start --relay`` process on a free port of 127.0.0.1, over a copy of a store."""

    def __init__(self, home: Path, store: Path, profile_to: Path | None = None) -> None:
        self.home = home
        copy_store(store, home / "store.db")
        self.log_path = home.parent / f"{home.name}.log"
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if k not in ("LOOMDB_KEYRING_SECRET",)}
        # this interpreter's path (loomdb as it imports here), not the bench's own folder
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p) != ROOT)
        command = [sys.executable]
        if profile_to is not None:
            command += ["-m", "cProfile", "-o", str(profile_to)]
        command += ["-m", "loomdb", "start", "--relay", "--home", str(home), "--api", "127.0.0.1:0"]
        command += ["--p2p-addr", "/ip4/127.0.0.1/tcp/0"]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            bufsize=0,
        )
        try:
            self.url = self._wait_ready()
        except BaseException:
            self.stop()  # never leave a node behind
            raise

    def _wait_ready(self) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        out = b""
        deadline = time.monotonic() + START_TIMEOUT
        while b" ready, API at " not in out or not out.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"bench: node not ready in {START_TIMEOUT} s: {self.stderr()}")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise SystemExit(f"bench: node exited before ready: {self.stderr()}")
                out += chunk
        line = out.decode().split(" ready, API at ", 1)[1]
        return line.split()[0]

    def stderr(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
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


@contextlib.contextmanager
def running_node(home: Path, store: Path, profile_to: Path | None = None) -> Iterator[Node]:
    node = Node(home, store, profile_to)
    try:
        yield node
    finally:
        node.stop()


# --- timing splits ---------------------------------------------------------------------------


LOCAL_RECONCILE = "local reconcile steps (its fingerprint tree, worker thread)"
REMOTE_RECONCILE = "remote reconcile steps (round trips)"
FETCH = "fetch: waiting on get replies (round trips)"
VERIFY = "verify: decode_entry with signature (worker threads, summed)"
STORE = "store: local put_entries (SQLite worker thread)"
INDEX = "index: local catch_up_fingerprints after each batch (SQLite worker thread)"


class Split:
    """Busy time inside chosen calls during one sync (instance patches, and replicate's
    verify step). Transfer is pipelined, so the parts overlap and can exceed the wall."""

    def __init__(self, local: SQLiteStore, remote: RemoteStore) -> None:
        self.secs: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []
        self._wrap(local, "reconcile", LOCAL_RECONCILE)
        self._wrap(remote, "reconcile", REMOTE_RECONCILE)
        self._wrap(remote, "get_raw", FETCH)
        self._wrap(local, "put_entries", STORE)
        if hasattr(local, "catch_up_fingerprints"):  # (a store from before: built at re-sync)
            self._wrap(local, "catch_up_fingerprints", INDEX)
        verify = replicate._verify

        def timed_verify(
            wanted: Sequence[CID], raws: Sequence[bytes | None]
        ) -> tuple[list[Entry], list[Rejection], int]:
            t = time.perf_counter()
            try:
                return verify(wanted, raws)
            finally:
                self._add(VERIFY, t)

        replicate._verify = timed_verify  # looked up by name at each batch
        self._undo.append(lambda: setattr(replicate, "_verify", verify))

    def _add(self, label: str, since: float) -> None:
        self.secs[label] = self.secs.get(label, 0.0) + time.perf_counter() - since

    def _wrap(self, obj: object, name: str, label: str) -> None:
        fn: Callable[..., Awaitable[Any]] = getattr(obj, name)

        async def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return await fn(*a, **kw)
            finally:
                self._add(label, t)

        setattr(obj, name, timed)
        self._undo.append(lambda: delattr(obj, name))

    def close(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


class Phases:
    """A progress callback that notes when reconciliation ends."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.reconciled: float | None = None

    def __call__(self, state: SyncProgress) -> None:
        if state.phase != "reconcile" and self.reconciled is None:
            self.reconciled = time.perf_counter()


# --- figures over the node -------------------------------------------------------------------


@dataclass
class Values:
    """Every rep's value of every figure, by (figure, size)."""

    vals: dict[tuple[str, int], list[float]] = field(default_factory=dict)

    def add(self, fig: str, size: int, value: float) -> None:
        self.vals.setdefault((fig, size), []).append(value)


async def bounded(seconds: float, what: str, fn: Callable[[], Awaitable[T]]) -> T:
    try:
        with anyio.fail_after(seconds):
            return await fn()
    except TimeoutError:
        raise SystemExit(f"bench: {what} did not finish in {seconds} s") from None


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used; 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def initial_sync(
    node: Node, local_path: Path, n: int, out: Values, timeout: float
) -> tuple[SQLiteStore, dict[str, float]]:
    """Pull everything into a fresh store; returns the store (open) and the split."""
    local = SQLiteStore(local_path)
    remote = RemoteStore.connect(node.url)
    split = Split(local, remote)
    phases = Phases()
    try:
        t = clock()
        cpu, node_cpu = time.process_time(), process_cpu(node.proc.pid)
        phases.start = t
        report = await bounded(
            timeout,
            "the initial sync",
            lambda: pull_changes_from(local, remote, SPACE, progress=phases),
        )
        secs = time.perf_counter() - t
        cpu, node_cpu = time.process_time() - cpu, process_cpu(node.proc.pid) - node_cpu
    except BaseException:
        await local.aclose()
        raise
    finally:
        split.close()
        await remote.aclose()
    held = await local.count()
    if report.pulled != n or held != n or report.rejected or report.missing:
        raise SystemExit(
            f"bench: initial sync pulled {report.pulled} of {n} (store holds {held},"
            f" {len(report.rejected)} rejected, {report.missing} missing)"
        )
    rec = (phases.reconciled or t) - t
    out.add("initial_s", n, secs)
    out.add("initial_rate", n, n / secs)
    out.add("initial_mb", n, (remote.bytes_sent + remote.bytes_received) / 1e6)
    out.add("initial_requests", n, remote.requests)
    out.add("initial_rounds", n, report.rounds)
    out.add("initial_reconcile_s", n, rec)
    out.add("initial_transfer_s", n, secs - rec)
    for fig, label in (("initial_fetch_us", FETCH), ("initial_verify_us", VERIFY)):
        out.add(fig, n, split.secs.get(label, 0.0) * 1e6 / n)
    out.add("initial_store_us", n, split.secs.get(STORE, 0.0) * 1e6 / n)
    out.add("initial_index_us", n, split.secs.get(INDEX, 0.0) * 1e6 / n)
    out.add("initial_cpu_us", n, cpu * 1e6 / n)
    out.add("initial_node_cpu_us", n, node_cpu * 1e6 / n)
    extra = {
        "bytes_sent": remote.bytes_sent,
        "bytes_received": remote.bytes_received,
        **{k: round(v, 4) for k, v in split.secs.items()},
    }
    return local, extra


async def stages(cached: Cached, tmp: Path, out: Values, count: int) -> None:
    """Each step of the initial sync alone, per entry, on ``count`` cached entries: what
    the machine gives in this very run (read the sync figures against these)."""
    n = cached.n
    path = copy_store(cached.full, tmp / "stages" / "store.db")
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT cid, raw FROM entries ORDER BY created_at LIMIT ? OFFSET ?",
            (count, (n - count) // 2),
        ).fetchall()
        cids, raws = [CID(c) for c, _ in rows], [r for _, r in rows]
        t = clock()
        for i in range(0, count, 500):  # as SQLiteStore reads raw bytes by CID
            part = [c.binary for c in cids[i : i + 500]]
            marks = ",".join("?" * len(part))
            conn.execute(f"SELECT cid, raw FROM entries WHERE cid IN ({marks})", part).fetchall()
        out.add("stage_select_us", n, (time.perf_counter() - t) * 1e6 / count)
    finally:
        conn.close()
    store = SQLiteStore(path)
    try:
        t = clock()
        for i in range(0, count, 256):  # as StoreServer._get asks its store
            await store.get_entries(cids[i : i + 256])
        out.add("stage_get_us", n, (time.perf_counter() - t) * 1e6 / count)
    finally:
        await store.aclose()
    t = clock()
    frames = [wire.encode_reply(raws[i : i + 1000]) for i in range(0, count, 1000)]
    out.add("stage_reply_us", n, (time.perf_counter() - t) * 1e6 / count)
    t = clock()
    for i in range(0, count, 1000):
        wire.encode_reply(raws[i : i + 1000], compress=False)
    out.add("stage_reply_raw_us", n, (time.perf_counter() - t) * 1e6 / count)
    t = clock()
    for frame in frames:
        wire.decode_reply(frame)
    out.add("stage_unpack_us", n, (time.perf_counter() - t) * 1e6 / count)
    t = clock()
    entries = [decode_entry(raw, expected_cid=cid) for raw, cid in zip(raws, cids, strict=True)]
    out.add("stage_verify_us", n, (time.perf_counter() - t) * 1e6 / count)
    signed = [
        (e.signature + codec.signed_bytes(codec.header_of(e.raw, len(e.payload)), e.payload), e)
        for e in entries
    ]
    t = clock()
    for smsg, e in signed:
        nacl.bindings.crypto_sign_open(smsg, e.author)
    out.add("stage_sodium_us", n, (time.perf_counter() - t) * 1e6 / count)

    def verify_part(part: Sequence[tuple[bytes, Entry]]) -> None:
        for smsg, e in part:
            nacl.bindings.crypto_sign_open(smsg, e.author)

    half = len(signed) // 2
    other = threading.Thread(target=verify_part, args=(signed[half:],))
    t = clock()
    other.start()
    verify_part(signed[:half])
    other.join()
    out.add("stage_sodium2_us", n, (time.perf_counter() - t) * 1e6 / count)
    fresh = SQLiteStore(tmp / "stages" / "fresh.db")
    try:
        t = clock()
        for i in range(0, count, 1000):
            await fresh.put_entries(entries[i : i + 1000])
        out.add("stage_put_us", n, (time.perf_counter() - t) * 1e6 / count)
    finally:
        await fresh.aclose()
    shutil.rmtree(tmp / "stages", ignore_errors=True)


async def idle_resyncs(
    url: str, local: SQLiteStore, n: int, runs: int, out: Values, timeout: float
) -> None:
    """Re-sync with nothing to exchange: on the open connection, then on new ones."""
    lat: list[float] = []
    requests: set[int] = set()
    async with RemoteStore.connect(url) as remote:
        await remote.hello()  # open the connection (untimed)
        for _ in range(runs):
            before = remote.requests
            t = clock()
            report = await bounded(timeout, "an idle re-sync", lambda: sync(local, remote, SPACE))
            lat.append((time.perf_counter() - t) * 1e3)
            requests.add(remote.requests - before)
            if report.pulled or report.pushed or report.total:
                raise SystemExit(f"bench: an idle re-sync moved entries: {report.as_dict()}")
    out.add("idle_ms", n, statistics.median(lat))
    out.add("idle_requests", n, max(requests))
    fresh: list[float] = []
    for _ in range(max(3, runs // 3)):
        t = clock()
        async with RemoteStore.connect(url) as remote:
            await bounded(timeout, "an idle re-sync", functools.partial(sync, local, remote, SPACE))
        fresh.append((time.perf_counter() - t) * 1e3)
    out.add("idle_fresh_ms", n, statistics.median(fresh))


async def first_resync(url: str, local: SQLiteStore, n: int, out: Values, timeout: float) -> None:
    """The first re-sync after the initial one (before the pull indexed its batches, the
    local store built its trees of n items here)."""
    async with RemoteStore.connect(url) as remote:
        await remote.hello()
        t = clock()
        await bounded(timeout, "the first re-sync", lambda: sync(local, remote, SPACE))
        out.add("first_resync_ms", n, (time.perf_counter() - t) * 1e3)


async def wire_reconcile(
    url: str, local: SQLiteStore, n: int, missing: int, out: Values, timeout: float
) -> None:
    """Reconcile only (no transfer): the local store lacks ``missing`` of the node's n."""
    async with RemoteStore.connect(url) as remote:
        await remote.hello()
        sent, received = remote.bytes_sent, remote.bytes_received
        state = SyncProgress()
        t = clock()
        have, need = await bounded(
            timeout,
            "the reconciliation",
            lambda: replicate.reconcile(local, remote, [SetKey(SPACE)], state),
        )
        secs = time.perf_counter() - t
        if have or len(need) != missing:
            raise SystemExit(f"bench: reconcile found have={len(have)} need={len(need)}")
        out.add("wire_recon_ms", n, secs * 1e3)
        out.add("wire_recon_rounds", n, state.rounds)
        kb = (remote.bytes_sent - sent + remote.bytes_received - received) / 1e3
        out.add("wire_recon_kb", n, kb)


async def add_and_pull(
    url: str, local: SQLiteStore, n: int, add: int, rep: int, out: Values, timeout: float
) -> None:
    """Another client puts ``add`` new entries on the node; time the pull of exactly them."""
    w = Workload()
    base = BASE_MS + 10 * n + 10_000 + rep * add
    new = [w.entry(10 * n + rep * add + j, base + j) for j in range(add)]
    async with RemoteStore.connect(url) as writer:
        results = await bounded(timeout, "the put", lambda: writer.put_entries(new))
        if any(r.status is not PutStatus.ACCEPTED for r in results):
            raise SystemExit("bench: the node refused a new entry")
    async with RemoteStore.connect(url) as remote:
        await remote.hello()
        before, sent, received = remote.requests, remote.bytes_sent, remote.bytes_received
        phases = Phases()
        t = clock()
        phases.start = t
        report = await bounded(
            timeout, "the pull", lambda: pull_changes_from(local, remote, SPACE, progress=phases)
        )
        secs = time.perf_counter() - t
        if report.pulled != add:
            raise SystemExit(f"bench: pulled {report.pulled} of {add} new entries")
        rec = (phases.reconciled or t) - t
        out.add("add_ms", n, secs * 1e3)
        out.add("add_reconcile_ms", n, rec * 1e3)
        out.add("add_transfer_ms", n, (secs - rec) * 1e3)
        out.add("add_requests", n, remote.requests - before)
        out.add("add_rounds", n, report.rounds)
        out.add("add_kb", n, (remote.bytes_sent - sent + remote.bytes_received - received) / 1e3)


async def node_figures(
    args: argparse.Namespace, cached: Cached, tmp: Path, out: Values
) -> dict[str, Any]:
    n, timeout = cached.n, args.timeout
    notes: dict[str, Any] = {"entry_bytes": round(cached.entry_bytes, 1), "splits": []}
    with running_node(tmp / f"node-{n}", cached.full) as node:
        log(f"  node ready at {node.url} ({n:,} entries)")
        local: SQLiteStore | None = None
        try:
            for rep in range(args.reps):
                await stages(cached, tmp, out, min(n, args.stage_entries))
                if local is not None:
                    await local.aclose()
                    shutil.rmtree(local.path.parent, ignore_errors=True)
                    local = None
                path = tmp / f"local-{n}-{rep}" / "store.db"
                path.parent.mkdir()
                try:
                    local, split = await initial_sync(node, path, n, out, timeout)
                except LoomError as exc:
                    notes["initial_error"] = f"{type(exc).__name__}: {exc}"
                    log(f"  the initial sync FAILED: {notes['initial_error']}")
                    break
                notes["splits"].append(split)
                vals = out.vals
                log(
                    f"  rep {rep + 1}/{args.reps}: initial sync {vals['initial_s', n][-1]:.2f} s,"
                    f" {vals['initial_rounds', n][-1]:.0f} rounds,"
                    f" {vals['initial_requests', n][-1]:.0f} requests"
                )
            if local is None:
                log("  the later figures use a copy of the node's store as the synced store")
                local = SQLiteStore(copy_store(cached.full, tmp / f"local-{n}-copy" / "store.db"))
            else:
                await first_resync(node.url, local, n, out, timeout)
            for _ in range(args.reps):
                await idle_resyncs(node.url, local, n, args.idle_runs, out, timeout)
            minus = SQLiteStore(copy_store(cached.minus, tmp / f"minus-{n}" / "store.db"))
            try:
                for _ in range(args.reps):
                    await wire_reconcile(node.url, minus, n, cached.missing, out, timeout)
            finally:
                await minus.aclose()
            for rep in range(args.reps):
                await add_and_pull(node.url, local, n, args.add, rep, out, timeout)
            log(
                f"  idle {out.vals['idle_ms', n][-1]:.2f} ms, +{args.add}"
                f" {out.vals['add_ms', n][-1]:.1f} ms, reconcile vs -{cached.missing}"
                f" {out.vals['wire_recon_ms', n][-1]:.1f} ms"
            )
        finally:
            if local is not None:
                await local.aclose()
    return notes


# --- reconciliation in process ----------------------------------------------------------------


def synthetic_items(n: int, seed: int) -> list[tuple[int, bytes]]:
    """As negentropy_bench.mjs: timestamps from 1700000000 up by (i * 2654435761) % 3,
    random 32-byte ids."""
    rng = random.Random(seed)
    ts = 1_700_000_000
    items = []
    for i in range(n):
        ts += (i * 2654435761) % 3
        items.append((ts, rng.randbytes(32)))
    return items


@dataclass
class Exchange:
    rounds: int = 0
    a_to_b: int = 0
    b_to_a: int = 0
    have: int = 0
    need: int = 0
    secs: float = 0.0


Step = Callable[[ReconcileRequest], Awaitable[ReconcileReply]]


async def exchange(initiator: Step, responder: Step) -> Exchange:
    """Drive one reconciliation message by message, as replicate.reconcile does."""
    ex = Exchange()
    t = clock()
    message = (await initiator(ReconcileRequest(SetKey(SPACE)))).message
    while message is not None:
        if ex.rounds >= 1000:
            raise SystemExit("bench: reconciliation did not end in 1000 rounds")
        ex.a_to_b += len(message)
        answer = (
            await responder(ReconcileRequest(SetKey(SPACE), message, initiator=False))
        ).message
        assert answer is not None
        ex.rounds += 1
        ex.b_to_a += len(answer)
        reply = await initiator(ReconcileRequest(SetKey(SPACE), answer, initiator=True))
        ex.have += len(reply.have)
        ex.need += len(reply.need)
        message = reply.message
    ex.secs = time.perf_counter() - t
    return ex


def sqlite_step(store: SQLiteStore) -> Step:
    async def step(request: ReconcileRequest) -> ReconcileReply:
        (reply,) = await store.reconcile([request])
        return reply

    return step


def memory_step(index: MemoryRangeIndex) -> Step:
    async def step(request: ReconcileRequest) -> ReconcileReply:
        return reconcile_on(index, request)

    return step


def sqlite_set(path: Path, items: list[tuple[int, bytes]]) -> None:
    """A store file whose space set holds ``items`` (no entries): the raw-item hook."""
    SQLiteStore(path).close()  # the schema
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        fingerprints.FingerprintIndex(conn).add_items(SPACE, None, items)
    finally:
        conn.close()


async def reconcile_figures(
    args: argparse.Namespace, m: int, tmp: Path, out: Values
) -> dict[str, Any]:
    log(f"reconcile {m:,} vs {m - args.missing:,} items, in process")
    t = time.perf_counter()
    items = synthetic_items(m, seed=m)
    gone = set(random.Random(m + 1).sample(range(m), args.missing))
    fewer = [it for i, it in enumerate(items) if i not in gone]
    notes: dict[str, Any] = {"generate_s": round(time.perf_counter() - t, 2)}
    t = clock()
    sqlite_set(tmp / f"a-{m}.db", items)
    sqlite_set(tmp / f"b-{m}.db", fewer)
    notes["sqlite_build_s"] = round(time.perf_counter() - t, 2)
    t = clock()
    mem_a, mem_b = MemoryRangeIndex(items), MemoryRangeIndex(fewer)
    mem_a.fingerprint_sum(ZERO, INFINITY)  # build the prefix sums (untimed)
    mem_b.fingerprint_sum(ZERO, INFINITY)
    notes["memory_build_s"] = round(time.perf_counter() - t, 2)
    del items, fewer
    a, b = SQLiteStore(tmp / f"a-{m}.db"), SQLiteStore(tmp / f"b-{m}.db")
    try:
        for rep in range(args.reps):
            for kind, (first, second) in (
                ("sqlite", (sqlite_step(a), sqlite_step(b))),
                ("memory", (memory_step(mem_a), memory_step(mem_b))),
            ):
                ex = await bounded(
                    args.timeout,
                    "a reconciliation",
                    functools.partial(exchange, first, second),
                )
                if ex.have != args.missing or ex.need:
                    raise SystemExit(f"bench: {kind} found have={ex.have} need={ex.need}")
                out.add(f"{kind}_recon_ms", m, ex.secs * 1e3)
                out.add(f"{kind}_recon_rounds", m, ex.rounds)
                out.add(f"{kind}_recon_kb", m, (ex.a_to_b + ex.b_to_a) / 1e3)
                notes.setdefault(f"{kind}_bytes", []).append([ex.a_to_b, ex.b_to_a])
            log(
                f"  rep {rep + 1}/{args.reps}: SQLite {out.vals['sqlite_recon_ms', m][-1]:.0f} ms"
                f" {out.vals['sqlite_recon_rounds', m][-1]:.0f} rounds"
                f" {out.vals['sqlite_recon_kb', m][-1]:.1f} KB;"
                f" memory {out.vals['memory_recon_ms', m][-1]:.0f} ms"
            )
    finally:
        a.close()
        b.close()
    log(
        f"  built in: SQLite {notes['sqlite_build_s']} s (both trees),"
        f" memory {notes['memory_build_s']} s"
    )
    return notes


# --- where the time goes (--profile) ----------------------------------------------------------


def top(stats: pstats.Stats, key: str, count: int, only: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if only is not None and only not in file:
            continue
        where = file.split("/site-packages/")[-1].split("/src/")[-1]
        name = f"{where}:{line}({func})" if file != "~" else func
        rows.append({"function": name, "ncalls": nc, "tottime_s": tt, "cumtime_s": ct})
    rows.sort(key=lambda r: r[key], reverse=True)
    return rows[:count]


def show_profile(stats: pstats.Stats, title: str) -> dict[str, Any]:
    own = top(stats, "tottime_s", 18)
    cum = top(stats, "cumtime_s", 18, only="loomdb")
    log(f"\n  cProfile, {title} (main thread only; worker threads show as waits)")
    log(f"    {'own s':>8s} {'cum s':>8s} {'calls':>9s}  function")
    for r in own:
        log(f"    {r['tottime_s']:8.3f} {r['cumtime_s']:8.3f} {r['ncalls']:9d}  {r['function']}")
    log("  loomdb functions by cumulative time")
    for r in cum:
        log(f"    {r['tottime_s']:8.3f} {r['cumtime_s']:8.3f} {r['ncalls']:9d}  {r['function']}")
    return {"top_own": own, "top_cum_loomdb": cum}


async def profile_pass(args: argparse.Namespace, cached: Cached, tmp: Path) -> dict[str, Any]:
    """Not counted in the figures: one initial sync with the client and the node under
    cProfile, then idle re-syncs and one +100 pull."""
    n = cached.n
    log(f"\nwhere the time goes: {n:,} entries again, client and node under cProfile")
    node_prof = tmp / "node.prof"
    result: dict[str, Any] = {}
    with running_node(tmp / "node-profile", cached.full, profile_to=node_prof) as node:
        prof = cProfile.Profile()
        scratch = Values()
        path = tmp / "local-profile" / "store.db"
        path.parent.mkdir()
        prof.enable()
        local, split = await initial_sync(node, path, n, scratch, args.timeout)
        prof.disable()
        result["initial"] = {"seconds_under_profiler": scratch.vals["initial_s", n][0], **split}
        log(f"  initial sync under cProfile: {scratch.vals['initial_s', n][0]:.2f} s; split:")
        for k, v in split.items():
            if isinstance(v, float):
                log(f"    {k:52s} {v:8.3f} s")
        result["client_initial"] = show_profile(pstats.Stats(prof), "client, initial sync")
        try:
            await first_resync(node.url, local, n, scratch, args.timeout)
            prof = cProfile.Profile()
            prof.enable()
            await idle_resyncs(node.url, local, n, args.idle_runs, scratch, args.timeout)
            prof.disable()
            result["client_idle"] = show_profile(
                pstats.Stats(prof), f"client, {args.idle_runs} idle re-syncs and the fresh ones"
            )
            prof = cProfile.Profile()
            prof.enable()
            await add_and_pull(node.url, local, n, args.add, 0, scratch, args.timeout)
            prof.disable()
            result["client_add"] = show_profile(
                pstats.Stats(prof), f"client, put +{args.add}, pull"
            )
        finally:
            await local.aclose()
    if node_prof.exists():
        result["node"] = show_profile(
            pstats.Stats(str(node_prof)), "node process, the whole profile pass"
        )
    return result


# --- output --------------------------------------------------------------------------------------


def verdict(fig: str, size: int, median: float) -> tuple[dict[str, Any] | None, bool | None]:
    target = TARGETS.get((fig, size))
    if target is None:
        return None, None
    op, want, anchor = target
    ok = median <= want if op == "<=" else median >= want
    return {"op": op, "value": want, "anchor": anchor}, ok


def fmt(value: float, unit: str) -> str:
    if unit in ("entries/s",):
        return f"{value:,.0f}"
    if unit in ("requests", "rounds"):
        return f"{value:,.0f}"
    if unit in ("ms", "KB") and value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if unit != "s" else f"{value:,.3f}"


def rows(out: Values) -> list[dict[str, Any]]:
    results = []
    for (fig, size), values in sorted(
        out.vals.items(), key=lambda kv: (list(FIGURES).index(kv[0][0]), kv[0][1])
    ):
        name, unit, _ = FIGURES[fig]
        v = sorted(values)
        r: dict[str, Any] = {
            "id": fig,
            "size": size,
            "name": name,
            "unit": unit,
            "min": v[0],
            "median": statistics.median(v),
            "max": v[-1],
            "values": values,
        }
        r["target"], r["pass"] = verdict(fig, size, r["median"])
        results.append(r)
    return results


def print_tables(results: list[dict[str, Any]], real: list[int], recon: list[int]) -> None:
    by = {(r["id"], r["size"]): r for r in results}
    log("\nfigures against their targets (median of the reps; min-max)")
    log(f"  {'figure':58s} {'size':>9s} {'median':>10s} {'min-max':>21s}  target, anchor")
    for (fig, size), (op, want, anchor) in TARGETS.items():
        r = by.get((fig, size))
        name, unit, _ = FIGURES[fig]
        if r is None:
            log(f"  {name.strip():58s} {size:>9,}  not run")
            continue
        spread = f"{fmt(r['min'], unit)}-{fmt(r['max'], unit)}"
        mark = "met" if r["pass"] else "MISSED"
        sym = "≤" if op == "<=" else "≥"
        log(
            f"  {name.strip():58s} {size:>9,} {fmt(r['median'], unit):>10s} {spread:>21s}"
            f"  {sym} {want:g} {unit}: {mark} ({anchor})"
        )
    for title, sizes, figs in (
        (
            "over a relay node (real entries), by N",
            real,
            [f for f in FIGURES if not f.startswith(("sqlite", "memory"))],
        ),
        (
            "reconcile N vs N-100 in process (synthetic items), by N",
            recon,
            [f for f in FIGURES if f.startswith(("sqlite", "memory"))],
        ),
    ):
        if not sizes:
            continue
        log(f"\n{title} (median; min-max over reps)")
        log(f"  {'figure':52s} {'unit':>9s} " + " ".join(f"{s:>22,}" for s in sizes))
        for fig in figs:
            name, unit, _ = FIGURES[fig]
            cells = []
            for s in sizes:
                r = by.get((fig, s))
                if r is None:
                    cells.append(f"{'-':>22s}")
                else:
                    spread = f"({fmt(r['min'], unit)}-{fmt(r['max'], unit)})"
                    cells.append(f"{fmt(r['median'], unit):>9s} {spread:>12s}")
            if any(c.strip() != "-" for c in cells):
                log(f"  {name:52s} {unit:>9s} " + " ".join(cells))


# --- main -----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Values()
    notes: dict[str, Any] = {"real": {}, "reconcile": {}}
    with tempfile.TemporaryDirectory(prefix="loomdb-bench-sync-") as tmp_name:
        tmp = Path(tmp_name)
        for m in args.recon_sizes:
            where = tmp / f"recon-{m}"
            where.mkdir()
            try:
                notes["reconcile"][m] = await reconcile_figures(args, m, where, out)
            finally:
                shutil.rmtree(where, ignore_errors=True)
        cached_by_size: dict[int, Cached] = {}
        for n in args.sizes:
            log(f"relay node with {n:,} entries")
            cached = await cached_entries(args.cache_dir, n, args.missing)
            cached_by_size[n] = cached
            notes["real"][n] = await node_figures(args, cached, tmp, out)
            for p in tmp.iterdir():  # this size's node home and local stores
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
        if args.profile and args.sizes:
            # the largest size whose initial sync is a target (1M is too slow to profile)
            size = max([s for s in args.sizes if s <= HEADLINE_REAL] or [min(args.sizes)])
            notes["profile"] = await profile_pass(args, cached_by_size[size], tmp)
    results = rows(out)
    print_tables(results, args.sizes, args.recon_sizes)
    return {"results": results, "notes": notes}


def library_digest() -> str:
    """Short hash of the sync code these figures are of."""
    import loomdb.stores
    import loomdb.sync
    import loomdb.transports

    h = hashlib.sha256()
    for pkg in (loomdb.stores, loomdb.sync, loomdb.transports):
        for f in sorted(Path(pkg.__file__ or "").parent.glob("*.py")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def sizes(text: str) -> list[int]:
    try:
        values = sorted({int(x.replace("_", "")) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of sizes: {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("sizes must be positive")
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--sizes", type=sizes, default=[10_000, 100_000], help="real-entry sizes N (node figures)"
    )
    ap.add_argument(
        "--big",
        action="store_true",
        help="add N = 1,000,000 to --sizes (slow: generates 1M entries once)",
    )
    ap.add_argument(
        "--recon-sizes",
        type=sizes,
        default=[10_000, 100_000, 1_000_000],
        help="synthetic set sizes for the in-process reconcile figure",
    )
    ap.add_argument("--missing", type=int, default=100, help="items the smaller side lacks")
    ap.add_argument("--add", type=int, default=100, help="new entries for the +N pull figure")
    ap.add_argument("--reps", type=int, default=3, help="runs of every figure")
    ap.add_argument("--idle-runs", type=int, default=50, help="idle re-syncs per rep (median)")
    ap.add_argument(
        "--stage-entries", type=int, default=3000, help="entries the per-stage timings use"
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds any one step may take")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="generated entries")
    ap.add_argument(
        "--out", type=Path, help=f"results file (default {DEFAULT_OUT}; none with --quick)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke test: small sizes, 1 rep, JSON only if --out"
    )
    ap.add_argument(
        "--profile", action="store_true", help="extra pass under cProfile (client and node)"
    )
    args = ap.parse_args()
    if args.big:
        args.sizes = sorted({*args.sizes, 1_000_000})
    if args.quick:
        args.sizes, args.recon_sizes = [min(args.sizes[0], 1000)], [min(args.recon_sizes[0], 2000)]
        args.reps, args.idle_runs = 1, min(args.idle_runs, 5)
        args.stage_entries = min(args.stage_entries, 300)
        args.missing, args.add = min(args.missing, 20), min(args.add, 20)
    if min(args.reps, args.idle_runs, args.add, args.missing) < 1:
        ap.error("--reps, --idle-runs, --add and --missing must be positive")
    if args.missing >= min(args.sizes + args.recon_sizes):
        ap.error("--missing must be below every size")
    os.environ.pop("LOOMDB_KEYRING_SECRET", None)
    logging.getLogger("loomdb.keyring").setLevel(logging.ERROR)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, timeout=10, check=False)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "pynacl": version("pynacl"),
        "library_sha256": library_digest(),
        "nproc": len(os.sched_getaffinity(0)),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "uptime": uptime.stdout.strip(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    log(f"loomdb sync benchmark {meta['date']}")
    log(f"  Python {meta['python']}, SQLite {meta['sqlite']}, PyNaCl {meta['pynacl']}")
    log(f"  nproc {meta['nproc']}; uptime: {meta['uptime']}")
    t = time.perf_counter()
    out = {"meta": meta, **asyncio.run(run(args))}
    out["meta"]["wall_s"] = round(time.perf_counter() - t, 1)
    log(f"\nwall time {out['meta']['wall_s']} s")
    path = args.out if args.out is not None or args.quick else DEFAULT_OUT
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
        log(f"wrote {path}")


if __name__ == "__main__":
    main()
