"""Run a command under ``valgrind --tool=callgrind`` and read its instruction total
(shared by the ``*_instructions.py`` benchmarks)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def instructions(argv: Sequence[str], out: Path, env: Mapping[str, str] | None = None) -> int:
    """Instructions (every thread) of ``argv`` run under callgrind, its file at ``out``."""
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    found = re.search(r"^summary:\s*(\d+)", out.read_text(), re.MULTILINE)
    if found is None:
        raise SystemExit(f"no summary in {out}")
    return int(found.group(1))
