"""Writes batches into a SQLiteStore until killed; prints each committed total.

Run by tests/integration/test_sqlite_store.py, which kills it with SIGKILL.
Usage: python crash_writer.py DB BATCH MAX_BATCHES SEED
"""

from __future__ import annotations

import sys

import anyio

from loomdb.stores import SQLiteStore
from tests.support import EntryFactory, signing_key


async def main(path: str, batch: int, max_batches: int, seed: int) -> None:
    make = EntryFactory(author=signing_key(f"writer-{seed}"))
    make.ts += seed << 20  # distinct entries on every run
    store = SQLiteStore(path)
    last: dict[str, object] = {}
    total = await store.count()
    for _ in range(max_batches):  # bounded: the test kills us long before
        entries = []
        for i in range(batch):
            doc = f"doc-{i % 10}"
            parent = last.get(doc)
            entry = make(b"x" * 100, document=doc, parents=[parent] if parent else [])  # type: ignore[list-item]
            last[doc] = entry
            entries.append(entry)
        await store.put_entries(entries)
        total += batch
        print(total, flush=True)
    await store.aclose()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
