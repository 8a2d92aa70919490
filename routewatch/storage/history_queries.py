"""``stats_history``: the published figures over time, written and read back.

The aggregator records a snapshot's figures (:func:`copy_history`); readers
ask what was published at a time (:func:`last_published`) or one figure's
course over a range (:func:`series_points`, the API's ``/series``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from routewatch.storage.connection import Conn
from routewatch.storage.tables import STATS_HISTORY

# One row: a model's figures for one window at one snapshot. COPY writes this order.
HISTORY_COLUMNS = (
    "taken_at",
    "router",
    "model",
    "window",
    "attempts",
    "ok",
    "rate_limited",
    "error_rate",
    "error_rate_excl_429",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "ttfat_p50_ms",
    "ttfat_p95_ms",
    "tps_p50",
    "input_tokens",
    "output_tokens",
)


def _quoted(column: str) -> str:
    # "window" is a reserved word in SQL.
    return '"window"' if column == "window" else column


_LAST_PUBLISHED = (
    f"SELECT {', '.join(map(_quoted, HISTORY_COLUMNS))} FROM {STATS_HISTORY} "
    'WHERE router = $1 AND model = $2 AND "window" = $3 AND taken_at <= $4 '
    "ORDER BY taken_at DESC LIMIT 1"
)
# Per bucket, the newest snapshot's value (DISTINCT ON keeps the first row of each b).
_SERIES = (
    "SELECT DISTINCT ON (b) date_trunc($4, taken_at, 'UTC') AS b, taken_at, {column} AS v "
    f"FROM {STATS_HISTORY} "
    'WHERE router = $1 AND model = $2 AND "window" = $3 AND taken_at >= $5 AND taken_at <= $6 '
    "ORDER BY b, taken_at DESC"
)
_FIGURES = frozenset(HISTORY_COLUMNS[4:])  # the columns a series can follow


async def copy_history(conn: Conn, rows: Sequence[tuple[object, ...]]) -> None:
    """Append rows, each a tuple in :data:`HISTORY_COLUMNS` order."""
    if rows:
        await conn.copy_records_to_table(STATS_HISTORY, records=rows, columns=HISTORY_COLUMNS)


async def last_published(conn: Conn, router: str, model: str, window: str, at: datetime) -> asyncpg.Record | None:
    """The row (:data:`HISTORY_COLUMNS`) of the last snapshot at or before ``at``, or None."""
    return await conn.fetchrow(_LAST_PUBLISHED, router, model, window, at)


async def series_points(
    db: asyncpg.Pool | Conn,
    router: str,
    model: str,
    window: str,
    column: str,
    unit: str,
    start: datetime,
    end: datetime,
    *,
    timeout: float | None = None,
) -> list[asyncpg.Record]:
    """One figure (``column``) per ``unit`` (a ``date_trunc`` unit, in UTC) over ``[start, end]``.

    Records ``b`` (the bucket), ``taken_at`` and ``v``: the value of the
    newest snapshot in each bucket, buckets ascending. ValueError if
    ``column`` is not one of the figures of :data:`HISTORY_COLUMNS`.
    """
    if column not in _FIGURES:
        raise ValueError(f"{column!r} is not a figure of {STATS_HISTORY}")
    return await db.fetch(_SERIES.format(column=column), router, model, window, unit, start, end, timeout=timeout)
