"""A real streaming replica of a test server: ``pg_basebackup`` from a primary, started as a hot standby.

Both servers are :class:`LocalPostgres` processes in the test's own
directories (never the suite's shared server, which other tests need alive).
The replica is synchronous, as docs/storage.md asks for a failover that loses
nothing: a commit on the primary returns once the replica has applied it.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from routewatch.postgres.local_server import LocalPostgres


async def make_replica(primary: LocalPostgres, data_dir: Path, *, synchronous: bool = True) -> LocalPostgres:
    """Clone ``primary`` into ``data_dir`` and start the clone as its streaming standby."""
    replica = LocalPostgres(data_dir, bin_dir=primary.bin_dir, timescaledb=primary.has_timescaledb)
    replica.prepare_data_dir()
    # Same cluster, same role password: the replica's URL differs only in its port.
    shutil.copy2(primary.data_dir / "pg-password", data_dir / "pg-password")
    backup = await asyncio.create_subprocess_exec(
        str(primary.bin_dir / "pg_basebackup"),
        f"--pgdata={replica.pgdata}",
        "--write-recovery-conf",  # standby.signal and primary_conninfo
        "--wal-method=stream",
        "--checkpoint=fast",
        f"--dbname={primary.dsn}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, errors = await asyncio.wait_for(backup.communicate(), 120)
    if backup.returncode != 0:
        raise RuntimeError(f"pg_basebackup failed: {errors.decode(errors='replace')}")
    _give_to_server_user(replica.pgdata, replica.server_user)
    if synchronous:
        # remote_apply rather than the default remote flush: the tests read the replica right after a commit.
        await _sql(
            primary.dsn,
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "ALTER SYSTEM SET synchronous_commit = 'remote_apply'",
            "SELECT pg_reload_conf()",
        )
    # On the loop's (main) thread: the server's parent-death signal is tied to the forking thread.
    replica.start()
    return replica


def _give_to_server_user(pgdata: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    pgdata.chmod(0o700)
    if entry.pw_uid == os.geteuid():
        return
    for root, dirs, files in os.walk(pgdata):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)


async def _sql(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def promote(replica: LocalPostgres, timeout_s: float = 30.0) -> None:
    """Promote the standby and return once it takes writes."""
    conn = await asyncpg.connect(replica.dsn)
    try:
        promoted = await conn.fetchval("SELECT pg_promote(wait => true, wait_seconds => $1)", int(timeout_s))
    finally:
        await conn.close()
    if not promoted:
        raise RuntimeError(f"the replica was not promoted within {timeout_s}s")


def multi_host_dsn(servers: list[LocalPostgres], target_session_attrs: str = "read-write") -> str:
    """One URL listing every server, the libpq way; contains the password."""
    first = urlsplit(servers[0].dsn)
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    netloc = f"{first.username}:{first.password}@{hosts}"
    return urlunsplit(first._replace(netloc=netloc, query=f"target_session_attrs={target_session_attrs}"))
