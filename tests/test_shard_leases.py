"""Shard leases against the real database: fair shares, claims, offers, hand-over points, expiry, leaving.

The heartbeats are driven by the tests (several members on their own
connections, concurrently where it matters), with the real lease times
except where expiry is the point.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import pytest

from routewatch.storage import shard_leases
from routewatch.storage.migrate import migrate
from routewatch.storage.shard_leases import SHARDS, Beat, beat, fair_target, join, leave

REGION = "eu"


# ---------------------------------------------------------------- fair shares (pure)


@pytest.mark.unit
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 14, 127, 128, 200])
def test_fair_targets_add_up_and_differ_by_at_most_one(n: int) -> None:
    members = [f"m{i:03d}" for i in range(n)]
    targets = [fair_target(members, m) for m in members]
    assert sum(targets) == SHARDS
    assert max(targets) - min(targets) <= 1
    assert targets == sorted(targets, reverse=True)  # the longest-standing hold the extra shards


@pytest.mark.unit
def test_a_member_not_listed_counts_as_the_last() -> None:
    assert fair_target(["a", "b"], "c") == fair_target(["a", "b", "c"], "c") == 42
    assert fair_target(["a", "b"], "a") == 64


# ---------------------------------------------------------------- the database


@pytest.fixture
async def members(db_dsn: str) -> AsyncIterator[list[asyncpg.Connection]]:
    """Five connections to a migrated database, one per member."""
    conns = [await asyncpg.connect(db_dsn) for _ in range(5)]
    await migrate(conns[0])
    await join(conns[0], REGION)
    yield conns
    for conn in conns:
        await conn.close()


async def _beat(conn: asyncpg.Connection, name: str, **times: float) -> Beat:
    return await beat(conn, REGION, name, "host", 1, **times)


async def _owners(conn: asyncpg.Connection) -> dict[str | None, int]:
    rows = await conn.fetch("SELECT owner, count(*) AS n FROM shard_leases WHERE region = $1 GROUP BY owner", REGION)
    return {r["owner"]: r["n"] for r in rows}


@pytest.mark.db
async def test_the_first_member_holds_every_shard(members: list[asyncpg.Connection]) -> None:
    got = await _beat(members[0], "a")
    assert (got.members, got.target, len(got.leases), len(got.claimed)) == (1, SHARDS, SHARDS, SHARDS)
    assert all(lease.owned_from == got.now and lease.until == got.expires_at for lease in got.leases)
    assert got.expires_at - got.now == timedelta(seconds=shard_leases.LEASE_TTL_S)
    assert await _owners(members[0]) == {"a": SHARDS}
    again = await _beat(members[0], "a")  # renewing moves nothing
    assert (again.claimed, again.offered) == ((), ())
    assert [lease.owned_from for lease in again.leases] == [lease.owned_from for lease in got.leases]


@pytest.mark.db
async def test_a_joining_member_takes_its_share_from_the_hand_over_point(members: list[asyncpg.Connection]) -> None:
    a, b = members[0], members[1]
    await _beat(a, "a")
    first = await _beat(b, "b")  # nothing is free yet
    assert (first.target, first.leases) == (SHARDS // 2, ())
    offer = await _beat(a, "a")  # a sees two members: offers its extras, keeps probing them until the point
    assert len(offer.offered) == SHARDS // 2
    point = offer.now + timedelta(seconds=shard_leases.HANDOVER_LEAD_S)
    assert {lease.shard: lease.until for lease in offer.leases if lease.offered} == dict.fromkeys(offer.offered, point)
    taken = await _beat(b, "b")
    assert sorted(taken.claimed) == sorted(offer.offered)
    assert {lease.owned_from for lease in taken.leases} == {point}  # b probes from the point on
    after = await _beat(a, "a")
    assert len(after.leases) == SHARDS // 2 and not set(after.offered)
    assert not {lease.shard for lease in after.leases} & set(taken.claimed)
    assert await _owners(a) == {"a": SHARDS // 2, "b": SHARDS // 2}


@pytest.mark.db
async def test_an_expired_member_is_taken_over_from_the_moment_of_the_claim(members: list[asyncpg.Connection]) -> None:
    a, b = members[0], members[1]
    short = {"ttl_s": 0.3, "lead_s": 0.1}
    held = await _beat(a, "a", **short)
    await _beat(b, "b", **short)
    await asyncio.sleep(0.4)  # a stops beating: its leases and its membership run out
    taken = await _beat(b, "b", **short)
    assert taken.members == 1 and len(taken.leases) == SHARDS
    assert all(lease.owned_from >= held.expires_at for lease in taken.leases)  # never a slot a could still probe
    back = await _beat(a, "a", **short)  # a comes back (a pause, say): it renews nothing, it rejoins
    assert back.leases == () and back.target == SHARDS // 2


@pytest.mark.db
async def test_leaving_offers_everything_at_one_point_and_the_last_member_frees_it(
    members: list[asyncpg.Connection],
) -> None:
    a, b = members[0], members[1]
    await _beat(a, "a")
    await _beat(b, "b")
    await _beat(a, "a")
    await _beat(b, "b")
    point = await leave(a, REGION, "a")
    taken = await _beat(b, "b")
    assert taken.members == 1 and len(taken.claimed) == SHARDS // 2
    assert {lease.owned_from for lease in taken.leases if lease.shard in taken.claimed} == {point}
    assert point - taken.now <= timedelta(seconds=shard_leases.HANDOVER_LEAD_S)
    freed = await leave(b, REGION, "b")
    assert await _owners(b) == {None: SHARDS}
    assert freed <= await b.fetchval("SELECT now()")


@pytest.mark.db
async def test_concurrent_members_even_out_and_no_two_ever_own_the_same_slot(
    members: list[asyncpg.Connection],
) -> None:
    """Members beat at once, in shuffled order, as they join and leave; every tenure any of
    them was given is recorded as it last saw it, and tenures of one shard never overlap."""
    rng = random.Random(7)
    tenures: dict[tuple[str, int, datetime], datetime] = {}  # (member, shard, from) -> until, as last seen

    async def jittered(name: str) -> Beat:
        # Heartbeats are jittered (a claim skips the rows another member's heartbeat
        # holds locked at that moment; two members beating in step would always collide).
        await asyncio.sleep(rng.uniform(0, 0.02))
        return await _beat(members[int(name[1:])], name)

    async def round_of(names: list[str]) -> dict[str, Beat]:
        order = names[:]
        rng.shuffle(order)
        beats = await asyncio.gather(*(jittered(n) for n in order))
        for name, got in zip(order, beats, strict=True):
            for lease in got.leases:
                tenures[(name, lease.shard, lease.owned_from)] = lease.until
        return dict(zip(order, beats, strict=True))

    async def settle(names: list[str]) -> None:
        for _ in range(6):
            beats = await round_of(names)
        shares = {name: len(got.leases) for name, got in beats.items()}
        assert sum(shares.values()) == SHARDS
        assert shares == {name: beats[name].target for name in names}
        assert max(shares.values()) - min(shares.values()) <= 1
        assert await _owners(members[0]) == shares

    await settle(["m0", "m1", "m2"])
    await settle(["m0", "m1", "m2", "m3"])
    point = await leave(members[1], REGION, "m1")
    for key, until in tenures.items():  # a member that left probes up to its hand-over point
        if key[0] == "m1":
            tenures[key] = min(until, point)
    await settle(["m0", "m2", "m3"])
    await settle(["m0", "m2", "m3", "m4"])

    by_shard: dict[int, list[tuple[datetime, datetime, str]]] = {}
    for (name, shard, start), until in tenures.items():
        by_shard.setdefault(shard, []).append((start, until, name))
    moved = 0
    for shard, spans in by_shard.items():
        spans.sort()
        for (_start, until, name), (next_start, _, next_name) in zip(spans, spans[1:]):
            assert until <= next_start, f"shard {shard}: {name} until {until}, {next_name} from {next_start}"
            moved += 1
    assert moved >= SHARDS // 2  # shards did change hands
