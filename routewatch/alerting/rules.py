"""The Prometheus recording and alerting rules for one :class:`~routewatch.alerting.plan.AlertPlan`.

Recording rules (group ``routewatch-recording``):

* ``routewatch:configured_route`` = 1 per configured (router, model) and
  region that probes it, with labels ``router``, ``model`` and ``region``:
  the inventory the silence alert joins against, so that a route one region
  stops probing is seen even while the others still probe it;
* ``routewatch:configured_model`` = 1 per configured (router, model), its
  ``region`` every region, comma-separated: the inventory of the alerts on
  figures that merge every region (the model state, the published p95), so
  that they fire once, not once per region, and carry the router and region
  labels Alertmanager routes on;
* per burn window W: ``routewatch:route_probes:increaseW``,
  ``routewatch:route_probe_failures:increaseW`` and
  ``routewatch:route_error_ratio:W`` by (router, model, region), from the
  prober's per-route counters.

Alerting rules (group ``routewatch-alerts``): :func:`alerts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote_plus

from routewatch.alerting.plan import AlertPlan, BurnAlert
from routewatch.alerting.promql import Label, Template, duration, label_value, number

__all__ = [
    "DRILL_DOWN_UID",
    "HEALTH_UID",
    "ROUTE_LABELS",
    "Alert",
    "Recording",
    "alerts",
    "ratio_name",
    "recordings",
]

DRILL_DOWN_UID = "routewatch-model"
"""The model drill-down dashboard's uid: every per-model alert links there."""
HEALTH_UID = "routewatch-health"
"""The prober and aggregator health dashboard's uid: the process alerts link there."""
ROUTE_LABELS = ("router", "model", "region")
CONFIGURED = "routewatch:configured_route"
CONFIGURED_MODEL = "routewatch:configured_model"


@dataclass(frozen=True, slots=True)
class Recording:
    """A recording rule."""

    record: str
    expr: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Alert:
    """An alerting rule: expression, hold, labels and annotations."""

    name: str
    expr: str
    for_s: float
    severity: str
    summary: Template
    description: Template
    dashboard: Template
    per_route: bool  # its alerts carry router, model and region from the data; else region is static
    region: str

    def labels(self) -> dict[str, str]:
        """The static labels: severity, and the region for an alert about a routewatch process."""
        labels = {"severity": self.severity}
        if not self.per_route:
            labels["region"] = self.region
        return labels

    def annotations(self) -> dict[str, Template]:
        """summary, description and dashboard_url, as templates."""
        return {"summary": self.summary, "description": self.description, "dashboard_url": self.dashboard}


def increase_name(metric: str, window_s: float) -> str:
    """The recording rule holding the per-route increase of ``metric`` over ``window_s``."""
    return f"routewatch:{metric}:increase{duration(window_s)}"


def ratio_name(window_s: float) -> str:
    """The recording rule holding the per-route error ratio over ``window_s``."""
    return f"routewatch:route_error_ratio:{duration(window_s)}"


def _windows(plan: AlertPlan) -> list[float]:
    return sorted({w for b in plan.burns for w in (b.long_s, b.short_s)})


def recordings(plan: AlertPlan) -> list[Recording]:
    """The route inventory and the per-window increases and error ratios."""
    out = [
        Recording(CONFIGURED, "vector(1)", (("router", router), ("model", model), ("region", region)))
        for router, model in plan.routes
        for region in plan.regions
    ]
    out.extend(
        Recording(CONFIGURED_MODEL, "vector(1)", (("router", router), ("model", model), ("region", plan.region)))
        for router, model in plan.routes
    )
    by = "sum by (router, model, region)"
    for w in _windows(plan):
        probes, failures = increase_name("route_probes", w), increase_name("route_probe_failures", w)
        out.append(Recording(probes, f"{by} (increase(routewatch_route_probes_total[{duration(w)}]))"))
        out.append(Recording(failures, f"{by} (increase(routewatch_route_probe_failures_total[{duration(w)}]))"))
        out.append(Recording(ratio_name(w), f"{failures} / {probes}"))
    return out


def _link(plan: AlertPlan, uid: str, per_route: bool, merged: bool = False) -> Template:
    """The dashboard of the alert. ``merged``: about a figure of every region, whose ``region``
    label lists them all; with several, the link leaves the dashboard's region choice alone."""
    base = plan.deployment.grafana_url.rstrip("/")
    if not per_route:
        # The region is a static label of these rules, and templates see only the series' labels.
        if len(plan.regions) > 1:
            return Template((f"{base}/d/{uid}",))
        return Template((f"{base}/d/{uid}?var-region={quote_plus(plan.region, safe='')}",))
    route = (f"{base}/d/{uid}?var-router=", Label("router", query=True), "&var-model=", Label("model", query=True))
    if merged and len(plan.regions) > 1:
        return Template(route)
    return Template((*route, "&var-region=", Label("region", query=True)))


def _route_text(text: str) -> Template:
    """``text`` with ``{route}`` standing for "<model> via <router> (<region>)"."""
    before, _, after = text.partition("{route}")
    return Template((before, Label("model"), " via ", Label("router"), " (", Label("region"), ")", after))


def _burn(plan: AlertPlan, b: BurnAlert) -> Alert:
    long_, short = duration(b.long_s), duration(b.short_s)
    thr = number(min(b.threshold, 1.0))
    terms = [
        f"{ratio_name(b.long_s)} >= {thr}",
        f"{increase_name('route_probes', b.long_s)} >= {b.min_probes_long}",
        f"{increase_name('route_probe_failures', b.long_s)} >= {b.min_failures_long}",
        f"{ratio_name(b.short_s)} >= {thr}",
        f"{increase_name('route_probes', b.short_s)} >= {b.min_probes_short}",
        f"{increase_name('route_probe_failures', b.short_s)} >= {b.min_failures_short}",
    ]
    return Alert(
        name=b.name,
        expr="\n  and ".join(terms),
        for_s=b.for_s,
        severity=b.severity,
        summary=_route_text(f"{{route}} is burning its error budget {number(b.burn)}x too fast ({long_})"),
        description=_route_text(
            f"At least {number(100 * min(b.threshold, 1.0))}% of the probes of {{route}} failed over the last "
            f"{long_} and the last {short} ({number(b.burn)}x the SLO's {number(100 * plan.budget)}% error "
            f"budget), with at least {b.min_probes_long} probes and {b.min_failures_long} failures in {long_} "
            f"and {b.min_probes_short} probes and {b.min_failures_short} failures in {short}."
        ),
        dashboard=_link(plan, DRILL_DOWN_UID, True),
        per_route=True,
        region=plan.region,
    )


def _per_route(
    plan: AlertPlan,
    name: str,
    expr: str,
    for_s: float,
    severity: str,
    summary: str,
    text: str,
    *,
    merged: bool = False,
) -> Alert:
    return Alert(
        name=name,
        expr=expr,
        for_s=for_s,
        severity=severity,
        summary=_route_text(summary),
        description=_route_text(text),
        dashboard=_link(plan, DRILL_DOWN_UID, True, merged),
        per_route=True,
        region=plan.region,
    )


def _process(plan: AlertPlan, name: str, expr: str, for_s: float, severity: str, summary: str, text: str) -> Alert:
    instance = Template((" (", Label("instance"), ")"))
    return Alert(
        name=name,
        expr=expr,
        for_s=for_s,
        severity=severity,
        summary=Template((summary, *instance.parts)),
        description=Template((text,)),
        dashboard=_link(plan, HEALTH_UID, False),
        per_route=False,
        region=plan.region,
    )


def alerts(plan: AlertPlan) -> list[Alert]:
    """Every alerting rule, per route first (burn rates, TTFT, down, silence), then per process."""
    window = label_value(plan.ttft_window)
    job = label_value(plan.deployment.job)
    ttft = number(plan.ttft_threshold_s)
    out = [_burn(plan, b) for b in plan.burns]
    out.append(
        _per_route(
            plan,
            "RoutewatchTTFTAboveSLO",
            f"{CONFIGURED_MODEL} * on (router, model) group_left ()\n"
            f"(\n  max by (router, model) (routewatch_ttft_p95_seconds{{window={window}}}) > {ttft}\n"
            f"  and on (router, model)\n"
            f"  max by (router, model) (routewatch_window_probes_ok{{window={window}}}) >= {plan.ttft_min_ok}\n)",
            plan.ttft_for_s,
            "ticket",
            "p95 time to first token of {route} is above its SLO",
            f"The p95 time to first token of {{route}} over the last {plan.ttft_window} has been above the SLO's "
            f"{ttft} s for {duration(plan.ttft_for_s)}, over at least {plan.ttft_min_ok} ok probes.",
            merged=True,
        )
    )
    out.append(
        _per_route(
            plan,
            "RoutewatchModelDown",
            f"{CONFIGURED_MODEL} * on (model) group_left ()\n"
            '(max by (model) (routewatch_model_state{state="down"}) == 1)',
            plan.model_down_for_s,
            "page",
            "{route} is down",
            f"routewatch's model-state engine has called {{route}} down (at least {plan.down_after} consecutive "
            f"failed probes) for {duration(plan.model_down_for_s)}.",
            merged=True,
        )
    )
    fresh = duration(plan.fresh_window_s)
    out.append(
        _per_route(
            plan,
            "RoutewatchNoFreshProbes",
            # A route counts only once the inventory held it a whole window ago: before that (Prometheus just
            # started, or the route is new) the window is not all watched, and without the offset the alert
            # paged after the hold alone, not the window plus the hold its description promises.
            f"{CONFIGURED} offset {fresh} unless on (router, model, region)\n"
            f"(sum by (router, model, region) (increase(routewatch_route_probes_total[{fresh}])) > 0)\n"
            # A route the daily budget paused is silent on purpose: RoutewatchBudgetPausedSeries says so.
            "unless on (router, model)\n(max by (router, model) (routewatch_budget_paused) == 1)",
            plan.fresh_for_s,
            "page",
            "No probe of {route} has completed recently",
            f"No probe of {{route}} completed in {fresh} (the total timeout plus three intervals) for a further "
            f"{duration(plan.fresh_for_s)}: that region's prober is dead, stuck or not scraped, and this model is "
            "not watched from there.",
        )
    )
    out.append(
        _process(
            plan,
            "RoutewatchScrapeFailing",
            f"up{{job={job}}} == 0",
            plan.scrape_for_s,
            "page",
            "Prometheus cannot scrape routewatch",
            f"Scrapes of the {plan.deployment.job} job have failed for {duration(plan.scrape_for_s)}: "
            "the process is down or its /metrics does not answer.",
        )
    )
    out.append(
        _process(
            plan,
            "RoutewatchStatsStale",
            f"routewatch_stats_age_seconds > {plan.stale_refreshes} * routewatch_stats_refresh_interval_seconds",
            plan.stale_for_s,
            "page",
            "routewatch's published stats are stale",
            f"The stats routewatch publishes are older than {plan.stale_refreshes} refresh intervals and have "
            f"been for {duration(plan.stale_for_s)}: the refresh is stuck, so the API, status page and model "
            "states are frozen.",
        )
    )
    pending = duration(plan.pending_window_s)
    out.append(
        _process(
            plan,
            "RoutewatchSpoolBacklogGrowing",
            f"min_over_time(routewatch_results_pending[{pending}]) > 0\n"
            f"and deriv(routewatch_results_pending[{pending}]) > 0",
            plan.pending_for_s,
            "ticket",
            "routewatch's result backlog keeps growing",
            f"Results waiting to be stored have not drained once in {pending} and keep growing: the database "
            "is slower than the probes, or unreachable; results wait in the spool.",
        )
    )
    out.append(
        _process(
            plan,
            "RoutewatchSpoolNearlyFull",
            f"routewatch_spool_bytes > {plan.spool_limit_bytes}",
            plan.spool_for_s,
            "page",
            "routewatch's spool is over 80% of its limit",
            f"The local spool holds over {plan.spool_limit_bytes} bytes (80% of storage.spool_max_mb): "
            "results will be lost when it is full.",
        )
    )
    out.append(
        _process(
            plan,
            "RoutewatchBudgetPausedSeries",
            "routewatch_budget_series_paused > 0",
            plan.scrape_for_s,
            "ticket",
            "routewatch's daily budget has paused probing",
            "Today's measured spend reached budget.usd_per_day: the dearest series are not probed until the "
            "UTC day turns, so their figures go stale. GET /v1/costs lists them.",
        )
    )
    out.append(_cost_ratio(plan))
    writer = duration(plan.writer_window_s)
    out.append(
        _process(
            plan,
            "RoutewatchWriterNotStoring",
            "routewatch_writer_running == 0\nor\n(\n"
            f"  sum without (result) (increase(routewatch_probes_total[{writer}])) > 0\n"
            f"  unless increase(routewatch_results_stored_total[{writer}]) > 0\n)",
            plan.writer_for_s,
            "page",
            "routewatch is probing but storing nothing",
            f"The result writer has died, or probes completed over the last {writer} and none was stored: "
            "results pile up in the spool.",
        )
    )
    overload = duration(plan.overload_window_s)
    share = number(plan.overload_ratio)
    percent = f"{plan.overload_ratio:.0%}"
    out.append(
        _process(
            plan,
            "RoutewatchProberOverloaded",
            f"sum without (result) (increase(routewatch_probes_overloaded_total[{overload}]))\n"
            f"/ sum without (result) (increase(routewatch_probes_total[{overload}])) > {share}",
            plan.overload_for_s,
            "ticket",
            "routewatch's prober is too busy to measure",
            f"Over {percent} of the probes this process completed in the last {overload} were flagged "
            "prober_overloaded (its event loop lagged past schedule.max_loop_lag): they are left out of every "
            "figure, so its models' figures thin out and RoutewatchNoFreshProbes may page for them although it "
            "runs. Give it more CPU, or fewer series per process (more prober processes).",
        )
    )
    return out


def _cost_ratio(plan: AlertPlan) -> Alert:
    """The router's reported cost far from the computed one: the price routewatch costs a model at is wrong.

    Per (router, model) over every instance (each ``run`` or ``serve`` exports the same gauge), with the
    static region of the process alerts: the cost is the model's, whichever region probed it. The gauge
    exists only for models with a price whose router reports costs, discovered ones included, so no
    inventory join: an unpriced model or a router that reports nothing never fires."""
    low, high, hold = number(plan.cost_ratio_low), number(plan.cost_ratio_high), duration(plan.cost_ratio_for_s)
    route = (Label("model"), " via ", Label("router"))
    base = plan.deployment.grafana_url.rstrip("/")
    link = (f"{base}/d/{DRILL_DOWN_UID}?var-router=", Label("router", query=True))
    return Alert(
        name="RoutewatchCostReportedMismatch",
        expr=f"max by (router, model) (routewatch_cost_reported_ratio) > {high}\n"
        f"or\nmin by (router, model) (routewatch_cost_reported_ratio) < {low}",
        for_s=plan.cost_ratio_for_s,
        severity="ticket",
        summary=Template((*route, ": the router's reported cost is far from the computed one")),
        description=Template(
            (
                "Today the router's reported cost of the probes of ",
                *route,
                f" has been outside {low} to {high} times the cost routewatch computes from their tokens "
                f"and the model's price for {hold}: the price in probes.yaml, or the one the router's model "
                "list publishes, is wrong, and so are the computed spend and the cost plan. GET /v1/costs shows "
                "the model's price, its source and reported_vs_computed.",
            )
        ),
        dashboard=Template((*link, "&var-model=", Label("model", query=True))),
        per_route=False,
        region=plan.region,
    )
