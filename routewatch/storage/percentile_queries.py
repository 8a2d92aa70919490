"""The SQL of ``probe_percentiles_hourly``: the hourly rollup's counts and percentiles, SQL-readable.

The rollup refresh (``routewatch.aggregator.rollup``) computes the records
(``routewatch.aggregator.hour_percentiles``) and writes them here, inside its
own transaction, right after the ``probe_hist_hourly`` rows they come from;
these functions only move rows. Records are tuples in the table's column
order (``hour_percentiles.PERCENTILE_COLUMNS``, passed in as ``columns``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from routewatch.storage.connection import Conn
from routewatch.storage.tables import META_TABLE, PROBE_HIST_HOURLY, PROBE_PERCENTILES_HOURLY

# routewatch_meta key: the newest hour of probe_hist_hourly whose percentiles
# are still to be computed (rows stored before migration 0009); absent once none is.
BACKFILL_KEY = "percentiles_backfill"

_DELETE_HOURS = f"DELETE FROM {PROBE_PERCENTILES_HOURLY} WHERE bucket = ANY($1::timestamptz[])"
_DELETE_MODELS = (
    f"DELETE FROM {PROBE_PERCENTILES_HOURLY} WHERE bucket = $1"
    " AND (router, model) IN (SELECT * FROM unnest($2::text[], $3::text[]))"
)
_BACKFILL_CURSOR = f"SELECT value::timestamptz FROM {META_TABLE} WHERE key = $1"
_SET_BACKFILL_CURSOR = (
    f"INSERT INTO {META_TABLE} (key, value) VALUES ($1, $2::timestamptz::text)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_END_BACKFILL = f"DELETE FROM {META_TABLE} WHERE key = $1"
_DELETE_BEFORE = f"DELETE FROM {PROBE_PERCENTILES_HOURLY} WHERE bucket < $1"
_HIST_HOUR_AT_OR_BEFORE = f"SELECT max(bucket) FROM {PROBE_HIST_HOURLY} WHERE bucket <= $1"


async def replace_hours(
    conn: Conn, hours: Sequence[datetime], records: Sequence[tuple[Any, ...]], columns: Sequence[str]
) -> None:
    """Make ``records`` the whole content of ``hours``."""
    if hours:
        await conn.execute(_DELETE_HOURS, list(hours))
    await _copy(conn, records, columns)


async def replace_models(
    conn: Conn,
    hour: datetime,
    models: Iterable[tuple[str, str]],
    records: Sequence[tuple[Any, ...]],
    columns: Sequence[str],
) -> None:
    """Make ``records`` the whole content of ``hour`` for the (router, model) pairs ``models``."""
    pairs = list(models)
    if pairs:
        routers, names = (list(col) for col in zip(*pairs, strict=True))
        await conn.execute(_DELETE_MODELS, hour, routers, names)
    await _copy(conn, records, columns)


async def _copy(conn: Conn, records: Sequence[tuple[Any, ...]], columns: Sequence[str]) -> None:
    if records:
        await conn.copy_records_to_table(PROBE_PERCENTILES_HOURLY, records=records, columns=list(columns))


async def backfill_cursor(conn: Conn) -> datetime | None:
    """The newest hour still to be backfilled, None when there is none."""
    value: datetime | None = await conn.fetchval(_BACKFILL_CURSOR, BACKFILL_KEY)
    return value


async def set_backfill_cursor(conn: Conn, hour: datetime | None) -> None:
    """Record the newest hour still to be backfilled (None: the backfill is done)."""
    if hour is None:
        await conn.execute(_END_BACKFILL, BACKFILL_KEY)
    else:
        await conn.execute(_SET_BACKFILL_CURSOR, BACKFILL_KEY, hour)


async def delete_before(conn: Conn, horizon: datetime) -> None:
    """Delete the hours before ``horizon`` (retention, with probe_hist_hourly's)."""
    await conn.execute(_DELETE_BEFORE, horizon)


async def hist_hour_at_or_before(conn: Conn, hour: datetime) -> datetime | None:
    """The newest hour of probe_hist_hourly not after ``hour`` (the backfill's next step), None if none."""
    value: datetime | None = await conn.fetchval(_HIST_HOUR_AT_OR_BEFORE, hour)
    return value
