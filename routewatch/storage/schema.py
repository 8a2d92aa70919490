"""Start-up schema step, kept for existing callers of ``ensure_schema``.

The schema itself lives in versioned migrations (``routewatch/storage/migrations``,
applied by :mod:`.migrate`); this module runs them and, in plain mode, makes
sure the partitions for the days around now exist so that writes can start.
"""

from __future__ import annotations

from datetime import timedelta

from routewatch.storage.clock import db_now
from routewatch.storage.connection import Conn
from routewatch.storage.housekeeping import CHUNK_INTERVAL, PARTITIONS_AHEAD_DAYS, ensure_partitions, partition_day
from routewatch.storage.migrate import migrate, timescaledb_available, timescaledb_version

__all__ = ["CHUNK_INTERVAL", "ensure_schema", "timescaledb_available", "timescaledb_version"]


async def ensure_schema(conn: Conn) -> str:
    """Migrate to the latest schema; return the storage mode, ``timescaledb`` or ``plain``.

    Plain mode also gets partitions from yesterday (writes from just before
    midnight) to :data:`PARTITIONS_AHEAD_DAYS` ahead.
    """
    report = await migrate(conn)
    today = partition_day(await db_now(conn))
    await ensure_partitions(conn, report.mode, today - timedelta(days=1), today + timedelta(days=PARTITIONS_AHEAD_DAYS))
    return report.mode
