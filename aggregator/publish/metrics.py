"""Prometheus exposition at ``GET /metrics``: the latest stats and routewatch's own health.

Nothing here keeps metric state of its own. Each scrape reads what the
process already publishes, on the event loop (:class:`ScrapeState`): the
aggregator's latest :class:`~.refresh.Snapshot` and status report, its role
and refresh count, and, when probes run in this same process (``routewatch
run``), the prober's health (:class:`ProberHealth`). The stats and model
states change only at a refresh: ``metrics_snapshot`` writes them in the
text format once per refresh. The health families are built at each scrape
by a custom collector (:class:`LiveCollector`) and serialised by
``prometheus_client.generate_latest`` on a registry of our own, never the
library's global default one.

Families (labels in braces; every stat is over one window, e.g. "1h"):

* stats per model ``{router, model, window}``: ``routewatch_ttft_p50_seconds``,
  ``_ttft_p95_seconds``, ``_ttfat_p50_seconds``, ``_ttfat_p95_seconds``,
  ``_output_tokens_per_second_p50``, ``_error_ratio``, ``_error_excl_429_ratio``,
  ``_window_probes_attempted``, ``_window_probes_ok``, ``_window_input_tokens``,
  ``_window_output_tokens``, ``_window_samples_sufficient``. The first nine
  also per provider (``routewatch_provider_*``, plus label ``provider``) and per
  prober region (``routewatch_region_*``, plus ``region``), in families of
  their own so that a sum over one family never counts a probe twice. A
  percentile or ratio that does not exist (no ok probe, no attempt) is
  absent, never 0. Which windows and breakdowns are exported is
  ``aggregator.metrics`` (:class:`~.metrics_snapshot.MetricsExport`); by
  default the shortest window and no breakdown: 12 series per (router, model).
* status (with an SLO configured): ``routewatch_model_state{model, state}``
  (1 for the current state, 0 for the others), ``routewatch_incidents_open``.
* aggregator: ``routewatch_aggregator_role{role}``, ``routewatch_refreshes_total``,
  ``routewatch_stats_age_seconds`` (absent before the first refresh),
  ``routewatch_stats_refresh_interval_seconds``,
  ``routewatch_stats_refresh_duration_seconds`` (absent before the first refresh).
* prober (``routewatch run`` only; absent, not 0, in ``routewatch serve``):
  ``routewatch_probes_total{result}``, ``routewatch_probes_overloaded_total``,
  ``routewatch_route_probes_total{router, model, region}`` and
  ``routewatch_route_probe_failures_total{router, model, region}`` (the alert
  rules' burn rates; a route appears at its first probe, failures at 0),
  ``routewatch_probes_in_flight``, ``routewatch_probes_queued``,
  ``routewatch_probe_concurrency_limit``, ``routewatch_results_stored_total``,
  ``routewatch_results_pending``, ``routewatch_results_dropped_total``,
  ``routewatch_results_rejected_total``, ``routewatch_results_unspooled_total``,
  ``routewatch_spool_corrupt_records_total``, ``routewatch_writer_running``,
  ``routewatch_event_loop_tasks``, ``routewatch_writer_failed_flushes_total``, ``routewatch_writer_database_up``,
  ``routewatch_spool_bytes``, ``routewatch_event_loop_lag_seconds``,
  ``routewatch_event_loop_lag_max_seconds``.

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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from routewatch.aggregator.model_state_store import StatusReport
from routewatch.aggregator.publish.metrics_snapshot import (
    DEFAULT_EXPORT,
    MetricsExport,
    render_states,
    render_stats,
)
from routewatch.aggregator.refresh import Aggregator, Snapshot
from routewatch.results.probe_result import ERROR_CLASSES

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
    "read_prober_health",
    "render",
    "render_live",
    "setup_metrics_route",
]

LAG_MAX_WINDOW_S = 60.0
"""``routewatch_event_loop_lag_max_seconds`` is the worst lag over this many
seconds: longer than a usual scrape interval (15-30 s), so no stall falls
between two scrapes."""

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of ``GET /metrics``: the text exposition format that
``generate_latest`` writes (``text/plain; version=1.0.0; charset=utf-8`` with
prometheus_client 0.26). The OpenAPI document names this very value."""


# ---------------------------------------------------------------- prober health


@dataclass(frozen=True, slots=True)
class ProberHealth:
    """The in-process prober's health at one instant; counters count since the process started."""

    results: Mapping[str, int]  # completed probes by outcome: "ok" or the error class
    overloaded: int  # completed probes flagged prober_overloaded (loop lag over its bound)
    in_flight: int  # probes holding a concurrency slot (sending or streaming)
    queued: int  # probes due and waiting for a slot
    concurrency: int  # the slot limit (schedule.concurrency)
    stored: int  # results the writer inserted (duplicates excluded)
    pending: int  # results accepted by the writer, not yet confirmed stored
    dropped: int  # results neither spooled nor stored
    rejected: int  # results that could not be stored at all, kept in the spool's rejected file
    unspooled: int  # results the spool could not take (disk full), sent from memory only
    spool_corrupt: int  # damaged spool records skipped when reading the spool back
    writer_running: bool  # False once the writer's flush task has died: nothing more is stored
    failed_flushes: int  # writes that failed because the database was unavailable
    database_ok: bool  # the writer's last attempt reached its destination (the database, or the ingest endpoint)
    spool_bytes: int  # bytes the local spool holds on disk
    loop_lag_s: float | None  # the latest event-loop lag sample; None without a monitor or a sample
    loop_lag_max_s: float | None  # the worst sample of the last LAG_MAX_WINDOW_S
    tasks: int  # asyncio tasks alive in the prober's event loop (a leak shows as growth)
    region: str = ""  # the prober's region, a label of the per-route counters
    # (router, model) -> (probes, failed probes), overloaded ones left out
    routes: Mapping[tuple[str, str], tuple[int, int]] = field(default_factory=dict)


HealthSource = Callable[[], "ProberHealth | None"]
"""Reads the prober's health now, or None when no prober runs in this process."""


def _ms_to_s(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


def read_prober_health(prober: Prober, writer: SpooledDelivery, lag: LoopLagMonitor | None = None) -> ProberHealth:
    """Read ``prober``, ``writer`` and ``lag`` into a :class:`ProberHealth`.

    Call it on the event loop that runs them: their counters and the lag
    samples are only ever changed there, so the reading is consistent.
    """
    return ProberHealth(
        results=dict(prober.results),
        overloaded=prober.overloaded,
        in_flight=prober.running,
        queued=prober.queued,
        concurrency=prober.concurrency,
        stored=writer.written,
        pending=writer.backlog,
        dropped=writer.dropped,
        rejected=writer.rejected,
        unspooled=writer.unspooled,
        spool_corrupt=writer.spool_corrupt_records,
        writer_running=writer.failed is None,
        failed_flushes=writer.failed_flushes,
        database_ok=writer.destination_ok,
        spool_bytes=writer.spool_bytes,
        loop_lag_s=_ms_to_s(lag.latest_ms) if lag is not None else None,
        loop_lag_max_s=_ms_to_s(lag.recent_max(LAG_MAX_WINDOW_S)) if lag is not None else None,
        tasks=len(asyncio.all_tasks()),
        region=prober.region,
        routes={route: (n, prober.route_failures[route]) for route, n in prober.route_attempts.items()},
    )


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


def _prober_families(health: ProberHealth) -> Iterator[Metric]:
    results = CounterMetricFamily(
        "routewatch_probes",
        "Probes completed by this process, by result: ok or the error class",
        labels=["result"],
    )
    # Every known result from the start, so that rate() sees a series' first increase.
    for result in dict.fromkeys(("ok", *ERROR_CLASSES, *sorted(health.results))):
        results.add_metric([result], float(health.results.get(result, 0)))
    yield results
    yield from _route_families(health)
    yield CounterMetricFamily(
        "routewatch_probes_overloaded",
        "Probes flagged prober_overloaded: the event loop lagged past its bound",
        value=health.overloaded,
    )
    yield GaugeMetricFamily(
        "routewatch_probes_in_flight",
        "Probes holding a concurrency slot (sending or streaming)",
        value=health.in_flight,
    )
    yield GaugeMetricFamily(
        "routewatch_probes_queued", "Probes due and waiting for a concurrency slot", value=health.queued
    )
    yield GaugeMetricFamily(
        "routewatch_probe_concurrency_limit", "At most this many probes run at once", value=health.concurrency
    )
    yield CounterMetricFamily(
        "routewatch_results_stored", "Probe results inserted into the database", value=health.stored
    )
    yield GaugeMetricFamily(
        "routewatch_results_pending", "Probe results accepted but not yet confirmed stored", value=health.pending
    )
    yield CounterMetricFamily(
        "routewatch_results_dropped", "Probe results lost: neither spooled nor stored", value=health.dropped
    )
    yield CounterMetricFamily(
        "routewatch_results_rejected",
        "Probe results that could not be stored at all; kept in the spool's rejected file",
        value=health.rejected,
    )
    yield CounterMetricFamily(
        "routewatch_results_unspooled",
        "Probe results the spool could not take (disk full), sent from memory only",
        value=health.unspooled,
    )
    yield CounterMetricFamily(
        "routewatch_spool_corrupt_records",
        "Damaged spool records skipped when the spool was read back",
        value=health.spool_corrupt,
    )
    yield GaugeMetricFamily(
        "routewatch_writer_running",
        "1 while the result writer runs; 0 once it has died and nothing more is stored",
        value=float(health.writer_running),
    )
    yield GaugeMetricFamily(
        "routewatch_event_loop_tasks", "asyncio tasks alive in the prober's event loop", value=health.tasks
    )
    yield CounterMetricFamily(
        "routewatch_writer_failed_flushes",
        "Result writes that failed because the database was unavailable",
        value=health.failed_flushes,
    )
    yield GaugeMetricFamily(
        "routewatch_writer_database_up",
        "1 when the result writer's last attempt reached the database, 0 during an outage",
        value=float(health.database_ok),
    )
    yield GaugeMetricFamily(
        "routewatch_spool_bytes", "Bytes the local result spool holds on disk", value=health.spool_bytes
    )
    if health.loop_lag_s is not None:
        yield GaugeMetricFamily(
            "routewatch_event_loop_lag_seconds",
            "The prober's event-loop lag at its latest sample",
            value=health.loop_lag_s,
        )
    if health.loop_lag_max_s is not None:
        yield GaugeMetricFamily(
            "routewatch_event_loop_lag_max_seconds",
            f"The prober's worst event-loop lag over the last {LAG_MAX_WINDOW_S:g} s",
            value=health.loop_lag_max_s,
        )


def _route_families(health: ProberHealth) -> Iterator[Metric]:
    labels = ["router", "model", "region"]
    attempts = CounterMetricFamily(
        "routewatch_route_probes",
        "Probes completed per (router, model) by this process, those flagged prober_overloaded left out",
        labels=labels,
    )
    failures = CounterMetricFamily(
        "routewatch_route_probe_failures",
        "Failed probes per (router, model) by this process, those flagged prober_overloaded left out",
        labels=labels,
    )
    for (router, model), (n, failed) in sorted(health.routes.items()):
        attempts.add_metric([router, model, health.region], float(n))
        failures.add_metric([router, model, health.region], float(failed))
    yield attempts
    yield failures


class LiveCollector(Collector):
    """What one scrape reads besides the stats and states: the aggregator's and the prober's health."""

    def __init__(self, state: ScrapeState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        """Every family the state has data for; absent data gives no family, never a 0."""
        state = self._state
        yield from _aggregator_families(state)
        if state.prober is not None:
            yield from _prober_families(state.prober)


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
    refresh interval, cost nothing more). The aggregator's and the prober's
    health are rendered at each scrape.
    """

    def __init__(self, aggregator: Aggregator, prober_health: HealthSource | None, export: MetricsExport) -> None:
        self._aggregator = aggregator
        self._prober_health = prober_health
        self._export = export
        self._cached: tuple[Snapshot | None, StatusReport | None, bytes] | None = None

    def _snapshot_body(self, state: ScrapeState) -> bytes:
        cached = self._cached
        if cached is not None and cached[0] is state.snapshot and cached[1] is state.status:
            return cached[2]
        body = _snapshot_part(state, self._export)
        # Two scrapes racing here both render; either result is the same bytes.
        self._cached = (state.snapshot, state.status, body)
        return body

    def _body(self, state: ScrapeState, compress: bool) -> bytes:
        body = self._snapshot_body(state) + render_live(state)
        return gzip.compress(body, compresslevel=6) if compress else body

    async def handle(self, request: web.Request) -> web.Response:
        """Serve one scrape."""
        state = ScrapeState.read(self._aggregator, self._prober_health)
        compress = _accepts_gzip(request)
        # In a thread: while it serialises, the event loop (which may be
        # timing probes) gets the GIL back every switch interval instead of
        # stalling for the whole rendering.
        body = await asyncio.get_running_loop().run_in_executor(None, self._body, state, compress)
        headers = {"Content-Type": METRICS_CONTENT_TYPE, "Cache-Control": "no-store", "Vary": "Accept-Encoding"}
        if compress:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)


def setup_metrics_route(
    app: web.Application,
    aggregator: Aggregator,
    prober_health: HealthSource | None = None,
    export: MetricsExport = DEFAULT_EXPORT,
) -> None:
    """Register ``GET /metrics`` on ``app``: ``aggregator``'s stats and health, and the prober's if any.

    ``prober_health`` is read at each scrape; None (``routewatch serve``) or a
    source returning None leaves every prober metric out. ``export``: which
    windows and breakdowns of the stats (``aggregator.metrics`` in probes.yaml).
    """
    app.router.add_get("/metrics", _MetricsEndpoint(aggregator, prober_health, export).handle)
