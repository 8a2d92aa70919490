"""The harness that collects dashboard PromQL and expands Grafana's variables (used by the real-stack test)."""

from __future__ import annotations

from pathlib import Path

import pytest
from promql_panels import dashboard_files, panel_queries, substitute

pytestmark = pytest.mark.unit

DASHBOARD = {
    "templating": {
        "list": [
            {"name": "prom", "type": "datasource", "query": "prometheus"},
            {"name": "pg", "type": "datasource", "query": "grafana-postgresql-datasource"},
            {"name": "model", "type": "query", "query": "label_values(routewatch_model_state, model)", "multi": True},
        ]
    },
    "panels": [
        {
            "title": "p95",
            "datasource": {"type": "prometheus", "uid": "${prom}"},
            "targets": [{"expr": 'routewatch_ttft_p95_seconds{model=~"$model"}'}],
        },
        {
            "title": "row",
            "type": "row",
            "panels": [
                {
                    "title": "nested rate",
                    "targets": [
                        {
                            "datasource": {"uid": "$prom"},
                            "expr": "rate(routewatch_route_probes_total[$__rate_interval])",
                        }
                    ],
                },
                {"title": "sql", "datasource": {"uid": "${pg}"}, "targets": [{"rawSql": "SELECT 1", "expr": "nope"}]},
            ],
        },
    ],
}


def test_collects_every_prometheus_target_including_nested_ones_and_skips_sql() -> None:
    assert panel_queries(DASHBOARD) == [
        ("p95", 'routewatch_ttft_p95_seconds{model=~"$model"}'),
        ("nested rate", "rate(routewatch_route_probes_total[$__rate_interval])"),
    ]


def test_expands_variables_as_grafana_does() -> None:
    many = {"model": ["openai/gpt-4.1-nano", "a.b"]}
    assert substitute('x{model=~"$model"}', many) == r'x{model=~"(openai/gpt-4\\.1-nano|a\\.b)"}'
    assert substitute('x{model="${model}"}', {"model": ["m"]}) == 'x{model="m"}'
    assert substitute("rate(x[$__rate_interval]) and [[model]]", {"model": ["m"]}) == "rate(x[4s]) and m"
    assert substitute("$unknown", {}) == "$unknown"


def test_no_dashboards_folder_means_no_files(tmp_path: Path) -> None:
    assert dashboard_files(tmp_path / "dashboards") == []
    (tmp_path / "dashboards").mkdir()
    (tmp_path / "dashboards" / "a.json").write_text("{}")
    assert dashboard_files(tmp_path / "dashboards") == [tmp_path / "dashboards" / "a.json"]
