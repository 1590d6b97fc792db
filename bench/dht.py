#!/usr/bin/env python3
"""Kad-DHT benchmark: provide and find a collection's providers across N hosts.

    python bench/dht.py [--nodes 3,10] [--reps 5] [--out PATH]

In this process, on trio: N libp2p hosts on 127.0.0.1 (the node's ``P2PHost``, no
gossip), each with the node's DHT (``NodeDHT``, server mode), connected in a
**line** (host i dials host i-1: nobody knows more than its neighbours). Each rep,
a fresh key: the last host **provides** it, then the first **finds** its
providers (``find_providers``: the records of the closest peers, de-duplicated).
Timed: each call's wall time; counted: the providers found (1 is right) and the
connections the lookup opened. All hosts share one trio loop, on 2 shared cores,
so a figure holds every host's Python. Prints a table; writes JSON (meta, every
rep) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from loomdb.identity.keys import SigningKey  # noqa: E402
from loomdb.replication.providers import collection_key  # noqa: E402
from loomdb.transports.libp2p import P2PHost  # noqa: E402
from loomdb.transports.libp2p.dht import NodeDHT  # noqa: E402

DEFAULT_OUT = ROOT / "results" / "dht.json"
SETTLE_SECONDS = 2.0  # routing tables fed from the connections (polled every 1 s)


async def line(n: int, reps: int) -> list[dict[str, Any]]:
    out = []
    async with AsyncExitStack() as stack:
        hosts, dhts = [], []
        for _ in range(n):
            host = P2PHost(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], gossip=False)
            await stack.enter_async_context(host.run())
            dht = NodeDHT(host.host)
            await stack.enter_async_context(dht.run())
            hosts.append(host)
            dhts.append(dht)
        for i in range(1, n):
            await hosts[i].connect(hosts[i - 1].listen_addrs()[0])
        await anyio.sleep(SETTLE_SECONDS)
        first, last = dhts[0], dhts[-1]
        for rep in range(reps):
            key = collection_key("bench", f"c{rep}-{time.monotonic_ns()}")
            start = time.perf_counter()
            reached = await last.provide(key)
            provided = time.perf_counter() - start
            before = len(hosts[0].host.get_network().connections)
            start = time.perf_counter()
            found = await first.find_providers(key)
            lookup = time.perf_counter() - start
            after = len(hosts[0].host.get_network().connections)
            out.append(
                {
                    "provide_s": provided,
                    "provide_reached": reached,
                    "find_s": lookup,
                    "providers_found": len(found),
                    "right_provider": [p.peer_id for p in found] == [hosts[-1].host.get_id()],
                    "connections_opened": after - before,
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="3,10", help="host counts, comma-separated")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    counts = [int(n) for n in args.nodes.split(",") if n]
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "nproc": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "args": vars(args) | {"out": str(args.out)},
    }
    results: dict[str, Any] = {}
    print(f"{'nodes':>5}  {'provide ms':>16}  {'find ms':>16}  {'found':>5}  {'dials':>5}")
    for n in counts:
        reps = anyio.run(line, n, args.reps, backend="trio")
        results[str(n)] = reps

        def spread(name: str, reps: list[dict[str, Any]] = reps) -> str:
            values = sorted(r[name] * 1000 for r in reps)
            return f"{statistics.median(values):.0f} ({values[0]:.0f}-{values[-1]:.0f})"

        found = {r["providers_found"] for r in reps}
        right = all(r["right_provider"] for r in reps)
        dials = statistics.median(r["connections_opened"] for r in reps)
        print(
            f"{n:>5}  {spread('provide_s'):>16}  {spread('find_s'):>16}  "
            f"{','.join(map(str, sorted(found))) + ('' if right else '!'):>5}  {dials:>5g}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
