"""The parts ``routewatch run`` and ``routewatch probe`` both start, each a context manager.

Both commands enter their parts in order on one :class:`Startup` stack, so
that whatever fails, at start-up or while stopping, everything already
started is stopped in reverse order. This module holds what they share: the
stack itself, the signal handlers, the database pool, the spool-backed batch
writer and its watch, the loop-lag monitor, the probes' HTTP session, the
frozen heap and the status line. It imports no part of the aggregator, so a
prober-only process does not load it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import aiohttp
import asyncpg

from routewatch.config import Config
from routewatch.config.settings import Settings
from routewatch.delivery.spooled import SpooledDelivery
from routewatch.postgres.local_server import LocalPostgres, resolve_bin_dir
from routewatch.probe.loop_lag import LoopLagMonitor
from routewatch.probe.redact import redact
from routewatch.probe.scheduler import Prober, new_session
from routewatch.storage.connection import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S
from routewatch.storage.migrate import MigrationReport, migrate
from routewatch.storage.session_name import session_settings
from routewatch.supervision import Supervisor

log = logging.getLogger("routewatch")

_T = TypeVar("_T")

STATUS_EVERY_S = 30.0
REFREEZE_S = 5.0  # how often a prober looks whether its scheduled series changed (see refreeze_heap)
POOL_CLOSE_S = 10.0  # then connections still in use are terminated


class DatabaseUnavailable(Exception):
    """The database cannot be reached at start."""


class InjectedFault(Exception):
    """Raised at a step named by ``RunOptions.fail_at`` or ``fail_stopping`` (tests only)."""


@dataclass(frozen=True)
class Database:
    """The database this process uses: its URL (a secret), how the banner names it,
    the embedded server when this process runs it (to watch and restart), and a
    read replica's URL (a secret too) when one is configured."""

    dsn: str
    label: str
    server: LocalPostgres | None = None
    read_dsn: str | None = None


def embedded_postgres(data_dir: Path, settings: Settings) -> LocalPostgres:
    """The embedded PostgreSQL of ``data_dir``, with the binaries and server user the settings name."""
    return LocalPostgres(data_dir, bin_dir=resolve_bin_dir(settings.pg_bin), pg_user=settings.pg_user)


class Startup(AsyncExitStack):
    """An AsyncExitStack whose parts are entered as named steps (``runner.STARTUP_STEPS``, say).

    Unwinding it is the process stopping: the supervisor is told first, so
    that no task stopped from then on counts as a failure. ``fail_at`` and
    ``fail_stopping`` name steps that raise :class:`InjectedFault` (tests of
    the start-up and shutdown order).
    """

    def __init__(self, supervisor: Supervisor, fail_at: str | None = None, fail_stopping: str | None = None) -> None:
        super().__init__()
        self._supervisor = supervisor
        self._fail_at = fail_at
        self._fail_stopping = fail_stopping

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self._supervisor.closing()
        return await super().__aexit__(exc_type, exc, tb)

    def reach(self, step: str) -> None:
        """Start-up has come to ``step``: a step without a part to enter, or before entering its part."""
        if step == self._fail_at:
            raise InjectedFault(f"injected fault at the start of {step!r}")

    async def start(self, step: str, part: AbstractAsyncContextManager[_T]) -> _T:
        """Enter ``part`` as ``step``: it is stopped when the stack unwinds, after every later part."""
        self.reach(step)
        if step == self._fail_stopping:
            self.callback(_fail_stopping, step)  # below the part: runs once the part has stopped
        return await self.enter_async_context(part)


def _fail_stopping(step: str) -> None:
    raise InjectedFault(f"injected fault once {step!r} had stopped")


@contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (from start-up on, so a Ctrl-C then stops cleanly too)."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


@asynccontextmanager
async def database_pool(database: Database, command: str) -> AsyncIterator[asyncpg.Pool]:
    """The connection pool, its sessions named after ``command`` (``routewatch <command> <pid>@<host>``);
    closed at exit, its connections still in use terminated after POOL_CLOSE_S.

    Connections are made within CONNECT_TIMEOUT_S and every query ends within
    COMMAND_TIMEOUT_S (``storage.connection``), so that a query in flight on a
    host that vanished fails as an outage instead of waiting for TCP.
    """
    try:
        pool = await _create_pool(database.dsn, command, min_size=1, command_timeout_s=COMMAND_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(
            f"cannot reach the database, {database.label}: {redact(str(exc), [database.dsn])}"
        ) from None
    async with _closing(pool):
        yield pool


@asynccontextmanager
async def read_pool(
    database: Database, command: str, *, command_timeout_s: float = COMMAND_TIMEOUT_S
) -> AsyncIterator[asyncpg.Pool | None]:
    """The read replica's pool when one is configured, else None; closed at exit.

    It opens no connection up front (``min_size=0``): a replica that is down
    at start does not stop the process, reads go to the primary until it
    answers (``storage.read_pools``). Same time limits as the primary's pool
    (a test shortens ``command_timeout_s``).
    """
    if database.read_dsn is None:
        yield None
        return
    pool = await _create_pool(database.read_dsn, command, min_size=0, command_timeout_s=command_timeout_s)
    async with _closing(pool):
        yield pool


async def _create_pool(dsn: str, command: str, *, min_size: int, command_timeout_s: float) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=4,
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=command_timeout_s,
        server_settings=session_settings(dsn, command),
    )


@asynccontextmanager
async def _closing(pool: asyncpg.Pool) -> AsyncIterator[None]:
    try:
        yield
    finally:
        try:
            await asyncio.wait_for(pool.close(), POOL_CLOSE_S)
        except TimeoutError:
            log.warning("database connections still in use after %gs at shutdown; closing them", POOL_CLOSE_S)
            pool.terminate()


async def migrated(database: Database, command: str) -> MigrationReport:
    """Apply the pending migrations on a connection of their own (named after ``command``), without the
    pools' COMMAND_TIMEOUT_S: a migration may rewrite a large table for longer than any query of the
    running system should take."""
    conn = await asyncpg.connect(
        database.dsn, timeout=CONNECT_TIMEOUT_S, server_settings=session_settings(database.dsn, command)
    )
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def writer_alive(writer: SpooledDelivery) -> None:
    """Ends when the writer's flush task does: raising what it died of, for the supervisor."""
    failed = await writer.wait_failed()
    if failed is not None:
        raise failed


@asynccontextmanager
async def loop_lag() -> AsyncIterator[LoopLagMonitor]:
    """The event loop's lag, sampled while open."""
    lag = LoopLagMonitor()
    lag.start()
    try:
        yield lag
    finally:
        await lag.stop()


@asynccontextmanager
async def http_session(concurrency: int) -> AsyncIterator[aiohttp.ClientSession]:
    """The probes' HTTP client, created on entry (an unused one would be reported unclosed)."""
    async with new_session(concurrency) as session:
        yield session


@dataclass(frozen=True)
class ProberParts:
    """A prober with what it stands on: the writer its results go to, and the loop-lag monitor."""

    prober: Prober
    writer: SpooledDelivery
    lag: LoopLagMonitor


async def start_prober(
    stack: Startup,
    supervisor: Supervisor,
    sink: AbstractAsyncContextManager[SpooledDelivery],
    config: Config,
) -> ProberParts:
    """Enter the steps "writer" (``sink``: the database writer or the push writer, see
    ``sinks.result_sink``), "writer watch", "loop lag" and "http session" on ``stack``;
    return a prober whose results go to that writer."""
    writer = await stack.start("writer", sink)
    await stack.start("writer watch", supervisor.running("batch writer", partial(writer_alive, writer)))
    lag = await stack.start("loop lag", loop_lag())
    session = await stack.start("http session", http_session(config.schedule.concurrency))
    prober = Prober(
        session,
        config.timeouts,
        config.region,
        config.schedule.concurrency,
        sink=writer.submit,
        lag=lag,
        max_lag_s=config.schedule.max_loop_lag,
    )
    return ProberParts(prober, writer, lag)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Everything built at start lives for the whole run: keep it out of the collector's
    full scans, whose pauses would stall the loop (and be flagged as prober lag) in the
    middle of measurements."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def refreeze_heap(scheduled: Callable[[], int], every_s: float = REFREEZE_S) -> None:
    """Freeze the heap again whenever the number of scheduled series has changed; runs until cancelled.

    A prober that gains shards after start-up (a second worker takes its
    share a few seconds after the first) builds thousands of scheduler jobs
    after :func:`frozen_heap` froze the heap; unfrozen, every full collection
    would scan them, tens of milliseconds of stalled loop each, and the
    probes in flight would time the stall. Frozen without a collection first
    (which would stall the loop once, at length): the cyclic garbage of that
    moment is kept, a few probes' worth, at each change of shards, which
    happens when probers join or leave.
    """
    last = scheduled()
    while True:
        await asyncio.sleep(every_s)
        now = scheduled()
        if now != last:
            gc.freeze()
            last = now


async def report_status(prober: Prober, writer: SpooledDelivery, lag: LoopLagMonitor, stop: asyncio.Event) -> None:
    """One status line every STATUS_EVERY_S: is it working?"""
    last = 0
    while not stop.is_set():
        await asyncio.sleep(STATUS_EVERY_S)
        worst = lag.recent_max(STATUS_EVERY_S)
        log.info(
            "probes: %d in the last %.0fs, %d stored in total, %d waiting to be stored, spool %d bytes,"
            " worst loop lag %.1f ms%s",
            prober.completed - last,
            STATUS_EVERY_S,
            writer.written,
            writer.backlog,
            writer.spool_bytes,
            worst or 0.0,
            "" if writer.destination_ok else f"; {writer.destination.name} UNAVAILABLE, results kept in the spool",
        )
        last = prober.completed
