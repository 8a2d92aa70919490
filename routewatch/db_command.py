"""``routewatch db migrate`` (or its ``--dry-run``), ``routewatch db status`` and ``routewatch db copy``.

All reach the same database ``routewatch run`` uses: ``ROUTEWATCH_DATABASE_URL``,
or the embedded server in the data directory (the running one, if
``routewatch run`` has it up, else started just for this command). ``copy``
copies it into the database at ``--to`` (``storage/database_copy.py``),
printing its progress and, at the end, each table's rows in both; the
target's password is never printed.
"""

from __future__ import annotations

import asyncio
import fcntl
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from routewatch.config.settings import ENV_DATABASE_READ_URL, Settings
from routewatch.delivery.spool import Spool
from routewatch.delivery.spooled import read_cursor
from routewatch.parts import embedded_postgres
from routewatch.postgres.local_server import LocalPostgres
from routewatch.probe.redact import redact, redact_dsn
from routewatch.storage.connection import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S, Conn
from routewatch.storage.database_copy import BATCH_ROWS, NOT_COPIED, CopyError, CopyReport, copy_database
from routewatch.storage.describe import db_status, format_status
from routewatch.storage.errors import DATABASE_ERRORS
from routewatch.storage.migrate import PendingReport, migrate, pending_migrations
from routewatch.storage.replication import describe_lag, describe_standbys, replica_lag, standbys
from routewatch.storage.session_name import session_settings
from routewatch.supervision import dsn_secrets

_T = TypeVar("_T")
PROGRESS_EVERY_S = 2.0  # at most one progress line per table this often


@dataclass(frozen=True)
class CopyOptions:
    """``routewatch db copy``: where to, in which mode, and how."""

    to: str  # the target's URL: never printed as given
    mode: str | None = None  # the target's storage mode; None: the target server's default
    merge: bool = False  # copy into a target that holds probes the source lacks
    batch_rows: int = BATCH_ROWS


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


def _with_database(data_dir: Path, settings: Settings, work: Callable[[str], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``work`` with the configured database's URL (its embedded server started meanwhile if need be)."""
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
        return asyncio.run(work(url))
    finally:
        if server is not None:
            server.stop()


async def _run(url: str, *, action: str, data_dir: Path, read_url: str | None = None) -> str:
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


async def _copy(opts: CopyOptions, source_url: str) -> CopyReport:
    secrets = [*dsn_secrets(source_url), *dsn_secrets(opts.to)]
    print(f"copying {redact_dsn(source_url)} to {redact_dsn(opts.to)}", flush=True)
    source = target = None
    try:
        # No query time limit: copying a large table batch by batch may take long.
        source = await _connect_for_copy(source_url)
        target = await _connect_for_copy(opts.to)
        progress = _ProgressLines()
        report = await copy_database(
            source, target, mode=opts.mode, merge=opts.merge, batch_rows=opts.batch_rows, progress=progress
        )
    except CopyError as exc:
        raise CopyFailed(redact(str(exc), secrets)) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        where = "the target" if source is not None and target is None else "the source" if source is None else "copying"
        raise CopyFailed(redact(f"{where}: {exc.__class__.__name__}: {exc}", secrets)) from None
    finally:
        for conn in (source, target):
            if conn is not None:
                await conn.close()
    return report


async def _connect_for_copy(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S, server_settings=session_settings(url, "db copy"))


class CopyFailed(Exception):
    """``db copy`` stopped; the message (secrets masked) says why. Batches written before stay."""


class _ProgressLines:
    """Prints a table's progress at most every PROGRESS_EVERY_S, and when it is done."""

    def __init__(self) -> None:
        self._last = 0.0
        self._started: dict[str, float] = {}

    def __call__(self, table: str, read: int, written: int, done: bool) -> None:
        now = time.monotonic()
        started = self._started.setdefault(table, now)
        if done or now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            state = f"done in {now - started:.1f} s" if done else "…"
            print(f"  {table}: {read:,} rows read, {written:,} written {state}", flush=True)


def format_copy(report: CopyReport) -> str:
    """The final comparison: each table's rows in the source's snapshot and in the target now."""
    width = max(len(t.table) for t in report.tables)
    lines = [
        f"target: {report.mode} mode, schema version {report.version}",
        f"{'table':<{width}}  {'source':>12}  {'target':>12}",
    ]
    for t in report.tables:
        verdict = "equal" if t.target == t.source else f"{t.target - t.source:+,} in the target"
        lines.append(f"{t.table:<{width}}  {t.source:>12,}  {t.target:>12,}  {verdict}")
    lines.append(
        f"{report.pending_rollup:,} probes the source had not rolled up yet are logged for the target's rollup"
    )
    lines.append("not copied: " + "; ".join(f"{name} ({why})" for name, why in NOT_COPIED.items()))
    return "\n".join(lines)


def format_pending(report: PendingReport) -> str:
    """The ``db migrate --dry-run`` text: mode, current version, what would be applied."""
    how = "recorded" if report.mode_recorded else "not recorded yet: the first migrate would choose it"
    pending = ", ".join(report.pending) if report.pending else "nothing to apply"
    return (
        f"storage mode: {report.mode} ({how})\nschema version: {report.version}\n"
        f"would apply: {pending}\ndry run: nothing was changed"
    )


def db_main(
    action: str, data_dir: Path, settings: Settings, *, dry_run: bool = False, copy: CopyOptions | None = None
) -> int:
    """Print the result of ``action``; 0 on success. ``dry_run`` only lists what ``migrate`` would apply;
    ``copy`` is what ``db copy`` needs (1 when a table of the target ends with fewer rows than the source's)."""
    if dry_run and action != "migrate":
        print(f"--dry-run applies to `db migrate` only, not `db {action}`", file=sys.stderr)
        return 2
    if (action == "copy") != (copy is not None):
        print("`db copy` needs --to URL, and --to is for `db copy` only", file=sys.stderr)
        return 2
    if copy is not None:
        try:
            report = _with_database(data_dir, settings, partial(_copy, copy))
        except CopyFailed as exc:
            print(f"routewatch db copy: {exc}", file=sys.stderr)
            return 1
        print(format_copy(report))
        short = [t.table for t in report.tables if t.target < t.source]
        if short:
            print(
                f"routewatch db copy: the target has fewer rows than the source in {', '.join(short)}", file=sys.stderr
            )
            return 1
        return 0
    what = "dry-run" if dry_run else action
    run = partial(_run, action=what, data_dir=data_dir, read_url=settings.database_read_dsn())
    print(_with_database(data_dir, settings, run))
    return 0
