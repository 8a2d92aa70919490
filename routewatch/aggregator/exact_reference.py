"""Exact stats over raw rows: the reference the rollups are measured against.

The published stats come from the hourly histogram rollups
(``routewatch/aggregator/rollup.py``). ``window_counts`` computes the same figures
directly from ``probe_results`` with exact percentiles (``percentile_cont``,
linear interpolation like numpy's default; the query is
``routewatch.storage.reference_queries``) over ok probes in the window: the
naive baseline for benchmarks and the exact reference for tests. Its cost
grows with the window's rows, which is why the aggregator no longer uses it.
"""

from __future__ import annotations

from datetime import datetime

from routewatch.aggregator.stats import WindowCounts
from routewatch.storage.connection import Conn
from routewatch.storage.reference_queries import exact_window_counts


async def window_counts(conn: Conn, start: datetime, end: datetime) -> list[WindowCounts]:
    """Counts and exact percentiles per (router, model) for ``[start, end)``."""
    rows = await exact_window_counts(conn, start, end)
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
