"""The generated alert rules: current in deploy/, guarded against thin data, accepted and tested by promtool."""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_tools import tool

from routewatch.alerting import GRAFANA_FILE, RULES_FILE, TESTS_FILE, Deployment, plan_alerts, render_files
from routewatch.alerting.promql import Label, Template, duration
from routewatch.cli import main
from routewatch.config import load_config, parse_config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SHIPPED = REPO / "probes.yaml"


def _shipped_files() -> dict[str, str]:
    return render_files(plan_alerts(load_config(str(SHIPPED))))


@pytest.mark.unit
def test_committed_files_are_what_the_shipped_probes_yaml_renders() -> None:
    files = _shipped_files()
    for relative, text in files.items():
        path = DEPLOY / relative
        assert path.is_file(), f"{path} is missing: run `routewatch alerts render --config probes.yaml --out deploy`"
        assert path.read_text() == text, (
            f"{path} is stale: run `routewatch alerts render --config probes.yaml --out deploy`"
        )
    generated = {p.relative_to(DEPLOY).as_posix() for p in (DEPLOY / "prometheus").glob("routewatch-rules*")}
    assert generated == {k for k in files if k.startswith("prometheus/")}, "a rule or test file no longer generated"


@pytest.mark.unit
def test_every_alert_has_routing_labels_and_a_link_to_the_drill_down() -> None:
    rules = yaml.safe_load(_shipped_files()[RULES_FILE])
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    names = {a["alert"] for a in alerts}
    assert {
        "RoutewatchErrorBudgetBurn1h",
        "RoutewatchErrorBudgetBurn6h",
        "RoutewatchErrorBudgetBurn1d",
        "RoutewatchErrorBudgetBurn3d",
        "RoutewatchTTFTAboveSLO",
        "RoutewatchModelDown",
        "RoutewatchNoFreshProbes",
        "RoutewatchStatsStale",
        "RoutewatchSpoolBacklogGrowing",
        "RoutewatchWriterNotStoring",
        "RoutewatchProberOverloaded",
        "RoutewatchCostReportedMismatch",
    } <= names
    for a in alerts:
        assert a["labels"]["severity"] in ("page", "ticket"), a["alert"]
        assert set(a["annotations"]) == {"summary", "description", "dashboard_url"}, a["alert"]
        url = a["annotations"]["dashboard_url"]
        if "$labels.model" in a["annotations"]["summary"]:
            # Per model: router, model and region come from the series; the link opens that model's drill-down.
            assert url.startswith("http://localhost:3000/d/routewatch-model?var-router={{ $labels.router | urlquery }}")
            assert "var-model={{ $labels.model | urlquery }}" in url
        else:
            assert a["labels"]["region"] == "local" and "/d/routewatch-health" in url
    # The route inventory carries every configured model with its router and region.
    inventory = [
        r["labels"] for g in rules["groups"] for r in g["rules"] if r.get("record") == "routewatch:configured_route"
    ]
    config = load_config(str(SHIPPED))
    assert inventory == [{"router": r.name, "model": m, "region": "local"} for r in config.routers for m in r.models]


def _variant(interval: str, extra_prompts: int, down_after: int) -> str:
    """The shipped probes.yaml with another schedule, more prompts and another down_after."""
    text = SHIPPED.read_text().replace("interval: 30s", f"interval: {interval}").replace("jitter: 5s", "jitter: 200ms")
    text = text.replace("down_after: 3", f"down_after: {down_after}")
    prompts = "".join(f"  - name: p{i}\n    messages: [{{role: user, content: hi}}]\n" for i in range(extra_prompts))
    return text.replace("    min_output_tokens: 32       # ask", f"    min_output_tokens: 32\n{prompts}    # ask", 1)


@pytest.mark.unit
def test_no_window_pages_on_one_failure_or_on_thin_data_whatever_the_schedule() -> None:
    for interval, prompts_extra, down_after in (("30s", 0, 3), ("5s", 2, 1), ("5m", 0, 1), ("1h", 1, 1)):
        text = _variant(interval, prompts_extra, down_after)
        plan = plan_alerts(parse_config(text, "probes.yaml"))
        for b in plan.burns:
            # Two failures at least, in each window, whatever the ratio.
            assert b.min_failures_short >= 2 and b.min_failures_long >= 2, (interval, b.name)
            assert b.min_failures_short >= down_after and b.min_failures_long >= down_after
            # At least half the probes the schedule sends in each window (and slo.min_samples).
            expected_long = b.long_s / plan.interval_s * plan.probes_per_interval
            assert b.min_probes_long >= max(5, math.ceil(expected_long / 2)), (interval, b.name)
            # ...and each window is expected to hold enough probes for its guards, or it could never fire.
            expected_short = b.short_s / plan.interval_s * plan.probes_per_interval
            assert expected_short >= b.min_probes_short and expected_short >= 2 * b.min_failures_short, (
                interval,
                b.name,
            )
        # One failure never keeps a model down longer than the down alert's hold: up_after ok probes end it.
        assert plan.model_down_for_s > plan.up_after_s


@pytest.mark.unit
def test_the_shipped_numbers_are_the_documented_ones() -> None:
    plan = plan_alerts(load_config(str(SHIPPED)))
    got = [
        (
            duration(b.long_s),
            duration(b.short_s),
            b.burn,
            b.severity,
            round(b.threshold, 4),
            b.min_probes_long,
            b.min_failures_long,
            b.min_probes_short,
            b.min_failures_short,
        )
        for b in plan.burns
    ]
    assert got == [
        ("1h", "5m", 14.4, "page", 0.72, 120, 87, 10, 8),
        ("6h", "30m", 6.0, "page", 0.3, 720, 216, 60, 18),
        ("1d", "2h", 3.0, "ticket", 0.15, 2880, 432, 240, 36),
        ("3d", "6h", 1.0, "ticket", 0.05, 8640, 432, 720, 36),
    ]
    assert duration(plan.model_down_for_s) == "1m40s"
    # From the first failed probe to the page, at 15 s scrapes and evaluations and a 30 s group_wait.
    assert plan.model_down_promise_s() == pytest.approx(90 + 10 + 0.5 + 10 + 15 + 100 + 30 + 30 + 1)


@pytest.mark.unit
def test_templates_expand_as_go_would() -> None:
    t = Template(("see ", Label("model"), " at /d/x?m=", Label("model", query=True)))
    assert t.go() == "see {{ $labels.model }} at /d/x?m={{ $labels.model | urlquery }}"
    assert t.go(".Labels") == "see {{ .Labels.model }} at /d/x?m={{ .Labels.model | urlquery }}"
    assert t.expand({"model": "openai/gpt 4.1~x"}) == "see openai/gpt 4.1~x at /d/x?m=openai%2Fgpt+4.1~x"
    assert [duration(s) for s in (3600, 300, 90, 2.5, 259200)] == ["1h", "5m", "1m30s", "2s500ms", "3d"]


@pytest.mark.unit
def test_grafana_provisioning_queries_the_datasource_variable_and_never_uses_dollar_labels() -> None:
    doc = yaml.safe_load(_shipped_files()[GRAFANA_FILE])
    assert doc["apiVersion"] == 1
    (group,) = doc["groups"]
    assert group["folder"] == "routewatch" and group["interval"] == "60s"
    prom = yaml.safe_load(_shipped_files()[RULES_FILE])
    by_name = {r["alert"]: r for g in prom["groups"] for r in g["rules"] if "alert" in r}
    assert [r["title"] for r in group["rules"]] == list(by_name)
    for rule in group["rules"]:
        source = by_name[rule["title"]]
        assert len(rule["uid"]) <= 40
        query, reduce, threshold = rule["data"]
        assert query["datasourceUid"] == "${PROMETHEUS_DATASOURCE_UID}"
        assert query["model"]["expr"] == f"({source['expr']}) * 0 + 1"
        assert reduce["model"]["type"] == "reduce" and threshold["model"]["type"] == "threshold"
        assert rule["condition"] == "C" and rule["noDataState"] == "OK"
        assert rule["for"] == source["for"] and rule["labels"] == source["labels"]
        # Grafana reads $name in a provisioning file as an environment variable.
        assert "$labels" not in yaml.safe_dump(rule["annotations"])
        assert rule["annotations"]["__dashboardUid__"] in ("routewatch-model", "routewatch-health")


@pytest.mark.unit
def test_render_command_writes_the_files_and_refuses_a_bad_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert (
        main(["alerts", "render", "--config", str(SHIPPED), "--out", str(out), "--grafana-url", "https://g.example/"])
        == 0
    )
    assert (out / RULES_FILE).is_file() and (out / TESTS_FILE).is_file() and (out / GRAFANA_FILE).is_file()
    assert "https://g.example/d/routewatch-model?" in (out / RULES_FILE).read_text()
    assert str(out / RULES_FILE) in capsys.readouterr().out
    assert (
        main(["alerts", "render", "--config", str(SHIPPED), "--out", str(out), "--grafana-url", "https://u:p@g/"]) == 1
    )
    err = capsys.readouterr().err
    assert "must not carry credentials" in err and "u:p" not in err
    (tmp_path / "file").write_text("")
    assert main(["alerts", "render", "--config", str(SHIPPED), "--out", str(tmp_path / "file")]) == 1
    assert "cannot write" in capsys.readouterr().err
    base = ["alerts", "render", "--config", str(SHIPPED), "--out", str(out)]
    assert main([*base, "--region", "eu-west,us-east"]) == 1
    assert "a region must be a printable name without commas, not 'eu-west,us-east'" in capsys.readouterr().err
    assert main([*base, "--region", "eu-west", "--region", "eu-west"]) == 1
    assert "a region is named twice" in capsys.readouterr().err
    assert main([*base, "--region", "eu-west", "--region", "us-east"]) == 0
    rules = yaml.safe_load((out / RULES_FILE).read_text())
    regions = {r["labels"]["region"] for g in rules["groups"] for r in g["rules"] if "record" in r and "labels" in r}
    assert regions == {"eu-west", "us-east", "eu-west,us-east"}


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.system
def test_promtool_accepts_the_shipped_rules_and_their_unit_tests_pass() -> None:
    folder = DEPLOY / "prometheus"
    check = _promtool("check", "rules", "routewatch-rules.yml", cwd=folder)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    tests = sorted(p.name for p in folder.glob("*.test.yml"))
    result = _promtool("test", "rules", *tests, cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests)


@pytest.mark.system
@pytest.mark.parametrize(
    ("interval", "extra_prompts", "down_after", "scale"),
    [("5m", 1, 1, 1.0), ("1s", 0, 3, 240.0)],
    ids=["sparse: a probe every 5 minutes, 2 prompts, down_after 1", "like the real-stack test's: 1 s, windows / 240"],
)
def test_the_generated_promtool_tests_pass_for_other_schedules(
    tmp_path: Path, interval: str, extra_prompts: int, down_after: int, scale: float
) -> None:
    text = _variant(interval, extra_prompts, down_after)
    if scale != 1.0:  # a short SLO window too, as a test that cannot wait would have
        text = text.replace("window: 15m", "window: 10s")
        for phase in ("headers: 30s", "first_token: 60s", "idle: 30s", "total: 120s"):
            text = text.replace(phase, phase.split(":")[0] + ": 5s")
    plan = plan_alerts(parse_config(text, "probes.yaml"), Deployment(scale=scale))
    names = []
    for relative, text in render_files(plan).items():
        if relative.startswith("prometheus/"):
            (tmp_path / Path(relative).name).write_text(text)
            names.append(Path(relative).name)
    result = _promtool("test", "rules", *sorted(n for n in names if n.endswith(".test.yml")), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr


def _without_burn_guards(rule: dict[str, Any]) -> None:
    if rule.get("alert", "").startswith("RoutewatchErrorBudgetBurn"):
        rule["expr"] = "\n  and ".join(t for t in rule["expr"].split("\n  and ") if "_ratio:" in t)


def _short_model_down_hold(rule: dict[str, Any]) -> None:
    if rule.get("alert") == "RoutewatchModelDown":
        rule["for"] = "30s"


def _cost_ratio_without_hold(rule: dict[str, Any]) -> None:
    if rule.get("alert") == "RoutewatchCostReportedMismatch":
        del rule["for"]


def _cost_ratio_above_only(rule: dict[str, Any]) -> None:
    if rule.get("alert") == "RoutewatchCostReportedMismatch":
        rule["expr"] = rule["expr"].split("\nor\n")[0]


def _silence_judged_before_its_window(rule: dict[str, Any]) -> None:
    if rule.get("alert") == "RoutewatchNoFreshProbes":
        rule["expr"] = re.sub(r"routewatch:configured_route offset \S+ ", "routewatch:configured_route ", rule["expr"])
        assert "offset" not in rule["expr"]


def _overload_on_any_flagged_probe(rule: dict[str, Any]) -> None:
    if rule.get("alert") == "RoutewatchProberOverloaded":
        rule["expr"] = re.sub(r"> [0-9.]+$", "> 0", rule["expr"])
        assert rule["expr"].endswith("> 0")


@pytest.mark.system
@pytest.mark.parametrize(
    ("mutate", "caught"),
    [
        (_without_burn_guards, "case/thin"),
        (_short_model_down_hold, "RoutewatchModelDown: quiet on a blip"),
        (_cost_ratio_without_hold, "RoutewatchCostReportedMismatch: quiet on a blip"),
        (_cost_ratio_above_only, "resolves (below the band)"),
        (_silence_judged_before_its_window, "RoutewatchNoFreshProbes: silent from Prometheus's start"),
        (_overload_on_any_flagged_probe, "RoutewatchProberOverloaded: quiet with a few probes flagged"),
    ],
    ids=[
        "burn alerts without their minimum probes and failures",
        "model-down hold shorter than one failure lasts",
        "cost ratio alert without its hold",
        "cost ratio alert without the lower side of its band",
        "silence alert judging a window Prometheus has not watched whole",
        "overload alert firing on any flagged probe",
    ],
)
def test_promtool_tests_fail_when_a_guard_is_removed(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], caught: str
) -> None:
    """The unit tests can fail: without its guard, thin data or one failure pages, and promtool says where."""
    files = _shipped_files()
    rules = yaml.safe_load(files[RULES_FILE])
    for group in rules["groups"]:
        for rule in group["rules"]:
            mutate(rule)
    (tmp_path / "routewatch-rules.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / "t.test.yml").write_text(files[TESTS_FILE])
    result = _promtool("test", "rules", "t.test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert caught in result.stdout + result.stderr


@pytest.mark.system
def test_the_example_prometheus_and_alertmanager_configurations_are_valid() -> None:
    prometheus = _promtool("check", "config", "prometheus.yml", cwd=DEPLOY / "prometheus")
    assert prometheus.returncode == 0, prometheus.stdout + prometheus.stderr
    assert "1 rule files found" in prometheus.stdout  # the generated rules, next to it
    alertmanager = subprocess.run(
        [tool("amtool"), "check-config", "alertmanager.yml"],
        cwd=DEPLOY / "alertmanager",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert alertmanager.returncode == 0, alertmanager.stdout + alertmanager.stderr
    assert "2 inhibit rules" in alertmanager.stdout


def _silence_across_regions(rule: dict[str, Any]) -> None:
    if rule.get("alert") == "RoutewatchNoFreshProbes":
        rule["expr"] = rule["expr"].replace("(router, model, region)", "(router, model)")


@pytest.mark.system
def test_a_region_falling_silent_pages_while_another_region_still_probes_the_route(tmp_path: Path) -> None:
    """Rendered for two regions, the silence test stops one region's probes while the other's go on:
    the alert fires for that region; joined across regions (the mutation), it would stay quiet."""
    plan = plan_alerts(load_config(str(SHIPPED)), Deployment(regions=("eu-west", "us-east")))
    files = render_files(plan)
    rules = yaml.safe_load(files[RULES_FILE])
    inventory = [
        r["labels"] for g in rules["groups"] for r in g["rules"] if r.get("record") == "routewatch:configured_route"
    ]
    assert {r["region"] for r in inventory} == {"eu-west", "us-east"}
    assert len(inventory) == 2 * len(plan.routes)
    for name, text in (("routewatch-rules.yml", files[RULES_FILE]), ("t.test.yml", files[TESTS_FILE])):
        (tmp_path / name).write_text(text)
    result = _promtool("test", "rules", "t.test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    for group in rules["groups"]:
        for rule in group["rules"]:
            _silence_across_regions(rule)
    (tmp_path / "routewatch-rules.yml").write_text(yaml.safe_dump(rules))
    result = _promtool("test", "rules", "t.test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "RoutewatchNoFreshProbes: quiet on a missed round" in result.stdout + result.stderr
