"""A prober process's shard leases turned into owned slots: two coordinators on the real database, each
telling its own phased schedule (on a scheduler never started) what it owns, through hand-overs both ways."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from routewatch.config import TimeoutsConfig
from routewatch.probe.scheduler import PhasedSchedule, Prober, Series, new_session
from routewatch.probe.slots import Tenure
from routewatch.probe.target import Canary, Target
from routewatch.shard_coordinator import ShardCoordinator
from routewatch.storage.migrate import migrate
from routewatch.storage.shard_leases import SHARDS

pytestmark = pytest.mark.db

SEC = 1_000_000


@pytest.fixture
async def setup(db_dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, aiohttp.ClientSession]]:
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    session = new_session(4)
    yield pool, session
    await session.close()
    await pool.close()


def coordinator(pool: asyncpg.Pool, session: aiohttp.ClientSession) -> ShardCoordinator:
    series = [
        Series(Target("sim", "http://127.0.0.1:9/v1", f"m{i}"), Canary("p", [{"role": "user", "content": "x"}], 8, 1))
        for i in range(300)
    ]
    prober = Prober(session, TimeoutsConfig(), "eu", 4)
    return ShardCoordinator(pool, "eu", PhasedSchedule(AsyncIOScheduler(), prober, series, 2.0, SHARDS))


def spans(c: ShardCoordinator) -> dict[int, tuple[Tenure, ...]]:
    return dict(c._schedule.ownership.tenures)


def assert_partition(a: ShardCoordinator, b: ShardCoordinator, start: int, end: int) -> None:
    """From ``start`` to ``end`` every shard's slots belong to exactly one of the two."""
    for shard in range(SHARDS):
        mine = sorted(
            [(t.start_us, t.end_us, "a") for t in spans(a).get(shard, ())]
            + [(t.start_us, t.end_us, "b") for t in spans(b).get(shard, ())]
        )
        covered = start
        for s, e, who in mine:
            if e <= start:
                continue
            s = max(s, start)
            assert s <= covered, f"shard {shard}: nobody owns {covered}..{s} ({mine})"
            assert s >= covered, f"shard {shard}: {who} owns {s}.. twice ({mine})"
            covered = e
        assert covered >= end, f"shard {shard}: nobody owns {covered}.. ({mine})"


async def test_shards_go_and_come_back_with_every_slot_owned_once(
    setup: tuple[asyncpg.Pool, aiohttp.ClientSession],
) -> None:
    pool, session = setup
    a, b = coordinator(pool, session), coordinator(pool, session)
    await a.join()
    assert len(spans(a)) == SHARDS
    t0 = a._schedule.clock.now_us()
    await b.join()
    await a.beat()  # offers half, up to a point 3 s ahead
    await b.beat()  # takes them from that point
    given = {s for s, t in spans(b).items()}
    assert len(given) == SHARDS // 2
    point = min(t.start_us for s in given for t in spans(b)[s])
    assert point > t0
    await a.beat()  # a keeps the given shards up to the point
    assert all(spans(a)[s][-1].end_us == point for s in given)
    assert_partition(a, b, t0, point + SEC)  # leases run 6 s ahead: known up to there
    # b leaves: everything it holds goes back to a from b's own hand-over point, while a
    # still holds what it gave up to the first point. a beats while b waits for its point.
    leaving = asyncio.create_task(b.leave())
    await asyncio.sleep(0.2)
    await a.beat()
    assert a.last is not None and len(a.last.leases) == SHARDS
    back = {s: spans(a)[s] for s in given}
    assert all(len(two) == 2 and two[0].end_us == point for two in back.values()), back
    second_point = {two[1].start_us for two in back.values()}
    assert len(second_point) == 1 and second_point.pop() > point
    await leaving
    assert_partition(a, b, t0, max(t.start_us for two in back.values() for t in two) + SEC)
