"""The rollup's catch-up (routewatch/aggregator/rollup.py): a long backlog taken in with bounded memory, same results.

An aggregator that was down while probers kept writing takes in every batch
stored meanwhile in one ``refresh_hist``. These tests store the same probes
the way probers do and compare that one catch-up, read a few raw rows at a
time, with the same data taken in hour by hour, and with the catch-up read
whole (``chunk_rows=inf``): the same ``probe_hist_hourly`` rows to the byte,
the same published figures (from the table and from the leader's windows in
memory), the same capped provider names. And the peak memory of a catch-up
does not grow with the backlog.
"""

from __future__ import annotations

import itertools
import math
import tracemalloc
from dataclasses import replace
from datetime import datetime, timedelta

import asyncpg
import numpy as np
import pytest
from factories import probe_result
from test_sliding import probes, spread, store

from routewatch.aggregator.model_state_store import RecentProbes
from routewatch.aggregator.rollup import HOUR, RefreshReport, floor_hour, refresh_hist, window_stats
from routewatch.aggregator.sliding import SlidingWindows
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.housekeeping import PartitionCache
from routewatch.storage.migrate import migrate
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.db

WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
CAP = 3
HOSTILE = ("r", "m/h")  # a router naming a new provider on most answers
TABLE = "SELECT * FROM probe_hist_hourly ORDER BY bucket, router, model, provider, region, prompt, methodology"


def with_hostile(results: list[ProbeResult], names: itertools.count[int]) -> list[ProbeResult]:
    """Every fourth probe made the hostile model's: a new name, or none, or the literal "other"."""
    out = []
    for i, p in enumerate(results):
        if i % 4 == 3:
            n = next(names)
            provider = None if n % 7 == 6 else "other" if n % 11 == 10 else f"name-{n:04d}"
            p = replace(p, router=HOSTILE[0], model=HOSTILE[1], provider=provider)
        out.append(p)
    return out


async def forget_rollup(conn: asyncpg.Connection, pending_since: datetime | None = None) -> None:
    """As if no aggregator had run: no hourly rows, the batches pending (those logged from
    ``pending_since`` on, if given, the rest taken in)."""
    await conn.execute("DELETE FROM probe_hist_hourly")
    await conn.execute(
        "UPDATE probe_ingest_log SET hist_done = ($1::timestamptz IS NOT NULL AND first_started < $1)",
        pending_since,
    )


async def published(conn: asyncpg.Connection, now: datetime) -> object:
    return await window_stats(conn, WINDOWS, now, max_providers=CAP)


async def test_a_catch_up_equals_hour_by_hour_refreshes(conn: asyncpg.Connection, mode: str) -> None:
    """39 hours of probes (4 series, one of them hostile, late probes now and then), taken in at
    each store, then again in one catch-up read 7 raw rows at a time, then in one read whole."""
    await migrate(conn, mode=mode)
    rng = np.random.default_rng(21)
    names = itertools.count()
    start = floor_hour(await conn.fetchval("SELECT now()")) - timedelta(hours=40)
    steps: list[list[ProbeResult]] = []
    t = start
    for step in range(75):
        nxt = t + timedelta(minutes=23 if step % 6 else 70)  # across an hour turn now and then
        batch = with_hostile(probes(spread(t, nxt, 12, rng), rng), names)
        if step > 10 and step % 5 == 4:  # late: for an hour already rolled up, after the cap filled
            batch += with_hostile(probes([nxt - timedelta(hours=2, minutes=7)] * 4, rng), names)
        steps.append(batch)
        t = nxt
    end = t + timedelta(seconds=1)

    # Hour by hour: each batch stored and taken in, the windows in memory following.
    sliding = SlidingWindows(WINDOWS, max_providers=CAP)
    for batch in steps:
        await PartitionCache().ensure_for(conn, mode, (p.started_at for p in batch))
        await write_batch(conn, batch)
        at = max(p.started_at for p in batch) + timedelta(seconds=1)
        report = await refresh_hist(conn, now=at, known=sliding.known_hour(), max_providers=CAP)
        await sliding.update(conn, report)
    report = await refresh_hist(conn, now=end, known=sliding.known_hour(), max_providers=CAP)
    await sliding.update(conn, report)
    table = [tuple(r) for r in await conn.fetch(TABLE)]
    stats = await published(conn, end)
    assert sliding.stats() == stats
    assert sliding.rebuilds == 1
    assert stats["7d"][("r", "m/a")].counts.attempts > 400, "the windows hold the data"

    # The capped names are the first CAP named by first probe, whatever the order batches arrived in.
    everything = [p for batch in steps for p in batch if p.model == HOSTILE[1]]
    named = [p.provider for p in sorted(everything, key=lambda p: p.started_at) if p.provider not in (None, "other")]
    first_names = list(dict.fromkeys(named))[:CAP]
    stored = {
        r["provider"] for r in await conn.fetch("SELECT DISTINCT provider FROM probe_hist_hourly WHERE model = 'm/h'")
    }
    assert stored == {*first_names, "other", ""}
    assert len(set(named)) > 100, "the hostile router named many providers"

    # The aggregator was down for all of it: one catch-up, 7 raw rows at a time, carrying
    # neither rows nor batches in its report.
    await forget_rollup(conn)
    catch_up = await refresh_hist(conn, now=end, max_providers=CAP, chunk_rows=7, report_rows=10, report_batches=5)
    hours = {floor_hour(p.started_at) for batch in steps for p in batch} - {floor_hour(end)}
    assert catch_up.log_rows == len(steps) and set(catch_up.hours) == hours and len(hours) >= 38
    assert catch_up.raw_rows == sum(map(len, steps))
    assert catch_up.rows_omitted and catch_up.written == () and catch_up.replaced == ()
    assert catch_up.batches_omitted and catch_up.batches == ()
    assert catch_up.capped == (HOSTILE,)
    assert [tuple(r) for r in await conn.fetch(TABLE)] == table
    assert await published(conn, end) == stats
    fresh = SlidingWindows(WINDOWS, max_providers=CAP)
    await fresh.update(conn, catch_up)
    assert fresh.stats() == stats

    # The same read whole, every row and batch in the report: as the refresh was before the bound.
    await forget_rollup(conn)
    whole = await refresh_hist(
        conn, now=end, max_providers=CAP, chunk_rows=math.inf, report_rows=math.inf, report_batches=math.inf
    )
    assert not whole.rows_omitted and not whole.batches_omitted and len(whole.batches) == len(steps)
    assert len(whole.written) == whole.series_hours - len(whole.current) and whole.replaced == ()
    assert whole.capped == (HOSTILE,)
    assert [tuple(r) for r in await conn.fetch(TABLE)] == table


async def test_memory_copies_follow_a_catch_up_too_long_to_report(conn: asyncpg.Connection) -> None:
    """The leader's windows and recent probes, in step, then the aggregator misses 8 hours: the
    report carries neither the rows nor the batches; both copies read the table and stay right.
    Short refreshes after it are incremental again."""
    windows = {"1h": 3600.0, "3h": 3 * 3600.0}
    await migrate(conn, mode="plain")
    rng = np.random.default_rng(22)
    t = floor_hour(await conn.fetchval("SELECT now()")) - timedelta(hours=12)
    sliding, recent = SlidingWindows(windows), RecentProbes()

    async def refresh(at: datetime, **limits: float) -> RefreshReport:
        report = await refresh_hist(conn, now=at, known=sliding.known_hour(), **limits)
        await sliding.update(conn, report)
        assert sliding.stats() == await window_stats(conn, windows, at)
        return report

    async def recent_probes(report: RefreshReport) -> None:
        since = report.now - timedelta(hours=2)
        mine = await recent.update(conn, since, report.now, report)
        whole = await RecentProbes().update(conn, since, report.now, report)
        assert mine == whole and sum(map(len, mine.values())) > 10

    for _ in range(3):
        nxt = t + timedelta(minutes=40)
        await store(conn, probes(spread(t, nxt, 30, rng), rng))
        t = nxt
        await recent_probes(await refresh(t))
    assert (sliding.rebuilds, recent.reloads) == (1, 1)

    # Down for 8 hours, probers writing every 20 minutes.
    for _ in range(24):
        nxt = t + timedelta(minutes=20)
        await store(conn, probes(spread(t, nxt, 10, rng), rng))
        t = nxt
    report = await refresh(t, report_rows=20, report_batches=5)
    assert report.rows_omitted and report.batches_omitted and len(report.hours) >= 8
    await recent_probes(report)
    assert (sliding.rebuilds, recent.reloads) == (2, 2), "both read the table instead"

    # Late probes for 2 and 3 hours ago: a few hours, carried whatever their rows, swapped in memory.
    await store(conn, probes([t - timedelta(hours=3), t - timedelta(hours=2)], rng))
    t += timedelta(seconds=30)
    report = await refresh(t, report_rows=0, report_batches=5)
    assert not report.rows_omitted and not report.batches_omitted and len(report.hours) == 2
    assert len(report.written) >= 6 and len(report.replaced) >= 6
    await recent_probes(report)
    assert (sliding.rebuilds, recent.reloads) == (2, 2)

    # Late probes for 7 hours no window holds, too many to carry: nothing in memory to redo.
    old = floor_hour(t) - timedelta(hours=11)
    await store(conn, probes(spread(old, old + timedelta(hours=7), 30, rng), rng))
    t += timedelta(seconds=30)
    report = await refresh(t, report_rows=2)
    assert report.rows_omitted and report.hours == tuple(old + i * HOUR for i in range(7))
    assert sliding.rebuilds == 2


async def test_peak_memory_does_not_grow_with_the_backlog(conn: asyncpg.Connection) -> None:
    """Peak traced memory of a catch-up of 4 and of 16 hours (150 series probed every 5 minutes,
    a batch per 5 minutes): flat with the bounded reads, about 4x for the refresh read whole."""
    await migrate(conn, mode="plain")
    end = floor_hour(await conn.fetchval("SELECT now()")) - HOUR
    start = end - timedelta(hours=16)
    ticks = [start + timedelta(minutes=5) * i for i in range(16 * 12)]
    results = [
        probe_result(
            started_at=tick + timedelta(seconds=s),
            router=f"r{s % 3}",
            model=f"m/{s:03d}",
            provider=f"P{s % 4}",
            ttft_ms=100.0 + s,
            ttfat_ms=120.0 + s,
            output_tps=50.0 + s % 17,
            input_tokens=20,
            output_tokens=60,
        )
        for tick in ticks
        for s in range(150)
    ]
    for i in range(0, len(results), 150):
        await store(conn, results[i : i + 150])

    async def peak(hours: int, limits: float) -> tuple[int, RefreshReport]:
        await forget_rollup(conn, pending_since=end - hours * HOUR)
        tracemalloc.start()
        try:
            report = await refresh_hist(conn, now=end, chunk_rows=limits, report_rows=limits, report_batches=limits)
            return tracemalloc.get_traced_memory()[1], report
        finally:
            tracemalloc.stop()

    bounded = {h: await peak(h, 500) for h in (4, 16)}
    whole = {h: await peak(h, math.inf) for h in (4, 16)}
    assert bounded[16][1].raw_rows == whole[16][1].raw_rows == 16 * 12 * 150
    assert bounded[4][1].raw_rows == 4 * 12 * 150
    grows = whole[16][0] / whole[4][0]
    flat = bounded[16][0] / bounded[4][0]
    print(f"peak: bounded {bounded[4][0]:,} -> {bounded[16][0]:,} B, whole {whole[4][0]:,} -> {whole[16][0]:,} B")
    assert grows > 2.5, f"the unbounded catch-up's peak should grow with the backlog ({grows:.2f}x)"
    assert flat < 1.3, f"the bounded catch-up's peak grew {flat:.2f}x from 4 to 16 hours of backlog"
    assert bounded[16][0] < whole[16][0] / 3
