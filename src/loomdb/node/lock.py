"""One process at a time on a node home: an exclusive ``flock`` on ``<home>/lock``.

``loomdb start`` holds it for the daemon's life and ``loomdb demo`` while it
writes the store, so two processes never write one store and one views file
(each would apply entries the other does not know it stored). The kernel drops
a flock when its file is closed, also when the process dies (``kill -9``, a
crash): there is no stale lock to clean up. The holder writes its pid and
command in the file, so a refusal can say who holds the home.

Reads that do not write (``loomdb id``) take no lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from loomdb.errors import HomeInUseError, ValidationError

LOCK_FILE = "lock"


class HomeLock:
    """``with HomeLock(home, "loomdb start"): …`` — held until the block ends (or the
    process does); :class:`HomeInUseError` at once if another process holds it."""

    def __init__(self, home: str | os.PathLike[str], holder: str) -> None:
        self.home = Path(home)
        self.holder = holder
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.home / LOCK_FILE

    def acquire(self) -> None:
        if self.home.exists() and not self.home.is_dir():
            raise ValidationError(f"{self.home} exists and is not a directory")
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ValidationError(f"cannot lock node home {self.home}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise HomeInUseError(
                f"node home {self.home} is in use by {who}: one process at a time "
                "(stop it, or give another --home)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.holder} (pid {os.getpid()})\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # the holder line is stale once the lock is free
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> HomeLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
