"""The benchmark scripts keep working (speed is reported by them, never asserted here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import run_python

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_entries_bench_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "entries.json"
    run = run_python(str(ROOT / "bench/entries.py"), "--quick", "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert "create: build_entry + put_entries" in run.stdout
    assert "receive: put_entries(raw bytes), new" in run.stdout
    assert '"results"' in out.read_text()
