"""kill -9 of a process writing documents: every update it saw committed is there
after, and the documents (open from snapshots or replayed) take more updates."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loomdb.documents import Database
from tests.doc_support import make_home

pytestmark = [pytest.mark.anyio, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
DOCS = 8


async def test_kill_9_during_updates_loses_no_committed_update(tmp_path: Path) -> None:
    home = tmp_path / "node"
    rng = random.Random(11)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    seen: dict[int, tuple[int, int]] = {}  # doc -> (run, n) of its last committed update
    for run in range(3):
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/integration/doc_crash_writer.py"), str(home),
             str(run), "100000"],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        try:
            for _ in range(rng.randint(30, 60)):  # let some updates commit
                line = proc.stdout.readline()
                assert line, "writer exited early"
                doc, got_run, n = map(int, line.split())
                seen[doc] = (got_run, n)
                assert time.monotonic() < deadline
            time.sleep(rng.uniform(0.0, 0.05))  # then kill at a random point
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL

        db = await Database.open(make_home(home), cache_size=3)
        try:
            items = db.collection("items")
            for doc, (got_run, n) in seen.items():
                value = (await items.get(f"d{doc}")).value
                # The last update it printed, or one it committed after that.
                assert (value["run"], value["n"]) >= (got_run, n), (doc, value)
            for k in range(DOCS):  # each opens (snapshot or replay) and takes an update
                before = len(await items.history(f"d{k}"))
                after = await items.update(f"d{k}", {"checked": run})
                assert after.value["checked"] == run
                assert len(await items.history(f"d{k}")) == before + 1
        finally:
            await db.aclose()
