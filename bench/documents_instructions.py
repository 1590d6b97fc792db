#!/usr/bin/env python3
"""Instructions per document write, counted by callgrind (a figure the load of a shared
machine does not move, unlike the wall times of ``bench/documents.py``).

    python bench/documents_instructions.py [--docs 3000] [--passes 3] [--ops 1000]

A home of --docs documents is made once (``create_many``, then --passes
``update_many`` passes, so every document has 1 + --passes entries).
Then each figure runs twice under ``valgrind --tool=callgrind`` on a fresh copy
of that home, with --ops and with twice --ops operations; the figure is the
difference of the two runs' instruction counts (every thread) divided by --ops,
so opening, closing and imports cancel out:

* ``update_many``: batches of 1000 updates, each to a different document, none
  open (every one a live-cache miss);
* ``update_miss``: ``update()`` one at a time, each to a document not open;
* ``update_hot``: ``update()`` one at a time, round-robin over 100 documents
  that are open (opened before, by one update each, in both runs);
* ``ceiling``: ``build_entry`` + ``SQLiteStore.put_entries`` of entries of an
  update's size in batches of 1000, no document layer (``bench/documents.py``'s
  ceiling row).

``--figure`` (repeatable) picks figures; ``--keep DIR`` keeps the callgrind files
(``callgrind_annotate`` them). Needs ``valgrind`` on PATH; takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

from callgrind import instructions

FIGURES = ("update_many", "update_miss", "update_hot", "ceiling")
HOT_DOCS = 100
BATCH = 1000
COLL = "items"


async def make_home(home: Path, docs: int, passes: int) -> None:
    from loomdb.documents import Database

    rng = random.Random(7)
    db = await Database.open(home)
    try:
        coll = db.collection(COLL)
        for start in range(0, docs, BATCH):
            values = [
                {"n": i, "group": i % 100, "name": f"item {i:07d}", "score": rng.random() * 1000}
                for i in range(start, min(docs, start + BATCH))
            ]
            await coll.create_many(
                values, ids=[f"doc-{i:06d}" for i in range(start, start + len(values))]
            )
        for _ in range(passes):
            for start in range(0, docs, BATCH):
                await coll.update_many(
                    [(f"doc-{i:06d}", {"score": rng.random() * 1000})
                     for i in range(start, min(docs, start + BATCH))]
                )  # fmt: skip
    finally:
        await db.aclose()


async def run_figure(home: Path, figure: str, ops: int, docs: int) -> None:
    """One measured run (under callgrind): ``ops`` operations of ``figure``."""
    rng = random.Random(11)
    if figure == "ceiling":
        await run_ceiling(home / "raw.db", ops)
        return
    from loomdb.documents import Database

    db = await Database.open(home)
    try:
        coll = db.collection(COLL)
        ids = [f"doc-{i:06d}" for i in range(docs)]
        if figure == "update_many":
            for start in range(0, ops, BATCH):
                await coll.update_many(
                    [(ids[i % docs], {"score": rng.random() * 1000})
                     for i in range(start, min(ops, start + BATCH))]
                )  # fmt: skip
        elif figure == "update_miss":
            for i in range(ops):
                await coll.update(ids[i % docs], {"score": rng.random() * 1000})
        else:
            hot = ids[-HOT_DOCS:]
            for doc_id in hot:  # opened: the same in both runs
                await coll.update(doc_id, {"score": rng.random() * 1000})
            for i in range(ops):
                await coll.update(hot[i % HOT_DOCS], {"score": rng.random() * 1000})
    finally:
        await db.aclose()


async def run_ceiling(path: Path, ops: int) -> None:
    from loomdb.clock import pack_hlc
    from loomdb.entries.entry import Entry, build_entry
    from loomdb.identity.keys import NamedKey, SigningKey
    from loomdb.stores.sqlite import SQLiteStore

    author, key = SigningKey.generate(), NamedKey.generate("bench@1")
    payloads = [os.urandom(120) for _ in range(64)]
    last: dict[int, Entry] = {}
    docs = 3000
    store = SQLiteStore(path)
    try:
        for start in range(0, ops, BATCH):
            chunk = []
            for i in range(start, min(ops, start + BATCH)):
                parent = last.get(i % docs)
                last[i % docs] = entry = build_entry(
                    author=author,
                    space="main",
                    collection=COLL,
                    document=f"doc-{i % docs:05d}",
                    kind="create" if parent is None else "change",
                    payload=payloads[i % len(payloads)],
                    created_at=pack_hlc(1_760_000_000_000 + i // 1000, i % 1000),
                    parents=() if parent is None else (parent,),
                    key=key,
                )
                chunk.append(entry)
            await store.put_entries(chunk)
    finally:
        await store.aclose()


def callgrind(args: argparse.Namespace, base: Path, figure: str, ops: int, out: Path) -> int:
    """Instructions of one run of ``figure`` on a fresh copy of the home."""
    work = base / f"run-{figure}-{ops}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base / "home", work)
    argv = [
        sys.executable, __file__, "--run", figure, "--ops", str(ops),
        "--docs", str(args.docs), "--home", str(work),
    ]  # fmt: skip
    count = instructions(argv, out)
    shutil.rmtree(work, ignore_errors=True)
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--docs", type=int, default=3000, help="documents in the home")
    ap.add_argument("--passes", type=int, default=3, help="update_many passes made in the home")
    ap.add_argument("--ops", type=int, default=1000, help="operations of the smaller run")
    ap.add_argument("--figure", action="append", choices=FIGURES, help="default: all")
    ap.add_argument("--keep", type=Path, help="keep the callgrind files here")
    ap.add_argument("--run", choices=FIGURES, help=argparse.SUPPRESS)  # one run (internal)
    ap.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run is not None:
        asyncio.run(run_figure(args.home, args.run, args.ops, args.docs))
        return
    if 2 * args.ops > args.docs:
        raise SystemExit("--ops must be at most half of --docs (each update a cache miss)")
    with tempfile.TemporaryDirectory(prefix="loomdb-instr-") as tmp:
        base = Path(tmp)
        asyncio.run(make_home(base / "home", args.docs, args.passes))
        keep = args.keep or base
        keep.mkdir(parents=True, exist_ok=True)
        for figure in args.figure or FIGURES:
            small = callgrind(args, base, figure, args.ops, keep / f"callgrind.{figure}.1")
            big = callgrind(args, base, figure, 2 * args.ops, keep / f"callgrind.{figure}.2")
            per = (big - small) / args.ops
            print(f"{figure:12s} {per / 1e3:8.0f}k instructions per operation", flush=True)


if __name__ == "__main__":
    main()
