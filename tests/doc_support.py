"""Helpers for document-layer tests: nodes that share a key, and moving entries."""

from __future__ import annotations

import random as _random
from pathlib import Path

from loomdb.documents import Database
from loomdb.entries.entry import Entry
from loomdb.identity.keyring import Keyring
from loomdb.identity.keys import NamedKey
from loomdb.node.home import DEFAULT_KEY_ID, NodeHome
from loomdb.stores import MemoryStore


def make_home(path: Path, key: NamedKey | None = None) -> NodeHome:
    """A node home; with ``key``, its default key is that one (nodes that share it
    can read each other's documents)."""
    if key is not None:
        path.mkdir(parents=True, exist_ok=True)
        ring = Keyring.open(path / "keyring.json", None)
        ring.add_named_key(key)
        ring.save()
    return NodeHome.open(path)


async def open_peers(tmp: Path, n: int, memory: bool = False) -> list[Database]:
    key = NamedKey.generate(DEFAULT_KEY_ID)
    dbs = []
    for i in range(n):
        home = make_home(tmp / f"node{i}", key)
        dbs.append(await Database.open(home, store=MemoryStore() if memory else None))
    return dbs


async def all_entries(db: Database) -> list[Entry]:
    out: list[Entry] = []
    after = 0
    while True:
        got = await db.store.scan(after, 1000)
        if not got:
            return out
        out += [r.entry for r in got]
        after = got[-1].seq


async def exchange(*dbs: Database, seed: int | None = None) -> None:
    """Give every database every entry the others hold (shuffled when seeded)."""
    pools = [await all_entries(db) for db in dbs]
    for i, db in enumerate(dbs):
        raws = [e.raw for j, pool in enumerate(pools) if j != i for e in pool]
        if seed is not None:
            _random.Random(seed + i).shuffle(raws)
        await db.put_entries(raws)
