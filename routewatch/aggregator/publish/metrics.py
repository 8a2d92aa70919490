"""Prometheus exposition at ``GET /metrics``: the latest stats and routewatch's own health.

Nothing here keeps metric state of its own. Each scrape reads what the
process already publishes, on the event loop (:class:`ScrapeState`): the
aggregator's latest :class:`~.refresh.Snapshot` and status report, its role
and refresh count, and the probers' health: in ``routewatch run``, every
prober worker's own ``/metrics``, read at each scrape (:data:`WorkerMetrics`);
in a process that probes on its own loop, its prober (:class:`ProberHealth`).
The stats and model states change only at a refresh: ``metrics_snapshot``
writes them in the text format once per refresh. The health families are
built at each scrape by a custom collector (:class:`LiveCollector`) and
serialised by ``prometheus_client.generate_latest`` on a registry of our
own, never the library's global default one.

Families (labels in braces; every stat is over one window, e.g. "1h"):

* stats per model ``{router, model, window}``: ``routewatch_ttft_p50_seconds``,
  ``_ttft_p95_seconds``, ``_ttfat_p50_seconds``, ``_ttfat_p95_seconds``,
  ``_output_tokens_per_second_p50``, ``_error_ratio``, ``_error_excl_429_ratio``,
  ``_window_probes_attempted``, ``_window_probes_ok``, ``_window_input_tokens``,
  ``_window_output_tokens``, ``_window_samples_sufficient``,
  ``_window_probes_budget_exhausted`` (probes whose output budget ran out while
  the model reasoned: not attempts, see docs/reasoning-models.md). The first nine
  also per provider (``routewatch_provider_*``, plus label ``provider``) and per
  prober region (``routewatch_region_*``, plus ``region``), in families of
  their own so that a sum over one family never counts a probe twice. A
  percentile or ratio that does not exist (no ok probe, no attempt) is
  absent, never 0. Which windows and breakdowns are exported is
  ``aggregator.metrics`` (:class:`~.metrics_snapshot.MetricsExport`); by
  default the shortest window and no breakdown: 13 series per (router, model).
* status (with an SLO configured): ``routewatch_model_state{model, state}``
  (1 for the current state, 0 for the others), ``routewatch_incidents_open``.
* aggregator: ``routewatch_aggregator_role{role}``, ``routewatch_refreshes_total``,
  ``routewatch_stats_age_seconds`` (absent before the first refresh),
  ``routewatch_stats_refresh_interval_seconds``,
  ``routewatch_stats_refresh_duration_seconds`` (absent before the first refresh).
* read replica (only with ``ROUTEWATCH_DATABASE_READ_URL``): ``routewatch_read_replica_in_use``
  (1 while reads go to the replica, 0 while they fall back to the primary),
  ``routewatch_read_replica_lag_seconds`` (how far its replay is behind the
  primary; absent while it cannot be reached), ``routewatch_read_replica_switches_total``.
* spend and budget (``routewatch/aggregator/budget.py``), once read: ``routewatch_budget_spend_today_usd``,
  ``routewatch_budget_usd_per_day`` (absent without a budget), ``routewatch_budget_planned_usd_per_day``
  (absent without a priced model), ``routewatch_budget_series_paused``,
  ``routewatch_budget_paused{router, model, prompt}`` (1 per paused series),
  and, per (router, model) probed today (bounded by the models probed, like the stats families),
  ``routewatch_cost_today_usd`` (computed; priced models), ``routewatch_cost_reported_today_usd``
  (the router's own figure, where it reports one) and ``routewatch_cost_reported_ratio`` (the two
  over the probes with both; see ``cost_view.py``).
* prober (absent, not 0, in ``routewatch serve``): the families of
  ``routewatch/probe/health.py`` (``routewatch_probes_total{result}``,
  ``routewatch_route_probes_total{router, model, region}`` and
  ``routewatch_route_probe_failures_total{router, model, region}`` (the alert
  rules' burn rates; a route appears at its first probe, failures at 0),
  ``routewatch_event_loop_lag_max_seconds``, the writer's and the spool's, …).
  In ``routewatch run`` they come from its prober workers, each sample with a
  ``worker`` label, besides the workers' own (``routewatch_prober_workers``,
  ``routewatch_prober_worker_up{worker}``, …; see ``routewatch/prober_metrics.py``).

Label values are router names, model ids, windows, providers, regions,
states, roles and error classes: never a URL, a key or a DSN. Providers are
what routers report, so they are capped (``provider_cap``): at most
``aggregator.max_providers_per_model`` names per model, then ``other`` for
the rest and ``unknown`` where the router named none (never an empty label),
so a router cannot add series without bound.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from routewatch.aggregator.budget import BudgetReport
from routewatch.aggregator.model_state_store import StatusReport
from routewatch.aggregator.publish.cost_view import cost_families
from routewatch.aggregator.publish.metrics_snapshot import (
    DEFAULT_EXPORT,
    MetricsExport,
    render_states,
    render_stats,
)
from routewatch.aggregator.refresh import Aggregator, Snapshot
from routewatch.probe.health import LAG_MAX_WINDOW_S, ProberHealth, prober_families, read_prober_health
from routewatch.storage.read_pools import REPLICA, ReadPools

if TYPE_CHECKING:
    from routewatch.delivery.spooled import SpooledDelivery
    from routewatch.probe.loop_lag import LoopLagMonitor
    from routewatch.probe.scheduler import Prober

__all__ = [
    "LAG_MAX_WINDOW_S",
    "METRICS_CONTENT_TYPE",
    "HealthSource",
    "LiveCollector",
    "MetricsExport",
    "ProberHealth",
    "ProberHealthSlot",
    "ScrapeState",
    "WorkerMetrics",
    "read_prober_health",
    "render",
    "render_live",
    "setup_metrics_route",
]

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of ``GET /metrics``: the text exposition format that
``generate_latest`` writes (``text/plain; version=1.0.0; charset=utf-8`` with
prometheus_client 0.26). The OpenAPI document names this very value."""


# ---------------------------------------------------------------- prober health


HealthSource = Callable[[], "ProberHealth | None"]
"""Reads the prober's health now, or None when no prober runs in this process."""

WorkerMetrics = Callable[[], Awaitable[bytes]]
"""Reads the prober workers' families now, as text exposition (``routewatch run``):
families no other part of ``/metrics`` has, each sample labelled with its ``worker``."""


class ProberHealthSlot:
    """A :data:`HealthSource` for a prober that starts after the API.

    ``routewatch run`` serves ``/metrics`` before its prober exists; it
    passes the empty slot to :func:`setup_metrics_route` and attaches the
    prober once it runs. Until then (and in ``routewatch serve``, where
    nothing is ever attached) the prober's metrics are absent.
    """

    def __init__(self) -> None:
        self._parts: tuple[Prober, SpooledDelivery, LoopLagMonitor | None] | None = None

    def attach(self, prober: Prober, writer: SpooledDelivery, lag: LoopLagMonitor | None = None) -> None:
        """From now on, scrapes report ``prober``, ``writer`` and ``lag``."""
        self._parts = (prober, writer, lag)

    def detach(self) -> None:
        """No prober any more: its metrics become absent."""
        self._parts = None

    def __call__(self) -> ProberHealth | None:
        """The attached prober's health now, or None."""
        return None if self._parts is None else read_prober_health(*self._parts)


# ---------------------------------------------------------------- one scrape


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """Where reads go, read at one scrape: the replica or (fallen back) the primary, and its lag."""

    in_use: bool
    lag_s: float | None  # None: unknown (the replica cannot be reached)
    switches: int

    @classmethod
    def read(cls, reads: ReadPools) -> ReplicaState | None:
        """``reads``' state now; None without a read replica."""
        if not reads.has_replica:
            return None
        return cls(reads.server == REPLICA, reads.lag_s, reads.switches)


@dataclass(frozen=True, slots=True)
class ScrapeState:
    """Everything one scrape reports, read at one instant on the event loop."""

    now: datetime
    snapshot: Snapshot | None  # None until the first refresh
    status: StatusReport | None  # None: status disabled, or not read yet
    role: str  # "leader" or "standby"
    refreshes: int
    refresh_interval_s: float
    last_refresh_s: float | None  # how long the last refresh took; None before the first
    prober: ProberHealth | None  # None: no prober in this process
    replica: ReplicaState | None = None  # None: no read replica configured
    budget: BudgetReport | None = None  # None: spend not read yet

    @classmethod
    def read(cls, aggregator: Aggregator, prober_health: HealthSource | None = None) -> ScrapeState:
        """Read ``aggregator`` (and the prober, if any) now.

        Snapshots and status reports are immutable and swapped whole at a
        refresh, so the references taken here stay consistent while they
        are serialised elsewhere.
        """
        return cls(
            now=datetime.now(UTC),
            snapshot=aggregator.snapshot,
            status=aggregator.status,
            role=aggregator.role,
            refreshes=aggregator.refreshes,
            refresh_interval_s=aggregator.interval_s,
            last_refresh_s=aggregator.last_refresh_s,
            prober=prober_health() if prober_health is not None else None,
            replica=ReplicaState.read(aggregator.reads),
            budget=aggregator.budget.report,
        )


# ---------------------------------------------------------------- families


def _aggregator_families(state: ScrapeState) -> Iterator[Metric]:
    role = GaugeMetricFamily(
        "routewatch_aggregator_role",
        "1 for this process's role: leader (refreshes the rollups) or standby (serves what the leader computed)",
        labels=["role"],
    )
    for name in ("leader", "standby"):
        role.add_metric([name], 1.0 if state.role == name else 0.0)
    yield role
    yield CounterMetricFamily(
        "routewatch_refreshes", "Stats refreshes completed by this process", value=state.refreshes
    )
    yield GaugeMetricFamily(
        "routewatch_stats_refresh_interval_seconds", "Seconds between stats refreshes", value=state.refresh_interval_s
    )
    if state.last_refresh_s is not None:
        yield GaugeMetricFamily(
            "routewatch_stats_refresh_duration_seconds",
            "Wall time of this process's last stats refresh",
            value=state.last_refresh_s,
        )
    if state.snapshot is not None:  # before the first refresh there is no age to tell
        age = (state.now - state.snapshot.updated_at).total_seconds()
        yield GaugeMetricFamily(
            "routewatch_stats_age_seconds", "Seconds since the published stats were computed", value=max(0.0, age)
        )


def _replica_families(replica: ReplicaState) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "routewatch_read_replica_in_use",
        "1 while this process reads from the read replica, 0 while it reads from the primary (the replica failed)",
        value=1.0 if replica.in_use else 0.0,
    )
    if replica.lag_s is not None:
        yield GaugeMetricFamily(
            "routewatch_read_replica_lag_seconds",
            "How far the read replica's replay is behind the primary (0 when it has replayed all it received)",
            value=replica.lag_s,
        )
    yield CounterMetricFamily(
        "routewatch_read_replica_switches",
        "Times this process's reads moved between the read replica and the primary",
        value=replica.switches,
    )


def _budget_families(report: BudgetReport) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "routewatch_budget_spend_today_usd",
        "USD the probes cost so far today (UTC day): the router's reported cost where it reports one, "
        "else the cost computed from the model's price",
        value=report.spent_today_usd,
    )
    if report.budget_usd is not None:
        yield GaugeMetricFamily(
            "routewatch_budget_usd_per_day", "budget.usd_per_day from probes.yaml", value=report.budget_usd
        )
    if report.planned_usd_per_day is not None:
        yield GaugeMetricFamily(
            "routewatch_budget_planned_usd_per_day",
            "USD per day probes.yaml plans with the models the routers list (discover) and their listed prices, "
            "every answer max_tokens long; absent when no model has a price",
            value=report.planned_usd_per_day,
        )
    yield GaugeMetricFamily(
        "routewatch_budget_series_paused",
        "Series (router, model, prompt) whose probing the budget paused until the UTC day turns",
        value=len(report.paused),
    )
    paused = GaugeMetricFamily(
        "routewatch_budget_paused",
        "1 for each series the budget paused today: the alert on silent routes leaves these out",
        labels=["router", "model", "prompt"],
    )
    for p in report.paused:
        paused.add_metric([p.router, p.model, p.prompt], 1.0)
    yield paused
    yield from cost_families(report)


class LiveCollector(Collector):
    """What one scrape reads besides the stats and states: the aggregator's and the prober's health."""

    def __init__(self, state: ScrapeState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        """Every family the state has data for; absent data gives no family, never a 0."""
        state = self._state
        yield from _aggregator_families(state)
        if state.replica is not None:
            yield from _replica_families(state.replica)
        if state.budget is not None:
            yield from _budget_families(state.budget)
        if state.prober is not None:
            yield from prober_families(state.prober)


def _exposition(collector: Collector) -> bytes:
    # A registry of our own per rendering: no global state, nothing left
    # registered. auto_describe=False: registering must not run collect().
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def render_live(state: ScrapeState) -> bytes:
    """The text exposition of ``state``'s status and health families."""
    return _exposition(LiveCollector(state))


def render(state: ScrapeState, export: MetricsExport = DEFAULT_EXPORT) -> bytes:
    """The whole text exposition (``CONTENT_TYPE_LATEST``) of ``state``."""
    return _snapshot_part(state, export) + render_live(state)


def _snapshot_part(state: ScrapeState, export: MetricsExport) -> bytes:
    stats = render_stats(state.snapshot, export) if state.snapshot is not None else b""
    # Expositions with disjoint family names concatenate into one valid one.
    return stats + (render_states(state.status) if state.status is not None else b"")


# ---------------------------------------------------------------- HTTP


def _accepts_gzip(request: web.Request) -> bool:
    return any(
        part.split(";")[0].strip().lower() == "gzip" for part in request.headers.get("Accept-Encoding", "").split(",")
    )


class _MetricsEndpoint:
    """``GET /metrics``; keeps the stats and states exposition of the latest refresh.

    A snapshot and a status report are immutable and change only at a
    refresh, so their part of the exposition (``metrics_snapshot``) is
    rendered once and reused by every scrape until the next refresh (two
    Prometheus servers scraping, or a scrape interval shorter than the
    refresh interval, cost nothing more). The aggregator's and the probers'
    health are read and rendered at each scrape.
    """

    def __init__(
        self,
        aggregator: Aggregator,
        prober_health: HealthSource | None,
        export: MetricsExport,
        workers: WorkerMetrics | None = None,
    ) -> None:
        self._aggregator = aggregator
        self._prober_health = prober_health
        self._export = export
        self._workers = workers
        self._cached: tuple[Snapshot | None, StatusReport | None, bytes] | None = None

    def _snapshot_body(self, state: ScrapeState) -> bytes:
        cached = self._cached
        if cached is not None and cached[0] is state.snapshot and cached[1] is state.status:
            return cached[2]
        body = _snapshot_part(state, self._export)
        # Two scrapes racing here both render; either result is the same bytes.
        self._cached = (state.snapshot, state.status, body)
        return body

    def _body(self, state: ScrapeState, compress: bool, workers: bytes) -> bytes:
        body = self._snapshot_body(state) + render_live(state) + workers
        return gzip.compress(body, compresslevel=6) if compress else body

    async def handle(self, request: web.Request) -> web.Response:
        """Serve one scrape."""
        workers = await self._workers() if self._workers is not None else b""
        state = ScrapeState.read(self._aggregator, self._prober_health)
        compress = _accepts_gzip(request)
        # In a thread: while it serialises, the event loop (which may be
        # timing probes) gets the GIL back every switch interval instead of
        # stalling for the whole rendering.
        body = await asyncio.get_running_loop().run_in_executor(None, self._body, state, compress, workers)
        headers = {"Content-Type": METRICS_CONTENT_TYPE, "Cache-Control": "no-store", "Vary": "Accept-Encoding"}
        if compress:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)


def setup_metrics_route(
    app: web.Application,
    aggregator: Aggregator,
    prober_health: HealthSource | None = None,
    export: MetricsExport = DEFAULT_EXPORT,
    workers: WorkerMetrics | None = None,
) -> None:
    """Register ``GET /metrics`` on ``app``: ``aggregator``'s stats and health, and the probers' if any.

    ``prober_health`` (a prober on this process's loop) and ``workers`` (the
    prober workers of ``routewatch run``) are read at each scrape; None
    (``routewatch serve``) or a source returning None leaves them out.
    ``export``: which windows and breakdowns of the stats (``aggregator.metrics``
    in probes.yaml).
    """
    app.router.add_get("/metrics", _MetricsEndpoint(aggregator, prober_health, export, workers).handle)
