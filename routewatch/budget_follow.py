"""A prober process's view of the budget: the series the aggregator's leader paused today, read every few seconds.

The leader decides (``aggregator/budget.py``); each prober process that
writes to the database reads ``budget_pauses`` and hands the set to its
:class:`~routewatch.probe.scheduler.Prober`, which skips those series' slots.
A failed read keeps the previous set: a database outage neither pauses nor
resumes anything. A prober that pushes its results (no database) is not told.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

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
    while True:
        try:
            paused = await read_paused(pool)
        except DATABASE_ERRORS as exc:
            log.warning("could not read the budget's paused series (%s); keeping the last", exc.__class__.__name__)
        else:
            if paused != prober.paused:
                log.warning(
                    "budget: %d series paused for the rest of the day (UTC), %d resumed",
                    len(paused - prober.paused),
                    len(prober.paused - paused),
                )
                prober.paused = paused
        await asyncio.sleep(every_s)
