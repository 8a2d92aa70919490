"""The ingest log: how the batch writer tells the hourly rollup what is new.

Both halves of the handshake live here:

* the writer, in the transaction that inserts a batch, logs it with
  :func:`log_batch`: one ``probe_ingest_log`` row with the batch's
  ``started_at`` range and the writing transaction's id;
* the rollup refresh, in its own snapshot, takes the batches not yet taken
  in (:func:`pending_batches`, a piece at a time: after an outage they can be
  millions), reads the rows each wrote (:func:`batch_rows`: by the
  transaction id, without scanning the hour), and marks them taken in the same
  commit (:func:`mark_taken`), so each batch is counted exactly once.

The range a log row records is the whole batch's, a superset of the rows
actually inserted (duplicates are skipped): cheap and safe, as the refresh
recomputes whole hours from the raw rows wherever it does not add a delta.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from routewatch.storage.connection import Conn
from routewatch.storage.hist_queries import RAW_SELECT
from routewatch.storage.tables import PROBE_INGEST_LOG, PROBE_RESULTS_STAGING

# Batches taken in are kept this long (for inspection), then pruned.
KEEP_TAKEN = timedelta(days=1)

_LOG_BATCH = (
    f"INSERT INTO {PROBE_INGEST_LOG} (first_started, last_started, rows) "
    f"SELECT min(started_at), max(started_at), $1 FROM {PROBE_RESULTS_STAGING}"
)
_PENDING = (
    f"SELECT id, first_started, last_started, xid::text AS xid FROM {PROBE_INGEST_LOG} WHERE NOT hist_done ORDER BY id"
)
# A row's xmin is the 32-bit id of the transaction that inserted it; the log
# row holds the full 64-bit id (pg_current_xact_id()). A row a batch skipped
# as a duplicate keeps its first writer's xmin, so it is not read twice.
_BATCH_ROWS = RAW_SELECT.rstrip() + " AND xmin::text::bigint = ANY($3::bigint[])\n"
# Under REPEATABLE READ an UPDATE sees the transaction's snapshot: exactly the
# pending rows pending_batches read, none committed since.
_MARK_TAKEN = f"UPDATE {PROBE_INGEST_LOG} SET hist_done = true WHERE NOT hist_done"
_PRUNE_TAKEN = f"DELETE FROM {PROBE_INGEST_LOG} WHERE hist_done AND stored_at < $1"


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A stored batch the rollup has not taken in yet."""

    id: int
    first_started: datetime  # the batch's earliest started_at
    last_started: datetime  # ... and latest
    xid: int  # the 64-bit id of the transaction that wrote it

    @property
    def xmin(self) -> int:
        """The 32-bit transaction id its rows carry as ``xmin``."""
        return self.xid % 2**32


async def log_batch(conn: Conn, rows: int) -> None:
    """Log the batch now in the writer's staging table, ``rows`` of which were inserted.

    Must run in the transaction that inserted the rows, and that transaction
    must be a top-level one: the log row records pg_current_xact_id(), the
    top-level id, and rows inserted under a savepoint would carry the
    subtransaction's id instead, so :func:`batch_rows` would miss them.
    """
    await conn.execute(_LOG_BATCH, rows)


async def pending_batches(conn: Conn, size: int) -> AsyncIterator[list[PendingBatch]]:
    """The batches not yet taken in, in the order they were logged, ``size`` at a time.

    Read through a cursor, so it must run inside a transaction (the
    refresh's REPEATABLE READ one, see :func:`mark_taken`).
    """
    cursor = await conn.cursor(_PENDING)
    while piece := await cursor.fetch(size):
        yield [PendingBatch(r["id"], r["first_started"], r["last_started"], int(r["xid"])) for r in piece]


async def batch_rows(
    conn: Conn, start: datetime, end: datetime, batches: Sequence[PendingBatch]
) -> list[asyncpg.Record]:
    """The raw rows (``hist_queries.RAW_COLUMNS``) that ``batches`` inserted, of those started in ``[start, end)``."""
    return await conn.fetch(_BATCH_ROWS, start, end, [b.xmin for b in batches])


async def mark_taken(conn: Conn, now: datetime) -> None:
    """Mark every batch :func:`pending_batches` read taken in; prune those taken in and
    stored before ``now - KEEP_TAKEN``.

    In the REPEATABLE READ transaction that read and took them in, so that
    they count once: its snapshot is what the update sees, so a batch
    committed meanwhile stays pending for the next refresh.
    """
    await conn.execute(_MARK_TAKEN)
    await conn.execute(_PRUNE_TAKEN, now - KEEP_TAKEN)
