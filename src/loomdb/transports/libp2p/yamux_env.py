"""Yamux's ``PY_YAMUX_*`` tuning variables read once, not on every frame.

py-libp2p 0.8.1's Yamux reads its perf-harness knobs (``PY_YAMUX_DEBUG``,
``PY_YAMUX_BATCH_THRESHOLD_DIV``, ``PY_YAMUX_DATA_READ_TIMEOUT``, ...) from
``os.environ`` at call time, "so a perf harness can change them": several
``os.getenv`` calls per frame read and per stream read (the window-credit
threshold alone reads two), ~2 % of a subscriber's CPU. A node never changes
them while it runs.

:func:`read_yamux_env_once` replaces the module's two accessors by lookups in a
snapshot of the ``PY_YAMUX_*`` variables taken when it is called (at host start);
calling it again takes a new snapshot. The values mean what they meant.
"""

from __future__ import annotations

import os

from libp2p.stream_muxer.yamux import yamux as _yamux_module

PREFIX = "PY_YAMUX_"
_original_env = _yamux_module._py_yamux_env
_original_env_set = _yamux_module._py_yamux_env_set
_snapshot: dict[str, str] = {}


def _env(name: str, default: str = "") -> str:
    return _snapshot.get(name, default)


def _env_set(name: str) -> bool:
    return name in _snapshot


def read_yamux_env_once() -> None:
    """Snapshot ``PY_YAMUX_*`` and make Yamux read the snapshot (see the module doc)."""
    fresh = {k[len(PREFIX) :]: v for k, v in os.environ.items() if k.startswith(PREFIX)}
    _snapshot.clear()
    _snapshot.update(fresh)
    _yamux_module._py_yamux_env = _env
    _yamux_module._py_yamux_env_set = _env_set


def read_yamux_env_each_time() -> None:
    """py-libp2p's accessors back."""
    _yamux_module._py_yamux_env = _original_env
    _yamux_module._py_yamux_env_set = _original_env_set
