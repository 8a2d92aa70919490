"""The ``routewatch`` command: run, serve, probe, once, check-config, db, alerts, simulate."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from routewatch.aggregator.publish.server import PortInUse
from routewatch.config import Config, ConfigError, check_config_main, load_config
from routewatch.config.dialects import DIALECTS
from routewatch.config.settings import ENV_API_PORT, ENV_CONFIG, ENV_DATA_DIR, Settings, SettingsError, load_settings
from routewatch.parts import DatabaseUnavailable
from routewatch.postgres.local_server import LocalPostgresError, default_data_dir
from routewatch.probe.scheduler import SkippedSlotWarnings
from routewatch.probe.targets import TargetError
from routewatch.prober_workers import WorkerFailed
from routewatch.runner import DataDirInUse
from routewatch.storage.database_copy import BATCH_ROWS
from routewatch.storage.migrate import MigrationError
from routewatch.storage.shard_leases import SHARDS
from routewatch.storage.writer import SpoolInUse

_PACKAGED_CONFIG = Path(__file__).with_name("default_probes.yaml")


def _config_path(arg: str | None, settings: Settings) -> str:
    """--config, else $ROUTEWATCH_CONFIG, else ./probes.yaml, else the packaged example."""
    if arg:
        return arg
    if settings.config:
        return settings.config
    if Path("probes.yaml").is_file():
        return "probes.yaml"
    return str(_PACKAGED_CONFIG)


def _port_number(text: str) -> int:
    """A TCP port, 0-65535 (0: any free port); ValueError naming what is wrong."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r} is not a port number (0-65535)")
    return port


def _cli_port(text: str) -> int:
    try:
        return _port_number(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _workers(text: str) -> int:
    """--workers: 1 to SHARDS prober processes (more would hold no shard)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= SHARDS:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of prober processes from 1 to {SHARDS}")
    return count


def _batch_rows(text: str) -> int:
    try:
        rows = int(text)
    except ValueError:
        rows = 0
    if not 1 <= rows <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of rows from 1 to 1000000")
    return rows


def _fd(text: str) -> int:
    try:
        fd = int(text)
    except ValueError:
        fd = -1
    if fd < 3:
        raise argparse.ArgumentTypeError(f"{text!r} is not an inherited file descriptor (3 or more)")
    return fd


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0))


def _api_port(arg: int | None, config: Config, settings: Settings) -> int:
    """--port, else $ROUTEWATCH_API_PORT, else api.port in the config."""
    if arg is not None:
        return arg
    if settings.api_port is not None:
        return settings.api_port
    return config.api.port


def _data_dir(arg: Path | None, settings: Settings) -> Path:
    """--data-dir, else $ROUTEWATCH_DATA_DIR, else the default for this user."""
    return arg or settings.data_dir or default_data_dir(settings.xdg_data_home)


def _load(path: str, settings: Settings) -> Config:
    """The configuration file, its region replaced by ``ROUTEWATCH_REGION`` when that is set."""
    try:
        return load_config(path, settings.region)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None


class _OneLine(logging.Filter):
    """A logged exception as one line instead of a traceback.

    asyncpg's pool logs a whole traceback each time it fails to reconnect
    while the database is down; the exception's class and message say it.
    ``--verbose`` keeps the traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            record.msg = f"{record.getMessage()} ({exc.__class__.__name__}: {exc})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routewatch", description="Latency and reliability monitor for LLM routers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run probes, storage, aggregator and API (the main job)")
    run.add_argument(
        "--config", help=f"probes.yaml to use (default: ${ENV_CONFIG}, ./probes.yaml, the packaged example)"
    )
    data_dir = default_data_dir(settings.xdg_data_home)
    run.add_argument(
        "--data-dir", type=Path, help=f"where the embedded PostgreSQL lives (default: ${ENV_DATA_DIR} or {data_dir})"
    )
    run.add_argument("--host", help="API listen address (default: api.host in the config)")
    run.add_argument(
        "--port",
        type=_cli_port,
        help=f"API port (default: ${ENV_API_PORT}, else api.port in the config; 0 picks a free one)",
    )
    cores = usable_cores()
    run.add_argument(
        "--workers",
        type=_workers,
        default=cores,
        help="prober processes to run, each `routewatch probe` on its own core, sharing the series through"
        f" shard leases (default: the usable cores, {cores} here)",
    )

    serve = sub.add_parser("serve", help="aggregator and API only, no probes (a standby or extra API replica)")
    serve.add_argument("--config", help="as for run")
    serve.add_argument("--data-dir", type=Path, help="as for run")
    serve.add_argument("--host", help="as for run")
    serve.add_argument("--port", type=_cli_port, help="as for run")

    probe = sub.add_parser(
        "probe",
        help="probe and store only, sharing the region's series with every other `routewatch probe` on the database",
    )
    probe.add_argument("--config", help="as for run")
    probe.add_argument(
        "--data-dir",
        type=Path,
        help="where the spool lives, and the embedded PostgreSQL another routewatch runs (without "
        f"ROUTEWATCH_DATABASE_URL); default: ${ENV_DATA_DIR} or {data_dir}",
    )
    probe.add_argument(
        "--simulator-url",
        help="where routers whose base_url is `simulator` are served: a router simulator another process runs"
        " (e.g. http://127.0.0.1:8400/v1); ROUTEWATCH_ROUTER_URL, a real router, takes precedence",
    )
    probe.add_argument(
        "--spool-dir",
        type=Path,
        help="this process's own spool, one per process (default: spool-probe in the data directory)",
    )
    probe.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of this process's /metrics (default: 127.0.0.1)"
    )
    probe.add_argument(
        "--metrics-port",
        type=_cli_port,
        default=0,
        help="port of this process's /metrics (default 0: any free port; the banner says which)",
    )
    # Set by `routewatch run` for its prober workers.
    probe.add_argument("--worker", type=_workers, help=argparse.SUPPRESS)
    probe.add_argument("--ready-fd", type=_fd, help=argparse.SUPPRESS)

    once = sub.add_parser("once", help="probe every configured model once and print a table (stores nothing)")
    once.add_argument("--config", help="probes.yaml to use")

    check = sub.add_parser("check-config", help="validate a probes.yaml and summarise its cost")
    check.add_argument("path", nargs="?", help="the file (default: as for run)")

    db = sub.add_parser("db", help="database schema and state")
    db.add_argument(
        "action",
        choices=["migrate", "status", "copy"],
        help="migrate: apply pending schema migrations; status: mode, size, rows, spool backlog;"
        " copy: copy every routewatch table into the database at --to, migrated first (safe to run again)",
    )
    db.add_argument("--data-dir", type=Path, help="as for run")
    db.add_argument(
        "--dry-run", action="store_true", help="with migrate: list the pending migrations and change nothing"
    )
    db.add_argument(
        "--to",
        metavar="URL",
        help="with copy: the target database's postgresql:// URL (its password may come from PGPASSWORD instead)",
    )
    db.add_argument(
        "--target-mode",
        choices=["timescaledb", "plain"],
        help="with copy: the target's storage mode (default: TimescaleDB where the target server has it)",
    )
    db.add_argument(
        "--merge",
        action="store_true",
        help="with copy: add to a target that already holds probes the source does not have",
    )
    db.add_argument(
        "--batch-rows", type=_batch_rows, default=BATCH_ROWS, help=f"with copy: rows per batch (default {BATCH_ROWS})"
    )

    grafana = sub.add_parser("grafana", help="publish dashboards, data sources and alert rules to Grafana")
    grafana.add_argument("action", choices=["publish"], help="publish: upsert them (idempotent)")
    grafana.add_argument("--url", required=True, help="Grafana's base URL; token from $ROUTEWATCH_GRAFANA_TOKEN")
    grafana.add_argument("--diff", action="store_true", help="show what would change, change nothing")
    grafana.add_argument("--dashboards", type=Path, default=Path("dashboards"), help="default: ./dashboards")
    grafana.add_argument(
        "--alerting",
        type=Path,
        default=Path("deploy/grafana/provisioning/alerting"),
        help="Grafana alert provisioning files; default: ./deploy/grafana/provisioning/alerting",
    )
    grafana.add_argument("--prometheus-url", default="http://localhost:9090", help="as Grafana reaches Prometheus")
    grafana.add_argument("--timescaledb", action="store_true", help="the database runs TimescaleDB")

    alerts = sub.add_parser("alerts", help="Prometheus alert rules, their promtool tests, Grafana alert provisioning")
    alerts.add_argument("action", choices=["render"], help="render: write the files for a probes.yaml")
    alerts.add_argument("--config", help="as for run")
    alerts.add_argument("--out", type=Path, required=True, help="directory to write prometheus/ and grafana/ under")
    alerts.add_argument(
        "--grafana-url", default="http://localhost:3000", help="Grafana's address, for the dashboard links"
    )
    alerts.add_argument("--job", default="routewatch", help="Prometheus's scrape job for routewatch")
    alerts.add_argument(
        "--region",
        action="append",
        dest="regions",
        default=[],
        help="a region whose probers this Prometheus scrapes (repeat for each); default the configuration's",
    )

    sim = sub.add_parser("simulate", help="run the router simulator on its own")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8400)
    sim.add_argument("--profiles", type=Path, help="YAML file of model profiles (default: the built-in ones)")
    sim.add_argument(
        "--dialect",
        choices=[d for d in DIALECTS if d != "auto"],
        help="the router dialect every model is served in, over each profile's own (default: the profiles')",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: the settings are read from the environment here, once."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"routewatch: {exc}", file=sys.stderr)
        return 1
    args = _parser(settings).parse_args(argv)
    # A prober worker's lines are interleaved with run's: each says whose it is.
    worker = f"worker-{args.worker} " if args.command == "probe" and args.worker else ""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s {worker}%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("apscheduler", "aiohttp.access"):  # a line per probe otherwise
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # A slow probe's skipped slots are counted in /metrics, not warned about one line each.
        logging.getLogger("apscheduler.scheduler").addFilter(SkippedSlotWarnings())
        logging.getLogger("asyncpg.pool").addFilter(_OneLine())
    try:
        if args.command == "check-config":
            return check_config_main(_config_path(args.path, settings))
        if args.command == "simulate":
            from routewatch.simulator import DEFAULT_PROFILES, load_profiles, run_simulator_forever

            profiles = load_profiles(args.profiles) if args.profiles else DEFAULT_PROFILES
            if args.dialect:
                profiles = tuple(dataclasses.replace(p, dialect=args.dialect) for p in profiles)
            run_simulator_forever(args.host, args.port, profiles)
            return 0
        if args.command == "db":
            from routewatch.db_command import CopyOptions, db_main

            copy = None
            if args.to is not None:
                copy = CopyOptions(args.to, args.target_mode, args.merge, args.batch_rows)
            elif args.target_mode or args.merge:
                print("--target-mode and --merge are for `db copy --to URL`", file=sys.stderr)
                return 2
            data_dir = _data_dir(args.data_dir, settings)
            return db_main(args.action, data_dir, settings, dry_run=args.dry_run, copy=copy)
        if args.command == "grafana":
            from routewatch.grafana_command import PublishOptions, grafana_main

            options = [args.url, args.diff, args.dashboards, args.alerting, args.prometheus_url, args.timescaledb]
            return grafana_main(PublishOptions(*options), settings)
        path = _config_path(args.config, settings)
        config = _load(path, settings)
        if args.command == "alerts":
            from routewatch.alerts_command import render_alerts

            return render_alerts(config, args.out, args.grafana_url, args.job, tuple(args.regions))
        if args.command == "once":
            from routewatch.once import once

            return once(config, settings)
        if args.command == "probe":
            from routewatch.probe_command import ProbeOptions, probe_main

            data_dir = _data_dir(args.data_dir, settings)
            spool_dir = args.spool_dir or data_dir / "spool-probe"
            opts = ProbeOptions(
                config,
                path,
                data_dir,
                spool_dir,
                args.simulator_url,
                metrics_host=args.metrics_host,
                metrics_port=args.metrics_port,
                worker=args.worker,
                ready_fd=args.ready_fd,
            )
            return probe_main(opts, settings)
        from routewatch.runner import RunOptions, run

        return run(
            RunOptions(
                config=config,
                config_path=path,
                data_dir=_data_dir(args.data_dir, settings),
                host=args.host or config.api.host,
                port=_api_port(args.port, config, settings),
                probes=args.command == "run",
                workers=args.workers if args.command == "run" else 0,
            ),
            settings,
        )
    except (
        TargetError,
        LocalPostgresError,
        SpoolInUse,
        MigrationError,
        DatabaseUnavailable,
        ValueError,
        PortInUse,
        DataDirInUse,
        WorkerFailed,
    ) as exc:
        print(f"routewatch: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the API address is not on this machine
        print(f"routewatch: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
