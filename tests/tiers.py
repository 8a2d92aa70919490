"""The test tiers: every test carries exactly one of ``unit``, ``db`` and ``system``.

- ``unit``: pure and in process. No database, no sockets, no child processes, no
  waiting on the real clock; files written only under pytest's ``tmp_path``.
  :func:`forbid_io` holds unit tests to that while they run.
- ``db``: uses the test PostgreSQL; everything else stays in the test's process
  (loopback HTTP to an app or simulator the test itself serves, at most).
- ``system``: child processes (``routewatch run``, the embedded server, a
  browser), the real scheduler, or network I/O that needs no database.

A test that does both kinds of I/O is ``system`` when it starts processes or
the scheduler, ``db`` otherwise. The markers are registered in ``pyproject.toml``;
:func:`tier_problems` is run by ``tests/conftest.py`` over every collected test,
so a test cannot be forgotten.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

TIERS = ("unit", "db", "system")
# The session fixture every database test reaches through db_dsn, conn, pool, mode...
DATABASE_FIXTURE = "pg_server"
# Longest real-clock sleep a unit test may take: enough for a yield, not for a wait.
MAX_UNIT_SLEEP_S = 0.05


def tier_problems(items: list[pytest.Item]) -> list[str]:
    """Why each test in ``items`` is not in exactly one tier consistent with its fixtures."""
    problems = []
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        uses_database = DATABASE_FIXTURE in getattr(item, "fixturenames", ())
        if len(tiers) != 1:
            found = ", ".join(tiers) or "none"
            problems.append(f"{item.nodeid}: needs exactly one tier marker of {', '.join(TIERS)} (has {found})")
        elif tiers[0] == "unit" and uses_database:
            problems.append(f"{item.nodeid}: marked unit but uses the database; mark it db or system")
        elif tiers[0] == "db" and not uses_database:
            problems.append(f"{item.nodeid}: marked db but never reaches the database (pg_server); mark it unit or system")
    return problems


class UnitTestIO(RuntimeError):
    """A unit test tried to do I/O that belongs to the db or system tier."""


def forbid_io(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make socket use, child processes and real-clock waits raise, until ``monkeypatch`` is undone.

    Returns the list of attempts, filled as they happen, so that code swallowing the
    exception (a probe classifying it as a connect error, say) cannot hide them.
    """
    attempts: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            attempts.append(what)
            raise UnitTestIO(f"a unit test may not {what}: mark it db or system")
        return refused

    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse(f"{name} a socket"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("resolve a host name"))
    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse("start a child process"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        monkeypatch.setattr(os, name, refuse(f"call os.{name}"))

    real_sleep, real_async_sleep = time.sleep, asyncio.sleep

    def short_sleep(seconds: float) -> None:
        if seconds > MAX_UNIT_SLEEP_S:
            refuse(f"sleep {seconds} s on the real clock")()
        real_sleep(seconds)

    async def short_async_sleep(delay: float, result: Any = None) -> Any:
        if delay > MAX_UNIT_SLEEP_S:
            refuse(f"wait {delay} s on the real clock")()
        return await real_async_sleep(delay, result)

    monkeypatch.setattr(time, "sleep", short_sleep)
    monkeypatch.setattr(asyncio, "sleep", short_async_sleep)
    return attempts
