"""Hourly histogram rollups (routewatch/aggregator/rollup.py) against exact figures on the raw rows.

Both storage modes via the ``mode`` fixture (timescaledb needs
``ROUTEWATCH_TEST_TIMESCALEDB=1``, see the README's test section).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg
import numpy as np
import pytest
from factories import outcome, probe_result

from routewatch.aggregator.exact_reference import window_counts
from routewatch.aggregator.refresh import Aggregator
from routewatch.aggregator.rollup import (
    CellKey,
    _hourly_rows,
    decode_row,
    floor_hour,
    refresh_hist,
    series_key,
    window_start,
    window_stats,
)
from routewatch.aggregator.stats import MIN_OK_SAMPLES, CellStats
from routewatch.results.probe_result import ProbeResult
from routewatch.storage import hist_queries
from routewatch.storage.housekeeping import PartitionCache
from routewatch.storage.migrate import migrate
from routewatch.storage.writer import insert_batch, write_batch

pytestmark = pytest.mark.db

WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
FAILURES = ["http_429", "http_5xx", "timeout_ttft", "stream_error"]
Sampler = Callable[[np.random.Generator, int], np.ndarray]


def lognormal(median: float, sigma: float) -> Sampler:
    return lambda rng, n: rng.lognormal(np.log(median), sigma, n)


def bimodal(rng: np.random.Generator, n: int) -> np.ndarray:
    """70% fast around 200 ms, 30% slow around 2 s."""
    fast = rng.random(n) < 0.7
    return np.where(fast, rng.lognormal(np.log(200), 0.2, n), rng.lognormal(np.log(2000), 0.3, n))


def slow_tail(rng: np.random.Generator, n: int) -> np.ndarray:
    """Lognormal with a 1% tail of probes 100x slower."""
    x = rng.lognormal(np.log(150), 0.3, n)
    return np.where(rng.random(n) < 0.01, x * 100, x)


# (router, model, providers, regions, ttft sampler, tps sampler)
SERIES: list[tuple[str, str, list[str | None], list[str], Sampler, Sampler]] = [
    ("r", "m/lognormal", ["P1"], ["eu"], lognormal(300, 1.0), lognormal(80, 0.4)),
    ("r", "m/bimodal", ["P1", "P2"], ["eu", "us"], bimodal, lambda rng, n: bimodal(rng, n) / 10),
    ("r2", "m/tail", [None, "P3"], ["eu"], slow_tail, lognormal(40, 0.6)),
]


def synthetic(now: datetime, seed: int = 7, per_hour: int = 12, current_hour: int = 150) -> list[ProbeResult]:
    """~7 days of probes per series, plus a busy current (partial) hour."""
    rng = np.random.default_rng(seed)
    out: list[ProbeResult] = []
    begin = now - timedelta(days=7, hours=1)
    cur = floor_hour(now)
    bulk_span = (cur - begin).total_seconds()
    cur_span = (now - cur).total_seconds()
    for router, model, providers, regions, ttft_of, tps_of in SERIES:
        for provider in providers:
            for region in regions:
                n_bulk = int(per_hour * bulk_span / 3600)
                offsets = np.concatenate(
                    [rng.random(n_bulk) * bulk_span, bulk_span + rng.random(current_hour) * cur_span]
                )
                n = offsets.size
                ttft = ttft_of(rng, n)
                ttfat = ttft * (1 + rng.lognormal(np.log(0.3), 0.8, n))
                tps = tps_of(rng, n)
                failed = rng.random(n) < 0.05
                overloaded = rng.random(n) < 0.01
                for i in range(n):
                    error = str(rng.choice(FAILURES)) if failed[i] else None
                    out.append(
                        probe_result(
                            started_at=begin + timedelta(seconds=float(offsets[i])),
                            region=region,
                            router=router,
                            model=model,
                            error_class=error,
                            error_detail=error and "detail",
                            provider=provider,
                            ttft_ms=None if error else float(ttft[i]),
                            ttfat_ms=None if error else float(ttfat[i]),
                            output_tps=None if error else float(tps[i]),
                            input_tokens=20,
                            output_tokens=None if error else int(rng.integers(10, 200)),
                            prober_overloaded=bool(overloaded[i]),
                        )
                    )
    out.sort(key=lambda r: r.started_at)
    return out


async def store(conn: asyncpg.Connection, mode: str, results: list[ProbeResult], batch: int = 2000) -> int:
    """The writer path, in time-ordered batches like a live prober's."""
    await PartitionCache().ensure_for(conn, mode, (r.started_at for r in results))
    n = 0
    for i in range(0, len(results), batch):
        n += await write_batch(conn, results[i : i + batch])
    return n


async def setup(conn: asyncpg.Connection, mode: str, **kw: int) -> datetime:
    await migrate(conn, mode=mode)
    now = await conn.fetchval("SELECT now()")
    results = synthetic(now, **kw)
    assert await store(conn, mode, results) == len(results)
    return now


def key_of(row: asyncpg.Record, key: CellKey) -> bool:
    if row["router"] != key[0] or row["model"] != key[1]:
        return False
    if len(key) == 2:
        return True
    column = key[2]
    return (row[column] or "unknown") == key[3]


async def exact_rows(conn: asyncpg.Connection, start: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT router, model, provider, region, tier, ttft_ms, ttfat_ms, output_tps FROM probe_results"
        " WHERE started_at >= $1 AND ok AND NOT prober_overloaded",
        start,
    )


def pct(values: list[float | None], q: float) -> float:
    x = np.array([v for v in values if v is not None], dtype=np.float64)
    return float(np.percentile(x, q))


async def test_percentiles_match_numpy_within_one_percent(conn: asyncpg.Connection, mode: str) -> None:
    # Windows end at the seeding time: immune to an hour boundary passing mid-test.
    now = await setup(conn, mode)
    await refresh_hist(conn)
    stats = await window_stats(conn, WINDOWS, now)
    checked, worst = 0, 0.0
    for name, seconds in WINDOWS.items():
        rows = await exact_rows(conn, window_start(now, seconds))
        cells = stats[name]
        # 3 models, 5 (model, provider), 4 (model, region) and 3 (model, tier) cells (every
        # probe of one tier), all with data in every window.
        assert len(cells) == 3 + 5 + 4 + 3
        for key, cell in cells.items():
            mine = [r for r in rows if key_of(r, key)]
            assert cell.counts.ok == len(mine), (name, key)
            for column, q, got, ci in (
                ("ttft_ms", 50, cell.counts.ttft_p50_ms, cell.ttft_p50_ci),
                ("ttft_ms", 95, cell.counts.ttft_p95_ms, cell.ttft_p95_ci),
                ("ttfat_ms", 50, cell.counts.ttfat_p50_ms, cell.ttfat_p50_ci),
                ("ttfat_ms", 95, cell.counts.ttfat_p95_ms, cell.ttfat_p95_ci),
                ("output_tps", 50, cell.counts.tps_p50, cell.tps_p50_ci),
            ):
                exact = pct([r[column] for r in mine], q)
                assert got is not None
                assert abs(got - exact) <= 0.01 * exact, (name, key, column, q, got, exact)
                worst = max(worst, abs(got - exact) / exact)
                if ci is not None:
                    assert ci[0] <= exact <= ci[1], (name, key, column, q, ci, exact)
                checked += 1
    assert checked == len(WINDOWS) * 15 * 5
    print(f"worst relative error over {checked} percentiles: {worst:.5f}")


async def test_counts_equal_exact_sql(conn: asyncpg.Connection, mode: str) -> None:
    now = await setup(conn, mode, per_hour=3, current_hour=20)
    await refresh_hist(conn)
    stats = await window_stats(conn, WINDOWS, now)
    for name, seconds in WINDOWS.items():
        start = window_start(now, seconds)
        exact = {(c.router, c.model): c for c in await window_counts(conn, start, floor_hour(now) + timedelta(hours=1))}
        cells = stats[name]
        assert {k for k in cells if len(k) == 2} == set(exact)
        for key, ref in exact.items():
            c = cells[key].counts
            assert (c.attempts, c.ok, c.rate_limited, c.overloaded) == (
                ref.attempts,
                ref.ok,
                ref.rate_limited,
                ref.overloaded,
            )
            assert (c.input_tokens, c.output_tokens) == (ref.input_tokens, ref.output_tokens)
            assert (c.first_probe, c.last_probe) == (ref.first_probe, ref.last_probe)
            classes = await conn.fetch(
                "SELECT error_class, count(*) AS n FROM probe_results WHERE router = $1 AND model = $2"
                " AND started_at >= $3 AND NOT ok AND NOT prober_overloaded GROUP BY error_class",
                key[0],
                key[1],
                start,
            )
            assert cells[key].errors_by_class == {r["error_class"]: r["n"] for r in classes}
            # The breakdowns partition the model's counts.
            for dim in ("provider", "region"):
                parts = [v for k, v in cells.items() if k[:3] == (*key, dim)]
                assert sum(p.counts.attempts for p in parts) == c.attempts
                assert sum(p.counts.ok for p in parts) == c.ok
    # provider NULL is published as "unknown", never as "".
    assert ("r2", "m/tail", "provider", "unknown") in stats["7d"]
    assert not any(k[2:] == ("provider", "") for k in stats["7d"])


async def test_refresh_is_incremental_and_picks_up_late_rows(conn: asyncpg.Connection, mode: str) -> None:
    now = await setup(conn, mode, per_hour=2, current_hour=5)
    first = await refresh_hist(conn)
    assert first.log_rows > 0 and len(first.hours) >= 7 * 24
    assert first.raw_rows == await conn.fetchval("SELECT count(*) FROM probe_results")

    again = await refresh_hist(conn)
    assert again.log_rows == 0
    assert again.hours == () and again.raw_rows == 0, "no new data: nothing is recomputed or read"
    assert len(again.current) > 0, "the report still carries the current hour's rows"

    # A late row (a replayed spool) for an hour three days ago.
    late_hour = floor_hour(now - timedelta(days=3))
    before = await conn.fetchval(
        "SELECT coalesce(sum(attempts), 0) FROM probe_hist_hourly WHERE bucket = $1", late_hour
    )
    late = probe_result(
        started_at=late_hour + timedelta(minutes=17),
        router="r",
        model="m/lognormal",
        error_class="http_5xx",
        error_detail="late",
        provider="P1",
        input_tokens=20,
    )
    assert await store(conn, mode, [late]) == 1
    third = await refresh_hist(conn)
    assert third.log_rows == 1
    assert third.hours == (late_hour,)
    after = await conn.fetchval("SELECT coalesce(sum(attempts), 0) FROM probe_hist_hourly WHERE bucket = $1", late_hour)
    assert after == before + 1
    exact = await conn.fetchval(
        "SELECT count(*) FROM probe_results WHERE started_at >= $1 AND started_at < $2 AND NOT prober_overloaded",
        late_hour,
        late_hour + timedelta(hours=1),
    )
    assert after == exact

    # A new probe in the current hour shows at the next refresh.
    fresh = probe_result(started_at=third.now, router="r", model="m/new", ttft_ms=123.0, output_tps=50.0)
    assert await store(conn, mode, [fresh]) == 1
    fourth = await refresh_hist(conn)
    stats = await window_stats(conn, {"1h": 3600.0}, fourth.now)
    assert stats["1h"][("r", "m/new")].counts.ok == 1
    assert stats["1h"][("r", "m/new")].counts.ttft_p50_ms == pytest.approx(123.0, rel=0.005)


async def test_hours_past_retention_keep_their_rollup(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode)
    now = await conn.fetchval("SELECT now()")
    old_hour = floor_hour(now - timedelta(days=10))

    def probe(at: datetime) -> ProbeResult:
        return probe_result(started_at=at, router="r", model="m", prompt="p", ttft_ms=100.0)

    await store(conn, mode, [probe(old_hour + timedelta(minutes=1))])
    await refresh_hist(conn)
    await store(conn, mode, [probe(old_hour + timedelta(minutes=2))])
    report = await refresh_hist(conn, retention=timedelta(days=9))
    assert report.skipped_hours == 1
    assert old_hour not in report.hours
    assert await conn.fetchval("SELECT ok FROM probe_hist_hourly WHERE bucket = $1", old_hour) == 1


async def test_thin_cells_are_marked(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode)
    now = await conn.fetchval("SELECT now()")
    results = [
        probe_result(
            started_at=floor_hour(now) + (now - floor_hour(now)) * (i / 5),
            router="r",
            model="m/thin",
            prompt="p",
            ttft_ms=100.0 + i,
            output_tps=30.0,
        )
        for i in range(5)
    ]
    await store(conn, mode, results)
    report = await refresh_hist(conn)
    cell: CellStats = (await window_stats(conn, {"1h": 3600.0}, report.now))["1h"][("r", "m/thin")]
    assert cell.counts.ok == 5 < MIN_OK_SAMPLES
    assert not cell.sufficient
    assert cell.ttft_p50_ci is None, "5 samples: no 95% interval for the median"
    assert cell.counts.ttft_p50_ms == pytest.approx(102.0, rel=0.005)


async def test_aggregator_publishes_intervals_and_breakdowns(db_dsn: str) -> None:
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await setup(conn, "plain", per_hour=2, current_hour=40)
        aggregator = Aggregator(pool, WINDOWS, [("r", "m/configured-only")], 10.0)
        snap = await aggregator.refresh()
    finally:
        await pool.close()
    assert snap.models[0] == ("r", "m/configured-only")
    assert set(snap.models) == {("r", "m/configured-only"), ("r", "m/lognormal"), ("r", "m/bimodal"), ("r2", "m/tail")}
    stats = snap.stats["7d"][("r", "m/bimodal")]
    body = stats.as_json(breakdown=True)
    assert body["samples"]["sufficient"] is True
    lo, hi = body["ci95"]["ttft_p50_ms"]
    assert lo <= body["ttft_p50_ms"] <= hi
    assert sum(body["errors_by_class"].values()) == body["samples"]["failed"]
    assert set(body["breakdown"]) == {"provider", "region", "tier"}
    assert set(body["breakdown"]["provider"]) == {"P1", "P2"}
    assert set(body["breakdown"]["tier"]) == {"100"}, "every probe of a hand-written short prompt"
    assert sum(c["samples"]["ok"] for c in body["breakdown"]["region"].values()) == body["samples"]["ok"]
    assert stats.window_start == floor_hour(snap.updated_at) - timedelta(hours=168)
    empty = snap.stats["7d"][("r", "m/configured-only")].as_json()
    assert empty["samples"]["attempted"] == 0 and empty["ci95"]["ttft_p50_ms"] is None
    assert "breakdown" not in empty


async def test_current_hour_deltas_equal_a_whole_hour_recompute(db_dsn: str, conn: asyncpg.Connection) -> None:
    """Batches added to the current hour one refresh at a time, a replayed duplicate and a batch
    that commits while a refresh runs: the hour's rows equal the rollup of all its raw rows."""
    await migrate(conn, mode="plain")
    now = await conn.fetchval("SELECT now()")
    hour = floor_hour(now)
    rng = np.random.default_rng(3)

    def batch(n: int) -> list[ProbeResult]:
        out = []
        for _ in range(n):
            router, model, providers, regions, ttft_of, tps_of = SERIES[int(rng.integers(len(SERIES)))]
            error = str(rng.choice(FAILURES)) if rng.random() < 0.1 else None
            out.append(
                probe_result(
                    started_at=hour + (now - hour) * float(rng.random()),
                    region=regions[0],
                    router=router,
                    model=model,
                    error_class=error,
                    error_detail=error and "detail",
                    provider=providers[0],
                    ttft_ms=None if error else float(ttft_of(rng, 1)[0]),
                    output_tps=None if error else float(tps_of(rng, 1)[0]),
                    input_tokens=20,
                    output_tokens=None if error else 50,
                    prober_overloaded=bool(rng.random() < 0.05),
                )
            )
        return out

    first = batch(40)
    await store(conn, "plain", first)
    await refresh_hist(conn, now=now)
    await store(conn, "plain", batch(25) + first[:10])  # 10 of them replayed: stored once
    await refresh_hist(conn, now=now)
    # A writer whose transaction is still open while a refresh runs: not taken in by that
    # refresh, taken in (once) by the next.
    late_conn = await asyncpg.connect(db_dsn)
    try:
        async with late_conn.transaction():
            await insert_batch(late_conn, batch(15))
            during = await refresh_hist(conn, now=now)
        with pytest.raises(RuntimeError, match="not inside another"):
            async with late_conn.transaction():
                await write_batch(late_conn, batch(1))
    finally:
        await late_conn.close()
    assert during.log_rows == 0
    after = await refresh_hist(conn, now=now)
    assert after.log_rows == 1 and after.hours == ()
    again = await refresh_hist(conn, now=now)
    assert again.log_rows == 0

    raw = await hist_queries.raw_rows(conn, hour, hour + timedelta(hours=1))
    assert len(raw) == 80
    expected = {series_key(h): h for h in _hourly_rows(raw)}
    stored = {series_key(h): h for h in again.current}
    assert stored.keys() == expected.keys()
    for key, h in expected.items():
        assert stored[key] == h, key
    table = [decode_row(r) for r in await hist_queries.rows_of_hour(conn, hour)]
    assert {series_key(h): h for h in table} == stored


# ---------------------------------------------------------------- provider names are router-controlled


def _named(model: str, provider: str | None, at: datetime, ok: bool = True) -> ProbeResult:
    return probe_result(
        started_at=at,
        router="r",
        model=model,
        prompt="p",
        provider=provider,
        input_tokens=10,
        **outcome(ok, ttft_ms=100.0, output_tokens=5),
    )


def _provider_cells(cells: dict[CellKey, CellStats], model: str) -> dict[str, CellStats]:
    return {k[3]: v for k, v in cells.items() if k[:3] == ("r", model, "provider")}


async def test_provider_names_are_capped_in_the_rollup(
    conn: asyncpg.Connection, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """200 probes, each naming a new provider, plus 20 naming none, in two batches and refreshes
    and across earlier hours: the table and every window hold the first 5 names, "other" and
    "unknown"; the cells add up to the model; the raw rows keep every name; logged once."""
    caplog.set_level(logging.WARNING, logger="routewatch.aggregator.rollup")
    await migrate(conn, mode=mode)
    now = await conn.fetchval("SELECT now()")
    start = floor_hour(now) - timedelta(hours=3)
    step = (now - start) / 221
    hostile = [_named("m/hostile", f"name-{i:03d}", start + step * i, ok=i % 7 != 0) for i in range(200)]
    unnamed = [_named("m/hostile", None, start + step * (200 + i)) for i in range(20)]
    fine = [_named("m/fine", "P1", start + step * i) for i in range(0, 200, 10)]
    first, second = hostile[::2] + unnamed[:10] + fine, hostile[1::2] + unnamed[10:]
    await store(conn, mode, first)
    await refresh_hist(conn, max_providers=5)
    await store(conn, mode, second)  # the odd names land in hours already rolled up: recomputed whole
    report = await refresh_hist(conn, max_providers=5)
    assert report.hours, "the second batch recomputes earlier hours"

    admitted = {f"name-{i:03d}" for i in (0, 2, 4, 6, 8)}  # the first five stored, by start time
    stored = {
        r["provider"]
        for r in await conn.fetch("SELECT DISTINCT provider FROM probe_hist_hourly WHERE model = 'm/hostile'")
    }
    assert stored == admitted | {"other", ""}
    raw = await conn.fetchval("SELECT count(DISTINCT provider) FROM probe_results WHERE model = 'm/hostile'")
    assert raw == 200, "the raw rows keep every name as reported"

    stats = await window_stats(conn, WINDOWS, report.now, max_providers=5)
    for name, cells in stats.items():
        model = cells[("r", "m/hostile")]
        providers = _provider_cells(cells, "m/hostile")
        assert set(providers) <= admitted | {"other", "unknown"} and "" not in providers, name
        assert len(providers) <= 5 + 2
        for field in ("attempts", "ok", "input_tokens", "output_tokens"):
            assert sum(getattr(c.counts, field) for c in providers.values()) == getattr(model.counts, field)
        assert sum(sum(c.errors_by_class.values()) for c in providers.values()) == sum(model.errors_by_class.values())
    week = _provider_cells(stats["7d"], "m/hostile")
    assert week["other"].counts.attempts == 195 and week["unknown"].counts.attempts == 20
    assert set(_provider_cells(stats["7d"], "m/fine")) == {"P1"}

    capped = [r.getMessage() for r in caplog.records if "distinct providers" in r.getMessage()]
    assert len(capped) == 1 and "m/hostile" in capped[0] and "name-" not in capped[0], capped

    # More new names later: still only "other", and no second log line.
    await store(conn, mode, [_named("m/hostile", f"late-{i}", report.now) for i in range(30)])
    again = await refresh_hist(conn, max_providers=5)
    assert {
        r["provider"]
        for r in await conn.fetch("SELECT DISTINCT provider FROM probe_hist_hourly WHERE model = 'm/hostile'")
    } == stored
    after = await window_stats(conn, WINDOWS, again.now, max_providers=5)
    assert _provider_cells(after["7d"], "m/hostile")["other"].counts.attempts == 195 + 30
    assert len([r for r in caplog.records if "distinct providers" in r.getMessage()]) == 1


async def test_a_lower_limit_applies_to_what_the_table_already_holds(conn: asyncpg.Connection) -> None:
    """Rows stored under a higher limit (or before the cap): published with the busiest names kept."""
    await migrate(conn, mode="plain")
    now = await conn.fetchval("SELECT now()")
    results = [
        _named("m/many", f"P{i}", now - timedelta(minutes=1 + j)) for i in range(6) for j in range(i + 1)
    ]  # P5 has the most probes, P0 the fewest
    await store(conn, "plain", results + [_named("m/many", None, now - timedelta(minutes=2))])
    report = await refresh_hist(conn, max_providers=10)
    cells = (await window_stats(conn, {"1h": 3600.0}, report.now, max_providers=2))["1h"]
    providers = _provider_cells(cells, "m/many")
    assert set(providers) == {"P5", "P4", "other", "unknown"}
    assert providers["other"].counts.attempts == 1 + 2 + 3 + 4
    assert sum(c.counts.attempts for c in providers.values()) == cells[("r", "m/many")].counts.attempts == 22
