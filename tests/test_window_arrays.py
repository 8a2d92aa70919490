"""The windows kept as arrays (routewatch/aggregator/window_arrays.py) publish what the table gives.

A leader's refreshes a minute apart add each minute's probes to the arrays
(``RefreshReport.added``) instead of laying them out again; after every
refresh, ``SlidingWindows.stats()`` must equal ``rollup.window_stats`` read
from the table, every cell of every window field by field, for mixed probes
(failures, rate limits, overloaded probes, two providers and regions of one
model, a model without a provider), in both storage modes, for the leader and
for a standby following it (which adds what each series gained), through a value
far outside every span (its cells move to a wider span), a series new in the hour, late probes and the hour
turning.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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


@dataclass
class Pair:
    """A leader's windows and a standby's, following the leader on a connection of its own."""

    conn: asyncpg.Connection
    other: asyncpg.Connection
    leader: SlidingWindows = field(default_factory=lambda: SlidingWindows(WINDOWS))
    standby: SlidingWindows = field(default_factory=lambda: SlidingWindows(WINDOWS))

    async def refresh_and_compare(self, now: datetime, what: str) -> None:
        """A leader's refresh at ``now`` (the current hour known from the last one), the
        standby's follow; both compared with the table."""
        report = await refresh_hist(self.conn, now=now, known=self.leader.known_hour())
        await self.leader.update(self.conn, report)
        await self.leader.note_position(self.conn)
        await same_as_table(self.conn, self.leader, now, what)
        await self.standby.follow(self.other, now)
        await same_as_table(self.conn, self.standby, now, f"standby: {what}")


async def test_array_windows_publish_what_the_table_gives(conn: asyncpg.Connection, db_dsn: str, mode: str) -> None:
    other = await asyncpg.connect(db_dsn)
    try:
        await run_steps(Pair(conn, other), mode)
    finally:
        await other.close()


async def run_steps(pair: Pair, mode: str) -> None:
    conn = pair.conn
    await migrate(conn, mode=mode)
    rng = np.random.default_rng(21)
    start = floor_hour(await conn.fetchval("SELECT now()")) + timedelta(minutes=5)
    await store(conn, mode, mixed(spread(start - timedelta(days=3), start, 2000, rng), rng, SERIES))
    sliding, standby = pair.leader, pair.standby
    await pair.refresh_and_compare(start, "first refresh")
    assert sliding.array_compiles == standby.array_compiles == 1

    # A minute of probes of every series at a time: added to the arrays, not laid out again.
    t = start
    for minute in range(8):
        t += timedelta(minutes=1)
        await store(conn, mode, mixed(spread(t - timedelta(minutes=1), t, len(SERIES), rng), rng, SERIES))
        await pair.refresh_and_compare(t, f"minute {minute}")
    assert sliding.array_compiles <= 3, "most minutes were added to the arrays"
    assert standby.array_compiles <= 3, "the standby added what each series gained, too"
    compiles = sliding.array_compiles

    # A refresh with nothing new changes nothing.
    t += timedelta(seconds=10)
    await pair.refresh_and_compare(t, "nothing new")
    assert sliding.array_compiles == compiles

    # A TTFT far outside every cell's span: its cells move to wider spans, still equal.
    outlier = mixed([t], rng, SERIES[:1])[0]
    outlier = replace(outlier, ok=True, error_class=None, error_detail=None, ttft_ms=900_000.0, ttfat_ms=900_000.0)
    t += timedelta(minutes=1)
    await store(conn, mode, [outlier])
    await pair.refresh_and_compare(t, "an outlier")
    assert sliding.array_compiles == compiles, "moved, not laid out again"

    # A series new in the hour (another region), with late probes 2 and 30 hours back.
    newcomer = [("r", "m/a", "P1", "ap"), *SERIES]
    late = [t - timedelta(hours=2), t - timedelta(hours=30)]
    t += timedelta(minutes=1)
    await store(conn, mode, mixed([*late, *spread(t - timedelta(minutes=1), t, 5, rng)], rng, newcomer))
    await pair.refresh_and_compare(t, "a new series and late probes")

    # Then minutes again, and the hour turning under them.
    for minute in range(4):
        t += timedelta(minutes=20)
        await store(conn, mode, mixed(spread(t - timedelta(minutes=20), t, 12, rng), rng, newcomer))
        await pair.refresh_and_compare(t, f"after the hour turned, step {minute}")
    assert floor_hour(t) > floor_hour(start)
    assert sliding.rebuilds == 1, "the comparison is with a leader in step, never rebuilt"
    assert standby.rebuilds == 2, (
        "the standby rebuilt once, for the probe 30 h late (an hour whose rows it does not keep)"
    )
