"""A spawned task's parent found by lookup, not by walking every task.

py-libp2p's services (pubsub, gossipsub, the host's) spawn tasks with
``TrioManager.run_task``, which files each new task under the task that spawned
it: ``_find_parent_task`` walks the manager's whole task tree
(``FunctionTask.iterate_tasks``, recursive generators) until it meets the
``FunctionTask`` running in the current trio task. Pubsub spawns one task per
received message (``push_msg``) from its stream readers, which are not tasks of
its manager, so every message walked the whole tree and found nothing: measured,
~4 % of a subscriber's CPU, growing with the number of tasks alive.

:func:`index_task_parents` keeps, for each trio task, the ``FunctionTask`` it is
running (set when the task starts, dropped when it ends) and answers from that:
the task found is the same one, provided it belongs to this manager — its chain
of parents ends in one of the manager's root tasks, as a task reached by the walk
does. A task of another manager (a child service's) or none gives ``None`` (a new
root task), as before.
"""

from __future__ import annotations

from typing import Any

import trio
from libp2p.tools.anyio_service.trio_manager import TrioManager
from libp2p.tools.anyio_service.trio_tasks import FunctionTask

_running: dict[trio.lowlevel.Task, FunctionTask] = {}
"""The FunctionTask each trio task is running (a trio task runs one at a time)."""
_original_find = TrioManager._find_parent_task
_original_run = FunctionTask.run
MAX_DEPTH = 1000
"""Parents followed at most (a cycle would be a bug: then the walk decides)."""


async def _run_indexed(self: FunctionTask) -> None:
    trio_task = trio.lowlevel.current_task()
    _running[trio_task] = self
    try:
        await _original_run(self)
    finally:
        if _running.get(trio_task) is self:
            del _running[trio_task]


def _find_indexed(self: TrioManager, trio_task: trio.lowlevel.Task) -> Any:
    task = _running.get(trio_task)
    if task is None:
        return None
    node: Any = task
    for _ in range(MAX_DEPTH):
        if node.parent is None:
            return task if node in self._root_tasks else None
        node = node.parent
    return _original_find(self, trio_task)


def index_task_parents() -> None:
    """Patch :class:`TrioManager` and :class:`FunctionTask` (idempotent)."""
    FunctionTask.run = _run_indexed  # type: ignore[method-assign]
    TrioManager._find_parent_task = _find_indexed  # type: ignore[method-assign]


def walk_task_tree() -> None:
    """py-libp2p's walk back (for measuring the difference)."""
    FunctionTask.run = _original_run  # type: ignore[method-assign]
    TrioManager._find_parent_task = _original_find  # type: ignore[method-assign]
