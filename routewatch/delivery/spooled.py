"""Spool first, deliver in batches, confirm: the loop every result sink shares.

Every result is appended to the local spool (``routewatch/delivery/spool.py``)
before it counts as measured: once :meth:`SpooledDelivery.submit` returns, the
bytes are in the kernel's page cache and survive a SIGKILL of this process.
The flush task then fsyncs the spool, hands a batch to a :class:`Destination`
(the database's COPY writer, or an HTTPS push to a central routewatch), and
confirms the batch's spool position once the destination has stored it.
Every destination stores by probe id, so a batch delivered twice (a replay
after a crash between storing and confirming) is stored once.

When the destination is unreachable, nothing is dropped: the loop switches to
replay, retrying with a backoff (``retry_s`` doubling up to ``max_retry_s``)
and reading the spool from the last confirmed position until it has caught
up, then returns to the in-memory path. Results the destination refuses for
their own sake (a row the database will not take, a record the central server
rejects) go to a dead-letter file with the reason; the rest of the batch is
stored, and the spool position moves past all of them, so one bad result can
neither block the others nor be replayed forever.

If the flush task dies anyway (a bug), it is logged and :attr:`SpooledDelivery.failed`
says so; :meth:`SpooledDelivery.wait_failed` lets a supervisor react at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Protocol

from routewatch.delivery.spool import Spool, SpoolFull, SpoolPosition, encode_result, is_disk_full
from routewatch.results.probe_result import COLUMNS, ProbeResult

log = logging.getLogger(__name__)

CURSOR_FILE = "confirmed.json"  # last spool position known to be stored
DEAD_LETTER_FILE = "rejected.jsonl"  # results that could not be stored, one JSON line each with the reason
# A result refused for its own sake, and why (the reason goes to the dead-letter file and the log).
Rejected = tuple[ProbeResult, str]


class SpoolInUse(Exception):
    """Another process writes to the same spool directory."""


class Destination(Protocol):
    """Where a :class:`SpooledDelivery` stores its batches."""

    @property
    def name(self) -> str:
        """What log lines call it: ``database``, ``ingest endpoint https://…``. Never a secret."""
        ...

    async def open(self) -> None:
        """Set up what delivering needs (called once, from :meth:`SpooledDelivery.start`)."""
        ...

    async def close(self) -> None:
        """Release it (called once, at the end of :meth:`SpooledDelivery.close`)."""
        ...

    def outage(self, exc: BaseException) -> str | None:
        """A short reason when ``exc`` means the destination cannot take results now; None otherwise.

        An outage keeps the batch in the spool and retries it later; any other
        exception out of :meth:`deliver` is a bug and stops the flush task.
        The reason is logged: it must not hold a secret.
        """
        ...

    async def deliver(self, results: list[ProbeResult], count_stored: Callable[[int], None]) -> list[Rejected]:
        """Store ``results`` idempotently; return those refused for their own sake, with the reason.

        ``count_stored(n)`` is called as rows are newly stored (duplicates of
        rows stored before excluded), so the count stays exact even when an
        outage interrupts a batch half-way.
        """
        ...


def _lock_spool(directory: Path) -> IO[str]:
    """Take the spool directory's lock file, held open (and so locked) until closed.

    :raises SpoolInUse: another process holds the lock.
    """
    lock = open(directory / "lock", "a")  # noqa: SIM115 - the open file is the lock, held for the writer's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise SpoolInUse(
            f"{directory} is in use by another routewatch process; give each one its own --data-dir"
        ) from None
    return lock


def _dead_letter_line(result: ProbeResult, reason: str) -> bytes:
    """One line of the dead-letter file: ASCII JSON, whatever the result holds.

    The spool's encoding escapes lone surrogates and keeps integers of any
    size; a result it cannot encode at all is kept as the repr of each field.
    """
    try:
        row = encode_result(result)
    except Exception:  # noqa: BLE001 - the line must be written whatever the result holds
        row = json.dumps({name: repr(getattr(result, name, None)) for name in COLUMNS}).encode("ascii")
    return b'{"error":' + json.dumps(reason).encode("ascii") + b',"result":' + row + b"}\n"


class SpooledDelivery:
    """Spool-backed delivery to one :class:`Destination`; ``submit`` from probes, one flush task, ``close`` at exit.

    A supervisor learns that the flush task died, which stops storing while
    results pile up in the spool, from :attr:`failed` (polling, e.g. for
    ``/readyz``) or by awaiting :meth:`wait_failed`.
    """

    def __init__(
        self,
        destination: Destination,
        spool_dir: Path,
        *,
        label: str,
        batch_size: int = 500,
        flush_s: float = 0.5,
        memory_limit: int = 50_000,
        retry_s: float = 1.0,
        max_retry_s: float | None = None,
        spool_max_bytes: int = 1024**3,
    ) -> None:
        """``label`` names this writer in log lines (``batch writer``); ``max_retry_s`` (default
        ``retry_s``) caps the backoff between attempts while the destination is unreachable."""
        self.destination = destination
        self._label = label
        self._dir = spool_dir
        self._batch_size = batch_size
        self._flush_s = flush_s
        self._memory_limit = memory_limit
        self._retry_s = retry_s
        self._max_retry_s = retry_s if max_retry_s is None else max(retry_s, max_retry_s)
        self._failures_in_a_row = 0
        self._outage_reason: str | None = None
        # One thread does all spool I/O, in submission order.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._spool_max = spool_max_bytes
        self._spool: Spool | None = None
        self._memory: deque[tuple[ProbeResult, SpoolPosition | None]] = deque()
        self._wakeup = asyncio.Event()
        self._confirmed: SpoolPosition | None = None
        self._replaying = True  # at start, whatever the spool holds may be unstored
        self._task: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Future[None] | None = None  # the batch being stored, see _to_the_end
        self._failed: BaseException | None = None
        self._stopped = asyncio.Event()  # the flush task ended: died, or close() stopped it
        self._lock: IO[str] | None = None
        self._opened = False
        # Why appends fail, while they do ("disk full", ...): logged once per episode.
        self._spool_trouble: str | None = None
        self._trouble_unspooled = 0
        self._local_failing: set[str] = set()  # other local files failing now (cursor, fsync, ...)
        self.written = 0  # results newly stored since start (duplicates excluded)
        self.failed_flushes = 0
        self.dropped = 0  # results that could be neither spooled nor stored
        self.rejected = 0  # results that could not be stored, kept in the dead-letter file
        self.unspooled = 0  # results the spool could not take, sent from memory only
        self.destination_ok = True  # the last attempt reached the destination

    async def _in_io(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def start(self) -> None:
        """Open the spool (recovering a torn tail) and the destination, and start the flush task.

        :raises SpoolInUse: another process holds this spool directory.
        """
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Two writers appending to one spool would interleave segments; the
        # lock is released by the kernel when this process exits, however it exits.
        self._lock = await self._in_io(_lock_spool, self._dir)
        self._spool = await self._in_io(lambda: Spool(self._dir, max_bytes=self._spool_max))
        self._confirmed = await self._in_io(self._read_cursor)
        head = self._spool.head
        if self._confirmed is not None and self._confirmed > head:
            # Appends would land before the cursor and never be read back.
            log.warning(
                "spool cursor %s is past the spool's end %s (spool files removed or cut?); replaying all of %s",
                self._confirmed,
                head,
                self._dir,
            )
            self._confirmed = None
        await self.destination.open()
        self._opened = True
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._label)
        self._task.add_done_callback(self._flush_task_done)

    @property
    def failed(self) -> BaseException | None:
        """What the flush task died of; None while it runs, or if :meth:`close` stopped it.

        Once set, nothing more is stored: results are still journaled in the
        spool and stored by the next process that opens it.
        """
        return self._failed

    async def wait_failed(self) -> BaseException | None:
        """Wait until the flush task stops: what it died of, or None if :meth:`close` stopped it."""
        await self._stopped.wait()
        return self._failed

    def _flush_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return  # close() stopped it
        self._failed = task.exception() or RuntimeError("the flush task returned")
        self._stopped.set()
        log.critical(
            "%s stopped by an unexpected %s: %s; results are kept in the spool %s "
            "but nothing more is stored until routewatch restarts",
            self._label,
            type(self._failed).__name__,
            self._failed,
            self._dir,
            exc_info=self._failed,
        )

    @property
    def backlog(self) -> int:
        """Results accepted but not yet confirmed stored (exact only while not replaying)."""
        return len(self._memory)

    @property
    def spool_bytes(self) -> int:
        """Bytes the spool holds on disk."""
        return 0 if self._spool is None else self._spool.bytes

    @property
    def spool_corrupt_records(self) -> int:
        """Damaged or undecodable spool records skipped on replay since start."""
        return 0 if self._spool is None else self._spool.corrupt_records

    async def submit(self, result: ProbeResult) -> None:
        """Journal ``result``, then queue it for the destination.

        Never raises: a result the spool cannot take (full, disk full, not
        encodable) is still sent from memory, and counted in :attr:`unspooled`.
        """
        spool = self._spool
        assert spool is not None, "start() first"
        pos: SpoolPosition | None
        try:
            pos = await self._in_io(lambda: spool.append([result], sync=False))
        except Exception as exc:  # noqa: BLE001 - journaling is best effort; the delivery path remains
            self._spool_refused(result, exc)
            pos = None
        else:
            self._spool_accepted()
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

    def _spool_refused(self, result: ProbeResult, exc: Exception) -> None:
        """Count a result the spool did not take; log the cause once per episode."""
        self.unspooled += 1
        if isinstance(exc, SpoolFull):
            kind, what = "limit reached", str(exc)
        elif is_disk_full(exc):
            kind, what = "disk full", f"disk full at {self._dir} ({exc})"
        elif isinstance(exc, OSError):
            kind, what = "write error", f"cannot write to {self._dir} ({exc})"
        else:
            # This one result cannot be encoded (a bug where it was made), not an episode.
            log.error(
                "spool: cannot journal a result for %s (%s: %s); sending it from memory only",
                result.model,
                type(exc).__name__,
                exc,
            )
            return
        self._trouble_unspooled += 1
        if kind != self._spool_trouble:
            self._spool_trouble = kind
            log.error(
                "spool: %s; results are sent to the %s from memory only, without a journal, "
                "until the spool takes them again",
                what,
                self.destination.name,
            )

    def _spool_accepted(self) -> None:
        if self._spool_trouble is not None:
            log.info(
                "spool: journaling again at %s (%s is over); %d results were sent from memory only meanwhile",
                self._dir,
                self._spool_trouble,
                self._trouble_unspooled,
            )
            self._spool_trouble = None
            self._trouble_unspooled = 0

    def _local_problem(self, what: str, exc: OSError | None) -> None:
        """Log once when a local file operation starts failing, and once when it works again."""
        if exc is not None and what not in self._local_failing:
            self._local_failing.add(what)
            log.error("spool: %s failing in %s (%s); storing goes on", what, self._dir, exc)
        elif exc is None and what in self._local_failing:
            self._local_failing.discard(what)
            log.info("spool: %s works again in %s", what, self._dir)

    async def _run(self) -> None:
        while True:
            try:
                if self._replaying:
                    await self._replay_step()
                else:
                    await self._memory_step()
                if not self.destination_ok:
                    log.info("%s reachable again; writing resumed", self.destination.name)
                self.destination_ok = True
                self._failures_in_a_row = 0
                self._outage_reason = None
            except Exception as exc:
                reason = self.destination.outage(exc)
                if reason is None:
                    raise  # a bug: _flush_task_done reports it
                self._outage(reason)
                await asyncio.sleep(self.retry_delay())

    def retry_delay(self) -> float:
        """Seconds to wait before the next attempt (:func:`backoff_delay`)."""
        return backoff_delay(self._failures_in_a_row, self._retry_s, self._max_retry_s, random.random())

    def _outage(self, reason: str) -> None:
        self.failed_flushes += 1
        self._failures_in_a_row += 1
        if self.destination_ok or reason != self._outage_reason:
            log.warning(
                "%s unavailable (%s); results go to the spool and are replayed later", self.destination.name, reason
            )
        self._outage_reason = reason
        self.destination_ok = False
        self._replaying = True

    async def _memory_step(self) -> None:
        if len(self._memory) < self._batch_size:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._flush_s)
        batch = [self._memory.popleft() for _ in range(min(self._batch_size, len(self._memory)))]
        if batch:
            await self._to_the_end(self._store_memory_batch(batch))

    async def _store_memory_batch(self, batch: list[tuple[ProbeResult, SpoolPosition | None]]) -> None:
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

    async def _to_the_end(self, work: Coroutine[Any, Any, None]) -> None:
        """Run one batch's store-and-confirm to its end, even if ``close`` cancels the flush task meanwhile.

        Cancelled half-way, a batch would be stored (or sent to the rejected
        file) and then stored again by ``close``; instead ``close`` waits for it.
        """
        self._in_flight = asyncio.ensure_future(work)
        await asyncio.shield(self._in_flight)

    async def _replay_step(self) -> None:
        assert self._spool is not None
        try:
            results, pos = await self._in_io(self._spool.read, self._confirmed, self._batch_size)
        except OSError as exc:
            # The spool, not the destination, is failing: try again shortly.
            self._local_problem("reading the spool", exc)
            await asyncio.sleep(self._retry_s)
            return
        self._local_problem("reading the spool", None)
        if results:
            await self._to_the_end(self._store_replayed(results, pos))
            return
        # Caught up: everything spooled so far is stored. Memory entries at or
        # before the confirmed position are duplicates of what was replayed.
        confirmed = self._confirmed
        while (
            self._memory
            and self._memory[0][1] is not None
            and confirmed is not None
            and self._memory[0][1] <= confirmed
        ):
            self._memory.popleft()
        self._replaying = False

    async def _store_replayed(self, results: list[ProbeResult], pos: SpoolPosition) -> None:
        await self._store(results)
        await self._confirm(pos)

    def _count_stored(self, n: int) -> None:
        self.written += n

    async def _store(self, results: list[ProbeResult]) -> None:
        rejected = await self.destination.deliver(results, self._count_stored)
        if rejected:
            self.rejected += len(rejected)
            await self._in_io(self._dead_letter, rejected)
            reasons = sorted({reason for _, reason in rejected})
            log.error(
                "could not store %d of %d results; they are kept in %s: %s",
                len(rejected),
                len(results),
                self._dir / DEAD_LETTER_FILE,
                "; ".join(reasons),
            )

    def _dead_letter(self, rejected: list[Rejected]) -> None:
        lines = b"".join(_dead_letter_line(r, reason) for r, reason in rejected)
        path = self._dir / DEAD_LETTER_FILE
        try:
            with open(path, "ab") as fh:
                fh.write(lines)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            # The spool position moves past these results all the same (or they
            # would block every later one), so the log keeps them instead.
            log.error(
                "cannot write %s (%s); the results it should hold follow:\n%s",
                path,
                exc,
                lines.decode("ascii").rstrip("\n"),
            )

    async def _confirm(self, pos: SpoolPosition) -> None:
        if self._confirmed is None or pos > self._confirmed:
            self._confirmed = pos
        assert self._spool is not None
        await self._in_io(self._confirm_io, self._confirmed)

    def _sync(self) -> None:
        assert self._spool is not None
        try:
            self._spool.sync()
        except OSError as exc:
            # The results are on their way to the destination anyway.
            self._local_problem("fsync of the spool", exc)
        else:
            self._local_problem("fsync of the spool", None)

    def _confirm_io(self, pos: SpoolPosition) -> None:
        assert self._spool is not None
        try:
            self._spool.confirm(pos)
            # The cursor only saves replay work after a restart: losing it is safe.
            tmp = self._dir / (CURSOR_FILE + ".tmp")
            tmp.write_text(json.dumps(asdict(pos)))
            tmp.replace(self._dir / CURSOR_FILE)
        except OSError as exc:
            self._local_problem("saving the confirmed position", exc)
        else:
            self._local_problem("saving the confirmed position", None)

    def _read_cursor(self) -> SpoolPosition | None:
        return read_cursor(self._dir)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Store what is queued (up to ``timeout_s``), fsync the spool, stop.

        Whatever the destination cannot take in time stays in the spool and is
        replayed at the next start. Does not raise if the flush task had died.
        """
        deadline = time.monotonic() + timeout_s
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.wait([task])  # its exception, if any, went to _flush_task_done
        if self._in_flight is not None:
            # A batch the cancel caught half-way finishes first, within the time given.
            done, _ = await asyncio.wait([self._in_flight], timeout=timeout_s)
            if not done:
                # Safe to cut: the destination stores by id, and the spool still holds the batch.
                self._in_flight.cancel()
                await asyncio.wait([self._in_flight])
                log.warning(
                    "the batch being stored did not finish within %g s at shutdown; it stays in the spool", timeout_s
                )
            elif not self._in_flight.cancelled() and self._in_flight.exception() is not None:
                log.warning(
                    "the last batch before shutdown was not stored (%s); it stays in the spool",
                    type(self._in_flight.exception()).__name__,
                )
            self._in_flight = None
        self._stopped.set()
        try:
            while self._opened and (self._replaying or self._memory) and time.monotonic() < deadline:
                if self._replaying:
                    await asyncio.wait_for(self._replay_step(), max(0.1, deadline - time.monotonic()))
                else:
                    self._wakeup.set()
                    await asyncio.wait_for(self._memory_step(), max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - close() never raises: any failure is logged, the spool keeps the rest
            reason = self.destination.outage(exc)
            if reason is not None:
                log.warning("%s unavailable at shutdown (%s)", self.destination.name, reason)
            else:
                log.error("could not store the queued results at shutdown (%s: %s)", type(exc).__name__, exc)
        if self._spool is not None:
            pending = await self._in_io(self._spool.pending_records, self._confirmed)
            if pending:
                log.warning(
                    "%d probe results kept in the spool (%s); they are stored at the next start", pending, self._dir
                )
            await self._in_io(self._spool.close)
        if self._opened:
            self._opened = False
            await self.destination.close()
        self._io.shutdown(wait=True)
        if self._lock is not None:
            self._lock.close()


def backoff_delay(failures: int, retry_s: float, max_retry_s: float, spread: float) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: ``retry_s`` doubled per failure
    after the first, up to ``max_retry_s``; past the first doubling, less up to a quarter, by
    ``spread`` (0..1, random), so that many probers cut off at once do not retry in step."""
    exponent = min(max(failures - 1, 0), 30)
    delay = min(retry_s * 2.0**exponent, max(retry_s, max_retry_s))
    return delay * (1 - 0.25 * spread) if delay > retry_s else delay


def read_cursor(spool_dir: Path) -> SpoolPosition | None:
    """The last position confirmed stored in the spool at ``spool_dir``; None when unknown."""
    try:
        raw = json.loads((spool_dir / CURSOR_FILE).read_text())
        return SpoolPosition(int(raw["segment"]), int(raw["offset"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
