"""A tour of the core on real parts: the node's SQLite store and keyring.

1. The node's identity (persistent Peer ID, user id) from its home.
2. Writes encrypted, signed entries into the embedded store, in batches.
3. Reopens the store (a restart): entries and heads are still there.
4. A blind relay (a store with no keys) verifies and keeps every entry; it
   cannot read one.
5. A tampered entry is refused; the rest of its batch is kept.
6. A reader with the key decrypts a document's history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from loomdb.clock import HybridLogicalClock, SystemClock
from loomdb.entries.entry import Entry, build_entry
from loomdb.errors import MissingKeyError
from loomdb.node.home import NodeHome
from loomdb.stores import MemoryStore, PutStatus

SPACE = "demo"
COLLECTION = "notes"
BATCH = 1000


async def run_demo(home: NodeHome, n_entries: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Run the tour, telling each step to ``say``; the figures, as JSON-ready data."""
    say(f"node home      {home.path}")
    say(f"peer id        {home.peer_id}")
    say(f"listen addr    {home.listen_multiaddr()}")
    say(f"user id        {home.user.user_id}")

    hlc = HybridLogicalClock(SystemClock())
    author, key = home.user.signing_key, home.default_key
    documents = [f"note-{i}" for i in range(max(1, min(10, n_entries)))]
    tips: dict[str, Entry] = {}
    store = home.open_store()
    before = await store.count()
    written: list[Entry] = []
    started = time.perf_counter()
    for start in range(0, n_entries, BATCH):
        batch = []
        for i in range(start, min(start + BATCH, n_entries)):
            doc = documents[i % len(documents)]
            parent = tips.get(doc)
            entry = build_entry(
                author=author,
                space=SPACE,
                collection=COLLECTION,
                document=doc,
                kind="change",
                payload=f"edit {i} of {doc}".encode(),
                created_at=hlc.now(),
                parents=[parent] if parent else [],
                key=key,
            )
            tips[doc] = entry
            batch.append(entry)
        await store.put_entries(batch)
        written.extend(batch)
        say(f"  wrote {len(written):>7}/{n_entries} entries")
    elapsed = time.perf_counter() - started
    rate = n_entries / elapsed if elapsed else 0.0
    say(f"stored         {n_entries} encrypted, signed entries in {elapsed:.2f} s ({rate:,.0f}/s)")
    await store.aclose()

    store = home.open_store()  # a restart
    total = await store.count()
    heads = await store.heads(SPACE, COLLECTION, documents[0])
    say(f"after restart  {total} entries ({before} from earlier runs)")
    say(f"               head of {documents[0]}: {heads[0]}")

    relay = MemoryStore()  # holds no keys
    results = await relay.put_entries([e.raw for e in written])
    accepted = sum(r.status is PutStatus.ACCEPTED for r in results)
    say(f"blind relay    verified and kept {accepted}/{len(written)} entries without any key")
    try:
        written[0].decrypt({})
    except MissingKeyError as exc:
        say(f"               reading one there: {exc.message}")

    sample = [e.raw for e in written[-10:]]
    tampered = bytearray(sample[3])
    tampered[len(tampered) // 2] ^= 0x01
    sample[3] = bytes(tampered)
    fresh = MemoryStore()
    results = await fresh.put_entries(sample)
    kept = sum(r.ok for r in results)
    reasons = [r.reason for r in results if not r.ok]
    say(f"tampering      1 byte flipped in 1 of 10 entries: {kept} kept, refused: {reasons[0]}")

    history = await store.list_entries(SPACE, COLLECTION, documents[0])
    got = await store.get_entries([m.cid for m in history[-3:]])
    lines = [e.decrypt(key).decode() for e in got if e is not None]
    say(f"reader         last edits of {documents[0]}: {lines}")
    await store.aclose()
    return {
        "home": str(home.path),
        "peer_id": home.peer_id,
        "user_id": home.user.user_id,
        "written": n_entries,
        "seconds": round(elapsed, 3),
        "per_second": round(rate),
        "entries_after_restart": total,
        "head": str(heads[0]),
        "relay_kept": accepted,
        "tampered": {"kept": kept, "refused": reasons},
        "last_edits": lines,
    }
