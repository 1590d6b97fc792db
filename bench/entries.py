#!/usr/bin/env python3
"""Entries benchmark: how fast loomdb creates and receives entries, on one core.

    python bench/entries.py [--n 20000] [--batch 1000] [--reps 3] [--json PATH] [--quick]

Each rep runs every figure once (so a noisy spell on a shared machine hits all
figures alike); rows report min / median / max over reps. Every loop is bounded
by --n; each run gets a fresh store in a temporary directory, removed after.
See bench/README.md for what the rows mean and the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import nacl.bindings
from cryptography.hazmat.backends.openssl import backend as openssl
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl import __version__ as pynacl_version

from loomdb.clock import pack_hlc
from loomdb.entries import codec, verify
from loomdb.entries.cid import CID
from loomdb.entries.entry import Entry, build_entry, decode_entry, decode_hashed
from loomdb.identity.keys import NamedKey, SigningKey, verify_signature
from loomdb.stores.base import EntryInput, PutStatus
from loomdb.stores.sqlite import SQLiteStore

PAYLOAD_SIZE = 200
DOCS = 500  # documents written round-robin; an entry's parent is the previous one of its doc
BASE_MS = 1_760_000_000_000
DEFAULT_JSON = Path(__file__).parent / "results" / "entries.json"
CREATE, RECEIVE = "create: build_entry + put_entries", "receive: put_entries(raw bytes), new"
DUPS, INSERT = "receive, all duplicates", "SQLite insert alone (store._put)"
RECEIVE_ONE = "receive, verified on one thread"
BARE = "bare pipeline (CBOR, SHA-256, verify, insert)"
RATIO = "receive / bare pipeline"
RATIO_ONE = "receive on one thread / bare pipeline"
RECEIVE_CPU = "receive: CPU, all threads"
TARGETS = {CREATE: 12_000.0, RECEIVE: 8_000.0, RATIO: 0.9}  # from the issues


class Workload:
    """One author, one named key and a pool of random 200-byte payloads."""

    def __init__(self) -> None:
        self.author = SigningKey.generate()
        self.key = NamedKey.generate("bench@1")
        self.payloads = [os.urandom(PAYLOAD_SIZE) for _ in range(256)]

    def entries(self, n: int) -> Iterator[Entry]:
        """``n`` encrypted entries over DOCS documents, each chained to its doc's previous one."""
        last: dict[int, Entry] = {}
        for i in range(n):
            d = i % DOCS
            parent = last.get(d)
            last[d] = entry = build_entry(
                author=self.author,
                space="bench",
                collection="notes",
                document=f"doc-{d:04d}",
                kind="create" if parent is None else "change",
                payload=self.payloads[i % len(self.payloads)],
                created_at=pack_hlc(BASE_MS + i // 1000, i % 1000),
                parents=() if parent is None else (parent,),
                key=self.key,
            )
            yield entry


@contextmanager
def fresh_store() -> Iterator[SQLiteStore]:
    with tempfile.TemporaryDirectory(prefix="loomdb-bench-") as d:
        store = SQLiteStore(Path(d) / "bench.db")
        try:
            yield store
        finally:
            store.close()


def clock() -> float:
    gc.collect()  # start every timed section from the same heap state
    return time.perf_counter()


def check(got: int, want: int, what: str) -> None:
    if got != want:
        raise SystemExit(f"bench: {what}: only {got} of {want} entries had the expected status")


async def create_rate(w: Workload, n: int, batch: int) -> float:
    """build_entry + put_entries, batch by batch, into a fresh store."""
    with fresh_store() as store:
        gen, done, accepted = w.entries(n), 0, 0
        t = clock()
        while done < n:
            chunk = [next(gen) for _ in range(min(batch, n - done))]
            results = await store.put_entries(chunk)
            accepted += sum(r.status is PutStatus.ACCEPTED for r in results)
            done += len(chunk)
        secs = time.perf_counter() - t
    check(accepted, n, "create")
    return n / secs


async def put_rate(store: SQLiteStore, items: Sequence[EntryInput], batch: int, want: str) -> float:
    ok, t = 0, clock()
    for i in range(0, len(items), batch):
        results = await store.put_entries(items[i : i + batch])
        ok += sum(r.status == want for r in results)
    secs = time.perf_counter() - t
    check(ok, len(items), f"put_entries, expecting {want}")
    return len(items) / secs


async def receive_one_thread(raws: Sequence[bytes], batch: int) -> float:
    """put_entries(raw bytes) with the verify pool held to one thread (the old path)."""
    threads, verify.THREADS = verify.THREADS, 1
    try:
        with fresh_store() as store:
            return await put_rate(store, raws, batch, "accepted")
    finally:
        verify.THREADS = threads


def bare_receive(raws: Sequence[bytes], batch: int) -> float:
    """The anchor's bare pipeline (shared/bench-peers/bench_blocks.py receive_pipeline,
    libsodium) on these very entries, on one core: CBOR decode, SHA-256, libsodium
    verify of the signed bytes, one INSERT into a one-table SQLite (one transaction
    per batch). No loomdb code: the ceiling receive is read against."""
    tail = codec.SIGNATURE_SIZE + len(cbor2.dumps("signature")) + 2
    with tempfile.TemporaryDirectory() as d:
        conn = sqlite3.connect(Path(d) / "bare.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE e(h BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        sign_open, sha = nacl.bindings.crypto_sign_open, hashlib.sha256
        t = clock()
        for i in range(0, len(raws), batch):
            conn.execute("BEGIN")
            for raw in raws[i : i + batch]:
                f = cbor2.loads(raw)
                h = sha(raw).digest()
                sign_open(f["signature"] + b"\xac" + raw[1 : len(raw) - tail], f["auth"])
                conn.execute("INSERT INTO e VALUES(?,?)", (h, raw))
            conn.execute("COMMIT")
        secs = time.perf_counter() - t
        conn.close()
    return len(raws) / secs


def insert_us(entries: list[Entry], batch: int) -> float:
    """store._put of verified Entry objects: the SQLite part alone (no thread, no verify)."""
    with fresh_store() as store:
        t = clock()
        for i in range(0, len(entries), batch):
            store._put(list(entries[i : i + batch]))
        secs = time.perf_counter() - t
    return secs * 1e6 / len(entries)


def per_entry_us(n: int, body: Callable[[], object]) -> float:
    t = clock()
    body()
    return (time.perf_counter() - t) * 1e6 / n


def overhead(w: Workload) -> tuple[int, list[tuple[str, int]]]:
    """An encrypted entry with 1 parent and 1-char names: size and parts of its overhead."""
    key, plain = NamedKey("k", w.key.secret), w.payloads[0]
    names: dict[str, Any] = {"author": w.author, "space": "s", "collection": "c", "document": "d"}
    root = build_entry(
        **names, kind="create", payload=plain, created_at=pack_hlc(BASE_MS, 0), key=key
    )
    e = build_entry(
        **names,
        kind="change",
        payload=plain,
        created_at=pack_hlc(BASE_MS, 1),
        parents=[root],
        key=key,
    )
    f = codec.decode_fields(e.raw)

    def enc(v: object) -> int:
        return len(cbor2.dumps(v))

    links = sum(enc(x) for x in f["par"])
    byte_heads = sum(enc(f[k]) - len(f[k]) for k in ("auth", "nonce", "payload", "signature"))
    parts = [
        ("AES-GCM tag", len(f["payload"]) - len(plain)),
        ("nonce", len(f["nonce"])),
        ("signature", len(f["signature"])),
        ("author public key", len(f["auth"])),
        ("parent link (tag 42 + 0x00 + 36-byte CID)", links),
        (
            "names: space, coll, doc, kind, key id",
            sum(enc(f[k]) for k in ("space", "coll", "doc", "kind", "kid")),
        ),
        ("integers: height, version, created-at", sum(enc(f[k]) for k in ("h", "v", "ts"))),
        ("field names (13 CBOR text keys)", sum(enc(k) for k in codec.ALL_FIELDS)),
        ("CBOR heads: map, byte strings, parent list", 1 + enc(f["par"]) - links + byte_heads),
    ]
    assert sum(b for _, b in parts) == len(e.raw) - len(plain), (parts, len(e.raw))
    return len(e.raw), parts


def row(name: str, unit: str, values: list[float]) -> dict[str, Any]:
    v, target = sorted(values), TARGETS.get(name)
    r: dict[str, Any] = {
        "name": name,
        "unit": unit,
        "min": v[0],
        "median": statistics.median(v),
        "max": v[-1],
    }
    r |= {"values": values, "target": target}
    fmt = "{:>11,.2f}" if unit in ("µs/entry", "ratio") else "{:>11,.0f}"
    nums = " ".join(fmt.format(r[k]) for k in ("min", "median", "max"))
    verdict = (
        ""
        if target is None
        else f"≥ {target:,.{2 if unit == 'ratio' else 0}f} "
        + ("PASS" if r["median"] >= target else "below")
    )
    print(f"  {name:47s}{nums}  {unit:9s} {verdict}")
    return r


async def run(n: int, batch: int, reps: int) -> dict[str, Any]:
    w = Workload()
    print("preparing entries and stage inputs (not timed) …", flush=True)
    built = list(w.entries(n))
    raws = [e.raw for e in built]
    headers = [{k: f[k] for k in codec.HEADER_FIELDS} for f in map(codec.decode_fields, raws)]
    hbytes = [codec.encode_header(h) for h in headers]
    assert all(
        h == codec.header_of(e.raw, len(e.payload)) for h, e in zip(hbytes, built, strict=True)
    )
    plains = [e.decrypt(w.key) for e in built]
    signed = [codec.signed_bytes(h, e.payload) for h, e in zip(hbytes, built, strict=True)]
    msg, aead, author = signed[-1], w.key.aead, w.author
    pk, sk = nacl.bindings.crypto_sign_seed_keypair(os.urandom(32))
    smsg, ossl = nacl.bindings.crypto_sign(msg, sk), Ed25519PrivateKey.generate()
    opub, osig = ossl.public_key(), ossl.sign(msg)

    cids = [e.cid for e in built]
    nonces = [x for e in built if (x := e.nonce) is not None]
    entry_args = [tuple(getattr(e, f.name) for f in fields(Entry)) for e in built]

    def verify_all() -> None:
        for e, s in zip(built, signed, strict=True):
            verify_signature(e.author, s, e.signature)

    def loop(fn: Callable[[], object]) -> Callable[[], None]:
        def body() -> None:
            for _ in range(n):
                fn()

        return body

    ceilings: dict[str, Callable[[], object]] = {
        "Ed25519 sign, libsodium": loop(lambda: nacl.bindings.crypto_sign(msg, sk)),
        "Ed25519 verify, libsodium": loop(lambda: nacl.bindings.crypto_sign_open(smsg, pk)),
        "Ed25519 verify, OpenSSL (cryptography)": loop(lambda: opub.verify(osig, msg)),
    }
    stages: dict[str, Callable[[], object]] = {
        "build_entry, whole": lambda: list(w.entries(n)),
        "header encode (cbor2)": lambda: [codec.encode_header(h) for h in headers],
        "nonce (os.urandom 12)": lambda: [os.urandom(12) for _ in range(n)],
        "AES-256-GCM encrypt": lambda: [
            aead.encrypt(x, p, h) for x, p, h in zip(nonces, plains, hbytes, strict=True)
        ],
        "Ed25519 sign": lambda: [author.sign(s) for s in signed],
        "CID (SHA-256 of the entry)": lambda: [CID.of(r) for r in raws],
        "Entry object": lambda: [Entry(*a) for a in entry_args],
        "decode_entry, no signature": lambda: [
            decode_entry(r, check_signature=False) for r in raws
        ],
        "decode_hashed, no signature": lambda: [
            decode_hashed(r, c, check_signature=False) for r, c in zip(raws, cids, strict=True)
        ],
        "Ed25519 verify (verify_signature)": verify_all,
    }
    vals: dict[str, list[float]] = {}
    for rep in range(reps):
        print(f"rep {rep + 1}/{reps} …", flush=True)
        vals.setdefault(CREATE, []).append(await create_rate(w, n, batch))
        cpu = time.process_time()
        with fresh_store() as store:
            vals.setdefault(RECEIVE, []).append(await put_rate(store, raws, batch, "accepted"))
            cpu = time.process_time() - cpu
            vals.setdefault(DUPS, []).append(await put_rate(store, raws, batch, "duplicate"))
        vals.setdefault(RECEIVE_CPU, []).append(cpu * 1e6 / n)
        vals.setdefault(RECEIVE_ONE, []).append(await receive_one_thread(raws, batch))
        vals.setdefault(BARE, []).append(bare_receive(raws, batch))
        vals.setdefault(RATIO, []).append(vals[RECEIVE][-1] / vals[BARE][-1])
        vals.setdefault(RATIO_ONE, []).append(vals[RECEIVE_ONE][-1] / vals[BARE][-1])
        for name, fn in ceilings.items():
            vals.setdefault(name, []).append(1e6 / per_entry_us(n, fn))
        for name, fn in stages.items():
            vals.setdefault(name, []).append(per_entry_us(n, fn))
        vals.setdefault(INSERT, []).append(insert_us(built, batch))

    def section(title: str) -> None:
        print(f"\n{title:49s}{'min':>11s} {'median':>11s} {'max':>11s}")

    section(f"throughput, n={n}, batch={batch}, reps={reps}")
    results = [row(k, "entries/s", vals[k]) for k in (CREATE, RECEIVE, DUPS, RECEIVE_ONE, BARE)]
    results += [row(k, "ratio", vals[k]) for k in (RATIO, RATIO_ONE)]
    results += [row(RECEIVE_CPU, "µs/entry", vals[RECEIVE_CPU])]
    section(f"raw ceilings, {len(msg)} B message (signed bytes)")
    results += [row(k, "ops/s", vals[k]) for k in ceilings]
    section(f"stages, each alone on the same {n} entries")
    results += [row(k, "µs/entry", vals[k]) for k in (*stages, INSERT)]

    us = {r["name"]: r["median"] for r in results if r["unit"] == "µs/entry"}
    build_parts = list(stages)[1:7]
    # Receive's stages are one core's: read them against the one-thread receive.
    create_total, recv_total = (1e6 / statistics.median(vals[k]) for k in (CREATE, RECEIVE_ONE))
    whole, rest = us["build_entry, whole"], "rest (thread hop, batching, cache effects)"
    create_rows = [(k, us[k]) for k in build_parts] + [
        ("rest of build_entry (checks, dict, joins)", whole - sum(us[k] for k in build_parts)),
        (INSERT, us[INSERT]),
        (rest, create_total - whole - us[INSERT]),
    ]
    recv_rows = [
        ("CID for the duplicate check (prepare_batch)", us["CID (SHA-256 of the entry)"]),
        # put_entries decodes with the CID it hashed for the duplicate check
        ("decode_hashed, no signature (CBOR, checks)", us["decode_hashed, no signature"]),
        ("Ed25519 verify", us["Ed25519 verify (verify_signature)"]),
        (INSERT, us[INSERT]),
    ]
    recv_rows.append((rest, recv_total - sum(v for _, v in recv_rows)))
    print("\nwhere the time goes, µs per entry (medians; total = 1e6 / median rate)")
    for title, total, rows in (
        ("create", create_total, create_rows),
        ("receive, verified on one thread", recv_total, recv_rows),
    ):
        print(f"  {title}: {total:.1f} µs/entry")
        for name, v in rows:
            print(f"    {name:48s}{v:7.2f} {100 * v / total:5.1f} %")

    size, parts = overhead(w)
    print(
        f"\noverhead: encrypted entry, 1 parent, 1-char names: {size} B, payload {PAYLOAD_SIZE} B"
    )
    for name, b in parts:
        print(f"    {name:48s}{b:4d} B")
    print(f"    {'total beyond the payload':48s}{size - PAYLOAD_SIZE:4d} B")
    print(f"    (the benchmark's own entries: {statistics.mean(map(len, raws)):.0f} B on average)")
    return {
        "results": results,
        "breakdown_us": {"create": dict(create_rows), "receive": dict(recv_rows)},
        "overhead": {"entry_bytes": size, "payload_bytes": PAYLOAD_SIZE, "parts": dict(parts)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="entries per run; bounds every loop")
    ap.add_argument("--batch", type=int, default=1000, help="entries per put_entries call")
    ap.add_argument("--reps", type=int, default=3, help="runs of every figure")
    ap.add_argument(
        "--json", type=Path, help=f"results file (default {DEFAULT_JSON}; none with --quick)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke test: n <= 1000, 1 rep, JSON only if --json"
    )
    args = ap.parse_args()
    if args.quick:
        args.n, args.reps = min(args.n, 1000), 1
    if min(args.n, args.batch, args.reps) < 1:
        ap.error("--n, --batch and --reps must be positive")
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "openssl": openssl.openssl_version_text(),
        "libsodium": f"as bundled in PyNaCl {pynacl_version} (version not exposed at run time)",
        "nproc": len(os.sched_getaffinity(0)),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "args": {"n": args.n, "batch": args.batch, "reps": args.reps, "quick": args.quick},
    }
    print(f"loomdb entries benchmark {meta['date']}")
    print(f"  Python {meta['python']}, SQLite {meta['sqlite']}, {meta['openssl']}")
    print(f"  libsodium {meta['libsodium']}")
    print(f"  nproc {meta['nproc']}, load average at start {meta['loadavg_at_start']}")
    out = {"meta": meta, **asyncio.run(run(args.n, args.batch, args.reps))}
    path = args.json if args.json is not None or args.quick else DEFAULT_JSON
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
