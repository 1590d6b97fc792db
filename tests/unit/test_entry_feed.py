"""``EntryFeed``: a follower of the guarded store's receipt log is woken by new
entries, reads them from its cursor, and tells the node's own writes apart —
by author (``is_local``) and by origin (``written_here``: the write path, not
the same user's entries received from another device)."""

from __future__ import annotations

import anyio
import pytest

from loomdb.replication import feed as feed_module
from loomdb.replication.feed import EntryFeed
from loomdb.stores import MemoryStore
from loomdb.stores.base import Received
from loomdb.stores.origin import is_written_here, written_here
from loomdb.trust.book import DirectoryBook
from loomdb.trust.guard import GuardedStore
from tests.support import EntryFactory, signing_key

pytestmark = pytest.mark.anyio


async def test_followers_wake_on_stored_entries_and_read_from_their_cursor() -> None:
    inner = MemoryStore()
    me = signing_key("me")
    feed = EntryFeed(inner, me.public_key)
    store = GuardedStore(inner, DirectoryBook(), on_stored=feed.stored)
    await feed.start()
    mine, theirs = EntryFactory(author=me), EntryFactory(author=signing_key("other"))
    seen: list[bool] = []

    async def follow() -> None:
        cursor = 0
        while len(seen) < 3:
            rows = await feed.read(cursor)
            seen.extend(feed.is_local(r) for r in rows)
            if rows:
                cursor = rows[-1].seq
            else:
                assert await feed.wait(cursor, timeout=10)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await anyio.sleep(0)
            await store.put_entries([mine(document="a")])
            await store.put_entries([theirs(document="b"), mine(document="c")])
    assert seen == [True, False, True]
    assert feed.latest == 3


async def test_a_batch_with_nothing_new_wakes_no_one() -> None:
    inner = MemoryStore()
    calls: list[int] = []
    store = GuardedStore(inner, DirectoryBook(), on_stored=calls.append)
    entry = EntryFactory()(document="a")
    await store.put_entries([entry])
    await store.put_entries([entry])  # a duplicate
    await store.put_entries([b"junk"])  # refused
    assert calls == [1]


async def test_wait_times_out_without_news() -> None:
    feed = EntryFeed(MemoryStore())
    await feed.start()
    assert await feed.wait(0, timeout=0.01) is False


async def test_the_feed_tells_what_this_node_wrote_from_what_it_received() -> None:
    inner = MemoryStore()
    me = signing_key("me")
    feed = EntryFeed(inner, me.public_key)
    store = GuardedStore(inner, DirectoryBook(), on_stored=feed.stored, on_written=feed.written)
    await feed.start()
    mine = EntryFactory(author=me)
    with written_here():
        await store.put_entries([mine(document="a"), mine(document="b")])
    # the same user's entry from another device, received by sync or gossip
    await store.put_entries([mine(document="c")])
    again = mine(document="d")
    with written_here():
        await store.put_entries([again])
        await store.put_entries([again])  # a duplicate: nothing new
    rows = await feed.read(0)
    assert [r.entry.document for r in rows] == ["a", "b", "c", "d"]
    assert [feed.written_here(r) for r in rows] == [True, True, False, True]
    assert all(feed.is_local(r) for r in rows)  # all authored by this node's user
    assert not is_written_here()  # the mark ends with its block


def test_written_runs_merge_cross_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    feed = EntryFeed(MemoryStore())
    make = EntryFactory()

    def here(seq: int) -> bool:
        return feed.written_here(Received(seq, make(document="x")))

    def written(*seqs: int) -> None:
        feed.written([(s, None) for s in seqs])

    written(1, 2, 3)
    written(4)
    written(8, 9)
    written(6)  # two writes' reports crossed
    assert [s for s in range(12) if here(s)] == [1, 2, 3, 4, 6, 8, 9]
    assert len(feed._starts) == 3
    monkeypatch.setattr(feed_module, "WRITTEN_RUNS", 4)
    for seq in range(20, 40, 2):  # runs of one
        written(seq)
    assert len(feed._starts) <= 4 and here(38) and not here(1)  # the oldest forgotten


def test_the_last_written_entries_are_handed_over_from_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feed = EntryFeed(MemoryStore())
    make = EntryFactory()
    entries = {seq: make(document=f"d{seq}") for seq in range(1, 11)}
    feed.written([(s, entries[s]) for s in (1, 2, 3)])
    feed.written([(5, entries[5]), (4, entries[4])])  # out of order: sorted
    feed.written([(7, entries[7])])
    feed.written([(6, entries[6])])  # two writes' reports crossed
    assert feed.written_after(0, 100) == [(s, entries[s]) for s in range(1, 8)]
    assert feed.written_after(3, 2) == [(4, entries[4]), (5, entries[5])]
    assert feed.written_after(7, 100) == []
    feed.written([(8, None)])  # given as bytes: not at hand
    assert feed.written_after(7, 100) is None  # read the log
    assert feed.written_after(8, 100) == []
    monkeypatch.setattr(feed_module, "RECENT_ENTRIES", 4)
    feed.written([(s, entries[s]) for s in (9, 10)])  # over the limit: the oldest go
    assert feed.written_after(8, 100) == [(9, entries[9]), (10, entries[10])]
    assert len(feed._recent) <= 4
    assert feed.written_after(0, 100) is None
