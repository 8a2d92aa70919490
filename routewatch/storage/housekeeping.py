"""Keeping the store in shape: partitions, retention, compression.

One code path for both storage modes: each function takes the connection and
the mode (from :func:`routewatch.storage.migrate.migrate`) and does the
mode's work, or nothing where the mode needs none. routewatch calls
:func:`run_maintenance` periodically (hourly is plenty); no TimescaleDB
background job is relied on, so the store stays correct on servers where
those jobs fail. The hourly rollups are the aggregator's refresh's to write
(``routewatch.aggregator.rollup``); retention here cuts them.

Days are UTC days throughout: plain partitions and TimescaleDB chunks both
start at UTC midnight.

Only the public functions open transactions.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg

from routewatch.storage.clock import db_now
from routewatch.storage.connection import Conn
from routewatch.storage.errors import DATABASE_ERRORS
from routewatch.storage.hist_queries import bump_hist_generation
from routewatch.storage.leadership import Leadership
from routewatch.storage.percentile_queries import delete_before as delete_percentiles_before
from routewatch.storage.tables import (
    BUDGET_PAUSES,
    INCIDENTS,
    NOTIFICATION_OUTBOX,
    PROBE_COST_DAILY,
    PROBE_HIST_HOURLY,
    PROBE_RESULTS,
    STATS_HISTORY,
    UPTIME_DAILY,
)

# Days of per-day uptime kept (today included): the status page draws a bar for each.
UPTIME_DAYS = 90

log = logging.getLogger(__name__)

# Compressing a day's chunk of a large fleet can outlast a pool's COMMAND_TIMEOUT_S.
COMPRESS_TIMEOUT_S = 1800.0

# One partition (plain) or chunk (TimescaleDB) per day: a 7-day window touches
# 7-8 of them, retention drops whole days, and a day of 1,000 series probed
# once a minute (~1.4M rows, ~0.5 GB) stays well under the "a chunk and its
# indexes fit in memory" guidance. The TimescaleDB migration states the same.
CHUNK_INTERVAL = timedelta(days=1)

# Plain mode: partitions exist this many days past today, so that a write at
# midnight never waits on (or fails for lack of) the next day's partition even
# if maintenance has not run for a couple of days.
PARTITIONS_AHEAD_DAYS = 3

# Raw probe results older than this are dropped (the published windows need at most 7 days).
DEFAULT_RETENTION = timedelta(days=90)

# TimescaleDB: chunks whose whole range is older than this are compressed.
# Late writes (spool replays after an outage) mostly land within a few days,
# and writing into a compressed chunk is much slower than into a plain one.
COMPRESS_AFTER = timedelta(days=3)

# Advisory locks, fixed 64-bit keys (ASCII tag + 1) unique to routewatch:
# creating partitions, so concurrent writers create each day once.
PARTITION_LOCK_KEY = 0x7277_7061_7274_0001  # "rwpart"

PARTITION_PREFIX = f"{PROBE_RESULTS}_p"
_PARTITION_NAME = re.compile(rf"^{re.escape(PARTITION_PREFIX)}(\d{{8}})$")

# Partitions of probe_results (plain mode), by name.
_PARTITIONS = f"""
SELECT c.relname
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = '{PROBE_RESULTS}'::regclass
"""


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What one :func:`run_maintenance` pass did."""

    mode: str
    partitions_created: int  # plain: new daily partitions; TimescaleDB: always 0
    dropped: int  # partitions (plain) or chunks (TimescaleDB) removed by retention
    compressed: int  # chunks compressed (TimescaleDB); always 0 in plain mode
    horizon: datetime  # raw rows before this may have been dropped


def partition_day(ts: datetime) -> date:
    """The UTC day whose partition holds a row started at ``ts`` (naive = UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).date()


def partition_name(day: date) -> str:
    """``probe_results_pYYYYMMDD``: the plain partition for ``day``."""
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


async def ensure_partitions(conn: Conn, mode: str, start: date, end: date) -> int:
    """Create the daily partitions for ``start`` .. ``end`` (inclusive) that are missing.

    Plain mode only; a no-op returning 0 in TimescaleDB mode (chunks appear
    on insert). Idempotent and safe to call from several processes at once.
    Returns the number of partitions created.
    """
    if mode != "plain" or end < start:
        return 0
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    if not await _missing_partitions(conn, days):
        return 0  # the usual case: no lock, no transaction
    async with conn.transaction():
        return await _create_partitions(conn, days)


class PartitionCache:
    """Remembers which days have a partition, so a writer asks the database only once per day.

    One instance per process (or writer). Retention drops old partitions
    behind its back; call :meth:`forget` after :func:`apply_retention`, or
    when an insert fails for want of a partition.
    """

    def __init__(self) -> None:
        self._seen: set[date] = set()

    async def ensure(self, conn: Conn, mode: str, days: Iterable[date]) -> int:
        """Make sure each of ``days`` has a partition; return how many were created.

        Touches the database only for days not seen before. In TimescaleDB
        mode it never does.
        """
        missing = sorted(set(days) - self._seen)
        if not missing:
            return 0
        created = 0
        if mode == "plain" and await _missing_partitions(conn, missing):
            async with conn.transaction():
                created = await _create_partitions(conn, missing)
        self._seen.update(missing)
        return created

    async def ensure_for(self, conn: Conn, mode: str, timestamps: Iterable[datetime]) -> int:
        """:meth:`ensure` for the days of these ``started_at`` values (a batch about to be written)."""
        return await self.ensure(conn, mode, {partition_day(ts) for ts in timestamps})

    def forget(self) -> None:
        """Drop everything remembered (partitions may have been removed)."""
        self._seen.clear()


async def apply_retention(
    conn: Conn,
    mode: str,
    retention: timedelta = DEFAULT_RETENTION,
    *,
    rollup_retention: timedelta | None = None,
    now: datetime | None = None,
) -> int:
    """Drop raw results older than ``retention``; return partitions/chunks dropped.

    Only whole days go: a partition or chunk is dropped when its entire range
    is older than ``now - retention`` (``now`` defaults to the database's).
    The hourly rollups (histograms and percentiles, deleted together) and
    the published history are cut at ``now - rollup_retention`` (default:
    ``retention``).
    """
    now = now or await db_now(conn)
    horizon = now - retention
    rollup_horizon = now - (rollup_retention if rollup_retention is not None else retention)
    if mode == "timescaledb":
        dropped = await conn.fetchval(
            f"SELECT count(*) FROM drop_chunks('{PROBE_RESULTS}', older_than => $1::timestamptz)", horizon
        )
    else:
        dropped = 0
        for name, day in await _plain_partitions(conn):
            if _day_start(day) + CHUNK_INTERVAL > horizon:
                continue
            # One short transaction per partition: each holds an exclusive
            # lock on probe_results, which stalls writers while it lasts.
            async with conn.transaction():
                await conn.execute(f"ALTER TABLE {PROBE_RESULTS} DETACH PARTITION {name}")
                await conn.execute(f"DROP TABLE {name}")
            dropped += 1
    # The hourly rollups are plain tables in both modes (migrations 0003, 0009),
    # cut in one transaction so that they always cover the same hours.
    async with conn.transaction():
        if await conn.execute(f"DELETE FROM {PROBE_HIST_HOURLY} WHERE bucket < $1", rollup_horizon) != "DELETE 0":
            await bump_hist_generation(conn)
        await delete_percentiles_before(conn, rollup_horizon)
    await conn.execute(f"DELETE FROM {STATS_HISTORY} WHERE taken_at < $1", rollup_horizon)
    # Status tables (migration 0005): the status page draws UPTIME_DAYS days,
    # and closed incidents are kept as long as the raw data.
    oldest_day = partition_day(now) - timedelta(days=UPTIME_DAYS - 1)
    await conn.execute(f"DELETE FROM {UPTIME_DAILY} WHERE day < $1", oldest_day)
    await conn.execute(f'DELETE FROM {INCIDENTS} WHERE "end" < $1', horizon)
    # Delivered and given-up notifications go with their incidents; pending ones stay.
    await conn.execute(f"DELETE FROM {NOTIFICATION_OUTBOX} WHERE state <> 'pending' AND created_at < $1", horizon)
    # Spend (migration 0014) is kept as long as the probes it sums; pauses only matter on their day.
    await conn.execute(f"DELETE FROM {PROBE_COST_DAILY} WHERE day < $1", partition_day(horizon))
    await conn.execute(f"DELETE FROM {BUDGET_PAUSES} WHERE day < $1", partition_day(now))
    if dropped:
        log.info(
            "retention: dropped %d %s of %s older than %s",
            dropped,
            "chunks" if mode == "timescaledb" else "partitions",
            PROBE_RESULTS,
            horizon.isoformat(),
        )
    return int(dropped)


async def compress_old(
    conn: Conn,
    mode: str,
    after: timedelta = COMPRESS_AFTER,
    *,
    now: datetime | None = None,
) -> int:
    """Compress every uncompressed chunk entirely older than ``now - after``; return how many.

    TimescaleDB mode only; plain mode has nothing to compress and returns 0.
    Each chunk is compressed in its own transaction, so locks stay short.
    """
    if mode != "timescaledb":
        return 0
    now = now or await db_now(conn)
    chunks = await conn.fetch(
        f"""
        SELECT c::text AS chunk
        FROM show_chunks('{PROBE_RESULTS}', older_than => $1::timestamptz) AS c
        JOIN timescaledb_information.chunks i
          ON format('%I.%I', i.chunk_schema, i.chunk_name)::regclass = c
        WHERE NOT i.is_compressed
        ORDER BY i.range_start
        """,
        now - after,
    )
    for row in chunks:
        await conn.execute(
            "SELECT compress_chunk($1::text::regclass, if_not_compressed => true)",
            row["chunk"],
            timeout=COMPRESS_TIMEOUT_S,
        )
    if chunks:
        log.info("compressed %d chunks of %s", len(chunks), PROBE_RESULTS)
    return len(chunks)


async def run_maintenance(
    conn: Conn,
    mode: str,
    *,
    retention: timedelta = DEFAULT_RETENTION,
    compress_after: timedelta = COMPRESS_AFTER,
    rollup_retention: timedelta | None = None,
    now: datetime | None = None,
) -> MaintenanceReport:
    """One maintenance pass: partitions ahead, then retention, then compression.

    In that order: the next days' partitions matter most (writes fail without
    them), and dropping old data first spares compressing chunks about to go.
    ``now`` defaults to the database's clock.
    """
    now = now or await db_now(conn)
    today = partition_day(now)
    created = await ensure_partitions(conn, mode, today, today + timedelta(days=PARTITIONS_AHEAD_DAYS))
    dropped = await apply_retention(conn, mode, retention, rollup_retention=rollup_retention, now=now)
    compressed = await compress_old(conn, mode, compress_after, now=now)
    return MaintenanceReport(mode, created, dropped, compressed, now - retention)


async def _missing_partitions(conn: Conn, days: Iterable[date]) -> list[date]:
    """Those of ``days`` that have no partition yet (plain mode)."""
    existing = {name for name, _ in await _plain_partitions(conn)}
    return [day for day in days if partition_name(day) not in existing]


async def _create_partitions(conn: Conn, days: Iterable[date]) -> int:
    """Create the partitions missing among ``days``; the caller holds a transaction."""
    # Serialise creators; look again under the lock, as another process may
    # have created some of the days meanwhile.
    await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_KEY)
    created = 0
    for day in await _missing_partitions(conn, days):
        lo, hi = _day_start(day), _day_start(day) + CHUNK_INTERVAL
        # Bounds as UTC literals: the session's TimeZone must not move them.
        await conn.execute(
            f"CREATE TABLE {partition_name(day)} PARTITION OF {PROBE_RESULTS} "
            f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
        )
        created += 1
    if created:
        log.info("created %d partitions of %s", created, PROBE_RESULTS)
    return created


async def _plain_partitions(conn: Conn) -> list[tuple[str, date]]:
    """routewatch's daily partitions of probe_results, oldest first.

    Partitions named otherwise (made by hand) are left alone.
    """
    found = []
    for row in await conn.fetch(_PARTITIONS):
        match = _PARTITION_NAME.match(row["relname"])
        if match:
            found.append((row["relname"], date.fromisoformat(match[1])))
    return sorted(found, key=lambda item: item[1])


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# How often `maintenance_loop` runs: partitions are made days ahead and
# retention counts in days, so hourly is plenty.
MAINTENANCE_INTERVAL = timedelta(hours=1)


async def maintenance_loop(
    pool: asyncpg.Pool,
    mode: str,
    partitions: PartitionCache,
    *,
    interval: timedelta = MAINTENANCE_INTERVAL,
    retention: timedelta = DEFAULT_RETENTION,
    compress_after: timedelta = COMPRESS_AFTER,
    leadership: Leadership | None = None,
) -> None:
    """Run maintenance now, then every ``interval``.

    A failed pass is logged and retried at the next interval: the store
    stays usable meanwhile.
    With ``leadership``, only the process holding the refresher lock runs
    passes, so two processes never drop the same partition at once.
    """
    while True:
        if leadership is not None and not await leadership.try_acquire():
            await asyncio.sleep(interval.total_seconds())
            continue
        try:
            async with pool.acquire(timeout=30) as conn:
                await run_maintenance(conn, mode, retention=retention, compress_after=compress_after)
                # Retention may have dropped partitions the writers' cache knows.
                partitions.forget()
        except DATABASE_ERRORS as exc:
            log.warning("maintenance pass failed (%s); next try in %s", exc.__class__.__name__, interval)
        await asyncio.sleep(interval.total_seconds())
