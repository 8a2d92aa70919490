"""``routewatch grafana publish`` against a loopback stand-in for Grafana's HTTP API.

No Grafana server can be installed here: the stand-in (tests/grafana_standin.py)
checks paths, methods, the bearer token and the body fields Grafana's HTTP API
documentation requires, and keeps what it is given, so that a second run can be
seen to change nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from grafana_standin import GrafanaStandIn
from notify_support import AppThread

from routewatch.config.settings import Settings
from routewatch.grafana.plan import POSTGRES_UID, PROMETHEUS_UID
from routewatch.grafana_command import PublishOptions, grafana_main

pytestmark = pytest.mark.system
# The extra routewatch[grafana], installed as .ci/run does (see pyproject.toml).
pytest.importorskip("grafana_client", reason="needs the extra routewatch[grafana] (see pyproject.toml)")

TOKEN = "glsa_publish_token_0123456789"
PASSWORD = "grafana-ro-password-0123456789"
DB_URL = f"postgresql://grafana_ro:{PASSWORD}@db.internal:5432/routewatch?sslmode=verify-full"
REPO = Path(__file__).resolve().parent.parent


def _settings(token: str | None = TOKEN, db_url: str | None = DB_URL) -> Settings:
    return Settings(grafana_token=token, grafana_db_url=db_url)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    dashboards = tmp_path / "dashboards"
    dashboards.mkdir()
    for uid, title in (("routewatch-fleet", "Fleet overview"), ("routewatch-model", "Model drill-down")):
        panel = {"id": 1, "type": "timeseries", "title": "p95 TTFT", "gridPos": {"x": 0, "y": 0, "w": 24, "h": 8}}
        board = {
            "uid": uid,
            "title": title,
            "schemaVersion": 39,
            "version": 3,
            "panels": [panel],
            "tags": ["routewatch"],
        }
        (dashboards / f"{uid}.json").write_text(json.dumps(board))
    alerting = tmp_path / "alerting"
    alerting.mkdir()
    rule = {
        "uid": "rw-model-down",
        "title": "Model down",
        "condition": "C",
        "data": [
            {
                "refId": "A",
                "datasourceUid": "${PROMETHEUS_DATASOURCE_UID}",  # as Grafana's file provisioning expands it
                "relativeTimeRange": {"from": 600, "to": 0},
                "model": {"expr": 'max by (model) (routewatch_model_state{state="down"})', "refId": "A"},
            }
        ],
        "for": "2m",
        "labels": {"severity": "page"},
        "annotations": {"summary": "{{ $labels.model }} is down"},
    }
    group = {"orgId": 1, "name": "routewatch-models", "folder": "routewatch", "interval": "30s", "rules": [rule]}
    (alerting / "rules.yaml").write_text(yaml.safe_dump({"apiVersion": 1, "groups": [group]}))
    return dashboards, alerting


def _options(url: str, dashboards: Path, alerting: Path, diff: bool = False) -> PublishOptions:
    return PublishOptions(url, diff, dashboards, alerting, "http://prometheus:9090", timescaledb=True)


def test_publish_creates_everything_then_a_second_run_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grafana = GrafanaStandIn(TOKEN)
    server = AppThread(grafana.app())
    dashboards, alerting = _files(tmp_path)
    try:
        assert grafana_main(_options(server.url, dashboards, alerting), _settings()) == 0
        first = capsys.readouterr().out.splitlines()
        writes_after_first = len(grafana.writes())
        assert grafana_main(_options(server.url, dashboards, alerting), _settings()) == 0
        second = capsys.readouterr().out.splitlines()
    finally:
        server.stop()
    assert grafana.problems == []
    assert [line.split()[0] for line in first] == ["created"] * 6 + ["changed"]
    assert [" ".join(line.split()[1:3]) for line in first] == [
        "folder routewatch",
        "data source",
        "data source",
        "dashboard routewatch-fleet",
        "dashboard routewatch-model",
        "alert rule",
        "rule group",
    ]
    # The rule group got its interval from the file: the rules created it at Grafana's default.
    assert grafana.intervals[("routewatch", "routewatch-models")] == 30
    assert all(line.startswith("unchanged") for line in second), second
    assert len(grafana.writes()) == writes_after_first  # the second run only read

    pg = grafana.datasources[POSTGRES_UID]
    assert (pg["type"], pg["url"], pg["user"]) == ("grafana-postgresql-datasource", "db.internal:5432", "grafana_ro")
    assert pg["jsonData"] == {
        "database": "routewatch",
        "sslmode": "verify-full",
        "timescaledb": True,
        "postgresVersion": 1500,
        "maxOpenConns": 10,
    }
    assert grafana.secrets[POSTGRES_UID] == {"password": PASSWORD}
    assert grafana.datasources[PROMETHEUS_UID]["url"] == "http://prometheus:9090"
    stored = grafana.dashboards["routewatch-model"]
    assert stored["meta"]["folderUid"] == "routewatch" and stored["dashboard"]["title"] == "Model drill-down"
    rule = grafana.rules["rw-model-down"]
    assert (rule["folderUID"], rule["ruleGroup"], rule["for"]) == ("routewatch", "routewatch-models", "2m")
    assert rule["data"][0]["datasourceUid"] == PROMETHEUS_UID
    assert PASSWORD not in "\n".join(first + second) and TOKEN not in "\n".join(first + second)


def test_diff_shows_what_would_change_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grafana = GrafanaStandIn(TOKEN)
    server = AppThread(grafana.app())
    dashboards, alerting = _files(tmp_path)
    try:
        assert grafana_main(_options(server.url, dashboards, alerting), _settings()) == 0
        capsys.readouterr()
        board = json.loads((dashboards / "routewatch-fleet.json").read_text())
        board["title"] = "Fleet overview (renamed)"
        (dashboards / "routewatch-fleet.json").write_text(json.dumps(board))
        before = len(grafana.writes())
        assert grafana_main(_options(server.url, dashboards, alerting, diff=True), _settings()) == 0
        out = capsys.readouterr().out
    finally:
        server.stop()
    assert len(grafana.writes()) == before
    assert "would change  dashboard   routewatch-fleet (Fleet overview (renamed))" in out
    assert '-  "title": "Fleet overview",' in out and '+  "title": "Fleet overview (renamed)",' in out
    assert out.count("unchanged") == 6
    assert out.rstrip().endswith("(--diff: nothing was changed)")
    assert PASSWORD not in out


def test_refusals_are_one_line_without_a_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grafana = GrafanaStandIn("another-token")
    server = AppThread(grafana.app())
    dashboards, alerting = _files(tmp_path)
    try:
        assert grafana_main(_options(server.url, dashboards, alerting), _settings()) == 1
        refused = capsys.readouterr().err
        assert grafana_main(_options(server.url, dashboards, alerting), _settings(token=None)) == 1
        no_token = capsys.readouterr().err
        assert grafana_main(_options("http://grafana.example.com", dashboards, alerting), _settings()) == 1
        cleartext = capsys.readouterr().err
    finally:
        server.stop()
    assert refused.startswith("routewatch: publishing to Grafana failed: GrafanaUnauthorizedError")
    assert TOKEN not in refused and PASSWORD not in refused and len(refused.splitlines()) == 1
    assert no_token == "routewatch: set ROUTEWATCH_GRAFANA_TOKEN to a Grafana service-account token\n"
    assert "must be https://" in cleartext
    assert grafana.writes() == []


def test_the_repository_files_publish_and_republish_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    # Whatever dashboards/ and the alert provisioning folder hold (generated by their own commands).
    grafana = GrafanaStandIn(TOKEN)
    server = AppThread(grafana.app())
    dashboards, alerting = REPO / "dashboards", REPO / "deploy" / "grafana" / "provisioning" / "alerting"
    try:
        assert grafana_main(_options(server.url, dashboards, alerting), _settings()) == 0
        capsys.readouterr()
        assert grafana_main(_options(server.url, dashboards, alerting), _settings()) == 0
        second = capsys.readouterr().out.splitlines()
    finally:
        server.stop()
    assert grafana.problems == []
    assert len(grafana.dashboards) == len(list(dashboards.glob("*.json"))) if dashboards.is_dir() else True
    assert second and all(line.startswith("unchanged") for line in second), second


def test_a_variable_publish_cannot_fill_in_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dashboards, alerting = _files(tmp_path)
    text = (alerting / "rules.yaml").read_text().replace("${PROMETHEUS_DATASOURCE_UID}", "${MY_UID}")
    (alerting / "rules.yaml").write_text(text)
    assert grafana_main(_options("http://127.0.0.1:9", dashboards, alerting), _settings()) == 1
    err = capsys.readouterr().err
    assert "rules.yaml: ${MY_UID} is not a variable publish can fill in (PROMETHEUS_DATASOURCE_UID" in err
