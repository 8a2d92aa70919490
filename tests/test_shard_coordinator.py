"""A prober process's shard leases turned into owned slots: two coordinators on the real database, each
telling its own phased schedule (on a scheduler never started) what it owns, through hand-overs both ways
and a partition of one of them from the database (a relay on loopback that stops relaying)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from routewatch.config import TimeoutsConfig
from routewatch.probe.scheduler import PhasedSchedule, Prober, Series, new_session
from routewatch.probe.slots import Tenure, interval_us, phase_us, slot_at_or_before, slot_time
from routewatch.probe.target import Canary, Target
from routewatch.shard_coordinator import ShardCoordinator
from routewatch.storage.errors import DATABASE_ERRORS
from routewatch.storage.migrate import migrate
from routewatch.storage.shard_leases import SHARDS
from routewatch.storage.tables import SHARD_MEMBERS

pytestmark = pytest.mark.db

SEC = 1_000_000


@pytest.fixture
async def coordinator(db_dsn: str, conn: asyncpg.Connection) -> AsyncIterator[Callable[[str], ShardCoordinator]]:
    """Makes coordinators (on the migrated test database, or another URL to it), closed afterwards."""
    await migrate(conn)
    session = new_session(4)
    made: list[ShardCoordinator] = []

    def make(dsn: str = db_dsn) -> ShardCoordinator:
        series = [
            Series(
                Target("sim", "http://127.0.0.1:9/v1", f"m{i}"), Canary("p", [{"role": "user", "content": "x"}], 8, 1)
            )
            for i in range(300)
        ]
        prober = Prober(session, TimeoutsConfig(), "eu", 4)
        made.append(ShardCoordinator(dsn, "eu", PhasedSchedule(AsyncIOScheduler(), prober, series, 2.0, SHARDS)))
        return made[-1]

    yield make
    for c in made:
        await c.close()
    await session.close()


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
    coordinator: Callable[..., ShardCoordinator], conn: asyncpg.Connection
) -> None:
    a, b = coordinator(), coordinator()
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
    async with asyncio.timeout(10):  # b's leave has committed (one transaction: its row goes, its leases offered)
        while await conn.fetchval(f"SELECT count(*) FROM {SHARD_MEMBERS} WHERE member = $1", b.member):
            await asyncio.sleep(0.02)
    await a.beat()
    assert a.last is not None and len(a.last.leases) == SHARDS
    back = {s: spans(a)[s] for s in given}
    assert all(len(two) == 2 and two[0].end_us == point for two in back.values()), back
    second_point = {two[1].start_us for two in back.values()}
    assert len(second_point) == 1 and second_point.pop() > point
    await leaving
    assert_partition(a, b, t0, max(t.start_us for two in back.values() for t in two) + SEC)


async def test_a_series_added_after_its_slot_passed_is_first_probed_at_its_next_slot(
    coordinator: Callable[..., ShardCoordinator],
) -> None:
    """A shard just taken over has the slots of its known series that passed since its tenure began
    probed at once. A series added since (a model just discovered) missed none of them: its first probe
    is at its next slot, so the first probes of new models stay spread over the interval, not bunched
    at the moment the list read ends."""
    a = coordinator()
    await a.join()
    schedule = a._schedule
    began = min(t.start_us for spans in schedule.ownership.tenures.values() for t in spans)
    await asyncio.sleep(0.5)  # a quarter of the interval of slots passes inside the tenure
    now = schedule.clock.now_us()
    interval = interval_us(2.0)
    canary = schedule.series[0].canary
    new = [Series(Target("sim", "http://127.0.0.1:9/v1", f"new/m{i}"), canary) for i in range(100)]

    def last_slot(key: str) -> int:
        phase = phase_us(key, interval)
        return slot_time(slot_at_or_before(now, phase, interval), phase, interval)

    passed = [s for s in new if last_slot(s.key) > began]
    assert passed, "no new series had a slot since the tenure began"
    await schedule.replace([*schedule.series, *new], 2.0)
    for s in passed:
        job = schedule._scheduler.get_job(s.key)
        assert job is not None, s.key
        due = schedule.clock.from_local(job.next_run_time)
        assert due > now and (due - phase_us(s.key, interval)) % interval == 0, (s.key, due - now)


class Partition:
    """A TCP relay to the database on loopback that can stop relaying (a partition: no reset,
    no answer, the connections left open) and start again."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._open = asyncio.Event()
        self._open.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    await self._open.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        pumps = [asyncio.create_task(pump(reader, up_writer)), asyncio.create_task(pump(up_reader, writer))]
        self._tasks.update(pumps)
        await asyncio.gather(*pumps)

    async def close(self) -> None:
        self.heal()
        if self.server is not None:
            self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_a_member_cut_off_stops_probing_before_another_takes_its_shards(
    coordinator: Callable[..., ShardCoordinator], db_dsn: str
) -> None:
    parts = urlsplit(db_dsn)
    partition = Partition(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await partition.start()
    relayed = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{port}"))
    try:
        a, b = coordinator(relayed), coordinator()
        await a.join()
        await b.join()
        for member in (a, b, a, b):  # even shares
            await member.beat()
        held_by_a = {lease.shard for lease in a.last.leases} if a.last else set()
        assert len(held_by_a) == SHARDS // 2
        partition.cut()
        before = a._schedule.clock.now_us()
        with pytest.raises(TimeoutError):
            await a.beat()  # its deadline stands: the end of the lease it renewed last
        # That heartbeat may have committed unheard, offering shards at a point a lead after it
        # began: until a heartbeat succeeds, nothing from a second before that point is a's.
        ends = [t.end_us for shard in held_by_a for t in a._schedule.ownership.tenures[shard]]
        assert len(ends) == SHARDS // 2 and max(ends) <= before + 2 * SEC + 50_000
        while True:  # b takes a's shards once a's leases have run out in the database
            await b.beat()
            if b.last and held_by_a <= {lease.shard for lease in b.last.leases}:
                break
            await asyncio.sleep(0.2)
        taken_at = time.monotonic()
        now_us = b._schedule.clock.now_us()
        for shard in held_by_a:
            assert not a._schedule.ownership.owns(shard, now_us, taken_at), shard  # a had stopped already
            assert b._schedule.ownership.owns(shard, now_us + 2 * SEC, taken_at)
        # a's deadline passed no later than its leases ended in the database, before b's claim
        deadline = a._schedule.ownership.deadline
        assert deadline is not None and deadline <= taken_at
        partition.heal()
        for _ in range(20):  # a rejoins when it can reach the database again: nothing renewed, a fresh share
            try:
                await a.beat()
            except (TimeoutError, *DATABASE_ERRORS):
                await asyncio.sleep(0.2)
                continue
            break
        for member in (b, a, b, a):
            await member.beat()
        assert a.last is not None and len(a.last.leases) == SHARDS // 2
    finally:
        await partition.close()
