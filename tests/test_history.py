"""What the catalog showed at time T: the stats history the aggregator records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from factories import outcome, probe_result

from routewatch.aggregator.history import published_at
from routewatch.aggregator.refresh import Aggregator
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.db

WINDOWS = {"1h": 3600.0, "7d": 7 * 86400.0}


def _result(ttft_ms: float, ok: bool = True) -> ProbeResult:
    return probe_result(
        started_at=datetime.now(UTC) - timedelta(seconds=30),
        region="r",
        router="sim",
        model="h/model",
        **outcome(ok, ttft_ms=ttft_ms, output_tokens=10),
    )


async def test_each_refresh_is_recorded_and_can_be_read_back_at_any_time(db_dsn: str) -> None:
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            await write_batch(conn, [_result(100.0 + i) for i in range(20)])
        aggregator = Aggregator(pool, WINDOWS, [("sim", "h/model")], 10.0, history_every=timedelta(0))
        first = await aggregator.refresh()
        async with pool.acquire() as conn:
            await write_batch(conn, [_result(0, ok=False) for _ in range(5)])
        second = await aggregator.refresh()

        async with pool.acquire() as conn:
            rows = await conn.fetchval("SELECT count(*) FROM stats_history")
            assert rows == 2 * len(WINDOWS)  # one row per model and window, per snapshot
            between = first.updated_at + (second.updated_at - first.updated_at) / 2
            then = await published_at(conn, "sim", "h/model", "7d", between)
            now = await published_at(conn, "sim", "h/model", "7d", second.updated_at)
            before = await published_at(conn, "sim", "h/model", "7d", first.updated_at - timedelta(seconds=1))
    finally:
        await pool.close()
    published_then = first.stats["7d"][("sim", "h/model")]
    assert then is not None and then.taken_at == first.updated_at
    assert (then.attempts, then.ok, then.error_rate) == (20, 20, 0.0)
    assert then.ttft_p50_ms == published_then.counts.ttft_p50_ms
    assert now is not None and (now.attempts, now.ok) == (25, 20) and now.error_rate == 0.2
    assert before is None  # nothing was published before the first snapshot


async def test_history_is_recorded_at_most_every_interval(db_dsn: str) -> None:
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
        aggregator = Aggregator(pool, WINDOWS, [("sim", "h/model")], 10.0, history_every=timedelta(hours=1))
        for _ in range(3):
            await aggregator.refresh()
        rows = await pool.fetchval("SELECT count(*) FROM stats_history")
    finally:
        await pool.close()
    assert rows == len(WINDOWS)
