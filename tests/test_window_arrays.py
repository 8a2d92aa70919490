"""The windows kept as arrays (aggregator/window_arrays.py) publish what the table gives.

A leader's refreshes a minute apart add each minute's probes to the arrays
(``RefreshReport.added``) instead of laying them out again; after every
refresh, ``SlidingWindows.stats()`` must equal ``rollup.window_stats`` read
from the table, every cell of every window field by field, for mixed probes
(failures, rate limits, overloaded probes, two providers and regions of one
model, a model without a provider), in both storage modes, through a value
far outside every span (its cells move to a wider span), a series new in the hour, late probes and the hour
turning.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import asyncpg
import numpy as np
import pytest
from mixed_probes import mixed, spread
from test_sliding import WINDOWS, same_as_table

from routewatch.aggregator.rollup import floor_hour, refresh_hist
from routewatch.aggregator.sliding import SlidingWindows
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.housekeeping import PartitionCache
from routewatch.storage.migrate import migrate
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.db

SERIES = [("r", "m/a", "P1", "eu"), ("r", "m/a", "P2", "us"), ("r2", "m/b", None, "eu"), ("r2", "m/c", "P1", "eu")]


async def store(conn: asyncpg.Connection, mode: str, results: list[ProbeResult]) -> None:
    await PartitionCache().ensure_for(conn, mode, (r.started_at for r in results))
    await write_batch(conn, results)


async def refresh_and_compare(conn: asyncpg.Connection, sliding: SlidingWindows, now: datetime, what: str) -> None:
    """A leader's refresh at ``now`` (the current hour known from the last one), then the
    windows compared with the table."""
    report = await refresh_hist(conn, now=now, known=sliding.known_hour())
    await sliding.update(conn, report)
    await same_as_table(conn, sliding, now, what)


async def test_array_windows_publish_what_the_table_gives(conn: asyncpg.Connection, mode: str) -> None:
    await migrate(conn, mode=mode)
    rng = np.random.default_rng(21)
    start = floor_hour(await conn.fetchval("SELECT now()")) + timedelta(minutes=5)
    await store(conn, mode, mixed(spread(start - timedelta(days=3), start, 2000, rng), rng, SERIES))
    sliding = SlidingWindows(WINDOWS)
    await refresh_and_compare(conn, sliding, start, "first refresh")
    assert sliding.array_compiles == 1

    # A minute of probes of every series at a time: added to the arrays, not laid out again.
    t = start
    for minute in range(8):
        t += timedelta(minutes=1)
        await store(conn, mode, mixed(spread(t - timedelta(minutes=1), t, len(SERIES), rng), rng, SERIES))
        await refresh_and_compare(conn, sliding, t, f"minute {minute}")
    assert sliding.array_compiles <= 3, "most minutes were added to the arrays"
    compiles = sliding.array_compiles

    # A refresh with nothing new changes nothing.
    t += timedelta(seconds=10)
    await refresh_and_compare(conn, sliding, t, "nothing new")
    assert sliding.array_compiles == compiles

    # A TTFT far outside every cell's span: its cells move to wider spans, still equal.
    outlier = mixed([t], rng, SERIES[:1])[0]
    outlier = replace(outlier, ok=True, error_class=None, error_detail=None, ttft_ms=900_000.0, ttfat_ms=900_000.0)
    t += timedelta(minutes=1)
    await store(conn, mode, [outlier])
    await refresh_and_compare(conn, sliding, t, "an outlier")
    assert sliding.array_compiles == compiles, "moved, not laid out again"

    # A series new in the hour (another region), with late probes 2 and 30 hours back.
    newcomer = [("r", "m/a", "P1", "ap"), *SERIES]
    late = [t - timedelta(hours=2), t - timedelta(hours=30)]
    t += timedelta(minutes=1)
    await store(conn, mode, mixed([*late, *spread(t - timedelta(minutes=1), t, 5, rng)], rng, newcomer))
    await refresh_and_compare(conn, sliding, t, "a new series and late probes")

    # Then minutes again, and the hour turning under them.
    for minute in range(4):
        t += timedelta(minutes=20)
        await store(conn, mode, mixed(spread(t - timedelta(minutes=20), t, 12, rng), rng, newcomer))
        await refresh_and_compare(conn, sliding, t, f"after the hour turned, step {minute}")
    assert floor_hour(t) > floor_hour(start)
    assert sliding.rebuilds == 1, "the comparison is with a leader in step, never rebuilt"
