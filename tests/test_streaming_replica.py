"""The failover harness itself, with real servers: a synchronous streaming replica, SIGKILL, promotion.

What routewatch relies on from PostgreSQL and asyncpg before any routewatch
process runs on top: a commit on the primary is on the replica when it
returns, the replica refuses writes until promoted, and a multi-host URL with
``target_session_attrs=read-write`` finds whichever server is the primary now.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from streaming_replica import make_replica, multi_host_dsn, promote

from routewatch.postgres.local_server import LocalPostgres


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[LocalPostgres]:
    """A primary of this test's own (the suite's server must stay up for the others); its replica goes beside it."""
    base = Path("/tmp") / f"rw-primary-{os.getpid()}-{tmp_path.name}"
    server = LocalPostgres(base / "primary")  # TimescaleDB preloaded where installed, as in production
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)  # the replica's directory too, even if it never started


@pytest.mark.system
async def test_replica_follows_then_takes_over_after_the_primary_is_killed(primary: LocalPostgres) -> None:
    replica = await make_replica(primary, primary.data_dir.with_name("replica"))
    try:
        both = multi_host_dsn([primary, replica])
        writer = await asyncpg.connect(both)
        try:
            assert await writer.fetchval("SELECT inet_server_port()") == primary.port
            await writer.execute("CREATE TABLE t (id int PRIMARY KEY)")
            await writer.execute("INSERT INTO t SELECT generate_series(1, 100)")
        finally:
            await writer.close()

        standby = await asyncpg.connect(replica.dsn)
        try:
            assert await standby.fetchval("SELECT pg_is_in_recovery()") is True
            # Synchronous (remote_apply): the acknowledged commit is visible on the replica already.
            assert await standby.fetchval("SELECT count(*) FROM t") == 100
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await standby.execute("INSERT INTO t VALUES (101)")
        finally:
            await standby.close()

        os.kill(primary.pid or 0, signal.SIGKILL)
        # Before promotion, no host is read-write: the URL finds none.
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            await asyncpg.connect(both, timeout=5)
        await promote(replica)

        writer = await asyncpg.connect(both, timeout=10)
        try:
            assert await writer.fetchval("SELECT inet_server_port()") == replica.port
            await writer.execute("INSERT INTO t VALUES (101)")
            assert await writer.fetchval("SELECT count(*) FROM t") == 101
        finally:
            await writer.close()
    finally:
        replica.stop()
