"""Seed data for the status page, badge and browser tests: real probes, a real refresh.

:func:`seed_status` writes probes into the test's database, adds closed
incidents and past days of uptime, and runs an :class:`Aggregator` with an
SLO twice (the second refresh adds today's uptime), so the page has every
kind of content: an open incident, closed ones (one in maintenance), each
uptime level, an unknown-dominated day, a day with no data, a model id that
needs escaping, and a model without measurements.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta

import asyncpg
from aiohttp import web
from factories import outcome, probe_result

from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.refresh import Aggregator
from routewatch.config import SLOConfig
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import write_batch

ROUTER = "sim"
NANO = "openai/gpt-4.1-nano"
BROKEN = "t/broken"
# A valid model id (no spaces) that would inject an element if it were not escaped.
EVIL = "evil/<script>alert(1)</script>&co"
MODELS = (EVIL, NANO, BROKEN)  # as the status lists them: by id
CONFIGURED = [(ROUTER, NANO), (ROUTER, BROKEN), (ROUTER, EVIL)]
WINDOWS = {"1h": 3600.0, "7d": 7 * 86400.0}
INTERVAL = 60.0  # probe schedule interval, seconds
REFRESH_S = 10.0
# min_samples above the probes written: only the down/up hysteresis decides.
SLO = SLOConfig(window=900, down_after=3, up_after=2, min_samples=50)
PRICES = {(ROUTER, NANO): 0.1}
NANO_TTFT_MS, NANO_TPS = 400.0, 80.0

# Past days of uptime, (days ago) -> (operational_s, degraded_s, down_s, unknown_s), and the level each draws.
PAST_DAYS: dict[int, tuple[float, float, float, float]] = {
    1: (86400, 0, 0, 0),  # up
    2: (86000, 400, 0, 0),  # 99.54%: minor
    3: (16400, 0, 0, 70000),  # 81% unknown: drawn unknown although all known time was up
    4: (80000, 0, 6400, 0),  # 92.6%: major
    5: (83000, 3400, 0, 0),  # 96.1%: partial
    # 6 days ago: no row at all, drawn unknown ("no data")
}
PAST_LEVELS = {1: "up", 2: "minor", 3: "unknown", 4: "major", 5: "partial", 6: "unknown"}
OPEN_ID, CLOSED_ID, MAINTENANCE_ID = 3, 1, 2


def _probe(model: str, ok: bool, started_at: datetime) -> ProbeResult:
    ttft = NANO_TTFT_MS if model == NANO else 250.0
    return probe_result(
        started_at=started_at,
        region="r",
        router=ROUTER,
        model=model,
        input_tokens=12,
        **outcome(ok, ttft_ms=ttft, output_tps=NANO_TPS, output_tokens=40),
    )


def _round(models: tuple[str, ...], at: datetime) -> list[ProbeResult]:
    return [_probe(m, m != BROKEN, at) for m in models]


async def seed_status(
    pool: asyncpg.Pool, before_refresh: Callable[[asyncpg.Connection], Awaitable[None]] | None = None
) -> Aggregator:
    """Seed the database behind ``pool`` and return a refreshed aggregator (status enabled).

    ``before_refresh`` writes more on the seeding connection before the first refresh.
    """
    now = datetime.now(UTC)
    today = now.date()
    async with pool.acquire() as conn:
        await ensure_schema(conn)
        probes = [p for s in (50, 40, 30) for p in _round(MODELS, now - timedelta(seconds=s))]
        await write_batch(conn, probes)
        await _seed_history(conn, now, today)
        if before_refresh is not None:
            await before_refresh(conn)
    aggregator = Aggregator(pool, WINDOWS, CONFIGURED, REFRESH_S, slo=SLO, probe_interval_s=INTERVAL)
    await aggregator.refresh()
    async with pool.acquire() as conn:
        await write_batch(conn, _round(MODELS, datetime.now(UTC)))
    await aggregator.refresh()  # adds the time since the first evaluation to today's uptime
    return aggregator


async def _seed_history(conn: asyncpg.Connection, now: datetime, today: date) -> None:
    await conn.executemany(
        "INSERT INTO uptime_daily (model, day, operational_s, degraded_s, down_s, unknown_s)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [(m, today - timedelta(days=ago), *secs) for m in MODELS for ago, secs in PAST_DAYS.items()],
    )
    # Two closed incidents before the refresh: the open one the refresh opens gets the next id.
    insert = (
        'INSERT INTO incidents (id, start, "end", worst_state, models, suppressed, updated_at)'
        " VALUES ($1, $2, $3, $4, $5, $6, $3)"
    )
    two_days, five_days = now - timedelta(days=2), now - timedelta(days=5)
    await conn.execute(insert, CLOSED_ID, two_days, two_days + timedelta(minutes=45), "degraded", [BROKEN, EVIL], False)
    await conn.execute(insert, MAINTENANCE_ID, five_days, five_days + timedelta(hours=1), "down", [NANO], True)


def status_app(aggregator: Aggregator) -> web.Application:
    """The API app with the public status routes, as the service will build it."""
    return create_app(aggregator, prices=PRICES)
