"""The main job, ``routewatch run``: every part wired together in one process.

config → simulator (when no real router is configured) → scheduled probes →
batch writer → PostgreSQL → aggregator → HTTP API. The embedded PostgreSQL
is started before the event loop, from the main thread, because its
parent-death signal is tied to the thread that starts it; it is restarted
from the event loop, which runs on that thread too.

Start-up order: the data directory is claimed and the API port bound first,
so a second ``run`` or a taken port is reported before anything is started.
While running, every long-lived task is watched (``supervision.py``): one
that dies stops the process, in order, with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import signal
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from routewatch.aggregator.publish.api import FAILED_COMPONENTS, create_app
from routewatch.aggregator.publish.metrics import ProberHealthSlot
from routewatch.aggregator.publish.public_routes import input_prices
from routewatch.admin import LocalAdmin
from routewatch.aggregator.publish.server import bind_listeners, start_api
from routewatch.postgres.file_lock import FileLock
from routewatch.aggregator.refresh import Aggregator
from routewatch.storage.housekeeping import PartitionCache, maintenance_loop
from routewatch.storage.leadership import Leadership
from routewatch.storage.migrate import migrate
from routewatch.postgres.local_server import LocalPostgres
from routewatch.config import Config
from routewatch.config.durations import parse_duration
from routewatch.probe.loop_lag import LoopLagMonitor
from routewatch.probe.redact import redact, redact_dsn
from routewatch.results.probe_result import ProbeResult
from routewatch.probe.scheduler import Prober, ProbeSchedule, Series, new_session
from routewatch.probe.targets import ENV_ROUTER_URL, RouterPlan, plan, uses_simulator
from routewatch.storage.writer import BatchWriter
from routewatch.postgres.watch import PostgresGaveUp, watch_postgres
from routewatch.simulator import DEFAULT_PROFILES, start_simulator
from routewatch.supervision import Supervisor, dsn_secrets

log = logging.getLogger("routewatch")

ENV_DATABASE_URL = "ROUTEWATCH_DATABASE_URL"
# Stands in for the simulator's URL while checking the plan, before it is started.
SIMULATOR_PENDING = "http://127.0.0.1:0/v1"
STATUS_EVERY_S = 30.0
RUN_LOCK = "run.lock"  # in the data directory: one `routewatch run` per spool


class DatabaseUnavailable(Exception):
    """The database cannot be reached at start."""


class DataDirInUse(Exception):
    """Another ``routewatch run`` uses this data directory (and its spool)."""


@dataclass
class RunOptions:
    """What ``routewatch run`` was asked to do."""

    config: Config
    config_path: str
    data_dir: Path
    host: str
    port: int
    probes: bool = True  # False: `routewatch serve`, aggregator and API only


def run(opts: RunOptions) -> int:
    """Start everything, serve until SIGINT/SIGTERM or a failure, stop everything. Returns the exit code.

    :raises DataDirInUse: another ``routewatch run`` uses ``opts.data_dir``.
    :raises PortInUse: the API port is taken (nothing has been started).
    """
    database_url = os.environ.get(ENV_DATABASE_URL)
    print(f"data directory: {opts.data_dir}  (--data-dir or ROUTEWATCH_DATA_DIR to change)", flush=True)
    local = None if database_url else LocalPostgres(opts.data_dir)
    if local is None:
        opts.data_dir.mkdir(parents=True, exist_ok=True)  # the spool lives here
    else:
        local.prepare_data_dir()
    plan(opts.config, os.environ, SIMULATOR_PENDING)  # fail on config before starting anything
    run_lock = _claim_for_run(opts.data_dir) if opts.probes else None
    server: LocalPostgres | None = None
    try:
        sockets = bind_listeners(opts.host, opts.port)
        try:
            if local is None:
                assert database_url is not None
                db_label = f"PostgreSQL at {redact_dsn(database_url)} (from {ENV_DATABASE_URL})"
            else:
                with local.startup_lock():
                    database_url = local.running_dsn()
                    if database_url is None:
                        server = local
                        server.start()
                        database_url = server.dsn
                        db_label = f"embedded PostgreSQL {server.version} in {opts.data_dir}"
                    else:  # another routewatch process runs it; share it, leave it running
                        db_label = f"embedded PostgreSQL {local.version} in {opts.data_dir} (run by another routewatch)"
            return asyncio.run(_serve(opts, database_url, db_label, sockets, server))
        finally:
            for sock in sockets:
                sock.close()
    finally:
        if server is not None:
            server.stop()
        if run_lock is not None:
            run_lock.release()


def _claim_for_run(data_dir: Path) -> FileLock:
    """Hold the data directory's run lock for this process: its spool is ours alone."""
    lock = FileLock(data_dir / RUN_LOCK)
    if not lock.acquire():
        raise DataDirInUse(
            f"another `routewatch run` (pid {lock.holder()}) uses the data directory {data_dir};"
            " give each run its own --data-dir or ROUTEWATCH_DATA_DIR (a `routewatch serve` may share one)"
        )
    return lock


async def _serve(opts: RunOptions, dsn: str, db_label: str, sockets: list[socket.socket],
                 server: LocalPostgres | None) -> int:
    config = opts.config
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    supervisor = Supervisor(stop, dsn_secrets(dsn))

    series, routers = plan(config, os.environ, SIMULATOR_PENDING)
    try:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot reach the database, {db_label}: {redact(str(exc), [dsn])}") from None
    simulator = None
    if opts.probes and uses_simulator(config, os.environ):
        simulator = await start_simulator(DEFAULT_PROFILES)
        series, routers = plan(config, os.environ, simulator.base_url)
    leadership = Leadership(dsn)
    pg_watch = None
    if server is not None:
        pg_watch = asyncio.create_task(watch_postgres(server), name="embedded-postgres")
        supervisor.watch("embedded PostgreSQL watch", pg_watch, explained=(PostgresGaveUp,))
    try:
        async with pool.acquire() as conn:
            report = await migrate(conn)
        mode, tsdb = report.mode, report.timescaledb_version
        partitions = PartitionCache()
        storage = config.storage
        retention = timedelta(seconds=storage.retention)
        maintenance = asyncio.create_task(
            maintenance_loop(pool, mode, partitions, retention=retention,
                             compress_after=timedelta(seconds=storage.compress_after), leadership=leadership),
            name="maintenance",
        )
        supervisor.watch("maintenance", maintenance)
        windows = {name: parse_duration(name) for name in config.aggregator.windows}
        configured = [(r.name, m) for r in config.routers for m in r.models]
        aggregator = Aggregator(pool, windows, configured, config.aggregator.refresh,
                                retention=retention, leadership=leadership,
                                history_every=timedelta(seconds=config.aggregator.snapshot_every),
                                slo=config.slo, probe_interval_s=config.schedule.interval,
                                maintenance=config.maintenance,
                                max_providers=config.aggregator.max_providers_per_model)
        await aggregator.refresh()
        refresher = asyncio.create_task(aggregator.run(), name="aggregator")
        supervisor.watch("aggregator refresh", refresher)

        # Admin endpoints answer only with ROUTEWATCH_ADMIN_TOKEN set (see aggregator/publish/api.py).
        # A reload is applied once the probes run (admin.attach); a router moved to the
        # simulator is rejected when this process did not start one.
        if simulator is not None:
            reload_simulator: str | None = simulator.base_url
        else:
            reload_simulator = None if opts.probes else SIMULATOR_PENDING
        admin = LocalAdmin(config, opts.config_path, series, simulator_url=reload_simulator,
                           aggregator=aggregator)
        prober_health = ProberHealthSlot()  # /metrics reports the prober once it runs (`run` only)
        app = create_app(aggregator, admin=admin, prices=input_prices(config.routers), prober_health=prober_health)
        app[FAILED_COMPONENTS] = supervisor.failures  # /readyz: 503 once a part has died
        api = await start_api(app, sockets)
        api_url = f"http://{opts.host}:{api.addresses[0][1]}"
        example = configured[0][1]
        if opts.probes:
            async def prepare(conn: asyncpg.Connection, results: list[ProbeResult]) -> None:
                await partitions.ensure_for(conn, mode, (r.started_at for r in results))

            writer = BatchWriter(pool, opts.data_dir / "spool", prepare=prepare,
                                 spool_max_bytes=storage.spool_max_mb * 1024 * 1024)
            await writer.start()
            supervisor.watch("batch writer", asyncio.create_task(_writer_alive(writer), name="writer-watch"))
            banner = _banner(opts, routers, db_label, mode, tsdb, len(series), api_url, example, aggregator.role)
            await _probe_until_stopped(config, series, writer, banner, stop, prober_health, admin, supervisor)
        else:
            print(_banner(opts, [], db_label, mode, tsdb, 0, api_url, example, aggregator.role), flush=True)
            await stop.wait()
            print("\nstopping …", flush=True)
        supervisor.closing()
        refresher.cancel()
        maintenance.cancel()
        await api.close()
        if opts.probes:
            await writer.close()
            print(f"stored {writer.written} probe results this run; bye", flush=True)
    finally:
        supervisor.closing()
        if pg_watch is not None:
            pg_watch.cancel()
        await leadership.release()
        await pool.close()
        if simulator is not None:
            await simulator.close()
    for failure in supervisor.failed:
        print(f"routewatch: stopped because {failure.describe()}", file=sys.stderr, flush=True)
    return supervisor.exit_code


async def _writer_alive(writer: BatchWriter) -> None:
    """Ends when the writer's flush task does: raising what it died of, for the supervisor."""
    failed = await writer.wait_failed()
    if failed is not None:
        raise failed


async def _probe_until_stopped(
    config: Config, series: list[Series], writer: BatchWriter, banner: str, stop: asyncio.Event,
    prober_health: ProberHealthSlot | None = None, admin: LocalAdmin | None = None,
    supervisor: Supervisor | None = None,
) -> None:
    """Probe on the schedule until ``stop``, then let probes in flight finish.

    With ``admin``, a config reload replaces the scheduled series from then on;
    with ``supervisor``, the status reporter is watched.
    """
    lag = LoopLagMonitor()
    lag.start()
    async with new_session(config.schedule.concurrency) as session:
        prober = Prober(session, config.timeouts, config.region, config.schedule.concurrency,
                        sink=writer.submit, lag=lag, max_lag_s=config.schedule.max_loop_lag)
        if prober_health is not None:
            prober_health.attach(prober, writer, lag)
        scheduler = AsyncIOScheduler()
        probes = ProbeSchedule(scheduler, prober, series, config.schedule.interval, config.schedule.jitter,
                               random.Random())
        scheduler.start()
        if admin is not None:
            admin.attach(probes)
        # Everything built so far lives for the whole run: keep it out of
        # the collector's full scans, whose pauses would stall the loop
        # (and be flagged as prober lag) in the middle of measurements.
        gc.collect()
        gc.freeze()
        print(banner, flush=True)
        status = asyncio.create_task(_report(prober, writer, lag, stop), name="status")
        if supervisor is not None:
            supervisor.watch("status reporter", status)
        await stop.wait()
        print("\nstopping: finishing probes in flight and storing results …", flush=True)
        if supervisor is not None:
            supervisor.closing()
        status.cancel()
        # A reload may have changed the timeouts; a probe in flight may still run on the old ones.
        await probes.stop(max(config.timeouts.total, prober.timeouts.total) + 1)
    await lag.stop()


async def _report(prober: Prober, writer: BatchWriter, lag: LoopLagMonitor, stop: asyncio.Event) -> None:
    """One status line every STATUS_EVERY_S: is it working?"""
    last = 0
    while not stop.is_set():
        await asyncio.sleep(STATUS_EVERY_S)
        worst = lag.recent_max(STATUS_EVERY_S)
        log.info(
            "probes: %d in the last %.0fs, %d stored in total, %d waiting to be stored, spool %d bytes,"
            " worst loop lag %.1f ms%s",
            prober.completed - last, STATUS_EVERY_S, writer.written, writer.backlog, writer.spool_bytes,
            worst or 0.0, "" if writer.database_ok else "; DATABASE UNAVAILABLE, results kept in the spool",
        )
        last = prober.completed


def _banner(
    opts: RunOptions, routers: list[RouterPlan], db_label: str, mode: str, tsdb: str | None,
    n_series: int, api_url: str, example_model: str, role: str,
) -> str:
    title = "routewatch is running" if opts.probes else "routewatch is serving stats (no probes in this process)"
    lines = ["", title, f"  config:   {opts.config_path}"]
    for r in routers:
        if r.simulated:
            lines.append(f"  router:   {r.name} → built-in router simulator at {r.url}")
            lines.append(f"            (to probe a real router: {ENV_ROUTER_URL}=https://…/v1 and its key in the environment)")
        else:
            key = f", key from ${r.key_env}" if r.key_env else ", no API key"
            lines.append(f"  router:   {r.name} → {r.url}{key}")
    store_mode = f"TimescaleDB {tsdb}" if mode == "timescaledb" else "plain PostgreSQL tables"
    lines.append(f"  database: {db_label} ({store_mode})")
    if opts.probes:
        lines.append(
            f"  probing:  {n_series} series every {opts.config.schedule.interval:g}s "
            f"(jitter {opts.config.schedule.jitter:g}s, at most {opts.config.schedule.concurrency} at once)"
        )
    lines += [
        f"  stats:    {role} (one process refreshes rollups; the others serve what it computed)",
        f"  API:      {api_url}  (OpenAPI document: {api_url}/openapi.json)",
        f"  status:   {api_url}/status",
        f"  metrics:  {api_url}/metrics",
        "",
        "  try:",
        f"    curl {api_url}/v1/models",
        f"    curl '{api_url}/v1/models/{example_model}/stats?window=7d'",
        "",
        "  Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)
