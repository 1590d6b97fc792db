"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import run_python

ROOT = Path(__file__).resolve().parents[2]


def _blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_documents_example_runs(tmp_path: Path) -> None:
    script = tmp_path / "documents.py"
    script.write_text(_blocks()[0])
    run = run_python(str(script), cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "'title': 'hello, world'" in run.stdout and "'views': 1" in run.stdout
    assert "My first draft" in run.stdout
    assert (tmp_path / "my-home" / "views.db").exists()


def test_readme_entries_example_runs(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_blocks()[1])
    run = run_python(str(script), cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "no key 'notes@1'" in run.stdout
    assert (tmp_path / "example.db").exists()


def test_readme_quick_start_scripts_exist() -> None:
    text = (ROOT / "README.md").read_text()
    for script in ("scripts/start", "scripts/demo", "scripts/test"):
        assert script in text
        assert (ROOT / script).stat().st_mode & 0o111
    assert "scripts/test" in (ROOT / ".ci/run").read_text()
