#!/usr/bin/env python3
"""HTTP write benchmark: what one ``POST …/docs`` costs the node that serves it.

    python bench/http_writes.py [--posts 1000] [--rate 100] [--reps 3]
                                [--profile OUT.prof] [--callgrind OUT]

Starts ``loomdb start`` on a fresh home (127.0.0.1, port 0, libp2p on but no
peers), makes the collection, warms up with 100 POSTs, then sends --posts
single-document ``POST /api/v0/collections/bench/docs`` (``{"id", "value":
{"i": n}}``, the writes of ``bench/p2p.py --gossip-only``), one at a time on one
keep-alive connection, paced at --rate per second (0: as fast as answered).

Prints the node's CPU per request (user + system, all threads and the main
thread alone, from ``/proc``), the wall time per request, and the median over
--reps nodes. ``--profile``: the node runs under cProfile timed by its main
thread's CPU (as ``bench/p2p.py``'s PROFILE_MAIN), stats written to OUT when it
stops, top functions printed. ``--callgrind``: the node runs under valgrind
callgrind with instrumentation on only around the timed POSTs
(``callgrind_control -i``), so OUT.<pid> holds the instructions of exactly
those requests; instructions per request are printed (load-independent).
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

COLL = "bench"
WARMUP = 100
READY = re.compile(rb"ready, API at (http://\S+)")
START_S = 60.0
START_VALGRIND_S = 900.0
STOP_S = 60.0

PROFILE_MAIN = """
import cProfile, runpy, sys, time
out, sys.argv = sys.argv[1], sys.argv[2:]
profile = cProfile.Profile(time.thread_time)  # the event loop's own CPU, not waits
profile.enable()
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
finally:
    profile.disable()
    profile.dump_stats(out)
"""


def task_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``."""
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended since the listing
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Node:
    def __init__(self, tmp: Path, profile: Path | None, callgrind: Path | None) -> None:
        home = tmp / "node"
        env = {k: v for k, v in os.environ.items() if k != "LOOMDB_URL"}
        env["LOOMDB_RUNTIME_DIR"] = str(tmp / "runtime")
        command = [sys.executable]
        command += ["-m"] if profile is None else ["-c", PROFILE_MAIN, str(profile)]
        command += ["loomdb", "start", "--home", str(home), "--api", "127.0.0.1:0"]
        command += ["--p2p-addr", "/ip4/127.0.0.1/tcp/0"]
        if callgrind is not None:
            command = [
                "valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={callgrind}.%p", "--trace-children=no", *command,
            ]  # fmt: skip
        self.valgrind = callgrind is not None
        self.log = (tmp / "node.log").open("wb")
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, env=env)
        assert self.proc.stdout is not None
        out = b""
        deadline = time.monotonic() + (START_VALGRIND_S if self.valgrind else START_S)
        while (found := READY.search(out)) is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.close()
                raise SystemExit("bench: the node did not start in time")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                self.close()
                raise SystemExit(f"bench: the node exited; see {tmp / 'node.log'}")
            out += chunk
        self.url = found.group(1).decode()
        token = (home / "api.token").read_text().strip()
        self.api = httpx.Client(
            base_url=f"{self.url}/api/v0",
            headers={"Authorization": f"Bearer {token}"},
            timeout=600.0,
            trust_env=False,
        )

    def callgrind(self, on: bool) -> None:
        subprocess.run(
            ["callgrind_control", "-i", "on" if on else "off", str(self.proc.pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def close(self) -> None:
        if hasattr(self, "api"):
            self.api.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_S * (10 if self.valgrind else 1))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


def post(node: Node, i: int) -> None:
    r = node.api.post(f"/collections/{COLL}/docs", json={"id": f"g{i}", "value": {"i": i}})
    if r.status_code != 201:
        raise SystemExit(f"bench: POST answered {r.status_code}: {r.text}")


def rep(args: argparse.Namespace, profile: Path | None, callgrind: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="loomdb-bench-httpw-") as tmp:
        node = Node(Path(tmp), profile, callgrind)
        try:
            r = node.api.post("/collections", json={"name": COLL})
            assert r.status_code == 201, r.text
            for i in range(WARMUP):
                post(node, -1 - i)
            time.sleep(0.5)
            pid = node.proc.pid
            main0, all0 = task_cpu(pid).get(pid, 0.0), process_cpu(pid)
            if callgrind is not None:
                node.callgrind(True)
            t0 = time.perf_counter()
            for i in range(args.posts):
                if args.rate > 0:
                    wait = t0 + i / args.rate - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                post(node, i)
            wall = time.perf_counter() - t0
            if callgrind is not None:
                node.callgrind(False)
            main1, all1 = task_cpu(pid).get(pid, 0.0), process_cpu(pid)
        finally:
            node.close()
    n = args.posts
    return {
        "cpu_ms": (all1 - all0) * 1000 / n,
        "main_cpu_ms": (main1 - main0) * 1000 / n,
        "wall_ms": wall * 1000 / n,
    }


def callgrind_total(prefix: Path) -> int:
    """Instructions (Ir) summed over the dump files callgrind wrote for ``prefix``."""
    total = 0
    for path in prefix.parent.glob(prefix.name + ".*"):
        found = [
            int(line.split()[1])
            for line in path.read_text(errors="replace").splitlines()
            if line.startswith(("summary:", "totals:"))
        ]
        total += max(found, default=0)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--posts", type=int, default=1000, help="timed POSTs per rep")
    ap.add_argument("--rate", type=float, default=100.0, help="POSTs per second (0: no pacing)")
    ap.add_argument("--reps", type=int, default=3, help="fresh nodes, one after the other")
    ap.add_argument("--profile", type=Path, help="cProfile the node (main thread CPU) into this")
    ap.add_argument("--callgrind", type=Path, help="run the node under callgrind: OUT.<pid>")
    ap.add_argument("--top", type=int, default=40, help="functions shown with --profile")
    args = ap.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}", flush=True)
    rows = []
    for i in range(args.reps):
        got = rep(args, args.profile if i == 0 else None, args.callgrind if i == 0 else None)
        rows.append(got)
        print(
            f"rep {i}: node CPU {got['cpu_ms']:.3f} ms/POST (main thread {got['main_cpu_ms']:.3f}),"
            f" wall {got['wall_ms']:.3f} ms/POST",
            flush=True,
        )
    if len(rows) > 1:
        print(
            "median: node CPU {:.3f} ms/POST, main thread {:.3f}, wall {:.3f}".format(
                *(
                    statistics.median(r[k] for r in rows)
                    for k in ("cpu_ms", "main_cpu_ms", "wall_ms")
                )
            )
        )
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    if args.callgrind is not None:
        total = callgrind_total(args.callgrind)
        print(f"callgrind: {total / args.posts / 1e3:,.0f}k instructions per POST (rep 0)")
    if args.profile is not None:
        stats = pstats.Stats(str(args.profile))
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
