#!/usr/bin/env python3
"""The gossip path alone, in one process: CPU per message, py-libp2p's way and ours.

    python bench/gossip_path.py [--updates 300] [--rate 100] [--reps 2] [--batch 2000]
                                [--profile FILE] [--only tuned] [--subscribers 1]

Two real libp2p hosts on 127.0.0.1 (TCP, Noise, Yamux, gossipsub), each with a
guarded memory store, its receipt-log feed and ``PassiveReplication`` — the
daemon's wiring without HTTP, SQLite or documents, so what is measured is the
gossip path only: publish (sign, push, Noise, Yamux) on one side, receive
(Yamux, Noise, verify the message, decide, verify the entry, store) on the other.

Each round writes ``--updates`` entries one at a time at ``--rate``/s on A (each
its own message) and waits until B stored them all: **CPU per update** (this
process's user+system time, both hosts: ``time.process_time``) and B's delay
(entry time to stored, p50/p99). Rounds alternate between two settings of the
same running hosts, so both see the same machine load:

* ``py-libp2p``: a Yamux window update after nearly every read, and the
  signature of the node's own message verified right after signing it;
* ``tuned``: credit at half the window (``yamux_credit``) and no verification of
  what the node itself just signed (``pubsub``).

``--batch N`` (0: skip): N entries in one put (an import), the time until B has
them all, the CPU and the messages it took — published as this version does
(batches) and one message per entry (as before it).

``--profile FILE``: the ``tuned`` rounds run under cProfile (process CPU time), the
stats written to FILE (``python -m pstats FILE``). ``--only tuned`` skips the
``py-libp2p`` rounds (for instruction counts under callgrind). ``--subscribers K``:
K subscribing hosts, each connected to A and to the others (a gossipsub mesh: each
receives every message from A and from the K-1 others); the CPU is all hosts'.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent
from loomdb.clock import pack_hlc  # noqa: E402
from loomdb.entries.entry import Entry, build_entry  # noqa: E402
from loomdb.identity.keys import NamedKey, SigningKey  # noqa: E402
from loomdb.replication import passive as passive_module  # noqa: E402
from loomdb.replication.feed import EntryFeed  # noqa: E402
from loomdb.replication.message import encode_entry  # noqa: E402
from loomdb.replication.passive import PassiveReplication  # noqa: E402
from loomdb.replication.subscriptions import Subscriptions  # noqa: E402
from loomdb.stores import MemoryStore  # noqa: E402
from loomdb.stores.origin import written_here  # noqa: E402
from loomdb.stores.server import StoreServer  # noqa: E402
from loomdb.transports.libp2p import P2PHost  # noqa: E402
from loomdb.transports.libp2p import pubsub as tuning  # noqa: E402
from loomdb.transports.libp2p.yamux_credit import (  # noqa: E402
    credit_at_half_window,
    credit_on_every_read,
)
from loomdb.trust.book import DirectoryBook  # noqa: E402
from loomdb.trust.devices import PeerPrincipal  # noqa: E402
from loomdb.trust.guard import GuardedStore  # noqa: E402

DEFAULT_OUT = ROOT / "results" / "gossip_path.json"
KEY = NamedKey.generate("bench@1")
WAIT = 120.0
COLLECTION = "bench"
SETTINGS = ("py-libp2p", "tuned")


class Side:
    def __init__(self, store: GuardedStore, host: P2PHost, replication: PassiveReplication):
        self.store, self.host, self.replication = store, host, replication


@asynccontextmanager
async def side(user: SigningKey) -> AsyncIterator[Side]:
    base = MemoryStore()
    feed = EntryFeed(base, user.public_key)
    await feed.start()
    store = GuardedStore(base, DirectoryBook(), on_stored=feed.stored, on_written=feed.written)
    host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], connect_timeout=WAIT)
    server = StoreServer(store)
    host.serve_sync(lambda p: server.handler_for(PeerPrincipal(None, peer_id=p)))
    subscriptions = Subscriptions()
    subscriptions.add_collections("main", [COLLECTION])
    replication = PassiveReplication(host, store, feed, subscriptions, store.check)
    async with host.run(), trio.open_nursery() as nursery:
        nursery.start_soon(replication.run)
        yield Side(store, host, replication)
        nursery.cancel_scope.cancel()


def make_entry(user: SigningKey, doc: str) -> Entry:
    return build_entry(
        author=user,
        space="main",
        collection=COLLECTION,
        document=doc,
        kind="create",
        payload=b"x" * 200,
        created_at=pack_hlc(time.time_ns() // 1_000_000, 0),
        parents=[],
        key=KEY,
    )


async def until(check: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT):
        while not check():
            await trio.sleep(0.002)


def configure(setting: str) -> None:
    if setting == "tuned":
        credit_at_half_window()
        tuning._pubsub_module.signature_validator = tuning._validate_unless_just_signed  # type: ignore[attr-defined]
    else:
        credit_on_every_read()
        tuning._pubsub_module.signature_validator = tuning._original_signature_validator  # type: ignore[attr-defined]


async def one_round(
    user: SigningKey, a: Side, subs: Sequence[Side], n: int, rate: float, tag: str
) -> dict[str, float]:
    b = subs[0]
    before = [s.replication.counters["stored"] for s in subs]
    b.replication.delays = type(b.replication.delays)()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        wait = t0 + i / rate - time.perf_counter()
        if wait > 0:
            await trio.sleep(wait)
        entry = make_entry(user, f"{tag}-{i}")  # dated now: the delay is from here
        with written_here():
            await a.store.put_entries([entry])
    await until(
        lambda: all(
            s.replication.counters["stored"] - s0 >= n for s, s0 in zip(subs, before, strict=True)
        )
    )
    cpu = time.process_time() - cpu0
    delays = b.replication.delays.summary()
    return {"cpu_ms": cpu * 1000 / n, "p50_ms": delays["p50_ms"], "p99_ms": delays["p99_ms"]}


@contextmanager
def patched_pack(batches: bool) -> Iterator[None]:
    """Publish a batch as this version does, or one message per entry (as before)."""
    if batches:
        yield
        return

    def one_each(entries: Sequence[Entry]) -> Iterator[tuple[bytes, int]]:
        for e in entries:
            yield encode_entry(e.raw, e.space, e.collection, e.document, e.cid), 1

    original = passive_module.pack
    passive_module.pack = one_each  # type: ignore[assignment]
    try:
        yield
    finally:
        passive_module.pack = original


async def batch_round(user: SigningKey, a: Side, b: Side, n: int, tag: str) -> dict[str, float]:
    sent, got = a.replication.counters, b.replication.counters
    published, stored, calls = sent["published"], got["stored"], got["store_calls"]
    entries = [make_entry(user, f"batch-{tag}-{i}") for i in range(n)]
    t0, cpu0 = time.perf_counter(), time.process_time()
    with written_here():
        await a.store.put_entries(entries)
    await until(lambda: got["stored"] - stored >= n)
    return {
        "entries": n,
        "seconds": time.perf_counter() - t0,
        "cpu_ms_per_entry": (time.process_time() - cpu0) * 1000 / n,
        "messages": sent["published"] - published,
        "store_calls": got["store_calls"] - calls,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    user = SigningKey.generate()
    out: dict[str, Any] = {"rounds": []}
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(side(user))
        subs = [await stack.enter_async_context(side(user)) for _ in range(args.subscribers)]
        for i, b in enumerate(subs):  # a full mesh: each subscriber to A and to the others
            for other in (a, *subs[:i]):
                await b.host.connect(other.host.listen_addrs()[0])

        def joined() -> bool:
            info = a.host.pubsub_info()
            return bool(info and list(info["topic_peers"].values()) == [len(subs)])

        await until(joined)
        await until(lambda: all(b.replication.heads["exchanges"] >= 1 for b in subs))
        b = subs[0]
        await trio.sleep(1.5)  # a heartbeat: the mesh is formed
        profile = cProfile.Profile(time.process_time) if args.profile else None
        for rep in range(args.reps):
            for setting in SETTINGS if args.only is None else (args.only,):
                configure(setting)
                if profile is not None and setting == "tuned":
                    profile.enable()
                tag = f"r{rep}-{setting}"
                measured = await one_round(user, a, subs, args.updates, args.rate, tag)
                if profile is not None:
                    profile.disable()
                out["rounds"].append({"setting": setting, **measured})
                print(f"  {setting:<10} {json.dumps(measured)}", flush=True)
        if profile is not None:
            profile.dump_stats(args.profile)
            print(f"profile of the tuned rounds: {args.profile}")
        configure("tuned")
        if args.batch:
            for packing in ("one message per entry", "batches"):
                with patched_pack(packing == "batches"):
                    measured = await batch_round(user, a, b, args.batch, packing)
                out.setdefault("batch", []).append({"packing": packing, **measured})
                print(f"  batch, {packing}: {json.dumps(measured)}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--profile", type=Path, help="cProfile the tuned rounds into FILE")
    parser.add_argument("--only", choices=SETTINGS, help="run rounds of this setting only")
    parser.add_argument(
        "--subscribers", type=int, default=1, help="subscribers, all connected to A and each other"
    )
    args = parser.parse_args()
    if args.updates < 1 or args.reps < 1 or args.rate <= 0 or args.batch < 0:
        parser.error("--updates and --reps at least 1, --rate above 0, --batch at least 0")
    if args.subscribers < 1:
        parser.error("--subscribers at least 1")
    load = os.getloadavg()
    result = trio.run(run, args)
    summary = {}
    for setting in SETTINGS:
        rounds = [r for r in result["rounds"] if r["setting"] == setting]
        if not rounds:
            continue
        summary[setting] = {
            k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k != "setting"
        }
    print("\nmedian of the rounds:")
    for setting, figures in summary.items():
        print(f"  {setting:<10} " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
    doc = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": sys.version.split()[0],
            "loadavg_start": load,
            "loadavg_end": os.getloadavg(),
            "updates": args.updates,
            "rate": args.rate,
            "reps": args.reps,
            "subscribers": args.subscribers,
        },
        "summary": summary,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
