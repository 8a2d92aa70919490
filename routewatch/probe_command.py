"""``routewatch probe``: a prober-only process, one of any number sharing a region's series.

It probes and stores, nothing else: the configured series on their slots,
the results through its own spool into the database with the COPY batch
writer, as ``routewatch run`` stores them. No aggregator, no API. The
region's probers split the series through shard leases in the database
(``shard_coordinator.py``): each probes the series of the shards it holds,
and a clean stop hands them over to the others without a gap.

The database is ``ROUTEWATCH_DATABASE_URL``, or the embedded server another
routewatch process runs on the data directory; this command never starts
one. A config with ``ingest`` needs no database: the results are pushed to
the central server (``sinks.result_sink``), and with no leases to share this
process probes every series of its region (run one per region). Routers
configured as ``simulator`` are probed at ``--simulator-url``
(a simulator another process runs), or at ``ROUTEWATCH_ROUTER_URL`` (a real
router in its place).

Each process serves its own ``/metrics``, ``/healthz`` and ``/readyz``
(``prober_metrics.py``, ``prober_health.py``; loopback by default,
``--metrics-port``, 0 for any free port, printed in the banner), and re-reads
its configuration file on SIGHUP: the series, the interval, the probe
timeouts and the loop-lag limit change live; the region and the concurrency
limit are logged as needing a restart. ``routewatch run`` starts its prober
workers as this command (``prober_workers.py``), with ``--worker`` (a log
prefix and a one-line banner) and ``--ready-fd`` (a pipe on which it reports
ready, with its metrics address, and at exit how many results it stored).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from routewatch.budget_follow import follow_pauses, follow_pushed_pauses
from routewatch.config import Config, ConfigError, load_config
from routewatch.config.costs import budget_overrun, format_usd, plan_costs
from routewatch.config.settings import ENV_DATABASE_URL, Settings
from routewatch.delivery.push import IngestDestination
from routewatch.model_discovery import ModelDiscovery, discovering, running_discovery
from routewatch.parts import (
    Database,
    DatabaseUnavailable,
    Startup,
    database_pool,
    embedded_postgres,
    frozen_heap,
    migrated,
    refreeze_heap,
    report_status,
    start_prober,
    stop_on_signals,
)
from routewatch.probe.redact import redact, redact_dsn
from routewatch.probe.scheduler import PhasedSchedule, Prober, Series
from routewatch.probe.slots import Ownership
from routewatch.probe.targets import RouterPlan, TargetError, plan
from routewatch.prober_metrics import ProberParts, metrics_endpoint
from routewatch.shard_coordinator import ShardCoordinator, holding_shards
from routewatch.sinks import DatabaseTarget, catalog_pusher, needs_database, result_sink
from routewatch.storage import shard_leases
from routewatch.storage.errors import DATABASE_ERRORS
from routewatch.storage.housekeeping import PartitionCache
from routewatch.supervision import Supervisor, dsn_secrets

log = logging.getLogger("routewatch")

BANNER_TITLE = "routewatch probe is running"


@dataclass(frozen=True)
class ProbeOptions:
    """What ``routewatch probe`` was asked to do."""

    config: Config
    config_path: str
    data_dir: Path  # where the embedded server runs, if it is the database
    spool_dir: Path  # this process's own spool (one writer per spool)
    simulator_url: str | None = None  # where routers configured as `simulator` are served
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: any free port
    worker: int | None = None  # routewatch run's worker number: a log prefix and a one-line banner
    ready_fd: int | None = None  # a pipe to report ready (and, at exit, results stored) on

    def __post_init__(self) -> None:
        if self.simulator_url is not None:
            parts = urlsplit(self.simulator_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"--simulator-url must be an http(s) URL, like http://127.0.0.1:8400/v1, not {self.simulator_url!r}"
                )


def find_database(data_dir: Path, settings: Settings) -> Database:
    """``ROUTEWATCH_DATABASE_URL``, else the embedded server running on ``data_dir``.

    :raises DatabaseUnavailable: neither is there.
    """
    url = settings.database_dsn()
    if url:
        return Database(url, f"PostgreSQL at {redact_dsn(url)} (from {ENV_DATABASE_URL})")
    local = embedded_postgres(data_dir, settings)
    shared = local.running_dsn()
    if shared is None:
        raise DatabaseUnavailable(
            f"routewatch probe needs a database: set {ENV_DATABASE_URL}, or start `routewatch run` or"
            f" `routewatch serve` on the data directory {data_dir} first (--data-dir or ROUTEWATCH_DATA_DIR)"
        )
    return Database(shared, f"embedded PostgreSQL {local.version} in {data_dir} (run by another routewatch)")


def probe_main(opts: ProbeOptions, settings: Settings) -> int:
    """Probe the shards this process holds until SIGINT/SIGTERM or a failure; return the exit code.

    :raises TargetError: a router cannot be probed as configured.
    :raises DatabaseUnavailable: no database to use, or it cannot be reached.
    :raises MetricsAddressError: the metrics address cannot be bound.
    """
    # Opened first: whatever fails from here on, the process's exit closes it, which tells run.
    ready = os.fdopen(opts.ready_fd, "w", encoding="utf-8") if opts.ready_fd is not None else None
    series, routers = plan(opts.config, settings.router_keys, opts.simulator_url, router_url=settings.router_url)
    database = find_database(opts.data_dir, settings) if needs_database(opts.config) else None
    opts.spool_dir.mkdir(parents=True, exist_ok=True)
    if opts.worker is None:
        print(f"spool: {opts.spool_dir}", flush=True)
    return asyncio.run(_probe(opts, settings, database, series, routers, ready))


def _report(ready: TextIO | None, **fields: object) -> None:
    """One JSON line to ``routewatch run`` on the ready pipe (nothing without one)."""
    if ready is None:
        return
    with suppress(OSError):  # run has gone: nobody to tell
        ready.write(json.dumps(fields) + "\n")
        ready.flush()


async def _probe(
    opts: ProbeOptions,
    settings: Settings,
    database: Database | None,
    series: list[Series],
    routers: list[RouterPlan],
    ready: TextIO | None = None,
) -> int:
    config = opts.config
    stop = asyncio.Event()
    supervisor = Supervisor(stop, dsn_secrets(database.dsn) if database else [])
    async with Startup(supervisor) as stack:
        stack.enter_context(stop_on_signals(stop))
        target = None
        pool = None
        if database is not None:
            pool = await stack.start("database", database_pool(database, "probe"))
            report = await migrated(database, "probe")
            target = DatabaseTarget(pool, PartitionCache(), report.mode)
        sink = result_sink(config, settings, opts.spool_dir, target)
        parts = await start_prober(stack, supervisor, sink, config)
        prober, writer, lag = parts.prober, parts.writer, parts.lag
        schedule = await stack.start("scheduler", _phased_schedule(config, series, prober))
        coordinator = None
        if database is None:
            await schedule.apply(Ownership.everything(range(shard_leases.SHARDS)))
            if isinstance(writer.destination, IngestDestination):
                follow = partial(follow_pushed_pauses, writer.destination, prober)
                await stack.start("budget pauses", supervisor.running("budget pauses", follow))
            where: str | list[str] = (
                f"pushed to {config.ingest.url if config.ingest else '?'}; every series of the region"
            )
        else:
            coordinator = ShardCoordinator(database.dsn, config.region, schedule, dsn_secrets(database.dsn))
            try:
                await stack.start("shard leases", holding_shards(coordinator, supervisor))
            except DATABASE_ERRORS as exc:
                reason = redact(f"{exc.__class__.__name__}: {exc}", [database.dsn])
                raise DatabaseUnavailable(f"cannot join the region's probers in {database.label}: {reason}") from None
            where = _sharing(database.label, report.mode, coordinator)
            assert pool is not None  # opened above, with the database
            await stack.start(
                "budget pauses", supervisor.running("budget pauses", partial(follow_pauses, pool, prober))
            )
        replan = _Replanner(opts, settings, schedule)
        # A pushing prober's list reads reach the central catalog on a client of their own.
        pusher = await stack.start("catalog push", catalog_pusher(config, settings)) if pool is None else None
        discovery = await stack.start(
            "discovery",
            running_discovery(config, routers, replan, pool, pusher),
        )
        prober.on_result = discovery.note_result
        status = partial(report_status, prober, writer, lag, stop)
        await stack.start("status reporter", supervisor.running("status reporter", status))
        view = ProberParts(prober, writer, lag, schedule, coordinator, supervisor.failures, discovery)
        metrics = await stack.start("metrics", metrics_endpoint(view, opts.metrics_host, opts.metrics_port))
        await stack.start("reload", _reloading_on_hangup(opts, settings, schedule, discovery, replan))
        stack.enter_context(frozen_heap())
        refreeze = partial(refreeze_heap, lambda: schedule.scheduled)
        await stack.start("heap", supervisor.running("heap freezer", refreeze))
        if opts.worker is None:
            print(_banner(opts, routers, len(series), where, metrics), flush=True)
        else:
            print(_worker_banner(opts.worker, coordinator, metrics), flush=True)
        _report(ready, metrics=metrics, pid=os.getpid())
        await stop.wait()
        if opts.worker is None:
            print("\nstopping: handing the shards over, finishing probes in flight and storing results …", flush=True)
    _report(ready, stored=writer.written)
    if opts.worker is None:
        print(f"stored {writer.written} probe results this run; bye", flush=True)
    for failure in supervisor.failed:
        who = "routewatch" if opts.worker is None else f"routewatch prober worker {opts.worker}"
        print(f"{who}: stopped because {failure.describe()}", file=sys.stderr, flush=True)
    return supervisor.exit_code


@asynccontextmanager
async def _phased_schedule(config: Config, series: list[Series], prober: Prober) -> AsyncIterator[PhasedSchedule]:
    """The series on their slots (none owned until the shard leases say); at exit no new probe
    starts and those in flight finish."""
    scheduler = AsyncIOScheduler()
    schedule = PhasedSchedule(scheduler, prober, series, config.schedule.interval, shard_leases.SHARDS)
    scheduler.start()
    try:
        yield schedule
    finally:
        # A reload may have changed the timeouts; a probe in flight may still run on the old ones,
        # and a reasoning model's on its router's longer deadlines.
        await schedule.stop(max(config.longest_probe_s(), prober.timeouts.total, prober.longest_s) + 1)


class _Replanner:
    """Puts the configured and discovered series into the schedule: after a model list changed, and
    after a reload. One at a time, each planned from the state at its turn, so that a reload and a
    list read meeting never leave the older plan in place."""

    def __init__(self, opts: ProbeOptions, settings: Settings, schedule: PhasedSchedule) -> None:
        self._opts = opts
        self._settings = settings
        self._schedule = schedule
        self._lock = asyncio.Lock()
        self._planned: float | None = None  # the last plan noted, USD per day

    async def __call__(self, found: ModelDiscovery) -> None:
        """Probe the configured series and those of the models ``found`` has now."""
        async with self._lock:
            if self._schedule.stopped:
                return
            series, _ = plan(
                found.config,
                self._settings.router_keys,
                self._opts.simulator_url,
                router_url=self._settings.router_url,
                discovered=found.discovered,
                listed_prices=found.prices,
            )
            await self._schedule.replace(series, found.config.schedule.interval)
            self._note_plan(found)

    def _note_plan(self, found: ModelDiscovery) -> None:
        """Log the plan per day with the discovered models and listed prices, which the file's check
        cannot know, when it changes; a warning when it exceeds the budget."""
        planned = plan_costs(found.config, found.prices, found.discovered)
        if planned.usd_per_day == self._planned:
            return
        self._planned = planned.usd_per_day
        over = budget_overrun(found.config, planned)
        if over is not None:
            log.warning(
                "budget.usd_per_day: with the models discovered and the prices the routers list, %s; "
                "the dearest series are paused once the day's spend reaches the budget",
                over,
            )
        elif planned.usd_per_day is not None:
            log.info(
                "planned cost with the models discovered and the prices the routers list: %s/day",
                format_usd(planned.usd_per_day),
            )


class _Reloader:
    """Re-reads the configuration file on SIGHUP and applies to the schedule what can change live."""

    def __init__(
        self,
        opts: ProbeOptions,
        settings: Settings,
        schedule: PhasedSchedule,
        discovery: ModelDiscovery,
        replan: _Replanner,
    ) -> None:
        self._opts = opts
        self._settings = settings
        self._schedule = schedule
        self._discovery = discovery
        self._replan = replan
        self._config = opts.config  # as last applied
        self._task: asyncio.Task[None] | None = None
        self._again = False  # a SIGHUP came while a reload ran: read the file once more after it

    def request(self) -> None:
        """SIGHUP: reload now, or once the reload under way is done."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._reload(), name="config reload")

    async def _reload(self) -> None:
        while True:
            self._again = False
            await self._reload_once()
            if not self._again:
                return

    async def _reload_once(self) -> None:
        path = self._opts.config_path
        settings = self._settings
        try:
            # A file read and a YAML parse: off the event loop, which times probes.
            new = await asyncio.to_thread(load_config, path, settings.region)
            _, routers = plan(new, settings.router_keys, self._opts.simulator_url, router_url=settings.router_url)
        except ConfigError as exc:
            log.warning(
                "config reload rejected: %s has %d problem(s); running configuration kept", path, len(exc.issues)
            )
            return
        except TargetError as exc:
            log.warning("config reload rejected: %s: %s; running configuration kept", path, exc)
            return
        if self._schedule.stopped:
            return
        before = len(self._schedule.series), self._schedule.interval_s
        # Discovery first: a list read re-planning from here on plans with the new file.
        self._discovery.reconfigure(new, routers)
        await self._replan(self._discovery)
        self._schedule.prober.retune(new.timeouts, new.schedule.max_loop_lag)
        self._config = new
        started = self._opts.config
        pending = [
            name
            for name, differs in (
                ("region", new.region != started.region),
                ("schedule.concurrency", new.schedule.concurrency != started.schedule.concurrency),
                ("storage", new.storage != started.storage),
                ("ingest", new.ingest != started.ingest),
            )
            if differs
        ]
        log.info(
            "config reload of %s: probing %d series every %g s (was %d every %g s)%s",
            path,
            len(self._schedule.series),
            new.schedule.interval,
            *before,
            f"; {', '.join(pending)} changed: take effect at the next restart" if pending else "",
        )

    async def close(self) -> None:
        """Stop a reload under way."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task


@asynccontextmanager
async def _reloading_on_hangup(
    opts: ProbeOptions, settings: Settings, schedule: PhasedSchedule, discovery: ModelDiscovery, replan: _Replanner
) -> AsyncIterator[None]:
    """SIGHUP re-reads the configuration file while open."""
    loop = asyncio.get_running_loop()
    reloader = _Reloader(opts, settings, schedule, discovery, replan)
    loop.add_signal_handler(signal.SIGHUP, reloader.request)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await reloader.close()


def _worker_banner(worker: int, coordinator: ShardCoordinator | None, metrics: str) -> str:
    """``routewatch run``'s worker: one line (run prints the banner)."""
    held = f"{coordinator.held} of {shard_leases.SHARDS} shards now" if coordinator is not None else "every series"
    return f"prober worker {worker} (pid {os.getpid()}) is probing: {held}; metrics {metrics}"


def _sharing(db_label: str, mode: str, coordinator: ShardCoordinator) -> list[str]:
    """The banner's lines on where results go and how the series are shared."""
    store_mode = "TimescaleDB" if mode == "timescaledb" else "plain PostgreSQL tables"
    return [
        f"  database: {db_label} ({store_mode})",
        f"  shards:   member {coordinator.member} (pid {os.getpid()}); this process probes the series of the"
        f" shards it holds ({coordinator.held} of {shard_leases.SHARDS} now)",
        f"  leases:   heartbeat {shard_leases.HEARTBEAT_S:g}s, lease {shard_leases.LEASE_TTL_S:g}s: a member that"
        f" dies has its shards taken over within {shard_leases.TAKEOVER_S:g}s",
    ]


def _banner(opts: ProbeOptions, routers: list[RouterPlan], n_series: int, where: str | list[str], metrics: str) -> str:
    schedule = opts.config.schedule
    lines = [
        "",
        f"{BANNER_TITLE} (prober only: no aggregator, no API)",
        f"  config:   {opts.config_path}",
    ]
    for r in routers:
        key = " (router simulator)" if r.simulated else f", key from ${r.key_env}" if r.key_env else ", no API key"
        lines.append(f"  router:   {r.name} → {r.url}{key}")
    for router in discovering(opts.config):
        assert router.discover is not None
        lines.append(
            f"  discover: {router.name}'s model list every {router.discover.refresh:g}s "
            f"(include {', '.join(router.discover.include)}; at most {router.discover.max_models})"
        )
    lines += [
        f"  region:   {opts.config.region}",
        f"  probing:  {n_series} series every {schedule.interval:g}s, each at a fixed phase, at most"
        f" {schedule.concurrency} at once",
        *([f"  results:  {where}"] if isinstance(where, str) else where),
        f"  metrics:  {metrics}  (this process's own; --metrics-port)",
        "",
        "  Ctrl-C stops (the shards are handed over first); SIGHUP re-reads the configuration file.",
        "",
    ]
    return "\n".join(lines)
