"""Storing probe results in PostgreSQL: COPY in batches, idempotent by probe id.

:func:`write_batch` is the one write path: COPY into a per-connection staging
table, then ``INSERT ... ON CONFLICT DO NOTHING`` into ``probe_results``
(whose key is the probe's id and start time), so a batch written twice stores
each probe once, and the batch is logged for the rollup in the same
transaction. :func:`store_rows` adds what a batch needs when the database
refuses it for a reason other than an outage (a row it will not take, a value
asyncpg cannot even encode: an integer out of range, a lone surrogate): the
batch is retried row by row and the rows that still fail are returned with
the reason, the others stored. Both callers use it: the :class:`BatchWriter`
of a prober that writes to the database, and the ``POST /v1/ingest`` endpoint
that stores what remote probers push.

:class:`BatchWriter` is the database's :class:`~routewatch.delivery.spooled.SpooledDelivery`:
every result is spooled locally first, and a database outage only makes the
spool grow until it is replayed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import asyncpg

from routewatch.delivery.spooled import Rejected, SpooledDelivery, SpoolInUse
from routewatch.results.probe_result import COLUMNS, ProbeResult
from routewatch.storage.connection import Conn
from routewatch.storage.errors import database_unavailable
from routewatch.storage.ingest_log import log_batch
from routewatch.storage.tables import PROBE_COST_DAILY, PROBE_RESULTS, PROBE_RESULTS_STAGING

__all__ = [
    "BatchWriter",
    "DatabaseDestination",
    "Prepare",
    "Rollup",
    "SpoolInUse",
    "Stored",
    "insert_batch",
    "insert_rows",
    "store_results",
    "store_rows",
    "write_batch",
]

log = logging.getLogger(__name__)

# What insert_rows tells the hourly rollup (see there).
Rollup = Literal["new", "none", "all"]
# Runs on the batch's connection before its rows are written (e.g. creating their partitions).
Prepare = Callable[[Conn, list[ProbeResult]], Awaitable[None]]
ACQUIRE_TIMEOUT_S = 10.0

_CREATE_STAGING = (
    f"CREATE TEMP TABLE IF NOT EXISTS {PROBE_RESULTS_STAGING} "
    f"(LIKE {PROBE_RESULTS} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_COLUMN_LIST = ", ".join(COLUMNS)
# The rows newly inserted (a replayed probe is not) are added to the day's spend in the
# same statement; sorted so that concurrent writers lock the daily rows in one order.
_INSERT_NEW = f"""
WITH new AS (
    INSERT INTO {PROBE_RESULTS} ({_COLUMN_LIST})
    SELECT {_COLUMN_LIST} FROM {PROBE_RESULTS_STAGING} ON CONFLICT DO NOTHING
    RETURNING started_at, router, model, prompt, cost_usd, reported_cost_usd
), spend AS (
    INSERT INTO {PROBE_COST_DAILY} AS d (day, router, model, prompt, probes, priced_probes, cost_usd,
        reported_probes, reported_cost_usd, compared_probes, compared_reported_usd, compared_computed_usd)
    SELECT (started_at AT TIME ZONE 'UTC')::date AS day, router, model, prompt,
           count(*), count(cost_usd), coalesce(sum(cost_usd), 0),
           count(reported_cost_usd), coalesce(sum(reported_cost_usd), 0),
           count(cost_usd + reported_cost_usd),
           coalesce(sum(reported_cost_usd) FILTER (WHERE cost_usd IS NOT NULL), 0),
           coalesce(sum(cost_usd) FILTER (WHERE reported_cost_usd IS NOT NULL), 0)
    FROM new GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (day, router, model, prompt) DO UPDATE
    SET probes = d.probes + excluded.probes,
        priced_probes = d.priced_probes + excluded.priced_probes,
        cost_usd = d.cost_usd + excluded.cost_usd,
        reported_probes = d.reported_probes + excluded.reported_probes,
        reported_cost_usd = d.reported_cost_usd + excluded.reported_cost_usd,
        compared_probes = d.compared_probes + excluded.compared_probes,
        compared_reported_usd = d.compared_reported_usd + excluded.compared_reported_usd,
        compared_computed_usd = d.compared_computed_usd + excluded.compared_computed_usd
)
SELECT count(*) FROM new
"""
# The same, but a row already there is rewritten as it is: its xmin becomes this transaction's,
# so the batch logged with it finds it.
_INSERT_CLAIMING = (
    f"INSERT INTO {PROBE_RESULTS} ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM {PROBE_RESULTS_STAGING} "
    "ON CONFLICT (id, started_at) DO UPDATE SET id = EXCLUDED.id"
)
# Rows of the staging table already stored (a partitioned table cannot return xmax to tell).
_ALREADY_STORED = (
    f"SELECT count(*) FROM {PROBE_RESULTS_STAGING} s WHERE EXISTS "
    f"(SELECT 1 FROM {PROBE_RESULTS} p WHERE p.id = s.id AND p.started_at = s.started_at)"
)


async def write_batch(conn: Conn, results: Sequence[ProbeResult]) -> int:
    """Insert ``results`` idempotently in one transaction; return rows inserted.

    Must not run inside another transaction (RuntimeError): see insert_batch.
    """
    if conn.is_in_transaction():
        raise RuntimeError("write_batch must run in a transaction of its own, not inside another one")
    async with conn.transaction():
        return await insert_batch(conn, results)


async def insert_batch(conn: Conn, results: Sequence[ProbeResult]) -> int:
    """write_batch's statements, in the caller's transaction, which must be a top-level one.

    A batch that stored something is logged in the same transaction
    (``ingest_log.log_batch``), which is how the rollup refresh learns of it
    and finds its rows; under a savepoint it would miss them.
    """
    return await insert_rows(conn, [r.as_row() for r in results])


async def insert_rows(conn: Conn, rows: Sequence[Sequence[object]], *, rollup: Rollup = "new") -> int:
    """Insert raw ``probe_results`` rows (values in ``COLUMNS`` order) idempotently, in the caller's
    top-level transaction; return how many were new to the table.

    ``rollup`` says what the hourly rollup is told: ``"new"`` logs the rows
    that were new (the writer's batches); ``"none"`` logs nothing (rows the
    rollup already holds, as ``db copy`` brings them); ``"all"`` logs every
    row of the batch, rows already stored included, which are rewritten so
    that the rollup finds them under this transaction (``db copy``'s rows
    the source had not rolled up yet, copied again by a rerun).

    The day's spend (``probe_cost_daily``) gains the rows new to the table,
    except with ``"all"``: ``db copy`` copies the spend table itself after the probes.
    """
    await conn.execute(_CREATE_STAGING)
    await conn.copy_records_to_table(PROBE_RESULTS_STAGING, records=rows, columns=COLUMNS)
    if rollup == "all":
        stored = int(await conn.fetchval(_ALREADY_STORED))
        await conn.execute(_INSERT_CLAIMING)
        await log_batch(conn, len(rows))
        return len(rows) - stored
    inserted: int = await conn.fetchval(_INSERT_NEW)
    if inserted and rollup == "new":
        await log_batch(conn, inserted)
    return inserted


async def _prepared_write(conn: Conn, results: list[ProbeResult], prepare: Prepare | None) -> int:
    if prepare is not None:
        await prepare(conn, results)
    return await write_batch(conn, results)


async def store_rows(
    conn: Conn, results: list[ProbeResult], count_stored: Callable[[int], None], prepare: Prepare | None = None
) -> list[Rejected]:
    """Write ``results`` as one batch, or row by row if the database refuses the batch; return the refused rows.

    ``count_stored(n)`` is told of every row newly inserted as it commits.
    An outage (``errors.database_unavailable``) is raised, whatever was
    stored before it; rows stored are not doubled when the batch is retried.
    """
    try:
        count_stored(await _prepared_write(conn, results, prepare))
        return []
    except Exception as exc:
        if database_unavailable(exc):
            raise
        log.warning("a batch of %d results failed (%s: %s); retrying row by row", len(results), type(exc).__name__, exc)
    rejected: list[Rejected] = []
    for r in results:
        try:
            count_stored(await _prepared_write(conn, [r], prepare))
        except Exception as exc:
            if database_unavailable(exc):
                raise  # the whole batch is retried later; stored rows are not doubled
            rejected.append((r, f"{type(exc).__name__}: {exc}"))
    return rejected


@dataclass
class Stored:
    """What :func:`store_results` did with a batch."""

    inserted: int = 0  # rows newly stored
    rejected: list[Rejected] = field(default_factory=list)  # rows the database refused, with the reason

    def count(self, n: int) -> None:
        """Add ``n`` newly stored rows (a ``count_stored`` callback)."""
        self.inserted += n


async def store_results(pool: asyncpg.Pool, results: list[ProbeResult], prepare: Prepare | None = None) -> Stored:
    """:func:`store_rows` on a connection of ``pool``; an outage is raised (see ``errors.database_unavailable``)."""
    stored = Stored()
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        stored.rejected = await store_rows(conn, results, stored.count, prepare)
    return stored


class DatabaseDestination:
    """The database as a :class:`~routewatch.delivery.spooled.Destination`."""

    name = "database"

    def __init__(self, pool: asyncpg.Pool, prepare: Prepare | None = None) -> None:
        """``prepare(conn, results)``, if given, runs before each batch (e.g. creating partitions)."""
        self._pool = pool
        self._prepare = prepare

    async def open(self) -> None:
        """Nothing to open: the pool belongs to the caller."""

    async def close(self) -> None:
        """Nothing to close: the pool belongs to the caller."""

    def outage(self, exc: BaseException) -> str | None:
        """The exception's class when it means the database is unavailable (never its text: it may hold the DSN)."""
        return exc.__class__.__name__ if database_unavailable(exc) else None

    async def deliver(self, results: list[ProbeResult], count_stored: Callable[[int], None]) -> list[Rejected]:
        """:func:`store_rows` on a pooled connection."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            return await store_rows(conn, results, count_stored, self._prepare)


class BatchWriter(SpooledDelivery):
    """Spool-backed database writer; ``submit`` from probes, one flush task, ``close`` at exit."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        spool_dir: Path,
        *,
        batch_size: int = 500,
        flush_s: float = 0.5,
        memory_limit: int = 50_000,
        retry_s: float = 1.0,
        spool_max_bytes: int = 1024**3,
        prepare: Prepare | None = None,
    ) -> None:
        """``prepare(conn, results)``, if given, runs before each batch (e.g. creating partitions).

        A local database is retried every ``retry_s`` while it is down: no backoff, it costs nothing.
        """
        super().__init__(
            DatabaseDestination(pool, prepare),
            spool_dir,
            label="batch writer",
            batch_size=batch_size,
            flush_s=flush_s,
            memory_limit=memory_limit,
            retry_s=retry_s,
            spool_max_bytes=spool_max_bytes,
        )

    @property
    def database_ok(self) -> bool:
        """The writer's last attempt reached the database."""
        return self.destination_ok
