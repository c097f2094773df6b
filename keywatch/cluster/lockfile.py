"""One instance per SQLite database: an exclusive lock on a file beside it, held while the daemon runs."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AlreadyRunning(RuntimeError):
    pass


class InstanceLock:
    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
            raise AlreadyRunning(
                f"another keywatch (pid {holder}) runs on this SQLite database ({self.path} is locked); SQLite "
                "serves one instance: stop the other one, or run several instances on PostgreSQL "
                '(daemon.database = "postgresql+psycopg://...", see docs/cluster.md)'
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
