"""The benchmark scripts keep working (speed is reported by them, never asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_entries_bench_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "entries.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench/entries.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "create: build_entry + put_entries" in run.stdout
    assert "receive: put_entries(raw bytes), new" in run.stdout
    assert '"results"' in out.read_text()
