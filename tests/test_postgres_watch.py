"""Restarting the embedded PostgreSQL: the backoff policy, and giving up on a real server that cannot start.

The restart that works is tested end to end in tests/test_cli_run.py
(``routewatch run``, ``kill -9`` of its postmaster).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from routewatch.postgres.local_server import LocalPostgres
from routewatch.postgres.watch import PostgresGaveUp, RestartPolicy, watch_postgres


@pytest.mark.unit
def test_backoff_doubles_then_gives_up_within_the_window() -> None:
    policy = RestartPolicy(max_tries=5, window_s=600, first_delay_s=1, max_delay_s=60)
    tries: list[float] = []
    now = 1000.0
    delays = []
    while (delay := policy.delay(tries, now)) is not None:
        delays.append(delay)
        now += delay
        tries.append(now)
        now += 3  # the try takes a while, then fails
    assert delays == [1, 2, 4, 8, 16]


@pytest.mark.unit
def test_old_tries_are_forgotten_and_delays_are_capped() -> None:
    policy = RestartPolicy(max_tries=3, window_s=600, first_delay_s=10, max_delay_s=25)
    assert policy.delay([0.0, 1.0, 2.0], now=100.0) is None  # three tries in the last 10 minutes
    assert policy.delay([0.0, 1.0, 2.0], now=700.0) == 10  # all older than the window
    assert policy.delay([650.0, 660.0], now=700.0) == 25  # 10 * 2**2 = 40, capped


@pytest.fixture
def workdir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="routewatch-watch-", dir="/tmp"))
    base.chmod(0o711)  # the server user must traverse it when the tests run as root
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.system
@pytest.mark.timeout(60)
async def test_a_server_that_cannot_come_back_is_given_up(workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """kill -9, then a data directory the server refuses: every restart fails, the watch raises."""
    server = LocalPostgres(workdir / "data")
    server.start()  # from the main thread, where pytest-asyncio runs this test's loop too
    try:
        pid = server.pid
        assert pid is not None
        # A data directory from another major version: postgres refuses to start on it.
        (server.pgdata / "PG_VERSION").write_text("9\n")
        os.kill(pid, signal.SIGKILL)
        policy = RestartPolicy(max_tries=3, window_s=60, first_delay_s=0.05)
        with caplog.at_level(logging.INFO, logger="routewatch"), pytest.raises(PostgresGaveUp) as gave_up:
            await asyncio.wait_for(watch_postgres(server, policy, poll_s=0.05), 45)
    finally:
        server.stop()
    message = str(gave_up.value)
    assert message == (
        "the embedded PostgreSQL was killed by signal 9 (SIGKILL) and could not be restarted: 3 tries within 60s"
        " failed or died again. Last error: FATAL: database files are incompatible with server."
        f" Server log: {server.log_path}"
    )
    logged = [r.getMessage() for r in caplog.records]
    assert [m for m in logged if m.startswith("restarting the embedded PostgreSQL in")] == [
        "restarting the embedded PostgreSQL in 0.05s (try 1 of 3 within 60s)",
        "restarting the embedded PostgreSQL in 0.1s (try 2 of 3 within 60s)",
        "restarting the embedded PostgreSQL in 0.2s (try 3 of 3 within 60s)",
    ]
    assert sum(m.startswith("restarting the embedded PostgreSQL failed:") for m in logged) == 3
    assert server.pid is None
