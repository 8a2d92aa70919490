"""Storing probe results: journal first, then PostgreSQL in batches.

Every result is appended to the local spool (``probe/spool.py``) before it
counts as measured: once ``submit`` returns, the bytes are in the kernel's
page cache and survive a SIGKILL of this process. The flush loop then
fsyncs the spool, writes a batch with COPY into a per-connection staging
table and ``INSERT ... ON CONFLICT DO NOTHING`` (a replayed batch never
counts a probe twice), and confirms the batch's spool position.

When the database is down or refuses a batch, nothing is dropped: the
writer switches to replay, reading the spool from the last confirmed
position until it has caught up, then returns to the in-memory path.
A batch the database rejects for its content is retried row by row and the
rows it still refuses go to a dead-letter file, so one bad row cannot block
the rest forever.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from .result import COLUMNS, ProbeResult
from .spool import Spool, SpoolFull, SpoolPosition, encode_result

log = logging.getLogger(__name__)

_T = TypeVar("_T")

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
# One row per batch that stored something, in the same transaction: the hours
# the rollup refresh must recompute (aggregator/rollup.py). The range is the
# whole batch's, a superset of the rows actually inserted: cheap and safe.
_LOG_INGEST = (
    f"INSERT INTO probe_ingest_log (first_started, last_started, rows) "
    f"SELECT min(started_at), max(started_at), $1 FROM {_STAGING}"
)
# Errors that mean "the database is not there right now", as opposed to
# "the database refuses these rows".
_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
)
CURSOR_FILE = "confirmed.json"  # last spool position known to be stored
DEAD_LETTER_FILE = "rejected.jsonl"  # rows the database refused one by one


class SpoolInUse(Exception):
    """Another process writes to the same spool directory."""


async def write_batch(conn: asyncpg.Connection, results: Sequence[ProbeResult]) -> int:
    """Insert ``results`` idempotently in one transaction; return rows inserted.

    Must not run inside another transaction (RuntimeError): see insert_batch.
    """
    if conn.is_in_transaction():
        raise RuntimeError("write_batch must run in a transaction of its own, not inside another one")
    async with conn.transaction():
        return await insert_batch(conn, results)


async def insert_batch(conn: asyncpg.Connection, results: Sequence[ProbeResult]) -> int:
    """write_batch's statements, in the caller's transaction, which must be a top-level one.

    The rollup refresh (aggregator/rollup.py) finds a batch's rows through the
    transaction id its probe_ingest_log row records, pg_current_xact_id(): the
    top-level id. Rows inserted under a savepoint carry the subtransaction's
    id instead and would be missed.
    """
    await conn.execute(_CREATE_STAGING)
    await conn.copy_records_to_table(_STAGING, records=[r.as_row() for r in results], columns=COLUMNS)
    status = await conn.execute(_INSERT_NEW)
    inserted = int(status.split()[-1])
    if inserted:
        await conn.execute(_LOG_INGEST, inserted)
    return inserted


class BatchWriter:
    """Spool-backed writer; ``submit`` from probes, one flush task, ``close`` at exit."""

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
        prepare: Any = None,
    ) -> None:
        """``prepare(conn, results)``, if given, runs before each batch (e.g. creating partitions)."""
        self._pool = pool
        self._dir = spool_dir
        self._batch_size = batch_size
        self._flush_s = flush_s
        self._memory_limit = memory_limit
        self._retry_s = retry_s
        self._prepare = prepare
        # One thread does all spool I/O, in submission order.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._spool_max = spool_max_bytes
        self._spool: Spool | None = None
        self._memory: deque[tuple[ProbeResult, SpoolPosition | None]] = deque()
        self._wakeup = asyncio.Event()
        self._confirmed: SpoolPosition | None = None
        self._replaying = True  # at start, whatever the spool holds may be unstored
        self._task: asyncio.Task[None] | None = None
        self._lock: Any = None
        self.written = 0  # rows inserted since start (duplicates excluded)
        self.failed_flushes = 0
        self.dropped = 0  # results that could be neither spooled nor stored
        self.database_ok = True

    async def _in_io(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def start(self) -> None:
        """Open the spool (recovering a torn tail) and start the flush task.

        :raises SpoolInUse: another process holds this spool directory.
        """
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Two writers appending to one spool would interleave segments; the
        # lock is released by the kernel when this process exits, however it exits.
        self._lock = open(self._dir / "lock", "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SpoolInUse(
                f"{self._dir} is in use by another routewatch process; give each one its own --data-dir"
            ) from None
        self._spool = await self._in_io(lambda: Spool(self._dir, max_bytes=self._spool_max))
        self._confirmed = await self._in_io(self._read_cursor)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batch-writer")

    @property
    def backlog(self) -> int:
        """Results accepted but not yet confirmed stored (exact only while not replaying)."""
        return len(self._memory)

    @property
    def spool_bytes(self) -> int:
        """Bytes the spool holds on disk."""
        return 0 if self._spool is None else self._spool.bytes

    async def submit(self, result: ProbeResult) -> None:
        """Journal ``result``, then queue it for the database."""
        assert self._spool is not None, "start() first"
        try:
            pos: SpoolPosition | None = await self._in_io(lambda: self._spool.append([result], sync=False))
        except SpoolFull as exc:
            # Still try to store it directly; if that fails too, it is lost, loudly.
            log.error("spool full, result kept in memory only: %s", exc)
            pos = None
        except OSError as exc:
            log.error("cannot write the spool (%s); result kept in memory only", exc)
            pos = None
        if len(self._memory) >= self._memory_limit:
            if pos is None:
                self.dropped += 1
                log.error("result for %s lost: spool and memory both full", result.model)
            else:
                self._replaying = True  # it is in the spool; replay will find it
        else:
            self._memory.append((result, pos))
        if len(self._memory) >= self._batch_size:
            self._wakeup.set()

    async def _run(self) -> None:
        while True:
            try:
                if self._replaying:
                    await self._replay_step()
                else:
                    await self._memory_step()
                if not self.database_ok:
                    log.info("database reachable again; writing resumed")
                self.database_ok = True
            except _UNAVAILABLE as exc:
                self._outage(exc)
                await asyncio.sleep(self._retry_s)

    def _outage(self, exc: BaseException) -> None:
        self.failed_flushes += 1
        if self.database_ok:
            log.warning("database unavailable (%s); results go to the spool and are replayed later",
                        exc.__class__.__name__)
        self.database_ok = False
        self._replaying = True

    async def _memory_step(self) -> None:
        if len(self._memory) < self._batch_size:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._flush_s)
            except TimeoutError:
                pass
        batch = [self._memory.popleft() for _ in range(min(self._batch_size, len(self._memory)))]
        if not batch:
            return
        try:
            await self._in_io(self._sync)
            await self._store([r for r, _ in batch])
        except BaseException:
            # Put them back in order; a replay would also find them in the spool.
            self._memory.extendleft(reversed(batch))
            raise
        positions = [p for _, p in batch if p is not None]
        if positions:
            await self._confirm(positions[-1])

    async def _replay_step(self) -> None:
        assert self._spool is not None
        results, pos = await self._in_io(self._spool.read, self._confirmed, self._batch_size)
        if results:
            await self._store(results)
            await self._confirm(pos)
            return
        # Caught up: everything spooled so far is stored. Memory entries at or
        # before the confirmed position are duplicates of what was replayed.
        confirmed = self._confirmed
        while self._memory and self._memory[0][1] is not None and confirmed is not None \
                and self._memory[0][1] <= confirmed:
            self._memory.popleft()
        self._replaying = False

    async def _store(self, results: list[ProbeResult]) -> None:
        async with self._pool.acquire(timeout=10) as conn:
            if self._prepare is not None:
                await self._prepare(conn, results)
            try:
                self.written += await write_batch(conn, results)
            except asyncpg.PostgresError as exc:
                if isinstance(exc, _UNAVAILABLE):
                    raise
                log.warning("database refused a batch of %d (%s); retrying row by row", len(results), exc)
                await self._store_one_by_one(conn, results)

    async def _store_one_by_one(self, conn: asyncpg.Connection, results: list[ProbeResult]) -> None:
        rejected: list[tuple[ProbeResult, str]] = []
        for r in results:
            try:
                self.written += await write_batch(conn, [r])
            except asyncpg.PostgresError as exc:
                if isinstance(exc, _UNAVAILABLE):
                    raise
                rejected.append((r, f"{exc.__class__.__name__}: {exc}"))
        if rejected:
            await self._in_io(self._dead_letter, rejected)
            log.error("database refused %d results; kept in %s", len(rejected), self._dir / DEAD_LETTER_FILE)

    def _dead_letter(self, rejected: list[tuple[ProbeResult, str]]) -> None:
        with open(self._dir / DEAD_LETTER_FILE, "ab") as fh:
            for r, reason in rejected:
                record = {"error": reason, "result": json.loads(encode_result(r))}
                fh.write(json.dumps(record).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    async def _confirm(self, pos: SpoolPosition) -> None:
        if self._confirmed is None or pos > self._confirmed:
            self._confirmed = pos
        assert self._spool is not None
        await self._in_io(self._confirm_io, self._confirmed)

    def _sync(self) -> None:
        assert self._spool is not None
        self._spool.sync()

    def _confirm_io(self, pos: SpoolPosition) -> None:
        assert self._spool is not None
        self._spool.confirm(pos)
        # The cursor only saves replay work after a restart: losing it is safe.
        tmp = self._dir / (CURSOR_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(pos)))
        tmp.replace(self._dir / CURSOR_FILE)

    def _read_cursor(self) -> SpoolPosition | None:
        try:
            raw = json.loads((self._dir / CURSOR_FILE).read_text())
            return SpoolPosition(int(raw["segment"]), int(raw["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def close(self, timeout_s: float = 10.0) -> None:
        """Store what is queued (up to ``timeout_s``), fsync the spool, stop.

        Whatever the database cannot take in time stays in the spool and is
        replayed at the next start.
        """
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        deadline = time.monotonic() + timeout_s
        try:
            while (self._replaying or self._memory) and time.monotonic() < deadline:
                if self._replaying:
                    await asyncio.wait_for(self._replay_step(), max(0.1, deadline - time.monotonic()))
                else:
                    self._wakeup.set()
                    await asyncio.wait_for(self._memory_step(), max(0.1, deadline - time.monotonic()))
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("database unavailable at shutdown (%s)", exc.__class__.__name__)
        if self._spool is not None:
            pending = await self._in_io(self._spool.pending_records, self._confirmed)
            if pending:
                log.warning("%d probe results kept in the spool (%s); they are stored at the next start",
                            pending, self._dir)
            await self._in_io(self._spool.close)
        self._io.shutdown(wait=True)
        if self._lock is not None:
            self._lock.close()
