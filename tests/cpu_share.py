"""Share the machine between pytest-xdist workers: a test marked ``alone`` runs while no other test does.

Such tests measure time against tight bounds (loop lag, token gaps, latencies to the
millisecond) and fail when another worker takes the CPU. Every other test holds a shared
lock while it runs (setup to teardown), an ``alone`` test an exclusive one; a turnstile
taken first lets a waiting ``alone`` test in before any new shared holder, so it cannot
starve. The locks are files in one directory per run, made by the controller and named to
the workers in an environment variable (workers inherit the controller's environment).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = "alone"
MARKER_HELP = f"{MARKER}: measures time against tight bounds, so under pytest-xdist it runs while no other test runs"
LOCK_DIR_ENV = "ROUTEWATCH_TEST_CPU_LOCKS"


@contextmanager
def holding(lock_dir: Path, alone: bool) -> Iterator[None]:
    """Hold the machine for one test: exclusively if ``alone``, else shared with other tests."""
    with open(lock_dir / "turnstile", "a+b") as turnstile, open(lock_dir / "room", "a+b") as room:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if not alone:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        yield  # closing the files releases both locks
