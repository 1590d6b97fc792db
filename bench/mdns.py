"""How long two nodes on a LAN take to find each other by mDNS and connect.

Two ``loomdb -v start --mdns`` processes, each in its own network namespace on one
bridge (``tests/integration/lan.py``; root, ``ip``), fresh homes every rep. Timed:
to the first ``mdns: connected to`` line of either node's log (the side that
dialled; the other is dialled), from the later of the two ready lines (mDNS starts
just before the ready line, so this can be ~0) and from the launch of the two
processes (Python start-up included). Each node's log is
read as it is written, every 20 ms; a rep that does not connect within 30 s counts
as a miss.

    .venv/bin/python bench/mdns.py --reps 5      # -> bench/results/mdns.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from tests.doc_support import make_home  # noqa: E402
from tests.integration.lan import lan  # noqa: E402
from tests.integration.nodes import Node, nodes  # noqa: E402

from loomdb.identity.keys import NamedKey  # noqa: E402

CONNECTED = "mdns: connected to"
WAIT = 30.0


def one_rep(tmp: Path, prefixes: list[list[str]], ips: list[str]) -> tuple[float, float] | None:
    """Seconds from both ready, and from launch, to connected; None: not within
    :data:`WAIT` of ready."""
    key = NamedKey.generate_fingerprinted("bench")
    with nodes() as group:
        launched = time.monotonic()
        started: list[Node] = []
        for i, (prefix, ip) in enumerate(zip(prefixes, ips, strict=True)):
            home = tmp / f"n{i}-{time.monotonic_ns()}"
            make_home(home, key)
            addr = f"/ip4/{ip}/tcp/4001"
            started.append(
                group.launch(home, "--p2p-addr", addr, "--mdns", prefix=prefix, verbose=True)
            )
        for node in started:
            node.wait_ready()
        ready = time.monotonic()
        while time.monotonic() - ready < WAIT:
            if any(CONNECTED in node.stderr() for node in started):
                now = time.monotonic()
                return now - ready, now - launched
            time.sleep(0.02)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", default=str(ROOT / "results" / "mdns.json"))
    args = parser.parse_args()
    logging.getLogger("loomdb.keyring").setLevel(logging.ERROR)  # fresh homes, no secret
    load = os.getloadavg()
    reps: list[tuple[float, float] | None] = []
    with tempfile.TemporaryDirectory() as tmp, lan(2) as net:
        prefixes = [net.prefix(0), net.prefix(1)]
        for _ in range(args.reps):
            reps.append(one_rep(Path(tmp), prefixes, [net.ip(0), net.ip(1)]))
    results: dict[str, Any] = {"connected": f"{sum(r is not None for r in reps)}/{len(reps)}"}
    for i, name in enumerate(("ready_to_connected_s", "launch_to_connected_s")):
        found = [r[i] for r in reps if r is not None]
        results[name] = {
            "min": min(found, default=None),
            "median": statistics.median(found) if found else None,
            "max": max(found, default=None),
            "values": found,
        }
        if found:
            print(
                f"{name}: median {statistics.median(found):.2f} s "
                f"(min {min(found):.2f}, max {max(found):.2f})"
            )
    print(f"connected {results['connected']} reps; load {load[0]:.1f} at start")
    result: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": sys.version.split()[0],
            "nproc": os.cpu_count(),
            "loadavg": load,
            "args": vars(args),
        },
        "results": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
