"""What ``routewatch db status`` says about the processes on a database: the leader, the sessions,
the prober members; and the session names that make them recognisable."""

from __future__ import annotations

import asyncpg
import pytest
from conftest import PgServer
from db_status_text import status_lines

from routewatch.storage import shard_leases
from routewatch.storage.leadership import Leadership
from routewatch.storage.migrate import migrate
from routewatch.storage.processes import Processes, process_lines, processes
from routewatch.storage.session_name import MAX_NAME_BYTES, application_name, session_settings


@pytest.mark.unit
def test_a_session_is_named_after_the_command_pid_and_host() -> None:
    assert application_name("serve", pid=4242, host="api-7d9f8") == "routewatch serve 4242@api-7d9f8"
    # A long pod name is cut, never the command or the pid; what the server would mangle is replaced.
    long = application_name("probe", pid=1, host="routewatch-probe-eu-west-" + "x" * 80)
    assert long.startswith("routewatch probe 1@routewatch-probe-eu-west-") and len(long) == MAX_NAME_BYTES
    assert application_name("serve", pid=7, host="höst") == "routewatch serve 7@h?st"


@pytest.mark.unit
def test_a_url_that_names_its_sessions_keeps_its_name() -> None:
    mine = session_settings("postgresql://u:pw@db-a:5432,db-b:5432/rw?target_session_attrs=read-write", "serve")
    assert mine["application_name"].startswith("routewatch serve ")
    assert session_settings("postgresql://u:pw@db/rw?application_name=ops-dashboard", "serve") == {}


def _lines(found: Processes) -> dict[str, list[str]]:
    return status_lines("\n".join(process_lines(found)))


@pytest.mark.db
async def test_status_names_the_leader_the_sessions_and_the_prober_members(
    conn: asyncpg.Connection, db_dsn: str, pg_server: PgServer
) -> None:
    await migrate(conn)
    empty = _lines(await processes(conn))
    assert empty["stats leader"][0].startswith("none (no `run` or `serve` holds the refresher lock")
    assert empty["connected"] == ["no routewatch process"]
    assert empty["probers"] == ["none has joined (no shard leases)"]

    # The lock held in another database (another routewatch on the same server) is not this one's leader.
    elsewhere = Leadership(pg_server.dsn, {"application_name": "routewatch serve 9999@other"})
    leader = Leadership(db_dsn, {"application_name": "routewatch serve 4242@api-1"})
    standby = await asyncpg.connect(db_dsn, server_settings={"application_name": "routewatch serve 4343@api-2"})
    try:
        assert await elsewhere.try_acquire()
        assert _lines(await processes(conn))["stats leader"][0].startswith("none")
        assert await leader.try_acquire()
        await shard_leases.join(conn, "eu-west")
        await shard_leases.beat(conn, "eu-west", "a" * 32, "probe-eu", 101)
        await shard_leases.join(conn, "us-east")
        await shard_leases.beat(conn, "us-east", "b" * 32, "probe-us", 202)
        # A member killed a while ago: its row stays (for an hour), its leases expired.
        await conn.execute(
            "INSERT INTO shard_members (region, member, host, pid, joined_at, expires_at)"
            " VALUES ('us-east', $1, 'probe-us-old', 303, now() - interval '1 min', now() - interval '10 s')",
            "c" * 32,
        )
        found = await processes(conn)
        lines = _lines(found)
    finally:
        await standby.close()
        await leader.release()
        await elsewhere.release()

    assert lines["stats leader"][0].startswith("routewatch serve 4242@api-1 (session pid ")
    assert "9999" not in "\n".join(process_lines(found))
    assert lines["connected"] == [
        "routewatch serve 4242@api-1: 1 session from 127.0.0.1",
        "routewatch serve 4343@api-2: 1 session from 127.0.0.1",
    ]
    assert lines["probers eu-west"] == [f"1 live member, {shard_leases.SHARDS} of {shard_leases.SHARDS} shards held"]
    assert lines["probers us-east"] == [f"1 live member, {shard_leases.SHARDS} of {shard_leases.SHARDS} shards held"]
    assert lines["member aaaaaaaa"][0].startswith(f"pid 101 on probe-eu, {shard_leases.SHARDS} shards, renewed 0.")
    assert lines["member cccccccc"][0].startswith("pid 303 on probe-us-old, 0 shards, gone: last renewed 16.")
    assert "lease ended 10." in lines["member cccccccc"][0]
