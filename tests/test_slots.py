"""Deterministic probe times: shard and phase of a series, the slot grid, hand-overs, the phased schedule's jobs.

Pure: the phased schedule's jobs are read from a scheduler that is never
started, and slots are taken with explicit clock readings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from hypothesis import given
from hypothesis import strategies as st

from routewatch.config import TimeoutsConfig
from routewatch.probe.scheduler import PhasedSchedule, Prober, Series, SlotTrigger, new_session
from routewatch.probe.slots import (
    Ownership,
    SharedClock,
    Tenure,
    first_slot_from,
    from_us,
    interval_us,
    phase_us,
    shard_of,
    slot_at_or_before,
    slot_time,
    to_us,
)
from routewatch.probe.target import Canary, Target

pytestmark = pytest.mark.unit

SHARDS = 128
SEC = 1_000_000


def series(n: int, prompts: int = 1) -> list[Series]:
    out = []
    for i in range(n):
        target = Target("sim", "http://127.0.0.1:9/v1", f"model-{i:04d}")
        for p in range(prompts):
            out.append(Series(target, Canary(f"p{p}", [{"role": "user", "content": "hi"}], 16, 1)))
    return out


# ---------------------------------------------------------------- shard and phase


def test_shard_and_phase_are_the_same_in_every_process_and_release() -> None:
    # Pinned: every member must compute these alike, and a release that changed
    # them would move every series to another shard and time at once.
    assert shard_of("orcarouter|openai/gpt-4.1-nano|short", SHARDS) == 103
    assert phase_us("orcarouter|openai/gpt-4.1-nano|short", 60 * SEC) == 55_972_782
    assert (shard_of("r|m|p", SHARDS), phase_us("r|m|p", 60 * SEC)) == (54, 6_426_806)


def test_phases_spread_starts_evenly_over_the_interval() -> None:
    interval = 60 * SEC
    bins = Counter(phase_us(s.key, interval) * 10 // interval for s in series(1000, prompts=2))
    assert sorted(bins) == list(range(10))
    assert all(140 <= n <= 260 for n in bins.values()), bins  # 200 each on average


def test_series_spread_over_every_shard() -> None:
    counts = Counter(shard_of(s.key, SHARDS) for s in series(5000, prompts=2))
    assert len(counts) == SHARDS
    assert all(40 <= n <= 120 for n in counts.values()), counts  # 78 each on average


# ---------------------------------------------------------------- the slot grid


@given(
    t=st.integers(-(10**16), 10**16),
    interval=st.integers(1, 10**10),
    phase_seed=st.integers(0, 10**10),
)
def test_slot_maths(t: int, interval: int, phase_seed: int) -> None:
    phase = phase_seed % interval
    first = first_slot_from(t, phase, interval)
    assert t <= first < t + interval
    assert (first - phase) % interval == 0
    k = slot_at_or_before(t, phase, interval)
    assert slot_time(k, phase, interval) <= t < slot_time(k + 1, phase, interval)
    assert first_slot_from(slot_time(k, phase, interval), phase, interval) == slot_time(k, phase, interval)


def test_times_convert_to_microseconds_exactly() -> None:
    moment = datetime(2031, 5, 6, 7, 8, 9, 123_457, tzinfo=UTC)
    assert from_us(to_us(moment)) == moment
    assert to_us(moment) % SEC == 123_457
    assert interval_us(2.5) == 2_500_000
    assert interval_us(0.1) == 100_000


# ---------------------------------------------------------------- ownership and hand-over


def test_ownership_needs_a_tenure_and_the_deadline_not_passed() -> None:
    owned = Ownership({3: (Tenure(10 * SEC, 20 * SEC),)}, deadline=100.0)
    assert owned.owns(3, 10 * SEC, 99.0)
    assert not owned.owns(3, 20 * SEC, 99.0)  # the end is the next owner's
    assert not owned.owns(3, 9 * SEC, 99.0)
    assert not owned.owns(4, 15 * SEC, 99.0)
    assert not owned.owns(3, 15 * SEC, 100.0)  # leases not renewed in time: nothing is owned
    assert Ownership.everything(range(SHARDS)).owns(127, -(10**15), 1e12)
    # Given away at 20 s, back from 40 s: the slots between are another's.
    back = Ownership({3: (Tenure(10 * SEC, 20 * SEC), Tenure(40 * SEC, 50 * SEC))}, deadline=100.0)
    assert [back.owns(3, t * SEC, 0.0) for t in (15, 20, 39, 40, 49, 50)] == [True, False, False, True, True, False]


@pytest.fixture
async def make_schedule() -> AsyncIterator[Callable[..., PhasedSchedule]]:
    """PhasedSchedules on schedulers never started; their probers' sessions are closed afterwards."""
    sessions: list[aiohttp.ClientSession] = []

    def make(keys: list[Series], interval_s: float, offset_us: int = 0) -> PhasedSchedule:
        session = new_session(4)
        sessions.append(session)
        prober = Prober(session, TimeoutsConfig(), "test", 4)
        return PhasedSchedule(AsyncIOScheduler(), prober, keys, interval_s, SHARDS, SharedClock(offset_us))

    yield make
    for session in sessions:
        await session.close()


@pytest.mark.parametrize("late_us", [0, 3_000, 400_000])
async def test_a_hand_over_point_gives_every_slot_to_exactly_one_process(
    make_schedule: Callable[..., PhasedSchedule], late_us: int
) -> None:
    keys = series(200)
    interval = 2 * SEC
    a, b = make_schedule(keys, 2.0), make_schedule(keys, 2.0)
    handover = 1_700_000_000 * SEC + 777_777
    await a.apply(Ownership({s: (Tenure(0, handover),) for s in range(SHARDS)}, deadline=1e12))
    await b.apply(Ownership({s: (Tenure(handover),) for s in range(SHARDS)}, deadline=1e12))
    start = handover - 5 * interval
    for s in keys:
        phase = phase_us(s.key, interval)
        taken: dict[int, list[str]] = {}
        for k in range(slot_at_or_before(start, phase, interval), slot_at_or_before(start, phase, interval) + 10):
            due = slot_time(k, phase, interval)
            # Both fire at every slot (a little late), as their jobs would: twice each, as after a
            # changed clock offset; the second firing must never probe again.
            for name, schedule in (("a", a), ("b", b)):
                for _ in range(2):
                    got = schedule.take_slot(s.key, due + late_us, 0.0)
                    if got is not None:
                        assert got == k
                        taken.setdefault(k, []).append(name)
        assert all(len(names) == 1 for names in taken.values()), taken
        assert sorted(taken) == list(range(min(taken), min(taken) + 10))  # none skipped
        assert {k: names[0] for k, names in taken.items()} == {
            k: ("a" if slot_time(k, phase, interval) < handover else "b") for k in taken
        }


async def test_a_slot_is_not_taken_after_the_deadline_nor_twice(make_schedule: Callable[..., PhasedSchedule]) -> None:
    keys = series(1)
    schedule = make_schedule(keys, 2.0)
    await schedule.apply(Ownership({s: (Tenure(0),) for s in range(SHARDS)}, deadline=50.0))
    key = keys[0].key
    now = 1_700_000_000 * SEC
    assert schedule.take_slot(key, now, 49.0) is not None
    assert schedule.take_slot(key, now + 1000, 49.0) is None
    assert schedule.take_slot(key, now + 2 * SEC, 50.0) is None  # the leases ran out
    assert schedule.not_owned == 1


# ---------------------------------------------------------------- triggers and jobs


def test_the_trigger_fires_on_the_grid_of_the_shared_clock() -> None:
    interval, phase = 3 * SEC, 1_234_567
    clock = SharedClock(offset_us=2_500_000)  # the database's clock is 2.5 s ahead of ours
    trigger = SlotTrigger(phase, interval, clock)
    now = from_us(1_700_000_000 * SEC)
    first = trigger.get_next_fire_time(None, now)
    assert clock.from_local(first) == first_slot_from(clock.from_local(now), phase, interval)
    fires = [first]
    for _ in range(1000):
        fires.append(trigger.get_next_fire_time(fires[-1], fires[-1]))
    # exactly one interval apart for ever: no jitter, no drift
    assert {b - a for a, b in zip(fires, fires[1:])} == {timedelta(microseconds=interval)}
    assert all((clock.from_local(f) - phase) % interval == 0 for f in fires)
    clock.offset_us -= 40_000  # re-measured: 40 ms less; the next fire is the same slot, later by 40 ms
    again = trigger.get_next_fire_time(fires[-1], fires[-1])
    assert clock.from_local(again) == clock.from_local(fires[-1]) + 40_000


async def test_jobs_exist_for_owned_shards_only_and_start_at_the_first_owned_slot(
    make_schedule: Callable[..., PhasedSchedule],
) -> None:
    keys = series(300)
    schedule = make_schedule(keys, 10.0)
    interval = 10 * SEC
    now = schedule.clock.now_us()
    later = now + 25 * SEC
    held = {0: (Tenure(now - 3600 * SEC),), 1: (Tenure(later),)}
    await schedule.apply(Ownership(held, deadline=1e12))
    jobs = {job.id: job for job in schedule._scheduler.get_jobs()}
    expected = {s.key for s in keys if shard_of(s.key, SHARDS) in held}
    assert set(jobs) == expected and schedule.scheduled == len(expected)
    for key, job in jobs.items():
        phase = phase_us(key, interval)
        first = to_us(job.next_run_time)
        if shard_of(key, SHARDS) == 1:  # handed to us from a point ahead: its first slot from there
            assert first == first_slot_from(later, phase, interval)
        else:  # held for long: its next slot, no catching up
            assert (first - phase) % interval == 0
            assert now < first <= now + interval + SEC
    # A shard whose tenure has ended loses its jobs; one granted a moment ago catches up
    # the slots that fell between the grant and now (one each at most), and only those.
    granted = schedule.clock.now_us() - 2 * SEC
    before = schedule.clock.now_us()
    await schedule.apply(Ownership({1: (Tenure(later),), 2: (Tenure(granted),)}, deadline=1e12))
    after = schedule.clock.now_us()
    jobs = {job.id: job for job in schedule._scheduler.get_jobs()}
    assert {shard_of(k, SHARDS) for k in jobs} == {1, 2}
    checked = 0
    for key, job in jobs.items():
        if shard_of(key, SHARDS) != 2:
            continue
        phase = phase_us(key, interval)
        due_early = slot_time(slot_at_or_before(before, phase, interval), phase, interval)
        due_late = slot_time(slot_at_or_before(after, phase, interval), phase, interval)
        if due_early != due_late:
            continue  # a slot came while apply() ran: either answer is right
        first = to_us(job.next_run_time)
        if due_early >= granted:
            assert first <= after, key  # at once
        else:
            assert first == first_slot_from(before, phase, interval), key
        checked += 1
    assert checked >= 1
