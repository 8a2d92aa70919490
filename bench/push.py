"""What does pushing results to a central server cost, against writing them to the database?

Both sinks a prober can have, on the same results in the same run, on a
throwaway PostgreSQL server started here:

* ``database``: the database writer (``storage.writer.BatchWriter``), in this
  process, COPY batches straight into the database. The baseline.
* ``push``: the push writer (``delivery.push.push_writer``) in this process,
  POSTing batches over loopback HTTP to ``routewatch serve`` in its own
  process, which validates each record and stores it through the same COPY
  path (``POST /v1/ingest``).

Each case submits N results as fast as ``submit`` takes them (spool first,
as a prober does) and ends when the writer has stored all N. Reported: rows
per second end to end, the CPU this (the prober's) process spent per result,
the central server's CPU per result (``/proc``), and the ratio of rows/s to
the database writer's. Two interleaved rounds; the faster round of each
case counts.

    python bench/push.py --quick   # 10,000 results per case, about half a minute
    python bench/push.py           # 50,000 results per case
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from benchdb import create_database, dsn_for, prepare_schema, throwaway_server
from machine import describe_machine, print_table, result_header, write_results

from routewatch.delivery.push import push_writer
from routewatch.delivery.spooled import SpooledDelivery
from routewatch.results.probe_result import METHODOLOGY_VERSION, ProbeResult
from routewatch.storage.writer import BatchWriter

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "push.json"
DEFAULT_JSON_QUICK = HERE / "results" / "push-quick.json"
FULL_RESULTS, QUICK_RESULTS = 50_000, 10_000
ROUNDS = 2
TOKEN = secrets.token_hex(24)
CENTRAL_CONFIG = """\
routers:
  - {name: sim, base_url: simulator, models: [bench/a]}
prompts:
  - name: short
    messages: [{role: user, content: Count to ten.}]
api:
  host: 127.0.0.1
  ingest_tokens:
    - {region: bench, token_env: BENCH_INGEST_TOKEN}
aggregator: {refresh: 60s}
"""


@dataclass
class Case:
    """One timed case."""

    case: str
    results: int
    seconds: float
    rows_per_s: float
    prober_cpu_us_per_result: float
    central_cpu_us_per_result: float | None


def make_results(n: int) -> list[ProbeResult]:
    """``n`` ok results of the last minute: realistic fields, a region the token allows."""
    now = datetime.now(UTC)
    return [
        ProbeResult(
            id=uuid.uuid4(),
            started_at=now - timedelta(milliseconds=i),
            region="bench",
            router="sim",
            model=f"bench/m{i % 50}",
            prompt="short",
            methodology=METHODOLOGY_VERSION,
            ok=True,
            error_class=None,
            error_detail=None,
            http_status=200,
            model_served=f"bench/m{i % 50}",
            provider="Provider",
            request_id=f"req-{uuid.uuid4().hex}",
            ttfb_ms=80.0,
            ttft_ms=120.0 + i % 100,
            ttfat_ms=125.0 + i % 100,
            e2e_ms=900.0,
            output_tps=80.0,
            input_tokens=12,
            output_tokens=64,
            chunks=64,
            chunk_gap_max_ms=30.0,
            chunk_gap_p95_ms=15.0,
            loop_lag_ms=1.0,
        )
        for i in range(n)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CentralServer:
    """``routewatch serve`` with one region's ingest token, on a free loopback port."""

    def __init__(self, dsn: str, work: Path) -> None:
        config = work / "central.yaml"
        config.write_text(CENTRAL_CONFIG)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/ingest"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWATCH_")}
        env |= {"ROUTEWATCH_DATABASE_URL": dsn, "BENCH_INGEST_TOKEN": TOKEN}
        self._log = open(work / "central.log", "wb")
        argv = [sys.executable, "-m", "routewatch.cli", "serve", "--config", str(config)]
        argv += ["--data-dir", str(work / "central"), "--port", str(self.port)]
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._logfile = work / "central.log"
        deadline = time.monotonic() + 60
        while "API:" not in self._logfile.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("routewatch serve did not start:\n" + self._logfile.read_text()[-2000:])
            time.sleep(0.1)

    def cpu_s(self) -> float:
        return _cpu_s(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self._log.close()


async def timed(name: str, writer: SpooledDelivery, results: list[ProbeResult], central: CentralServer | None) -> Case:
    await writer.start()
    try:
        central_cpu = central.cpu_s() if central else None
        cpu, wall = time.process_time(), time.perf_counter()
        for r in results:
            await writer.submit(r)
        while writer.written < len(results):
            if writer.failed is not None:
                raise RuntimeError(f"{name}: the writer died: {writer.failed!r}")
            await asyncio.sleep(0.005)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        central_used = central.cpu_s() - central_cpu if central and central_cpu is not None else None
    finally:
        await writer.close()
    n = len(results)
    return Case(
        name,
        n,
        round(wall, 3),
        round(n / wall),
        round(cpu / n * 1e6, 1),
        None if central_used is None else round(central_used / n * 1e6, 1),
    )


async def run(dsn: str, work: Path, n: int, log: Any) -> list[Case]:
    central = CentralServer(dsn, work)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    best: dict[str, Case] = {}
    try:
        for round_no in range(ROUNDS):
            for name in ("database", "push"):
                spool = work / f"spool-{name}-{round_no}"
                writer: SpooledDelivery = (
                    BatchWriter(pool, spool, flush_s=0.05)
                    if name == "database"
                    else push_writer(central.url, TOKEN, spool, token_env="BENCH_INGEST_TOKEN", flush_s=0.05)
                )
                case = await timed(name, writer, make_results(n), central if name == "push" else None)
                log(f"round {round_no + 1} {name}: {case.rows_per_s:,} rows/s")
                if name not in best or case.rows_per_s > best[name].rows_per_s:
                    best[name] = case
        stored = await pool.fetchval("SELECT count(*) FROM probe_results")
        if stored != 2 * ROUNDS * n:
            raise RuntimeError(f"{stored} rows stored, expected {2 * ROUNDS * n}")
    finally:
        await pool.close()
        central.stop()
    return [best["database"], best["push"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RESULTS:,} results per case")
    parser.add_argument("--results", type=int, help="results per case")
    parser.add_argument("--json", type=Path, help="where to write results (default bench/results/push[-quick].json)")
    parser.add_argument("--pg-bin", type=Path, default=os.environ.get("ROUTEWATCH_PG_BIN") or None)
    args = parser.parse_args(argv)
    n = args.results or (QUICK_RESULTS if args.quick else FULL_RESULTS)
    json_path: Path = args.json or (DEFAULT_JSON_QUICK if args.quick else DEFAULT_JSON)
    with throwaway_server("push", args.pg_bin) as (work, pg):
        pg.start()

        async def prepare() -> str:
            await create_database(pg.dsn, "bench_push")
            conn = await asyncpg.connect(dsn_for(pg.dsn, "bench_push"))
            try:
                today = datetime.now(UTC).date()
                return await prepare_schema(conn, "plain", today - timedelta(days=1), today + timedelta(days=1))
            finally:
                await conn.close()

        asyncio.run(prepare())
        dsn = dsn_for(pg.dsn, "bench_push")
        cases = asyncio.run(run(dsn, Path(tempfile.mkdtemp(dir=work)), n, lambda line: print(line, flush=True)))
        machine = describe_machine(["aiohttp", "asyncpg"], postgresql=pg.version)
    base = cases[0].rows_per_s
    lines = [["case", "results", "rows/s", "ratio to database", "prober CPU µs/result", "central CPU µs/result"]]
    for c in cases:
        central = "-" if c.central_cpu_us_per_result is None else f"{c.central_cpu_us_per_result:.0f}"
        lines.append(
            [c.case, f"{c.results:,}", f"{c.rows_per_s:,}", f"{c.rows_per_s / base:.2f}"]
            + [f"{c.prober_cpu_us_per_result:.0f}", central]
        )
    print()
    print_table(lines, left=1)
    result = result_header("push", args.quick, machine) | {
        "rounds": ROUNDS,
        "cases": [asdict(c) for c in cases],
        "ratio_push_to_database": round(cases[1].rows_per_s / base, 3),
    }
    write_results(json_path, result)
    print(f"\nwritten to {shlex.quote(str(json_path))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
