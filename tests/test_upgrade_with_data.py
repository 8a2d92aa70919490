"""An upgrade keeps the data: a database left by an older schema, with probes in it, migrated to the newest.

The data is written by today's writer into the older schema (with the columns a
later migration adds there while it writes: ``older_schema``), every row of every table is read
before and after ``migrate``, and the aggregator then publishes figures from the
probes that were there before the upgrade.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest
from factories import probe_result
from older_schema import writing_as_older_release
from table_rows import every_row, table_columns

from routewatch.aggregator.refresh import Aggregator
from routewatch.storage.housekeeping import ensure_partitions, partition_day
from routewatch.storage.migrate import load_migrations, migrate
from routewatch.storage.writer import write_batch

# Tables a later migration drops on purpose, holding only what can be recomputed.
RETIRED = {"probe_rollup_hourly"}
# Bookkeeping that migrate itself changes.
MIGRATION_TABLES = frozenset({"schema_migrations"})
PROBES = 40
OLDER_VERSIONS = (8, load_migrations()[-2].version)


@pytest.mark.db
@pytest.mark.parametrize("from_version", OLDER_VERSIONS)
async def test_migrate_keeps_the_data_of_an_older_schema(db_dsn: str, mode: str, from_version: int) -> None:
    migrations = load_migrations()
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, mode=mode, migrations=[m for m in migrations if m.version <= from_version])
            now = await conn.fetchval("SELECT now()")
            results = [
                probe_result(started_at=now - timedelta(minutes=i), router="r", model="m/a", ttft_ms=100.0 + i)
                if i % 10
                else probe_result(started_at=now - timedelta(minutes=i), router="r", model="m/a", ok=False)
                for i in range(PROBES)
            ]
            if mode == "plain":
                days = sorted({partition_day(r.started_at) for r in results})
                await ensure_partitions(conn, mode, days[0], days[-1])
            async with writing_as_older_release(conn, mode, migrations):
                assert await write_batch(conn, results) == PROBES
            before = await every_row(conn, MIGRATION_TABLES)
            shape = await table_columns(conn)
            assert len(before["probe_results"]) == PROBES

            report = await migrate(conn)

            assert report.applied == [m.label for m in migrations if m.version > from_version]
            assert report.mode == mode
            after = await every_row(conn, MIGRATION_TABLES, shape)  # the columns there were before
            for table, rows in before.items():
                if table in RETIRED:
                    assert table not in after, f"{table} was expected to be retired"
                else:
                    assert after[table] == rows, f"{table} changed in the upgrade"

        snap = await Aggregator(pool, {"1h": 3600.0}, [("r", "m/a")], 10.0).refresh()
    finally:
        await pool.close()
    samples = snap.stats["1h"][("r", "m/a")].as_json()["samples"]
    assert (samples["attempted"], samples["failed"]) == (PROBES, PROBES // 10)
