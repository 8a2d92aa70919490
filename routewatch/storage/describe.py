"""What the store holds: the figures behind ``routewatch db status``.

Read-only and cheap enough to run against a production database: sizes come
from catalog functions, and the row count is exact only while it is small.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from routewatch.storage.connection import Conn
from routewatch.storage.migrate import recorded_mode, schema_version, timescaledb_version
from routewatch.storage.outbox_queries import OutboxCounts, outbox_counts
from routewatch.storage.processes import Processes, process_lines, processes
from routewatch.storage.tables import NOTIFICATION_OUTBOX, PROBE_PERCENTILES_HOURLY, PROBE_RESULTS, SHARD_LEASES

# Above this many rows (by the planner's estimate) the status shows the
# estimate instead of running count(*), which reads the whole table: 90 days
# of 1,000 series at one probe a minute is ~130M rows.
EXACT_COUNT_LIMIT = 1_000_000

_PLAIN_ESTIMATE = f"""
SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint
FROM pg_partition_tree('{PROBE_RESULTS}') t
JOIN pg_class c ON c.oid = t.relid
WHERE t.isleaf
"""

# Per chunk: the rows in its own heap (planner statistics, as in plain mode) plus the rows TimescaleDB
# recorded when it compressed the chunk. approximate_row_count() guesses the latter from statistics of
# the batch sizes instead: a compressed chunk counts 0 until it is analysed, and with few batches per
# chunk the guess can miss by a third of the chunk (two equal batch sizes and one other: the other is
# dropped). The record is exact for routewatch's writes (insert only; retention drops whole chunks;
# compress_old never recompresses; rows written into a compressed chunk stay in its heap).
_TIMESCALE_ESTIMATE = f"""
SELECT coalesce(sum(greatest(c.reltuples, 0) + coalesce(s.numrows_pre_compression, 0)), 0)::bigint
FROM show_chunks('{PROBE_RESULTS}') AS shown(relid)
JOIN pg_class c ON c.oid = shown.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN _timescaledb_catalog.chunk k ON k.schema_name = n.nspname AND k.table_name = c.relname
LEFT JOIN _timescaledb_catalog.compression_chunk_size s ON s.chunk_id = k.id
"""
_COMPRESSION_RECORDS = "_timescaledb_catalog.compression_chunk_size"

_COMPRESSION = f"""
SELECT total_chunks, number_compressed_chunks,
       before_compression_total_bytes, after_compression_total_bytes
FROM hypertable_compression_stats('{PROBE_RESULTS}')
"""


@dataclass(frozen=True, slots=True)
class CompressionStats:
    """TimescaleDB compression of probe_results, over the compressed chunks only."""

    chunks_total: int
    chunks_compressed: int
    before_bytes: int  # what the compressed chunks took before compression
    after_bytes: int  # what they take now
    ratio: float | None  # before / after; None while nothing is compressed


@dataclass(frozen=True, slots=True)
class DbStatus:
    """A snapshot of the store. Fields are None where the schema is not there yet."""

    mode: str | None  # recorded storage mode; None before the first migration
    timescaledb_version: str | None  # installed extension version
    server_version: str  # PostgreSQL server_version
    schema_version: int  # highest applied migration; 0 before the first
    rows: int | None  # probe_results rows
    rows_source: str  # how `rows` was obtained: "exact count" or "estimate (...)"
    size_bytes: int | None  # probe_results on disk: partitions/chunks, indexes, TOAST
    compression: CompressionStats | None  # TimescaleDB only
    oldest: datetime | None  # earliest started_at stored
    newest: datetime | None  # latest started_at stored
    rollup_rows: int | None  # rows in probe_percentiles_hourly (exact)
    partitions: int | None  # daily partitions (plain) or chunks (TimescaleDB) of probe_results
    notifications: OutboxCounts | None = None  # the notification outbox; None before its migration
    processes: Processes | None = None  # the leader, connected processes and prober members

    @property
    def partition_kind(self) -> str:
        """What ``partitions`` counts in this mode."""
        return "chunks" if self.mode == "timescaledb" else "partitions"


async def db_status(conn: Conn) -> DbStatus:
    """Collect the store's status."""
    server_version = str(await conn.fetchval("SHOW server_version"))
    mode = await recorded_mode(conn)
    version = await schema_version(conn)
    tsdb = await timescaledb_version(conn)
    has_raw = await conn.fetchval("SELECT to_regclass($1)", PROBE_RESULTS) is not None
    if mode is None or not has_raw:
        return DbStatus(mode, tsdb, server_version, version, None, "exact count", None, None, None, None, None, None)

    timescale = mode == "timescaledb"
    if timescale:
        if await conn.fetchval("SELECT to_regclass($1)", _COMPRESSION_RECORDS) is not None:
            estimate = await conn.fetchval(_TIMESCALE_ESTIMATE)
            estimate_source = "estimate (pg_class.reltuples and rows recorded at compression)"
        else:  # a TimescaleDB without that catalog table: its own estimate
            estimate = await conn.fetchval(f"SELECT approximate_row_count('{PROBE_RESULTS}')")
            estimate_source = "estimate (approximate_row_count)"
        size = await conn.fetchval(f"SELECT hypertable_size('{PROBE_RESULTS}')")
        partitions = await conn.fetchval(f"SELECT count(*) FROM show_chunks('{PROBE_RESULTS}')")
        compression = await _compression(conn)
    else:
        estimate = await conn.fetchval(_PLAIN_ESTIMATE)
        estimate_source = "estimate (pg_class.reltuples)"
        size = await conn.fetchval(
            f"SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree('{PROBE_RESULTS}')"
        )
        partitions = await conn.fetchval(f"SELECT count(*) FROM pg_partition_tree('{PROBE_RESULTS}') WHERE isleaf")
        compression = None
    # reltuples is -1 (counted as 0) until a table is first analysed, so a
    # small estimate may be an unknown one: count those exactly.
    if estimate is not None and estimate > EXACT_COUNT_LIMIT:
        rows, rows_source = int(estimate), estimate_source
    else:
        rows, rows_source = await conn.fetchval(f"SELECT count(*) FROM {PROBE_RESULTS}"), "exact count"
    span = await conn.fetchrow(f"SELECT min(started_at) AS oldest, max(started_at) AS newest FROM {PROBE_RESULTS}")
    assert span is not None  # an aggregate without GROUP BY returns exactly one row
    notifications = None
    if await conn.fetchval("SELECT to_regclass($1)", NOTIFICATION_OUTBOX) is not None:
        notifications = await outbox_counts(conn)
    rollup_rows = None
    if await conn.fetchval("SELECT to_regclass($1)", PROBE_PERCENTILES_HOURLY) is not None:
        rollup_rows = await conn.fetchval(f"SELECT count(*) FROM {PROBE_PERCENTILES_HOURLY}")
    shard_tables = await conn.fetchval("SELECT to_regclass($1)", SHARD_LEASES) is not None
    return DbStatus(
        mode=mode,
        timescaledb_version=tsdb,
        server_version=server_version,
        schema_version=version,
        rows=rows,
        rows_source=rows_source,
        size_bytes=size,
        compression=compression,
        oldest=span["oldest"],
        newest=span["newest"],
        rollup_rows=rollup_rows,
        partitions=partitions,
        notifications=notifications,
        processes=await processes(conn, shard_tables=shard_tables),
    )


async def _compression(conn: Conn) -> CompressionStats:
    row = await conn.fetchrow(_COMPRESSION)
    if row is None:  # no chunks at all
        return CompressionStats(0, 0, 0, 0, None)
    before = row["before_compression_total_bytes"] or 0
    after = row["after_compression_total_bytes"] or 0
    return CompressionStats(
        chunks_total=row["total_chunks"] or 0,
        chunks_compressed=row["number_compressed_chunks"] or 0,
        before_bytes=before,
        after_bytes=after,
        ratio=before / after if after else None,
    )


def format_status(status: DbStatus, spool_backlog: str | None = None) -> str:
    """Readable multi-line text for ``routewatch db status``.

    ``spool_backlog`` is a ready-made description of the local spool (the
    caller knows it); the line is left out when None.
    """
    engine = f"PostgreSQL {status.server_version}"
    if status.timescaledb_version:
        engine += f", TimescaleDB {status.timescaledb_version}"
    lines = [
        f"storage mode:    {status.mode or 'not set up (run `routewatch db migrate`)'}",
        f"server:          {engine}",
        f"schema version:  {status.schema_version}",
    ]
    if status.rows is not None:
        size = f", {_bytes(status.size_bytes)} on disk" if status.size_bytes is not None else ""
        lines.append(f"probe results:   {status.rows:,} rows ({status.rows_source}){size}")
        if status.oldest is not None and status.newest is not None:
            lines.append(f"time range:      {_when(status.oldest)} .. {_when(status.newest)}")
        else:
            lines.append("time range:      (no rows)")
    if status.partitions is not None:
        line = f"{status.partition_kind + ':':<17}{status.partitions:,}"
        if status.compression is not None:
            line += f" ({status.compression.chunks_compressed:,} compressed)"
        lines.append(line)
    if status.compression is not None:
        c = status.compression
        if c.ratio is None:
            lines.append("compression:     nothing compressed yet")
        else:
            lines.append(f"compression:     {_bytes(c.before_bytes)} -> {_bytes(c.after_bytes)} ({c.ratio:.1f}x)")
    if status.rollup_rows is not None:
        lines.append(f"hourly rollup:   {status.rollup_rows:,} rows of percentiles")
    if status.notifications is not None:
        lines.append(f"notifications:   {_notifications(status.notifications)}")
    if status.processes is not None:
        lines += process_lines(status.processes)
    if spool_backlog is not None:
        lines.append(f"spool backlog:   {spool_backlog}")
    return "\n".join(lines)


def _notifications(counts: OutboxCounts) -> str:
    text = f"{counts.pending:,} pending, {counts.sent:,} sent, {counts.dead:,} dead (given up)"
    if counts.oldest_pending is not None:
        text += f"; oldest pending queued {_when(counts.oldest_pending)}"
    return text


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(ts: datetime) -> str:
    return ts.isoformat(sep=" ", timespec="seconds")
