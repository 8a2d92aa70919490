"""The main job, ``routewatch run`` (and ``serve``): every part wired together.

config → simulator (when no real router is configured) → prober workers
(child processes, ``prober_workers.py``: scheduled probes → batch writer) →
PostgreSQL → aggregator → HTTP API.

``run`` keeps the embedded PostgreSQL, the simulator, housekeeping, the
aggregator and the API in its own process, and probes in ``--workers``
children (``routewatch probe``), one event loop each, which share the series
through the shard leases: so the loop that times probes does nothing else,
whatever the aggregator and the API cost. ``serve`` starts no workers.

Each long-lived part is a context manager, entered in order on one stack, so
that whatever fails, at start-up or while stopping, everything already
started is stopped, in reverse order:

* :func:`run`, on the main thread before the event loop, holds what must be
  set up there on a :class:`contextlib.ExitStack`: the data directory's run
  lock, the pre-bound API sockets and the embedded PostgreSQL. The server is
  started from the main thread because its parent-death signal is tied to
  the thread that starts it (it is restarted from the event loop, which runs
  on that thread too). The data directory is claimed and the API port bound
  first, so a second ``run`` or a taken port is reported before anything is
  started.
* :func:`serve`, the event loop's entry, enters every other part on one
  :class:`contextlib.AsyncExitStack`, in the order of :data:`STARTUP_STEPS`.
  ``asyncio.run`` returns only once that stack is unwound, so the main
  thread's stack is its outer part: the embedded server stops after
  everything that uses it.

While running, every long-lived task is watched (``supervision.py``): one
that dies stops the process, in order, with a non-zero exit. A prober worker
that dies is restarted, a bounded number of times (``prober_workers.py``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    ExitStack,
    asynccontextmanager,
    contextmanager,
    nullcontext,
)
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

import asyncpg
from aiohttp import web

from routewatch.admin import LocalAdmin
from routewatch.aggregator.budget import BudgetKeeper
from routewatch.aggregator.publish.api import FAILED_COMPONENTS, create_app
from routewatch.aggregator.publish.metrics_snapshot import MetricsExport
from routewatch.aggregator.publish.public_routes import input_prices
from routewatch.aggregator.publish.server import ApiServer, bind_listeners, start_api
from routewatch.aggregator.refresh import Aggregator
from routewatch.config import Config, StorageConfig
from routewatch.config.costs import configured_prices
from routewatch.config.durations import parse_duration
from routewatch.config.settings import (
    ENV_DATABASE_READ_URL,
    ENV_DATABASE_URL,
    ENV_ROUTER_URL,
    Settings,
    process_environment,
)
from routewatch.delivery.spooled import SpoolInUse
from routewatch.model_discovery import catalog_cost_plan
from routewatch.notify.sender import OutboxSender, notification_session
from routewatch.notify.targets import Target, resolve_targets
from routewatch.parts import (
    Database,
    Startup,
    database_pool,
    embedded_postgres,
    frozen_heap,
    migrated,
    read_pool,
    stop_on_signals,
)
from routewatch.postgres.file_lock import FileLock
from routewatch.postgres.local_server import LocalPostgres
from routewatch.postgres.watch import PostgresGaveUp, watch_postgres
from routewatch.probe.redact import redact_dsn
from routewatch.probe.scheduler import Series
from routewatch.probe.targets import RouterPlan, plan, uses_simulator
from routewatch.prober_metrics import gathering
from routewatch.prober_workers import ProberWorkers, WorkersGaveUp, prober_stop_limit_s
from routewatch.simulator import DEFAULT_PROFILES, RunningSimulator, start_simulator
from routewatch.sinks import DatabaseTarget, IngestSetupError, database_sink, ingest_receiver, ingest_tokens
from routewatch.storage.housekeeping import PartitionCache, maintenance_loop
from routewatch.storage.leadership import Leadership
from routewatch.storage.read_pools import ReadPools
from routewatch.storage.session_name import session_settings
from routewatch.supervision import Supervisor, dsn_secrets

log = logging.getLogger("routewatch")

_T = TypeVar("_T")

# Stands in for the simulator's URL while checking the plan, before it is started.
SIMULATOR_PENDING = "http://127.0.0.1:0/v1"
RUN_LOCK = "run.lock"  # in the data directory: one `routewatch run` per spool
WORKER_SPOOL = "spool-worker-{}"  # in the data directory: prober worker i's own spool
LEGACY_SPOOL = "spool"  # where a run that probed in its own process kept its spool

# What serve() starts, in order (the last, "running", is everything started).
# `serve` reaches the steps up to "api"; `run` all of them. The prober workers
# come last, so they are the first to stop: they store what they hold while
# the database and the API are still there.
STARTUP_STEPS = (
    "database",
    "simulator",
    "leadership",
    "postgres watch",
    "migrations",
    "housekeeping",
    "aggregator",
    "notifications",
    "api",
    "spools",
    "prober workers",
    "running",
)
# Steps that start nothing that is stopped later: points of start-up only.
STARTUP_MARKS = ("migrations", "spools", "running")


class DataDirInUse(Exception):
    """Another ``routewatch run`` uses this data directory (and its spool)."""


@dataclass
class RunOptions:
    """What ``routewatch run`` was asked to do.

    ``fail_at`` and ``fail_stopping`` are for tests of the start-up and
    shutdown order only, for the steps no real condition can make fail: the
    step of :data:`STARTUP_STEPS` named by ``fail_at`` raises
    :class:`InjectedFault` instead of starting; the one named by
    ``fail_stopping`` raises it once it has stopped.
    """

    config: Config
    config_path: str
    data_dir: Path
    host: str
    port: int
    probes: bool = True  # False: `routewatch serve`, aggregator and API only
    workers: int = 1  # prober worker processes (`run --workers`, whose default is the usable cores)
    fail_at: str | None = None
    fail_stopping: str | None = None

    def __post_init__(self) -> None:
        if self.probes and self.workers < 1:
            raise ValueError(f"routewatch run needs at least one prober worker, not {self.workers}")
        if self.fail_at is not None and self.fail_at not in STARTUP_STEPS:
            raise ValueError(f"no start-up step {self.fail_at!r}; the steps are {', '.join(STARTUP_STEPS)}")
        stopped = [step for step in STARTUP_STEPS if step not in STARTUP_MARKS]
        if self.fail_stopping is not None and self.fail_stopping not in stopped:
            raise ValueError(f"no step {self.fail_stopping!r} that stops; those are {', '.join(stopped)}")


def run(opts: RunOptions, settings: Settings) -> int:
    """Start everything, serve until SIGINT/SIGTERM or a failure, stop everything. Returns the exit code.

    :raises DataDirInUse: another ``routewatch run`` uses ``opts.data_dir``.
    :raises PortInUse: the API port is taken (nothing has been started).
    """
    if opts.probes and opts.config.ingest is not None:
        raise IngestSetupError(
            "this config pushes results to a central server (ingest.url): run the prober alone with"
            " `routewatch probe`; `routewatch run` stores into its own database"
        )
    ingest_tokens(opts.config, settings)  # every region's token set and usable, before anything starts
    resolve_targets(opts.config.notifications.targets, settings.notify_secrets)  # likewise every target's
    database_url = settings.database_dsn()
    print(f"data directory: {opts.data_dir}  (--data-dir or ROUTEWATCH_DATA_DIR to change)", flush=True)
    local = None if database_url else embedded_postgres(opts.data_dir, settings)
    if local is None:
        opts.data_dir.mkdir(parents=True, exist_ok=True)  # the spool lives here
    else:
        local.prepare_data_dir()
    _plan(opts.config, settings, SIMULATOR_PENDING)  # fail on config before starting anything
    with ExitStack() as main_thread:
        if opts.probes:
            main_thread.enter_context(_run_lock(opts.data_dir))
        sockets = main_thread.enter_context(_listeners(opts.host, opts.port))
        database = main_thread.enter_context(_database(local, database_url, opts.data_dir, settings))
        return asyncio.run(serve(opts, settings, database, sockets))


@contextmanager
def _run_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's run lock for this process: its spool is ours alone."""
    lock = FileLock(data_dir / RUN_LOCK)
    if not lock.acquire():
        raise DataDirInUse(
            f"another `routewatch run` (pid {lock.holder()}) uses the data directory {data_dir};"
            " give each run its own --data-dir or ROUTEWATCH_DATA_DIR (a `routewatch serve` may share one)"
        )
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _listeners(host: str, port: int) -> Iterator[list[socket.socket]]:
    """The API's sockets, bound now (a taken port is reported before anything starts), closed at exit."""
    sockets = bind_listeners(host, port)
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def _database(local: LocalPostgres | None, url: str | None, data_dir: Path, settings: Settings) -> Iterator[Database]:
    """The external database at ``url`` (with the read replica the settings name, if any), else the
    embedded one: started (and stopped at exit) unless another routewatch process already runs it on
    ``data_dir``."""
    if local is None:
        assert url is not None
        read_url = settings.database_read_dsn()
        label = f"PostgreSQL at {redact_dsn(url)} (from {ENV_DATABASE_URL})"
        if read_url is not None:
            label += f"; reads from the replica at {redact_dsn(read_url)} (from {ENV_DATABASE_READ_URL})"
        yield Database(url, label, read_dsn=read_url)
        return
    with local.startup_lock():
        shared = local.running_dsn()
        if shared is None:
            local.start()
    if shared is not None:  # another routewatch process runs it; share it, leave it running
        yield Database(shared, f"embedded PostgreSQL {local.version} in {data_dir} (run by another routewatch)")
        return
    try:
        yield Database(local.dsn, f"embedded PostgreSQL {local.version} in {data_dir}", local)
    finally:
        local.stop()


def _plan(config: Config, settings: Settings, simulator_url: str | None) -> tuple[list[Series], list[RouterPlan]]:
    return plan(config, settings.router_keys, simulator_url, router_url=settings.router_url)


# ---------------------------------------------------------------- the event loop's part


async def serve(opts: RunOptions, settings: Settings, database: Database, sockets: Sequence[socket.socket]) -> int:
    """Run every part on this event loop until SIGINT/SIGTERM or a failure; return the exit code.

    The parts are entered on one stack in the order of :data:`STARTUP_STEPS`
    (``run`` all of them, ``serve`` those up to the API). Whatever fails while
    starting or stopping, everything already started is stopped, in reverse
    order, and the exception is raised once they are.
    """
    config = opts.config
    stop = asyncio.Event()
    targets = resolve_targets(config.notifications.targets, settings.notify_secrets)
    secrets = [s for target in targets.values() for s in target.secrets()]
    dsns = [database.dsn, *([database.read_dsn] if database.read_dsn else [])]
    supervisor = Supervisor(stop, [*(s for dsn in dsns for s in dsn_secrets(dsn)), *secrets])
    workers: ProberWorkers | None = None
    async with Startup(supervisor, opts.fail_at, opts.fail_stopping) as stack:
        stack.enter_context(stop_on_signals(stop))
        command = "run" if opts.probes else "serve"
        pool = await stack.start("database", database_pool(database, command))
        reads = ReadPools(pool, await stack.enter_async_context(read_pool(database, command)))
        if reads.has_replica:
            await stack.enter_async_context(supervisor.running("read replica watch", reads.watch))
        simulator = await stack.start("simulator", _simulator(config, settings, opts.probes))
        leadership = await stack.start("leadership", _leadership(database.dsn, command))
        await stack.start("postgres watch", _postgres_watch(supervisor, database.server))
        stack.reach("migrations")
        report = await migrated(database, command)
        partitions = PartitionCache()
        database_target = DatabaseTarget(pool, partitions, report.mode)
        await stack.start(
            "housekeeping", _housekeeping(supervisor, pool, report.mode, partitions, config.storage, leadership)
        )
        aggregator = await stack.start("aggregator", _refreshing(_aggregator(config, reads, leadership), supervisor))
        await stack.start("notifications", _notifications(config, targets, pool, leadership, supervisor))
        series, routers = _plan(config, settings, simulator.base_url if simulator else SIMULATOR_PENDING)
        # A reload is applied once the probes run (admin.attach); a router moved to the
        # simulator is rejected when this process did not start one.
        reload_simulator = simulator.base_url if simulator else (None if opts.probes else SIMULATOR_PENDING)
        admin = LocalAdmin(
            config,
            opts.config_path,
            series,
            simulator_url=reload_simulator,
            aggregator=aggregator,
            router_keys=settings.router_keys,
            router_url=settings.router_url,
            region=settings.region,
        )
        gatherer = None
        if opts.probes:  # started after the API; /metrics reports them from then on
            workers = _prober_workers(opts, database, simulator)
            gatherer = await stack.enter_async_context(gathering(workers.views))
        app = create_app(
            aggregator,
            admin=admin,
            admin_token=settings.admin_token,
            prices=input_prices(config.routers),
            model_prices=configured_prices(config.routers),
            prober_workers=gatherer,
            ingest=ingest_receiver(config, settings, database_target, timedelta(seconds=config.storage.retention)),
            metrics=MetricsExport.from_config(config.aggregator),
            public_url=config.api.public_url,
        )
        app[FAILED_COMPONENTS] = supervisor.failures  # /readyz: 503 once a part has died
        api = await stack.start("api", _api_server(app, sockets))
        if workers is not None:
            stack.reach("spools")
            await _store_orphan_spools(database_target, opts.data_dir, opts.workers, config.storage)
            await stack.start("prober workers", _running(workers, supervisor))
            admin.attach(workers)
        stack.reach("running")
        stack.enter_context(frozen_heap())
        api_url = f"http://{opts.host}:{api.addresses[0][1]}"
        print(
            _banner(
                opts,
                routers if opts.probes else [],
                database.label,
                report.mode,
                report.timescaledb_version,
                len(series) if opts.probes else 0,
                api_url,
                next((m for r in config.routers for m in r.models), "MODEL"),
                aggregator.role,
                workers,
            ),
            flush=True,
        )
        await stop.wait()
        print(
            "\nstopping: finishing probes in flight and storing results (the prober workers first) …"
            if opts.probes
            else "\nstopping …",
            flush=True,
        )
    if workers is not None:
        print(f"stored {workers.stored} probe results this run; bye", flush=True)
    for failure in supervisor.failed:
        print(f"routewatch: stopped because {failure.describe()}", file=sys.stderr, flush=True)
    return supervisor.exit_code


@asynccontextmanager
async def _simulator(config: Config, settings: Settings, probes: bool) -> AsyncIterator[RunningSimulator | None]:
    """The built-in router simulator when ``run`` probes a router configured as ``simulator``; else None."""
    if not probes or not uses_simulator(config, settings.router_url):
        yield None
        return
    async with await start_simulator(DEFAULT_PROFILES) as simulator:
        yield simulator


@asynccontextmanager
async def _leadership(dsn: str, command: str) -> AsyncIterator[Leadership]:
    """The refresher role, its lock session named after ``command``; given up at exit (its lock connection closed)."""
    leadership = Leadership(dsn, session_settings(dsn, command))
    try:
        yield leadership
    finally:
        await leadership.release()


def _postgres_watch(supervisor: Supervisor, server: LocalPostgres | None) -> AbstractAsyncContextManager[object]:
    """Restarts the embedded server this process runs if it dies; nothing for another's or an external one."""
    if server is None:
        return nullcontext()
    return supervisor.running("embedded PostgreSQL watch", partial(watch_postgres, server), explained=(PostgresGaveUp,))


def _housekeeping(
    supervisor: Supervisor,
    pool: asyncpg.Pool,
    mode: str,
    partitions: PartitionCache,
    storage: StorageConfig,
    leadership: Leadership,
) -> AbstractAsyncContextManager[object]:
    """Partitions, retention and compression, on the refresher's schedule."""
    return supervisor.running(
        "maintenance",
        partial(
            maintenance_loop,
            pool,
            mode,
            partitions,
            retention=timedelta(seconds=storage.retention),
            compress_after=timedelta(seconds=storage.compress_after),
            leadership=leadership,
        ),
    )


def _aggregator(config: Config, reads: ReadPools, leadership: Leadership) -> Aggregator:
    return Aggregator(
        reads.primary,
        {name: parse_duration(name) for name in config.aggregator.windows},
        [(r.name, m) for r in config.routers for m in r.models],
        config.aggregator.refresh,
        retention=timedelta(seconds=config.storage.retention),
        leadership=leadership,
        history_every=timedelta(seconds=config.aggregator.snapshot_every),
        slo=config.slo,
        probe_interval_s=config.schedule.interval,
        maintenance=config.maintenance,
        max_providers=config.aggregator.max_providers_per_model,
        headline_tier=config.headline_tier(),
        notify_targets=[t.name for t in config.notifications.targets],
        reads=reads,
        budget=BudgetKeeper(
            config.budget.usd_per_day, 86400 / config.schedule.interval, config=config, planner=catalog_cost_plan
        ),
    )


@asynccontextmanager
async def _refreshing(aggregator: Aggregator, supervisor: Supervisor) -> AsyncIterator[Aggregator]:
    """The aggregator, refreshed once (the API serves stats from its first request), then its refresh loop."""
    await aggregator.refresh()
    async with supervisor.running("aggregator refresh", aggregator.run):
        yield aggregator


def _notifications(
    config: Config, targets: dict[str, Target], pool: asyncpg.Pool, leadership: Leadership, supervisor: Supervisor
) -> AbstractAsyncContextManager[object]:
    """The outbox sender (while this process leads), when notification targets are configured."""
    if not targets:
        return nullcontext()
    return _sending(config, targets, pool, leadership, supervisor)


@asynccontextmanager
async def _sending(
    config: Config, targets: dict[str, Target], pool: asyncpg.Pool, leadership: Leadership, supervisor: Supervisor
) -> AsyncIterator[OutboxSender]:
    async with notification_session() as session:
        sender = OutboxSender(pool, targets, config.notifications, session, is_leader=lambda: leadership.is_leader)
        async with supervisor.running("notification sender", sender.run):
            yield sender


@asynccontextmanager
async def _api_server(app: web.Application, sockets: Sequence[socket.socket]) -> AsyncIterator[ApiServer]:
    """The API served on the pre-bound sockets; at exit, requests in flight finish and connections close."""
    api = await start_api(app, sockets)
    try:
        yield api
    finally:
        await api.close()


def _prober_workers(opts: RunOptions, database: Database, simulator: RunningSimulator | None) -> ProberWorkers:
    """``opts.workers`` children of ``routewatch probe`` on this run's configuration, data directory and
    database (its URL in their environment), each with its own spool; not started yet."""
    argv = [sys.executable, "-m", "routewatch.cli", *(["-v"] if log.isEnabledFor(logging.DEBUG) else []), "probe"]
    argv += ["--config", opts.config_path, "--data-dir", str(opts.data_dir)]
    if simulator is not None:
        argv += ["--simulator-url", simulator.base_url]

    def worker_argv(index: int) -> list[str]:
        return [*argv, "--spool-dir", str(opts.data_dir / WORKER_SPOOL.format(index)), "--worker", str(index)]

    # The children need the router keys the configuration names, whatever their variables are called.
    env = {**process_environment(), ENV_DATABASE_URL: database.dsn}
    return ProberWorkers(opts.workers, worker_argv, env, stop_limit_s=prober_stop_limit_s(opts.config))


@asynccontextmanager
async def _running(workers: ProberWorkers, supervisor: Supervisor) -> AsyncIterator[ProberWorkers]:
    """The workers started (each has joined the probers), restarted when they die, stopped at exit."""
    try:
        await workers.start()
        async with supervisor.running("prober workers", workers.run, explained=(WorkersGaveUp,)):
            yield workers
    finally:
        await workers.stop()


def orphan_spools(data_dir: Path, workers: int) -> list[Path]:
    """Spools in ``data_dir`` that no worker of this run opens and that hold segments: a run's from
    before it had workers (``spool``), and those of workers beyond ``--workers`` (run with more before).
    Their segments may all be stored already (the last is kept until it fills); opening one says."""
    found = [data_dir / LEGACY_SPOOL]
    for path in sorted(data_dir.glob(WORKER_SPOOL.format("*"))):
        index = path.name.rsplit("-", 1)[1]
        if not index.isdigit() or int(index) > workers:
            found.append(path)
    return [path for path in found if path.is_dir() and any(path.glob("*.spool"))]


async def _store_orphan_spools(target: DatabaseTarget, data_dir: Path, workers: int, storage: StorageConfig) -> None:
    """Replay every orphan spool into the database now (what cannot be stored stays for the next start)."""
    for spool in orphan_spools(data_dir, workers):
        try:
            async with database_sink(target, spool, storage) as writer:
                pass  # opening replays it; closing stores what it read, within the writer's time limit
        except SpoolInUse:
            log.warning("the spool %s is in use by another process; leaving it to that process", spool)
            continue
        if writer.written:
            log.info("stored %d probe results left in %s by an earlier run", writer.written, spool)


def _banner(
    opts: RunOptions,
    routers: list[RouterPlan],
    db_label: str,
    mode: str,
    tsdb: str | None,
    n_series: int,
    api_url: str,
    example_model: str,
    role: str,
    workers: ProberWorkers | None = None,
) -> str:
    title = "routewatch is running" if opts.probes else "routewatch is serving stats (no probes in this process)"
    lines = ["", title, f"  config:   {opts.config_path}"]
    for r in routers:
        if r.simulated:
            lines.append(f"  router:   {r.name} → built-in router simulator at {r.url}")
            lines.append(
                f"            (to probe a real router: {ENV_ROUTER_URL}=https://…/v1 and its key in the environment)"
            )
        else:
            key = f", key from ${r.key_env}" if r.key_env else ", no API key"
            lines.append(f"  router:   {r.name} → {r.url}{key}")
    store_mode = f"TimescaleDB {tsdb}" if mode == "timescaledb" else "plain PostgreSQL tables"
    lines.append(f"  database: {db_label} ({store_mode})")
    if workers is not None:
        count = workers.count
        lines.append(
            f"  probing:  {n_series} series every {opts.config.schedule.interval:g}s, each at a fixed phase,"
            f" by {count} prober process{'es' if count != 1 else ''} (pid {', '.join(map(str, workers.pids))};"
            f" --workers N), at most {opts.config.schedule.concurrency} probes at once in each"
        )
    lines += [
        f"  stats:    {role} (one process refreshes rollups; the others serve what it computed)",
        f"  API:      {api_url}  (OpenAPI document: {api_url}/openapi.json)",
        f"  status:   {api_url}/status",
        f"  metrics:  {api_url}/metrics" + ("  (the prober workers' with a worker label)" if workers else ""),
        "",
        "  try:",
        f"    curl {api_url}/v1/models",
        f"    curl '{api_url}/v1/models/{example_model}/stats?window=7d'",
        "",
        "  Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)
