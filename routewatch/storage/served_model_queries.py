"""Which model answered, per (router, model) over a time range, read from ``probe_results``.

The served model is the router's answer to "who replied?" (``model_served``,
read by the router's dialect). It is not a series of the hourly rollup: the
``by=served_model`` breakdown reads the raw rows of one model and window on
request, which the ``probe_results`` (model, started_at) index keeps to that
model's rows (see docs/router-dialects.md for why).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from routewatch.storage.connection import Conn
from routewatch.storage.tables import PROBE_RESULTS

# The most common names listed; the rest are summed (a router can name a new model on every answer).
MAX_SERVED_MODELS = 20

_SERVED = f"""
SELECT model_served,
       count(*) AS attempted,
       count(*) FILTER (WHERE ok) AS ok,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) FILTER (WHERE ok) AS ttft_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft_ms) FILTER (WHERE ok) AS ttft_p95,
       sum(count(*)) OVER () AS all_attempted,
       sum(count(*) FILTER (WHERE ok)) OVER () AS all_ok
FROM {PROBE_RESULTS}
WHERE model = $2 AND router = $1 AND started_at >= $3 AND started_at <= $4 AND NOT prober_overloaded
GROUP BY model_served
ORDER BY count(*) DESC, model_served NULLS LAST
LIMIT $5
"""


async def served_models(
    conn: Conn,
    router: str,
    model: str,
    start: datetime,
    end: datetime,
    *,
    timeout: float | None = None,
) -> list[asyncpg.Record]:
    """Per served model (NULL: not named) of the probes in ``[start, end]``, the most probes first.

    Records ``model_served``, ``attempted``, ``ok``, ``ttft_p50`` and ``ttft_p95``
    (exact, over the ok probes) and, on every row, ``all_attempted`` and ``all_ok``
    over every served model, so that the ones past :data:`MAX_SERVED_MODELS` can be summed.
    Prober-overloaded probes are left out, as in every published figure.
    """
    return await conn.fetch(_SERVED, router, model, start, end, MAX_SERVED_MODELS, timeout=timeout)
