"""The SQLite store with real files and real processes: restarts, kill -9, bad files."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from loomdb.entries.entry import decode_entry
from loomdb.errors import StoreCorruptError
from loomdb.stores import SQLiteStore
from tests.support import EntryFactory

pytestmark = [pytest.mark.anyio, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    """These tests are about files and processes; the event loop is covered elsewhere."""
    return "asyncio"


async def test_everything_survives_a_restart(tmp_path: Path, make_entry: EntryFactory) -> None:
    path = tmp_path / "node.db"
    chain = make_entry.chain(5)
    other = make_entry(document="doc-2")
    store = SQLiteStore(path)
    await store.put_entries([*chain, other])
    before = (await store.store_head(), await store.heads("space-1", "notes", "doc-1"))
    await store.aclose()

    reopened = SQLiteStore(path)
    assert (
        await reopened.store_head(),
        await reopened.heads("space-1", "notes", "doc-1"),
    ) == before
    assert await reopened.get_entries([e.cid for e in chain]) == chain
    assert [m.cid for m in await reopened.list_entries("space-1", "notes", "doc-1")] == [
        e.cid for e in chain
    ]
    assert await reopened.list_documents("space-1", "notes") == ["doc-1", "doc-2"]
    # new writes continue the receipt order
    await reopened.put_entries([make_entry(parents=[chain[-1]])])
    assert (await reopened.store_head()).seq == 7
    await reopened.aclose()


def test_a_file_that_is_not_a_store_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database, just some text " * 200)
    with pytest.raises(StoreCorruptError, match="not a readable loomdb store"):
        SQLiteStore(path)


def test_a_store_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    SQLiteStore(path).close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StoreCorruptError, match="schema version '99'"):
        SQLiteStore(path)


async def _check_store(path: Path, batch: int, committed: int) -> int:
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = SQLiteStore(path)
    try:
        count = await store.count()
        assert count % batch == 0, f"a partial batch is visible: {count} entries"
        assert count >= committed, "an acknowledged batch was lost"
        page = await store.scan(0, limit=count + 1)
        assert len(page) == count
        named = set()
        for received in page:
            decode_entry(received.entry.raw)  # every stored entry verifies, signature included
            named.update(received.entry.parents)
        for doc in await store.list_documents("space-1", "notes"):
            heads = await store.heads("space-1", "notes", doc)
            metas = await store.list_entries("space-1", "notes", doc)
            assert heads == sorted(m.cid for m in metas if m.cid not in named)
        return count
    finally:
        await store.aclose()


async def test_kill_9_during_writes_leaves_no_partial_batch(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    batch = 1500
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    total = 0
    for run in range(4):
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests/integration/crash_writer.py"),
                str(path),
                str(batch),
                "200",
                str(run),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        committed = 0
        deadline = time.monotonic() + 60
        try:
            for _ in range(rng.randint(2, 4)):  # let a few batches commit
                line = proc.stdout.readline()
                assert line, "writer exited early"
                committed = int(line)
                assert time.monotonic() < deadline
            time.sleep(rng.uniform(0.0, 0.15))  # then kill at a random point, usually mid-batch
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        count = await _check_store(path, batch, committed)
        assert count >= total
        total = count
    assert total >= 4 * 2 * batch
