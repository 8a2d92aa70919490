"""Exact stats over raw rows: the reference the rollups are measured against.

The published stats come from the hourly histogram rollups
(``aggregator/rollup.py``). ``window_counts`` computes the same figures
directly from ``probe_results`` with exact percentiles (``percentile_cont``,
linear interpolation like numpy's default) over ok probes in the window: the
naive baseline for benchmarks and the exact reference for tests. Its cost
grows with the window's rows, which is why the aggregator no longer uses it.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from routewatch.aggregator.stats import WindowCounts

# Rows flagged prober_overloaded were measured while the prober itself was
# behind; they are counted apart and left out of every published figure.
_WINDOW_COUNTS = """
SELECT router, model,
       count(*) FILTER (WHERE NOT prober_overloaded)                             AS attempts,
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
FROM probe_results
WHERE started_at >= $1 AND started_at < $2
GROUP BY router, model
"""


async def window_counts(conn: asyncpg.Connection, start: datetime, end: datetime) -> list[WindowCounts]:
    """Counts and exact percentiles per (router, model) for ``[start, end)``."""
    rows = await conn.fetch(_WINDOW_COUNTS, start, end)
    return [
        WindowCounts(
            router=r["router"],
            model=r["model"],
            attempts=r["attempts"],
            ok=r["ok"],
            rate_limited=r["rate_limited"],
            overloaded=r["overloaded"],
            ttft_p50_ms=r["ttft_p50"],
            ttft_p95_ms=r["ttft_p95"],
            ttfat_p50_ms=r["ttfat_p50"],
            ttfat_p95_ms=r["ttfat_p95"],
            tps_p50=r["tps_p50"],
            input_tokens=r["input_tokens"],
            output_tokens=r["output_tokens"],
            first_probe=r["first_probe"],
            last_probe=r["last_probe"],
        )
        for r in rows
    ]
