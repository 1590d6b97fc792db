"""Updates documents one at a time until killed; prints each committed update.

Run by tests/integration/test_document_crash.py, which kills it with SIGKILL.
A small live cache makes documents leave it (and be snapshotted) all the time.
Usage: python doc_crash_writer.py HOME RUN MAX_UPDATES
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from loomdb.documents import Database
from loomdb.errors import NotFoundError
from tests.doc_support import make_home

DOCS = 8


async def main(path: str, run: int, max_updates: int) -> None:
    db = await Database.open(make_home(Path(path)), cache_size=3)
    items = db.collection("items")
    for k in range(DOCS):
        try:
            await items.get(f"d{k}")
        except NotFoundError:
            await items.create({"run": run, "n": -1}, id=f"d{k}")
    for i in range(max_updates):  # bounded: the test kills us long before
        await items.update(f"d{i % DOCS}", {"run": run, "n": i})
        print(i % DOCS, run, i, flush=True)
    await db.aclose()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
