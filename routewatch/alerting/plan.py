"""The numbers behind every alert, derived from probes.yaml: windows, thresholds, guards, holds, promises.

The error-rate alerts follow the multiwindow, multi-burn-rate pattern of
Google's SRE workbook: an alert fires while the error budget burns faster than
a factor over a long window *and* over a short one (the short window makes the
alert resolve soon after the errors stop). The budget is ``slo.error_rate``.

Probes are few (one per series every ``schedule.interval``, 30 s in the
example: 10 in five minutes), so a ratio alone says little: one failure out of
two probes is 50 %. Every window therefore also needs

* at least :attr:`BurnAlert.min_probes_long` / ``min_probes_short`` probes:
  half of what the schedule should have sent in it, and never fewer than
  ``slo.min_samples`` (a prober that just started, or a model just added, is
  not judged), and
* at least :attr:`BurnAlert.min_failures_long` / ``min_failures_short``
  failed probes: never fewer than 2 nor than ``slo.down_after`` (what the
  model-state engine needs to call a model down), so a single failed probe
  can never page, whatever the ratio.

A window too short to hold twice those numbers at the configured rate (a
probe every 5 minutes leaves one in the workbook's 5-minute window) is
stretched until it does, so that every alert can fire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from routewatch.config import Config
from routewatch.config.durations import parse_duration

__all__ = [
    "WORKBOOK_WINDOWS",
    "AlertPlan",
    "BurnAlert",
    "BurnWindow",
    "Deployment",
    "plan_alerts",
]


@dataclass(frozen=True, slots=True)
class BurnWindow:
    """One row of the workbook's table: a long and a short window, a burn factor, a severity."""

    long_s: float
    short_s: float
    burn: float
    severity: str


WORKBOOK_WINDOWS = (
    # 2 % of a 30-day budget in an hour, 5 % in six hours: page. 10 % in three days: ticket
    # (the workbook's fourth row, 1d/2h at 3x, sits between them and is kept as a ticket).
    BurnWindow(3600, 300, 14.4, "page"),
    BurnWindow(6 * 3600, 1800, 6.0, "page"),
    BurnWindow(86400, 7200, 3.0, "ticket"),
    BurnWindow(3 * 86400, 6 * 3600, 1.0, "ticket"),
)


@dataclass(frozen=True, slots=True)
class Deployment:
    """What the rules need that probes.yaml does not say: where Grafana is, the scrape job, the pipeline's delays.

    ``scale`` divides every burn window and every fixed hold (never a
    duration taken from probes.yaml): 1 in production; a test that cannot
    wait an hour generates its rules with, say, 60, and gets the same rules
    on a minute's scale. The intervals and ``group_wait_s`` only enter the
    promised delays (:meth:`AlertPlan.model_down_promise_s`).
    """

    grafana_url: str = "http://localhost:3000"
    job: str = "routewatch"
    # Every region whose probers report to this Prometheus; empty: the configuration's own
    # (``region:``, or ROUTEWATCH_REGION). Routes are expected to be probed from each.
    regions: tuple[str, ...] = ()
    scale: float = 1.0
    scrape_interval_s: float = 15.0
    evaluation_interval_s: float = 15.0
    group_wait_s: float = 30.0
    writer_flush_s: float = 0.5  # the batch writer's flush interval (storage's default)
    delivery_s: float = 1.0  # Prometheus to Alertmanager to the receiver, over HTTP

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"scale must be above 0, not {self.scale}")
        if not self.grafana_url.startswith(("http://", "https://")):
            raise ValueError(f"the Grafana URL must start with http:// or https://, not {self.grafana_url!r}")
        if "@" in self.grafana_url.split("//", 1)[1].split("/", 1)[0]:
            raise ValueError("the Grafana URL must not carry credentials")
        for region in self.regions:
            # A comma would be ambiguous in the joined label of the alerts about every region.
            if not region.strip() or "," in region or not region.isprintable():
                raise ValueError(f"a region must be a printable name without commas, not {region!r}")
        if len(set(self.regions)) != len(self.regions):
            raise ValueError(f"a region is named twice in {', '.join(self.regions)}")


@dataclass(frozen=True, slots=True)
class BurnAlert:
    """One multiwindow burn-rate alert with its guards."""

    name: str
    long_s: float
    short_s: float
    burn: float
    severity: str
    threshold: float  # error ratio: burn x budget
    for_s: float
    min_probes_long: int
    min_probes_short: int
    min_failures_long: int
    min_failures_short: int


@dataclass(frozen=True, slots=True)
class AlertPlan:
    """Every number of every rule, for one configuration and deployment."""

    routes: tuple[tuple[str, str], ...]  # (router, model), as configured
    regions: tuple[str, ...]  # each probes every route
    interval_s: float
    jitter_s: float
    probes_per_interval: int  # per (router, model): one per prompt
    budget: float  # slo.error_rate
    burns: tuple[BurnAlert, ...]
    ttft_threshold_s: float
    ttft_window: str  # the /metrics window the p95 is read from
    ttft_min_ok: int
    ttft_for_s: float
    model_down_for_s: float
    fresh_window_s: float
    fresh_for_s: float
    stale_refreshes: int  # the stats are stale once older than this many refresh intervals
    stale_for_s: float
    refresh_s: float
    pending_window_s: float
    pending_for_s: float
    spool_limit_bytes: int
    spool_for_s: float
    writer_window_s: float
    writer_for_s: float
    overload_window_s: float
    overload_for_s: float
    scrape_for_s: float
    down_after: int
    up_after_s: float  # up_after ok probes, interval apart, plus twice the jitter
    deployment: Deployment
    # The router's reported cost over routewatch's computed one: outside [low, high] for the hold,
    # the configured or listed price is wrong (a factor of 2 is no rounding or cache-pricing slip).
    cost_ratio_low: float = 0.5
    cost_ratio_high: float = 2.0
    cost_ratio_for_s: float = 3600.0
    # Above this share of a process's probes flagged prober_overloaded, its figures are starved.
    overload_ratio: float = 0.5

    @property
    def region(self) -> str:
        """The ``region`` label of an alert that is about no one region: the regions, comma-separated."""
        return ",".join(self.regions)

    def model_down_promise_s(self) -> float:
        """Worst case from a model's first failed probe to the notification leaving Alertmanager.

        For failures the router answers at once (an error status, a refused
        connection); a probe that hangs adds its timeout. The ``down_after``
        failed probes (``interval`` apart, each moved by up to the jitter:
        twice the jitter at worst), the writer's flush, a refresh that turns
        the state to down, a scrape, an evaluation that sees it, the rule's
        hold and the evaluation that ends it, Alertmanager's ``group_wait``,
        and the two HTTP deliveries.
        """
        d = self.deployment
        return (
            self.down_after * self.interval_s
            + 2 * self.jitter_s
            + d.writer_flush_s
            + self.refresh_s
            + d.scrape_interval_s
            + self.model_down_for_s
            + 2 * d.evaluation_interval_s
            + d.group_wait_s
            + d.delivery_s
        )

    def model_down_resolve_s(self) -> float:
        """Worst case from the first ok probe after an outage to the resolved notification.

        ``up_after`` ok probes, flush, refresh, scrape, two evaluations,
        Alertmanager's ``group_interval`` (taken as ``group_wait``) for the
        resolved message, and the deliveries.
        """
        d = self.deployment
        return (
            self.up_after_s
            + d.writer_flush_s
            + self.refresh_s
            + d.scrape_interval_s
            + 2 * d.evaluation_interval_s
            + d.group_wait_s
            + d.delivery_s
        )


def _min_probes(window_s: float, plan_rate: float, min_samples: int) -> int:
    """Half the probes the schedule sends in ``window_s``, at least ``min_samples``."""
    return max(min_samples, math.ceil(window_s * plan_rate / 2))


def _burn_alert(window: BurnWindow, config: Config, scale: float, per_s: float) -> BurnAlert:
    slo = config.slo
    floor = max(2, slo.down_after)
    # A window must be expected to hold twice the probes its guards ask for, or the alert could
    # never fire: with a sparse schedule (a probe every 5 minutes) the short window is stretched.
    shortest = 2 * max(floor, slo.min_samples) / per_s
    short_s = max(window.short_s / scale, shortest)
    long_s = max(window.long_s / scale, short_s)
    threshold = round(window.burn * slo.error_rate, 12)  # 6 x 0.05 is 0.30000000000000004 in binary
    n_long = _min_probes(long_s, per_s, slo.min_samples)
    n_short = _min_probes(short_s, per_s, slo.min_samples)
    return BurnAlert(
        name=f"RoutewatchErrorBudgetBurn{_duration_name(window.long_s)}",
        long_s=long_s,
        short_s=short_s,
        burn=window.burn,
        severity=window.severity,
        threshold=threshold,
        # A tenth of the short window: one evaluation that catches a counter
        # mid-update does not notify, and the hold stays small beside the windows.
        for_s=short_s / 10,
        min_probes_long=n_long,
        min_probes_short=n_short,
        min_failures_long=max(floor, math.ceil(threshold * n_long)),
        min_failures_short=max(floor, math.ceil(threshold * n_short)),
    )


def _duration_name(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def plan_alerts(config: Config, deployment: Deployment | None = None) -> AlertPlan:
    """The numbers of every alert for ``config`` deployed as ``deployment`` (default: production)."""
    d = deployment or Deployment()
    interval = config.schedule.interval
    prompts = len(config.prompts)
    per_s = prompts / interval
    slo = config.slo
    exported = config.aggregator.metrics_windows()
    # A probe that hangs finishes at its total timeout; three missed rounds after that is silence.
    fresh = config.timeouts.total + 3 * interval
    return AlertPlan(
        routes=tuple((r.name, m) for r in config.routers for m in r.models),
        regions=d.regions or (config.region,),
        interval_s=interval,
        jitter_s=config.schedule.jitter,
        probes_per_interval=prompts,
        budget=slo.error_rate,
        burns=tuple(_burn_alert(w, config, d.scale, per_s) for w in WORKBOOK_WINDOWS),
        ttft_threshold_s=slo.ttft_p95_ms / 1000.0,
        ttft_window=min(exported, key=parse_duration),
        ttft_min_ok=slo.min_samples,
        ttft_for_s=slo.window,
        # Longer than a model stays down after one failure when down_after is 1
        # (it comes back after up_after ok probes): one failure never pages.
        model_down_for_s=(slo.up_after + 1) * interval + 2 * config.schedule.jitter,
        fresh_window_s=fresh,
        fresh_for_s=fresh,
        stale_refreshes=5,
        stale_for_s=60 / d.scale,
        refresh_s=config.aggregator.refresh,
        pending_window_s=900 / d.scale,
        pending_for_s=300 / d.scale,
        spool_limit_bytes=int(0.8 * config.storage.spool_max_mb * 1024 * 1024),
        spool_for_s=300 / d.scale,
        writer_window_s=max(600 / d.scale, 5 * interval),
        writer_for_s=300 / d.scale,
        overload_window_s=max(600 / d.scale, 5 * interval),
        overload_for_s=300 / d.scale,
        scrape_for_s=120 / d.scale,
        down_after=slo.down_after,
        up_after_s=slo.up_after * interval + 2 * config.schedule.jitter,
        deployment=d,
        cost_ratio_for_s=3600 / d.scale,
    )
