"""``routewatch db copy --to URL``: plain PostgreSQL into TimescaleDB (and into plain, and a TimescaleDB
database with compressed chunks into plain), as an operator runs it.

The source is a database with every kind of row routewatch keeps:
raw probes (some not yet rolled up), hourly rollups and percentiles, stats
history, model status, incidents, daily uptime and queued notifications,
made by the real writer and a real aggregator refresh. The copy runs as the
command (a real process), into a second database on the test server; the
TimescaleDB case is skipped only where the server has no TimescaleDB.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from conftest import NO_TIMESCALEDB
from factories import outcome, probe_result
from table_rows import every_row

from routewatch.aggregator.refresh import Aggregator
from routewatch.config import SLOConfig
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.clock import db_now
from routewatch.storage.database_copy import NOT_COPIED, CopyError, copy_database
from routewatch.storage.housekeeping import PartitionCache, compress_old
from routewatch.storage.migrate import migrate
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.system

ROUTER = "sim"
NANO, BROKEN = "openai/gpt-4.1-nano", "t/broken"
CONFIGURED = [(ROUTER, NANO), (ROUTER, BROKEN)]
WINDOWS = {"1h": 3600.0, "7d": 7 * 86400.0}
INTERVAL_S, REFRESH_S = 60.0, 10.0
SLO = SLOConfig(window=900, down_after=3, up_after=2, min_samples=5)
# Rows of these tables are not copied but made again on the target (NOT_COPIED says why);
# routewatch_meta is compared less the keys that describe the database itself.
NOT_COMPARED = frozenset(NOT_COPIED) | {"routewatch_meta"}
OWN_META = ("storage_mode", "hist_changes_pruned")
BATCH_ROWS = 7  # small: every table takes several batches


@pytest.fixture
def target_dsn(second_db_dsn: str) -> str:
    """The copy's target: a second, empty database on the test server."""
    return second_db_dsn


@pytest.fixture(
    params=[("plain", "timescaledb"), ("plain", "plain"), ("timescaledb", "plain")],
    ids=["plain to timescaledb", "plain to plain", "timescaledb with compressed chunks to plain"],
)
def modes(request: pytest.FixtureRequest, db_mode: str) -> tuple[str, str]:
    """(source mode, target mode); TimescaleDB is skipped only where the server has none."""
    if "timescaledb" in request.param and db_mode != "timescaledb":
        pytest.skip(NO_TIMESCALEDB)
    return request.param  # type: ignore[no-any-return]


def _probe(model: str, region: str, ok: bool, at: datetime, ttft_ms: float) -> ProbeResult:
    return probe_result(
        started_at=at,
        region=region,
        router=ROUTER,
        model=model,
        input_tokens=12,
        **outcome(ok, ttft_ms=ttft_ms, output_tps=80.0, output_tokens=40),
    )


def _aggregator(pool: asyncpg.Pool) -> Aggregator:
    return Aggregator(
        pool,
        WINDOWS,
        CONFIGURED,
        REFRESH_S,
        slo=SLO,
        probe_interval_s=INTERVAL_S,
        history_every=timedelta(seconds=1),
        notify_targets=["ops-webhook", "pager"],
    )


async def _seed_source(dsn: str, mode: str = "plain") -> None:
    """Every kind of row, in ``mode``; the last batch is left for the rollup to take in. In TimescaleDB
    mode the chunks older than 3 days are compressed, as housekeeping leaves them."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, mode=mode)
        await ensure_schema(conn)
        now = await conn.fetchval("SELECT now()")
        probes = [
            _probe(model, region, model != BROKEN and i % 11 != 0, now - timedelta(minutes=4 * i), 90.0 + 3 * i)
            for i in range(90)  # six hours, so several hourly rows
            for model in (NANO, BROKEN)
            for region in ("eu-west", "us-east")
        ]
        # And one probe a day from 4 to 6 days ago: chunks old enough to compress.
        probes += [_probe(NANO, "eu-west", True, now - timedelta(days=d), 120.0) for d in (4, 5, 6)]
        await PartitionCache().ensure_for(conn, mode, (p.started_at for p in probes))
        assert await write_batch(conn, probes) == len(probes)
        if mode == "timescaledb":
            assert await compress_old(conn, mode, timedelta(days=3)) >= 3
        await conn.execute(
            'INSERT INTO incidents (id, start, "end", worst_state, models, suppressed, updated_at)'
            " VALUES (1, $1, $2, 'degraded', $3, false, $2)",
            now - timedelta(days=2),
            now - timedelta(days=2) + timedelta(minutes=40),
            [NANO],
        )
        await conn.execute(
            "INSERT INTO uptime_daily (model, day, operational_s, degraded_s, down_s, unknown_s)"
            " VALUES ($1, $2, 80000, 4000, 2400, 0)",
            NANO,
            (now - timedelta(days=3)).date(),
        )
        # A router's model list as discovery records it: one model listed, one retired.
        await conn.execute(
            "INSERT INTO model_catalog (router, model, first_seen, last_seen, retired_at, input_usd_per_mtok)"
            " VALUES ('sim', $1, $2, $3, NULL, 0.1), ('sim', 'gone/model', $2, $2, $3, NULL)",
            NANO,
            now - timedelta(days=5),
            now - timedelta(days=1),
        )
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await _aggregator(pool).refresh()  # rollups, percentiles, history, status, an incident, notifications
        async with pool.acquire() as conn:
            now = await conn.fetchval("SELECT now()")
            late = [_probe(NANO, "eu-west", True, now - timedelta(seconds=s), 70.0 + s) for s in range(1, 30)]
            assert await write_batch(conn, late) == len(late)  # not rolled up when the copy starts
    finally:
        await pool.close()


async def _rows(dsn: str) -> tuple[dict[str, list[tuple[Any, ...]]], list[tuple[Any, ...]]]:
    """Every row of the compared tables, and routewatch_meta less the keys of the database itself."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await every_row(conn, skip=NOT_COMPARED)
        meta = await conn.fetch("SELECT key, value FROM routewatch_meta WHERE key <> ALL($1) ORDER BY key", OWN_META)
        return rows, [tuple(r) for r in meta]
    finally:
        await conn.close()


async def _db_now(dsn: str) -> datetime:
    conn = await asyncpg.connect(dsn)
    try:
        return await db_now(conn)
    finally:
        await conn.close()


async def _published(dsn: str, at: datetime) -> dict[str, Any]:
    """What a fresh leader refreshing at ``at`` would publish: the stats (less when computed) and the model
    status. Source and target are compared at one ``at``: a window starts at the hour before ``at``'s, so
    two refreshes on the database's clock a second apart, either side of an hour, count different probes."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        snap = await Aggregator(pool, WINDOWS, CONFIGURED, REFRESH_S, clock=lambda: at).refresh()
    finally:
        await pool.close()
    figures: dict[str, Any] = {}
    for window, by_series in snap.stats.items():
        for (router, model), stats in by_series.items():
            body = stats.as_json(breakdown=True)
            figures[f"{window} {router}/{model}"] = {
                k: v for k, v in body.items() if k not in ("window_start", "window_end", "updated_at")
            }
    return figures


def _copy(source: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"ROUTEWATCH_DATABASE_URL": source, "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-m", "routewatch.cli", "db", "copy", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


async def test_a_database_copied_into_a_new_one_row_for_row_and_the_same_stats_again_on_a_rerun(
    db_dsn: str, target_dsn: str, modes: tuple[str, str]
) -> None:
    source_mode, target_mode = modes
    await _seed_source(db_dsn, source_mode)
    before = await _rows(db_dsn)
    counts = {table: len(rows) for table, rows in before[0].items()}
    for table in (
        "probe_hist_hourly",
        "probe_percentiles_hourly",
        "stats_history",
        "model_status",
        "incidents",
        "model_catalog",
    ):
        assert counts[table] > 0, f"the source has no {table} rows: the test would prove nothing for it"
    assert counts["notification_outbox"] >= 2 and counts["uptime_daily"] >= 1

    done = _copy(db_dsn, "--to", target_dsn, "--target-mode", target_mode, "--batch-rows", str(BATCH_ROWS))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    password = urlsplit(target_dsn).password
    assert password and password not in out, "the URL's password was printed"
    assert f"target: {target_mode} mode" in out
    for table, n in counts.items():
        if table not in NOT_COMPARED:
            # The writer adds each inserted probe to the day's spend: rows of probe_cost_daily it made
            # equal to the source's are not written again, so only what was read is fixed there.
            written = "" if table == "probe_cost_daily" else f"{n:,} written done in"
            assert f"  {table}: {n:,} rows read, {written}" in out, out  # its progress
            assert f"{table} " in out and f"{n:>12,}  {n:>12,}  equal" in out, out  # the final comparison
    assert "29 probes the source had not rolled up yet" in out, out

    target = await asyncpg.connect(target_dsn)
    try:
        assert await target.fetchval("SELECT value FROM routewatch_meta WHERE key = 'storage_mode'") == target_mode
        if target_mode == "timescaledb":
            assert await target.fetchval(
                "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'probe_results'"
            )
    finally:
        await target.close()
    assert await _rows(target_dsn) == before

    # The target's first refresh takes in the probes the source had not rolled up, once; so does the source's.
    at = await _db_now(db_dsn)
    published = await _published(target_dsn, at)
    assert published == await _published(db_dsn, at)
    assert published["1h sim/openai/gpt-4.1-nano"]["samples"]["attempted"] > 29
    assert await _rows(target_dsn) == await _rows(db_dsn)

    again = _copy(db_dsn, "--to", target_dsn, "--batch-rows", "50")
    assert again.returncode == 0, again.stdout + again.stderr
    assert await _rows(target_dsn) == await _rows(db_dsn), "a rerun changed what it should have kept"
    assert await _published(target_dsn, at) == published


async def test_an_interrupted_copy_is_completed_by_running_it_again(db_dsn: str, target_dsn: str) -> None:
    await _seed_source(db_dsn)
    batches = 0

    def stop_after_three(table: str, read: int, written: int, done: bool) -> None:
        nonlocal batches
        batches += 1
        if batches == 3:
            raise KeyboardInterrupt  # as Ctrl-C between two batches

    source, target = await asyncpg.connect(db_dsn), await asyncpg.connect(target_dsn)
    try:
        with pytest.raises(KeyboardInterrupt):
            await copy_database(source, target, mode="plain", batch_rows=BATCH_ROWS, progress=stop_after_three)
        assert 0 < await target.fetchval("SELECT count(*) FROM probe_results") < BATCH_ROWS * 3
    finally:
        await source.close()
        await target.close()
    done = _copy(db_dsn, "--to", target_dsn, "--batch-rows", str(BATCH_ROWS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert await _rows(target_dsn) == await _rows(db_dsn)
    at = await _db_now(db_dsn)
    assert await _published(target_dsn, at) == await _published(db_dsn, at)


async def test_a_target_with_probes_from_elsewhere_is_refused_unless_merging(db_dsn: str, target_dsn: str) -> None:
    await _seed_source(db_dsn)
    target = await asyncpg.connect(target_dsn)
    try:
        await ensure_schema(target)
        foreign = _probe(NANO, "ap-south", True, datetime.now(UTC) - timedelta(minutes=3), 50.0)
        assert await write_batch(target, [foreign]) == 1
    finally:
        await target.close()

    refused = _copy(db_dsn, "--to", target_dsn)
    assert refused.returncode == 1
    assert "already holds probes that are not in the source" in refused.stderr and "--merge" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (await _rows(target_dsn))[0]["probe_results"] == [tuple(foreign.as_row())], "the refusal wrote nothing"

    merged = _copy(db_dsn, "--to", target_dsn, "--merge")
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert "+1 in the target" in merged.stdout
    source_rows, target_rows = (await _rows(db_dsn))[0], (await _rows(target_dsn))[0]
    assert sorted(target_rows["probe_results"], key=repr) == sorted(
        [*source_rows["probe_results"], tuple(foreign.as_row())], key=repr
    )


async def test_a_target_with_routewatch_data_but_no_probes_is_refused(db_dsn: str, target_dsn: str) -> None:
    await _seed_source(db_dsn)
    target = await asyncpg.connect(target_dsn)
    try:
        await ensure_schema(target)
        await target.execute(
            "INSERT INTO uptime_daily (model, day, operational_s, degraded_s, down_s, unknown_s)"
            " VALUES ('other/model', current_date, 86400, 0, 0, 0)"
        )
    finally:
        await target.close()
    refused = _copy(db_dsn, "--to", target_dsn)
    assert refused.returncode == 1 and "holds uptime_daily rows but no probes" in refused.stderr
    rows = (await _rows(target_dsn))[0]
    assert len(rows["uptime_daily"]) == 1 and rows["probe_results"] == [], "the refusal wrote nothing"


async def test_the_same_database_as_target_and_a_bad_url_are_clear_errors(db_dsn: str) -> None:
    source, same = await asyncpg.connect(db_dsn), await asyncpg.connect(db_dsn)
    try:
        await ensure_schema(source)
        with pytest.raises(CopyError, match="the source database itself"):
            await copy_database(source, same)
    finally:
        await source.close()
        await same.close()
    parts = urlsplit(db_dsn)
    wrong = urlunsplit(parts._replace(netloc=f"{parts.username}:not-the-password-{uuid.uuid4().hex}@127.0.0.1:1"))
    failed = _copy(db_dsn, "--to", wrong)
    assert failed.returncode == 1 and "the target" in failed.stderr
    assert "not-the-password" not in failed.stdout + failed.stderr and "Traceback" not in failed.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["db", "copy"], "`db copy` needs --to URL"),
        (["db", "status", "--to", "postgresql://x@127.0.0.1/y"], "--to is for `db copy` only"),
        (["db", "migrate", "--merge"], "--target-mode and --merge are for `db copy --to URL`"),
    ],
    ids=["copy without --to", "--to without copy", "--merge without copy"],
)
def test_misused_copy_options_are_refused_before_anything_is_touched(
    db_dsn: str, args: list[str], message: str
) -> None:
    env = {"ROUTEWATCH_DATABASE_URL": db_dsn, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "routewatch.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert asyncio.run(_tables(db_dsn)) == 0, "the database was touched"


async def _tables(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
    finally:
        await conn.close()
