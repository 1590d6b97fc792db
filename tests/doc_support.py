"""Helpers for document-layer tests: nodes given each other's keys, and moving entries.

Every home makes its own default key, as a real node does, so two nodes read each
other's documents only when a test gives them the keys, as a user would: with
:meth:`Keyring.import_key` (:func:`share_keys`), or by making a home write with
a key the test hands to several (``make_home(path, key)``)."""

from __future__ import annotations

import random as _random
from pathlib import Path

from loomdb.documents import Database
from loomdb.entries.entry import Entry
from loomdb.identity.keys import NamedKey
from loomdb.node.home import NodeHome
from loomdb.stores import MemoryStore


def make_home(path: Path, key: NamedKey | None = None) -> NodeHome:
    """A node home (with its own default key); with ``key``, it also holds ``key`` and
    writes its open spaces with it, so homes given the same key read each other."""
    home = NodeHome.open(path, environ={})
    if key is not None:
        home.keyring.import_key(key)
        home.keyring.set_default_key(key.key_id)
        home.keyring.save()
    return home


def share_keys(*homes: NodeHome) -> None:
    """Give every home the default key of every other (saved in their keyrings)."""
    keys = [home.default_key for home in homes]
    for home in homes:
        for key in keys:
            home.keyring.import_key(key)
        home.keyring.save()


async def open_peers(tmp: Path, n: int, memory: bool = False) -> list[Database]:
    """``n`` databases of homes that hold each other's default keys."""
    homes = [make_home(tmp / f"node{i}") for i in range(n)]
    share_keys(*homes)
    return [await Database.open(h, store=MemoryStore() if memory else None) for h in homes]


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
