"""The published figures over time: recording snapshots and reading them back.

The refreshing aggregator records its snapshot every ``snapshot_every``
(not every refresh: a row per model and window each 10 s would dwarf the
probes themselves). ``published_at`` answers "what did the catalog show at
time T" with the last snapshot taken at or before T.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from routewatch.aggregator.stats import ModelStats
from routewatch.storage import history_queries
from routewatch.storage.connection import Conn


@dataclass(frozen=True, slots=True)
class PublishedFigures:
    """One model's figures for one window as published at ``taken_at``."""

    taken_at: datetime
    router: str
    model: str
    window: str
    attempts: int
    ok: int
    rate_limited: int
    error_rate: float | None
    error_rate_excl_429: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttfat_p50_ms: float | None
    ttfat_p95_ms: float | None
    tps_p50: float | None
    input_tokens: int
    output_tokens: int


def history_rows(taken_at: datetime, stats: list[ModelStats]) -> list[tuple[object, ...]]:
    """Rows of ``stats_history`` (in ``history_queries.HISTORY_COLUMNS`` order) for one snapshot's stats."""
    rows: list[tuple[object, ...]] = []
    for s in stats:
        c = s.counts
        rows.append(
            (
                taken_at,
                s.router,
                s.model,
                s.window,
                c.attempts,
                c.ok,
                c.rate_limited,
                s.error_rate,
                s.error_rate_excl_429,
                c.ttft_p50_ms,
                c.ttft_p95_ms,
                c.ttfat_p50_ms,
                c.ttfat_p95_ms,
                c.tps_p50,
                c.input_tokens,
                c.output_tokens,
            )
        )
    return rows


async def record(conn: Conn, taken_at: datetime, stats: list[ModelStats]) -> int:
    """Store one snapshot's figures; return rows written."""
    rows = history_rows(taken_at, stats)
    await history_queries.copy_history(conn, rows)
    return len(rows)


async def published_at(conn: Conn, router: str, model: str, window: str, at: datetime) -> PublishedFigures | None:
    """The figures published for (router, model, window) by the last snapshot at or before ``at``."""
    row = await history_queries.last_published(conn, router, model, window, at)
    return None if row is None else PublishedFigures(**row)
