"""probe_percentiles_hourly: the hourly rollup as SQL can read it, written with the histograms it comes from.

The refresh writes both tables in one transaction; these tests check that
what SQL reads agrees with what routewatch publishes (the same percentiles,
to the bit), that the current hour, late data and a backfill of hours stored
before the table existed all leave the two tables in step, and the coarse
TTFT distribution adds up.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest
from factories import probe_result
from older_schema import writing_as_older_release
from test_maintenance import make_results, store

from routewatch.aggregator.hour_percentiles import TTFT_HEATMAP_BOUNDS_MS, ttft_counts
from routewatch.aggregator.rollup import HOUR, _hourly_rows, encode_row, floor_hour, refresh_hist, window_stats
from routewatch.aggregator.sketch import Histogram
from routewatch.results.probe_result import ProbeResult
from routewatch.storage import hist_queries
from routewatch.storage.migrate import load_migrations, migrate
from routewatch.storage.percentile_queries import BACKFILL_KEY

TABLE = "SELECT * FROM probe_percentiles_hourly ORDER BY bucket, router, model, scope, provider, region"


@pytest.mark.unit
def test_ttft_counts_split_a_histogram_at_the_bounds() -> None:
    # Values near a bound may fall either side (the sketch is exact to 0.5%): none here.
    values = [0.0, 10.0, 24.0, 27.0, 99.0, 50_000.0, 90_000.0]
    counts = ttft_counts(Histogram.from_values(values))
    assert len(counts) == len(TTFT_HEATMAP_BOUNDS_MS) + 1
    assert sum(counts) == len(values)
    assert counts[0] == 3, "0, 10 and 24 ms are at or below 25 ms"
    assert counts[1] == 1 and counts[2] == 1, "27 ms in (25, 50], 99 ms in (50, 100]"
    assert counts[-2:] == [1, 1], "50 s in the last bounded cell, 90 s above every bound"


@pytest.mark.db
async def test_sql_percentiles_are_the_published_ones(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode)
    now = await conn.fetchval("SELECT now()")
    current = floor_hour(now)
    # Ten days of probes up to the current hour, which stays empty: the "1h"
    # window published now is then exactly the last complete hour.
    results = [r for r in make_results(current + timedelta(hours=2), n=3000) if r.started_at < current]
    assert await store(conn, mode, results) == len(results)
    await refresh_hist(conn, now=now)

    published = (await window_stats(conn, {"1h": 3600.0}, now))["1h"]
    rows = await conn.fetch(
        "SELECT * FROM probe_percentiles_hourly WHERE bucket = $1 AND scope = 'model'", current - HOUR
    )
    assert len(rows) >= 4, "the last complete hour holds probes of most models"
    for r in rows:
        stats = published[(r["router"], r["model"])].counts
        assert (r["attempts"], r["ok"], r["rate_limited"], r["overloaded"]) == (
            stats.attempts,
            stats.ok,
            stats.rate_limited,
            stats.overloaded,
        )
        assert (r["ttft_p50_ms"], r["ttft_p95_ms"], r["ttfat_p50_ms"], r["tps_p50"]) == (
            stats.ttft_p50_ms,
            stats.ttft_p95_ms,
            stats.ttfat_p50_ms,
            stats.tps_p50,
        ), "the same numbers, to the bit"

    # Every hour and scope, against the histograms of the same rows merged by hand.
    hist = await conn.fetch("SELECT bucket, router, model, region, ttft, attempts FROM probe_hist_hourly")
    merged: dict[tuple[object, ...], list[bytes]] = {}
    totals: dict[tuple[object, ...], int] = {}
    for h in hist:
        for key in (
            (h["bucket"], h["router"], h["model"], "model", "*"),
            (h["bucket"], h["router"], h["model"], "region", h["region"]),
        ):
            merged.setdefault(key, []).append(h["ttft"])
            totals[key] = totals.get(key, 0) + h["attempts"]
    scoped = await conn.fetch("SELECT * FROM probe_percentiles_hourly WHERE scope IN ('model', 'region')")
    assert len(scoped) == len(merged)
    for r in scoped:
        key = (r["bucket"], r["router"], r["model"], r["scope"], r["region"])
        ttft = Histogram.merge_all(Histogram.from_bytes(b) for b in merged[key])
        assert (r["ttft_p50_ms"], r["ttft_p95_ms"], r["ttft_p99_ms"]) == (
            ttft.quantile(0.5),
            ttft.quantile(0.95),
            ttft.quantile(0.99),
        )
        assert r["attempts"] == totals[key]
        assert sum(r["ttft_counts"]) == ttft.count


@pytest.mark.db
async def test_the_current_hour_follows_every_refresh(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode)
    now = await conn.fetchval("SELECT now()")
    current = floor_hour(now)
    step = (now - current) / 100

    def in_this_hour(first: int, n: int) -> list[ProbeResult]:
        return [probe_result(started_at=current + step * i, ttft_ms=100.0 + i) for i in range(first, first + n)]

    await store(conn, mode, in_this_hour(0, 40))
    await refresh_hist(conn, now=now)
    await store(conn, mode, in_this_hour(40, 30))
    await refresh_hist(conn, now=now)

    row = await conn.fetchrow(
        "SELECT attempts, ttft_p50_ms FROM probe_percentiles_hourly WHERE bucket = $1 AND scope = 'model'", current
    )
    assert row["attempts"] == 70
    assert row["ttft_p50_ms"] == pytest.approx(134.5, rel=0.01)
    hist = await conn.fetchval("SELECT sum(attempts) FROM probe_hist_hourly WHERE bucket = $1", current)
    assert hist == 70


@pytest.mark.db
async def test_hours_stored_before_the_table_are_backfilled(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode)
    now = await conn.fetchval("SELECT now()")
    results = make_results(now, n=1200)
    await store(conn, mode, results)
    await refresh_hist(conn, now=now)
    expected = await conn.fetch(TABLE)
    hours = await conn.fetchval("SELECT count(DISTINCT bucket) FROM probe_hist_hourly")
    assert hours > 100

    # As the migration leaves a database whose rollup predates the table.
    await conn.execute("DELETE FROM probe_percentiles_hourly")
    await conn.execute(
        "INSERT INTO routewatch_meta (key, value) SELECT $1, max(bucket)::text FROM probe_hist_hourly", BACKFILL_KEY
    )
    refreshes = 0
    while await conn.fetchval("SELECT count(*) FROM routewatch_meta WHERE key = $1", BACKFILL_KEY):
        await refresh_hist(conn, now=now)
        refreshes += 1
        assert refreshes <= hours // 24 + 2
    assert await conn.fetch(TABLE) == expected


@pytest.mark.db
async def test_an_upgraded_database_gets_the_percentiles_of_its_old_hours(conn: asyncpg.Connection, mode: str) -> None:
    migrations = load_migrations()
    await migrate(conn, mode=mode, migrations=[m for m in migrations if m.version < 9])
    now = await conn.fetchval("SELECT now()")
    async with writing_as_older_release(conn, mode, migrations):
        await store(conn, mode, make_results(now, n=800))
        # What the rollup refresh of the previous version left: hourly rows, batches taken in, no percentiles.
        raw = await hist_queries.raw_rows(conn, now - timedelta(days=11), now)
        await hist_queries.copy_rows(conn, [encode_row(h) for h in _hourly_rows(raw)])
        await conn.execute("UPDATE probe_ingest_log SET hist_done = true")

    report = await migrate(conn, mode=mode)
    assert "0009_hour_percentiles" in report.applied
    assert await conn.fetchval("SELECT to_regclass('probe_rollup_hourly')") is None
    assert await conn.fetchval("SELECT value::timestamptz FROM routewatch_meta WHERE key = $1", BACKFILL_KEY) == (
        await conn.fetchval("SELECT max(bucket) FROM probe_hist_hourly")
    )
    while await conn.fetchval("SELECT count(*) FROM routewatch_meta WHERE key = $1", BACKFILL_KEY):
        await refresh_hist(conn, now=now)
    backfilled = await conn.fetch(TABLE)

    # The same as the refresh of this version computes from the same rows.
    await conn.execute("DELETE FROM probe_percentiles_hourly")
    await conn.execute("DELETE FROM probe_hist_hourly")
    await conn.execute("UPDATE probe_ingest_log SET hist_done = false")
    await refresh_hist(conn, now=now)
    assert backfilled == await conn.fetch(TABLE)
    assert len(backfilled) > 500
