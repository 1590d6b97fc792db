"""The receive path without worker-thread hops: small reads of a ``SQLiteStore`` run on
the caller's thread when its reader is free (large ones and a busy reader use the
thread), a guarded put of a few checked entries stores them inline, and a database's
catch-up after a put reads once — and still applies everything when the log is long."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from loomdb.documents import Database
from loomdb.entries.entry import Entry
from loomdb.identity.keys import NamedKey
from loomdb.stores import SQLiteStore
from loomdb.stores.base import PutStatus
from loomdb.stores.sqlite import INLINE_READ
from loomdb.trust.book import DirectoryBook
from loomdb.trust.guard import INLINE_FORWARD, GuardedStore
from tests.doc_support import make_home
from tests.support import EntryFactory

pytestmark = pytest.mark.anyio


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions sent to a worker thread in this test."""
    sent: list[str] = []
    original = anyio.to_thread.run_sync

    async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(getattr(args[-1] if args else fn, "__qualname__", "?"))
        return await original(fn, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return sent


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "s.db")
    yield s
    await s.aclose()


def chain(make: EntryFactory, n: int, document: str = "d") -> list[Entry]:
    out: list[Entry] = []
    for _ in range(n):
        out.append(make(document=document, parents=out[-1:]))
    return out


async def test_small_reads_run_inline_and_large_ones_on_the_thread(
    store: SQLiteStore, make_entry: EntryFactory, hops: list[str]
) -> None:
    entries = chain(make_entry, INLINE_READ + 8)
    await store.put_entries(entries)
    hops.clear()
    few = [e.cid for e in entries[:INLINE_READ]]
    assert await store.has_entries(few) == [True] * INLINE_READ
    assert [e.cid for e in await store.get_entries(few) if e] == few
    assert [r.entry.cid for r in await store.scan(0, INLINE_READ)] == few
    assert hops == []
    many = [e.cid for e in entries]
    assert await store.has_entries(many) == [True] * len(many)
    assert len(await store.scan(0, INLINE_READ + 1)) == INLINE_READ + 1
    assert len(hops) == 2


async def test_a_busy_reader_sends_a_small_read_to_the_thread(
    store: SQLiteStore, make_entry: EntryFactory, hops: list[str]
) -> None:
    [entry] = chain(make_entry, 1)
    await store.put_entries([entry])
    hops.clear()
    store._rlock.acquire()  # another read in progress
    released = threading.Timer(0.2, store._rlock.release)
    released.start()
    assert await store.has_entries([entry.cid]) == [True]  # waited for it on a thread
    released.join()
    assert len(hops) == 1


async def test_a_guarded_put_of_a_few_checked_entries_makes_no_hop(
    store: SQLiteStore, make_entry: EntryFactory, hops: list[str]
) -> None:
    guarded = GuardedStore(store, DirectoryBook())
    entries = chain(make_entry, INLINE_FORWARD)
    raws = [e.raw for e in entries]  # as gossip delivers them: bytes, checked by the guard
    got = await guarded.put_entries(raws)
    assert [r.status for r in got] == [PutStatus.ACCEPTED] * len(raws)
    assert hops == []
    more = chain(make_entry, INLINE_FORWARD + 1, document="e")
    got = await guarded.put_entries([e.raw for e in more])
    assert [r.status for r in got] == [PutStatus.ACCEPTED] * len(more)
    assert len(hops) == 1  # over INLINE_FORWARD: the worker thread stores them
    assert await store.count() == 2 * INLINE_FORWARD + 1


async def test_catch_up_reads_once_after_a_small_put_and_applies_a_long_log(
    tmp_path: Path, hops: list[str]
) -> None:
    key = NamedKey.generate_fingerprinted("shared")
    db = await Database.open(make_home(tmp_path / "home", key))
    try:
        notes = db.collection("notes")
        await notes.create({"n": 0}, id="first")
        # Entries another node wrote land in the store behind the database's back...
        other = await Database.open(make_home(tmp_path / "other", key))
        try:
            made = other.collection("notes")
            for i in range(3 * 32 + 5):
                await made.create({"n": i}, id=f"o{i}")
            raws = [r.entry.raw for r in await other.store.scan(0, 1000)]
        finally:
            await other.aclose()
        stored = await db.store.put_entries(raws)
        assert all(r.status is PutStatus.ACCEPTED for r in stored)
        # ... and one catch-up applies all of them, reading past its small first page.
        assert await db.catch_up() == len(raws)
        assert (await notes.get("o100")).value == {"n": 100}
        hops.clear()
        assert await db.catch_up() == 0
        assert hops == []  # nothing new: one small read, inline
    finally:
        await db.aclose()
