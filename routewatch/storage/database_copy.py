"""Copying a routewatch database into another, of either storage mode (``routewatch db copy``).

The way from plain PostgreSQL to TimescaleDB (or back, or to another
server): the target is migrated in its own mode first, then every table
that holds routewatch's data is copied from one REPEATABLE READ snapshot of
the source, so the raw probes, the rollups made from them, the published
history and the model states agree with one another as they did at one
moment. The source is only read.

Each table is read through a cursor and written in batches of ``batch_rows``,
each batch its own transaction on the target: memory stays bounded whatever
the size, and an interrupted copy leaves whole batches behind. Running it
again is safe and completes it:

- ``probe_results`` is keyed by the probe's UUID (and start time): a probe
  already there is skipped (``ON CONFLICT DO NOTHING``), never doubled. In
  plain mode the target's daily partitions are made as the days come.
- The other tables are upserted by their primary key, the source's row
  winning, and a row already equal is left alone: a rerun brings the rows
  that changed since (the current hour's rollup, a model's state, an
  incident closed, a notification sent) up to date.
- The rollup's bookkeeping is not copied but made again: the source's probes
  that its rollup had not yet taken in when the snapshot was taken are
  logged on the target as a batch of their own, so the target's first
  refresh takes them in, once. Without ``merge`` the target is a copy of
  this source only, so at each run its rollups (``probe_hist_hourly``,
  ``probe_percentiles_hourly``) and the batches still pending in its log are
  replaced by the source's, which keeps a rerun from counting a probe twice.

Not copied, and why (:data:`NOT_COPIED`): ``schema_migrations`` (the
target's own migrations wrote it), ``probe_ingest_log`` and
``probe_hist_changes`` (they hold the source's transaction ids, which mean
nothing on another server), ``shard_members`` and ``shard_leases`` (the
source's live probers; the target's join by themselves), and of
``routewatch_meta`` the storage mode and the pruned-changes mark, which
describe the source database itself. A table this module does not know
stops the copy before anything is written (:class:`CopyError`), so a new
migration cannot be forgotten here silently.

A target holding probes the source does not have (another installation's,
or its own probers', started too early) is refused unless ``merge`` is
given; then nothing of the target is deleted, rows with the same key are
overwritten by the source's, and rollup rows of the same series and hour
are the source's alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from routewatch.results.probe_result import COLUMNS
from routewatch.storage.connection import Conn
from routewatch.storage.hist_queries import HIST_CHANGES_PRUNED_KEY
from routewatch.storage.housekeeping import PartitionCache
from routewatch.storage.migrate import MODE_KEY, migrate, schema_version
from routewatch.storage.tables import (
    BUDGET_PAUSES,
    INCIDENTS,
    META_TABLE,
    MODEL_CATALOG,
    MODEL_STATUS,
    NOTIFICATION_OUTBOX,
    PROBE_COST_DAILY,
    PROBE_HIST_CHANGES,
    PROBE_HIST_HOURLY,
    PROBE_INGEST_LOG,
    PROBE_PERCENTILES_HOURLY,
    PROBE_RESULTS,
    SCHEMA_MIGRATIONS,
    SHARD_LEASES,
    SHARD_MEMBERS,
    STATS_HISTORY,
    UPTIME_DAILY,
)
from routewatch.storage.writer import Rollup, insert_rows

__all__ = ["BATCH_ROWS", "COPIED", "NOT_COPIED", "CopyError", "CopyReport", "Progress", "TableCopy", "copy_database"]

BATCH_ROWS = 2000
# Copied in this order; probe_results through the writer's own insert.
COPIED = (
    META_TABLE,
    PROBE_RESULTS,
    PROBE_HIST_HOURLY,
    PROBE_PERCENTILES_HOURLY,
    STATS_HISTORY,
    MODEL_STATUS,
    INCIDENTS,
    UPTIME_DAILY,
    NOTIFICATION_OUTBOX,
    MODEL_CATALOG,
    PROBE_COST_DAILY,
    BUDGET_PAUSES,
)
NOT_COPIED = {
    SCHEMA_MIGRATIONS: "written by the target's own migrations",
    PROBE_INGEST_LOG: "the source's transaction ids; its probes not yet rolled up are logged anew on the target",
    PROBE_HIST_CHANGES: "the source's transaction ids; the target's triggers note the hours copied",
    SHARD_MEMBERS: "the source's live probers; the target's join by themselves",
    SHARD_LEASES: "the source's live probers; the target's join by themselves",
}
# Rebuilt from the source at each run unless merging (see the module's docstring).
REPLACED = (PROBE_HIST_HOURLY, PROBE_PERCENTILES_HOURLY)
# routewatch_meta keys that describe the source database, not its data.
META_KEPT_APART = (MODE_KEY, HIST_CHANGES_PRUNED_KEY)
# How many of the target's probes are looked up in the source at once.
LOOKUP_ROWS = 10_000

# (table, rows read so far, rows written so far, done)
Progress = Callable[[str, int, int, bool], None]


class CopyError(Exception):
    """The copy cannot start (or go on); the message says why and what to do."""


@dataclass
class TableCopy:
    """One table's figures: rows in the source's snapshot, written to the target, in the target after."""

    table: str
    source: int
    written: int = 0
    target: int = 0


@dataclass(frozen=True)
class CopyReport:
    """What :func:`copy_database` did."""

    mode: str  # the target's storage mode
    version: int  # the schema version of both
    tables: list[TableCopy]
    pending_rollup: int  # probes the source had not rolled up, logged on the target for its rollup


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    where: str  # a filter on the rows copied and counted ("TRUE": all)


async def copy_database(
    source: Conn,
    target: Conn,
    *,
    mode: str | None = None,
    merge: bool = False,
    batch_rows: int = BATCH_ROWS,
    progress: Progress | None = None,
) -> CopyReport:
    """Migrate ``target`` (in ``mode``, default the server's) and copy ``source`` into it (module docstring).

    :raises CopyError: the two are one database, their schemas differ, the
        source has a table this copy does not know, or the target holds probes
        the source does not have (without ``merge``).
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    report = await _prepare_target(source, target, mode)
    tell = progress or (lambda *_: None)
    async with source.transaction(isolation="repeatable_read", readonly=True):
        await _check_source(source, report.version)
        tables = [await _describe(target, name) for name in COPIED]
        if not merge:
            await _refuse_foreign_probes(source, target)
            await _forget_earlier_runs(target)
        pending = await _pending_probes(source)
        copies = []
        for table in tables:
            count = await source.fetchval(f"SELECT count(*) FROM {table.name} WHERE {table.where}", *_args(table))
            done = TableCopy(table.name, int(count))
            if table.name == PROBE_RESULTS:
                done.written = await _copy_probes(source, target, report.mode, pending, batch_rows, tell)
            else:
                done.written = await _copy_upserting(source, target, table, batch_rows, tell, merge=merge)
            copies.append(done)
        pending_rollup = len(pending)
    for table, done in zip(tables, copies, strict=True):
        done.target = int(
            await target.fetchval(f"SELECT count(*) FROM {table.name} WHERE {table.where}", *_args(table))
        )
    return CopyReport(report.mode, report.version, copies, pending_rollup)


async def _prepare_target(source: Conn, target: Conn, mode: str | None) -> _Migrated:
    same = "SELECT current_database(), pg_postmaster_start_time(), inet_server_port()"
    if tuple(await source.fetchrow(same) or ()) == tuple(await target.fetchrow(same) or ()):
        raise CopyError("the target is the source database itself: give the URL of another database")
    migrated = await migrate(target, mode=mode)
    if mode is not None and migrated.mode != mode:
        raise CopyError(
            f"the target database was set up in {migrated.mode} mode before, not {mode}:"
            " copy into a new, empty database"
        )
    return _Migrated(migrated.mode, migrated.version)


@dataclass(frozen=True)
class _Migrated:
    mode: str
    version: int


async def _check_source(source: Conn, version: int) -> None:
    have = await schema_version(source)
    if have < version:
        raise CopyError(
            f"the source database is at schema version {have}, this routewatch at {version}:"
            " run `routewatch db migrate` on the source first (it keeps the data)"
        )
    if have > version:
        raise CopyError(
            f"the source database is at schema version {have}, newer than this routewatch ({version}):"
            " upgrade routewatch"
        )
    names = {r["relname"] for r in await source.fetch(_TABLES)}
    unknown = sorted(names - set(COPIED) - set(NOT_COPIED))
    if unknown:
        raise CopyError(f"the source has tables this copy does not know: {', '.join(unknown)}; nothing was copied")


async def _describe(target: Conn, name: str) -> _Table:
    columns = tuple(r["attname"] for r in await target.fetch(_COLUMNS, name))
    key = tuple(r["attname"] for r in await target.fetch(_KEY, name))
    if not key:
        raise CopyError(f"{name} has no primary key in the target: it cannot be copied idempotently")
    where = "key <> ALL($1::text[])" if name == META_TABLE else "TRUE"
    return _Table(name, columns, key, where)


def _args(table: _Table) -> tuple[object, ...]:
    return (list(META_KEPT_APART),) if table.name == META_TABLE else ()


async def _refuse_foreign_probes(source: Conn, target: Conn) -> None:
    """CopyError when the target holds a probe the source does not (checked in batches, both snapshots),
    or holds routewatch data but no probe at all (an installation whose raw probes are gone)."""
    async with target.transaction(isolation="repeatable_read", readonly=True):
        if not await target.fetchval(f"SELECT EXISTS (SELECT 1 FROM {PROBE_RESULTS})"):
            for name in COPIED:
                if name not in (META_TABLE, PROBE_RESULTS) and await target.fetchval(
                    f"SELECT EXISTS (SELECT 1 FROM {name})"
                ):
                    raise CopyError(
                        f"the target database holds {name} rows but no probes: it is not an earlier copy of this"
                        " source; copy into a new, empty database, or pass --merge to add the source's rows to it"
                    )
            return
        cursor = await target.cursor(f"SELECT id, started_at FROM {PROBE_RESULTS}")
        while rows := await cursor.fetch(LOOKUP_ROWS):
            ids, starts = [r["id"] for r in rows], [r["started_at"] for r in rows]
            found = await source.fetchval(_FOUND_IN_SOURCE, ids, starts)
            if found < len(rows):
                raise CopyError(
                    "the target database already holds probes that are not in the source (another installation's,"
                    " or its own probers'): copy into a new, empty database, or pass --merge to add the source's"
                    " rows to them"
                )


async def _forget_earlier_runs(target: Conn) -> None:
    """Drop what an earlier run left that this run copies again: the rollups, and its batches still pending."""
    async with target.transaction():
        for name in REPLACED:
            await target.execute(f"DELETE FROM {name}")
        await target.execute(f"DELETE FROM {PROBE_INGEST_LOG} WHERE NOT hist_done")


async def _pending_probes(source: Conn) -> set[tuple[object, object]]:
    """(id, started_at) of the probes whose batch the source's rollup has not taken in yet.

    Found as the rollup finds them: by the writing transaction, within each
    batch's time range (a compressed TimescaleDB chunk cannot show ``xmin``,
    and a pending batch is recent, so its range never reaches one). Held in
    memory: a few seconds' probes normally, more after a long leader outage.
    """
    found: set[tuple[object, object]] = set()
    for batch in await source.fetch(_PENDING_BATCHES):
        rows = await source.fetch(_BATCH_KEYS, batch["first_started"], batch["last_started"], batch["xmin"])
        found.update((r["id"], r["started_at"]) for r in rows)
    return found


async def _copy_probes(
    source: Conn, target: Conn, mode: str, pending: set[tuple[object, object]], batch_rows: int, tell: Progress
) -> int:
    """The raw probes: those the source has rolled up without a log, the others logged for the target's rollup."""
    partitions = PartitionCache()
    read = written = 0
    cursor = await source.cursor(_PROBES)
    while rows := await cursor.fetch(batch_rows):
        await partitions.ensure_for(target, mode, (r["started_at"] for r in rows))
        rolled = [tuple(r) for r in rows if (r["id"], r["started_at"]) not in pending]
        waiting = [tuple(r) for r in rows if (r["id"], r["started_at"]) in pending]
        # One transaction each: the writer's staging table is emptied at commit, and the rollup
        # finds a logged batch's rows by the transaction that wrote them.
        parts: tuple[tuple[list[tuple[object, ...]], Rollup], ...] = ((rolled, "none"), (waiting, "all"))
        for part, rollup in parts:
            if part:
                async with target.transaction():
                    written += await insert_rows(target, part, rollup=rollup)
        read += len(rows)
        tell(PROBE_RESULTS, read, written, False)
    tell(PROBE_RESULTS, read, written, True)
    return written


async def _copy_upserting(
    source: Conn, target: Conn, table: _Table, batch_rows: int, tell: Progress, *, merge: bool
) -> int:
    """Every row of ``table``, upserted by its key (the source's row wins); returns rows inserted or changed."""
    cols = ", ".join(f'"{c}"' for c in table.columns)
    staging = f"copy_staging_{table.name}"
    values = [c for c in table.columns if c not in table.key]
    if values:
        mine = ", ".join(f'{table.name}."{c}"' for c in values)
        theirs = ", ".join(f'EXCLUDED."{c}"' for c in values)
        sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in values)
        keys = ", ".join(f'"{c}"' for c in table.key)
        conflict = f"ON CONFLICT ({keys}) DO UPDATE SET {sets} WHERE ROW({mine}) IS DISTINCT FROM ROW({theirs})"
    else:
        conflict = "ON CONFLICT DO NOTHING"
    upsert = f"INSERT INTO {table.name} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {staging} {conflict}"
    read = written = 0
    cursor = await source.cursor(f"SELECT {cols} FROM {table.name} WHERE {table.where}", *_args(table))
    while rows := await cursor.fetch(batch_rows):
        async with target.transaction():
            await target.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table.name} INCLUDING DEFAULTS)"
                " ON COMMIT DELETE ROWS"
            )
            await target.copy_records_to_table(staging, records=[tuple(r) for r in rows], columns=table.columns)
            written += int((await target.execute(upsert)).split()[-1])
        read += len(rows)
        tell(table.name, read, written, False)
    await _advance_sequences(target, table)
    tell(table.name, read, written, True)
    return written


async def _advance_sequences(target: Conn, table: _Table) -> None:
    """Move the table's id sequences (identity or serial) past the ids copied, so new rows do not collide."""
    for column in table.key:
        sequence = await target.fetchval("SELECT pg_get_serial_sequence($1, $2)", table.name, column)
        if sequence is not None:
            await target.execute(
                f'SELECT setval($1, m) FROM (SELECT max("{column}") AS m FROM {table.name}) AS copied'
                f" WHERE m > (SELECT last_value FROM {sequence})",
                sequence,
            )


_PENDING_BATCHES = (
    f"SELECT first_started, last_started, xid::text::bigint % 4294967296 AS xmin FROM {PROBE_INGEST_LOG}"
    " WHERE NOT hist_done"
)
_BATCH_KEYS = (
    f"SELECT id, started_at FROM {PROBE_RESULTS}"
    " WHERE started_at >= $1 AND started_at <= $2 AND xmin::text::bigint = $3"
)
_PROBES = f"SELECT {', '.join(COLUMNS)} FROM {PROBE_RESULTS}"
_FOUND_IN_SOURCE = (
    f"SELECT count(*) FROM {PROBE_RESULTS} p"
    " JOIN unnest($1::uuid[], $2::timestamptz[]) AS k(id, started_at) USING (id, started_at)"
)
# Ordinary and partitioned tables of the public schema (a plain-mode partition counts as its parent).
_TABLES = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
)
_COLUMNS = (
    "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
)
_KEY = (
    "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
    " WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)"
)
