"""A prober process's health, as Prometheus metric families.

Each process that probes (``routewatch probe``, and so each prober worker of
``routewatch run``) reads its prober, its result writer and its loop-lag
monitor into a :class:`ProberHealth` at each scrape, on its own event loop,
and serves :func:`prober_families` on its own ``/metrics``. Families:
``routewatch_probes_total{result}``, ``routewatch_probes_overloaded_total``,
``routewatch_probes_in_flight``, ``routewatch_probes_queued``,
``routewatch_probe_slots_skipped_total{reason}``,
``routewatch_probe_concurrency_limit``, ``routewatch_results_stored_total``,
``routewatch_results_pending``, ``routewatch_results_dropped_total``,
``routewatch_results_rejected_total``, ``routewatch_results_unspooled_total``,
``routewatch_spool_corrupt_records_total``, ``routewatch_writer_running``,
``routewatch_event_loop_tasks``, ``routewatch_writer_failed_flushes_total``,
``routewatch_writer_database_up``, ``routewatch_spool_bytes``,
``routewatch_event_loop_lag_seconds``, ``routewatch_event_loop_lag_max_seconds``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from routewatch.probe.loop_lag import LoopLagMonitor
from routewatch.results.probe_result import ERROR_CLASSES

if TYPE_CHECKING:
    from routewatch.delivery.spooled import SpooledDelivery
    from routewatch.probe.scheduler import Prober

LAG_MAX_WINDOW_S = 60.0
"""``routewatch_event_loop_lag_max_seconds`` is the worst lag over this many
seconds: longer than a usual scrape interval (15-30 s), so no stall falls
between two scrapes."""


@dataclass(frozen=True, slots=True)
class ProberHealth:
    """A prober process's health at one instant; counters count since the process started."""

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
    # Scheduled slots not probed, by reason: "budget_paused" (the daily budget paused the series) or
    # "previous_probe_running" (the series' last probe, a reasoning model's say, was still running).
    skipped: Mapping[str, int] = field(default_factory=dict)
    # (router, model) -> (probes, failed probes), overloaded ones left out
    routes: Mapping[tuple[str, str], tuple[int, int]] = field(default_factory=dict)


def _seconds(ms: float | None) -> float | None:
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
        loop_lag_s=_seconds(lag.latest_ms) if lag is not None else None,
        loop_lag_max_s=_seconds(lag.recent_max(LAG_MAX_WINDOW_S)) if lag is not None else None,
        tasks=len(asyncio.all_tasks()),
        region=prober.region,
        skipped={"budget_paused": prober.budget_skipped, "previous_probe_running": prober.still_running_skipped},
        routes={route: (n, prober.route_failures[route]) for route, n in prober.route_attempts.items()},
    )


def prober_families(health: ProberHealth) -> Iterator[Metric]:
    """The prober's families (listed in the module docstring), read from ``health``."""
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
    skipped = CounterMetricFamily(
        "routewatch_probe_slots_skipped",
        "Scheduled probe slots not probed, by reason: budget_paused, or previous_probe_running "
        "(the series' last probe outlasted its interval)",
        labels=["reason"],
    )
    for reason, count in sorted(health.skipped.items()):
        skipped.add_metric([reason], float(count))
    yield skipped
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
