"""How fast does ``routewatch db copy`` move a database, and does its memory stay flat as the database grows?

On a throwaway PostgreSQL server started here (with TimescaleDB where the
binaries have it), for two database sizes (``--quick``: 20,000 and 80,000
probes; else 100,000 and 400,000), each over 7 days and 40 series:

1. a plain-mode source is filled through routewatch's writer and rolled up
   by a real aggregator refresh (so the hourly rollups, percentiles and
   status exist, as on a running system);
2. ``routewatch db copy --to`` copies it into a new database (TimescaleDB if
   the server has it, else plain), as its own process: wall time, rows per
   second, and the process's peak resident memory (``VmHWM``); then the
   same copy again, with nothing new (the rerun after the probers stop);
3. the baseline, in the same run on the same source: ``pg_dump
   --format=custom`` piped through a file to ``pg_restore`` into a new plain
   database (a copy that cannot change the storage mode), wall time.

Reported: the copy's time as a ratio of the dump/restore baseline, and the
copy's peak memory at the larger size as a ratio of the smaller (about 1
when memory is bounded by the batch, not the table).

Run ``python bench/db_copy.py --quick`` (about a minute) or without ``--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from benchdb import create_database, dsn_for, prepare_schema, throwaway_server
from machine import describe_machine, print_table, result_header, write_results

from routewatch.aggregator.refresh import Aggregator
from routewatch.postgres.local_server import LocalPostgres
from routewatch.results.probe_result import METHODOLOGY_VERSION, ProbeResult
from routewatch.storage.writer import write_batch

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "db_copy.json"
DEFAULT_JSON_QUICK = HERE / "results" / "db_copy-quick.json"
SERIES = [("bench", f"m/model-{i:02d}") for i in range(20)]
REGIONS = ("eu-west", "us-east")
DAYS = 7
WRITE_BATCH = 5000
# Runs the command in this process, then reports its own peak RSS (VmHWM, KiB) on stderr. Not
# getrusage's ru_maxrss: that survives exec, so it would report this benchmark's own peak (the
# probes it generated) from before the fork.
MEASURED = (
    "import sys; from routewatch.cli import main; rc = main(sys.argv[1:]);"
    " hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'));"
    " print('MAXRSS', hwm, file=sys.stderr); sys.exit(rc)"
)


@dataclass(frozen=True)
class Case:
    probes: int
    copy_s: float
    copy_rss_mib: float
    rerun_s: float  # the same copy again, nothing new: what the stop for the last run costs
    baseline_s: float
    target_mode: str


def _probes(n: int, end: datetime, rng: random.Random) -> list[ProbeResult]:
    span = DAYS * 86400.0
    out = []
    for i in range(n):
        router, model = SERIES[i % len(SERIES)]
        ok = rng.random() > 0.05
        ttft = rng.lognormvariate(5.5, 0.4)
        out.append(
            ProbeResult(
                id=uuid.UUID(int=rng.getrandbits(128)),
                started_at=end - timedelta(seconds=span * (i + rng.random()) / n),
                region=REGIONS[i % 2],
                router=router,
                model=model,
                prompt="short",
                methodology=METHODOLOGY_VERSION,
                ok=ok,
                error_class=None if ok else "http_5xx",
                error_detail=None if ok else "503 from upstream",
                http_status=200 if ok else 503,
                provider="P",
                ttft_ms=ttft if ok else None,
                e2e_ms=ttft + 400 if ok else None,
                output_tps=rng.uniform(40, 120) if ok else None,
                input_tokens=12,
                output_tokens=40 if ok else None,
            )
        )
    return out


async def _fill(dsn: str, n: int) -> None:
    end = datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        await prepare_schema(conn, "plain", (end - timedelta(days=DAYS + 1)).date(), (end + timedelta(days=1)).date())
        probes = _probes(n, end, random.Random(n))
        for i in range(0, n, WRITE_BATCH):
            await write_batch(conn, probes[i : i + WRITE_BATCH])
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await Aggregator(pool, {"1h": 3600.0, "7d": 7 * 86400.0}, SERIES, 10.0).refresh()
    finally:
        await pool.close()


def _copy(source: str, target: str, mode: str) -> tuple[float, float]:
    env = {**os.environ, "ROUTEWATCH_DATABASE_URL": source}
    argv = [sys.executable, "-c", MEASURED, "db", "copy", "--to", target, "--target-mode", mode]
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600, check=False)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"db copy failed: {done.stderr[-2000:]}")
    rss_kib = int(next(line.split()[1] for line in done.stderr.splitlines() if line.startswith("MAXRSS")))
    print(done.stdout.splitlines()[-2], file=sys.stderr, flush=True)  # the probes left for the target's rollup
    return took, rss_kib / 1024


def _dump_restore(pg: LocalPostgres, source: str, target: str, work: Path) -> float:
    dump = work / "source.dump"
    started = time.monotonic()
    for argv in (
        [str(pg.bin_dir / "pg_dump"), "--format=custom", f"--file={dump}", f"--dbname={source}"],
        [str(pg.bin_dir / "pg_restore"), "--exit-on-error", "--no-owner", f"--dbname={target}", str(dump)],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr[-2000:]}")
    took = time.monotonic() - started
    dump.unlink()
    return took


def _case(pg: LocalPostgres, n: int, mode: str, work: Path) -> Case:
    names = {k: f"bench_{k}_{n}" for k in ("source", "copy", "restore")}
    for name in names.values():
        asyncio.run(create_database(pg.dsn, name))
    source = dsn_for(pg.dsn, names["source"])
    asyncio.run(_fill(source, n))
    copy_s, rss = _copy(source, dsn_for(pg.dsn, names["copy"]), mode)
    rerun_s, _ = _copy(source, dsn_for(pg.dsn, names["copy"]), mode)
    baseline = _dump_restore(pg, source, dsn_for(pg.dsn, names["restore"]), work)
    return Case(n, copy_s, rss, rerun_s, baseline, mode)


def main(argv: list[str] | None = None) -> int:
    """Start a throwaway server, measure both sizes, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 and 80,000 probes (about a minute)")
    parser.add_argument("--json", type=Path, help="where to write results")
    parser.add_argument("--pg-bin", type=Path, default=os.environ.get("ROUTEWATCH_PG_BIN") or None)
    args = parser.parse_args(argv)
    sizes = (20_000, 80_000) if args.quick else (100_000, 400_000)
    json_path: Path = args.json or (DEFAULT_JSON_QUICK if args.quick else DEFAULT_JSON)
    started = time.monotonic()
    with throwaway_server("db-copy", args.pg_bin) as (work, pg):
        mode = "timescaledb" if pg.has_timescaledb else "plain"
        print(f"PostgreSQL {pg.version}; copying plain into {mode}", file=sys.stderr, flush=True)
        pg.start()
        cases = [_case(pg, n, mode, work) for n in sizes]
    rows = [
        ["probes", "target", "db copy s", "probes/s", "peak RSS MiB", "rerun s", "dump+restore s", "copy / baseline"]
    ]
    for c in cases:
        rows.append(
            [
                f"{c.probes:,}",
                c.target_mode,
                f"{c.copy_s:.1f}",
                f"{c.probes / c.copy_s:,.0f}",
                f"{c.copy_rss_mib:.1f}",
                f"{c.rerun_s:.1f}",
                f"{c.baseline_s:.1f}",
                f"{c.copy_s / c.baseline_s:.2f}x",
            ]
        )
    print_table(rows, left=2)
    growth = cases[-1].copy_rss_mib / cases[0].copy_rss_mib
    print(
        f"\npeak memory at {cases[-1].probes:,} probes / at {cases[0].probes:,}: {growth:.2f}x"
        f" ({cases[-1].probes // cases[0].probes}x the rows); run took {time.monotonic() - started:.0f} s"
    )
    result: dict[str, Any] = {
        **result_header("db_copy", args.quick, describe_machine(["asyncpg"])),
        "cases": [c.__dict__ for c in cases],
        "rss_growth": round(growth, 3),
        "duration_s": round(time.monotonic() - started, 1),
    }
    write_results(json_path, result)
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
