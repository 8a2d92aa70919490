"""Sliding windows in memory (routewatch/aggregator/sliding.py) give what the table gives.

Each step changes the data the way production does (new probes in the
current hour, late probes in earlier hours, the hour turning, another
process refreshing), runs the real ``refresh_hist`` on a real database, and
compares ``SlidingWindows.stats()`` with ``window_stats`` read from the
table at the same moment: every cell of every window, equal field by field.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime, timedelta

import asyncpg
import numpy as np
import pytest
from mixed_probes import mixed, spread

from routewatch.aggregator.rollup import floor_hour, refresh_hist, window_stats
from routewatch.aggregator.sliding import SlidingWindows
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.hist_queries import bump_hist_generation, prune_changes
from routewatch.storage.housekeeping import PartitionCache
from routewatch.storage.migrate import migrate
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.db

WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
SERIES = [("r", "m/a", "P1", "eu"), ("r", "m/a", "P2", "us"), ("r2", "m/b", None, "eu")]


def probes(times: list[datetime], rng: np.random.Generator) -> list[ProbeResult]:
    """One probe per time, cycling through SERIES (mixed_probes.mixed)."""
    return mixed(times, rng, SERIES)


async def store(conn: asyncpg.Connection, results: list[ProbeResult]) -> None:
    await PartitionCache().ensure_for(conn, "plain", (r.started_at for r in results))
    await write_batch(conn, results)


async def check(conn: asyncpg.Connection, sliding: SlidingWindows, now: datetime) -> None:
    """Refresh at ``now``, update the windows, and compare with the table."""
    report = await refresh_hist(conn, now=now)
    await sliding.update(conn, report)
    mine = sliding.stats()
    table = await window_stats(conn, WINDOWS, now)
    assert set(mine) == set(table)
    for name in WINDOWS:
        assert table[name], f"window {name} is empty: the test compares nothing"
        assert set(mine[name]) == set(table[name]), name
        for key, cell in table[name].items():
            assert mine[name][key] == cell, (name, key)


async def test_sliding_windows_follow_the_table(conn: asyncpg.Connection) -> None:
    await migrate(conn, mode="plain")
    rng = np.random.default_rng(11)
    now = floor_hour(await conn.fetchval("SELECT now()")) + timedelta(minutes=20)
    await store(conn, probes(spread(now - timedelta(days=7, hours=2), now, 3000, rng), rng))
    sliding = SlidingWindows(WINDOWS)

    await check(conn, sliding, now)  # first refresh: built from the table
    assert sliding.rebuilds == 1

    # New probes in the current hour.
    later = now + timedelta(minutes=5)
    await store(conn, probes(spread(now, later, 40, rng), rng))
    await check(conn, sliding, later)

    # Late probes in earlier hours: 3 h ago (in 24h and 7d), 30 h ago (7d only), 9 days ago (in no window).
    late = [
        later - timedelta(hours=3),
        later - timedelta(hours=30),
        later - timedelta(hours=30, minutes=5),
        later - timedelta(days=9),
    ]
    await store(conn, probes(late, rng))
    await check(conn, sliding, later + timedelta(seconds=30))
    assert sliding.rebuilds == 1, "late rows are applied as a swap of the recomputed hours, not a rebuild"

    # The hour turns, with probes on both sides of it and one that arrives late for the old hour.
    turn = floor_hour(later) + timedelta(hours=1, minutes=2)
    await store(conn, probes(spread(later, turn, 60, rng), rng))
    await check(conn, sliding, turn)
    await store(conn, probes([turn - timedelta(minutes=4)], rng))
    await check(conn, sliding, turn + timedelta(minutes=1))

    # Two hours at once, the last probes of the slid-out hour included.
    jump = turn + timedelta(hours=2)
    await store(conn, probes(spread(turn, jump, 80, rng), rng))
    await check(conn, sliding, jump)
    assert sliding.rebuilds == 1

    # A refresh this copy did not see (another aggregator was leader): rebuilt, still equal.
    await store(conn, probes(spread(jump, jump + timedelta(minutes=3), 20, rng), rng))
    await refresh_hist(conn, now=jump + timedelta(minutes=3))
    await check(conn, sliding, jump + timedelta(minutes=4))
    assert sliding.rebuilds == 2

    # Retention deleted hours (it bumps the generation the same way): rebuilt.
    async with conn.transaction():
        await conn.execute("DELETE FROM probe_hist_hourly WHERE bucket < $1", jump - timedelta(days=6))
        await bump_hist_generation(conn)
    await check(conn, sliding, jump + timedelta(minutes=5))
    assert sliding.rebuilds == 3


async def test_a_week_later_every_hour_has_slid_through(conn: asyncpg.Connection) -> None:
    """Hour by hour for 8 days: every hour enters each window and leaves it again."""
    await migrate(conn, mode="plain")
    rng = np.random.default_rng(12)
    start = floor_hour(await conn.fetchval("SELECT now()")) - timedelta(days=8)
    sliding = SlidingWindows(WINDOWS)
    t = start
    for step in range(8 * 24 + 3):
        nxt = t + timedelta(minutes=47 if step % 5 else 150)  # mostly within the hour, sometimes 2+ hours
        await store(conn, probes(spread(t, nxt, 6, rng), rng))
        t = nxt
        report = await refresh_hist(conn, now=t)
        await sliding.update(conn, report)
    assert sliding.rebuilds == 1
    await check(conn, sliding, t + timedelta(seconds=1))


async def test_capped_providers_follow_the_table(conn: asyncpg.Connection) -> None:
    """A router naming a new provider on most answers, through hour turns, late rows and gaps.

    The in-memory windows equal the table; the table never holds more than CAP names for the model
    within the longest window (the cap's horizon), whether the admitted names are known from the
    windows in memory or read back; and a slot frees up once its name has left every window.
    """
    cap, windows = 3, {"1h": 3600.0, "3h": 3 * 3600.0}
    await migrate(conn, mode="plain")
    rng = np.random.default_rng(13)
    names = itertools.count()

    def hostile(times: list[datetime]) -> list[ProbeResult]:
        out = probes(times, rng)
        return [
            replace(p, router="r", model="m/h", provider=None if i % 5 == 4 else f"n{next(names)}")
            for i, p in enumerate(out)
        ]

    t = floor_hour(await conn.fetchval("SELECT now()")) - timedelta(hours=10)
    sliding = SlidingWindows(windows, max_providers=cap)
    admitted_over_time: list[set[str]] = []
    for step in range(16):
        nxt = t + timedelta(minutes=25 if step % 4 else 100)  # now and then past an hour turn, or two
        batch = hostile(spread(t, nxt, 12, rng))
        if step % 3 == 2:
            batch += hostile([nxt - timedelta(hours=2)])  # late, for an hour already rolled up
        await store(conn, batch)
        t = nxt
        report = await refresh_hist(conn, now=t, known=sliding.known_hour(), max_providers=cap, label_hours=3)
        await sliding.update(conn, report)
        mine, table = sliding.stats(), await window_stats(conn, windows, t, max_providers=cap)
        assert mine == table, step
        horizon = floor_hour(t) - timedelta(hours=3)
        held = {
            r["provider"]
            for r in await conn.fetch(
                "SELECT DISTINCT provider FROM probe_hist_hourly WHERE model = 'm/h' AND bucket >= $1", horizon
            )
        }
        named = held - {"other", ""}
        assert len(named) <= cap, (step, sorted(named))
        admitted_over_time.append(named)
        for cells in table.values():
            labels = {k[3] for k in cells if k[:3] == ("r", "m/h", "provider")}
            assert len(labels) <= cap + 2 and "" not in labels, (step, labels)
    assert sliding.rebuilds == 1, "every refresh took the admitted names from memory"
    assert len(set().union(*admitted_over_time)) > cap, "slots free up as names leave the windows"


async def same_as_table(conn: asyncpg.Connection, sliding: SlidingWindows, now: datetime, what: str) -> None:
    """Every cell of every window of ``sliding`` equals what the table gives at ``now``."""
    mine, table = sliding.stats(), await window_stats(conn, WINDOWS, now)
    for name in WINDOWS:
        assert table[name], f"window {name} is empty: the test compares nothing"
        assert set(mine[name]) == set(table[name]), (what, name)
        for key, cell in table[name].items():
            assert mine[name][key] == cell, (what, name, key)


async def test_a_follower_keeps_the_leaders_sums(conn: asyncpg.Connection, db_dsn: str) -> None:
    """A second SlidingWindows on its own connection follows what the leader's refreshes changed.

    After each step the follower's figures equal the table's; it rebuilds only where it cannot
    tell what changed (first follow, an hour recomputed older than the hours it keeps, retention
    inside a window, the record of changes pruned past its last follow), and follows otherwise.
    """
    await migrate(conn, mode="plain")
    other = await asyncpg.connect(db_dsn)
    try:
        rng = np.random.default_rng(14)
        now = floor_hour(await conn.fetchval("SELECT now()")) + timedelta(minutes=20)
        await store(conn, probes(spread(now - timedelta(days=7, hours=2), now, 3000, rng), rng))
        leader, follower = SlidingWindows(WINDOWS), SlidingWindows(WINDOWS)

        async def lead(at: datetime) -> None:
            await leader.update(conn, await refresh_hist(conn, now=at, known=leader.known_hour()))
            await leader.note_position(conn)

        async def follow(at: datetime, what: str, rebuilds: int) -> None:
            await follower.follow(other, at)
            await same_as_table(conn, follower, at, what)
            assert follower.stats() == leader.stats(), what
            assert follower.rebuilds == rebuilds, what

        await lead(now)
        await follow(now, "first follow: built from the table", 1)

        later = now + timedelta(minutes=5)
        await store(conn, probes(spread(now, later, 40, rng), rng))
        await lead(later)
        await follow(later, "new probes in the current hour", 1)
        follows = follower.follows

        # Late probes 2 h ago: an hour the follower keeps the rows of, swapped as the leader swaps it.
        await store(conn, probes([later - timedelta(hours=2), later - timedelta(hours=2, minutes=1)], rng))
        await lead(later + timedelta(seconds=10))
        await follow(later + timedelta(seconds=10), "late probes 2 h ago", 1)
        assert follower.follows == follows + 1

        # Late probes 30 h ago: the follower does not keep that hour's old rows, so it rebuilds.
        await store(conn, probes([later - timedelta(hours=30)], rng))
        await lead(later + timedelta(seconds=20))
        await follow(later + timedelta(seconds=20), "late probes 30 h ago", 2)

        # The hour turns; then a probe that started before the turn arrives for the old hour.
        turn = floor_hour(later) + timedelta(hours=1, minutes=1)
        await store(conn, probes(spread(later, turn, 60, rng), rng))
        await lead(turn)
        await follow(turn, "the hour turned", 2)
        await store(conn, probes([turn - timedelta(minutes=3)], rng))
        await lead(turn + timedelta(minutes=1))
        await follow(turn + timedelta(minutes=1), "a late probe for the hour just completed", 2)

        # The follower misses three refreshes, two hours pass, late rows land in between.
        t = turn + timedelta(minutes=1)
        for step in range(3):
            nxt = t + timedelta(minutes=50)
            await store(conn, probes([*spread(t, nxt, 30, rng), nxt - timedelta(minutes=70 + step)], rng))
            t = nxt
            await lead(t)
        await follow(t, "three refreshes and two hour turns missed", 2)
        assert leader.rebuilds == 1, "the leader never rebuilt: the comparison is with a leader in step"

        # Retention deletes hours that are in no window: nothing to rebuild.
        await store(conn, probes([t - timedelta(days=9)], rng))
        await lead(t + timedelta(seconds=5))
        async with conn.transaction():
            await conn.execute("DELETE FROM probe_hist_hourly WHERE bucket < $1", floor_hour(t) - timedelta(days=8))
            await bump_hist_generation(conn)
        await follow(t + timedelta(seconds=10), "retention outside every window", 2)

        # Retention inside the longest window: rebuilt, as the leader rebuilds.
        async with conn.transaction():
            await conn.execute("DELETE FROM probe_hist_hourly WHERE bucket < $1", floor_hour(t) - timedelta(days=6))
            await bump_hist_generation(conn)
        await lead(t + timedelta(seconds=15))
        await follow(t + timedelta(seconds=15), "retention inside the 7d window", 3)

        # The record of changes pruned past the follower's last follow: it cannot tell, so it rebuilds.
        await store(conn, probes(spread(t, t + timedelta(minutes=2), 10, rng), rng))
        await lead(t + timedelta(minutes=2))
        await prune_changes(conn, timedelta(0))
        await follow(t + timedelta(minutes=2), "changes pruned", 4)
        await store(conn, probes(spread(t + timedelta(minutes=2), t + timedelta(minutes=3), 10, rng), rng))
        await lead(t + timedelta(minutes=3))
        await follow(t + timedelta(minutes=3), "after the pruning, following again", 4)
    finally:
        await other.close()
