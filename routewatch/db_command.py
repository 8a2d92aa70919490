"""``routewatch db migrate`` (or its ``--dry-run``) and ``routewatch db status``.

Both reach the same database ``routewatch run`` uses: ``ROUTEWATCH_DATABASE_URL``,
or the embedded server in the data directory (the running one, if
``routewatch run`` has it up, else started just for this command).
"""

from __future__ import annotations

import asyncio
import fcntl
import sys
from pathlib import Path

import asyncpg

from routewatch.config.settings import ENV_DATABASE_READ_URL, Settings
from routewatch.delivery.spool import Spool
from routewatch.delivery.spooled import read_cursor
from routewatch.parts import embedded_postgres
from routewatch.postgres.local_server import LocalPostgres
from routewatch.probe.redact import redact_dsn
from routewatch.storage.connection import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S, Conn
from routewatch.storage.describe import db_status, format_status
from routewatch.storage.errors import DATABASE_ERRORS
from routewatch.storage.migrate import PendingReport, migrate, pending_migrations
from routewatch.storage.replication import describe_lag, describe_standbys, replica_lag, standbys
from routewatch.storage.session_name import session_settings


def spool_backlog(spool_dir: Path) -> str:
    """One line about the local spool: records not yet confirmed stored, or its size while in use."""
    segments = sorted(spool_dir.glob("*.spool")) if spool_dir.is_dir() else []
    size = sum(p.stat().st_size for p in segments)
    if not segments:
        return "empty"
    with open(spool_dir / "lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Opening the spool would recover its tail under a live writer.
            return f"{size:,} bytes in {len(segments)} segment(s), in use by a running routewatch"
        with Spool(spool_dir) as spool:
            pending = spool.pending_records(read_cursor(spool_dir))
    if not pending:
        return f"nothing waiting ({size:,} bytes of stored results not yet reclaimed)"
    return f"{pending:,} results waiting to be stored ({size:,} bytes); the next `routewatch run` stores them"


def spool_backlogs(data_dir: Path) -> str:
    """:func:`spool_backlog` of every spool in ``data_dir`` (one per prober worker of `run`), by name."""
    spools = sorted(d for d in data_dir.glob("spool*") if d.is_dir()) if data_dir.is_dir() else []
    found = [(d.name, spool_backlog(d)) for d in spools]
    found = [(name, text) for name, text in found if text != "empty"]
    return "; ".join(f"{name}: {text}" for name, text in found) or "empty"


def _with_database(data_dir: Path, action: str, settings: Settings) -> str:
    """Run ``action`` ("migrate", "dry-run" or "status") against the configured database; return its text."""
    url = settings.database_dsn()
    server: LocalPostgres | None = None
    if not url:
        local = embedded_postgres(data_dir, settings)
        url = local.running_dsn()
        if url is None:
            server = local
            server.start()
            url = server.dsn
    try:
        return asyncio.run(_run(url, action, data_dir, settings.database_read_dsn()))
    finally:
        if server is not None:
            server.stop()


async def _run(url: str, action: str, data_dir: Path, read_url: str | None = None) -> str:
    # A migration may rewrite a large table for longer than any query should take: no limit for it.
    limit = None if action == "migrate" else COMMAND_TIMEOUT_S
    conn = await asyncpg.connect(
        url, timeout=CONNECT_TIMEOUT_S, command_timeout=limit, server_settings=session_settings(url, f"db {action}")
    )
    try:
        if action == "migrate":
            report = await migrate(conn)
            done = ", ".join(report.applied) if report.applied else "nothing to apply"
            tsdb = f" (TimescaleDB {report.timescaledb_version})" if report.timescaledb_version else ""
            return f"storage mode: {report.mode}{tsdb}\nschema version: {report.version}\napplied: {done}"
        if action == "dry-run":
            return format_pending(await pending_migrations(conn))
        status = format_status(await db_status(conn), spool_backlogs(data_dir))
        return "\n".join([status, *await replication_lines(conn, read_url)])
    finally:
        await conn.close()


async def replication_lines(conn: Conn, read_url: str | None) -> list[str]:
    """``db status``'s lines about replication: what the server on ``conn`` is (a primary with its
    standbys and their sync state, or a replica and its lag), and the read replica's lag when one is set."""
    lag = await replica_lag(conn)
    if lag.in_recovery:
        lines = [f"replication:     {describe_lag(lag)}"]
    else:
        lines = [f"replication:     a primary; standbys: {describe_standbys(await standbys(conn))}"]
    if read_url is not None:
        where = f"{redact_dsn(read_url)} (from {ENV_DATABASE_READ_URL})"
        try:
            replica = await asyncpg.connect(read_url, timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S)
        except DATABASE_ERRORS as exc:
            # The class only: the error's text may hold the URL.
            lines.append(f"read replica:    {where}: cannot be reached ({exc.__class__.__name__})")
            return lines
        try:
            lines.append(f"read replica:    {where}: {describe_lag(await replica_lag(replica))}")
        finally:
            await replica.close()
    return lines


def format_pending(report: PendingReport) -> str:
    """The ``db migrate --dry-run`` text: mode, current version, what would be applied."""
    how = "recorded" if report.mode_recorded else "not recorded yet: the first migrate would choose it"
    pending = ", ".join(report.pending) if report.pending else "nothing to apply"
    return (
        f"storage mode: {report.mode} ({how})\nschema version: {report.version}\n"
        f"would apply: {pending}\ndry run: nothing was changed"
    )


def db_main(action: str, data_dir: Path, settings: Settings, *, dry_run: bool = False) -> int:
    """Print the result of ``action``; 0 on success. ``dry_run`` only lists what ``migrate`` would apply."""
    if dry_run and action != "migrate":
        print(f"--dry-run applies to `db migrate` only, not `db {action}`", file=sys.stderr)
        return 2
    print(_with_database(data_dir, "dry-run" if dry_run else action, settings))
    return 0
