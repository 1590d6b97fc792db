"""WAL checkpoints on a thread of their own, so that no commit waits for one.

SQLite in WAL mode copies the log back into the database file (a checkpoint)
when a commit leaves the log over ``wal_autocheckpoint`` pages (1000), inside
that commit: one commit in ~100 small ones then takes several milliseconds
(it syncs the database file), which is where the document layer's p99 latency
came from. A :class:`Checkpointer` turns that off on the connections it is
given and runs passive checkpoints on its own connection and thread instead,
at most every ``interval`` seconds and only after commits
(:meth:`Checkpointer.committed`). The thread waits in SQLite without the GIL.

Durability is unchanged: a committed transaction is in the log, which
recovery replays; a checkpoint only moves it. A passive checkpoint never
blocks writers or readers; it copies what no reader still needs, and the log
is reused from its start once it has all been copied.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Final

log = logging.getLogger("loomdb.stores.checkpoints")

INTERVAL_S: Final = 0.2  # at most five checkpoints a second: the log holds ~0.2 s of writes


class Checkpointer:
    """Passive WAL checkpoints of the SQLite file ``path``, off the writers' threads."""

    def __init__(self, path: Path, *, interval: float = INTERVAL_S) -> None:
        self.path = path
        self.interval = interval
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.checkpoints = 0  # passive checkpoints run (tests read it)

    @staticmethod
    def take_over(conn: sqlite3.Connection) -> None:
        """Stop ``conn``'s commits from checkpointing (the checkpointer does it)."""
        conn.execute("PRAGMA wal_autocheckpoint=0")

    def committed(self) -> None:
        """Say that a transaction was committed (cheap: sets an event)."""
        if self._thread is None:
            self._start()
        self._wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._stopping.is_set():
                return
            thread = threading.Thread(
                target=self._run, name=f"loomdb checkpoints {self.path.name}", daemon=True
            )
            thread.start()
            self._thread = thread

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("%s: no checkpoint thread (%s); the log grows until close", self.path, exc)
            return
        try:
            while not self._stopping.is_set():
                self._wake.wait()
                self._wake.clear()
                if self._stopping.is_set():
                    break
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:  # busy or closing: the next commit tries again
                    log.debug("%s: checkpoint: %s", self.path, exc)
                self._stopping.wait(self.interval)
        finally:
            conn.close()

    def close(self) -> None:
        """Stop the thread (waits for a checkpoint in progress). SQLite checkpoints the
        log when the last connection to the file closes."""
        with self._start_lock:
            self._stopping.set()
            thread, self._thread = self._thread, None
        self._wake.set()
        if thread is not None:
            thread.join()
