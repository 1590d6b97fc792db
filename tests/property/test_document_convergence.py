"""Any delivery order and any duplication of a document's entries gives the same value."""

from __future__ import annotations

import random
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loomdb.documents import Counter, Database, Text
from loomdb.identity.keys import NamedKey
from loomdb.stores import MemoryStore
from tests.doc_support import all_entries, exchange, make_home

DOCS = ("d0", "d1")


async def _scenario(seed: int, tmp: Path, key: NamedKey) -> tuple[list[bytes], dict[str, Any]]:
    """Three writers edit two documents concurrently, syncing now and then."""
    rng = random.Random(seed)
    dbs = [
        await Database.open(make_home(tmp / f"w{i}", key), store=MemoryStore()) for i in range(3)
    ]
    try:
        first = dbs[0].collection("c")
        for d in DOCS:
            await first.create({"n": Counter(0), "t": Text("ab"), "x": 0, "m": {}}, id=d)
        await exchange(*dbs)
        for step in range(24):
            db = rng.choice(dbs)
            coll = db.collection("c")
            doc = rng.choice(DOCS)
            op = rng.randrange(5)
            if op == 0:
                await coll.increment(doc, "n", rng.randint(1, 5))
            elif op == 1:
                current = (await coll.get(doc)).value["t"]
                await coll.edit_text(doc, "t", index=rng.randint(0, len(current)), insert="xyz"[op])
            elif op == 2:
                await coll.update(doc, {"x": step, f"f{step}": seed})
            elif op == 3:
                await coll.update(doc, {"m": {f"k{rng.randint(0, 3)}": step}})
            else:
                await exchange(*rng.sample(dbs, 2))
        await exchange(*dbs)
        values = {d: (await dbs[0].collection("c").get(d)).value for d in DOCS}
        for db in dbs[1:]:  # the writers themselves converged
            assert {d: (await db.collection("c").get(d)).value for d in DOCS} == values
        raws = [e.raw for e in await all_entries(dbs[0])]
        return raws, values
    finally:
        for db in dbs:
            await db.aclose()


_KEY = NamedKey.generate_fingerprinted("team")  # every writer and reader is given it


@cache
def scenario(seed: int) -> tuple[tuple[bytes, ...], dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        raws, values = anyio.run(_scenario, seed, Path(tmp), _KEY)
    return tuple(raws), values


async def _deliver(batches: list[list[bytes]], tmp: Path) -> dict[str, Any]:
    db = await Database.open(make_home(tmp / "r", _KEY), store=MemoryStore())
    try:
        for batch in batches:
            await db.put_entries(batch)
        assert (await db.stats())["states"].keys() == {"applied"}
        return {d: (await db.collection("c").get(d)).value for d in DOCS}
    finally:
        await db.aclose()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2),
    order=st.randoms(use_true_random=False),
    dup_ratio=st.floats(0, 0.5),
    batch=st.integers(1, 40),
)
def test_any_order_and_duplication_converges(
    seed: int, order: random.Random, dup_ratio: float, batch: int
) -> None:
    raws, expected = scenario(seed)
    items = list(raws) + [r for r in raws if order.random() < dup_ratio]
    order.shuffle(items)
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]
    with tempfile.TemporaryDirectory() as tmp:
        got = anyio.run(_deliver, batches, Path(tmp))
    assert got == expected
