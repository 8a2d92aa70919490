"""The test tiers: every test carries exactly one of ``unit``, ``db`` and ``system``.

- ``unit``: pure and in process. No database, no sockets, no child processes, no
  waiting on the real clock; files written only under pytest's ``tmp_path``.
- ``db``: uses the test PostgreSQL; everything else stays in the test's process
  (loopback HTTP to an app or simulator the test itself serves, at most).
- ``system``: child processes (``routewatch run``, the embedded server, a
  browser), the real scheduler, or network I/O that needs no database.

A test that does both kinds of I/O is ``system`` when it starts processes or
the scheduler, ``db`` otherwise. The markers are registered in ``pyproject.toml``;
``tests/conftest.py`` runs :func:`tier_problems` over every collected test, so a
test cannot be forgotten, and holds each test to its tier with :func:`guard_tier`.
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
from apscheduler.schedulers.base import BaseScheduler

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
            problems.append(
                f"{item.nodeid}: marked db but never reaches the database (pg_server); mark it unit or system"
            )
    return problems


class TierViolation(RuntimeError):
    """A test tried something its tier does not allow."""


def guard_tier(tier: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse what ``tier`` may not do, until ``monkeypatch`` is undone; return the attempts.

    ``unit``: sockets, name lookups, child processes, the scheduler, real-clock
    waits. ``db``: child processes and the scheduler. ``system``: nothing.
    The list fills as attempts happen, so that code swallowing the exception (a
    probe classifying it as a connect error, say) cannot hide them.
    """
    attempts: list[str] = []
    if tier == "system":
        return attempts
    higher = "db or system" if tier == "unit" else "system"

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            attempts.append(what)
            raise TierViolation(f"a {tier} test may not {what}: mark it {higher}")

        return refused

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse("start a child process"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        monkeypatch.setattr(os, name, refuse(f"call os.{name}"))
    monkeypatch.setattr(BaseScheduler, "start", refuse("start the real scheduler"))
    if tier == "unit":
        _refuse_sockets_and_waits(monkeypatch, refuse)
    return attempts


def _refuse_sockets_and_waits(monkeypatch: pytest.MonkeyPatch, refuse: Callable[[str], Callable[..., Any]]) -> None:
    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse(f"{name} a socket"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("resolve a host name"))
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
