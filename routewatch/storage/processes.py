"""Which routewatch processes use a database, as the database sees them: the part of ``db status``
an operator of several ``serve`` and ``probe`` processes reads.

Three sources, all read-only and cheap:

* the **leader**: the session holding the refresher lock (``pg_locks``, an
  advisory lock on :data:`LEADER_LOCK_KEY` in this database), joined with
  ``pg_stat_activity`` for its ``application_name`` (``routewatch serve
  4242@host``, see :mod:`routewatch.storage.session_name`), client address
  and start;
* the **sessions** whose ``application_name`` starts with ``routewatch``,
  grouped by that name: every ``run``, ``serve`` and ``probe`` connected;
* the **prober members** of each region (``shard_members``) with the shard
  leases each holds now (``shard_leases``) and when it last renewed.

``pg_stat_activity`` hides the client address of another role's sessions
unless the reader has ``pg_read_all_stats``; the text then says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from routewatch.storage.connection import Conn
from routewatch.storage.leadership import LEADER_LOCK_KEY
from routewatch.storage.session_name import PREFIX
from routewatch.storage.shard_leases import LEASE_TTL_S
from routewatch.storage.tables import SHARD_LEASES, SHARD_MEMBERS

# A bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1.
_LEADER = """
SELECT a.pid, a.application_name, host(a.client_addr) AS client_addr, a.client_port, a.backend_start
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid::bigint = $1 AND l.objid::bigint = $2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
# Sessions of this database only: several routewatch databases may share a server.
_SESSIONS = """
SELECT application_name, count(*) AS sessions,
       array_remove(array_agg(DISTINCT CASE WHEN client_port = -1 THEN 'local socket' ELSE host(client_addr) END),
                    NULL) AS clients
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND starts_with(application_name, $1)
GROUP BY application_name
ORDER BY application_name
"""
_MEMBERS = f"""
SELECT m.region, m.member, m.host, m.pid, m.joined_at, m.expires_at, m.expires_at > now() AS live,
       (SELECT count(*) FROM {SHARD_LEASES} l
        WHERE l.region = m.region AND l.owner = m.member AND l.expires_at > now()) AS shards
FROM {SHARD_MEMBERS} m
ORDER BY m.region, m.joined_at, m.member
"""
_REGIONS = f"""
SELECT region, count(*) AS shards, count(*) FILTER (WHERE owner IS NOT NULL AND expires_at > now()) AS held
FROM {SHARD_LEASES}
GROUP BY region
ORDER BY region
"""


@dataclass(frozen=True, slots=True)
class Leader:
    """The session holding the refresher lock."""

    backend_pid: int  # the server process serving the session, not the client's pid
    application_name: str | None  # None when pg_stat_activity no longer lists the session
    client: str | None  # "host:port", "local socket", or None where not visible to this role
    since: datetime | None  # when the session started


@dataclass(frozen=True, slots=True)
class Sessions:
    """The sessions of one routewatch process (one ``application_name``)."""

    application_name: str
    count: int
    clients: tuple[str, ...]  # client addresses; empty where not visible to this role


@dataclass(frozen=True, slots=True)
class Member:
    """One prober process of a region's group."""

    region: str
    member: str  # its random id (the leases' owner)
    host: str
    pid: int
    joined_at: datetime
    expires_at: datetime
    live: bool  # its membership has not expired
    shards: int  # leases it holds now (unexpired)

    @property
    def renewed_at(self) -> datetime:
        """Its last heartbeat: each renews the membership to ``now() + LEASE_TTL_S``."""
        return self.expires_at - timedelta(seconds=LEASE_TTL_S)


@dataclass(frozen=True, slots=True)
class Region:
    """A region's shards and how many of them are held."""

    region: str
    shards: int
    held: int


@dataclass(frozen=True, slots=True)
class Processes:
    """Who uses the database, as of ``now`` (the database's clock)."""

    now: datetime
    leader: Leader | None
    sessions: tuple[Sessions, ...]
    regions: tuple[Region, ...]
    members: tuple[Member, ...]  # live ones, and dead ones not yet forgotten (an hour), by region


async def processes(conn: Conn, *, shard_tables: bool = True) -> Processes:
    """Read the leader, the routewatch sessions and (where the tables exist) the prober members."""
    now: datetime = await conn.fetchval("SELECT now()")
    key = LEADER_LOCK_KEY
    row = await conn.fetchrow(_LEADER, key >> 32, key & 0xFFFF_FFFF)
    leader = None
    if row is not None:
        client = _client(row["client_addr"], row["client_port"])
        leader = Leader(row["pid"], row["application_name"], client, row["backend_start"])
    sessions = tuple(
        Sessions(r["application_name"], r["sessions"], tuple(sorted(r["clients"] or ())))
        for r in await conn.fetch(_SESSIONS, PREFIX)
    )
    regions: tuple[Region, ...] = ()
    members: tuple[Member, ...] = ()
    if shard_tables:
        regions = tuple(Region(r["region"], r["shards"], r["held"]) for r in await conn.fetch(_REGIONS))
        members = tuple(
            Member(
                r["region"], r["member"], r["host"], r["pid"], r["joined_at"], r["expires_at"], r["live"], r["shards"]
            )
            for r in await conn.fetch(_MEMBERS)
        )
    return Processes(now, leader, sessions, regions, members)


def _client(addr: str | None, port: int | None) -> str | None:
    if port == -1:
        return "local socket"
    if addr is None:
        return None
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def process_lines(found: Processes) -> list[str]:
    """The ``db status`` lines: the leader, the connected processes, each region's probers."""
    lines = [f"stats leader:    {_leader(found.leader)}"]
    if not found.sessions:
        lines.append("connected:       no routewatch process")
    for s in found.sessions:
        where = f" from {', '.join(s.clients)}" if s.clients else " (client address not visible to this role)"
        lines.append(f"connected:       {s.application_name}: {s.count} session{'s' if s.count != 1 else ''}{where}")
    if not found.regions:
        lines.append("probers:         none has joined (no shard leases)")
    for region in found.regions:
        mine = [m for m in found.members if m.region == region.region]
        live = sum(m.live for m in mine)
        lines.append(
            f"probers {region.region}: {live} live member{'s' if live != 1 else ''},"
            f" {region.held} of {region.shards} shards held"
        )
        lines += [f"  {_member(m, found.now)}" for m in mine]
    return lines


def _leader(leader: Leader | None) -> str:
    if leader is None:
        return "none (no `run` or `serve` holds the refresher lock; a standby takes it at its next refresh)"
    name = leader.application_name or "(session no longer listed)"
    client = leader.client or "client address not visible to this role"
    since = f", since {leader.since.isoformat(sep=' ', timespec='seconds')}" if leader.since else ""
    return f"{name} (session pid {leader.backend_pid}, {client}{since})"


def _member(m: Member, now: datetime) -> str:
    renewed = (now - m.renewed_at).total_seconds()
    left = (m.expires_at - now).total_seconds()
    head = f"member {m.member[:8]}: pid {m.pid} on {m.host}, {m.shards} shard{'s' if m.shards != 1 else ''}"
    if m.live:
        return f"{head}, renewed {renewed:.1f} s ago (lease ends in {left:.1f} s)"
    return f"{head}, gone: last renewed {renewed:.1f} s ago (lease ended {-left:.1f} s ago)"
