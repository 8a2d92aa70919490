"""A prober process's view of the budget: the series the aggregator's leader paused today, read every few seconds.

The leader decides (``routewatch/aggregator/budget.py``); each prober process that
writes to the database reads ``budget_pauses`` and hands the set to its
:class:`~routewatch.probe.scheduler.Prober`, which skips those series' slots.
A failed read keeps the previous set: a database outage neither pauses nor
resumes anything. A prober that pushes its results (no database) learns the
set from the central server's answers to its pushes instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime

import asyncpg

from routewatch.delivery.push import IngestDestination
from routewatch.probe.scheduler import Prober, series_key
from routewatch.storage.cost_queries import db_today, read_pauses
from routewatch.storage.errors import DATABASE_ERRORS

log = logging.getLogger(__name__)

FOLLOW_EVERY_S = 5.0


async def read_paused(pool: asyncpg.Pool) -> frozenset[str]:
    """The keys (``Series.key``) of the series paused today."""
    async with pool.acquire() as conn:
        pauses = await read_pauses(conn, await db_today(conn))
    return frozenset(series_key(p.router, p.model, p.prompt) for p in pauses)


async def follow_pauses(pool: asyncpg.Pool, prober: Prober, every_s: float = FOLLOW_EVERY_S) -> None:
    """Forever: set ``prober.paused`` to today's paused series, logging each change."""
    await _follow(prober, lambda: read_paused(pool), "budget", every_s)


async def _follow(prober: Prober, read: Callable[[], Awaitable[frozenset[str]]], source: str, every_s: float) -> None:
    """Forever, every ``every_s``: hand what ``read`` returns to the prober; a failed read keeps the last set."""
    while True:
        try:
            paused = await read()
        except DATABASE_ERRORS as exc:
            log.warning("could not read the budget's paused series (%s); keeping the last", exc.__class__.__name__)
        else:
            _apply(prober, paused, source)
        await asyncio.sleep(every_s)


def _apply(prober: Prober, paused: frozenset[str], source: str) -> None:
    """Hand ``paused`` to the prober, logging what changed."""
    if paused != prober.paused:
        log.warning(
            "%s: %d series paused for the rest of the day (UTC), %d resumed",
            source,
            len(paused - prober.paused),
            len(prober.paused - paused),
        )
        prober.paused = paused


def pushed_paused(destination: IngestDestination, today: date) -> frozenset[str]:
    """The keys of the series the central server last said are paused, if that was for ``today`` (UTC)."""
    paused = destination.budget_paused
    if paused is None or paused.day != today:
        return frozenset()  # none, or yesterday's: pauses end when the day turns
    return frozenset(series_key(*series) for series in paused.series)


async def follow_pushed_pauses(destination: IngestDestination, prober: Prober, every_s: float = FOLLOW_EVERY_S) -> None:
    """Forever, for a prober that pushes its results: set ``prober.paused`` from the ingest reports.

    The central server answers each pushed batch with today's paused series;
    a prober all of whose series are paused sends nothing more, so the set is
    also dropped here when this machine's UTC day passes the one it was for.
    """

    async def read() -> frozenset[str]:
        return pushed_paused(destination, datetime.now(UTC).date())

    await _follow(prober, read, "budget (from the central server)", every_s)
