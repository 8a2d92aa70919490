"""Where reads go when the read replica's URL leads nowhere useful: the primary, said once.

The suite's own server stands in for the primary; the "replica" is that
server with a wrong password, or a port nothing listens on. Reads must go to
the primary, the replica must be out of use with one WARNING naming the
error's class (never the URL or its password), and looking at it again must
neither raise nor log again.
"""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from routewatch.parts import Database, read_pool
from routewatch.storage.read_pools import PRIMARY, REPLICA, ReadPools

pytestmark = pytest.mark.db


def _with(dsn: str, *, password: str | None = None, port: int | None = None) -> str:
    parts = urlsplit(dsn)
    user = parts.username or ""
    netloc = f"{user}:{password or parts.password}@{parts.hostname}:{port or parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("broken", ["wrong password", "nothing listening"])
async def test_an_unusable_replica_sends_reads_to_the_primary_with_one_warning(
    pool: asyncpg.Pool, db_dsn: str, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "not-the-password-0"
    read_url = _with(db_dsn, password=secret) if broken == "wrong password" else _with(db_dsn, port=_unused_port())
    caplog.set_level(logging.INFO, logger="routewatch.storage.read_pools")
    async with read_pool(Database(db_dsn, "test", read_dsn=read_url), "serve") as replica:
        reads = ReadPools(pool, replica)
        assert reads.has_replica and reads.server == REPLICA
        async with reads.acquire() as read:
            assert read.server == PRIMARY
            assert await read.conn.fetchval("SELECT 1") == 1
        assert reads.server == PRIMARY and reads.switches == 1
        await reads.check()  # still unusable: stays on the primary, raises nothing
        async with reads.connection() as conn:
            assert await conn.fetchval("SELECT 2") == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("the read replica cannot be used (")
    assert reads.lag_s is None and reads.switches == 1
    text = caplog.text
    assert secret not in text and read_url not in text


async def test_without_a_replica_every_read_is_the_primarys(pool: asyncpg.Pool) -> None:
    reads = ReadPools(pool)
    assert not reads.has_replica and reads.server == PRIMARY
    async with reads.acquire() as read:
        assert read.server == PRIMARY
    await reads.check()
    assert reads.switches == 0 and reads.lag_s is None
