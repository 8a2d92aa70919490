"""Prober processes' ``/metrics``: each serves its own, and ``routewatch run`` gathers its workers'.

**In a prober process** (``routewatch probe``, so each worker of ``run``):
:func:`metrics_endpoint` serves ``GET /metrics`` on an address of its own
(loopback by default, ``--metrics-port``, 0 for any free port, printed in the
banner), a Prometheus scrape target per prober process, which is also how a
prober in another region is watched. It holds the prober's families
(``routewatch/probe/health.py``: probes by result, loop lag, in flight,
queue, the writer and the spool), the shards it holds, and the standard
``process_*`` families (CPU seconds, resident memory). A scrape is rendered on
the prober's event loop: about a hundred samples, well under a millisecond,
so a scrape every few seconds costs the probes nothing they would notice.
The same server answers ``/healthz`` and ``/readyz`` (``prober_health.py``).

**In ``routewatch run``**: :class:`WorkerMetricsGatherer` is the API's
``/metrics`` source for the workers. At each scrape of ``run`` it reads every
running worker's ``/metrics`` at once (1 s limit each), adds a ``worker``
label ("1".."N") to each sample and merges the workers' families, so that one
scrape of ``run`` still answers "is probing healthy?". It adds
``routewatch_prober_workers`` (how many ``run`` keeps),
``routewatch_prober_worker_up{worker}`` (1 when that worker answered this
scrape) and ``routewatch_prober_worker_restarts_total{worker}``. A worker
being restarted, or not answering, has ``up`` 0 and no other sample.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from routewatch.delivery.spooled import SpooledDelivery
from routewatch.model_discovery import ModelDiscovery, discovery_families
from routewatch.probe.health import prober_families, read_prober_health
from routewatch.probe.loop_lag import LoopLagMonitor
from routewatch.probe.scheduler import PhasedSchedule, Prober
from routewatch.prober_health import liveness, readiness
from routewatch.prober_workers import WorkerView
from routewatch.shard_coordinator import ShardCoordinator

SCRAPE_TIMEOUT_S = 1.0  # a worker that has not answered by then counts as down for this scrape
WORKER_LABEL = "worker"


class MetricsAddressError(OSError):
    """The prober's metrics address cannot be bound (taken, or not this machine's)."""


def _exposition(collector: Collector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


# ---------------------------------------------------------------- in the prober process


@dataclass(frozen=True)
class ProberParts:
    """What a prober process's ``/metrics``, ``/healthz`` and ``/readyz`` read: its prober, writer,
    lag, schedule and shard leases, and the failures of its supervised tasks."""

    prober: Prober
    writer: SpooledDelivery
    lag: LoopLagMonitor
    schedule: PhasedSchedule
    coordinator: ShardCoordinator | None  # None: it pushes its results, and probes every series alone
    failures: Sequence[str] = ()  # the Supervisor's list: non-empty once a long-lived task has died
    discovery: ModelDiscovery | None = None


class _ProberCollector(Collector):
    def __init__(self, parts: ProberParts) -> None:
        self._parts = parts

    def collect(self) -> Iterator[Metric]:
        parts = self._parts
        yield from prober_families(read_prober_health(parts.prober, parts.writer, parts.lag))
        yield GaugeMetricFamily(
            "routewatch_probe_series_scheduled",
            "Series this process probes now: those of the shards it holds or is handing over",
            value=parts.schedule.scheduled,
        )
        beat = parts.coordinator.last if parts.coordinator is not None else None
        if beat is not None:
            yield GaugeMetricFamily(
                "routewatch_shards_held", "Shards this process held after its last heartbeat", value=len(beat.leases)
            )
            yield GaugeMetricFamily(
                "routewatch_shard_members",
                "Live probers of this region at this process's last heartbeat, itself included",
                value=beat.members,
            )
        if parts.discovery is not None:
            yield from discovery_families(parts.discovery)
        yield from ProcessCollector(registry=None).collect()


def render_prober(parts: ProberParts) -> bytes:
    """The text exposition of a prober process's ``/metrics``."""
    return _exposition(_ProberCollector(parts))


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise MetricsAddressError(f"the metrics address {host}:{port} cannot be used: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise MetricsAddressError(
            f"the metrics address {host}:{port} cannot be used: {exc.strerror or exc} (--metrics-port N, 0 for any)"
        ) from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port/metrics`` for a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


@asynccontextmanager
async def metrics_endpoint(parts: ProberParts, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``GET /metrics``, ``/healthz`` and ``/readyz`` of ``parts`` on ``host:port`` while open;
    yields the URL of ``/metrics``.

    :raises MetricsAddressError: the address cannot be bound.
    """
    sock = _bind(host, port)

    async def scrape(request: web.Request) -> web.Response:
        body = render_prober(parts)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})

    region = parts.prober.region

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(
            liveness(region, parts.schedule, parts.coordinator), headers={"Cache-Control": "no-store"}
        )

    async def readyz(request: web.Request) -> web.Response:
        answer = readiness(region, parts.writer, parts.coordinator, parts.failures)
        return web.json_response(
            answer.body, status=200 if answer.ready else 503, headers={"Cache-Control": "no-store"}
        )

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    try:
        await runner.setup()
        site = web.SockSite(runner, sock, shutdown_timeout=1.0)
        await site.start()
        yield url_of(sock)
    finally:
        await runner.cleanup()
        sock.close()


# ---------------------------------------------------------------- in routewatch run


def labelled(families: Sequence[Metric], worker: str, into: dict[str, Metric]) -> None:
    """Add ``families``' samples to ``into`` (by family name), each with ``worker="<worker>"``."""
    for family in families:
        merged = into.get(family.name)
        if merged is None:
            merged = into[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
        for sample in family.samples:
            merged.add_sample(sample.name, {**sample.labels, WORKER_LABEL: worker}, sample.value, sample.timestamp)


class _Families(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class WorkerMetricsGatherer:
    """The workers' families for ``run``'s ``/metrics`` (a ``WorkerMetrics`` source); close it at exit."""

    def __init__(self, views: Callable[[], list[WorkerView]], timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        self._views = views
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def _read(self, url: str | None) -> list[Metric] | None:
        if url is None:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    return None
                text = await resp.text()
            return list(text_string_to_metric_families(text))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def __call__(self) -> bytes:
        """Read every worker now; their samples labelled, and the workers' own families."""
        views = self._views()
        read = await asyncio.gather(*(self._read(v.metrics_url) for v in views))
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            "routewatch_prober_worker_up",
            "1 when the prober worker answered this scrape of its /metrics, 0 when it did not or is being restarted",
            labels=[WORKER_LABEL],
        )
        restarts = CounterMetricFamily(
            "routewatch_prober_worker_restarts",
            "Times routewatch run restarted this prober worker after it exited",
            labels=[WORKER_LABEL],
        )
        for view, families in zip(views, read, strict=True):
            worker = str(view.index)
            up.add_metric([worker], 0.0 if families is None else 1.0)
            restarts.add_metric([worker], float(view.restarts))
            if families is not None:
                labelled(families, worker, merged)
        own = [
            GaugeMetricFamily(
                "routewatch_prober_workers",
                "Prober worker processes routewatch run keeps (--workers)",
                value=len(views),
            ),
            up,
            restarts,
        ]
        return _exposition(_Families([*own, *merged.values()]))

    async def close(self) -> None:
        """Close the connections to the workers."""
        if self._session is not None:
            await self._session.close()
            self._session = None


@asynccontextmanager
async def gathering(views: Callable[[], list[WorkerView]]) -> AsyncIterator[WorkerMetricsGatherer]:
    """A :class:`WorkerMetricsGatherer`, closed at exit."""
    gatherer = WorkerMetricsGatherer(views)
    try:
        yield gatherer
    finally:
        await gatherer.close()
