"""The storage contract: what routewatch relies on from its store, checked alike in both storage modes.

Every test runs once per mode the server offers (the ``mode`` fixture: plain
always, timescaledb where the server has TimescaleDB) on a fresh database:
migrate, store batches as the writer does, then look at what a user would —
every column read back exactly, a replayed batch stored once, the rollups
counting the new rows, retention dropping old days, ``db status`` naming the
mode and the rows.
"""

from __future__ import annotations

import math
import statistics
import uuid
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest
from factories import probe_result

from routewatch.aggregator.rollup import floor_hour, refresh_hist, window_stats
from routewatch.results.probe_result import COLUMNS, ProbeResult
from routewatch.storage.describe import db_status, format_status
from routewatch.storage.housekeeping import PartitionCache, apply_retention
from routewatch.storage.migrate import load_migrations, migrate
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.db

INT4_MAX = 2**31 - 1
ONE_HOUR = {"1h": 3600.0}


async def store(conn: asyncpg.Connection, mode: str, results: list[ProbeResult]) -> int:
    """As the writer stores a batch: partitions for its days (plain mode), then write_batch."""
    await PartitionCache().ensure_for(conn, mode, (r.started_at for r in results))
    return await write_batch(conn, results)


async def stored(conn: asyncpg.Connection) -> dict[uuid.UUID, ProbeResult]:
    """Every stored row, read back as a ProbeResult, by id."""
    rows = await conn.fetch(f"SELECT {', '.join(COLUMNS)} FROM probe_results")
    return {r["id"]: ProbeResult(**dict(r)) for r in rows}


async def database_now(conn: asyncpg.Connection) -> datetime:
    now: datetime = await conn.fetchval("SELECT now()")
    return now


def every_field_set(at: datetime) -> ProbeResult:
    """A result with every field set, to values a careless store would bend."""
    return probe_result(
        id=uuid.UUID(int=2**128 - 1),
        # Microseconds, in a zone that is not UTC nor a whole hour away from it.
        started_at=at.replace(microsecond=987654).astimezone(timezone(timedelta(hours=-9, minutes=-30))),
        region="ap-south-1",
        router="routeur-é",
        model="vendor/model:free",
        prompt="long",
        error_class="http_429",
        # COPY's own escapes and NULL marker, quotes, a tab, a newline, a character beyond the BMP.
        error_detail='quota «épuisé» 🙅 "quoted"\t\\N back\\slash\nsecond line ' + "x" * 400,
        http_status=429,
        model_served="",
        provider="Ωmega",
        request_id="gen-0000",
        connect_ms=0.0,
        ttfb_ms=5e-324,
        ttft_ms=0.1 + 0.2,
        ttfat_ms=1e-9,
        e2e_ms=1.7976931348623157e308,
        output_tps=123.45678901234568,
        input_tokens=0,
        output_tokens=INT4_MAX,
        tokens_estimated=True,
        chunks=INT4_MAX,
        chunk_gap_max_ms=1 / 3,
        chunk_gap_p95_ms=math.pi,
        retry_after_s=86400.0,
        loop_lag_ms=2.5e-7,
        prober_overloaded=True,
        dialect="litellm",
        attempts=INT4_MAX,
        fallbacks=0,
        router_request_id="8911edb3-074c-4a37-8de4-42f043d434e7",
        reported_cost_usd=4.4e-06,
        cached_input_tokens=2**31 - 1,
        cost_usd=1e-9,
        tier="200k",
        reasoning_tokens=INT4_MAX,
    )


def nothing_measured(at: datetime) -> ProbeResult:
    """A success with every optional field None and every default left alone."""
    return probe_result(id=uuid.UUID(int=0), started_at=at)


async def test_every_column_comes_back_exactly(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode)
    now = await database_now(conn)
    full, sparse = every_field_set(now - timedelta(hours=2)), nothing_measured(now - timedelta(days=1))
    assert all(getattr(full, name) is not None for name in COLUMNS), "the full result sets every field"
    assert await store(conn, mode, [full, sparse]) == 2

    back = await stored(conn)
    for original in (full, sparse):
        got = back[original.id]
        assert {name: getattr(got, name) for name in COLUMNS} == {name: getattr(original, name) for name in COLUMNS}
        for name in COLUMNS:  # equal and of the same kind: an int is not read back as a float
            value = getattr(original, name)
            assert value is None or isinstance(getattr(got, name), type(value)), name
        assert got.started_at.utcoffset() == timedelta(0), "timestamps are read back in UTC"


async def test_a_replayed_batch_is_stored_once(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode)
    hour = floor_hour(await database_now(conn)) - timedelta(hours=1)  # a complete hour
    batch = [probe_result(started_at=hour + timedelta(minutes=i), ttft_ms=100.0 + i) for i in range(5)]
    assert await store(conn, mode, batch) == 5
    assert await store(conn, mode, batch) == 0, "a spool replay of a stored batch adds nothing"
    new = probe_result(started_at=hour + timedelta(minutes=30), ttft_ms=130.0)
    assert await store(conn, mode, batch[2:] + [new]) == 1, "only the result not stored before is added"
    assert set(await stored(conn)) == {r.id for r in batch + [new]}

    report = await refresh_hist(conn)
    counts = (await window_stats(conn, ONE_HOUR, report.now))["1h"][("sim", "m/a")].counts
    assert (counts.attempts, counts.ok) == (6, 6), "the replays are not counted twice"


async def test_the_daily_spend_counts_a_replayed_probe_once(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode)
    hour = floor_hour(await database_now(conn)) - timedelta(hours=1)
    priced = [probe_result(started_at=hour + timedelta(minutes=i), cost_usd=0.25) for i in range(4)]
    unpriced = probe_result(started_at=hour, model="m/free")
    assert await store(conn, mode, [*priced, unpriced]) == 5
    assert await store(conn, mode, priced[1:]) == 0, "a replay adds nothing"
    rows = {
        r["model"]: tuple(r[1:])
        for r in await conn.fetch("SELECT model, day, probes, priced_probes, cost_usd FROM probe_cost_daily")
    }
    day = hour.astimezone(UTC).date()
    assert rows == {"m/a": (day, 4, 4, 1.0), "m/free": (day, 1, 0, 0.0)}


async def test_the_rollups_count_what_was_written(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode)
    now = await database_now(conn)
    hour = floor_hour(now) - timedelta(hours=1)  # a complete hour: both rollups hold it whole
    ttfts = [100.0 + 7 * i for i in range(40)]
    results = [
        probe_result(started_at=hour + timedelta(seconds=60 * i), ttft_ms=t, input_tokens=12, output_tokens=30)
        for i, t in enumerate(ttfts)
    ]
    results += [
        probe_result(started_at=hour + timedelta(minutes=41), error_class="http_429", input_tokens=12),
        probe_result(started_at=hour + timedelta(minutes=42), error_class="http_5xx", input_tokens=12),
        probe_result(started_at=hour + timedelta(minutes=43), error_class="timeout_ttft", input_tokens=12),
        # Measured while the prober lagged: left out of the outcomes, still counted as traffic.
        probe_result(
            started_at=hour + timedelta(minutes=44),
            ttft_ms=9999.0,
            input_tokens=12,
            output_tokens=30,
            prober_overloaded=True,
        ),
    ]
    assert await store(conn, mode, results) == len(results)

    report = await refresh_hist(conn)
    counts = (await window_stats(conn, ONE_HOUR, report.now))["1h"][("sim", "m/a")].counts
    assert (counts.attempts, counts.ok, counts.rate_limited, counts.overloaded) == (43, 40, 1, 1)
    assert (counts.input_tokens, counts.output_tokens) == (44 * 12, 41 * 30)
    assert counts.ttft_p50_ms == pytest.approx(statistics.median(ttfts), rel=0.01)
    assert (counts.first_probe, counts.last_probe) == (results[0].started_at, results[-1].started_at)

    row = await conn.fetchrow(
        "SELECT attempts, ok, failures, rate_limited, overloaded, errors, input_tokens, output_tokens, ttft_p50_ms"
        " FROM probe_percentiles_hourly"
        " WHERE bucket = $1 AND router = 'sim' AND model = 'm/a' AND scope = 'model'",
        hour,
    )
    assert {k: v for k, v in row.items() if k != "ttft_p50_ms"} == {
        "attempts": 43,
        "ok": 40,
        "failures": 3,
        "rate_limited": 1,
        "overloaded": 1,
        "errors": '{"http_429": 1, "http_5xx": 1, "timeout_ttft": 1}',
        "input_tokens": 44 * 12,
        "output_tokens": 41 * 30,
    }
    assert row["ttft_p50_ms"] == counts.ttft_p50_ms, "the SQL-readable percentile is the published one"


async def test_retention_drops_old_days_and_keeps_the_rest(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode)
    now = await database_now(conn)
    old = [probe_result(started_at=now - timedelta(days=10, minutes=i)) for i in range(3)]
    recent = [probe_result(started_at=now - timedelta(days=1, minutes=i)) for i in range(3)]
    await store(conn, mode, old + recent)

    assert await apply_retention(conn, mode, timedelta(days=5), now=now) >= 1
    assert set(await stored(conn)) == {r.id for r in recent}
    status = await db_status(conn)
    assert status.rows == 3 and status.oldest == min(r.started_at for r in recent)
    # A late result for a dropped day is still stored: its partition or chunk is made again.
    assert await store(conn, mode, [probe_result(started_at=now - timedelta(days=10))]) == 1


async def test_db_status_describes_the_mode_and_the_rows(conn: asyncpg.Connection, mode: str) -> None:
    empty = await db_status(conn)
    assert (empty.mode, empty.schema_version, empty.rows) == (None, 0, None)

    report = await migrate(conn, mode=mode)
    now = await database_now(conn)
    results = [probe_result(started_at=now - timedelta(days=d, minutes=m)) for d in range(3) for m in range(4)]
    await store(conn, mode, results)

    status = await db_status(conn)
    assert status.mode == report.mode == mode
    assert status.schema_version == report.version == max(m.version for m in load_migrations())
    assert (status.timescaledb_version is not None) == (mode == "timescaledb")
    assert (status.rows, status.rows_source) == (len(results), "exact count")
    assert (status.oldest, status.newest) == (min(r.started_at for r in results), max(r.started_at for r in results))
    assert status.partitions is not None and status.partitions >= 3  # one per day at least
    assert status.partition_kind == ("chunks" if mode == "timescaledb" else "partitions")
    assert (status.compression is not None) == (mode == "timescaledb")

    shown = dict(line.split(":", 1) for line in format_status(status).splitlines())
    assert shown["storage mode"].strip() == mode
    assert shown["probe results"].strip().startswith(f"{len(results)} rows (exact count)")
    assert shown[status.partition_kind].strip().startswith(str(status.partitions))
