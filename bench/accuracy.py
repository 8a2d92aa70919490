"""How accurately does routewatch's probe measure TTFT and tok/s under load?

The router simulator runs in its own process on loopback and logs, for every
request, when it actually wrote each token chunk (``time.perf_counter_ns()``).
On Linux that clock is CLOCK_MONOTONIC, shared by all processes, so the
simulator's marks and this process's marks are on one time line and can be
subtracted directly.

For each load level (concurrent streams) and arrival pattern we run N probes
with routewatch's probe (``routewatch.probe.chat_stream.run``), then the same
with the official ``openai`` SDK written the way a user would time it, and
compare both with the ground truth:

* TTFT error = measured_ttft_ms - (truth first-token write - t0) where t0 is
  the client's own send mark: for the probe, the ``t0`` of its raw marks
  (``on_marks``); for the SDK, read just before ``create()``. Either way it
  is exactly (client's first-token stamp - simulator's write).
* tok/s error = measured - injected, injected = (n - 1) / (last write - first
  write) over the token chunks the simulator really sent.

A third client, ``routewatch xN``, is routewatch's probe in N processes at
once (``--workers``, default the usable cores), as ``routewatch run --workers
N`` probes: each process takes every N-th stream of the round, on its own
event loop, and all start at the same instant (a start time on the shared
monotonic clock). Its CPU per probe is the workers' CPU summed.

Run ``python bench/accuracy.py --quick`` (under a minute) or without
``--quick`` (a few minutes). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import numpy as np
from machine import describe_machine, package_version, print_table, write_results

from routewatch.probe import chat_stream
from routewatch.probe.loop_lag import LoopLagMonitor
from routewatch.probe.scheduler import new_session
from routewatch.probe.target import Canary, Target, new_nonce
from routewatch.probe.timing import StreamMarks
from routewatch.simulator.process import SimulatorProcess

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROFILES = HERE / "profiles-accuracy.yaml"
DEFAULT_JSON = HERE / "results" / "accuracy.json"
DEFAULT_JSON_QUICK = HERE / "results" / "accuracy-quick.json"

MODEL_FOR = {"together": "bench/together", "spread": "bench/spread"}
PROMPT = "Count slowly from one to one hundred, one number per line."
MAX_TOKENS = 128  # above the profiles' 64, so answers end with "stop", not "length"
MIN_OUTPUT_TOKENS = 32
API_KEY = "bench"  # the simulator accepts any bearer token


@dataclass(slots=True)
class BenchTimeouts:
    """Per-phase limits (seconds) for both clients; structurally a ``chat_stream.Timeouts``."""

    connect: float = 10.0
    headers: float = 30.0
    first_token: float = 30.0
    idle: float = 15.0
    total: float = 60.0


TIMEOUTS = BenchTimeouts()


@dataclass(frozen=True, slots=True)
class RunPlan:
    """Which load levels to run and how many rounds of each."""

    levels: tuple[int, ...]
    together_rounds: dict[int, int]
    spread_rounds: dict[int, int]
    spread_interval_s: float


# A single stream yields one sample per round, so level 1 runs many rounds to
# have a p99 at all; big levels have N samples in one round. The spread
# pattern's interval dominates the run time, hence one round there.
FULL = RunPlan(
    levels=(1, 100, 500, 1000),
    together_rounds={1: 20, 100: 3, 500: 1, 1000: 1},
    spread_rounds={1: 20, 100: 1, 500: 1, 1000: 1},
    spread_interval_s=10.0,
)
# Level 1 costs a whole probe (~1.4 s) per round and client: two rounds keep
# --quick under a minute on 2 cores.
QUICK = RunPlan(
    levels=(1, 100, 500),
    together_rounds={1: 2, 100: 1, 500: 1},
    spread_rounds={1: 2, 100: 1, 500: 1},
    spread_interval_s=5.0,
)


# ---------------------------------------------------------------- records


@dataclass(slots=True)
class Sample:
    """What one client measured for one request, plus our own outer marks."""

    request_id: str | None
    ok: bool
    error: str | None
    t_before_ns: int  # read here just before the call
    t_after_ns: int  # read here just after it returned
    ttft_ms: float | None
    ttfb_ms: float | None  # response headers; the SDK's create() returns at headers
    e2e_ms: float | None  # last token
    tps: float | None


@dataclass(frozen=True, slots=True)
class Truth:
    """What the simulator says it did for one request (its perf_counter_ns marks)."""

    received_ns: int
    headers_ns: int | None  # only if the simulator records it
    first_ns: int
    last_ns: int
    tokens: int
    injected_ttft_ms: float | None

    @property
    def tps(self) -> float | None:
        """Speed actually delivered: the simulator falls behind its profile when overloaded."""
        if self.tokens < 2 or self.last_ns <= self.first_ns:
            return None
        return (self.tokens - 1) / ((self.last_ns - self.first_ns) / 1e9)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Truth | None:
        """From one /v1/ground-truth record; None when no token was sent."""
        times = rec.get("token_times_ns") or []
        if not times:
            return None
        headers_ns = rec.get("headers_ns")
        return cls(
            received_ns=int(rec["received_ns"]),
            headers_ns=int(headers_ns) if isinstance(headers_ns, int) else None,
            first_ns=int(times[0]),
            last_ns=int(times[-1]),
            tokens=len(times),
            injected_ttft_ms=rec.get("injected_ttft_ms"),
        )


# ---------------------------------------------------------------- simulator process


class BenchSimulator(SimulatorProcess):
    """The simulator process, plus taking its ground truth phase by phase."""

    def __init__(self, profiles: Path) -> None:
        super().__init__(profiles)
        self._seq = 0  # ground-truth records up to here were already taken

    async def take_ground_truth(self, session: aiohttp.ClientSession) -> dict[str, Truth]:
        """Records served since the last call, by request id; then clear the simulator's log."""
        async with session.get(f"{self.base_url}/ground-truth", params={"since": str(self._seq)}) as resp:
            resp.raise_for_status()
            records: list[dict[str, Any]] = await resp.json()
        out: dict[str, Truth] = {}
        for rec in records:
            self._seq = max(self._seq, int(rec.get("seq", 0)))
            truth = Truth.from_record(rec)
            if truth is not None:
                out[str(rec["request_id"])] = truth
        # Keeps the log (and the next GET) small; sequence numbers keep counting.
        async with session.delete(f"{self.base_url}/ground-truth") as resp:
            resp.raise_for_status()
        return out


# ---------------------------------------------------------------- the two clients


class Client(Protocol):
    """One way of measuring a streamed completion."""

    name: str

    async def probe(self) -> Sample:
        """Measure one request."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class RoutewatchClient:
    """routewatch's own probe, on the session the scheduler would build."""

    name = "routewatch"

    def __init__(self, base_url: str, model: str, concurrency: int, lag: LoopLagMonitor) -> None:
        self._session = new_session(concurrency + 10)
        self._target = Target(router="simulator", base_url=base_url, model=model, api_key=API_KEY)
        self._canary = Canary(
            name="bench",
            messages=({"role": "user", "content": PROMPT},),
            max_tokens=MAX_TOKENS,
            min_output_tokens=MIN_OUTPUT_TOKENS,
        )
        self._lag = lag

    async def probe(self) -> Sample:
        """One ``chat_stream.run``; its own t0 (from its raw marks) is the reference."""
        marks: list[StreamMarks] = []
        r = await chat_stream.run(
            self._session, self._target, self._canary, TIMEOUTS, region="bench", lag=self._lag, on_marks=marks.append
        )
        t_after = time.perf_counter_ns()
        return Sample(
            r.request_id, r.ok, r.error_class, marks[0].t0, t_after, r.ttft_ms, r.ttfb_ms, r.e2e_ms, r.output_tps
        )

    async def aclose(self) -> None:
        """Close the session."""
        await self._session.close()


class OpenAIClient:
    """The official SDK, timed the way a user would write it."""

    name = "openai"

    def __init__(self, base_url: str, model: str, concurrency: int) -> None:
        import openai

        httpx = _httpx_module()
        limits = httpx.Limits(max_connections=concurrency + 10, max_keepalive_connections=concurrency + 10)
        http = openai.DefaultAsyncHttpxClient(
            limits=limits, timeout=httpx.Timeout(TIMEOUTS.total, connect=TIMEOUTS.connect)
        )
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, http_client=http)
        self._model = model

    async def probe(self) -> Sample:
        """One streamed completion through the SDK."""
        # Same body shape as the probe's: a fresh nonce, so neither is cheaper to serve.
        messages: list[Any] = [{"role": "user", "content": f"[probe {new_nonce()}] {PROMPT}"}]
        request_id: str | None = None
        first = last = headers = None
        count = 0
        finished = False
        error: str | None = None
        t0 = time.perf_counter_ns()
        try:
            # httpx has no whole-request limit; a careful user adds one like this.
            async with asyncio.timeout(TIMEOUTS.total):
                stream = await self._client.chat.completions.create(
                    model=self._model,
                    messages=messages,
                    stream=True,
                    max_tokens=MAX_TOKENS,
                    temperature=0,
                    stream_options={"include_usage": True},
                )
                headers = time.perf_counter_ns()
                async for chunk in stream:
                    if request_id is None:
                        request_id = chunk.id
                    if not chunk.choices:
                        continue  # the trailing usage chunk
                    choice = chunk.choices[0]
                    if choice.delta is not None and choice.delta.content:
                        last = time.perf_counter_ns()
                        if first is None:
                            first = last
                        count += 1
                    if choice.finish_reason:
                        finished = True
        except Exception as exc:  # a benchmark row records it; it must not end the phase
            error = type(exc).__name__
        t_after = time.perf_counter_ns()
        if error is None and (not finished or first is None):
            error = "incomplete_stream"
        tps = None
        if first is not None and last is not None and count >= 2 and last > first:
            tps = (count - 1) / ((last - first) / 1e9)
        return Sample(
            request_id=request_id,
            ok=error is None,
            error=error,
            t_before_ns=t0,
            t_after_ns=t_after,
            ttft_ms=None if first is None else (first - t0) / 1e6,
            ttfb_ms=None if headers is None else (headers - t0) / 1e6,
            e2e_ms=None if last is None else (last - t0) / 1e6,
            tps=tps,
        )

    async def aclose(self) -> None:
        """Close the client and its connection pool."""
        await self._client.close()


def _httpx_module() -> Any:
    """The HTTP library the installed SDK is built on (httpx, or httpx2 in newer releases)."""
    for name in ("httpx2", "httpx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("the openai SDK needs httpx or httpx2")


@dataclass(slots=True)
class PhaseOutcome:
    """Raw results of one (level, pattern, client) phase."""

    samples: list[Sample]
    lags_ms: list[float]
    cpu_s: float
    sim_cpu_s: float | None
    wall_s: float
    peak_in_flight: int


@dataclass(slots=True)
class Burst:
    """What one process measured in one round: its samples, its loop's lag, its CPU."""

    samples: list[Sample] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    peak_in_flight: int = 0


async def probe_burst(
    client: Client, delays: Sequence[float], lag: LoopLagMonitor, start_ns: int | None = None
) -> Burst:
    """One probe per delay (seconds after ``start_ns``, on the monotonic clock; now if None), concurrently."""
    in_flight = peak = 0
    if start_ns is not None:
        await asyncio.sleep(max(0.0, (start_ns - time.perf_counter_ns()) / 1e9))
    t0 = time.perf_counter_ns()

    async def one(delay_s: float) -> Sample:
        nonlocal in_flight, peak
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await client.probe()
        finally:
            in_flight -= 1

    cpu0 = time.process_time()
    samples = list(await asyncio.gather(*(one(d) for d in delays)))
    cpu_s = time.process_time() - cpu0
    return Burst(samples, lag.samples_since(t0), cpu_s, peak)


def round_delays(rng: random.Random, level: int, pattern: str, interval_s: float) -> list[float]:
    """When each of a round's ``level`` probes starts (seconds after the round does)."""
    # A lone stream has nothing to be spread against; waiting out the
    # interval would only cost time, so level 1 starts at once.
    spread = pattern == "spread" and level > 1
    return [rng.uniform(0.0, interval_s) if spread else 0.0 for _ in range(level)]


async def run_phase(
    sim: SimulatorProcess,
    client_name: str,
    level: int,
    pattern: str,
    rounds: int,
    interval_s: float,
    seed: int,
) -> PhaseOutcome:
    """Run ``rounds`` rounds of ``level`` probes with one client, sampling loop lag throughout."""
    lag = LoopLagMonitor()
    model = MODEL_FOR[pattern]
    client: Client
    if client_name == "routewatch":
        client = RoutewatchClient(sim.base_url, model, level, lag)
    else:
        client = OpenAIClient(sim.base_url, model, level)
    # Same seed for every client: they face the same arrival schedule.
    rng = random.Random(seed)
    bursts: list[Burst] = []
    lag.start()
    t_start_ns = time.perf_counter_ns()
    sim_cpu0 = sim.cpu_s()
    try:
        for _ in range(rounds):
            bursts.append(await probe_burst(client, round_delays(rng, level, pattern, interval_s), lag))
        wall_s = (time.perf_counter_ns() - t_start_ns) / 1e9
        sim_cpu1 = sim.cpu_s()
    finally:
        await lag.stop()
        await client.aclose()
    return PhaseOutcome(
        samples=[s for b in bursts for s in b.samples],
        lags_ms=[x for b in bursts for x in b.lags_ms],
        cpu_s=sum(b.cpu_s for b in bursts),
        sim_cpu_s=None if sim_cpu0 is None or sim_cpu1 is None else sim_cpu1 - sim_cpu0,
        wall_s=wall_s,
        peak_in_flight=max((b.peak_in_flight for b in bursts), default=0),
    )


# ---------------------------------------------------------------- routewatch in N processes

WORKER_FLAG = "--probe-worker"
START_LEAD_S = 0.5  # every worker has its round's job well before the common start
READ_LIMIT = 64 * 1024 * 1024  # a worker's answer is one line: a round's samples and lag ticks


class ProbeWorkers:
    """N processes of this script (``--probe-worker``), each probing its share of every round.

    Each reads one JSON job a line on stdin (simulator URL, model, its
    delays, the round's start on the monotonic clock) and answers one JSON
    :class:`Burst` a line on stdout.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._procs: list[asyncio.subprocess.Process] = []

    async def start(self, base_url: str) -> None:
        """Start them, and have each probe once unmeasured (imports, first connection)."""
        for _ in range(self.count):
            self._procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(Path(__file__).resolve()),
                    WORKER_FLAG,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=READ_LIMIT,
                )
            )
        await self.burst(base_url, MODEL_FOR["together"], [[0.0] for _ in self._procs])

    async def _ask(self, proc: asyncio.subprocess.Process, job: dict[str, Any]) -> Burst:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(job) + "\n").encode())
        await proc.stdin.drain()
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"probe worker {proc.pid} exited with {await proc.wait()}")
        raw = json.loads(line)
        return Burst([Sample(**s) for s in raw["samples"]], raw["lags_ms"], raw["cpu_s"], raw["peak_in_flight"])

    async def burst(self, base_url: str, model: str, shares: list[list[float]]) -> list[Burst]:
        """One round: worker i probes with ``shares[i]``'s delays, every worker from the same instant."""
        start_ns = time.perf_counter_ns() + int(START_LEAD_S * 1e9)
        jobs = [{"base_url": base_url, "model": model, "delays": share, "start_ns": start_ns} for share in shares]
        return list(await asyncio.gather(*(self._ask(p, j) for p, j in zip(self._procs, jobs, strict=True))))

    async def close(self) -> None:
        """End them (EOF on stdin)."""
        for proc in self._procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in self._procs:
            await proc.wait()


async def run_workers_phase(
    sim: SimulatorProcess, workers: ProbeWorkers, level: int, pattern: str, rounds: int, interval_s: float, seed: int
) -> PhaseOutcome:
    """As :func:`run_phase`, the round's probes dealt to the workers in turn (every N-th to each)."""
    rng = random.Random(seed)
    bursts: list[Burst] = []
    t_start_ns = time.perf_counter_ns()
    sim_cpu0 = sim.cpu_s()
    peak = 0
    for _ in range(rounds):
        delays = round_delays(rng, level, pattern, interval_s)
        shares = [delays[i :: workers.count] for i in range(workers.count)]
        round_bursts = await workers.burst(sim.base_url, MODEL_FOR[pattern], shares)
        bursts += round_bursts
        peak = max(peak, sum(b.peak_in_flight for b in round_bursts))
    wall_s = (time.perf_counter_ns() - t_start_ns) / 1e9 - rounds * START_LEAD_S
    sim_cpu1 = sim.cpu_s()
    return PhaseOutcome(
        samples=[s for b in bursts for s in b.samples],
        lags_ms=[x for b in bursts for x in b.lags_ms],
        cpu_s=sum(b.cpu_s for b in bursts),
        sim_cpu_s=None if sim_cpu0 is None or sim_cpu1 is None else sim_cpu1 - sim_cpu0,
        wall_s=wall_s,
        peak_in_flight=peak,
    )


async def probe_worker() -> None:
    """``--probe-worker``: answer jobs from stdin until it closes (see :class:`ProbeWorkers`)."""
    loop = asyncio.get_running_loop()
    lag = LoopLagMonitor()
    lag.start()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            job = json.loads(line)
            client = RoutewatchClient(job["base_url"], job["model"], len(job["delays"]), lag)
            try:
                burst = await probe_burst(client, job["delays"], lag, job["start_ns"])
            finally:
                await client.aclose()
            sys.stdout.write(json.dumps(asdict(burst)) + "\n")
            sys.stdout.flush()
            # As a routewatch probe process does once started: what lives on is kept out of the collector's scans.
            gc.collect()
            gc.freeze()
    finally:
        await lag.stop()


# ---------------------------------------------------------------- analysis


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 and max of ``values`` (None each when there are none)."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    arr = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "max": float(arr.max())}


@dataclass(slots=True)
class Row:
    """One line of the report: one client at one level and pattern."""

    level: int
    pattern: str
    client: str
    probes: int
    failed: int
    errors: dict[str, int]
    unmatched: int  # ok probes whose request id had no ground-truth record
    ttft_abs_err_ms: dict[str, float | None]
    ttft_signed_err_ms_p50: float | None
    # The last token's error, which with the first token's makes the tok/s error.
    last_token_abs_err_ms: dict[str, float | None]
    tps_abs_err: dict[str, float | None]
    tps_signed_err_p50: float | None  # > 0: measured faster than sent
    tps_abs_err_pct: dict[str, float | None]
    ttfb_abs_err_ms: dict[str, float | None] | None  # only when the simulator logs headers_ns
    loop_lag_ms: dict[str, float | None]
    lag_samples: int
    cpu_ms_per_probe: float
    sim_cpu_s: float | None
    wall_s: float
    peak_in_flight: int
    max_wall_ms: float | None
    total_timeout_overshoot_ms: float  # worst wall time beyond TIMEOUTS.total; 0 = none
    sim_first_token_late_ms: dict[str, float | None]  # simulator behind its own plan
    injected_tps: dict[str, float | None]
    min_send_to_receive_ms: float | None  # < 0 would break the shared-clock assumption


def analyse(level: int, pattern: str, client: str, out: PhaseOutcome, truth: dict[str, Truth]) -> Row:
    """Match samples to ground truth and summarise the errors."""
    errors: dict[str, int] = {}
    ttft_err: list[float] = []
    ttfb_err: list[float] = []
    last_err: list[float] = []
    tps_err: list[float] = []
    tps_pct: list[float] = []
    late: list[float] = []
    injected: list[float] = []
    causal: list[float] = []
    unmatched = 0
    for s in out.samples:
        if not s.ok:
            key = s.error or "unknown"
            errors[key] = errors.get(key, 0) + 1
            continue
        t = truth.get(s.request_id or "")
        if t is None:
            unmatched += 1
            continue
        causal.append((t.received_ns - s.t_before_ns) / 1e6)
        if t.injected_ttft_ms is not None:
            late.append((t.first_ns - t.received_ns) / 1e6 - t.injected_ttft_ms)
        if s.ttft_ms is not None:
            ttft_err.append(s.ttft_ms - (t.first_ns - s.t_before_ns) / 1e6)
        if s.e2e_ms is not None:
            last_err.append(s.e2e_ms - (t.last_ns - s.t_before_ns) / 1e6)
        if s.ttfb_ms is not None and t.headers_ns is not None:
            ttfb_err.append(s.ttfb_ms - (t.headers_ns - s.t_before_ns) / 1e6)
        true_tps = t.tps
        if true_tps is not None:
            injected.append(true_tps)
            if s.tps is not None:
                tps_err.append(s.tps - true_tps)
                tps_pct.append(100.0 * (s.tps - true_tps) / true_tps)
    walls = [(s.t_after_ns - s.t_before_ns) / 1e6 for s in out.samples]
    max_wall = max(walls) if walls else None
    return Row(
        level=level,
        pattern=pattern,
        client=client,
        probes=len(out.samples),
        failed=sum(errors.values()),
        errors=errors,
        unmatched=unmatched,
        ttft_abs_err_ms=percentiles([abs(e) for e in ttft_err]),
        ttft_signed_err_ms_p50=percentiles(ttft_err)["p50"],
        last_token_abs_err_ms=percentiles([abs(e) for e in last_err]),
        tps_abs_err=percentiles([abs(e) for e in tps_err]),
        tps_signed_err_p50=percentiles(tps_err)["p50"],
        tps_abs_err_pct=percentiles([abs(e) for e in tps_pct]),
        ttfb_abs_err_ms=percentiles([abs(e) for e in ttfb_err]) if ttfb_err else None,
        loop_lag_ms=percentiles(out.lags_ms),
        lag_samples=len(out.lags_ms),
        cpu_ms_per_probe=1e3 * out.cpu_s / max(len(out.samples), 1),
        sim_cpu_s=out.sim_cpu_s,
        wall_s=out.wall_s,
        peak_in_flight=out.peak_in_flight,
        max_wall_ms=max_wall,
        total_timeout_overshoot_ms=max(0.0, (max_wall or 0.0) - TIMEOUTS.total * 1e3),
        sim_first_token_late_ms=percentiles(late),
        injected_tps=percentiles(injected),
        min_send_to_receive_ms=min(causal) if causal else None,
    )


# ---------------------------------------------------------------- report


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _triple(d: dict[str, float | None], digits: int = 2) -> str:
    return "/".join(_f(d[k], digits) for k in ("p50", "p99", "max"))


def print_results(rows: Sequence[Row]) -> None:
    """Aligned plain text: pastes anywhere, and needs no terminal."""
    header = [
        "N",
        "pattern",
        "client",
        "ok/n",
        "TTFT |err| ms p50/p99/max",
        "last |err| ms p99",
        "tok/s |err| p50/p99/max",
        "tok/s |err| % p99/max",
        "lag p99 ms",
        "CPU ms/probe",
        "over",
        "peak",
    ]
    lines = [header]
    for r in rows:
        over = "none" if r.total_timeout_overshoot_ms == 0 else f"{r.total_timeout_overshoot_ms:.0f}ms"
        lines.append(
            [
                str(r.level),
                r.pattern,
                r.client,
                f"{r.probes - r.failed}/{r.probes}",
                _triple(r.ttft_abs_err_ms),
                _f(r.last_token_abs_err_ms["p99"]),
                _triple(r.tps_abs_err),
                f"{_f(r.tps_abs_err_pct['p99'])}/{_f(r.tps_abs_err_pct['max'])}",
                _f(r.loop_lag_ms["p99"], 1),
                _f(r.cpu_ms_per_probe, 2),
                over,
                str(r.peak_in_flight),
            ]
        )
    print_table(lines, left=3)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return describe_machine(
        ["aiohttp", "openai", "numpy"],
        httpx=package_version("httpx") or package_version("httpx2"),
        clock="time.perf_counter_ns (CLOCK_MONOTONIC, shared across processes on Linux)",
    )


# ---------------------------------------------------------------- main


async def main_async(quick: bool, workers: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Calibrate, start the simulator, run every phase; the report as a JSON-ready dict."""
    plan = QUICK if quick else FULL
    info = machine_info()
    info["probe_workers"] = workers
    started = time.monotonic()
    rows: list[Row] = []
    sim = BenchSimulator(PROFILES)
    pool = ProbeWorkers(workers)
    multi = f"routewatch x{workers}"
    async with aiohttp.ClientSession() as control:
        try:
            await asyncio.to_thread(sim.start)
            # One unmeasured probe per client first: lazy imports and first-use
            # set-up in either library must not count as load.
            await asyncio.gather(
                *(run_phase(sim, name, 1, "together", 1, 0.0, seed=0) for name in ("routewatch", "openai")),
                pool.start(sim.base_url),
            )
            await sim.take_ground_truth(control)
            for level in plan.levels:
                for pattern in ("together", "spread"):
                    rounds = (plan.together_rounds if pattern == "together" else plan.spread_rounds)[level]
                    seed = level * 10 + (pattern == "spread")
                    for name in ("routewatch", multi, "openai"):
                        if name == multi:
                            out = await run_workers_phase(
                                sim, pool, level, pattern, rounds, plan.spread_interval_s, seed
                            )
                        else:
                            out = await run_phase(sim, name, level, pattern, rounds, plan.spread_interval_s, seed)
                        truth = await sim.take_ground_truth(control)
                        row = analyse(level, pattern, name, out, truth)
                        rows.append(row)
                        log(
                            f"N={level:<5} {pattern:<8} {name:<10} ok {row.probes - row.failed}/{row.probes} "
                            f"TTFT |err| p99 {_f(row.ttft_abs_err_ms['p99'])} ms, "
                            f"tok/s |err| p99 {_f(row.tps_abs_err['p99'])}, wall {row.wall_s:.1f} s"
                        )
                        await asyncio.sleep(0.2)  # let the simulator close the phase's connections
        finally:
            await pool.close()
            sim.stop()
    info["loadavg_end"] = list(os.getloadavg())
    return {
        "benchmark": "accuracy",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "quick": quick,
        "machine": info,
        "plan": asdict(plan),
        "timeouts_s": asdict(TIMEOUTS),
        "profiles": PROFILES.read_text(encoding="utf-8"),
        "duration_s": round(time.monotonic() - started, 1),
        "rows": [asdict(r) for r in rows],
        "_rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the JSON; exit 1 if any probe failed or went unmatched."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="levels 1, 100, 500, fewer rounds: under a minute")
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="processes of the routewatch xN client (default: the usable cores)",
    )
    parser.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--json",
        type=Path,
        help=f"where to write results (default {DEFAULT_JSON.relative_to(REPO)}, "
        f"or {DEFAULT_JSON_QUICK.relative_to(REPO)} with --quick)",
    )
    args = parser.parse_args(argv)
    if args.probe_worker:
        asyncio.run(probe_worker())
        return 0
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    json_path: Path = args.json or (DEFAULT_JSON_QUICK if args.quick else DEFAULT_JSON)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result = asyncio.run(main_async(args.quick, args.workers, log))
    rows: list[Row] = result.pop("_rows")
    print_results(rows)
    print(f"\nrun took {result['duration_s']} s")
    write_results(json_path, result)
    print(f"wrote {json_path}")
    return 1 if any(r.failed or r.unmatched for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
