"""Share the machine between pytest-xdist workers: a test marked ``alone`` runs while no other test does.

Such tests measure time against tight bounds (loop lag, token gaps, latencies to the
millisecond) and fail when another worker takes the CPU. Every other test holds a shared
lock while it runs (setup to teardown), an ``alone`` test an exclusive one, kept across a
worker's consecutive ``alone`` tests so that a file of them is not interleaved with the
other worker's tests one by one. A turnstile taken first lets a waiting ``alone`` test in
before any new shared holder, so it cannot starve. The locks are files in one directory
per run, made by the controller and named to the workers in an environment variable
(workers inherit the controller's environment).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

MARKER = "alone"
MARKER_HELP = f"{MARKER}: measures time against tight bounds, so under pytest-xdist it runs while no other test runs"
LOCK_DIR_ENV = "ROUTEWATCH_TEST_CPU_LOCKS"


class CpuShare:
    """One worker's hold on the machine."""

    def __init__(self, lock_dir: Path) -> None:
        self._dir = lock_dir
        self._alone: ExitStack | None = None  # held from an ``alone`` test to the end of its run of them

    @contextmanager
    def test(self, alone: bool, next_alone: bool) -> Iterator[None]:
        """Hold the machine for one test; ``next_alone`` says whether this worker's next test is ``alone``."""
        if not alone:
            with self._shared():
                yield
            return
        if self._alone is None:
            stack = ExitStack()
            stack.enter_context(self._exclusive())
            self._alone = stack
        try:
            yield
        finally:
            if not next_alone:
                self._alone.close()
                self._alone = None

    @contextmanager
    def _shared(self) -> Iterator[None]:
        with self._open("turnstile") as turnstile, self._open("room") as room:
            fcntl.flock(turnstile, fcntl.LOCK_EX)  # waits while an ``alone`` test waits or runs
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            fcntl.flock(room, fcntl.LOCK_SH)
            yield  # closing the file releases the lock

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._open("turnstile") as turnstile, self._open("room") as room:
            fcntl.flock(turnstile, fcntl.LOCK_EX)
            fcntl.flock(room, fcntl.LOCK_EX)
            yield

    def _open(self, name: str) -> IO[bytes]:
        return open(self._dir / name, "a+b")
