"""Partitions, retention, compression, the SQL-readable rollup and status against the real server.

Each test seeds a few thousand probe results over ten days through the real
writer path and checks maintenance in every storage mode the server offers.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from conftest import NO_TIMESCALEDB
from factories import probe_result

from routewatch.aggregator.rollup import refresh_hist
from routewatch.results.probe_result import ProbeResult
from routewatch.storage import describe as db_status_module
from routewatch.storage.describe import db_status, format_status
from routewatch.storage.housekeeping import (
    PARTITIONS_AHEAD_DAYS,
    PartitionCache,
    apply_retention,
    compress_old,
    ensure_partitions,
    partition_day,
    partition_name,
    run_maintenance,
)
from routewatch.storage.migrate import load_migrations, migrate
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.db

DAYS = 10
ROWS = 4000
# The newest seeded row is this old, so every rollup bucket is complete.
NEWEST_AGE = timedelta(hours=2)
FAILURES = ("timeout_ttft", "timeout_total", "http_429", "http_5xx", "connect_error", "bad_response")


@dataclass
class Seeded:
    conn: asyncpg.Connection
    mode: str
    now: datetime  # the database's clock when seeding
    results: list[ProbeResult]


def make_results(now: datetime, n: int = ROWS, seed: int = 7) -> list[ProbeResult]:
    """``n`` varied results spread over the ``DAYS`` days before ``now - NEWEST_AGE``."""
    rng = random.Random(seed)
    span = timedelta(days=DAYS) - NEWEST_AGE
    results = []
    for _ in range(n):
        error = rng.choice(FAILURES) if rng.random() < 0.3 else None
        results.append(
            probe_result(
                id=uuid.UUID(int=rng.getrandbits(128)),
                started_at=now - NEWEST_AGE - span * rng.random(),
                region=rng.choice(["eu", "us"]),
                router=rng.choice(["r1", "r2"]),
                model=rng.choice(["m/a", "m/b", "m/c"]),
                prompt=rng.choice(["short", "long"]),
                error_class=error,  # ok exactly when there is none
                error_detail=None if error is None else "detail",
                provider=rng.choice([None, "P1", "P2"]),
                ttft_ms=rng.uniform(50, 900),
                input_tokens=rng.choice([None, rng.randint(5, 50)]),
                output_tokens=None if error else rng.randint(10, 200),
                prober_overloaded=rng.random() < 0.05,
            )
        )
    return results


async def store(conn: asyncpg.Connection, mode: str, results: list[ProbeResult]) -> int:
    """The writer path: partitions for the batch's days (plain), then write_batch."""
    await PartitionCache().ensure_for(conn, mode, (r.started_at for r in results))
    return await write_batch(conn, results)


@pytest.fixture
async def seeded(conn: asyncpg.Connection, mode: str) -> Seeded:
    await migrate(conn, mode=mode)
    now = await conn.fetchval("SELECT now()")
    results = make_results(now)
    assert await store(conn, mode, results) == len(results)
    return Seeded(conn, mode, now, results)


def expected_rollup(results: list[ProbeResult]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """probe_percentiles_hourly's "series" rows computed here, independently of the refresh:
    per hour, router, model, provider (as published) and region; prompts merged."""
    out: dict[tuple[Any, ...], Counter[str]] = {}
    errors: dict[tuple[Any, ...], Counter[str]] = {}
    for r in results:
        bucket = r.started_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        key = (bucket, r.router, r.model, r.provider or "unknown", r.region)
        c = out.setdefault(key, Counter())
        e = errors.setdefault(key, Counter())
        c["input_tokens"] += r.input_tokens or 0
        c["output_tokens"] += r.output_tokens or 0
        if r.prober_overloaded:
            c["overloaded"] += 1
            continue
        c["attempts"] += 1
        if r.ok:
            c["ok"] += 1
        else:
            c["failures"] += 1
            c["rate_limited"] += r.error_class == "http_429"
            e[r.error_class or "unknown"] += 1
    names = ("attempts", "ok", "failures", "rate_limited", "overloaded", "input_tokens", "output_tokens")
    return {key: {**{n: c[n] for n in names}, "errors": dict(errors[key])} for key, c in out.items()}


async def stored_rollup(conn: asyncpg.Connection) -> dict[tuple[Any, ...], dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM probe_percentiles_hourly WHERE scope = 'series'")
    keys = ("bucket", "router", "model", "provider", "region")
    names = ("attempts", "ok", "failures", "rate_limited", "overloaded", "input_tokens", "output_tokens")
    return {tuple(r[k] for k in keys): {**{n: r[n] for n in names}, "errors": json.loads(r["errors"])} for r in rows}


def kept_after_retention(results: list[ProbeResult], horizon: datetime) -> list[ProbeResult]:
    """Rows whose day ends after ``horizon``: retention drops whole days, not rows."""
    return [r for r in results if _day_end(r.started_at) > horizon]


def _day_end(ts: datetime) -> datetime:
    day = partition_day(ts)
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


async def partition_names(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'probe_results'::regclass"
    )
    return {r["relname"] for r in rows}


# -- partitions ---------------------------------------------------------------


async def test_partitions_are_daily_idempotent_and_safe_concurrently(db_dsn: str) -> None:
    conns = [await asyncpg.connect(db_dsn) for _ in range(3)]
    try:
        await migrate(conns[0], mode="plain")
        start = datetime(2026, 3, 28, tzinfo=UTC).date()  # spans a DST change in Europe
        end = start + timedelta(days=4)
        created = await asyncio.gather(*(ensure_partitions(c, "plain", start, end) for c in conns))
        assert sum(created) == 5
        assert await ensure_partitions(conns[0], "plain", start, end) == 0
        assert await partition_names(conns[0]) == {partition_name(start + timedelta(days=n)) for n in range(5)}

        # Bounds are UTC midnights whatever the session's time zone.
        await conns[1].execute("SET TimeZone = 'America/New_York'")
        last_moment = datetime(2026, 3, 29, 23, 59, 59, 999999, tzinfo=UTC)
        first_moment = datetime(2026, 3, 30, tzinfo=UTC)
        await write_batch(conns[1], [_result(last_moment), _result(first_moment)])
        placed = await conns[1].fetch("SELECT tableoid::regclass::text AS part FROM probe_results ORDER BY started_at")
        assert [r["part"] for r in placed] == ["probe_results_p20260329", "probe_results_p20260330"]
    finally:
        for c in conns:
            await c.close()


async def test_timescaledb_needs_no_partitions(conn: asyncpg.Connection, db_mode: str) -> None:
    if db_mode != "timescaledb":
        pytest.skip(NO_TIMESCALEDB)
    await migrate(conn, mode="timescaledb")
    today = partition_day(datetime.now(UTC))
    assert await ensure_partitions(conn, "timescaledb", today, today + timedelta(days=3)) == 0
    assert await PartitionCache().ensure(conn, "timescaledb", [today]) == 0


async def test_partition_cache_asks_the_database_once_per_day(conn: asyncpg.Connection) -> None:
    await migrate(conn, mode="plain")
    cache = PartitionCache()
    today = partition_day(datetime.now(UTC))
    days = [today, today - timedelta(days=2)]
    assert await cache.ensure(conn, "plain", days) == 2
    # Removed behind the cache's back: a remembered day is not looked up again ...
    await conn.execute(f"DROP TABLE {partition_name(today)}")
    assert await cache.ensure(conn, "plain", days) == 0
    assert partition_name(today) not in await partition_names(conn)
    # ... until the cache forgets, as it must after retention.
    cache.forget()
    assert await cache.ensure(conn, "plain", days) == 1
    assert partition_name(today) in await partition_names(conn)


# -- retention -----------------------------------------------------------------


async def test_retention_drops_whole_old_days_and_keeps_the_rest(seeded: Seeded) -> None:
    conn, mode, now = seeded.conn, seeded.mode, seeded.now
    retention = timedelta(days=5)
    horizon = now - retention
    kept = kept_after_retention(seeded.results, horizon)
    old_days = {partition_day(r.started_at) for r in seeded.results} - {partition_day(r.started_at) for r in kept}
    assert 4 <= len(old_days) <= 6

    assert await apply_retention(conn, mode, retention, now=now) == len(old_days)

    assert await conn.fetchval("SELECT count(*) FROM probe_results") == len(kept)
    oldest = await conn.fetchval("SELECT min(started_at) FROM probe_results")
    assert oldest == min(r.started_at for r in kept)
    assert _day_end(oldest) > horizon
    assert await apply_retention(conn, mode, retention, now=now) == 0, "a second pass finds nothing"
    if mode == "plain":
        assert not {partition_name(d) for d in old_days} & await partition_names(conn)


# -- the SQL-readable rollup ----------------------------------------------------


async def test_refreshed_percentiles_match_the_raw_rows(seeded: Seeded) -> None:
    conn, mode, now = seeded.conn, seeded.mode, seeded.now
    await refresh_hist(conn, now=now)
    assert await stored_rollup(conn) == expected_rollup(seeded.results)

    # The whole model, against a direct GROUP BY over the raw rows.
    direct = await conn.fetch(
        "SELECT count(*) FILTER (WHERE NOT prober_overloaded) AS attempts,"
        " count(*) FILTER (WHERE ok AND NOT prober_overloaded) AS ok,"
        " count(*) FILTER (WHERE prober_overloaded) AS overloaded, coalesce(sum(output_tokens), 0) AS out"
        " FROM probe_results GROUP BY date_trunc('hour', started_at AT TIME ZONE 'UTC'), router, model"
        " ORDER BY 1, 2, 3, 4"
    )
    whole = await conn.fetch(
        "SELECT attempts, ok, overloaded, output_tokens AS out FROM probe_percentiles_hourly"
        " WHERE scope = 'model' ORDER BY 1, 2, 3, 4"
    )
    assert [tuple(r) for r in whole] == [tuple(r) for r in direct]
    # Every scope counts every probe once.
    per_scope = await conn.fetch(
        "SELECT scope, sum(attempts + overloaded) AS n FROM probe_percentiles_hourly GROUP BY 1"
    )
    assert {r["scope"]: r["n"] for r in per_scope} == dict.fromkeys(
        ("series", "provider", "region", "model"), len(seeded.results)
    )

    # Late rows in an old hour (a spool replay) are picked up by the next refresh.
    late = make_results(now, n=50, seed=8)
    assert await store(conn, mode, late) == 50
    await refresh_hist(conn, now=now)
    assert await stored_rollup(conn) == expected_rollup(seeded.results + late)


async def test_retention_keeps_spend_as_long_as_the_probes_and_pauses_for_their_day(
    conn: asyncpg.Connection, mode: str
) -> None:
    await migrate(conn, mode=mode)
    today = partition_day(datetime.now(UTC))
    for age in (0, 4, 6):
        day = today - timedelta(days=age)
        await conn.execute("INSERT INTO probe_cost_daily VALUES ($1, 'sim', 'm/a', 'short', 1, 1, 0.5)", day)
        await conn.execute(
            "INSERT INTO budget_pauses (day, router, model, prompt, usd_per_day) VALUES ($1, 'sim', 'm/a', 'short', 9)",
            day,
        )
    await apply_retention(conn, mode, timedelta(days=5))
    spend_days = [r["day"] for r in await conn.fetch("SELECT day FROM probe_cost_daily ORDER BY day")]
    assert spend_days == [today - timedelta(days=4), today]
    assert [r["day"] for r in await conn.fetch("SELECT day FROM budget_pauses")] == [today]


async def test_retention_cuts_both_hourly_rollups_at_the_same_hour(seeded: Seeded) -> None:
    conn, mode, now = seeded.conn, seeded.mode, seeded.now
    await refresh_hist(conn, now=now)
    await apply_retention(conn, mode, timedelta(days=5), rollup_retention=timedelta(days=3), now=now)
    hist_hours = await conn.fetchval("SELECT array_agg(DISTINCT bucket ORDER BY bucket) FROM probe_hist_hourly")
    percentile_hours = await conn.fetchval(
        "SELECT array_agg(DISTINCT bucket ORDER BY bucket) FROM probe_percentiles_hourly"
    )
    assert hist_hours == percentile_hours
    assert now - timedelta(days=3) <= percentile_hours[0] < now - timedelta(days=3) + timedelta(hours=1)


# -- compression ---------------------------------------------------------------


async def test_compression_keeps_data_readable(seeded: Seeded) -> None:
    conn, mode, now = seeded.conn, seeded.mode, seeded.now
    if mode != "timescaledb":
        assert await compress_old(conn, mode, now=now) == 0
        return
    eligible = await conn.fetchval(
        "SELECT count(*) FROM timescaledb_information.chunks"
        " WHERE hypertable_name = 'probe_results' AND range_end <= $1",
        now - timedelta(days=3),
    )
    assert eligible >= 6

    assert await compress_old(conn, mode, timedelta(days=3), now=now) == eligible
    assert await compress_old(conn, mode, timedelta(days=3), now=now) == 0, "compressed chunks are left alone"

    assert (
        await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'probe_results' AND is_compressed"
        )
        == eligible
    )
    assert await conn.fetchval("SELECT count(*) FROM probe_results") == len(seeded.results)
    assert await conn.fetchval("SELECT sum(output_tokens) FROM probe_results") == sum(
        r.output_tokens or 0 for r in seeded.results
    )
    per_model = await conn.fetch("SELECT model, count(*) AS n FROM probe_results GROUP BY model ORDER BY model")
    assert {r["model"]: r["n"] for r in per_model} == Counter(r.model for r in seeded.results)

    # A replayed old row is still deduplicated inside a compressed chunk; a new one is added.
    oldest = min(seeded.results, key=lambda r: r.started_at)
    assert await write_batch(conn, [oldest]) == 0
    assert await write_batch(conn, [_result(oldest.started_at)]) == 1

    # The rollup refreshes over compressed chunks just the same.
    await refresh_hist(conn, now=now)
    total = await conn.fetchval("SELECT sum(attempts + overloaded) FROM probe_percentiles_hourly WHERE scope = 'model'")
    assert total == len(seeded.results) + 1


# -- the periodic pass ---------------------------------------------------------


async def test_run_maintenance_does_everything_in_one_pass(seeded: Seeded) -> None:
    conn, mode, now = seeded.conn, seeded.mode, seeded.now
    report = await run_maintenance(conn, mode, retention=timedelta(days=7), compress_after=timedelta(days=2), now=now)
    assert report.mode == mode and report.horizon == now - timedelta(days=7)
    assert report.dropped >= 2
    today = partition_day(now)
    if mode == "plain":
        ahead = {today + timedelta(days=n) for n in range(PARTITIONS_AHEAD_DAYS + 1)}
        assert report.partitions_created == len(ahead - {partition_day(r.started_at) for r in seeded.results})
        assert {partition_name(today + timedelta(days=n)) for n in range(PARTITIONS_AHEAD_DAYS + 1)} <= (
            await partition_names(conn)
        )
        assert report.compressed == 0
    else:
        assert report.partitions_created == 0
        assert report.compressed >= 4
    again = await run_maintenance(conn, mode, retention=timedelta(days=7), compress_after=timedelta(days=2), now=now)
    assert (again.partitions_created, again.dropped, again.compressed) == (0, 0, 0)


# -- status --------------------------------------------------------------------


async def test_db_status_before_migration(conn: asyncpg.Connection) -> None:
    status = await db_status(conn)
    assert (status.mode, status.schema_version, status.rows, status.partitions) == (None, 0, None, None)
    assert "not set up" in format_status(status, None)


async def test_db_status_numbers_match(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    conn, mode, now = seeded.conn, seeded.mode, seeded.now
    await refresh_hist(conn, now=now)
    days = {partition_day(r.started_at) for r in seeded.results}

    status = await db_status(conn)

    assert status.mode == mode and status.schema_version == load_migrations()[-1].version  # the newest, applied
    assert status.server_version == await conn.fetchval("SHOW server_version")
    assert (status.rows, status.rows_source) == (len(seeded.results), "exact count")
    assert status.oldest == min(r.started_at for r in seeded.results)
    assert status.newest == max(r.started_at for r in seeded.results)
    series = expected_rollup(seeded.results)
    scopes = [{(k[0], k[1], k[2], k[3]) for k in series}, {(k[0], k[1], k[2], k[4]) for k in series}]
    models = {k[:3] for k in series}
    assert status.rollup_rows == len(series) + sum(map(len, scopes)) + len(models)
    assert status.partitions == len(days)
    assert status.size_bytes is not None and status.size_bytes > 100_000
    if mode == "plain":
        assert status.compression is None and status.timescaledb_version is None
    else:
        assert status.timescaledb_version
        assert status.compression is not None and status.compression.ratio is None
        await compress_old(conn, mode, now=now)
        status = await db_status(conn)
        c = status.compression
        assert c is not None and c.ratio is not None and c.ratio > 1
        assert c.chunks_compressed >= 6 and c.chunks_total == len(days)
        assert c.ratio == pytest.approx(c.before_bytes / c.after_bytes)
        assert status.rows == len(seeded.results)

    text = format_status(status, "0 results (0 B)")
    assert f"storage mode:    {mode}" in text
    assert f"probe results:   {len(seeded.results):,} rows (exact count)" in text
    assert f"{status.partition_kind}:" in text and "hourly rollup:" in text
    assert text.splitlines()[-1] == "spool backlog:   0 results (0 B)"
    assert ("compression:" in text) == (mode == "timescaledb")
    assert "spool" not in format_status(status, None)

    # Past the limit, the planner's estimate is shown instead (and says so).
    monkeypatch.setattr(db_status_module, "EXACT_COUNT_LIMIT", 100)
    await conn.execute("ANALYZE probe_results")
    estimated = await db_status(conn)
    assert estimated.rows_source.startswith("estimate (")
    assert estimated.rows == pytest.approx(len(seeded.results), rel=0.05)


# Batch sizes of one compressed chunk (segmented by model) whose statistics hide a third of its rows from
# approximate_row_count(): two equal sizes and one other leave an MCV of 2/3 and no histogram for the rest.
FEW_BATCHES = {"m/a": 129, "m/b": 136, "m/c": 136}


async def test_db_status_estimate_counts_compressed_chunks_of_few_batches(
    conn: asyncpg.Connection, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The estimate shown past the limit is near the rows stored, whatever the batch sizes of a compressed chunk.

    Seeded at a fixed hour of one day, so unlike the random seed above it does not depend on when it runs.
    """
    await migrate(conn, mode=mode)
    now = await conn.fetchval("SELECT now()")
    noon = datetime.combine(partition_day(now - timedelta(days=5)), datetime.min.time(), UTC) + timedelta(hours=12)
    results = [
        probe_result(started_at=noon + timedelta(seconds=i), region="eu", router="r1", model=model, output_tokens=0)
        for model, n in FEW_BATCHES.items()
        for i in range(n)
    ]
    assert await store(conn, mode, results) == len(results)
    assert await compress_old(conn, mode, now=now) == (1 if mode == "timescaledb" else 0)
    await conn.execute("ANALYZE probe_results")
    monkeypatch.setattr(db_status_module, "EXACT_COUNT_LIMIT", 100)

    status = await db_status(conn)

    print(f"{mode}: {status.rows} rows by {status.rows_source}, {len(results)} stored")
    assert status.rows_source.startswith("estimate (")
    assert status.rows == pytest.approx(len(results), rel=0.05)
    if mode == "timescaledb":
        # Where TimescaleDB has no compression records, its own estimate is shown, and says so.
        monkeypatch.setattr(db_status_module, "_COMPRESSION_RECORDS", "_timescaledb_catalog.no_such_table")
        fallback = await db_status(conn)
        print(f"fallback: {fallback.rows} rows by {fallback.rows_source}")
        assert fallback.rows_source == "estimate (approximate_row_count)"
        assert fallback.rows == await conn.fetchval("SELECT approximate_row_count('probe_results')")


def _result(started_at: datetime) -> ProbeResult:
    return probe_result(started_at=started_at, region="eu", router="r1", model="m/a", output_tokens=0)
