"""bench/documents.py keeps working and reports every figure (speed is never asserted here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import run_python

ROOT = Path(__file__).resolve().parents[2]

FIGURES = [
    "single_update_p50",
    "single_update_p99",
    "update_many",
    "create_many",
    "raw_create",
    "update_many_share",
    "raw_create_cores",
    "update_many_share_cores",
    "materialize_s",
    "materialize_rate",
    "reopen_ms",
    *(
        f"{q}_{i}"
        for q in ("q_eq", "q_range", "q_eq_unique", "q_range_wide")
        for i in ("noindex", "indexed")
    ),
    "create_index",
    "query_build",
    "import_http",
    "post_loop_http",
]
TARGETED = {
    "single_update_p50",
    "single_update_p99",
    "update_many",
    "q_eq_indexed",
    "q_range_indexed",
    "import_http",
}


@pytest.mark.integration
def test_documents_bench_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "documents.json"
    run = run_python(str(ROOT / "bench/documents.py"), "--quick", "--profile", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "update(), one at a time: p50" in run.stdout
    assert "SQLite plans" in run.stdout

    data = json.loads(out.read_text())
    rows = {r["id"]: r for r in data["results"]}
    assert set(FIGURES) <= set(rows)
    for rid in FIGURES:
        r = rows[rid]
        assert r["min"] <= r["median"] <= r["max"], r
        assert r["min"] > 0, r
        assert r["values"], r
    for rid in TARGETED:
        assert rows[rid]["target"] is not None
        assert isinstance(rows[rid]["pass"], bool)
    assert data["meta"]["args"]["quick"] is True
    for plan in data["plans"].values():
        assert plan["no_index"].startswith(("SEARCH", "SCAN"))
        assert plan["indexed"].startswith(("SEARCH", "SCAN"))
    assert data["profile"]["cprofile_batched"]["top_own"]
    route = data["profile_import"]
    assert route["create_many_us_per_doc"] < route["us_per_doc"] and route["top_own"]
    assert data["materialize_entries"] == data["meta"]["args"]["write_docs"]
