"""Advisory locks on files in the data directory, between routewatch processes.

``flock`` locks: the kernel releases them when the holder exits, however it
exits, so a crashed process never leaves a stale lock behind. The holder
writes its pid into the file, for the message the next process prints.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO


class FileLock:
    """An exclusive lock on ``path``; ``acquire`` or ``wait``, then ``release``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def acquire(self) -> bool:
        """Take the lock if it is free; never waits. False when another process holds it."""
        if self._fh is not None:
            return True
        fh = open(self.path, "a+")  # noqa: SIM115 - held open as the lock until release()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return True

    def wait(self, timeout_s: float, poll_s: float = 0.1) -> bool:
        """Take the lock, waiting up to ``timeout_s`` for its holder to let go. False on timeout."""
        deadline = time.monotonic() + timeout_s
        while not self.acquire():
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
        return True

    def holder(self) -> str:
        """The holder's pid as it wrote it, or ``unknown``."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return "unknown"
        return text if text.isdigit() else "unknown"

    def release(self) -> None:
        """Let go (also done by the kernel when this process exits)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
