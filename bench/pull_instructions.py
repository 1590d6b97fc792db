#!/usr/bin/env python3
"""Instructions per entry of the client side of an initial sync (pull), stage by
stage, counted by callgrind (a figure the load of a shared machine does not move).

    python bench/pull_instructions.py [--entries 2000] [--stage decode] [--keep DIR]

Entries come from the bench cache (``bench/sync.py`` builds it; ``--cache`` names
the SQLite store, default bench/results/cache/entries-100000.sqlite), in
``created_at`` order, as a pull stores them. Each stage runs twice under
``valgrind --tool=callgrind``, on --entries and on twice --entries entries; the
figure is the difference of the two instruction counts (every thread) divided by
--entries, so imports, reading the cache and the fixed setup cancel out:

* ``decode``: ``entries.verify.decode_many`` (signature included, one thread) of
  the raw bytes, in batches of 1000, with the CIDs asked for, as ``_verify`` does;
* ``put``: ``SQLiteStore.put_entries`` of the (already decoded) entries in batches
  of 1000 into a store holding --prefill entries whose trees are built;
* ``put_index``: the same, plus ``catch_up_fingerprints`` after every batch (the
  figure ``index`` is put_index less put: the fingerprint-tree appends).

Setup reads and decodes (without signature) the same --prefill + 2 * --entries
entries in both runs. ``--keep DIR`` keeps the callgrind files
(``callgrind_annotate --inclusive=yes DIR/callgrind.decode.2`` shows libsodium's share).
Needs ``valgrind`` on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from callgrind import instructions

ROOT = Path(__file__).resolve().parent
STAGES = ("decode", "put", "put_index")
BATCH = 1000


DEFAULT_CACHE = ROOT / "results" / "cache" / "entries-100000.sqlite"


def read_raws(cache: Path, count: int) -> list[tuple[bytes, bytes]]:
    conn = sqlite3.connect(f"file:{cache}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT cid, raw FROM entries ORDER BY created_at, cid LIMIT ?", (count,)
        ).fetchall()
    finally:
        conn.close()
    if len(rows) < count:
        raise SystemExit(f"{cache} holds {len(rows)} entries, {count} needed")
    return rows


async def run_stage(stage: str, n: int, args: argparse.Namespace, work: Path) -> None:
    """One measured run (under callgrind): ``stage`` over ``n`` entries."""
    from loomdb.entries.cid import CID
    from loomdb.entries.entry import decode_entry
    from loomdb.entries.verify import decode_many
    from loomdb.stores.sqlite import SQLiteStore

    total = args.prefill + 2 * args.entries  # the same setup in both runs
    rows = read_raws(args.cache, total)
    if stage == "decode":
        cids = [CID(c) for c, _ in rows]
        raws = [r for _, r in rows]
        for i in range(0, n, BATCH):
            j = min(n, i + BATCH)
            checked = decode_many(raws[i:j], cids[i:j], threads=1)
            if any(isinstance(c, Exception) for c in checked):
                raise SystemExit("an entry was refused")
        return
    # As decode_many hands them over: checked (here without the signature, to keep
    # the setup cheap) and marked verified, so put_entries does not verify again.
    entries = [replace(decode_entry(r, check_signature=False), verified=True) for _, r in rows]
    store = SQLiteStore(work / "store.db")
    # A fixed level-hash secret (FingerprintIndex keeps one it finds), so both runs
    # build trees of the same shape; PYTHONHASHSEED is fixed by the parent.
    store._w.execute("INSERT INTO meta(key, value) VALUES ('fp_key', ?)", ("5a" * 16,))
    try:
        for i in range(0, args.prefill, BATCH):
            await store.put_entries(entries[i : i + BATCH])
        await store.catch_up_fingerprints()
        measured = entries[args.prefill : args.prefill + n]
        for i in range(0, n, BATCH):
            await store.put_entries(measured[i : i + BATCH])
            if stage == "put_index":
                await store.catch_up_fingerprints()
    finally:
        await store.aclose()


def callgrind(args: argparse.Namespace, stage: str, n: int, out: Path, tmp: Path) -> int:
    work = tmp / f"run-{stage}-{n}"
    work.mkdir(parents=True)
    argv = [
        sys.executable, __file__, "--run", stage, "--n", str(n), "--work", str(work),
        "--entries", str(args.entries), "--prefill", str(args.prefill),
        "--cache", str(args.cache),
    ]  # fmt: skip
    return instructions(argv, out, {**os.environ, "PYTHONHASHSEED": "0"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--entries", type=int, default=2000, help="entries of the smaller run")
    ap.add_argument("--prefill", type=int, default=4000, help="entries stored before (put)")
    ap.add_argument("--stage", action="append", choices=STAGES, help="default: all")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--keep", type=Path, help="keep the callgrind files here")
    ap.add_argument("--run", choices=STAGES, help=argparse.SUPPRESS)  # one run (internal)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run is not None:
        asyncio.run(run_stage(args.run, args.n, args, args.work))
        return
    with tempfile.TemporaryDirectory(prefix="loomdb-pull-") as name:
        tmp = Path(name)
        keep = args.keep or tmp
        keep.mkdir(parents=True, exist_ok=True)
        per: dict[str, float] = {}
        for stage in args.stage or STAGES:
            small = callgrind(args, stage, args.entries, keep / f"callgrind.{stage}.1", tmp)
            big = callgrind(args, stage, 2 * args.entries, keep / f"callgrind.{stage}.2", tmp)
            per[stage] = (big - small) / args.entries
            print(f"{stage:10s} {per[stage] / 1e3:8.1f}k instructions per entry", flush=True)
        if "put" in per and "put_index" in per:
            index = per["put_index"] - per["put"]
            print(f"{'index':10s} {index / 1e3:8.1f}k instructions per entry", flush=True)


if __name__ == "__main__":
    main()
