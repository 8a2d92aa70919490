"""Keeping the embedded PostgreSQL alive while routewatch runs.

The postmaster can die under routewatch (``kill -9``, the OOM killer, a
crash). Nothing is lost meanwhile: results go to the spool and are replayed,
the pool reconnects by itself. But without a watch nothing brings the server
back. :func:`watch_postgres` notices the death within a poll interval, logs
how it ended and the tail of its log, and restarts it with exponential
backoff; after :class:`RestartPolicy`'s number of tries within its window it
gives up by raising, which the process supervisor turns into a non-zero exit.

Restarts run on the event loop, which ``routewatch run`` drives from the main
thread, so the new postmaster's parent-death signal is tied to the main
thread like the first one's (``LocalPostgres.start``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from routewatch.postgres.local_server import LocalPostgres, LocalPostgresError

log = logging.getLogger("routewatch")

POLL_S = 0.5


class PostgresGaveUp(LocalPostgresError):
    """The embedded PostgreSQL kept dying or failing to start; routewatch stops trying."""


@dataclass(frozen=True)
class RestartPolicy:
    """At most ``max_tries`` restarts within ``window_s``; waits double from ``first_delay_s``."""

    max_tries: int = 5
    window_s: float = 600.0
    first_delay_s: float = 1.0
    max_delay_s: float = 60.0

    def delay(self, tries: Sequence[float], now: float) -> float | None:
        """Seconds to wait before the next restart, given the times of earlier ones; None: give up.

        Only tries within the last ``window_s`` count, so a server that
        dies once a day is restarted every time, while one that crashes in a
        loop is given up on.
        """
        recent = sum(1 for t in tries if now - t < self.window_s)
        if recent >= self.max_tries:
            return None
        return min(self.max_delay_s, self.first_delay_s * 2.0**recent)


async def watch_postgres(server: LocalPostgres, policy: RestartPolicy | None = None, poll_s: float = POLL_S) -> None:
    """Restart ``server`` whenever its postmaster dies; runs until cancelled.

    :raises PostgresGaveUp: the policy's tries are used up; the message says
        how the server ended and why the last restart failed.
    """
    policy = policy or RestartPolicy()
    tries: list[float] = []
    while True:
        await asyncio.sleep(poll_s)
        if server.pid is None:
            await _bring_back(server, policy, tries)


async def _bring_back(server: LocalPostgres, policy: RestartPolicy, tries: list[float]) -> None:
    ended = server.exit_description()
    log.error("the embedded PostgreSQL %s. Its log ends with:\n%s", ended, server.log_tail())
    last_error = ""
    while True:
        delay = policy.delay(tries, time.monotonic())
        if delay is None:
            raise PostgresGaveUp(
                f"the embedded PostgreSQL {ended} and could not be restarted: {len(tries)} tries within"
                f" {policy.window_s:g}s failed or died again. Last error: {_gist(last_error) or ended}."
                f" Server log: {server.log_path}"
            )
        log.warning(
            "restarting the embedded PostgreSQL in %gs (try %d of %d within %gs)",
            delay,
            len(tries) + 1,
            policy.max_tries,
            policy.window_s,
        )
        await asyncio.sleep(delay)
        tries.append(time.monotonic())
        try:
            await server.restart()
        except (LocalPostgresError, OSError) as exc:  # OSError: e.g. the binaries are gone
            last_error = str(exc)
            log.error("restarting the embedded PostgreSQL failed: %s", exc)
            continue
        log.warning(
            "the embedded PostgreSQL is running again (pid %s, port %s) after it %s", server.pid, server.port, ended
        )
        return


def _gist(error: str) -> str:
    """The line of a start-up error that says why: the server's FATAL or PANIC line, else the first."""
    lines = error.splitlines()
    for line in lines:
        for level in ("FATAL:", "PANIC:"):
            if level in line:
                return level + " " + line.split(level, 1)[1].strip()
    return lines[0] if lines else ""
