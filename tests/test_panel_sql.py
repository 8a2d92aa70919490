"""Every SQL query of every dashboard, run on the real database in each storage mode.

The database is seeded through the real paths (the writer, the rollup
refresh) with ten days of probes of 2 routers x 3 models x 3 providers x 2
regions, a dense last few hours, published figures, model states and
incidents. Each panel query, variable query and annotation is expanded as
Grafana would send it (routewatch.grafana.sql_macros) for "All", two values
and one value of every variable, with the data source's TimescaleDB option
off and (on TimescaleDB) on, and must return rows of the shape its panel
reads: a time series starts with a "time" column followed by numbers (and a
"metric" name), a table has named columns, a variable one text column, an
annotation time, timeend, text and tags.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from factories import probe_result
from test_maintenance import make_results, store

from routewatch.aggregator.rollup import refresh_hist
from routewatch.grafana.dashboards import all_dashboards
from routewatch.grafana.panel_queries import PanelQuery, selections, sql_queries, variable_options
from routewatch.grafana.sql_macros import TimeRange, expand
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.migrate import migrate

pytestmark = pytest.mark.db

COMBOS = list(itertools.product(["r1", "r2"], ["m/a", "m/b", "m/c"], [None, "P1", "P2"], ["eu", "us"]))
FAILURES = ("timeout_ttft", "http_429", "http_5xx", "stream_error")
NUMBER = (int, float, Decimal)


def recent(now: datetime, per_combo: int = 20) -> list[ProbeResult]:
    """``per_combo`` probes of every (router, model, provider, region) over the last five hours, a third failed."""
    out = []
    for i in range(per_combo):
        for j, (router, model, provider, region) in enumerate(COMBOS):
            k = i * len(COMBOS) + j
            error = FAILURES[(i + j) % len(FAILURES)] if (i + j) % 3 == 0 else None
            out.append(
                probe_result(
                    started_at=now - timedelta(minutes=1) - timedelta(hours=5) * (k / (per_combo * len(COMBOS))),
                    router=router,
                    model=model,
                    provider=provider,
                    region=region,
                    error_class=error,
                    error_detail=None if error is None else f"upstream said no ({error})",
                    http_status=503 if error == "http_5xx" else 429 if error == "http_429" else None,
                    model_served=None if error else f"{model}-2026-01",
                    ttft_ms=80.0 + 37 * (k % 50),
                    ttfat_ms=90.0 + 37 * (k % 50),
                    output_tps=40.0 + k % 30,
                )
            )
    return out


async def seed_context(conn: asyncpg.Connection, now: datetime) -> None:
    """Published figures, model states and incidents as the leader writes them."""
    for (router, model), window, age in itertools.product(
        {(c[0], c[1]) for c in COMBOS}, ("1h", "24h", "7d"), (timedelta(minutes=10), timedelta(hours=1))
    ):
        await conn.execute(
            'INSERT INTO stats_history (taken_at, router, model, "window", attempts, ok, rate_limited, error_rate,'
            " error_rate_excl_429, ttft_p50_ms, ttft_p95_ms, ttfat_p50_ms, ttfat_p95_ms, tps_p50, input_tokens,"
            " output_tokens) VALUES ($1, $2, $3, $4, 100, 95, 1, 0.05, 0.04, 300, 900, 310, 950, 80, 1000, 5000)",
            now - age,
            router,
            model,
            window,
        )
    for model, state in (("m/a", "down"), ("m/b", "degraded"), ("m/c", "operational")):
        await conn.execute(
            "INSERT INTO model_status VALUES ($1, $2, $3, 'seeded', 0, 0, false, $3, $3)", model, state, now
        )
    await conn.execute(
        "INSERT INTO incidents VALUES (1, $1, NULL, 'down', ARRAY['m/a', 'm/b'], false, $2),"
        " (2, $3, $4, 'degraded', ARRAY['m/a'], true, $4)",
        now - timedelta(hours=3),
        now,
        now - timedelta(days=2),
        now - timedelta(days=2) + timedelta(hours=1),
    )


@pytest.fixture
async def seeded(conn: asyncpg.Connection, mode: str) -> tuple[asyncpg.Connection, datetime]:
    await migrate(conn, mode=mode)
    now = await conn.fetchval("SELECT now()")
    assert await store(conn, mode, make_results(now, n=3000)) == 3000
    rows = recent(now)
    assert await store(conn, mode, rows) == len(rows)
    await refresh_hist(conn, now=now)
    await seed_context(conn, now)
    return conn, now


def check_shape(q: PanelQuery, records: list[asyncpg.Record]) -> None:
    """The columns and types Grafana needs for ``q``'s format (raises AssertionError naming ``q``)."""
    assert records, f"{q.dashboard} {q.where}: no rows"
    names = list(records[0].keys())
    assert len(set(names)) == len(names) and "?column?" not in names, f"{q.where}: unnamed or repeated columns {names}"
    values = [v for r in records for v in r.values()]
    if q.kind == "variable":
        assert len(names) == 1 and all(isinstance(v, str) for v in values), f"{q.where}: {names}"
    elif q.kind == "annotation":
        assert names[:4] == ["time", "timeend", "text", "tags"], f"{q.where}: {names}"
        assert all(isinstance(r["time"], datetime) and isinstance(r["text"], str) for r in records)
    elif q.format == "time_series":
        assert names[0] == "time", f"{q.where}: the first column must be time, not {names[0]}"
        times = [r["time"] for r in records]
        assert all(isinstance(t, (datetime, *NUMBER)) for t in times), f"{q.where}: time of type {type(times[0])}"
        assert times == sorted(times), f"{q.where}: rows not in time order"
        for name in names[1:]:
            column = [r[name] for r in records]
            if name == "metric":
                assert all(isinstance(v, str) for v in column), f"{q.where}: metric names must be text"
            else:
                assert all(v is None or isinstance(v, NUMBER) for v in column), f"{q.where}: {name} not numeric"
                assert any(v is not None for v in column), f"{q.where}: {name} is all NULL"
    else:
        assert any(isinstance(v, (datetime, *NUMBER)) for v in values), f"{q.where}: nothing to show"
        if q.panel_type in ("stat", "bargauge"):
            assert isinstance(records[0][names[0]], str) and isinstance(records[0][names[-1]], NUMBER), q.where
        if q.panel_type == "heatmap":
            raise AssertionError("a heatmap reads a time series")


@pytest.mark.parametrize("span", [timedelta(days=7), timedelta(hours=24)])
async def test_every_sql_query_runs_with_grafanas_expansion(
    seeded: tuple[asyncpg.Connection, datetime], mode: str, span: timedelta
) -> None:
    conn, now = seeded
    # Grafana's interval for a ~1,000-pixel-wide panel: 10 min over 7 days, 1 min over a day.
    tr = TimeRange(now - span, now, timedelta(minutes=10) if span > timedelta(days=1) else timedelta(minutes=1))

    async def fetch(sql: str) -> list[str]:
        return [str(r[0]) for r in await conn.fetch(sql)]

    ran = 0
    for dashboard in all_dashboards():
        d = dashboard.render()
        queries = sql_queries(d)
        for timescaledb in [False, True] if mode == "timescaledb" else [False]:
            options = await variable_options(d, fetch, tr, timescaledb=timescaledb)
            for label, chosen in selections(d, options).items():
                for q in queries:
                    sql = expand(q.sql, chosen, tr, timescaledb=timescaledb)
                    assert "$" not in sql.replace("$$", ""), f"{q.where}: left unexpanded: {sql}"
                    try:
                        records = await conn.fetch(sql)
                    except asyncpg.PostgresError as exc:
                        raise AssertionError(f"{q.dashboard} {q.where} ({label}): {exc}\n{sql}") from exc
                    check_shape(q, records)
                    ran += 1
    assert ran >= 3 * 30, "every dashboard's queries ran for each selection"


async def test_the_heatmap_counts_every_successful_probe(seeded: tuple[asyncpg.Connection, datetime]) -> None:
    conn, now = seeded
    tr = TimeRange(now - timedelta(days=11), now, timedelta(hours=1))
    drill = next(d.render() for d in all_dashboards() if d.uid == "routewatch-model")
    heatmap = next(q for q in sql_queries(drill) if q.panel_type == "heatmap")
    options = await variable_options(drill, lambda s: _first_column(conn, s), tr)
    chosen = selections(drill, options)["all"]
    rows = await conn.fetch(expand(heatmap.sql, chosen, tr))
    cells = {r["metric"] for r in rows}
    assert "+Inf" in cells and "25" in cells and len(cells) == 13
    ok = await conn.fetchval(
        "SELECT count(*) FROM probe_results WHERE ok AND NOT prober_overloaded AND model = $1 AND ttft_ms IS NOT NULL",
        chosen["model"].values[0],
    )
    assert sum(r["value"] for r in rows) == ok


async def test_recent_failures_show_the_stored_detail_of_the_chosen_slice(
    seeded: tuple[asyncpg.Connection, datetime],
) -> None:
    conn, now = seeded
    tr = TimeRange(now - timedelta(days=1), now, timedelta(minutes=1))
    drill = next(d.render() for d in all_dashboards() if d.uid == "routewatch-model")
    failures = next(q for q in sql_queries(drill) if "Recent failed probes" in q.where)
    options = await variable_options(drill, lambda s: _first_column(conn, s), tr)
    chosen = selections(drill, options)["one"]
    rows = await conn.fetch(expand(failures.sql, chosen, tr))
    assert rows and all(r["error_detail"].startswith("upstream said no") for r in rows)
    assert {(r["router"], r["provider"], r["region"]) for r in rows} == {
        (chosen["router"].values[0], chosen["provider"].values[0], chosen["region"].values[0])
    }
    assert all(r["started_at"] >= now - timedelta(hours=6) for r in rows), "raw rows only of the last hours"


async def _first_column(conn: asyncpg.Connection, sql: str) -> list[str]:
    return [str(r[0]) for r in await conn.fetch(sql)]


async def test_the_budget_over_time_ends_where_the_budget_panel_stands(
    seeded: tuple[asyncpg.Connection, datetime],
) -> None:
    """Over a range shorter than the SLO period, the running budget still counts from the period's start."""
    conn, now = seeded
    tr = TimeRange(now - timedelta(hours=24), now, timedelta(minutes=1))
    slo = next(d.render() for d in all_dashboards() if d.uid == "routewatch-slo")
    queries = {q.where.split("'")[1]: q for q in sql_queries(slo) if q.kind == "panel"}
    options = await variable_options(slo, lambda s: _first_column(conn, s), tr)
    chosen = selections(slo, options)["all"]
    assert chosen["slo_period"].values == ("30d",)
    budget = {
        r["model"]: r["budget_remaining"]
        for r in await conn.fetch(expand(queries["Error budget remaining"].sql, chosen, tr))
    }
    running = await conn.fetch(expand(queries["Error budget remaining over time"].sql, chosen, tr))
    last = {r["metric"]: r["value"] for r in running}  # in time order: the last point of each line
    assert last.keys() == budget.keys() and len(budget) == 6
    for model, value in budget.items():
        assert last[model] == pytest.approx(value), model
    assert min(budget.values()) < 1 - 1e-9, "failures spent some budget"


async def test_the_fleet_table_is_the_catalog_as_last_published(seeded: tuple[asyncpg.Connection, datetime]) -> None:
    conn, now = seeded
    tr = TimeRange(now - timedelta(days=7), now, timedelta(minutes=10))
    fleet = next(d.render() for d in all_dashboards() if d.uid == "routewatch-fleet")
    table = next(q for q in sql_queries(fleet) if q.where.startswith("panel 1 "))
    options = await variable_options(fleet, lambda s: _first_column(conn, s), tr)
    assert options["window"] == ["1h", "24h", "7d"]
    rows = await conn.fetch(expand(table.sql, selections(fleet, options)["all"], tr))
    assert len(rows) == 6, "every (router, model) once"
    assert {r["as_of"] for r in rows} == {now - timedelta(minutes=10)}, "the newest snapshot"
    assert {r["model"]: r["state"] for r in rows} == {"m/a": "down", "m/b": "degraded", "m/c": "operational"}


async def test_errors_by_class_are_shares_of_attempts_without_spent_reasoning_budgets(
    conn: asyncpg.Connection, mode: str
) -> None:
    """A probe whose output budget ran out while reasoning is no attempt: it has no line of its own either."""
    await migrate(conn, mode=mode)
    now = await conn.fetchval("SELECT now()")
    classes = [None] * 10 + ["timeout_ttft"] * 3 + ["http_5xx"] + ["budget_exhausted"] * 4
    rows = [
        probe_result(
            started_at=now - timedelta(minutes=30) + timedelta(seconds=i),
            router="r1",
            model="m/reasoner",
            provider="P1",
            region="eu",
            error_class=cls,
            ttft_ms=None if cls else 200.0,
        )
        for i, cls in enumerate(classes)
    ]
    assert await store(conn, mode, rows) == len(rows)
    await refresh_hist(conn, now=now)
    tr = TimeRange(now - timedelta(hours=2), now, timedelta(hours=1))
    drill = next(d.render() for d in all_dashboards() if d.uid == "routewatch-model")
    panel = next(q for q in sql_queries(drill) if "Error rate by class" in q.where)
    options = await variable_options(drill, lambda s: _first_column(conn, s), tr)
    found = await conn.fetch(expand(panel.sql, selections(drill, options)["all"], tr))
    shares: dict[str, float] = {}
    for r in found:
        shares[r["metric"]] = shares.get(r["metric"], 0.0) + r["value"]
    # 14 attempts: 10 answered, 3 timed out, one 5xx; the 4 spent budgets are not among them.
    assert shares == {"timeout_ttft": pytest.approx(3 / 14), "http_5xx": pytest.approx(1 / 14)}
    spent = next(q for q in sql_queries(drill) if "Out of output budget" in q.where)
    counted = await conn.fetch(expand(spent.sql, selections(drill, options)["all"], tr))
    assert sum(r["value"] for r in counted) == 4 and {r["metric"] for r in counted} == {"r1 eu"}
