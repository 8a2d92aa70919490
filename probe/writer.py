"""Writing probe results to PostgreSQL in batches.

Results go through a bounded queue to one writer task, which flushes with
COPY into a per-connection staging table and then inserts what is new
(``ON CONFLICT DO NOTHING``): a replayed batch never counts a probe twice.
A batch the database rejects stays in memory and is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from .result import COLUMNS, ProbeResult

log = logging.getLogger(__name__)

_STAGING = "probe_results_staging"
_CREATE_STAGING = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} "
    "(LIKE probe_results INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_COLUMN_LIST = ", ".join(COLUMNS)
_INSERT_NEW = (
    f"INSERT INTO probe_results ({_COLUMN_LIST}) "
    f"SELECT {_COLUMN_LIST} FROM {_STAGING} ON CONFLICT DO NOTHING"
)


async def write_batch(conn: asyncpg.Connection, results: list[ProbeResult]) -> int:
    """Insert ``results`` idempotently in one transaction; return rows inserted."""
    async with conn.transaction():
        await conn.execute(_CREATE_STAGING)
        await conn.copy_records_to_table(
            _STAGING, records=[r.as_row() for r in results], columns=COLUMNS
        )
        status = await conn.execute(_INSERT_NEW)
    return int(status.split()[-1])


class BatchWriter:
    """Queue in front of ``write_batch``: flush by size or every ``flush_s``."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        batch_size: int = 500,
        flush_s: float = 0.5,
        queue_size: int = 100_000,
        retry_s: float = 2.0,
    ) -> None:
        self._pool = pool
        self._batch_size = batch_size
        self._flush_s = flush_s
        self._retry_s = retry_s
        self._queue: asyncio.Queue[ProbeResult] = asyncio.Queue(maxsize=queue_size)
        self._pending: list[ProbeResult] = []
        self._task: asyncio.Task[None] | None = None
        self.written = 0  # rows inserted since start
        self.failed_flushes = 0

    @property
    def backlog(self) -> int:
        """Results accepted but not yet stored."""
        return self._queue.qsize() + len(self._pending)

    def start(self) -> None:
        """Start the writer task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batch-writer")

    async def submit(self, result: ProbeResult) -> None:
        """Hand one result to the writer (waits only when the queue is full)."""
        await self._queue.put(result)

    async def _run(self) -> None:
        while True:
            await self._fill()
            if self._pending:
                await self._flush_pending()

    async def _fill(self) -> None:
        """Move queued results into the pending batch until it is due."""
        deadline = time.monotonic() + self._flush_s
        while len(self._pending) < self._batch_size:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return
            try:
                self._pending.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                return

    async def _flush_pending(self) -> None:
        try:
            async with self._pool.acquire() as conn:
                self.written += await write_batch(conn, self._pending)
            self._pending = []
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.failed_flushes += 1
            log.warning("writing %d probe results failed (%s); keeping them and retrying",
                        len(self._pending), exc.__class__.__name__)
            await asyncio.sleep(self._retry_s)

    async def close(self) -> None:
        """Stop the task after storing everything queued (best effort on a dead database)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            self._pending.append(self._queue.get_nowait())
        if self._pending:
            try:
                async with self._pool.acquire() as conn:
                    self.written += await write_batch(conn, self._pending)
                self._pending = []
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("could not store %d probe results at shutdown (%s)",
                          len(self._pending), exc.__class__.__name__)
