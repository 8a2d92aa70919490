"""Creating the schema, in TimescaleDB mode where the extension exists.

Which mode the store runs in is decided here once and reported at start:
``timescaledb`` (probe_results is a hypertable) or ``plain`` (an ordinary
table; the same queries run on both).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

# One chunk per day keeps a 7-day query on 7-8 chunks and lets retention drop
# whole days.
CHUNK_INTERVAL = timedelta(days=1)


async def timescaledb_available(conn: asyncpg.Connection) -> bool:
    """Whether the server can load TimescaleDB (installed and preloaded)."""
    installed = await conn.fetchval(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    if not installed:
        return False
    preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    return "timescaledb" in (preload or "")


async def ensure_schema(conn: asyncpg.Connection) -> str:
    """Create missing tables; return the storage mode, ``timescaledb`` or ``plain``."""
    sql = resources.files(__package__).joinpath("schema.sql").read_text()
    mode = "plain"
    async with conn.transaction():
        # Serialise concurrent starts (prober and API processes) on one lock.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('routewatch schema'))")
        await conn.execute(sql)
        if await timescaledb_available(conn):
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            await conn.execute(
                "SELECT create_hypertable('probe_results', by_range('started_at', $1::interval),"
                " if_not_exists => TRUE, migrate_data => TRUE)",
                CHUNK_INTERVAL,
            )
            mode = "timescaledb"
    return mode


async def timescaledb_version(conn: asyncpg.Connection) -> str | None:
    """The installed TimescaleDB version, or None in plain mode."""
    return await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
