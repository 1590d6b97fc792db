#!/usr/bin/env python3
"""Documents benchmark: loomdb's document layer (Database, Collection) end to end.

    python bench/documents.py [--docs 100000] [--updates 20000] [--reps 3]
                              [--out PATH] [--quick] [--profile]

Everything goes through the public library calls, on SQLite-backed databases
in temporary homes (removed after):

* single updates: ``await coll.update(id, patch)`` one at a time, latency
  p50 / p99 over --single updates spread over --single-docs documents (more
  than the live-document cache holds), then over --hot-docs (which it holds);
* batched updates: ``update_many`` in batches of --batch updates, each batch to
  --batch different documents, --updates in all; and ``create_many`` docs/s;
* the ceiling of the batched updates, in the same rep: ``build_entry`` +
  ``SQLiteStore.put_entries`` of --updates entries of an update's size, no
  document layer, and ``update_many`` as a share of it;
* the floor of the batched updates: that ceiling plus Loro's part alone (open each
  document from its deltas, change, export, read the value; no store, no views),
  in series, and ``update_many`` as a share of it: no Python around the engine
  can make ``update_many`` faster than this floor;
* materialize: close a home of --write-docs documents, delete its views.db and
  time ``Database.open`` (which rebuilds the views from the entry store);
* queries on --docs documents: equality and range filters with limit 10, each
  the median of up to --runs calls, without and then with ``create_index``;
* over HTTP, against a real node (``loomdb start`` on a fresh home, 127.0.0.1):
  ``loomdb client doc import`` of --import-docs JSON lines (batches of --batch,
  ``POST …/docs:batch``) and, for comparison, --post-docs ``POST …/docs`` one at
  a time on one keep-alive connection.

Each rep runs the write figures on a fresh home. Then one query home is built,
every rep runs the queries, the indexes are created (the library cannot drop
them) and every rep runs the queries again. Rows give min / median / max over
reps. --profile adds untimed passes that show where the time goes. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import hashlib
import json
import logging
import math
import os
import pstats
import random
import re
import select
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from loomdb.clock import pack_hlc
from loomdb.documents import Collection, Database, crdt
from loomdb.documents.values import ROOT
from loomdb.entries.entry import Entry, UnsignedEntry, build_entry, prepare_entry
from loomdb.entries.signing import build_entries
from loomdb.identity.keys import NamedKey, SigningKey
from loomdb.stores.base import PutStatus
from loomdb.stores.sqlite import SQLiteStore

DEFAULT_OUT = Path(__file__).parent / "results" / "documents.json"
COLL = "items"
GROUPS = 100

# id -> (row name, unit); the order is the order of the table and of the JSON.
ROWS: dict[str, tuple[str, str]] = {
    "single_update_p50": ("update(), one at a time: p50", "ms"),
    "single_update_p99": ("update(), one at a time: p99", "ms"),
    "hot_update_p50": ("update(), doc in the live cache: p50", "ms"),
    "hot_update_p99": ("update(), doc in the live cache: p99", "ms"),
    "update_many": ("update_many, every update a different doc", "updates/s"),
    "create_many": ("create_many", "docs/s"),
    "raw_create": ("ceiling: build_entry + put_entries, no documents", "entries/s"),
    "update_many_share": ("update_many as a share of the ceiling", "%"),
    "raw_create_cores": ("ceiling, signed on every core (build_entries)", "entries/s"),
    "update_many_share_cores": ("update_many as a share of that ceiling", "%"),
    "loro_part": ("Loro alone: open from deltas, change, export, read", "updates/s"),
    "update_floor": ("floor: that ceiling plus Loro alone, in series", "updates/s"),
    "update_many_share_floor": ("update_many as a share of the floor", "%"),
    "materialize_s": ("materialize: open without views.db", "s"),
    "materialize_rate": ("materialize: open without views.db", "docs/s"),
    "reopen_ms": ("open with views.db intact (baseline)", "ms"),
}
# query id -> (label, where); every shape has a "_noindex" and an "_indexed" row.
QUERIES: dict[str, tuple[str, Callable[[int], list[dict[str, Any]]]]] = {
    "q_eq": ("eq group = 42 (1 %)", lambda n: [{"field": "group", "op": "eq", "value": 42}]),
    "q_range": (
        "range n in [n/2, n/2 + 1 %)",
        lambda n: [
            {"field": "n", "op": "gte", "value": n // 2},
            {"field": "n", "op": "lt", "value": n // 2 + max(1, n // 100)},
        ],
    ),
    "q_eq_unique": ("eq n = n/3 (1 doc)", lambda n: [{"field": "n", "op": "eq", "value": n // 3}]),
    "q_range_wide": (
        "range n >= n/2 (50 %)",
        lambda n: [{"field": "n", "op": "gte", "value": n // 2}],
    ),
}
INDEXED_FIELDS = ("group", "n")
for _qid, (_label, _) in QUERIES.items():
    ROWS[f"{_qid}_noindex"] = (f"{_label}, no index", "ms")
    ROWS[f"{_qid}_indexed"] = (f"{_label}, indexed", "ms")
ROWS["create_index"] = ("create_index (group and n)", "s")
ROWS["query_build"] = ("create_many building the query home", "docs/s")
ROWS["import_http"] = ("doc import over HTTP (a real node)", "docs/s")
ROWS["import_node_cpu"] = ("  the node's CPU per imported doc (all threads)", "µs")
ROWS["post_loop_http"] = ("POST …/docs one at a time over HTTP", "docs/s")

PARTS = ("writes", "queries", "http")  # --only

# id -> (comparison, value)
TARGETS: dict[str, tuple[str, float]] = {
    "single_update_p50": ("<=", 1.0),
    "single_update_p99": ("<=", 3.0),
    "update_many": (">=", 10_000.0),
    "import_http": (">=", 5_000.0),
    **{f"{q}_indexed": ("<=", 5.0) for q in QUERIES},
}


def clock() -> float:
    gc.collect()  # start every timed section from the same heap state
    return time.perf_counter()


def doc_value(i: int, rng: random.Random) -> dict[str, Any]:
    return {"n": i, "group": i % GROUPS, "name": f"item {i:07d}", "score": rng.random() * 1000}


async def create_docs(
    coll: Collection, n: int, batch: int, rng: random.Random
) -> tuple[list[str], float]:
    """``n`` documents (ids chosen by the library) in batches; returns ids and docs/s."""
    ids: list[str] = []
    spent = 0.0
    for start in range(0, n, batch):
        values = [doc_value(i, rng) for i in range(start, min(n, start + batch))]
        t = clock()
        docs = await coll.create_many(values)
        spent += time.perf_counter() - t
        ids += [d.id for d in docs]
    return ids, n / spent


def drop_views(home: Path) -> None:
    for name in ("views.db", "views.db-wal", "views.db-shm"):
        (home / name).unlink(missing_ok=True)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


async def single_updates(
    coll: Collection, ids: list[str], n: int, rng: random.Random
) -> list[float]:
    """Latencies (ms) of ``n`` awaited ``update`` calls, round-robin over ``ids``."""
    lat: list[float] = []
    gc.collect()
    for i in range(n):
        patch = {"score": rng.random() * 1000}
        doc_id = ids[i % len(ids)]
        t = time.perf_counter()
        await coll.update(doc_id, patch)
        lat.append((time.perf_counter() - t) * 1e3)
    return sorted(lat)


def batches(
    ids: list[str], total: int, batch: int, rng: random.Random
) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """``total`` patches in batches of distinct documents, walking ``ids`` round-robin."""
    assert batch <= len(ids)
    pos = done = 0
    while done < total:
        size = min(batch, total - done)
        chunk = [ids[(pos + k) % len(ids)] for k in range(size)]
        pos, done = (pos + size) % len(ids), done + size
        yield [(d, {"score": rng.random() * 1000}) for d in chunk]


async def batched_updates(
    coll: Collection, ids: list[str], total: int, batch: int, rng: random.Random
) -> float:
    work = list(batches(ids, total, batch, rng))  # patches made beforehand, untimed
    t = clock()
    for patches in work:
        await coll.update_many(patches)
    return total / (time.perf_counter() - t)


async def raw_create(
    path: Path, total: int, batch: int, docs: int, *, cores: bool = False
) -> float:
    """The ceiling of the batched updates, in the same run: entries of the size an
    update makes (a 16-byte salt and a ~100-byte delta, encrypted), each chained to
    the previous one of its document, ``docs`` documents round-robin, built and
    stored in batches of ``batch`` into a fresh SQLite store. No document layer.
    ``cores``: each batch is prepared one by one and signed on every core
    (``prepare_entry`` + ``build_entries``, as the document layer writes); the batch
    must then hold each document once (``batch <= docs``)."""
    author, key = SigningKey.generate(), NamedKey.generate("bench@1")
    payloads = [os.urandom(120) for _ in range(64)]
    last: dict[int, Entry] = {}
    store = SQLiteStore(path)
    try:
        t = clock()
        for start in range(0, total, batch):
            chunk: list[Entry] = []
            unsigned: list[UnsignedEntry] = []
            for i in range(start, min(total, start + batch)):
                parent = last.get(i % docs)
                spec: dict[str, Any] = {
                    "author": author,
                    "space": "main",
                    "collection": COLL,
                    "document": f"doc-{i % docs:05d}",
                    "kind": "create" if parent is None else "change",
                    "payload": payloads[i % len(payloads)],
                    "created_at": pack_hlc(1_760_000_000_000 + i // 1000, i % 1000),
                    "parents": () if parent is None else (parent,),
                    "key": key,
                }
                if cores:
                    unsigned.append(prepare_entry(**spec))
                else:
                    last[i % docs] = entry = build_entry(**spec)
                    chunk.append(entry)
            if cores:
                chunk = build_entries(author, unsigned)
                for i, entry in enumerate(chunk, start):
                    last[i % docs] = entry
            results = await store.put_entries(chunk)
            if any(r.status is not PutStatus.ACCEPTED for r in results):
                raise SystemExit("bench: the store refused a raw entry")
        return total / (time.perf_counter() - t)
    finally:
        await store.aclose()


def loro_part(docs: int, total: int, rng: random.Random) -> float:
    """Updates/s of Loro's part of ``update_many`` alone, as the batched updates
    make it (no store, no views, no entry, no Python document layer): each update
    opens its document from all its deltas (a live-cache miss), sets ``score``,
    commits, exports the delta and reads the value; ``docs`` documents made with
    :func:`doc_value`'s fields (untimed), then ``total`` updates round-robin, so
    a document opened in the second pass replays two deltas, as in the bench."""
    deltas: list[list[bytes]] = []
    peers = [rng.getrandbits(63) for _ in range(docs)]
    for i in range(docs):
        doc = crdt.new_doc()
        doc.peer_id = peers[i]
        since = doc.oplog_vv
        root = doc.get_map(ROOT)
        for k, v in doc_value(i, rng).items():
            root.insert(k, v)
        doc.commit()
        deltas.append([crdt.export_since(doc, since)])
    scores = [rng.random() * 1000 for _ in range(total)]
    t = clock()
    for i in range(total):
        kept = deltas[i % docs]
        doc = crdt.new_doc()
        for delta in kept:
            crdt.import_delta(doc, delta)
        doc.peer_id = peers[i % docs]
        since = doc.oplog_vv
        doc.get_map(ROOT).insert("score", scores[i])
        doc.commit()
        kept.append(crdt.export_since(doc, since))
        doc.get_deep_value()
    return total / (time.perf_counter() - t)


async def timed_open(home: Path) -> tuple[Database, float]:
    t = clock()
    db = await Database.open(home)
    return db, time.perf_counter() - t


async def write_rep(args: argparse.Namespace, rng: random.Random, profile: bool) -> dict[str, Any]:
    """One rep of the write figures on a fresh home of --write-docs documents."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="loomdb-bench-docs-") as tmp:
        home = Path(tmp) / "home"
        db = await Database.open(home)
        try:
            ids, out["create_many"] = await create_docs(
                db.collection(COLL), args.write_docs, args.batch, rng
            )
        finally:
            await db.aclose()

        drop_views(home)
        db, secs = await timed_open(home)
        try:
            count = await db.collection(COLL).count()
            if count != args.write_docs:
                raise SystemExit(f"bench: materialized {count} of {args.write_docs} documents")
            out["materialize_s"], out["materialize_rate"] = secs, count / secs
            out["materialize_entries"] = (await db.stats())["entries"]
        finally:
            await db.aclose()
        if profile:
            out["profile_materialize"] = await profile_materialize(home)

        db, secs = await timed_open(home)
        out["reopen_ms"] = secs * 1e3
        try:
            coll = db.collection(COLL)
            lat = await single_updates(coll, ids[: args.single_docs], args.single, rng)
            out["single_update_p50"] = percentile(lat, 50)
            out["single_update_p99"] = percentile(lat, 99)
            out["single_update_max"] = lat[-1]
            hot = ids[: args.hot_docs]
            await single_updates(coll, hot, len(hot), rng)  # load them into the cache, untimed
            lat = await single_updates(coll, hot, args.single, rng)
            out["hot_update_p50"] = percentile(lat, 50)
            out["hot_update_p99"] = percentile(lat, 99)
            out["update_many"] = await batched_updates(coll, ids, args.updates, args.batch, rng)
            if profile:
                out["profile"] = await profile_pass(db, ids, args, rng)
        finally:
            await db.aclose()
        out["raw_create"] = await raw_create(
            Path(tmp) / "raw.db", args.updates, args.batch, args.write_docs
        )
        out["update_many_share"] = 100 * out["update_many"] / out["raw_create"]
        out["raw_create_cores"] = await raw_create(
            Path(tmp) / "raw-cores.db", args.updates, args.batch, args.write_docs, cores=True
        )
        out["update_many_share_cores"] = 100 * out["update_many"] / out["raw_create_cores"]
        out["loro_part"] = loro_part(args.write_docs, args.updates, rng)
        best = max(out["raw_create"], out["raw_create_cores"])
        out["update_floor"] = 1 / (1 / best + 1 / out["loro_part"])
        out["update_many_share_floor"] = 100 * out["update_many"] / out["update_floor"]
    return out


# --- over HTTP: a real node ----------------------------------------------------------

READY = re.compile(rb"ready, API at (http://\S+)")
NODE_START_S = 60.0
NODE_STOP_S = 15.0
CLIENT_S = 900.0


class NodeProcess:
    """``loomdb start`` on a fresh home, port 0; its admin token goes to a private
    runtime directory (no trace in the user's)."""

    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "node"
        self.env = {k: v for k, v in os.environ.items() if k not in ("LOOMDB_URL",)}
        self.env["LOOMDB_RUNTIME_DIR"] = str(tmp / "runtime")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loomdb", "start", "--home", str(self.home),
             "--api", "127.0.0.1:0", "--p2p-addr", "/ip4/127.0.0.1/tcp/0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=self.env,
        )  # fmt: skip
        assert self.proc.stdout is not None
        out, deadline = b"", time.monotonic() + NODE_START_S
        while (found := READY.search(out)) is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.close()
                raise SystemExit(f"bench: the node did not start in {NODE_START_S} s")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                self.close()
                raise SystemExit("bench: the node exited before it was ready")
            out += chunk
        self.url = found.group(1).decode()
        self.token = (self.home / "api.token").read_text().strip()

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v0",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=60.0,
            trust_env=False,
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=NODE_STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=NODE_STOP_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a process has used so far; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_jsonl(path: Path, n: int, rng: random.Random) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps(doc_value(i, rng)) + "\n")


def http_rep(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    """One rep of the HTTP figures, each on a fresh node: the import, then the loop."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="loomdb-bench-http-") as tmp:
        source = Path(tmp) / "docs.jsonl"
        write_jsonl(source, args.import_docs, rng)
        node = NodeProcess(Path(tmp) / "a")
        try:
            cpu_before = process_cpu_s(node.proc.pid)
            run = subprocess.run(
                [sys.executable, "-m", "loomdb", "client", "--url", node.url, "doc", "import",
                 COLL, str(source), "--batch", str(args.batch), "--json"],
                capture_output=True, text=True, timeout=CLIENT_S, env=node.env, check=False,
            )  # fmt: skip
            cpu_after = process_cpu_s(node.proc.pid)
            if run.returncode != 0:
                raise SystemExit(f"bench: doc import failed ({run.returncode}): {run.stderr}")
            report = json.loads(run.stdout)
            if report["imported"] != args.import_docs:
                raise SystemExit(f"bench: imported {report['imported']} of {args.import_docs}")
            with node.http() as http:
                r = http.get(f"/collections/{COLL}/docs", params={"limit": 1})
                if r.json()["count"] != args.import_docs:
                    raise SystemExit(f"bench: the node holds {r.json()['count']} documents")
            # The CLI's own clock: from its first read of the file to the last answer.
            out["import_http"] = args.import_docs / report["seconds"]
            out["import_requests"] = report["requests"]
            if cpu_before is not None and cpu_after is not None:
                # Less sensitive to others' load than the wall figure: what the node spent.
                out["import_node_cpu"] = (cpu_after - cpu_before) * 1e6 / args.import_docs
        finally:
            node.close()
        node = NodeProcess(Path(tmp) / "b")
        try:
            values = [doc_value(i, rng) for i in range(args.post_docs)]
            with node.http() as http:
                http.post(f"/collections/{COLL}/docs", json={"value": values[0]})  # connect
                t = clock()
                for value in values[1:]:
                    r = http.post(f"/collections/{COLL}/docs", json={"value": value})
                    if r.status_code != 201:
                        raise SystemExit(f"bench: POST answered {r.status_code}: {r.text}")
                out["post_loop_http"] = (len(values) - 1) / (time.perf_counter() - t)
        finally:
            node.close()
    return out


async def profile_import(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    """Not counted in the figures: the batch route in-process (no sockets), split into
    the request (JSON, checks, value form) and the library call it makes
    (``create_many_ids``, or ``create_many`` in a library without it), then under cProfile."""
    from loomdb.api import create_app

    n_batches = max(2, min(10, args.import_docs // args.batch))
    bodies = [
        json.dumps({"documents": [{"value": doc_value(i, rng)} for i in range(args.batch)]})
        for _ in range(2 * n_batches)
    ]
    with tempfile.TemporaryDirectory(prefix="loomdb-bench-route-") as tmp:
        db = await Database.open(Path(tmp) / "home")
        inner = 0.0
        called = "create_many_ids" if hasattr(Collection, "create_many_ids") else "create_many"
        create_many = getattr(Collection, called)

        async def timed(self: Collection, *a: Any, **kw: Any) -> Any:
            nonlocal inner
            t = time.perf_counter()
            try:
                return await create_many(self, *a, **kw)
            finally:
                inner += time.perf_counter() - t

        transport = httpx.ASGITransport(create_app(db))
        path = f"/api/v0/collections/{COLL}/docs:batch"
        headers = {"content-type": "application/json"}
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as api:
                setattr(Collection, called, timed)
                try:
                    t = time.perf_counter()
                    for body in bodies[:n_batches]:
                        r = await api.post(path, content=body, headers=headers)
                        assert r.status_code == 201, r.text
                    total = time.perf_counter() - t
                finally:
                    setattr(Collection, called, create_many)
                n = n_batches * args.batch
                print(f"\nwhere the time goes: the batch route in-process, {n} documents")
                print(f"  total {total * 1e6 / n:8.0f} µs per document ({n / total:,.0f}/s)")
                around = (total - inner) * 1e6 / n
                print(f"  {called} {inner * 1e6 / n:8.0f} µs; the request around it", end="")
                print(f" (JSON, checks, value form, answer) {around:.0f} µs")
                prof = cProfile.Profile()
                prof.enable()
                for body in bodies[n_batches:]:
                    await api.post(path, content=body, headers=headers)
                prof.disable()
        finally:
            await db.aclose()
    top = print_profile(prof, f"POST …/docs:batch, {n} documents")
    return {
        "documents": n,
        "us_per_doc": total * 1e6 / n,
        "library_call": called,
        "create_many_us_per_doc": inner * 1e6 / n,
        "request_us_per_doc": (total - inner) * 1e6 / n,
        **top,
    }


# --- where the time goes (--profile) ---------------------------------------------------


GET = "store.get_entries (worker thread)"
LOADS = {  # private methods of Database that load documents missing from the live cache
    "_load": "Database._load (one cache miss: states, get_entries, Loro import)",
    "_preload": "Database._preload (a batch's cache misses, one get_entries)",
}


class Split:
    """Wall time spent inside chosen async methods of one open Database (instance patches).

    Only methods that exist are wrapped: the document layer's internals may change."""

    def __init__(self, db: Database) -> None:
        self.secs: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        for name in ("put_entries", "store_head", "get_entries"):
            self._wrap(db.store, name, f"store.{name} (worker thread)")
        self._wrap_sync(db.store, "try_put_entries", "store.try_put_entries (no thread hop)")
        for name, label in LOADS.items():
            self._wrap(db, name, label)

    def _wrap(self, obj: object, name: str, label: str) -> None:
        fn: Callable[..., Awaitable[Any]] | None = getattr(obj, name, None)
        if fn is None:
            return

        @functools.wraps(fn)
        async def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return await fn(*a, **kw)
            finally:
                self.secs[label] += time.perf_counter() - t
                self.calls[label] += 1

        setattr(obj, name, timed)

    def _wrap_sync(self, obj: object, name: str, label: str) -> None:
        fn: Callable[..., Any] | None = getattr(obj, name, None)
        if fn is None:
            return

        @functools.wraps(fn)
        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.secs[label] += time.perf_counter() - t
                self.calls[label] += 1

        setattr(obj, name, timed)

    def report(self, title: str, total_s: float, n: int) -> dict[str, Any]:
        print(f"  {title}: {total_s * 1e6 / n:,.0f} µs per update ({n} updates)")
        rows: dict[str, Any] = {"total": {"us_per_update": total_s * 1e6 / n}}
        # get_entries is called from the loads when they run: then it is part of them.
        nested = {GET} if any(self.calls[k] for k in LOADS.values()) else set()
        for label, secs in sorted(self.secs.items(), key=lambda kv: -kv[1]):
            us, per = secs * 1e6 / n, self.calls[label] / n
            rows[label] = {"us_per_update": us, "calls_per_update": per}
            mark = "  (inside the loads)" if label in nested else ""
            pct = 100 * secs / total_s
            print(f"    {label:66s}{us:8.0f} µs {pct:5.1f} %  {per:4.2f} calls{mark}")
        own = total_s - sum(s for k, s in self.secs.items() if k not in nested)
        rest = "rest, on the event-loop thread (Loro, build_entry, views.db, checks)"
        rows[rest] = {"us_per_update": own * 1e6 / n}
        print(f"    {rest:66s}{own * 1e6 / n:8.0f} µs {100 * own / total_s:5.1f} %")
        self.secs.clear()
        self.calls.clear()
        return rows


def top_functions(
    prof: cProfile.Profile, key: str, n: int, only: str | None = None
) -> list[dict[str, Any]]:
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.items():
        if only is not None and only not in file:
            continue
        where = file.split("/src/")[-1] if "/src/" in file else Path(file).name
        name = f"{where}:{line}({func})" if file != "~" else func
        rows.append({"function": name, "ncalls": nc, "tottime_s": tt, "cumtime_s": ct})
    rows.sort(key=lambda r: r[key], reverse=True)
    return rows[:n]


def print_profile(prof: cProfile.Profile, title: str) -> dict[str, Any]:
    """Top 15 functions by own time, and the top 15 of loomdb's by cumulative time."""
    own = top_functions(prof, "tottime_s", 15)
    cum = top_functions(prof, "cumtime_s", 15, only="loomdb")
    print(f"\n  cProfile, {title}: top 15 by own time (event-loop thread only;")
    print("  time in worker threads shows up as waiting in select/epoll)")
    print(f"    {'own ms':>8s} {'cum ms':>8s} {'calls':>8s}  function")
    for r in own:
        print_fn(r)
    print("  top 15 loomdb functions by cumulative time (a coroutine's time excludes its awaits)")
    for r in cum:
        print_fn(r)
    return {"top_own": own, "top_cum_loomdb": cum}


def print_fn(r: dict[str, Any]) -> None:
    own, cum = r["tottime_s"] * 1e3, r["cumtime_s"] * 1e3
    print(f"    {own:8.1f} {cum:8.1f} {r['ncalls']:8d}  {r['function']}")


async def profile_materialize(home: Path) -> dict[str, Any]:
    """Not counted in the figures: cProfile of an open that rebuilds views.db."""
    drop_views(home)
    prof = cProfile.Profile()
    t = clock()
    prof.enable()
    db = await Database.open(home)
    prof.disable()
    secs = time.perf_counter() - t
    await db.aclose()
    print(
        f"\nwhere the time goes: materialize again, under cProfile ({secs:.2f} s with the profiler)"
    )
    return {"seconds_under_profiler": secs, **print_profile(prof, "Database.open without views.db")}


async def profile_pass(
    db: Database, ids: list[str], args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    """Not counted in the figures: a split by call and a cProfile of the batched path."""
    coll = db.collection(COLL)
    n_single = min(args.single, 1000)
    n_batch = min(args.updates, 5 * args.batch)
    print("\nwhere the time goes: updates again (an extra pass, not counted in the figures)")
    split = Split(db)
    t = time.perf_counter()
    await single_updates(coll, ids[: args.single_docs], n_single, rng)
    single = split.report("update(), one at a time", time.perf_counter() - t, n_single)
    t = time.perf_counter()
    await single_updates(coll, ids[: args.hot_docs], n_single, rng)
    hot = split.report("update(), doc in the live cache", time.perf_counter() - t, n_single)
    work = list(batches(ids, n_batch, args.batch, rng))
    t = time.perf_counter()
    for patches in work:
        await coll.update_many(patches)
    batched = split.report(f"update_many, batch {args.batch}", time.perf_counter() - t, n_batch)

    work = list(batches(ids, n_batch, args.batch, rng))
    prof = cProfile.Profile()
    prof.enable()
    for patches in work:
        await coll.update_many(patches)
    prof.disable()
    top = print_profile(prof, f"update_many, {n_batch} updates")

    prof = cProfile.Profile()
    prof.enable()
    await single_updates(coll, ids[: args.hot_docs], n_single, rng)
    prof.disable()
    top_hot = print_profile(prof, f"update(), doc in the live cache, {n_single} updates")
    return {
        "split_single": single,
        "split_single_hot": hot,
        "split_batched": batched,
        "cprofile_batched": {"updates": n_batch, **top},
        "cprofile_single_hot": {"updates": n_single, **top_hot},
    }


# --- queries ------------------------------------------------------------------------------


async def time_query(
    coll: Collection, where: list[dict[str, Any]], runs: int, budget_s: float
) -> float:
    """Median latency (ms) of up to ``runs`` calls, fewer if they exceed ``budget_s``."""
    lat: list[float] = []
    await coll.query(where, limit=10)  # warm the page cache
    gc.collect()
    start = time.perf_counter()
    while len(lat) < runs and (len(lat) < 5 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        await coll.query(where, limit=10)
        lat.append((time.perf_counter() - t) * 1e3)
    return statistics.median(lat)


async def check_queries(coll: Collection, n: int) -> None:
    for qid, (label, where) in QUERIES.items():
        docs = await coll.query(where(n), limit=10)
        want = {"q_eq_unique": 1}.get(qid, 10)
        if len(docs) != min(want, n):
            raise SystemExit(f"bench: query {label!r} returned {len(docs)} documents")
        for d in docs:
            for f in where(n):
                v, x = d.value[f["field"]], f["value"]
                ok = {"eq": v == x, "gte": v >= x, "lt": v < x}[f["op"]]
                if not ok:
                    raise SystemExit(f"bench: query {label!r} returned {d.value}")


async def plans(coll: Collection, n: int) -> dict[str, str]:
    return {qid: await coll.explain(where(n)) for qid, (_, where) in QUERIES.items()}


# --- output -------------------------------------------------------------------------------


def row(rid: str, values: list[float]) -> dict[str, Any]:
    name, unit = ROWS[rid]
    v = sorted(values)
    r: dict[str, Any] = {
        "id": rid,
        "name": name,
        "unit": unit,
        "min": v[0],
        "median": statistics.median(v),
        "max": v[-1],
    }
    target = TARGETS.get(rid)
    r["values"], r["target"] = (
        values,
        None if target is None else {"op": target[0], "value": target[1]},
    )
    fmt = (
        "{:>11,.0f}"
        if unit.endswith("/s") or unit in ("µs", "%")
        else "{:>11,.2f}"
        if unit == "ms"
        else "{:>11,.3f}"
    )
    nums = " ".join(fmt.format(r[k]) for k in ("min", "median", "max"))
    verdict = ""
    if target is not None:
        op, want = target
        ok = r["median"] <= want if op == "<=" else r["median"] >= want
        r["pass"] = ok
        verdict = f"{'≤' if op == '<=' else '≥'} {want:,g} " + ("PASS" if ok else "MISS")
    print(f"  {name:52s}{nums}  {unit:9s} {verdict}")
    return r


def section(title: str) -> None:
    print(f"\n{title:54s}{'min':>11s} {'median':>11s} {'max':>11s}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(20261121)
    vals: dict[str, list[float]] = {}
    extra: dict[str, Any] = {}
    parts = set(args.only or PARTS)
    for rep in range(args.reps if "writes" in parts else 0):
        print(f"rep {rep + 1}/{args.reps}: writes on a fresh home …", flush=True)
        got = await write_rep(args, rng, profile=args.profile and rep == args.reps - 1)
        for k in ("profile", "profile_materialize"):
            if k in got:
                extra[k] = got.pop(k)
        extra.setdefault("materialize_entries", got.pop("materialize_entries"))
        extra.setdefault("single_update_max_ms", []).append(got.pop("single_update_max"))
        for k, v in got.items():
            vals.setdefault(k, []).append(v)

    for rep in range(args.reps if "http" in parts else 0):
        print(f"rep {rep + 1}/{args.reps}: over HTTP, fresh nodes …", flush=True)
        got = http_rep(args, rng)
        extra.setdefault("import_requests", got.pop("import_requests"))
        for k, v in got.items():
            vals.setdefault(k, []).append(v)
    if args.profile and "http" in parts:
        extra["profile_import"] = await profile_import(args, rng)
    results = []
    if "writes" in parts:
        results += write_rows(args, vals, extra)
    query_plans = None
    if "queries" in parts:
        got_rows, query_plans = await query_rows(args, rng, vals)
        results += got_rows
    if "http" in parts:
        section(
            f"over HTTP: a real node, 127.0.0.1; import of {args.import_docs} docs"
            f" ({extra['import_requests']} requests), {args.post_docs} single POSTs"
        )
        results += [
            row(k, vals[k])
            for k in ("import_http", "import_node_cpu", "post_loop_http")
            if k in vals
        ]
    return {"results": results, "plans": query_plans, **extra}


def write_rows(
    args: argparse.Namespace, vals: dict[str, list[float]], extra: dict[str, Any]
) -> list[dict[str, Any]]:
    results = []
    section(f"writes: {args.write_docs} docs, reps={args.reps}")
    results += [
        row(k, vals[k])
        for k in (
            "single_update_p50",
            "single_update_p99",
            "hot_update_p50",
            "hot_update_p99",
            "update_many",
            "create_many",
            "raw_create",
            "update_many_share",
            "raw_create_cores",
            "update_many_share_cores",
            "loro_part",
            "update_floor",
            "update_many_share_floor",
        )
    ]
    print(
        f"  (single: {args.single} updates round-robin over {args.single_docs} docs, then over"
        f" {args.hot_docs} (all in the live cache); batched:"
        f" {args.updates} updates, batch {args.batch}; slowest single update per rep, ms: "
        + ", ".join(f"{x:.1f}" for x in extra["single_update_max_ms"])
        + ")"
    )
    section(f"materialize: {args.write_docs} docs, {extra['materialize_entries']} entries")
    results += [row(k, vals[k]) for k in ("materialize_s", "materialize_rate", "reopen_ms")]
    return results


async def query_rows(
    args: argparse.Namespace, rng: random.Random, vals: dict[str, list[float]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The query figures, on one home of --docs documents, and SQLite's plans."""
    with tempfile.TemporaryDirectory(prefix="loomdb-bench-query-") as tmp:
        print(f"building the query home: {args.docs} documents …", flush=True)
        qdb = await Database.open(Path(tmp) / "home")
        try:
            qcoll = qdb.collection(COLL)
            _, rate = await create_docs(qcoll, args.docs, args.batch, rng)
            vals["query_build"] = [rate]
            await check_queries(qcoll, args.docs)
            plan_before = await plans(qcoll, args.docs)
            for index in (False, True):
                if index:
                    print("creating the indexes …", flush=True)
                    t = clock()
                    for f in INDEXED_FIELDS:
                        await qcoll.create_index(f)
                    vals["create_index"] = [time.perf_counter() - t]
                    await check_queries(qcoll, args.docs)
                    plan_after = await plans(qcoll, args.docs)
                suffix = "indexed" if index else "noindex"
                for rep in range(args.reps):
                    print(f"rep {rep + 1}/{args.reps}: queries, {suffix} …", flush=True)
                    for qid, (_, where) in QUERIES.items():
                        ms = await time_query(qcoll, where(args.docs), args.runs, args.budget)
                        vals.setdefault(f"{qid}_{suffix}", []).append(ms)
        finally:
            await qdb.aclose()

    results = []
    section(f"queries, limit 10, on {args.docs} docs (median of ≤ {args.runs} calls)")
    for qid in QUERIES:
        results += [
            row(f"{qid}_noindex", vals[f"{qid}_noindex"]),
            row(f"{qid}_indexed", vals[f"{qid}_indexed"]),
        ]
    results += [row(k, vals[k]) for k in ("create_index", "query_build")]
    print("\nSQLite plans (Collection.explain), without → with the indexes on group and n")
    query_plans = {}
    for qid, (label, where) in QUERIES.items():
        query_plans[qid] = {
            "label": label,
            "where": where(args.docs),
            "no_index": plan_before[qid],
            "indexed": plan_after[qid],
        }
        print(f"  {label}")
        print(f"    no index: {plan_before[qid].replace(chr(10), ' | ')}")
        print(f"    indexed:  {plan_after[qid].replace(chr(10), ' | ')}")
    return results, query_plans


def library_digest() -> str:
    """Short hash of the document layer, entries and the SQLite store: which code these
    figures are of."""
    import loomdb.documents
    import loomdb.entries
    import loomdb.stores.sqlite

    h = hashlib.sha256()
    files = sorted(Path(loomdb.documents.__file__).parent.glob("*.py"))
    files += sorted(Path(loomdb.entries.__file__).parent.glob("*.py"))
    stores = Path(loomdb.stores.sqlite.__file__).parent
    for f in [*files, stores / "sqlite.py", stores / "checkpoints.py"]:
        if not f.exists():  # (an older library, measured for comparison)
            continue
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000, help="documents in the query home")
    ap.add_argument("--updates", type=int, default=20_000, help="updates in the batched figure")
    ap.add_argument(
        "--batch", type=int, default=1000, help="documents per create_many / update_many"
    )
    ap.add_argument(
        "--write-docs",
        type=int,
        default=10_000,
        help="documents of the write home (materialize figure)",
    )
    ap.add_argument("--single", type=int, default=2000, help="updates in the single-update figure")
    ap.add_argument(
        "--single-docs", type=int, default=1000, help="documents the single updates go round"
    )
    ap.add_argument(
        "--hot-docs",
        type=int,
        default=100,
        help="documents of the cached single updates (fewer than the live cache holds)",
    )
    ap.add_argument(
        "--runs", type=int, default=200, help="calls per query figure and rep (at most)"
    )
    ap.add_argument(
        "--budget", type=float, default=3.0, help="seconds per query figure and rep (≥ 5 calls)"
    )
    ap.add_argument(
        "--import-docs", type=int, default=20_000, help="JSON lines of the HTTP import figure"
    )
    ap.add_argument(
        "--post-docs", type=int, default=500, help="single POSTs of the HTTP comparison figure"
    )
    ap.add_argument("--reps", type=int, default=3, help="runs of every figure")
    ap.add_argument(
        "--only",
        choices=PARTS,
        action="append",
        help="run only these figures (repeatable; default: all of them)",
    )
    ap.add_argument(
        "--out", type=Path, help=f"results file (default {DEFAULT_OUT}; none with --quick)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke test: small sizes, 1 rep, JSON only if --out"
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="extra pass: split by call and cProfile of update_many",
    )
    args = ap.parse_args()
    if args.quick:  # every figure, at sizes that run in seconds
        quick: dict[str, float] = {
            "docs": 2000,
            "write_docs": 500,
            "updates": 1000,
            "batch": 250,
            "single": 200,
            "import_docs": 2000,
            "post_docs": 100,
        }
        quick |= {"single_docs": 200, "hot_docs": 50, "runs": 10, "budget": 0.5}
        for k, v in quick.items():
            setattr(args, k, min(getattr(args, k), v))
        args.reps = 1
    sizes = ("docs", "updates", "batch", "write_docs", "single", "single_docs", "hot_docs",
             "import_docs", "post_docs")  # fmt: skip
    if min(getattr(args, k) for k in (*sizes, "runs", "reps")) < 1:
        ap.error("sizes, --runs and --reps must be positive")
    if max(args.batch, args.single_docs, args.hot_docs) > args.write_docs:
        ap.error("--batch, --single-docs and --hot-docs must not exceed --write-docs")
    if args.batch > 1000:
        ap.error("--batch is at most 1000 (the API's bound on a batch)")
    if args.post_docs < 2:
        ap.error("--post-docs must be at least 2")
    # Bench homes are throwaway: an unencrypted keyring (no KDF on open), and no warning about it.
    os.environ.pop("LOOMDB_KEYRING_SECRET", None)
    logging.getLogger("loomdb.keyring").setLevel(logging.ERROR)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "loro": version("loro"),
        "library_sha256": library_digest(),
        "nproc": len(os.sched_getaffinity(0)),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    print(f"loomdb documents benchmark {meta['date']}")
    print(f"  Python {meta['python']}, SQLite {meta['sqlite']}, loro {meta['loro']}")
    print(f"  nproc {meta['nproc']}, load average at start {meta['loadavg_at_start']}")
    t = time.perf_counter()
    out = {"meta": meta, **asyncio.run(run(args))}
    out["meta"]["wall_s"] = round(time.perf_counter() - t, 1)
    print(f"\nwall time {out['meta']['wall_s']} s")
    path = args.out if args.out is not None or args.quick else DEFAULT_OUT
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
