"""``EntryFeed``: a follower of the guarded store's receipt log is woken by new
entries, reads them from its cursor, and tells the node's own writes apart."""

from __future__ import annotations

import anyio
import pytest

from loomdb.replication.feed import EntryFeed
from loomdb.stores import MemoryStore
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
