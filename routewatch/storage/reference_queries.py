"""The exact reference: window figures computed over raw rows with ``percentile_cont``.

Tests and benchmarks measure the hourly histogram rollup against it; its cost
grows with the window's rows, which is why the aggregator does not use it.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from routewatch.storage.connection import Conn
from routewatch.storage.tables import PROBE_RESULTS

# Rows flagged prober_overloaded were measured while the prober itself was
# behind; they are counted apart and left out of every published figure. A
# budget spent reasoning (budget_exhausted) is not attempted against the router.
# percentile_cont interpolates linearly, like numpy's default.
_WINDOW_COUNTS = f"""
SELECT
    router, model,
    count(*) FILTER (WHERE NOT prober_overloaded
                     AND error_class IS DISTINCT FROM 'budget_exhausted')     AS attempts,
    count(*) FILTER (WHERE ok AND NOT prober_overloaded)                      AS ok,
    count(*) FILTER (WHERE error_class = 'http_429' AND NOT prober_overloaded) AS rate_limited,
    count(*) FILTER (WHERE prober_overloaded)                                 AS overloaded,
    percentile_cont(0.5)  WITHIN GROUP (ORDER BY ttft_ms)    FILTER (WHERE ok AND NOT prober_overloaded) AS ttft_p50,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft_ms)    FILTER (WHERE ok AND NOT prober_overloaded) AS ttft_p95,
    percentile_cont(0.5)  WITHIN GROUP (ORDER BY ttfat_ms)   FILTER (WHERE ok AND NOT prober_overloaded) AS ttfat_p50,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY ttfat_ms)   FILTER (WHERE ok AND NOT prober_overloaded) AS ttfat_p95,
    percentile_cont(0.5)  WITHIN GROUP (ORDER BY output_tps) FILTER (WHERE ok AND NOT prober_overloaded) AS tps_p50,
    coalesce(sum(input_tokens), 0)  AS input_tokens,
    coalesce(sum(output_tokens), 0) AS output_tokens,
    min(started_at) AS first_probe,
    max(started_at) AS last_probe
FROM {PROBE_RESULTS}
WHERE started_at >= $1 AND started_at < $2
GROUP BY router, model
"""


async def exact_window_counts(conn: Conn, start: datetime, end: datetime) -> list[asyncpg.Record]:
    """Per (router, model), counts and exact percentiles of the probes started in ``[start, end)``.

    Records: router, model, attempts, ok, rate_limited, overloaded,
    ttft_p50, ttft_p95, ttfat_p50, ttfat_p95, tps_p50, input_tokens,
    output_tokens, first_probe, last_probe.
    """
    return await conn.fetch(_WINDOW_COUNTS, start, end)
