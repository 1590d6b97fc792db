"""Where the running node's libp2p host listens, for those outside its process.

``<home>/p2p.json`` holds ``{"pid", "addrs"}`` while the node runs (written once it
listens, removed when it stops), so ``loomdb id`` and ``GET /api/v0/node`` show the
multiaddrs it really listens on — with port 0, the port chosen. A record whose
process is gone (``kill -9``) is ignored. Nothing here imports libp2p.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from loomdb.files import atomic_write

ADDRS_FILE: Final = "p2p.json"


def record_addrs(home: Path, addrs: Sequence[str]) -> Callable[[], None]:
    """Write :data:`ADDRS_FILE` for this process; returns what removes it."""
    path = home / ADDRS_FILE
    atomic_write(path, json.dumps({"pid": os.getpid(), "addrs": list(addrs)}).encode())

    def remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    return remove


def running_addrs(home: Path) -> list[str]:
    """The multiaddrs the node running on ``home`` listens on; [] when none runs (or
    it runs without libp2p, or died without removing its record)."""
    try:
        record = json.loads((home / ADDRS_FILE).read_text(encoding="utf-8"))
        pid, addrs = record["pid"], record["addrs"]
    except (OSError, ValueError, TypeError, KeyError):
        return []
    if not isinstance(pid, int) or not isinstance(addrs, list) or pid <= 0:
        return []
    if pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass  # alive, someone else's
    return [str(a) for a in addrs]
