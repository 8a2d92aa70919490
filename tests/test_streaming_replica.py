"""The failover harness itself, with real servers: a synchronous streaming replica, SIGKILL, promotion.

What routewatch relies on from PostgreSQL and asyncpg before any routewatch
process runs on top: a commit on the primary is on the replica when it
returns, the replica refuses writes until promoted, and a multi-host URL with
``target_session_attrs=read-write`` finds whichever server is the primary now.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from streaming_replica import make_replica, multi_host_dsn, promote

from routewatch.postgres.local_server import LocalPostgres
from routewatch.storage import hist_queries
from routewatch.storage.migrate import migrate


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


async def _write_hours(dsn: str, hours: range) -> list[int]:
    """One rollup row per hour, each in its own transaction (as a leader's refreshes); their transaction ids."""
    conn = await asyncpg.connect(dsn)
    try:
        xids = []
        for i in hours:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO probe_hist_hourly (bucket, router, model, provider, region, prompt, methodology,"
                    " attempts, ok, rate_limited, overloaded, input_tokens, output_tokens, ttft, ttfat, tps)"
                    " VALUES ($1, 'r', 'm', 'p', 'eu', 'short', 'v1', 1, 1, 0, 0, 1, 1, '', '', '')",
                    HOUR0 + timedelta(hours=i),
                )
                xids.append(int(await conn.fetchval("SELECT pg_current_xact_id()::text")))
        return xids
    finally:
        await conn.close()


async def _position(dsn: str) -> hist_queries.Position:
    conn = await asyncpg.connect(dsn)
    try:
        async with hist_queries.follow_transaction(conn):
            return await hist_queries.position(conn)
    finally:
        await conn.close()


HOUR0 = datetime(2030, 5, 1, tzinfo=UTC)


@pytest.mark.system
async def test_a_position_from_before_a_failover_is_not_compared_with_the_new_primary(primary: LocalPostgres) -> None:
    """A standby's position taken on the old primary names transactions the promoted replica
    never saw; the replica hands their ids out again, so comparing would miss changes."""
    conn = await asyncpg.connect(primary.dsn)
    try:
        await migrate(conn, mode="plain")
    finally:
        await conn.close()
    replica = await make_replica(primary, primary.data_dir.with_name("replica"), synchronous=False)
    try:
        await _caught_up(primary, replica)
        replica.stop()  # from here on the primary's commits never reach it
        used_on_old = await _write_hours(primary.dsn, range(5))
        earlier = await _position(primary.dsn)
        os.kill(primary.pid or 0, signal.SIGKILL)

        replica.start()
        await promote(replica)
        used_on_new = await _write_hours(replica.dsn, range(10, 20))
        assert set(used_on_new) & set(used_on_old), "the promoted replica reused no transaction id"

        conn = await asyncpg.connect(replica.dsn)
        try:
            async with hist_queries.follow_transaction(conn):
                now = await hist_queries.position(conn)
                assert now.server != earlier.server
                assert await hist_queries.hours_changed_since(conn, earlier, now) is None
                # What comparing anyway would say: some of the new primary's changes look seen.
                blind = await hist_queries.hours_changed_since(
                    conn, dataclasses.replace(earlier, server=now.server), now
                )
            assert blind is not None
            assert len(blind) < 10, blind
        finally:
            await conn.close()
    finally:
        replica.stop()


async def _caught_up(primary: LocalPostgres, replica: LocalPostgres, timeout_s: float = 30.0) -> None:
    """Wait until the replica has replayed everything the primary has written so far."""
    conn = await asyncpg.connect(primary.dsn)
    try:
        target = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
    finally:
        await conn.close()
    standby = await asyncpg.connect(replica.dsn)
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not await standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", target):
            assert asyncio.get_running_loop().time() < deadline, "the replica did not catch up"
            await asyncio.sleep(0.05)
    finally:
        await standby.close()
