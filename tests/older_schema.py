"""Writing a database as an older release left it, with this release's writer.

The writer and the rollup refresh of this release write the columns migration
0011 adds. A test that builds the state of an older schema adds those columns
while it writes and drops them again before upgrading, so the upgrade starts
from exactly the older shape, with rows in it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from routewatch.storage.connection import Conn
from routewatch.storage.migrate import Migration

# The columns migration 0011 adds, per table.
LATER_COLUMNS = {
    "probe_results": ("dialect", "attempts", "fallbacks", "router_request_id", "reported_cost_usd"),
    "probe_hist_hourly": ("reported_ok", "retried", "calls", "calls_failed", "ttft_first", "ttft_retried"),
}


@asynccontextmanager
async def writing_as_older_release(conn: Conn, mode: str, migrations: Sequence[Migration]) -> AsyncIterator[None]:
    """Inside, the later columns exist (this release's writer can write); at exit they are dropped.
    Nothing to do on a schema that has them already."""
    dialects = next(m for m in migrations if m.label == "0011_router_dialects")
    if await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE version = $1", dialects.version):
        yield
        return
    await conn.execute(dialects.sql[mode])
    yield
    for table, columns in LATER_COLUMNS.items():
        await conn.execute(f"ALTER TABLE {table} " + ", ".join(f"DROP COLUMN {c}" for c in columns))
