"""``NodeDatabases`` bounds what callers can make a node hold open: space names
are checked, at most ``max_open`` databases are open (the least recently used
closes), idle ones close, and one in use or the default never closes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loomdb.errors import ValidationError
from loomdb.node.databases import NodeDatabases
from loomdb.node.home import NodeHome
from loomdb.stores import SQLiteStore
from loomdb.trust.admin import NodeTrust
from loomdb.trust.book import DirectoryBook
from loomdb.trust.guard import GuardedStore

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def dbs(tmp_path: Path, clock: FakeClock) -> AsyncIterator[NodeDatabases]:
    home = NodeHome.open(tmp_path / "home", environ={})
    inner = SQLiteStore(tmp_path / "store.db")
    book = DirectoryBook()
    await book.load(inner)
    store = GuardedStore(inner, book)
    node = NodeDatabases(home, store, NodeTrust(home, store, book), "main", max_open=3, clock=clock)
    await node.start()
    try:
        yield node
    finally:
        await node.aclose()
        await store.aclose()


@pytest.mark.parametrize(
    "space", [" x", "a/b", "$x", "..", "x" * 129, "bad~id", "a\nb", "team~z6Mknope"]
)
async def test_bad_space_names_are_refused_before_anything_opens(
    dbs: NodeDatabases, space: str
) -> None:
    with pytest.raises(ValidationError):
        await dbs.get(space)
    assert dbs.open_spaces == ["main"]


async def test_many_spaces_never_exhaust_the_slots(dbs: NodeDatabases) -> None:
    for i in range(20):  # was: refused for good after the 64th
        db = await dbs.get(f"s{i}")
        await db.collection("c").create({"i": i}, id="d")
    assert len(dbs.open_spaces) == 3
    assert dbs.open_spaces[0] == "main"  # the default is never closed
    # a closed database opens again with its documents
    again = await dbs.get("s0")
    assert (await again.collection("c").get("d")).value == {"i": 0}


async def test_a_database_in_use_is_not_closed(dbs: NodeDatabases) -> None:
    async with dbs.using("held") as held:
        for i in range(5):
            await dbs.get(f"s{i}")
        assert "held" in dbs.open_spaces
        await held.collection("c").create({"ok": True}, id="d")  # still open
    async with dbs.using("a"), dbs.using("b"):
        with pytest.raises(ValidationError, match="in use"):
            await dbs.get("c")  # main, a and b are all held: no room
    await dbs.get("c")  # released: room again


async def test_idle_databases_close(dbs: NodeDatabases, clock: FakeClock) -> None:
    await dbs.get("old")
    clock.now += 301
    await dbs.get("new")
    assert dbs.open_spaces == ["main", "new"]
