"""What a server says about streaming replication: its standbys, or how far behind it is as one.

Two views, both read-only and cheap (catalog functions and one system view):

* on a primary, :func:`standbys` lists ``pg_stat_replication``: each standby's
  name, state, ``sync_state`` and how far its replay is behind, in time and in
  bytes of WAL; :func:`unsynchronised` says when the primary has standbys and
  none is synchronous (a failover may then lose acknowledged commits);
* on a standby (a hot standby in recovery), :func:`replica_lag` tells how far
  behind the primary its replay is.

``routewatch db status`` prints both; a ``serve`` reading from a replica
publishes the lag as a gauge; the leader warns about an unsynchronised primary.
"""

from __future__ import annotations

from dataclasses import dataclass

from routewatch.storage.connection import Conn

# sync_state values that make a commit wait for the standby (pg_stat_replication).
SYNCHRONOUS_STATES = frozenset({"sync", "quorum"})

_STANDBYS = """
SELECT coalesce(nullif(application_name, ''), 'unnamed') AS name,
       coalesce(host(client_addr), 'local socket') AS address,
       coalesce(state, 'unknown') AS state,
       coalesce(sync_state, 'unknown') AS sync_state,
       extract(epoch FROM replay_lag)::float8 AS replay_lag_s,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 AS replay_behind_bytes
FROM pg_stat_replication
ORDER BY application_name, client_addr
"""

# On a standby. Replay has caught up with what was received: nothing to wait for,
# 0 s, however long ago the last transaction was (no traffic is not lag). Else the
# age of the last transaction replayed: how far behind the primary's commits it shows.
_REPLICA_LAG = """
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0.0
            ELSE greatest(0.0, extract(epoch FROM now() - pg_last_xact_replay_timestamp()))::float8
       END AS lag_s,
       (SELECT status FROM pg_stat_wal_receiver LIMIT 1) AS receiver
"""


@dataclass(frozen=True, slots=True)
class Standby:
    """One standby of a primary, as ``pg_stat_replication`` shows it."""

    name: str  # application_name (the standby's cluster_name or walreceiver)
    address: str
    state: str  # streaming, catchup, backup, startup, stopping
    sync_state: str  # async, potential, sync, quorum
    replay_lag_s: float | None  # None: no recent WAL to time (an idle primary) or not measured yet
    replay_behind_bytes: float | None

    @property
    def synchronous(self) -> bool:
        """Whether a commit on the primary waits for this standby."""
        return self.sync_state in SYNCHRONOUS_STATES


@dataclass(frozen=True, slots=True)
class ReplicaLag:
    """How far a server is behind its primary, read on that server."""

    in_recovery: bool  # False: this server is a primary (or promoted), not a replica
    lag_s: float | None  # seconds behind; None on a primary
    receiver: str | None  # the WAL receiver's status (streaming, …); None when it is not connected


async def standbys(conn: Conn) -> list[Standby]:
    """The standbys connected to this server (none on a standby or a lone primary)."""
    if await conn.fetchval("SELECT pg_is_in_recovery()"):
        return []
    rows = await conn.fetch(_STANDBYS)
    return [
        Standby(
            str(r["name"]),
            str(r["address"]),
            str(r["state"]),
            str(r["sync_state"]),
            r["replay_lag_s"],
            r["replay_behind_bytes"],
        )
        for r in rows
    ]


def unsynchronised(found: list[Standby]) -> bool:
    """Whether there are standbys and none of them is synchronous.

    False when a sync state is hidden (``unknown``: the role lacks
    ``pg_read_all_stats``), since it cannot be told.
    """
    known = all(s.sync_state != "unknown" for s in found)
    return bool(found) and known and not any(s.synchronous for s in found)


async def replica_lag(conn: Conn) -> ReplicaLag:
    """How far this server is behind its primary (see the module docstring)."""
    row = await conn.fetchrow(_REPLICA_LAG)
    assert row is not None
    return ReplicaLag(bool(row["in_recovery"]), row["lag_s"], row["receiver"])


def describe_standbys(found: list[Standby]) -> str:
    """One line for ``db status``: each standby with its sync state and lag."""
    if not found:
        return "no standbys connected"
    parts = []
    for s in found:
        lag = f"replay {s.replay_lag_s:.1f} s behind" if s.replay_lag_s is not None else "replay caught up"
        behind = f", {int(s.replay_behind_bytes):,} bytes of WAL" if s.replay_behind_bytes else ""
        parts.append(f"{s.name} at {s.address} ({s.state}, {s.sync_state}, {lag}{behind})")
    line = "; ".join(parts)
    if any(s.sync_state == "unknown" for s in found):
        line += "; sync state hidden: the role needs pg_read_all_stats to see it"
    elif unsynchronised(found):
        line += "; none is synchronous: a failover may lose commits the primary acknowledged"
    return line


def describe_lag(lag: ReplicaLag) -> str:
    """One line for ``db status`` about a server that may be a replica."""
    if not lag.in_recovery:
        return "a primary (not in recovery)"
    receiver = lag.receiver or "not connected to its primary"
    return f"a replica, {lag.lag_s or 0.0:.1f} s behind its primary (WAL receiver: {receiver})"
