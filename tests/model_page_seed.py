"""Seed data for the model page tests: six days of probes through the real writer, and published history.

On top of :func:`status_seed.seed_status` (states, incidents, uptime), NANO
and EVIL get two probes in every UTC hour of the last six days, written by
the project's writer so that the aggregator's rollup computes the hourly
rows the time-of-day profile reads. Their TTFT depends on the hour of day
(:func:`hour_ttft`), their providers and served models on the hour too, and
EVIL's provider and served model are hostile markup. ``stats_history``
rows are written with the aggregator's own ``copy_history``: one per hour
of the last 30 hours (window ``1h``, two in one hour: the later one is
published) and one per day of the last 30 days (window ``7d``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from factories import probe_result
from status_seed import EVIL, NANO, ROUTER, seed_status

from routewatch.aggregator.refresh import Aggregator
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.history_queries import copy_history
from routewatch.storage.housekeeping import ensure_partitions
from routewatch.storage.migrate import recorded_mode
from routewatch.storage.writer import write_batch

SERVED = "openai/gpt-4.1-nano-2025-04-14"
FALLBACK = "openai/gpt-4.1-nano-fallback"
# Router-named values that would inject markup if they were not escaped.
EVIL_PROVIDER = '"><svg onload=alert(1)>'
EVIL_SERVED = "</code><script>alert(2)</script>"
DAYS = 6
HISTORY_HOURS = 30
HISTORY_DAYS = 30
# NANO reasons: its first answer token comes this long after its first (reasoning) token.
REASONING_MS = 250.0


def hour_ttft(hour: int) -> float:
    """The TTFT every seeded probe in that UTC hour of day measured: slower in the afternoon."""
    return 300.0 + 10.0 * hour


@dataclass(frozen=True)
class SeededHistory:
    """What was written to stats_history for NANO: (taken_at, window, ttft_p50, ttft_p95, tps, error_rate)."""

    rows: list[tuple[datetime, str, float, float, float, float]]


def _probe(model: str, at: datetime, i: int) -> ProbeResult:
    hour = at.hour
    provider = "Alpha" if i == 0 or hour >= 6 else "Beta"
    served = SERVED if i == 0 or hour >= 6 else FALLBACK
    if model == EVIL:
        provider, served = EVIL_PROVIDER, EVIL_SERVED
    return probe_result(
        started_at=at,
        region="r",
        router=ROUTER,
        model=model,
        provider=provider,
        model_served=served,
        input_tokens=12,
        ttft_ms=hour_ttft(hour),
        ttfat_ms=hour_ttft(hour) + REASONING_MS,
        output_tokens=40,
        output_tps=80.0,
    )


def _hourly_probes(now: datetime) -> list[ProbeResult]:
    first = (now - timedelta(days=DAYS)).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    out = []
    at = first
    while at < now.replace(minute=0, second=0, microsecond=0):
        for model in (NANO, EVIL):
            out.extend(_probe(model, at + timedelta(minutes=10 + 20 * i), i) for i in range(2))
        at += timedelta(hours=1)
    return out


def _history(now: datetime) -> SeededHistory:
    rows: list[tuple[datetime, str, float, float, float, float]] = []
    hour = now.replace(minute=0, second=0, microsecond=0)
    for k in range(1, HISTORY_HOURS + 1):
        at = hour - timedelta(hours=k) + timedelta(minutes=30)
        rows.append((at, "1h", 400.0 + k, 800.0 + 2 * k, 80.0 - k / 10, 0.001 * (k % 5)))
    # Two snapshots in one hour: the later is what the chart shows for it.
    rows.append((hour - timedelta(hours=3) + timedelta(minutes=5), "1h", 999.0, 1999.0, 1.0, 0.5))
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    for k in range(1, HISTORY_DAYS + 1):
        rows.append((day - timedelta(days=k) + timedelta(hours=12), "7d", 500.0 + k, 900.0 + k, 70.0, 0.002 * k))
    return SeededHistory(rows)


async def seed_model_page(pool: asyncpg.Pool) -> tuple[Aggregator, SeededHistory]:
    """The status seed plus six days of hourly probes and stats_history; a refreshed aggregator."""
    now = datetime.now(UTC)
    history = _history(now)
    aggregator = await seed_status(pool, before_refresh=lambda conn: _seed_more(conn, now, history))
    return aggregator, history


# Probes of NANO whose output budget ran out while it reasoned: not attempts, counted apart.
BUDGET_EXHAUSTED = 3


def _budget_exhausted(now: datetime) -> list[ProbeResult]:
    return [
        probe_result(
            started_at=now - timedelta(minutes=20 + i),
            region="r",
            router=ROUTER,
            model=NANO,
            provider="Alpha",
            model_served=SERVED,
            ok=False,
            error_class="budget_exhausted",
            error_detail="finish_reason length before any answer",
            ttft_ms=hour_ttft(0),
            output_tokens=128,
            reasoning_tokens=128,
        )
        for i in range(BUDGET_EXHAUSTED)
    ]


async def _seed_more(conn: asyncpg.Connection, now: datetime, history: SeededHistory) -> None:
    # The days' partitions, as the service's maintenance keeps them ahead of and behind the clock.
    mode = await recorded_mode(conn)
    assert mode is not None
    await ensure_partitions(conn, mode, (now - timedelta(days=DAYS + 1)).date(), now.date())
    await write_batch(conn, [*_hourly_probes(now), *_budget_exhausted(now)])
    await copy_history(
        conn,
        [
            (
                at,
                ROUTER,
                NANO,
                window,
                10,
                9,
                0,
                err,
                err,
                p50,
                p95,
                p50 + REASONING_MS,
                p95 + REASONING_MS,
                tps,
                100,
                200,
            )
            for at, window, p50, p95, tps, err in history.rows
        ],
    )


def expected_points(
    history: SeededHistory, window: str, unit: str, start: datetime, end: datetime, plus: float = 0.0
) -> dict[str, float]:
    """What a chart must plot for ttft p50 (``plus`` REASONING_MS: ttfat p50): per bucket from start's,
    the last seeded row up to end."""
    floor = {"hour": lambda t: t.replace(minute=0, second=0, microsecond=0)}.get(
        unit, lambda t: t.replace(hour=0, minute=0, second=0, microsecond=0)
    )
    last: dict[datetime, tuple[datetime, float]] = {}
    for at, w, p50, *_ in history.rows:
        if w == window and floor(start) <= floor(at) and at <= end:
            bucket = floor(at)
            if bucket not in last or last[bucket][0] < at:
                last[bucket] = (at, p50 + plus)
    return {b.isoformat(): v for b, (_, v) in sorted(last.items())}
