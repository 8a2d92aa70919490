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
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from routewatch.config import Config
from routewatch.config.settings import ENV_DATABASE_URL, Settings
from routewatch.parts import (
    Database,
    DatabaseUnavailable,
    Startup,
    database_pool,
    embedded_postgres,
    frozen_heap,
    report_status,
    start_prober,
    stop_on_signals,
)
from routewatch.probe.redact import redact, redact_dsn
from routewatch.probe.scheduler import PhasedSchedule, Prober, Series
from routewatch.probe.slots import Ownership
from routewatch.probe.targets import RouterPlan, plan
from routewatch.shard_coordinator import ShardCoordinator, holding_shards
from routewatch.sinks import DatabaseTarget, needs_database, result_sink
from routewatch.storage import shard_leases
from routewatch.storage.errors import DATABASE_ERRORS
from routewatch.storage.housekeeping import PartitionCache
from routewatch.storage.migrate import migrate
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
    """
    series, routers = plan(opts.config, settings.router_keys, opts.simulator_url, router_url=settings.router_url)
    database = find_database(opts.data_dir, settings) if needs_database(opts.config) else None
    opts.spool_dir.mkdir(parents=True, exist_ok=True)
    print(f"spool: {opts.spool_dir}", flush=True)
    return asyncio.run(_probe(opts, settings, database, series, routers))


async def _probe(
    opts: ProbeOptions, settings: Settings, database: Database | None, series: list[Series], routers: list[RouterPlan]
) -> int:
    config = opts.config
    stop = asyncio.Event()
    supervisor = Supervisor(stop, dsn_secrets(database.dsn) if database else [])
    async with Startup(supervisor) as stack:
        stack.enter_context(stop_on_signals(stop))
        target = None
        if database is not None:
            pool = await stack.start("database", database_pool(database))
            async with pool.acquire() as conn:
                report = await migrate(conn)
            target = DatabaseTarget(pool, PartitionCache(), report.mode)
        sink = result_sink(config, settings, opts.spool_dir, target)
        parts = await start_prober(stack, supervisor, sink, config)
        prober, writer, lag = parts.prober, parts.writer, parts.lag
        schedule = await stack.start("scheduler", _phased_schedule(config, series, prober))
        if database is None:
            await schedule.apply(Ownership.everything(range(shard_leases.SHARDS)))
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
        status = partial(report_status, prober, writer, lag, stop)
        await stack.start("status reporter", supervisor.running("status reporter", status))
        stack.enter_context(frozen_heap())
        print(_banner(opts, routers, len(series), where), flush=True)
        await stop.wait()
        print("\nstopping: handing the shards over, finishing probes in flight and storing results …", flush=True)
    print(f"stored {writer.written} probe results this run; bye", flush=True)
    for failure in supervisor.failed:
        print(f"routewatch: stopped because {failure.describe()}", flush=True)
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
        await schedule.stop(config.timeouts.total + 1)


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


def _banner(opts: ProbeOptions, routers: list[RouterPlan], n_series: int, where: str | list[str]) -> str:
    schedule = opts.config.schedule
    lines = [
        "",
        f"{BANNER_TITLE} (prober only: no aggregator, no API)",
        f"  config:   {opts.config_path}",
    ]
    for r in routers:
        key = " (router simulator)" if r.simulated else f", key from ${r.key_env}" if r.key_env else ", no API key"
        lines.append(f"  router:   {r.name} → {r.url}{key}")
    lines += [
        f"  region:   {opts.config.region}",
        f"  probing:  {n_series} series every {schedule.interval:g}s, each at a fixed phase, at most"
        f" {schedule.concurrency} at once",
        *([f"  results:  {where}"] if isinstance(where, str) else where),
        "",
        "  Ctrl-C stops (the shards are handed over first).",
        "",
    ]
    return "\n".join(lines)
