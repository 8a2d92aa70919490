"""Versioned migrations against the real server, in both storage modes.

Plain mode runs on every server (it is forced on a TimescaleDB server);
timescaledb mode needs a server with TimescaleDB preloaded
(``ROUTEWATCH_TEST_TIMESCALEDB=1``, see the README's test section).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from factories import probe_result

from routewatch.aggregator.hour_percentiles import PERCENTILE_COLUMNS
from routewatch.results.probe_result import COLUMNS
from routewatch.storage.catalog_queries import read_catalog
from routewatch.storage.cost_queries import db_today, spend_between
from routewatch.storage.housekeeping import (
    CHUNK_INTERVAL,
    PARTITIONS_AHEAD_DAYS,
    PartitionCache,
    compress_old,
    ensure_partitions,
    partition_day,
    partition_name,
)
from routewatch.storage.migrate import (
    MIGRATION_LOCK_KEY,
    Migration,
    MigrationError,
    load_migrations,
    migrate,
)
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import write_batch

LABELS = [
    "0001_probe_results",
    "0002_rollup_hourly",
    "0003_hist_rollup",
    "0004_stats_history",
    "0005_status",
    "0006_ingest_done",
    "0007_shard_leases",
    "0008_hist_changes",
    "0009_hour_percentiles",
    "0010_notification_outbox",
    "0011_router_dialects",
    "0012_prompt_tiers",
    "0013_model_catalog",
    "0014_probe_cost",
    "0015_reasoning_tokens",
    "0016_listed_and_reported_cost",
]
# (version, name) as schema_migrations records them.
VERSIONS = [(int(label[:4]), label[5:]) for label in LABELS]
# The newest version (numbers may skip one that another branch adds).
NEWEST = int(LABELS[-1][:4])
SHARED_LABELS = {
    "0003_hist_rollup",
    "0004_stats_history",
    "0005_status",
    "0006_ingest_done",
    "0007_shard_leases",
    "0008_hist_changes",
    "0010_notification_outbox",
    "0011_router_dialects",
    "0012_prompt_tiers",
    "0013_model_catalog",
    "0014_probe_cost",
    "0015_reasoning_tokens",
    "0016_listed_and_reported_cost",
}  # one NNNN_name.sql for both modes


async def recorded_versions(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    return [(r["version"], r["name"]) for r in rows]


@pytest.mark.unit
def test_packaged_migrations_have_both_variants() -> None:
    migrations = load_migrations()
    assert [m.label for m in migrations] == LABELS
    for m in migrations:
        assert set(m.sql) == {"plain", "timescaledb"}
        # 0003 to 0008 and 0010 to 0016 are shared files: plain tables in both modes.
        if m.label in SHARED_LABELS:
            assert m.sql["plain"] == m.sql["timescaledb"]
        else:
            assert m.sql["plain"] != m.sql["timescaledb"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"0001_a.plain.sql": ""}, "0001_a has no timescaledb variant"),
        ({"0001_a.sql": "", "0001_b.sql": ""}, "migration 0001 has two names"),
        ({"0001_a.sql": "", "0001_a.plain.sql": ""}, "more than one file for plain mode"),
        ({"1_a.sql": ""}, "'1_a.sql' is not named NNNN_name.sql"),
        ({"0001_a.postgres.sql": ""}, "is not named"),
    ],
)
def test_load_migrations_rejects_a_bad_layout(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(MigrationError, match=message):
        load_migrations(tmp_path)


@pytest.mark.db
async def test_migrate_from_empty_creates_everything(conn: asyncpg.Connection, mode: str) -> None:
    report = await migrate(conn, mode=mode)

    assert (report.mode, report.version, report.applied) == (mode, NEWEST, LABELS)
    assert await recorded_versions(conn) == VERSIONS
    assert await conn.fetchval("SELECT value FROM routewatch_meta WHERE key = 'storage_mode'") == mode
    columns = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'probe_results'::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum"
    )
    assert tuple(c["attname"] for c in columns) == COLUMNS
    # 0009 retired the counts rollup of 0002 and made the SQL-readable percentiles.
    assert await conn.fetchval("SELECT to_regclass('probe_rollup_hourly')") is None
    assert await conn.fetchval("SELECT to_regproc('probe_rollup_hourly_compute')") is None
    percentile_columns = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'probe_percentiles_hourly'::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum"
    )
    assert tuple(c["attname"] for c in percentile_columns) == PERCENTILE_COLUMNS
    indexes = {
        r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'probe_results'")
    }
    assert "probe_results_model_time" in indexes

    if mode == "timescaledb":
        assert report.timescaledb_version
        assert (
            await conn.fetchval(
                "SELECT time_interval FROM timescaledb_information.dimensions WHERE hypertable_name = 'probe_results'"
            )
            == CHUNK_INTERVAL
        )
        settings = await conn.fetchrow(
            "SELECT segmentby, orderby FROM timescaledb_information.hypertable_compression_settings"
            " WHERE hypertable = 'probe_results'::regclass"
        )
        assert settings["segmentby"] == "model"
        assert settings["orderby"].startswith("started_at DESC")
        assert await conn.fetchval("SELECT count(*) FROM timescaledb_information.continuous_aggregates") == 0
        # routewatch runs refresh, retention and compression itself: no policies.
        assert (
            await conn.fetchval("SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL")
            == 0
        )
    else:
        assert report.timescaledb_version is None
        assert await conn.fetchval("SELECT relkind FROM pg_class WHERE relname = 'probe_results'") == b"p"
        assert "probe_results_started_at" in indexes


@pytest.mark.db
async def test_rerun_applies_nothing(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode)
    before = await conn.fetch("SELECT * FROM schema_migrations ORDER BY version")

    again = await migrate(conn, mode=mode)

    assert (again.mode, again.version, again.applied) == (mode, NEWEST, [])
    assert await conn.fetch("SELECT * FROM schema_migrations ORDER BY version") == before
    # The session lock is released after each run.
    assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0


@pytest.mark.db
async def test_concurrent_starts_apply_each_version_once(db_dsn: str, mode: str) -> None:
    conns = [await asyncpg.connect(db_dsn) for _ in range(3)]
    try:
        reports = await asyncio.gather(*(migrate(c, mode=mode) for c in conns))
        assert {r.mode for r in reports} == {mode}
        assert {r.version for r in reports} == {NEWEST}
        # Exactly one of them did the work; the others waited and found nothing to do.
        assert sorted(len(r.applied) for r in reports) == [0, 0, len(LABELS)]
        assert await recorded_versions(conns[0]) == VERSIONS
    finally:
        for c in conns:
            await c.close()


@pytest.mark.db
async def test_a_waiting_start_blocks_on_the_lock(db_dsn: str) -> None:
    holder, waiter = await asyncpg.connect(db_dsn), await asyncpg.connect(db_dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        task = asyncio.create_task(migrate(waiter, mode="plain"))
        await asyncio.sleep(0.3)
        assert not task.done(), "migrate must wait for the lock holder"
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        assert (await asyncio.wait_for(task, 10)).applied == LABELS
    finally:
        await holder.close()
        await waiter.close()


@pytest.mark.db
async def test_recorded_mode_wins_over_a_different_request(
    conn: asyncpg.Connection, db_mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    await migrate(conn, mode="plain")
    caplog.set_level(logging.WARNING, logger="routewatch.storage.migrate")

    report = await migrate(conn, mode="timescaledb")

    assert report.mode == "plain" and report.applied == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        (
            "timescaledb mode was asked for, but this database was set up in plain mode; keeping plain"
            " (changing mode needs a new database)"
        )
    ]
    assert await conn.fetchval("SELECT value FROM routewatch_meta WHERE key = 'storage_mode'") == "plain"

    # With no request, the server's offer is compared instead: on a TimescaleDB
    # server that differs from the recorded plain mode, and that is said too.
    caplog.clear()
    assert (await migrate(conn)).mode == "plain"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if db_mode == "timescaledb":
        assert warnings == [
            (
                "this server offers timescaledb mode, but this database was set up in plain mode; keeping plain"
                " (changing mode needs a new database)"
            )
        ]
    else:
        assert warnings == []


@pytest.mark.db
async def test_default_mode_is_what_the_server_offers(conn: asyncpg.Connection, db_mode: str) -> None:
    assert (await migrate(conn)).mode == db_mode


@pytest.mark.db
async def test_timescaledb_mode_needs_the_extension(conn: asyncpg.Connection, db_mode: str) -> None:
    if db_mode == "timescaledb":
        pytest.skip("this server has TimescaleDB; the check needs one without it (the default embedded server)")
    with pytest.raises(MigrationError, match="cannot run TimescaleDB"):
        await migrate(conn, mode="timescaledb")
    assert await conn.fetchval("SELECT count(*) FROM routewatch_meta") == 0
    assert await conn.fetchval("SELECT to_regclass('probe_results')") is None


@pytest.mark.db
async def test_a_failing_migration_is_rolled_back_and_retried(conn: asyncpg.Connection) -> None:
    first = load_migrations()[0]
    broken = Migration(2, "broken", {"plain": "CREATE TABLE half (x int); SELECT 1/0;", "timescaledb": ""})
    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(conn, mode="plain", migrations=[first, broken])
    assert await recorded_versions(conn) == [(1, "probe_results")]
    assert await conn.fetchval("SELECT to_regclass('half')") is None
    assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0

    fixed = Migration(2, "fixed", {"plain": "CREATE TABLE half (x int);", "timescaledb": ""})
    report = await migrate(conn, migrations=[first, fixed])
    assert (report.mode, report.applied) == ("plain", ["0002_fixed"])


@pytest.mark.db
async def test_migrate_refuses_to_run_inside_a_transaction(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        with pytest.raises(MigrationError, match="outside"):
            await migrate(conn, mode="plain")


@pytest.mark.db
async def test_a_pre_migration_schema_is_refused(conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE probe_results (id uuid)")
    with pytest.raises(MigrationError, match="before versioned migrations"):
        await migrate(conn, mode="plain")


@pytest.mark.db
async def test_the_writer_path_works_after_migrate(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode)
    now = datetime.now(UTC)
    results = [probe_result(started_at=now - timedelta(days=d, minutes=m)) for d in range(3) for m in range(5)]

    if mode == "plain":
        # No partition for these days yet: the insert fails loudly (and the
        # writer keeps the batch), it is never silently dropped.
        with pytest.raises(asyncpg.CheckViolationError, match="no partition of relation"):
            await write_batch(conn, results)
        days = sorted({partition_day(r.started_at) for r in results})
        await ensure_partitions(conn, mode, days[0], days[-1])

    assert await write_batch(conn, results) == len(results)
    assert await write_batch(conn, results) == 0, "a replayed batch is not stored twice"
    assert await conn.fetchval("SELECT count(*) FROM probe_results") == len(results)
    if mode == "plain":
        placed = await conn.fetch("SELECT DISTINCT tableoid::regclass::text AS part FROM probe_results")
        assert {r["part"] for r in placed} == {partition_name(partition_day(r.started_at)) for r in results}


@pytest.mark.db
async def test_probe_cost_is_added_to_a_database_with_compressed_history(conn: asyncpg.Connection, mode: str) -> None:
    await compressed_history_before(conn, mode, 14, rows=2)  # written by a version without the cost columns
    now = datetime.now(UTC)
    up_to_cost = [m for m in load_migrations() if m.version <= 14]
    assert (await migrate(conn, mode=mode, migrations=up_to_cost)).applied == ["0014_probe_cost"]
    costs = await conn.fetch("SELECT cost_usd, cached_input_tokens FROM probe_results")
    assert [tuple(r) for r in costs] == [(None, None), (None, None)], "history keeps no cost: it was not measured"
    await migrate(conn, mode=mode)  # the writer of this version writes the later columns too
    assert await write_batch(conn, [probe_result(started_at=now, cost_usd=0.5, cached_input_tokens=7)]) == 1
    assert await conn.fetchval("SELECT sum(cost_usd) FROM probe_cost_daily") == 0.5


@pytest.mark.db
async def test_reported_cost_columns_are_added_to_a_day_already_counted(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode, migrations=[m for m in load_migrations() if m.version < 16])
    now = datetime.now(UTC)
    await ensure_partitions(conn, mode, partition_day(now), partition_day(now))
    # Counted by a version that summed no reported cost.
    await conn.execute(
        "INSERT INTO probe_cost_daily (day, router, model, prompt, probes, priced_probes, cost_usd) "
        "VALUES ($1, 'sim', 'm/a', 'short', 1, 1, 0.25)",
        await db_today(conn),
    )
    await conn.execute("INSERT INTO model_catalog VALUES ('r', 'm', now(), now(), NULL, 1, 2)")

    assert (await migrate(conn, mode=mode)).applied == ["0016_listed_and_reported_cost"]
    day = await db_today(conn)
    [before] = await spend_between(conn, day, day)
    assert (before.cost_usd, before.reported_probes, before.reported_cost_usd, before.billed_usd) == (0.25, 0, 0, 0.25)
    assert (await read_catalog(conn))[0].cached_input_usd_per_mtok is None
    # The same day's row goes on counting, with both figures now.
    assert await write_batch(conn, [probe_result(started_at=now, cost_usd=0.5, reported_cost_usd=1.5)]) == 1
    [after] = await spend_between(conn, day, day)
    assert (after.probes, after.cost_usd, after.reported_probes, after.reported_cost_usd) == (2, 0.75, 1, 1.5)
    assert (after.compared_probes, after.compared_reported_usd, after.compared_computed_usd) == (1, 1.5, 0.5)
    assert after.billed_usd == 0.25 + 1.5


@pytest.mark.db
async def test_reasoning_tokens_are_added_to_a_database_with_compressed_history(
    conn: asyncpg.Connection, mode: str
) -> None:
    await compressed_history_before(conn, mode, 15, rows=2)
    now = datetime.now(UTC)
    up_to_reasoning = [m for m in load_migrations() if m.version <= 15]
    assert (await migrate(conn, mode=mode, migrations=up_to_reasoning)).applied == ["0015_reasoning_tokens"]
    counts = await conn.fetch("SELECT reasoning_tokens FROM probe_results")
    assert [r[0] for r in counts] == [None, None], "history had no count"
    await migrate(conn, mode=mode)  # the writer of this version writes the later columns too
    assert await write_batch(conn, [probe_result(started_at=now, reasoning_tokens=300)]) == 1
    assert await conn.fetchval("SELECT reasoning_tokens FROM probe_results WHERE started_at = $1", now) == 300


@pytest.mark.db
async def test_ensure_schema_wraps_migrate(conn: asyncpg.Connection, db_mode: str) -> None:
    assert await ensure_schema(conn) == db_mode
    assert await ensure_schema(conn) == db_mode
    assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == NEWEST
    if db_mode == "plain":
        today = partition_day(await conn.fetchval("SELECT now()"))
        expected = {partition_name(today + timedelta(days=n)) for n in range(-1, PARTITIONS_AHEAD_DAYS + 1)}
        names = {
            r["relname"]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'probe_results'::regclass"
            )
        }
        assert names == expected
    # Writes for now work straight away in either mode.
    assert await write_batch(conn, [probe_result()]) == 1


async def compressed_history_before(conn: asyncpg.Connection, mode: str, version: int, *, rows: int) -> datetime:
    """The schema before ``version``, holding ``rows`` probes of five days ago, compressed in TimescaleDB
    mode (as the release before ``version`` left them); their day."""
    await migrate(conn, mode=mode, migrations=[m for m in load_migrations() if m.version < version])
    now = datetime.now(UTC)
    old_day = now - timedelta(days=5)
    await PartitionCache().ensure_for(conn, mode, [old_day, now])
    await conn.execute(
        "INSERT INTO probe_results (id, started_at, region, router, model, prompt, methodology, ok)"
        " SELECT gen_random_uuid(), $1::timestamptz + i * interval '1 minute', 'eu', 'r', 'm', 'p', 'm1', true"
        " FROM generate_series(1, $2) AS i",
        old_day,
        rows,
    )
    compressed = await compress_old(conn, mode, timedelta(days=3), now=now)
    assert compressed == (1 if mode == "timescaledb" else 0)
    return old_day


@pytest.mark.db
async def test_router_dialect_columns_reach_old_and_compressed_rows(conn: asyncpg.Connection, mode: str) -> None:
    """0011 on a database that already holds probes (compressed, in TimescaleDB mode): the old rows
    read back with the new columns NULL, and the writer stores new rows beside them, in their chunk."""
    old_day = await compressed_history_before(conn, mode, 11, rows=50)

    report = await migrate(conn, mode=mode)
    assert report.applied == [m.label for m in load_migrations() if m.version >= 11]
    assert report.applied[0] == "0011_router_dialects"
    assert await conn.fetchval("SELECT count(*) FROM probe_results WHERE attempts IS NULL AND dialect IS NULL") == 50
    late = probe_result(started_at=old_day + timedelta(seconds=30), dialect="litellm", attempts=2, fallbacks=0)
    assert await write_batch(conn, [late]) == 1
    row = await conn.fetchrow("SELECT dialect, attempts, fallbacks FROM probe_results WHERE id = $1", late.id)
    assert tuple(row) == ("litellm", 2, 0)


@pytest.mark.db
async def test_prompt_tiers_reach_old_compressed_rows_and_the_rollup_key(conn: asyncpg.Connection, mode: str) -> None:
    """0012 on a database holding probes (compressed, in TimescaleDB mode) and hourly rows: the old
    rows read as tier 100, new rows of another tier are stored beside them in their chunk, and the
    rollup's key tells the tiers of one series-hour apart."""
    old_day = await compressed_history_before(conn, mode, 12, rows=20)

    assert (await migrate(conn, mode=mode)).applied[0] == "0012_prompt_tiers"
    assert await conn.fetchval("SELECT count(*) FROM probe_results WHERE tier = '100'") == 20
    late = probe_result(started_at=old_day + timedelta(seconds=30), prompt="long", tier="10k")
    assert await write_batch(conn, [late]) == 1
    assert await conn.fetchval("SELECT tier FROM probe_results WHERE id = $1", late.id) == "10k"
    key = await conn.fetchval(
        "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i"
        " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = 'probe_hist_hourly'::regclass AND i.indisprimary"
    )
    assert key == ["bucket", "router", "model", "provider", "region", "prompt", "methodology", "tier"]
