"""Prometheus exposition at ``GET /metrics``: the latest stats and routewatch's own health.

Nothing here keeps metric state of its own. Each scrape reads what the
process already publishes, on the event loop (:class:`ScrapeState`): the
aggregator's latest :class:`~.refresh.Snapshot` and status report, its role
and refresh count, and the probers' health: in ``routewatch run``, every
prober worker's own ``/metrics``, read at each scrape (:data:`WorkerMetrics`);
in a process that probes on its own loop, its prober (:class:`ProberHealth`). Custom collectors
(:class:`StatsCollector`, :class:`LiveCollector`) turn that reading into
metric families, and ``prometheus_client.generate_latest`` serialises them
on registries of our own, never the library's global default one. The
stats part is serialised once per snapshot (see :class:`_MetricsEndpoint`).

Families (labels in braces; every stat is over one window: "1h", "24h", "7d"):

* stats per model ``{router, model, window}``: ``routewatch_ttft_p50_seconds``,
  ``_ttft_p95_seconds``, ``_ttfat_p50_seconds``, ``_ttfat_p95_seconds``,
  ``_output_tokens_per_second_p50``, ``_error_ratio``, ``_error_excl_429_ratio``,
  ``_window_probes_attempted``, ``_window_probes_ok``, ``_window_input_tokens``,
  ``_window_output_tokens``, ``_window_samples_sufficient``. The first nine
  also per provider (``routewatch_provider_*``, plus label ``provider``) and per
  prober region (``routewatch_region_*``, plus ``region``), in families of
  their own so that a sum over one family never counts a probe twice. A
  percentile or ratio that does not exist (no ok probe, no attempt) is
  absent, never 0.
* status (with an SLO configured): ``routewatch_model_state{model, state}``
  (1 for the current state, 0 for the others), ``routewatch_incidents_open``.
* aggregator: ``routewatch_aggregator_role{role}``, ``routewatch_refreshes_total``,
  ``routewatch_stats_age_seconds`` (absent before the first refresh),
  ``routewatch_stats_refresh_interval_seconds``.
* prober (absent, not 0, in ``routewatch serve``): the families of
  ``routewatch/probe/health.py`` (``routewatch_probes_total{result}``,
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

from routewatch.aggregator.model_state import State
from routewatch.aggregator.model_state_store import StatusReport
from routewatch.aggregator.refresh import Aggregator, Snapshot
from routewatch.aggregator.stats import MIN_OK_SAMPLES, WindowCounts, error_rate
from routewatch.probe.health import LAG_MAX_WINDOW_S, ProberHealth, prober_families, read_prober_health

if TYPE_CHECKING:
    from routewatch.delivery.spooled import SpooledDelivery
    from routewatch.probe.loop_lag import LoopLagMonitor
    from routewatch.probe.scheduler import Prober

__all__ = [
    "LAG_MAX_WINDOW_S",
    "METRICS_CONTENT_TYPE",
    "HealthSource",
    "LiveCollector",
    "ProberHealth",
    "ProberHealthSlot",
    "ScrapeState",
    "StatsCollector",
    "WorkerMetrics",
    "read_prober_health",
    "render",
    "render_live",
    "render_stats",
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


def _ms_to_s(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


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

_Extract = Callable[[WindowCounts], "float | None"]

# (name after the level prefix, help, value of one cell's counts, also per
# provider/region); a value of None gives no sample. Token counts and the
# sufficiency flag are per model only: they add series, not insight, per slice.
_CELL_STATS: tuple[tuple[str, str, _Extract, bool], ...] = (
    (
        "ttft_p50_seconds",
        "Median time to first token (any output delta) over ok probes",
        lambda c: _ms_to_s(c.ttft_p50_ms),
        True,
    ),
    ("ttft_p95_seconds", "95th percentile time to first token over ok probes", lambda c: _ms_to_s(c.ttft_p95_ms), True),
    (
        "ttfat_p50_seconds",
        "Median time to first answer (content) token over ok probes",
        lambda c: _ms_to_s(c.ttfat_p50_ms),
        True,
    ),
    (
        "ttfat_p95_seconds",
        "95th percentile time to first answer (content) token over ok probes",
        lambda c: _ms_to_s(c.ttfat_p95_ms),
        True,
    ),
    (
        "output_tokens_per_second_p50",
        "Median output speed over ok probes, in tokens per second",
        lambda c: c.tps_p50,
        True,
    ),
    ("error_ratio", "Failed / attempted probes", lambda c: error_rate(c.attempts, c.ok), True),
    (
        "error_excl_429_ratio",
        "Failed / attempted probes, rate-limited (HTTP 429) attempts left out",
        lambda c: error_rate(c.attempts - c.rate_limited, c.ok),
        True,
    ),
    (
        "window_probes_attempted",
        "Probes attempted (those flagged prober_overloaded are left out)",
        lambda c: c.attempts,
        True,
    ),
    ("window_probes_ok", "Probes that succeeded", lambda c: c.ok, True),
    ("window_input_tokens", "Input tokens sent by probes", lambda c: c.input_tokens, False),
    ("window_output_tokens", "Output tokens received by probes", lambda c: c.output_tokens, False),
    (
        "window_samples_sufficient",
        f"1 when there are at least {MIN_OK_SAMPLES} ok probes, enough to publish the percentiles unmarked",
        lambda c: float(c.ok >= MIN_OK_SAMPLES),
        False,
    ),
)

_BASE_LABELS = ("router", "model", "window")
# Family prefix and help suffix per level (None: the model as a whole). A
# breakdown dimension the snapshot carries but this table does not name is
# left out, not mislabelled.
_LEVELS: dict[str | None, tuple[str, str]] = {
    None: ("routewatch_", ""),
    "provider": ("routewatch_provider_", ", per upstream provider the router reported"),
    "region": ("routewatch_region_", ", per region of the prober that measured"),
}


def _stats_families(snap: Snapshot) -> Iterator[Metric]:
    """One family per stat and level; a sample per (router, model, window[, dimension value])."""
    families: dict[str | None, list[tuple[GaugeMetricFamily, _Extract]]] = {}
    for dim, (prefix, help_tail) in _LEVELS.items():
        labels = [*_BASE_LABELS, dim] if dim is not None else list(_BASE_LABELS)
        families[dim] = [
            (GaugeMetricFamily(prefix + name, help_ + help_tail, labels=labels), value_of)
            for name, help_, value_of, per_slice in _CELL_STATS
            if dim is None or per_slice
        ]

    def add(dim: str | None, labels: list[str], counts: WindowCounts) -> None:
        for family, value_of in families[dim]:
            value = value_of(counts)
            if value is not None:
                family.add_metric(labels, float(value))

    for window, per_model in snap.stats.items():
        for (router, model), stats in per_model.items():
            add(None, [router, model, window], stats.counts)
            for dim, cells in stats.breakdown.items():
                if dim not in _LEVELS:
                    continue
                for value, cell in sorted(cells.items()):
                    add(dim, [router, model, window, value], cell.counts)
    for per_level in families.values():
        yield from (family for family, _ in per_level)


def _status_families(status: StatusReport) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "routewatch_model_state",
        "Model status: 1 for the current state, 0 for the others",
        labels=["model", "state"],
    )
    for m in status.models:
        for s in State:
            state.add_metric([m.model, s.value], 1.0 if m.state == s else 0.0)
    yield state
    yield GaugeMetricFamily("routewatch_incidents_open", "Incidents open now", value=len(status.open))


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


class StatsCollector(Collector):
    """The stats of one snapshot: they change only when the aggregator publishes the next one."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """One gauge family per stat and level (see the module docstring)."""
        return _stats_families(self._snapshot)


class LiveCollector(Collector):
    """What one scrape reads besides the stats: status, the aggregator's and the prober's health."""

    def __init__(self, state: ScrapeState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        """Every family the state has data for; absent data gives no family, never a 0."""
        state = self._state
        if state.status is not None:
            yield from _status_families(state.status)
        yield from _aggregator_families(state)
        if state.prober is not None:
            yield from prober_families(state.prober)


def _exposition(collector: Collector) -> bytes:
    # A registry of our own per rendering: no global state, nothing left
    # registered. auto_describe=False: registering must not run collect().
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def render_stats(snapshot: Snapshot) -> bytes:
    """The text exposition of ``snapshot``'s stats families."""
    return _exposition(StatsCollector(snapshot))


def render_live(state: ScrapeState) -> bytes:
    """The text exposition of ``state``'s status and health families."""
    return _exposition(LiveCollector(state))


def render(state: ScrapeState) -> bytes:
    """The whole text exposition (``CONTENT_TYPE_LATEST``) of ``state``."""
    stats = render_stats(state.snapshot) if state.snapshot is not None else b""
    # Two expositions with disjoint family names concatenate into one valid one.
    return stats + render_live(state)


# ---------------------------------------------------------------- HTTP


def _accepts_gzip(request: web.Request) -> bool:
    return any(
        part.split(";")[0].strip().lower() == "gzip" for part in request.headers.get("Accept-Encoding", "").split(",")
    )


class _MetricsEndpoint:
    """``GET /metrics``; keeps the stats exposition of the latest snapshot.

    Serialising the stats costs about 0.5 ms of CPU per model (90 series
    with 3 windows, one provider and one region): hundreds of ms for
    hundreds of models. A snapshot is immutable, so its exposition is
    rendered once and reused by every scrape until the next refresh (two
    Prometheus servers scraping, or a scrape interval shorter than the
    refresh interval, cost nothing more). Status and health are rendered at
    each scrape.
    """

    def __init__(
        self, aggregator: Aggregator, prober_health: HealthSource | None, workers: WorkerMetrics | None = None
    ) -> None:
        self._aggregator = aggregator
        self._prober_health = prober_health
        self._workers = workers
        self._stats: tuple[Snapshot, bytes] | None = None

    def _stats_body(self, snapshot: Snapshot | None) -> bytes:
        if snapshot is None:
            return b""
        cached = self._stats
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        body = render_stats(snapshot)
        # Two scrapes racing here both render; either result is the same bytes.
        self._stats = (snapshot, body)
        return body

    def _body(self, state: ScrapeState, compress: bool, workers: bytes) -> bytes:
        body = self._stats_body(state.snapshot) + render_live(state) + workers
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
    workers: WorkerMetrics | None = None,
) -> None:
    """Register ``GET /metrics`` on ``app``: ``aggregator``'s stats and health, and the probers' if any.

    ``prober_health`` (a prober on this process's loop) and ``workers`` (the
    prober workers of ``routewatch run``) are read at each scrape; None
    (``routewatch serve``) or a source returning None leaves them out.
    """
    app.router.add_get("/metrics", _MetricsEndpoint(aggregator, prober_health, workers).handle)
