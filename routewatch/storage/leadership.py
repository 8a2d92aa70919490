"""Which aggregator process refreshes: the one holding an advisory lock.

Several aggregator processes may serve the API; exactly one writes rollups
at a time. It holds a session-level ``pg_try_advisory_lock`` on a connection
of its own. When that process dies, its connection closes and PostgreSQL
releases the lock, so a standby that tries again at its next refresh takes
over. No cluster code of our own: the database is the coordination point.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from routewatch.storage.connection import CONNECT_TIMEOUT_S
from routewatch.storage.errors import DATABASE_ERRORS

log = logging.getLogger(__name__)

# A fixed 64-bit key, unique to routewatch ("rwlead" + 1).
LEADER_LOCK_KEY = 0x7277_6C65_6164_0001
# The lock connection's queries never wait on the server (try-lock, SELECT 1): an answer within
# this or the server is gone, and with it the lock.
LOCK_QUERY_TIMEOUT_S = 5.0


class Leadership:
    """Try, hold and give up the refresher role."""

    def __init__(self, dsn: str, server_settings: dict[str, str] | None = None) -> None:
        """``server_settings`` go to the lock's session (its ``application_name``, which ``db status`` shows)."""
        self._dsn = dsn
        self._server_settings = server_settings
        self._conn: asyncpg.Connection | None = None
        # The refresher and the maintenance task both ask; one lock connection
        # must never run two queries at once.
        self._asking = asyncio.Lock()

    @property
    def is_leader(self) -> bool:
        """Whether this process holds the lock (as of the last ``try_acquire``)."""
        return self._conn is not None and not self._conn.is_closed()

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; keep it if already held. Never waits.

        A broken lock connection (database restart) counts as lost: the
        lock went with the session, so it is tried again from scratch.
        """
        async with self._asking:
            return await self._try_acquire()

    async def _try_acquire(self) -> bool:
        if self._conn is not None:
            try:
                await self._conn.fetchval("SELECT 1", timeout=LOCK_QUERY_TIMEOUT_S)
                return True
            except DATABASE_ERRORS:
                log.warning("lost the connection holding the refresher lock")
                await self._drop()
        try:
            conn = await asyncpg.connect(
                self._dsn,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=LOCK_QUERY_TIMEOUT_S,
                server_settings=self._server_settings,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError):
            return False
        try:
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY)
        except DATABASE_ERRORS:
            got = False
        except BaseException:  # cancelled (the process is stopping): the connection is no one else's to close
            conn.terminate()
            raise
        if not got:
            await conn.close()
            return False
        self._conn = conn
        log.info("this process now refreshes the stats (refresher lock taken)")
        return True

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def release(self) -> None:
        """Give the role up (closing the session releases the lock)."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close()
