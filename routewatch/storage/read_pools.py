"""Where reads go: a read replica's pool while it answers, else the primary's.

A ``serve`` (or ``run``) given ``ROUTEWATCH_DATABASE_READ_URL`` holds two
pools. Writes, locks and the leader's refresh always use the primary's; the
reads that may be a little behind (a standby's refresh, the API's history and
status reads) take a connection from :meth:`ReadPools.acquire`, which hands
out the replica's while it is *in use*, the primary's otherwise.

The replica falls out of use when a connection to it cannot be had (for any
reason the server gives, a refused login too) or a read on it fails as an
outage (``errors.DATABASE_UNAVAILABLE``; a query the replica cancels for a
conflict with recovery fails that read only): one WARNING,
then reads go to the primary, so a lost replica costs the primary some load,
not a figure. :meth:`ReadPools.watch` looks at the replica every
``check_s`` seconds: it measures how far behind it is (the lag gauge) and,
when the replica is out of use and answers again, puts it back (one INFO).
Which server reads go to is a gauge as well, and :attr:`ReadPools.switches`
counts the changes, so that a reader keeping state read from one server
(the standby's window sums) knows to start again from the other's tables.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg

from routewatch.storage.connection import Conn
from routewatch.storage.errors import DATABASE_ERRORS, DATABASE_UNAVAILABLE
from routewatch.storage.replication import replica_lag

log = logging.getLogger(__name__)

PRIMARY = "primary"
REPLICA = "replica"

CHECK_EVERY_S = 5.0  # how often the replica is looked at (lag, and whether it is back)
ACQUIRE_TIMEOUT_S = 10.0  # a connection to the replica within this, or it is out of use


@dataclass(frozen=True, slots=True)
class ReadConnection:
    """A connection for reading, and the server it is on (:data:`PRIMARY` or :data:`REPLICA`)."""

    conn: Conn
    server: str


class ReadPools:
    """The primary's pool and, optionally, a read replica's; reads go to the replica while it answers."""

    def __init__(
        self,
        primary: asyncpg.Pool,
        replica: asyncpg.Pool | None = None,
        *,
        check_s: float = CHECK_EVERY_S,
        acquire_timeout_s: float = ACQUIRE_TIMEOUT_S,
    ) -> None:
        """``replica`` None: every read goes to ``primary``, as without a read URL."""
        self.primary = primary
        self._replica = replica
        self._check_s = check_s
        self._acquire_timeout_s = acquire_timeout_s
        self._in_use = replica is not None
        self.switches = 0  # how often reads moved from one server to the other
        self.lag_s: float | None = None  # the replica's lag at the last check; None: unknown or out of use

    @property
    def has_replica(self) -> bool:
        """Whether a read replica is configured."""
        return self._replica is not None

    @property
    def server(self) -> str:
        """Where reads go now: :data:`REPLICA` or :data:`PRIMARY`."""
        return REPLICA if self._in_use else PRIMARY

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[ReadConnection]:
        """A connection to read on: the replica's while it is in use, else the primary's.

        A replica that gives no connection is put out of use and the primary's
        is handed out instead; a read on the replica that fails as an outage
        puts it out of use and is raised (the caller tries again, now on the primary).
        """
        async with AsyncExitStack() as stack:
            if self._replica is not None and self._in_use:
                try:
                    conn = await stack.enter_async_context(self._replica.acquire(timeout=self._acquire_timeout_s))
                except DATABASE_ERRORS as exc:  # a refused login too: the primary still serves
                    self._out_of_use(exc)
                else:
                    try:
                        yield ReadConnection(conn, REPLICA)
                    except DATABASE_UNAVAILABLE as exc:
                        self._out_of_use(exc)
                        raise
                    return
            conn = await stack.enter_async_context(self.primary.acquire())
            yield ReadConnection(conn, PRIMARY)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """:meth:`acquire`'s connection alone, for a read that does not care which server it is on."""
        async with self.acquire() as read:
            yield read.conn

    async def watch(self) -> None:
        """Every ``check_s``: the replica's lag measured, and put back in use once it answers; until cancelled."""
        if self._replica is None:
            await asyncio.Event().wait()  # nothing to watch; a supervised task must not end
            return
        while True:
            await self.check()
            await asyncio.sleep(self._check_s)

    async def check(self) -> None:
        """Look at the replica once: measure its lag; out of use and answering, put it back in use."""
        if self._replica is None:
            return
        try:
            async with self._replica.acquire(timeout=self._acquire_timeout_s) as conn:
                lag = await replica_lag(conn)
        except DATABASE_ERRORS as exc:
            self._out_of_use(exc)
            return
        self.lag_s = lag.lag_s if lag.in_recovery else 0.0  # a promoted replica is the primary: 0 behind
        if not self._in_use:
            self._in_use = True
            self.switches += 1
            log.info("the read replica answers again: reads go to it from now on")

    def _out_of_use(self, exc: BaseException) -> None:
        self.lag_s = None
        if not self._in_use:
            return
        self._in_use = False
        self.switches += 1
        # The class only: an error's text may hold the URL.
        log.warning(
            "the read replica cannot be used (%s): reading from the primary until it answers again",
            exc.__class__.__name__,
        )
