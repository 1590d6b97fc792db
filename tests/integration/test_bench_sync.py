"""bench/sync.py keeps working and reports every figure (speed is never asserted here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import run_python

ROOT = Path(__file__).resolve().parents[2]

NODE_FIGURES = [
    "initial_s",
    "initial_rate",
    "initial_mb",
    "initial_requests",
    "initial_rounds",
    "initial_reconcile_s",
    "initial_transfer_s",
    "first_resync_ms",
    "idle_ms",
    "idle_requests",
    "idle_fresh_ms",
    "add_ms",
    "add_requests",
    "add_rounds",
    "add_kb",
    "wire_recon_ms",
    "wire_recon_rounds",
    "wire_recon_kb",
]
RECONCILE_FIGURES = [
    f"{kind}_recon_{what}" for kind in ("sqlite", "memory") for what in ("ms", "rounds", "kb")
]


@pytest.mark.integration
def test_sync_bench_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "sync.json"
    cache = tmp_path / "cache"
    args = ["--quick", "--sizes", "300", "--recon-sizes", "500", "--idle-runs", "3"]
    run = run_python(
        str(ROOT / "bench/sync.py"), *args, "--cache-dir", str(cache), "--out", str(out)
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    assert "figures against their targets" in run.stdout
    assert "initial sync into an empty store" in run.stdout

    data = json.loads(out.read_text())
    assert data["meta"]["args"]["quick"] is True
    rows = {(r["id"], r["size"]): r for r in data["results"]}
    assert {(f, 300) for f in NODE_FIGURES} <= set(rows)
    assert {(f, 500) for f in RECONCILE_FIGURES} <= set(rows)
    for r in rows.values():
        assert r["min"] <= r["median"] <= r["max"], r
        assert r["values"], r
    # what the bench checks itself: every entry pulled, an idle re-sync is one round trip
    assert rows["initial_rate", 300]["min"] > 0
    assert rows["idle_requests", 300]["max"] == 1
    assert rows["sqlite_recon_rounds", 500]["median"] >= 1
    assert (cache / "entries-300.sqlite").exists()
    assert (cache / ".gitignore").read_text() == "*\n"

    # a second run reuses the cached entries instead of generating them again
    again = run_python(str(ROOT / "bench/sync.py"), *args, "--cache-dir", str(cache))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert "generating" not in again.stdout
