"""promtool unit tests for the generated rules.

Per alert: it fires, stays quiet on one failure and on thin data, and resolves.

Each test group feeds synthetic series at the probe interval and checks the
alerts at chosen times. The burn-rate groups run four routes side by side:
a total outage (fires and keeps firing), the same outage recovering (fires,
then resolves once the short window is clean), a single failed probe among
ok ones (never fires) and a route whose few probes all failed (thin data:
never fires). Every other alert runs one series through phases: healthy, a
one-sample blip, healthy, thin data where the alert has a notion of it, a
long bad spell, healthy again; it must be quiet after the blip and the thin
spell, firing at the end of the bad spell and resolved after it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from routewatch.alerting.plan import AlertPlan, BurnAlert
from routewatch.alerting.promql import duration, label_value, number
from routewatch.alerting.rules import Alert

__all__ = ["TestFile", "burn_step", "test_files"]

Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Check:
    at_step: int
    alert: str
    firing: tuple[Labels, ...]


@dataclass(frozen=True, slots=True)
class _Group:
    name: str
    series: tuple[tuple[str, str], ...]  # (series selector, values)
    checks: tuple[_Check, ...]
    step_s: float  # the input series' sample interval


@dataclass(frozen=True, slots=True)
class TestFile:
    """One promtool test file: its name's suffix, its evaluation interval and its test groups."""

    suffix: str  # "" for the main file, e.g. ".burn-3d" for a long burn window's own file
    evaluation_interval_s: float
    groups: list[dict[str, Any]]


def _selector(metric: str, labels: Labels) -> str:
    inside = ",".join(f"{k}={label_value(v)}" for k, v in labels.items())
    return f"{metric}{{{inside}}}"


def gauge(*segments: tuple[float, int]) -> str:
    """Expanding notation for a gauge held at each ``(value, samples)`` in turn."""
    return " ".join(f"{number(v)}x{n - 1}" if n > 1 else number(v) for v, n in segments if n > 0)


def counter(*segments: tuple[float, int]) -> str:
    """Expanding notation for a counter rising by ``step`` per sample over each ``(step, samples)``, from 0."""
    out: list[str] = []
    value = 0.0
    for i, (step, n) in enumerate(segments):
        if n <= 0:
            continue
        start = value if i == 0 else value + step
        out.append(f"{number(start)}+{number(step)}x{n - 1}" if n > 1 else number(start))
        value = start + step * (n - 1)
    return " ".join(out)


def _steps(seconds: float, interval: float) -> int:
    return math.ceil(seconds / interval - 1e-9)


def _expected(alert: Alert, labels: Labels) -> dict[str, Any]:
    exp_labels = {**labels, **alert.labels()}
    return {
        "exp_labels": dict(sorted(exp_labels.items())),
        "exp_annotations": {k: t.expand(exp_labels) for k, t in alert.annotations().items()},
    }


def burn_step(plan: AlertPlan, b: BurnAlert) -> float:
    """The sample and evaluation interval of ``b``'s test: the probe interval, or coarser for long windows.

    At least 30 steps per short window; evaluating a three-day window every
    30 s would take promtool minutes, for nothing a coarser step misses.
    """
    return plan.interval_s * max(1, math.floor(b.short_s / 30 / plan.interval_s))


def _burn_group(plan: AlertPlan, b: BurnAlert) -> _Group:
    step = burn_step(plan, b)
    # The probes of one step of the test (several rounds when the step is coarser than the interval).
    per = plan.probes_per_interval * step / plan.interval_s
    routes = {
        case: {"router": "promtool", "model": f"case/{case}", "region": plan.regions[0]}
        for case in ("outage", "recovers", "one-failure", "thin")
    }
    fire = _steps(b.long_s + b.for_s, step) + 3
    resolve = fire + _steps(b.short_s, step) + 3
    total = resolve + 2
    thin = max(2, math.floor(b.min_probes_long / 2 / per) + 1)
    early = thin + 2
    series: list[tuple[str, str]] = []

    def route(case: str, probes: str, failures: str) -> None:
        series.append((_selector("routewatch_route_probes_total", routes[case]), probes))
        series.append((_selector("routewatch_route_probe_failures_total", routes[case]), failures))

    route("outage", counter((per, total + 1)), counter((per, total + 1)))
    route("recovers", counter((per, total + 1)), counter((per, fire + 1), (0.0, total - fire)))
    route("one-failure", counter((per, total + 1)), counter((0.0, 3), (1.0, 1), (0.0, total - 3)))
    route("thin", counter((per, thin)), counter((per, thin)))
    return _Group(
        f"{b.name}: fires on an outage, resolves after it, quiet on one failure and on thin data",
        tuple(series),
        (
            _Check(early, b.name, ()),
            _Check(fire, b.name, (routes["outage"], routes["recovers"])),
            _Check(resolve, b.name, (routes["outage"],)),
        ),
        step,
    )


@dataclass(frozen=True, slots=True)
class _Phases:
    """Sample counts of the phases one series goes through: ok, blip, ok, thin, ok, bad, ok."""

    ok: int
    bad: int
    thin: int
    blip: int = 1

    def starts(self) -> dict[str, int]:
        """The first sample of each phase, and the end."""
        out, at = {}, 0
        for name, n in self.plan():
            out[name] = at
            at += n
        out["end"] = at
        return out

    def plan(self) -> list[tuple[str, int]]:
        """(phase, samples) in order."""
        return [
            ("ok1", self.ok),
            ("blip", self.blip),
            ("ok2", self.ok),
            ("thin", self.thin),
            ("ok3", self.ok),
            ("bad", self.bad),
            ("ok4", self.ok),
        ]


def _gauge_phases(ph: _Phases, good: float, bad: float, thin: float | None = None) -> str:
    values = {"blip": bad, "thin": good if thin is None else thin, "bad": bad}
    return gauge(*((values.get(name, good), n) for name, n in ph.plan()))


def _phase_group(
    plan: AlertPlan, alert: Alert, ph: _Phases, series: Sequence[tuple[str, str]], labels: Labels
) -> _Group:
    at = ph.starts()
    return _Group(
        f"{alert.name}: quiet on a blip and on thin data, fires on a long bad spell, resolves",
        tuple(series),
        (
            _Check(at["ok2"] - 1, alert.name, ()),  # the blip's last sample: still pending at most
            _Check(at["ok3"], alert.name, ()),
            _Check(at["ok4"] - 1, alert.name, (labels,)),
            _Check(at["end"] - 1, alert.name, ()),
        ),
        plan.interval_s,
    )


def _phases(plan: AlertPlan, alert: Alert, thin: int = 0, blip: int = 1) -> _Phases:
    step = plan.interval_s
    return _Phases(ok=3, bad=_steps(alert.for_s, step) + 4, thin=thin, blip=blip)


def test_files(plan: AlertPlan, alerts: Sequence[Alert]) -> list[TestFile]:
    """The promtool tests for ``alerts`` (as built from ``plan``): a file per evaluation interval."""
    by_name = {a.name: a for a in alerts}
    main = TestFile("", plan.interval_s, [])
    files = [main]
    for b in plan.burns:
        group = _as_dict(_burn_group(plan, b), by_name)
        step = burn_step(plan, b)
        if step == plan.interval_s:
            main.groups.append(group)
        else:  # named by the unscaled window, as the alert is
            files.append(TestFile(f".burn-{duration(b.long_s * plan.deployment.scale)}", step, [group]))
    main.groups.extend(_as_dict(g, by_name) for g in _other_groups(plan, by_name))
    return files


def _other_groups(plan: AlertPlan, by_name: Mapping[str, Alert]) -> list[_Group]:
    router, model = plan.routes[0]
    # As probed from one region; the alerts on merged figures name every region.
    route = {"router": router, "model": model, "region": plan.regions[0]}
    merged = {**route, "region": plan.region}
    proc = {"job": plan.deployment.job, "instance": "routewatch:8321"}
    groups: list[_Group] = []

    down = by_name["RoutewatchModelDown"]
    # One failed probe keeps a model down (with down_after 1) until up_after ok probes: the longest blip.
    ph = _phases(plan, down, thin=3, blip=max(1, math.floor(plan.up_after_s / plan.interval_s)))
    groups.append(
        _phase_group(
            plan,
            down,
            ph,
            [
                (_selector("routewatch_model_state", {"model": model, "state": "down"}), _gauge_phases(ph, 0, 1)),
                # Thin data: the engine says unknown, never down.
                (
                    _selector("routewatch_model_state", {"model": model, "state": "unknown"}),
                    _gauge_phases(ph, 0, 0, thin=1),
                ),
            ],
            merged,
        )
    )

    ttft = by_name["RoutewatchTTFTAboveSLO"]
    ph = _phases(plan, ttft, thin=_steps(ttft.for_s, plan.interval_s) + 4)
    slow, fast = 2 * plan.ttft_threshold_s, plan.ttft_threshold_s / 2
    w = {"router": router, "model": model, "window": plan.ttft_window}
    groups.append(
        _phase_group(
            plan,
            ttft,
            ph,
            [
                (_selector("routewatch_ttft_p95_seconds", w), _gauge_phases(ph, fast, slow, thin=slow)),
                # Thin data: slow, but over fewer ok probes than slo.min_samples.
                (
                    _selector("routewatch_window_probes_ok", w),
                    _gauge_phases(ph, plan.ttft_min_ok, plan.ttft_min_ok, thin=max(0, plan.ttft_min_ok - 1)),
                ),
            ],
            merged,
        )
    )

    groups.append(_silence_group(plan, by_name["RoutewatchNoFreshProbes"], route))
    groups.append(_paused_group(plan, by_name["RoutewatchNoFreshProbes"], route))
    groups.append(_silent_from_start_group(plan, by_name["RoutewatchNoFreshProbes"], route))
    groups.append(_writer_group(plan, by_name["RoutewatchWriterNotStoring"], proc))
    groups.append(_overload_group(plan, by_name["RoutewatchProberOverloaded"], proc))

    simple: list[tuple[str, str, float, float]] = [
        ("RoutewatchScrapeFailing", "up", 1, 0),
        ("RoutewatchSpoolNearlyFull", "routewatch_spool_bytes", 0, plan.spool_limit_bytes + 1),
        ("RoutewatchBudgetPausedSeries", "routewatch_budget_series_paused", 0, 2),
    ]
    for name, metric, good, bad in simple:
        alert = by_name[name]
        ph = _phases(plan, alert)
        groups.append(_phase_group(plan, alert, ph, [(_selector(metric, proc), _gauge_phases(ph, good, bad))], proc))

    groups.extend(_cost_ratio_groups(plan, by_name["RoutewatchCostReportedMismatch"], route, proc))

    stale = by_name["RoutewatchStatsStale"]
    ph = _phases(plan, stale)
    refresh = plan.refresh_s
    groups.append(
        _phase_group(
            plan,
            stale,
            ph,
            [
                (_selector("routewatch_stats_refresh_interval_seconds", proc), gauge((refresh, ph.starts()["end"]))),
                (
                    _selector("routewatch_stats_age_seconds", proc),
                    _gauge_phases(ph, refresh / 2, (plan.stale_refreshes + 1) * refresh),
                ),
            ],
            proc,
        )
    )
    groups.append(_backlog_group(plan, by_name["RoutewatchSpoolBacklogGrowing"], proc))
    return groups


def _cost_ratio_groups(plan: AlertPlan, alert: Alert, route: Labels, proc: Labels) -> list[_Group]:
    """The reported-vs-computed ratio too high, then too low: quiet on a one-sample blip, fires on a long
    spell, resolves; exported alike by two instances (a leader and a standby), it fires once."""
    model = {"router": route["router"], "model": route["model"]}
    groups = []
    for side, bad in (("above", 2 * plan.cost_ratio_high), ("below", plan.cost_ratio_low / 2)):
        ph = _phases(plan, alert)
        values = _gauge_phases(ph, 1.0, bad)
        series = [
            (_selector("routewatch_cost_reported_ratio", {**proc, "instance": instance, **model}), values)
            for instance in (proc["instance"], "routewatch-standby:8321")
        ]
        group = _phase_group(plan, alert, ph, series, model)
        groups.append(dataclasses.replace(group, name=f"{group.name} ({side} the band)"))
    return groups


def _silence_group(plan: AlertPlan, alert: Alert, route: Labels) -> _Group:
    """Probes complete, one round is missed (quiet), then none for long (fires), then they resume."""
    step = plan.interval_s
    per = float(plan.probes_per_interval)
    quiet = _steps(plan.fresh_window_s + alert.for_s, step) + 4
    ok = _steps(plan.fresh_window_s, step) + 2
    values = counter((per, ok), (0.0, 2), (per, ok), (0.0, quiet), (per, ok + 1))
    start_quiet = 2 * ok + 2
    end = start_quiet + quiet + ok + 1
    # Every other configured route is probed all along (one that is not would rightly fire too).
    healthy = counter((per, end))
    # ... and from every region: with several, this is one region falling silent while others probe.
    others = [(_selector("routewatch_route_probes_total", other), healthy) for other in _other_routes(plan, route)]
    return _Group(
        f"{alert.name}: quiet on a missed round, fires when probes stop, resolves when they resume",
        ((_selector("routewatch_route_probes_total", route), values), *others),
        (
            _Check(ok + 2, alert.name, ()),
            _Check(start_quiet + quiet - 1, alert.name, (route,)),
            _Check(end - 1, alert.name, ()),
        ),
        plan.interval_s,
    )


def _silent_from_start_group(plan: AlertPlan, alert: Alert, route: Labels) -> _Group:
    """Prometheus and the prober start together and no probe completes: quiet until the window and the hold
    have both passed since the start (a window Prometheus has not watched whole is no evidence), then fires."""
    step = plan.interval_s
    per = float(plan.probes_per_interval)
    hold = _steps(alert.for_s, step)
    both = _steps(plan.fresh_window_s + alert.for_s, step)
    end = both + 3
    others = [
        (_selector("routewatch_route_probes_total", other), counter((per, end))) for other in _other_routes(plan, route)
    ]
    return _Group(
        f"{alert.name}: silent from Prometheus's start, quiet for the window plus the hold, then fires",
        tuple(others),
        (
            # Past the hold alone: the rule without its offset fired here.
            _Check(min(hold + 2, both - 1), alert.name, ()),
            _Check(both - 1, alert.name, ()),
            _Check(end - 1, alert.name, (route,)),
        ),
        plan.interval_s,
    )


def _paused_group(plan: AlertPlan, alert: Alert, route: Labels) -> _Group:
    """A route the budget paused stops being probed on purpose: no page, however long."""
    step = plan.interval_s
    per = float(plan.probes_per_interval)
    ok = _steps(plan.fresh_window_s, step) + 2
    quiet = 2 * (_steps(plan.fresh_window_s + alert.for_s, step) + 4)
    end = ok + quiet
    paused = {"router": route["router"], "model": route["model"], "prompt": "short"}
    others = [
        (_selector("routewatch_route_probes_total", other), counter((per, end))) for other in _other_routes(plan, route)
    ]
    return _Group(
        f"{alert.name}: quiet while the daily budget pauses the route",
        (
            (_selector("routewatch_route_probes_total", route), counter((per, ok), (0.0, quiet))),
            (_selector("routewatch_budget_paused", paused), gauge((0, ok), (1, quiet))),
            *others,
        ),
        (_Check(end - 1, alert.name, ()),),
        plan.interval_s,
    )


def _other_routes(plan: AlertPlan, route: Labels) -> list[dict[str, str]]:
    """Every (router, model, region) of the inventory but ``route``."""
    everyone = ({"router": r, "model": m, "region": region} for r, m in plan.routes for region in plan.regions)
    return [other for other in everyone if other != route]


def _calm_and_bad(plan: AlertPlan, window_s: float, alert: Alert) -> tuple[int, int]:
    """Samples of a calm spell (the rule's window clears) and of a bad one (it fills the window and outlasts
    the hold, with some to spare), for a process alert over a ``window_s`` range."""
    window = _steps(window_s, plan.interval_s)
    return window + 2, window + _steps(alert.for_s, plan.interval_s) + 4


def _writer_group(plan: AlertPlan, alert: Alert, proc: Labels) -> _Group:
    """Probes complete all along; stored results stall for one sample (quiet), then for long (fires), then resume."""
    ok, stall = _calm_and_bad(plan, plan.writer_window_s, alert)
    stored = counter((1.0, ok), (0.0, 2), (1.0, ok), (0.0, stall), (1.0, ok + 2))
    end = 3 * ok + 2 + stall + 2
    probes = _selector("routewatch_probes_total", {**proc, "result": "ok"})
    return _Group(
        f"{alert.name}: quiet on a short stall, fires when nothing is stored for long, resolves when storing resumes",
        (
            (probes, counter((1.0, end))),
            (_selector("routewatch_results_stored_total", proc), stored),
            (_selector("routewatch_writer_running", proc), gauge((1, end))),
        ),
        (
            _Check(ok + 3, alert.name, ()),
            _Check(2 * ok + 2 + stall - 1, alert.name, (proc,)),
            _Check(end - 1, alert.name, ()),
        ),
        plan.interval_s,
    )


def _overload_group(plan: AlertPlan, alert: Alert, proc: Labels) -> _Group:
    """Probes complete all along; two samples' flagged (quiet), then all for long (fires), then none (resolves)."""
    calm, busy = _calm_and_bad(plan, plan.overload_window_s, alert)
    flagged = counter((0.0, calm), (1.0, 2), (0.0, calm), (1.0, busy), (0.0, calm + 2))
    end = 3 * calm + 4 + busy
    return _Group(
        f"{alert.name}: quiet with a few probes flagged, fires when most are for long, resolves when none are",
        (
            (_selector("routewatch_probes_total", {**proc, "result": "ok"}), counter((1.0, end))),
            (_selector("routewatch_probes_overloaded_total", proc), flagged),
        ),
        (
            # A hold after the blip, while it is still in the window: a rule that took it for overload fires here.
            _Check(calm + 2 + _steps(alert.for_s, plan.interval_s) + 1, alert.name, ()),
            _Check(2 * calm + 2 + busy - 1, alert.name, (proc,)),
            _Check(end - 1, alert.name, ()),
        ),
        plan.interval_s,
    )


def _backlog_group(plan: AlertPlan, alert: Alert, proc: Labels) -> _Group:
    """A backlog that drains (quiet), then one that grows for long (fires), then drains (resolves)."""
    calm, grow = _calm_and_bad(plan, plan.pending_window_s, alert)
    # Pending goes up and back to 0 within a window: normal batching.
    spikes = gauge(*([(5, 1), (0, 1)] * (calm // 2)))
    drained = calm // 2 * 2
    values = f"{spikes} {counter((1.0, grow))} {gauge((0, calm))}"
    end = drained + grow + calm
    return _Group(
        f"{alert.name}: quiet while batches drain, fires when the backlog grows for long, resolves once it drains",
        ((_selector("routewatch_results_pending", proc), values),),
        (
            _Check(drained - 1, alert.name, ()),
            _Check(drained + grow - 1, alert.name, (proc,)),
            _Check(end - 1, alert.name, ()),
        ),
        plan.interval_s,
    )


def _as_dict(group: _Group, by_name: Mapping[str, Alert]) -> dict[str, Any]:
    step = group.step_s
    return {
        "name": group.name,
        "interval": duration(step),
        "input_series": [{"series": s, "values": v} for s, v in group.series],
        "alert_rule_test": [
            {
                "eval_time": duration(c.at_step * step),
                "alertname": c.alert,
                "exp_alerts": [_expected(by_name[c.alert], labels) for labels in c.firing],
            }
            for c in group.checks
        ],
    }
