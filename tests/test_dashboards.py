"""The Grafana dashboards as code: the committed JSON is current, passes the linter's rules, and the
linter and Grafana's macro expansion (reproduced in routewatch.grafana) do what Grafana's do."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from routewatch.grafana.dashboards import MODEL_UID
from routewatch.grafana.lint import lint, promql_problems
from routewatch.grafana.render import dashboard_files, stale
from routewatch.grafana.sql_macros import TimeRange, VariableValue, expand, format_interval, interpolate_variables

pytestmark = pytest.mark.unit

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"


def committed() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def test_committed_json_is_what_the_code_makes() -> None:
    assert stale(DASHBOARDS) == [], "regenerate with: python -m routewatch.grafana"
    assert set(committed()) == set(dashboard_files())


def test_check_command_names_a_stale_file(tmp_path: Path) -> None:
    for name, text in dashboard_files().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    edited = tmp_path / f"{MODEL_UID}.json"
    edited.write_text(edited.read_text(encoding="utf-8").replace("TTFT", "ttft"), encoding="utf-8")
    from routewatch.grafana.__main__ import main

    assert main(["--check", str(tmp_path)]) == 1
    assert main([str(tmp_path)]) == 0  # rewrites it
    assert main(["--check", str(tmp_path)]) == 0
    assert main([str(tmp_path / "new")]) == 0
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == sorted(dashboard_files())


def test_the_four_dashboards_and_the_drilldown_uid_others_link_to() -> None:
    uids = [d["uid"] for d in committed().values()]
    assert sorted(uids) == ["routewatch-fleet", "routewatch-health", "routewatch-model", "routewatch-slo"]
    model = committed()[f"{MODEL_UID}.json"]
    names = {v["name"]: v for v in model["templating"]["list"]}
    assert names["model"]["multi"] is False, "?var-model=<id> selects exactly one model"
    assert {"router", "model", "provider", "region", "ds_postgres", "ds_prometheus"} <= set(names)
    assert [a["name"] for a in model["annotations"]["list"] if not a.get("builtIn")] == ["Incidents"]


@pytest.mark.parametrize("name", sorted(dashboard_files()))
def test_committed_dashboards_pass_every_lint_rule(name: str) -> None:
    assert lint(committed()[name]) == []


def test_every_panel_has_history_or_live_queries_only_through_variables() -> None:
    for d in committed().values():
        kinds = {t["datasource"]["type"] for p in d["panels"] for t in p["targets"]}
        assert kinds <= {"grafana-postgresql-datasource", "prometheus"}
        for p in d["panels"]:
            for t in p["targets"]:
                if "rawSql" in t:
                    assert "probe_hist_hourly" not in t["rawSql"], "Grafana cannot decode the histograms"


def _broken(mutate: Any) -> list[str]:
    d = copy.deepcopy(committed()[f"{MODEL_UID}.json"])
    mutate(d)
    return lint(d)


def test_the_linter_catches_each_kind_of_problem() -> None:
    def long_uid(d: Any) -> None:
        d["uid"] = "x" * 41

    def overlap(d: Any) -> None:
        d["panels"][1]["gridPos"] = dict(d["panels"][0]["gridPos"])

    def too_wide(d: Any) -> None:
        d["panels"][2]["gridPos"]["x"] = 20

    def same_id(d: Any) -> None:
        d["panels"][1]["id"] = d["panels"][0]["id"]

    def no_unit(d: Any) -> None:
        del d["panels"][0]["fieldConfig"]["defaults"]["unit"]

    def no_description(d: Any) -> None:
        d["panels"][0]["description"] = " "

    def fixed_datasource(d: Any) -> None:
        d["panels"][0]["datasource"] = {"type": "grafana-postgresql-datasource", "uid": "P1234"}

    def raw_counter(d: Any) -> None:
        d["panels"][-1]["targets"][0]["expr"] = "routewatch_probes_total"

    def unused(d: Any) -> None:
        d["templating"]["list"].append({"name": "orphan", "type": "custom", "query": "a,b"})

    def old_schema(d: Any) -> None:
        d["schemaVersion"] = 16

    expected = {
        long_uid: "uid",
        overlap: "overlaps",
        too_wide: "not within the 24 columns",
        same_id: "used twice",
        no_unit: "no unit",
        no_description: "no description",
        fixed_datasource: "is not a data source variable",
        raw_counter: "without rate()",
        unused: "$orphan is never used",
        old_schema: "schemaVersion",
    }
    for mutate, words in expected.items():
        problems = _broken(mutate)
        assert any(words in p for p in problems), (mutate.__name__, problems)


def test_promql_rules() -> None:
    assert promql_problems("sum(rate(routewatch_probes_total[$__rate_interval]))") == []
    assert promql_problems('increase(routewatch_results_dropped_total{instance=~"$instance"}[$__rate_interval])') == []
    assert promql_problems("routewatch_probes_total / 2")
    assert promql_problems("rate(routewatch_probes_total[5m])"), "a fixed window misses scrapes at some resolutions"


# -- Grafana's expansion -----------------------------------------------------------------------------------------

RANGE = TimeRange(
    datetime(2026, 11, 20, 10, 0, 0, tzinfo=UTC),
    datetime(2026, 11, 27, 10, 30, 0, 500000, tzinfo=UTC),
    timedelta(minutes=10),
)


def test_macros_expand_as_grafanas_postgres_engine() -> None:
    sql = (
        "SELECT $__timeGroupAlias(bucket, $__interval), $__time(bucket), $__timeEpoch(bucket) FROM t"
        " WHERE $__timeFilter(bucket) AND $__unixEpochFilter(epoch) AND x > $__timeFrom() AND y < $__timeTo()"
        " AND $__interval_ms > 0 AND a = $__unixEpochFrom() AND b = $__unixEpochTo()"
        " GROUP BY $__timeGroup(bucket, '1h')"
    )
    assert expand(sql, {}, RANGE) == (
        'SELECT floor(extract(epoch from bucket)/600)*600 AS "time", bucket AS "time",'
        ' extract(epoch from bucket) as "time" FROM t'
        " WHERE bucket BETWEEN '2026-11-20T10:00:00Z' AND '2026-11-27T10:30:00.5Z'"
        " AND epoch >= 1795168800 AND epoch <= 1795775400"
        " AND x > '2026-11-20T10:00:00Z' AND y < '2026-11-27T10:30:00.5Z'"
        " AND 600000 > 0 AND a = 1795168800 AND b = 1795775400"
        " GROUP BY floor(extract(epoch from bucket)/3600)*3600"
    )
    assert expand("SELECT $__timeGroup(bucket, 5m) FROM t", {}, RANGE, timescaledb=True) == (
        "SELECT time_bucket('300.000s',bucket) FROM t"
    )
    # Before Grafana 5.3 $__timeGroup carried the alias; a comma right after it still adds it.
    assert expand("SELECT $__timeGroup(bucket, 1h), v FROM t", {}, RANGE) == (
        'SELECT floor(extract(epoch from bucket)/3600)*3600 AS "time", v FROM t'
    )


def test_interval_short_form() -> None:
    assert [format_interval(timedelta(seconds=s)) for s in (0.2, 30, 600, 3600, 7200, 86400)] == [
        "200ms",
        "30s",
        "10m",
        "1h",
        "2h",
        "1d",
    ]


def test_variables_expand_as_grafanas_sql_data_sources() -> None:
    variables = {
        "one": VariableValue.single("O'Brien"),
        "many": VariableValue.many("a", "b'c"),
    }
    sql = "$one ${one} ${one:sqlstring} [[one]] | $many ${many:sqlstring} ${many:csv} ${many:raw} $__timeFilter(x)"
    assert interpolate_variables(sql, variables) == (
        "O''Brien O''Brien 'O''Brien' O''Brien | 'a','b''c' 'a','b''c' a,b'c a,b'c $__timeFilter(x)"
    )
    with pytest.raises(KeyError, match="nope"):
        interpolate_variables("$nope", variables)


def test_a_stat_or_gauge_over_a_sql_table_shows_each_row() -> None:
    for d in committed().values():
        for p in d["panels"]:
            if p["type"] in ("stat", "bargauge") and p["targets"][0].get("format") == "table":
                assert p["options"]["reduceOptions"]["values"] is True, p["title"]
