"""Shard leases: how the prober processes of one region split its series, through PostgreSQL alone.

The prober hashes every series to one of :data:`SHARDS` shards. Each
(region, shard) has a row in ``shard_leases``; the process that holds its
lease (a *member* of the region's group, registered in ``shard_members``)
probes the shard's series. Nothing but row locks and the database's clock
coordinates the members:

* a heartbeat (:func:`beat`, every :data:`HEARTBEAT_S`) renews the member's
  row and its leases to ``now() + LEASE_TTL_S`` and counts the live members;
* from that count each member has a target (:func:`fair_target`: the shards
  divided evenly, the remainder to the longest-standing members); a member
  under its target claims free, expired or offered leases with ``FOR UPDATE
  SKIP LOCKED`` (two claimants never wait for each other, and never both get
  a row); a member over it *offers* its extras: ``handover_at = now() +
  HANDOVER_LEAD_S`` on the row, renewed at each beat until another member
  takes it;
* a taker of an offered lease probes from ``handover_at`` on, and the giver
  before it, so no slot is probed twice or skipped; a taker of an expired or
  free lease probes from the moment it took it;
* :func:`leave` offers every lease at once on a clean stop (or frees them,
  for the last member), so that the others take over without a gap.

A member that cannot renew stops probing when its lease ends (the caller
keeps a deadline on its own monotonic clock, started before the heartbeat's
transaction, so it ends before the lease does in the database). Every time
written or compared here is the database's ``now()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from routewatch.storage.connection import Conn
from routewatch.storage.tables import SHARD_LEASES, SHARD_MEMBERS

# Fixed for every member of every version: a series' shard is its hash modulo
# this number, so members disagreeing on it would split series differently.
# With 128, the busiest of up to 16 members holds at most 9.4% more shards
# than an even split (14 members: 10 against 9.14; none at 1, 2, 4, 8, 16),
# and a heartbeat still renews at most 128 small rows. More members than
# shards leave some members idle.
SHARDS = 128
# How often a member renews its leases.
HEARTBEAT_S = 2.0
# How long a lease lasts without renewal: two heartbeats may fail (a slow
# query, a failover blip, a pause of the process) before a member stops
# probing and another takes its shards.
LEASE_TTL_S = 6.0
# How far ahead of an offer the hand-over point lies: more than a heartbeat,
# so that the taker has claimed the shard (at its next heartbeat) before the
# point comes; less than the lease, so the point lies within it.
HANDOVER_LEAD_S = 3.0
# After SIGKILL a member's shards are taken at most this long after its last
# heartbeat: its leases expire, and the other members claim them at their
# next heartbeat.
TAKEOVER_S = LEASE_TTL_S + HEARTBEAT_S
# A member row this long past its expiry is deleted (it is only kept to be seen).
STALE_MEMBER_S = 3600.0
# A heartbeat waits at most this long for a row lock (another member's
# heartbeat holding it); past it the heartbeat fails and is retried.
LOCK_TIMEOUT = "1s"

_ENSURE_LEASES = f"""
INSERT INTO {SHARD_LEASES} (region, shard)
SELECT $1, s FROM generate_series(0, $2::int - 1) AS s
ON CONFLICT DO NOTHING
"""
_FORGET_STALE = f"""
DELETE FROM {SHARD_MEMBERS} WHERE region = $1 AND expires_at < now() - make_interval(secs => $2)
"""
_UPSERT_MEMBER = f"""
INSERT INTO {SHARD_MEMBERS} (region, member, host, pid, expires_at)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
ON CONFLICT (region, member) DO UPDATE SET expires_at = EXCLUDED.expires_at
RETURNING now() AS now, expires_at
"""
_LIVE_MEMBERS = f"""
SELECT member FROM {SHARD_MEMBERS} WHERE region = $1 AND expires_at > now() ORDER BY joined_at, member
"""
# Renew the leases still held (an expired one may already be another's: it is
# claimed again like any other). An offer not yet taken moves on with the
# beat, so its hand-over point always lies a lead ahead of the giver's last beat.
_RENEW = f"""
UPDATE {SHARD_LEASES}
SET expires_at = now() + make_interval(secs => $3),
    handover_at = CASE WHEN handover_at IS NULL THEN NULL ELSE now() + make_interval(secs => $4) END
WHERE region = $1 AND owner = $2 AND expires_at > now() AND shard < $5
RETURNING shard, handover_at IS NOT NULL AS offered
"""
_OFFER = f"""
UPDATE {SHARD_LEASES} SET handover_at = now() + make_interval(secs => $3)
WHERE region = $1 AND owner = $2 AND shard = ANY($4::int[]) AND handover_at IS NULL
RETURNING shard
"""
_WITHDRAW = f"""
UPDATE {SHARD_LEASES} SET handover_at = NULL
WHERE region = $1 AND owner = $2 AND shard = ANY($3::int[])
RETURNING shard
"""
# Free and expired leases first (nobody probes them), then offered ones. A
# taker of an offer starts at its hand-over point (the giver probes before
# it), or now if that point has passed; of a free or expired lease, now.
# In SET, the l.* on the right are the row's values before this update.
_CLAIM = f"""
WITH pick AS (
    SELECT shard FROM {SHARD_LEASES}
    WHERE region = $1 AND shard < $5
      AND (owner IS NULL OR expires_at <= now() OR (handover_at IS NOT NULL AND owner <> $2))
    ORDER BY (owner IS NULL OR expires_at <= now()) DESC, shard
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE {SHARD_LEASES} AS l
SET owner = $2,
    owned_from = CASE WHEN l.owner IS NOT NULL AND l.expires_at > now() THEN greatest(l.handover_at, now())
                      ELSE now() END,
    handover_at = NULL,
    expires_at = now() + make_interval(secs => $4)
FROM pick
WHERE l.region = $1 AND l.shard = pick.shard
RETURNING l.shard
"""
_MINE = f"""
SELECT shard, owned_from, least(coalesce(handover_at, 'infinity'), expires_at) AS until,
       handover_at IS NOT NULL AS offered
FROM {SHARD_LEASES}
WHERE region = $1 AND owner = $2 AND expires_at > now() AND shard < $3
ORDER BY shard
"""
_DELETE_MEMBER = f"DELETE FROM {SHARD_MEMBERS} WHERE region = $1 AND member = $2"
_OFFER_ALL = f"""
UPDATE {SHARD_LEASES}
SET handover_at = now() + make_interval(secs => $3), expires_at = now() + make_interval(secs => $4)
WHERE region = $1 AND owner = $2 AND expires_at > now()
"""
_RELEASE_ALL = f"""
UPDATE {SHARD_LEASES} SET owner = NULL, owned_from = NULL, expires_at = NULL, handover_at = NULL
WHERE region = $1 AND owner = $2
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """A shard this member holds: it probes the slots in [owned_from, until)."""

    shard: int
    owned_from: datetime
    until: datetime  # the lease's expiry, or the hand-over point of an offer if sooner
    offered: bool


@dataclass(frozen=True, slots=True)
class Beat:
    """What one heartbeat found and did, on the database's clock."""

    now: datetime  # the heartbeat transaction's now(): leases were renewed to now + the TTL
    expires_at: datetime
    members: int  # live members of the region, this one included
    target: int  # the shards this member should hold
    leases: tuple[Lease, ...]  # every shard it holds after the beat
    claimed: tuple[int, ...]
    offered: tuple[int, ...]  # newly offered to the others
    withdrawn: tuple[int, ...]  # offers taken back (the member is short again)


def fair_target(members: Sequence[str], member: str, shards: int = SHARDS) -> int:
    """How many shards ``member`` should hold among ``members`` (live, longest-standing first).

    The shards are divided evenly; the first ``shards % len(members)`` members
    hold one more. So targets add up to ``shards`` exactly and differ by at
    most one, and a member keeps its place (and its extra shard) while later
    members come and go. A member not listed counts as the last.
    """
    order = list(members) if member in members else [*members, member]
    base, extra = divmod(shards, len(order))
    return base + (1 if order.index(member) < extra else 0)


async def join(conn: Conn, region: str, shards: int = SHARDS) -> None:
    """Make sure ``region`` has its lease rows, and forget long-dead members. Idempotent."""
    async with conn.transaction():
        await conn.execute(_ENSURE_LEASES, region, shards)
        await conn.execute(_FORGET_STALE, region, STALE_MEMBER_S)


async def beat(
    conn: Conn,
    region: str,
    member: str,
    host: str,
    pid: int,
    *,
    shards: int = SHARDS,
    ttl_s: float = LEASE_TTL_S,
    lead_s: float = HANDOVER_LEAD_S,
) -> Beat:
    """One heartbeat of ``member``, in one transaction: renew, count, then claim or offer toward the target.

    A member over its target offers its highest-numbered extra shards; one
    under it first takes back its own untaken offers, then claims. Raises what
    the database raises (the caller keeps its leases' deadline and retries).
    """
    if not 0 < lead_s < ttl_s:
        raise ValueError(f"the hand-over lead ({lead_s:g}s) must be positive and shorter than the lease ({ttl_s:g}s)")
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        me = await conn.fetchrow(_UPSERT_MEMBER, region, member, host, pid, ttl_s)
        assert me is not None  # an upsert with RETURNING returns its row
        members = [r["member"] for r in await conn.fetch(_LIVE_MEMBERS, region)]
        target = fair_target(members, member, shards)
        renewed = await conn.fetch(_RENEW, region, member, ttl_s, lead_s, shards)
        kept = sorted(r["shard"] for r in renewed if not r["offered"])
        pending = sorted(r["shard"] for r in renewed if r["offered"])
        offered: list[int] = []
        withdrawn: list[int] = []
        claimed: list[int] = []
        if len(kept) > target:
            rows = await conn.fetch(_OFFER, region, member, lead_s, kept[target:])
            offered = sorted(r["shard"] for r in rows)
        elif len(kept) < target:
            short = target - len(kept)
            if pending:
                rows = await conn.fetch(_WITHDRAW, region, member, pending[:short])
                withdrawn = sorted(r["shard"] for r in rows)
                short -= len(withdrawn)
            if short > 0:
                rows = await conn.fetch(_CLAIM, region, member, short, ttl_s, shards)
                claimed = sorted(r["shard"] for r in rows)
        leases = tuple(
            Lease(r["shard"], r["owned_from"], r["until"], r["offered"])
            for r in await conn.fetch(_MINE, region, member, shards)
        )
    return Beat(
        now=me["now"],
        expires_at=me["expires_at"],
        members=len(members),
        target=target,
        leases=leases,
        claimed=tuple(claimed),
        offered=tuple(offered),
        withdrawn=tuple(withdrawn),
    )


async def leave(
    conn: Conn,
    region: str,
    member: str,
    *,
    ttl_s: float = LEASE_TTL_S,
    lead_s: float = HANDOVER_LEAD_S,
) -> datetime:
    """Leave the group on a clean stop; return the hand-over point (database clock).

    The member's row goes at once, so the others' targets grow at their next
    beat. Every lease it holds is offered with one hand-over point a lead
    ahead: the member probes the slots before it, the takers those from it.
    With no other live member there is nobody to hand over to: the leases are
    freed and the point is now.
    """
    async with conn.transaction():
        await conn.execute(_DELETE_MEMBER, region, member)
        now: datetime = await conn.fetchval("SELECT now()")
        others = [r["member"] for r in await conn.fetch(_LIVE_MEMBERS, region)]
        if not others:
            await conn.execute(_RELEASE_ALL, region, member)
            return now
        await conn.execute(_OFFER_ALL, region, member, lead_s, ttl_s)
        point: datetime = await conn.fetchval("SELECT now() + make_interval(secs => $1)", lead_s)
        return point
