#!/usr/bin/env python3
"""Trust benchmark: what membership checks, directories, grants and tokens cost.

    python bench/trust.py [--entries 20000] [--users 1000] [--reps 3] [--out PATH]

Figures (in process, on this machine; no network unless said):

* guarded put: N signed, encrypted entries of a managed space by members, put into a
  fresh SQLiteStore with and without the guard (the guard decodes and checks each
  entry, then hands the verified entry to the store); entries/s and the overhead;
* directory fold: a directory with U users (a ``user`` and a ``role`` entry each)
  folded from scratch — what a node pays when a directory entry arrives;
* grant: HPKE wrap and unwrap of one key (µs each), and a rotation for U readers;
* authentication: challenge + token issue, and one token verify, in process; and the
  full challenge-response over HTTP against a real node (``loomdb start``) on 127.0.0.1.

Writes ``bench/results/trust.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx

from loomdb.clock import HybridLogicalClock, SystemClock
from loomdb.entries.entry import build_entry
from loomdb.identity.keys import NamedKey
from loomdb.identity.user import UserIdentity
from loomdb.node.home import NodeHome
from loomdb.stores.memory import MemoryStore
from loomdb.stores.sqlite import SQLiteStore
from loomdb.transports.auth import ChallengeLogin
from loomdb.trust.admin import NodeTrust
from loomdb.trust.auth import AuthService, answer_challenge
from loomdb.trust.book import DirectoryBook
from loomdb.trust.directory import UserRecord, fold
from loomdb.trust.grants import unwrap_key, wrap_key
from loomdb.trust.guard import GuardedStore
from loomdb.trust.spaces import parse_space_id

ROOT = Path(__file__).resolve().parent


def timed(fn: Callable[[], Any], reps: int) -> float:
    best = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best.append(time.perf_counter() - start)
    return min(best)


async def setup(tmp: Path, users: int) -> tuple[NodeTrust, str, list[UserIdentity]]:
    home = NodeHome.open(tmp / "admin")
    book = DirectoryBook()
    trust = NodeTrust(home, GuardedStore(MemoryStore(), book), book)
    space = (await trust.create_space("bench"))["space"]
    members = [UserIdentity.generate() for _ in range(users)]
    for user in members:
        card_record = UserRecord(user.user_id, user.x25519_public_key)
        from loomdb.trust.admin import encode_card

        await trust.add_user(space, encode_card(card_record), ["write"])
    return trust, space, members


async def guarded_put(tmp: Path, trust: NodeTrust, space: str, writers: list[UserIdentity],
                      n: int, reps: int) -> dict[str, Any]:  # fmt: skip
    hlc = HybridLogicalClock(SystemClock())
    key = NamedKey.generate("bench@1")
    entries = [
        build_entry(
            author=writers[i % len(writers)].signing_key,
            space=space,
            collection="notes",
            document=f"d{i}",
            kind="create",
            payload=os.urandom(200),
            created_at=hlc.now(),
            key=key,
        ).raw
        for i in range(n)
    ]
    directory = trust.book.entries(space)
    out: dict[str, list[float]] = {"plain": [], "guarded": []}
    for rep in range(reps):
        for kind in ("plain", "guarded"):
            path = tmp / f"{kind}-{rep}.db"
            inner = SQLiteStore(path)
            book = DirectoryBook()
            store: Any = inner
            if kind == "guarded":
                store = GuardedStore(inner, book)
                await store.put_entries(directory)
            start = time.perf_counter()
            for i in range(0, n, 1000):
                results = await store.put_entries(entries[i : i + 1000])
                assert all(r.ok for r in results), results[0]
            out[kind].append(time.perf_counter() - start)
            await inner.aclose()
    plain, guarded = min(out["plain"]), min(out["guarded"])
    return {
        "entries": n,
        "plain_s": round(plain, 3),
        "guarded_s": round(guarded, 3),
        "plain_per_s": round(n / plain),
        "guarded_per_s": round(n / guarded),
        "overhead_us_per_entry": round((guarded - plain) / n * 1e6, 1),
    }


def grants(users: int, reps: int) -> dict[str, Any]:
    user = UserIdentity.generate()
    key = NamedKey.generate("space.x@1")
    blob = wrap_key(key, "s~x", user.user_id, user.x25519_public_key)
    k = 500
    wrap = timed(lambda: [wrap_key(key, "s~x", user.user_id, user.x25519_public_key)
                          for _ in range(k)], reps) / k  # fmt: skip
    unwrap = timed(lambda: [unwrap_key(blob, "s~x", "space.x@1", user) for _ in range(k)], reps) / k
    return {
        "wrap_us": round(wrap * 1e6, 1),
        "unwrap_us": round(unwrap * 1e6, 1),
        "blob_bytes": len(blob),
        f"rotation_wraps_for_{users}_readers_ms": round(wrap * users * 1e3, 1),
    }


def auth_in_process(reps: int) -> dict[str, Any]:
    home_user = UserIdentity.generate()
    from loomdb.identity.keys import SigningKey

    service = AuthService(SigningKey.generate(), lambda _user: None)
    k = 300

    def login() -> None:
        for _ in range(k):
            challenge = service.challenge()
            service.issue_token(answer_challenge(challenge, home_user))

    token = service.issue_token(answer_challenge(service.challenge(), home_user))["token"]
    issue = timed(login, reps) / k
    verify = timed(lambda: [service.verify(token) for _ in range(k)], reps) / k
    return {"challenge_and_token_us": round(issue * 1e6), "verify_us": round(verify * 1e6, 1)}


def auth_over_http(tmp: Path, reps: int) -> dict[str, Any]:
    """A real node: create a space (its user is the member), then log in over HTTP."""
    home = tmp / "node"
    command = [sys.executable, "-m", "loomdb", "start", "--home", str(home)]
    command += ["--api", "127.0.0.1:0", "--p2p-addr", "/ip4/127.0.0.1/tcp/0"]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        url = line.rsplit("API at ", 1)[1].split()[0]
        httpx.post(f"{url}/api/v0/spaces", json={"name": "bench"}, timeout=30).raise_for_status()
        identity = NodeHome.open(home).user  # the node's own user is the space's root

        async def run() -> list[float]:
            times = []
            for _ in range(reps * 10):
                login = ChallengeLogin(url, identity)
                start = time.perf_counter()
                await login.token()
                times.append(time.perf_counter() - start)
            return times

        times = anyio.run(run)
        return {"login_ms_median": round(statistics.median(times) * 1e3, 2),
                "login_ms_min": round(min(times) * 1e3, 2)}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "trust.json")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "args": vars(args) | {"out": str(args.out)},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        trust, space, members = anyio.run(setup, tmp, args.users)
        results["setup_directory_s"] = round(time.perf_counter() - start, 2)
        entries = trust.book.entries(space)
        managed = parse_space_id(space)
        assert managed is not None
        fold_s = timed(lambda: fold(managed, entries), args.reps)
        results["fold"] = {"directory_entries": len(entries), "users": args.users + 1,
                           "fold_ms": round(fold_s * 1e3, 1)}  # fmt: skip
        results["guarded_put"] = anyio.run(
            guarded_put, tmp, trust, space, members[:50], args.entries, args.reps
        )
        results["grants"] = grants(args.users, args.reps)
        results["auth_in_process"] = auth_in_process(args.reps)
        results["auth_over_http"] = auth_over_http(tmp, args.reps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
