"""What the model page reads beyond the aggregator's snapshot: history, hourly percentiles, served models.

Three small reads per (router, model), each bounded by an index:

- :func:`history_buckets`: every published figure of one window, the last
  snapshot per ``date_trunc`` bucket (``stats_history``'s primary key
  starts with router, model, window);
- :func:`model_hours`: the hourly p50 TTFT of the model as a whole
  (``probe_percentiles_hourly``, scope ``model``, by its (scope, model,
  bucket) index);
- :func:`served_model_counts`: probes per ``model_served`` value
  (``probe_results``, by its (model, started_at) index).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from routewatch.storage.connection import Conn
from routewatch.storage.history_queries import HISTORY_COLUMNS
from routewatch.storage.tables import PROBE_PERCENTILES_HOURLY, PROBE_RESULTS, STATS_HISTORY

# The figures a model page charts, as stats_history names them.
FIGURE_COLUMNS = tuple(c for c in HISTORY_COLUMNS[4:] if c not in ("input_tokens", "output_tokens"))

_HISTORY_BUCKETS = (
    f"SELECT DISTINCT ON (b) date_trunc($4, taken_at, 'UTC') AS b, taken_at, {', '.join(FIGURE_COLUMNS)} "
    f"FROM {STATS_HISTORY} "
    'WHERE router = $1 AND model = $2 AND "window" = $3 AND taken_at >= $5 AND taken_at <= $6 '
    "ORDER BY b, taken_at DESC"
)
_MODEL_HOURS = (
    f"SELECT bucket, attempts, ok, ttft_p50_ms FROM {PROBE_PERCENTILES_HOURLY} "
    "WHERE scope = 'model' AND model = $2 AND router = $1 AND bucket >= $3 AND bucket < $4 ORDER BY bucket"
)
_SERVED_MODELS = (
    f"SELECT model_served, count(*) AS n, (sum(count(*)) OVER ())::bigint AS total FROM {PROBE_RESULTS} "
    "WHERE model = $2 AND router = $1 AND started_at >= $3 AND started_at <= $4 "
    "GROUP BY model_served ORDER BY n DESC, model_served NULLS LAST LIMIT $5"
)


async def history_buckets(
    db: asyncpg.Pool | Conn,
    router: str,
    model: str,
    window: str,
    unit: str,
    start: datetime,
    end: datetime,
    *,
    timeout: float | None = None,
) -> list[asyncpg.Record]:
    """Per ``unit`` bucket (``hour``, ``day``) in ``[start, end]``, the newest snapshot's figures.

    Records: ``b`` (bucket start), ``taken_at`` and :data:`FIGURE_COLUMNS`, buckets ascending.
    """
    return await db.fetch(_HISTORY_BUCKETS, router, model, window, unit, start, end, timeout=timeout)


async def model_hours(
    db: asyncpg.Pool | Conn, router: str, model: str, start: datetime, end: datetime, *, timeout: float | None = None
) -> list[asyncpg.Record]:
    """The model's hourly rows in ``[start, end)``: ``bucket``, ``attempts``, ``ok``, ``ttft_p50_ms``."""
    return await db.fetch(_MODEL_HOURS, router, model, start, end, timeout=timeout)


async def served_model_counts(
    db: asyncpg.Pool | Conn,
    router: str,
    model: str,
    start: datetime,
    end: datetime,
    limit: int,
    *,
    timeout: float | None = None,
) -> list[asyncpg.Record]:
    """Probes per ``model_served`` (null: the router named none) in ``[start, end]``, most first.

    At most ``limit`` records: ``model_served``, ``n`` and ``total`` (every probe in the range, so
    the values left out past ``limit`` can still be counted).
    """
    return await db.fetch(_SERVED_MODELS, router, model, start, end, limit, timeout=timeout)
