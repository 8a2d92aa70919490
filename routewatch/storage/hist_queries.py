"""The hourly histogram rollup's SQL: ``probe_hist_hourly`` and the raw rows it is made from.

The aggregator (``routewatch.aggregator.rollup``, ``.sliding``) computes;
these functions only move rows. Reads return asyncpg records with the
columns of :data:`HIST_COLUMNS` (hourly rows) or of :data:`RAW_COLUMNS` (raw
probes); writes take records already encoded in :data:`HIST_COLUMNS` order.

A refresh runs inside :func:`refresh_transaction`, and every transaction that
changes the table counts itself with :func:`bump_hist_generation`, so that an
in-memory copy of the rollup knows when it missed a change. Triggers
(migration 0008) also record which hours each transaction changed, in
``probe_hist_changes``: a standby following the rollup reads, inside
:func:`follow_transaction`, its :func:`position` and the
:func:`hours_changed_since` its previous one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from routewatch.storage.connection import Conn
from routewatch.storage.tables import META_TABLE, PROBE_HIST_CHANGES, PROBE_HIST_HOURLY, PROBE_RESULTS

# Session-level advisory lock held around each refresh: two refreshers never
# interleave, and the next one's snapshot (taken after the lock) sees what
# the previous one committed. Fixed 64-bit key, ASCII "rwhist" + 1.
HIST_LOCK_KEY = 0x7277_6869_7374_0001

# routewatch_meta key counting the transactions that changed probe_hist_hourly
# (a rollup refresh, retention): an in-memory copy of the rollup knows it
# missed a change when the count its refresh started from is not the one it
# last saw.
HIST_GENERATION_KEY = "hist_generation"

# routewatch_meta key holding the highest transaction id (xid8) whose rows
# were pruned from probe_hist_changes: a reader whose previous snapshot did not
# see that transaction finished cannot tell what it missed.
HIST_CHANGES_PRUNED_KEY = "hist_changes_pruned"

# One hourly row: the series key (bucket first), counts, error counts (JSON),
# first/last probe, and the three histograms (bytes). COPY writes this order.
HIST_COLUMNS = (
    "bucket",
    "router",
    "model",
    "provider",
    "region",
    "prompt",
    "methodology",
    "tier",
    "attempts",
    "ok",
    "rate_limited",
    "overloaded",
    "errors",
    "input_tokens",
    "output_tokens",
    "first_started",
    "last_started",
    "ttft",
    "ttfat",
    "tps",
    "reported_ok",
    "retried",
    "calls",
    "calls_failed",
    "ttft_first",
    "ttft_retried",
)
_HIST_LIST = ", ".join(HIST_COLUMNS)

# One raw probe as the rollup reads it, with its hour (``bucket``).
RAW_COLUMNS = (
    "bucket",
    "router",
    "model",
    "provider",
    "region",
    "prompt",
    "methodology",
    "tier",
    "ok",
    "prober_overloaded",
    "error_class",
    "input_tokens",
    "output_tokens",
    "started_at",
    "ttft_ms",
    "ttfat_ms",
    "output_tps",
    "upstream_calls",  # probe_results.attempts: upstream calls the router reported
)
_RAW_EXPRESSIONS = {"upstream_calls": "attempts AS upstream_calls"}
RAW_SELECT = f"""
SELECT date_bin(INTERVAL '1 hour', started_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       {", ".join(_RAW_EXPRESSIONS.get(c, c) for c in RAW_COLUMNS[1:])}
FROM {PROBE_RESULTS}
WHERE started_at >= $1 AND started_at < $2
"""

_BUMP_GENERATION = (
    f"INSERT INTO {META_TABLE} (key, value) VALUES ($1, '1') ON CONFLICT (key)"
    f" DO UPDATE SET value = ({META_TABLE}.value::bigint + 1)::text RETURNING value"
)
_ROWS_BETWEEN = f"SELECT {_HIST_LIST} FROM {PROBE_HIST_HOURLY} WHERE bucket >= $1 AND bucket < $2"
_ROWS_OF_HOUR = f"SELECT {_HIST_LIST} FROM {PROBE_HIST_HOURLY} WHERE bucket = $1"
_ROWS_OF_HOURS = f"SELECT {_HIST_LIST} FROM {PROBE_HIST_HOURLY} WHERE bucket = ANY($1::timestamptz[])"
_DELETE_HOURS = f"DELETE FROM {PROBE_HIST_HOURLY} WHERE bucket = ANY($1::timestamptz[]) RETURNING {_HIST_LIST}"
_DELETE_SERIES = (
    f"DELETE FROM {PROBE_HIST_HOURLY} WHERE bucket = $1"
    " AND (router, model, provider, region, prompt, methodology, tier)"
    " IN (SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]))"
)
_STORED_PROVIDERS = f"SELECT DISTINCT router, model, provider FROM {PROBE_HIST_HOURLY} WHERE bucket >= $1"
_DROP_HOURS = f"DELETE FROM {PROBE_HIST_HOURLY} WHERE bucket = ANY($1::timestamptz[])"
# In time order, so that a reader holding part of the rows knows which hours it has whole.
_RAW_IN_ORDER = RAW_SELECT.rstrip() + "\nORDER BY started_at\n"
# Per (router, model), the first $4 provider values (other than $3) by their earliest probe.
_FIRST_PROVIDERS = f"""
SELECT router, model, provider, first_started FROM (
    SELECT router, model, provider, min(started_at) AS first_started,
           row_number() OVER (PARTITION BY router, model ORDER BY min(started_at), provider) AS rank
    FROM {PROBE_RESULTS}
    WHERE started_at >= $1 AND started_at < $2 AND provider <> ALL($3::text[])
    GROUP BY router, model, provider
) AS named
WHERE rank <= $4
ORDER BY first_started, router, model, provider
"""

# The server is named by its postmaster's start time and address: transaction
# ids are only comparable within one server's history. After a failover the
# promoted replica may hand out again ids the old primary had used (for
# transactions whose records never reached it), so a snapshot taken on the
# old primary would take the new primary's changes under those ids as seen.
#
# On a hot standby pg_current_snapshot() lists no transaction in progress: it copies
# the snapshot's top-level xids, and a standby's snapshot keeps every running xid
# among its subtransaction ids. A transaction of the primary still running would
# then count as seen and its changes be missed once it commits. There the position
# says only what is certain: every transaction below xmin has ended (xmin:xmin:),
# so the next reader re-reads the hours of any transaction from xmin on, some of them
# again, which only repeats work.
_POSITION = (
    "SELECT CASE WHEN pg_is_in_recovery()"
    " THEN pg_snapshot_xmin(s)::text || ':' || pg_snapshot_xmin(s)::text || ':' ELSE s::text END AS snapshot,"
    f" coalesce((SELECT value::bigint FROM {META_TABLE} WHERE key = $1), 0) AS generation,"
    " concat_ws(' ', pg_postmaster_start_time(), inet_server_addr(), inet_server_port()) AS server"
    " FROM pg_current_snapshot() AS s"
)
# The changes of the transactions the earlier snapshot $1 did not see (those
# below its xmin had all ended before it); '-infinity' is a TRUNCATE.
_CHANGED_SINCE = f"""
WITH earlier AS (SELECT $1::text::pg_snapshot AS s),
new AS (
    SELECT DISTINCT c.bucket FROM {PROBE_HIST_CHANGES} c, earlier
    WHERE c.xid >= pg_snapshot_xmin(earlier.s) AND NOT pg_visible_in_snapshot(c.xid, earlier.s)
)
SELECT coalesce((SELECT m.value::xid8 >= pg_snapshot_xmin(earlier.s) FROM {META_TABLE} m, earlier
                 WHERE m.key = $2), false)
       OR EXISTS (SELECT 1 FROM new WHERE bucket = '-infinity') AS unknown,
       array(SELECT bucket FROM new WHERE bucket <> '-infinity' ORDER BY bucket) AS hours
"""
_PRUNE_CHANGES = f"""
WITH gone AS (DELETE FROM {PROBE_HIST_CHANGES} WHERE changed_at < now() - $1::interval RETURNING xid)
INSERT INTO {META_TABLE} (key, value)
SELECT $2, max(xid)::text FROM gone HAVING count(*) > 0
ON CONFLICT (key) DO UPDATE SET value = greatest({META_TABLE}.value::xid8, excluded.value::xid8)::text
"""


@asynccontextmanager
async def refresh_transaction(conn: Conn) -> AsyncIterator[None]:
    """One rollup refresh: :data:`HIST_LOCK_KEY` held, then one REPEATABLE READ transaction.

    Everything read inside comes from one snapshot, taken after the previous
    refresher committed and let go of the lock; the lock is released after
    the commit (or the rollback), unless the connection broke meanwhile.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", HIST_LOCK_KEY)
    try:
        async with conn.transaction(isolation="repeatable_read"):
            yield
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", HIST_LOCK_KEY)


async def bump_hist_generation(conn: Conn) -> int:
    """Count one more change of the histogram rollup; returns the count before it.

    Call it inside the transaction that changes the rows, so the count and
    the rows commit together.
    """
    value = await conn.fetchval(_BUMP_GENERATION, HIST_GENERATION_KEY)
    return int(value) - 1


async def raw_rows(conn: Conn, start: datetime, end: datetime) -> list[asyncpg.Record]:
    """Every raw probe started in ``[start, end)``, with :data:`RAW_COLUMNS`."""
    return await conn.fetch(RAW_SELECT, start, end)


async def raw_row_pieces(conn: Conn, start: datetime, end: datetime, size: int) -> AsyncIterator[list[asyncpg.Record]]:
    """:func:`raw_rows` in order of ``started_at``, ``size`` rows at a time (the last piece may be shorter).

    Read through a cursor, so it must run inside a transaction; other
    statements may run on ``conn`` between two pieces.
    """
    cursor = await conn.cursor(_RAW_IN_ORDER, start, end)
    while piece := await cursor.fetch(size):
        yield piece


async def first_providers(
    conn: Conn, start: datetime, end: datetime, unnamed: Sequence[str], per_model: int
) -> list[asyncpg.Record]:
    """Per (router, model), its first ``per_model`` providers by earliest probe in ``[start, end)``.

    Records (router, model, provider, first_started), earliest first (ties by
    router, model, provider). A NULL provider and the values in ``unnamed``
    are left out: they name no provider. One aggregate on the server: what
    comes back is bounded by the models, however many rows and names.
    """
    return await conn.fetch(_FIRST_PROVIDERS, start, end, list(unnamed), per_model)


async def rows_between(conn: Conn, start: datetime, end: datetime) -> list[asyncpg.Record]:
    """The hourly rows of the hours in ``[start, end)``."""
    return await conn.fetch(_ROWS_BETWEEN, start, end)


async def rows_of_hour(conn: Conn, hour: datetime) -> list[asyncpg.Record]:
    """The hourly rows of one hour."""
    return await conn.fetch(_ROWS_OF_HOUR, hour)


async def rows_of_hours(conn: Conn, hours: Sequence[datetime]) -> list[asyncpg.Record]:
    """The hourly rows of these hours."""
    return await conn.fetch(_ROWS_OF_HOURS, hours)


async def delete_hours(conn: Conn, hours: Sequence[datetime]) -> list[asyncpg.Record]:
    """Delete every row of these hours; return the rows deleted."""
    return await conn.fetch(_DELETE_HOURS, hours)


async def drop_hours(conn: Conn, hours: Sequence[datetime]) -> None:
    """Delete every row of these hours, returning nothing."""
    await conn.execute(_DROP_HOURS, hours)


async def delete_series(conn: Conn, hour: datetime, series: Iterable[tuple[str, str, str, str, str, str, str]]) -> None:
    """Delete the rows of ``hour`` whose (router, model, provider, region, prompt, methodology, tier)
    is in ``series``."""
    columns = [list(col) for col in zip(*series, strict=True)]
    if columns:
        await conn.execute(_DELETE_SERIES, hour, *columns)


async def copy_rows(conn: Conn, records: Sequence[tuple[Any, ...]]) -> None:
    """Append hourly rows, each a tuple in :data:`HIST_COLUMNS` order."""
    if records:
        await conn.copy_records_to_table(PROBE_HIST_HOURLY, records=records, columns=HIST_COLUMNS)


async def stored_providers(conn: Conn, since: datetime) -> list[asyncpg.Record]:
    """The distinct (router, model, provider) of the rows from hour ``since`` on."""
    return await conn.fetch(_STORED_PROVIDERS, since)


@asynccontextmanager
async def follow_transaction(conn: Conn) -> AsyncIterator[None]:
    """One read-only REPEATABLE READ transaction: a follower's position, the
    changes since its previous one and the rows it reads all come from one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        yield


@dataclass(frozen=True, slots=True)
class Position:
    """Where a reader of the rollup stands: what its snapshot sees."""

    generation: int  # HIST_GENERATION_KEY as that snapshot sees it (0 before any change)
    snapshot: str  # pg_current_snapshot() as text: the transactions it sees
    server: str  # which server took the snapshot (see _POSITION): snapshots of two servers do not compare


async def position(conn: Conn) -> Position:
    """The current transaction's :class:`Position` (call it first in :func:`follow_transaction`)."""
    row = await conn.fetchrow(_POSITION, HIST_GENERATION_KEY)
    assert row is not None
    return Position(int(row["generation"]), str(row["snapshot"]), str(row["server"]))


async def hours_changed_since(conn: Conn, earlier: Position, now: Position) -> list[datetime] | None:
    """The hours whose rows changed in transactions ``earlier`` did not see, ascending, read in
    the transaction whose position is ``now``; None when that cannot be told: ``earlier`` was taken
    on another server (a failover, a restart), the changes it missed were pruned, or the table was
    truncated."""
    if earlier.server != now.server:
        return None
    row = await conn.fetchrow(_CHANGED_SINCE, earlier.snapshot, HIST_CHANGES_PRUNED_KEY)
    assert row is not None
    if row["unknown"]:
        return None
    return list(row["hours"])


async def prune_changes(conn: Conn, keep: timedelta) -> None:
    """Forget the changes recorded more than ``keep`` ago (the database's clock), noting the last one forgotten."""
    await conn.execute(_PRUNE_CHANGES, keep, HIST_CHANGES_PRUNED_KEY)
