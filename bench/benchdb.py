"""Database set-up shared by the storage benchmarks: one throwaway database
per case, migrated in the mode under test."""

from __future__ import annotations

from datetime import date
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from routewatch.aggregator.maintenance import ensure_partitions
from routewatch.aggregator.migrate import migrate


def dsn_for(dsn: str, database: str) -> str:
    """The server's URL with another database name."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def create_database(admin_dsn: str, name: str) -> None:
    """(Re)create an empty database ``name``."""
    conn = await asyncpg.connect(dsn_for(admin_dsn, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def prepare_schema(conn: asyncpg.Connection, mode: str, start: date, end: date) -> str:
    """Migrate in ``mode``; plain mode gets daily partitions for ``start``..``end``."""
    report = await migrate(conn, mode=mode)
    if report.mode != mode:
        raise RuntimeError(f"migrate(mode={mode!r}) produced a {report.mode!r} schema")
    if mode == "plain":
        await ensure_partitions(conn, mode, start, end)
    else:
        # routewatch's schema defines no TimescaleDB policies (it runs its own
        # maintenance); should one appear, it must not run in the middle of a
        # timed insert.
        await conn.execute(
            "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
            " WHERE hypertable_name = 'probe_results'"
        )
    return repr(report)
