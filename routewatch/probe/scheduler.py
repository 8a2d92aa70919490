"""Running probes: one APScheduler job per model × prompt, a global limit.

Each series (router, model, prompt) is one job that never overlaps itself
(``max_instances=1``). A global semaphore caps how many probes are in
flight, because a prober that opens too many streams at once measures its
own queueing instead of the model. Two schedules:

* ``ProbeSchedule`` (``routewatch run``): interval jobs with jitter, swapped
  when the config is reloaded;
* ``PhasedSchedule`` (``routewatch probe``, one of several processes sharing
  the series): each series at its fixed slots (``slots.py``), probed only
  when the slot is this process's, as the shard leases say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_PAUSED, STATE_RUNNING
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from routewatch.probe import chat_stream
from routewatch.probe.costing import with_cost
from routewatch.probe.loop_lag import LoopLagMonitor
from routewatch.probe.reasoning import ReasoningModels, deadlines
from routewatch.probe.slots import (
    Ownership,
    SharedClock,
    Tenure,
    first_slot_from,
    interval_us,
    phase_us,
    shard_of,
    slot_at_or_before,
    slot_time,
)
from routewatch.probe.target import Canary, Target
from routewatch.results.probe_result import NOT_ROUTER_FAULTS, ProbeResult

log = logging.getLogger(__name__)

# How APScheduler words its warning for a run it skips because the job's previous run is still going.
_STILL_RUNNING_WARNING = 'Execution of job "%s" skipped: maximum number of running instances'


class SkippedSlotWarnings(logging.Filter):
    """Drops APScheduler's warning for each slot a series skips while its previous probe runs.

    A reasoning probe may run for several intervals, and each slot it covers would log a line:
    :class:`PhasedSchedule` counts those slots instead (``routewatch_probe_slots_skipped_total``).
    For the ``apscheduler.scheduler`` logger; every other record passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the skipped-slot warning only."""
        return not (isinstance(record.msg, str) and record.msg.startswith(_STILL_RUNNING_WARNING))


Sink = Callable[[ProbeResult], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Series:
    """One model on one router probed with one prompt."""

    target: Target
    canary: Canary

    @property
    def key(self) -> str:
        """Stable id, also the scheduler job id."""
        return series_key(self.target.router, self.target.model, self.canary.name)


def series_key(router: str, model: str, prompt: str) -> str:
    """A series' stable id (``Series.key``) from its labels."""
    return f"{router}|{model}|{prompt}"


def new_session(concurrency: int) -> aiohttp.ClientSession:
    """The HTTP client all probes share: pooled connections, probe tracing, no client-side timeouts."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        trace_configs=[chat_stream.trace_config()],
        timeout=aiohttp.ClientTimeout(total=None),  # the probe owns every deadline
    )


class Prober:
    """Runs probes under the concurrency limit and hands results to ``sink``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        timeouts: chat_stream.Timeouts,
        region: str,
        concurrency: int,
        sink: Sink | None = None,
        lag: LoopLagMonitor | None = None,
        max_lag_s: float | None = None,
    ) -> None:
        self._session = session
        self._timeouts = timeouts
        # The longest total deadline of any probe started (a reasoning model's may be longer than
        # timeouts.total): how long a shutdown may have to wait for one still in flight.
        self.longest_s = timeouts.total
        self._region = region
        self._sem = asyncio.Semaphore(concurrency)
        self._sink = sink
        self.lag = lag
        self._max_lag_ms = None if max_lag_s is None else max_lag_s * 1000
        self._concurrency = concurrency
        self.completed = 0
        self.in_flight = 0  # asked for, not yet handed to the sink: waiting for a slot or running
        self._idle = asyncio.Event()  # set while in_flight is 0
        self._idle.set()
        self.queued = 0  # due, waiting for a concurrency slot
        self.running = 0  # holding a concurrency slot
        # Completed probes by outcome ("ok" or the error class), and those the
        # loop lag flagged, since start: monotonic, so /metrics exports them as counters.
        self.results: Counter[str] = Counter()
        self.overloaded = 0
        # Per (router, model): probes and failed probes, those flagged overloaded left out as the
        # published error rate leaves them out. The alert rules' burn rates are computed from these.
        self.route_attempts: Counter[tuple[str, str]] = Counter()
        self.route_failures: Counter[tuple[str, str]] = Counter()
        self.closed = False  # set by close(): scheduled probes no longer start
        # Called with every finished result, after the sink (model discovery watches for a model gone).
        self.on_result: Callable[[ProbeResult], None] | None = None
        # Series keys (Series.key) the daily budget paused: their scheduled probes are skipped.
        self.paused: frozenset[str] = frozenset()
        self.budget_skipped = 0  # scheduled probes skipped for the budget, since start
        # Slots skipped because the series' previous probe was still running (PhasedSchedule counts them).
        self.still_running_skipped = 0
        # The models seen reasoning in this process: their probes get the reasoning output budget.
        self.reasoning = ReasoningModels()

    async def probe(self, series: Series) -> ProbeResult:
        """Probe one series once (waiting for a free slot first).

        ``in_flight`` counts the probe until its result has been handed to
        the sink, so that a shutdown waiting for it never cancels a finished
        measurement on its way to the spool.
        """
        self.in_flight += 1
        self._idle.clear()
        self.queued += 1
        queued = True
        try:
            async with self._sem:
                self.queued -= 1
                queued = False
                self.running += 1
                try:
                    budget = self.reasoning.budget(series.target, series.canary.max_tokens)
                    limits = deadlines(series.target, budget, self._timeouts)
                    self.longest_s = max(self.longest_s, limits.total)
                    result = await chat_stream.run(
                        self._session,
                        series.target,
                        series.canary,
                        limits,
                        region=self._region,
                        lag=self.lag,
                        max_lag_ms=self._max_lag_ms,
                        budget=budget,
                    )
                    result = with_cost(result, series.target, series.canary)
                finally:
                    self.running -= 1
            self.completed += 1
            self.results["ok" if result.ok else result.error_class or "unknown"] += 1
            self.overloaded += result.prober_overloaded
            self.reasoning.observe(result)
            # A budget spent reasoning is ours to raise, not the router's failure: the burn rates leave it out.
            if not result.prober_overloaded and result.error_class not in NOT_ROUTER_FAULTS:
                route = (result.router, result.model)
                self.route_attempts[route] += 1
                self.route_failures[route] += not result.ok
            if self._sink is not None:
                # A finished measurement reaches the sink even when a shutdown cancels its probe now.
                await asyncio.shield(self._sink(result))
            if self.on_result is not None:
                self.on_result(result)
            return result
        finally:
            if queued:  # cancelled while waiting for a slot
                self.queued -= 1
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def scheduled(self, series: Series) -> None:
        """The scheduler's job: probe ``series`` once, unless the prober is closed or the budget paused it.

        A job the scheduler started just before shutdown can reach the loop
        after ``close``: it returns without sending a request (the HTTP session
        may be closed by then). A probe the shutdown cancels, still running
        past its grace time, is logged in one line, not as a job failure.
        """
        if self.closed:
            return
        if series.key in self.paused:
            self.budget_skipped += 1
            return
        try:
            await self.probe(series)
        except asyncio.CancelledError:
            # The job's own task, cancelled by the scheduler's shutdown: nothing awaits it.
            log.warning("probe of %s cancelled at shutdown, still running past the grace time", series.key)

    def close(self) -> None:
        """Start no more scheduled probes; those in flight go on (``idle`` waits for them)."""
        self.closed = True

    async def idle(self) -> None:
        """Return once no probe is in flight (at once if none is)."""
        await self._idle.wait()

    @property
    def region(self) -> str:
        """The region stored with every result of this prober."""
        return self._region

    @property
    def concurrency(self) -> int:
        """At most this many probes run at once."""
        return self._concurrency

    @property
    def timeouts(self) -> chat_stream.Timeouts:
        """The per-phase limits of the probes started from now on."""
        return self._timeouts

    def retune(self, timeouts: chat_stream.Timeouts, max_lag_s: float | None) -> None:
        """Use these limits for the probes that start from now on (a config reload).

        A probe already sending its request keeps the limits it started with.
        """
        self._timeouts = timeouts
        self._max_lag_ms = None if max_lag_s is None else max_lag_s * 1000

    async def round(self, series: Sequence[Series]) -> list[ProbeResult]:
        """Probe every series once, concurrently; results in ``series`` order."""
        return list(await asyncio.gather(*(self.probe(s) for s in series)))

    async def round_with_budgets(
        self, series: Sequence[Series], on_again: Callable[[int], None] | None = None
    ) -> list[ProbeResult]:
        """``round``, then each series whose model it found reasoning once more, with its reasoning budget.

        For one-off rounds (``once``, probe-now), which have no next probe: a
        probe that spent the prompt's ``max_tokens`` reasoning is replaced by
        one with room to reason. ``on_again`` hears how many are probed again.
        """
        budgeted = {s.key for s in series if self.reasoning.budget(s.target, s.canary.max_tokens)}
        results = await self.round(series)
        again = [
            i
            for i, (s, r) in enumerate(zip(series, results, strict=True))
            if r.error_class == "budget_exhausted"
            and s.key not in budgeted
            and self.reasoning.budget(s.target, s.canary.max_tokens) is not None
        ]
        if again:
            if on_again is not None:
                on_again(len(again))
            for i, result in zip(again, await self.round([series[i] for i in again]), strict=True):
                results[i] = result
        return results


def first_run_delay(jitter_s: float, rng: random.Random) -> float:
    """Seconds before a series' first probe: spread over the jitter so that
    a restart does not send every probe in the same instant."""
    return rng.uniform(0.0, jitter_s) if jitter_s > 0 else 0.0


def _trigger(interval_s: float, jitter_s: float) -> IntervalTrigger:
    return IntervalTrigger(seconds=interval_s, jitter=jitter_s or None)


def _misfire_grace(interval_s: float) -> int:
    return max(1, int(interval_s))


def schedule(
    scheduler: AsyncIOScheduler,
    prober: Prober,
    series: Sequence[Series],
    interval_s: float,
    jitter_s: float,
    rng: random.Random | None = None,
) -> None:
    """Add one interval job per series to ``scheduler``."""
    rng = rng or random.Random()
    now = datetime.now(UTC)
    for s in series:
        scheduler.add_job(
            prober.scheduled,
            _trigger(interval_s, jitter_s),
            args=[s],
            id=s.key,
            name=s.key,
            next_run_time=now + timedelta(seconds=first_run_delay(jitter_s, rng)),
            max_instances=1,  # a slow probe delays its own next run, never overlaps it
            coalesce=True,  # after a stall, run once, not once per missed slot
            misfire_grace_time=_misfire_grace(interval_s),
        )


class ProbeSchedule:
    """The scheduler's probe jobs, one per series, and their timing; ``replace`` swaps them."""

    def __init__(
        self,
        scheduler: AsyncIOScheduler,
        prober: Prober,
        series: Sequence[Series],
        interval_s: float,
        jitter_s: float,
        rng: random.Random | None = None,
    ) -> None:
        """Add the jobs of ``series`` to ``scheduler`` (started or not)."""
        self._scheduler = scheduler
        self._prober = prober
        self._rng = rng or random.Random()
        self._series = {s.key: s for s in series}
        self.interval_s = interval_s
        self.jitter_s = jitter_s
        self.stopped = False
        schedule(scheduler, prober, series, interval_s, jitter_s, self._rng)

    @property
    def prober(self) -> Prober:
        """What runs the probes."""
        return self._prober

    @property
    def series(self) -> list[Series]:
        """The series scheduled now."""
        return list(self._series.values())

    def replace(self, series: Sequence[Series], interval_s: float, jitter_s: float) -> None:
        """From now on probe ``series`` every ``interval_s`` (± ``jitter_s``).

        Synchronous on purpose: nothing else runs on the event loop between the
        first job removed and the last one added, so no series is ever
        scheduled twice, or missing while it is kept. A removed series loses
        only its future runs: a probe of it in flight finishes and reaches the
        sink. A kept series keeps its job (its ``max_instances=1`` still waits
        for a probe in flight) and its place in time: with a new interval its
        next run stays where it was unless the new interval brings it sooner.
        A new series is first probed within ``jitter_s``, as at start.
        """
        if self.stopped:
            raise RuntimeError("the probe schedule has stopped")
        new = {s.key: s for s in series}
        retimed = (interval_s, jitter_s) != (self.interval_s, self.jitter_s)
        now = datetime.now(UTC)
        for key in self._series.keys() - new.keys():
            self._scheduler.remove_job(key)
        for key, s in new.items():
            old = self._series.get(key)
            if old is None:
                continue
            changes: dict[str, object] = {}
            if s != old:  # same router, model and prompt; another URL, header, key or message
                changes["args"] = [s]
            if retimed:
                trigger = _trigger(interval_s, jitter_s)
                soonest = trigger.get_next_fire_time(None, now)
                pending = self._scheduler.get_job(key).next_run_time
                changes.update(
                    trigger=trigger,
                    next_run_time=soonest if pending is None else min(pending, soonest),
                    misfire_grace_time=_misfire_grace(interval_s),
                )
            if changes:
                self._scheduler.modify_job(key, **changes)
        added = [s for key, s in new.items() if key not in self._series]
        schedule(self._scheduler, self._prober, added, interval_s, jitter_s, self._rng)
        self._series = new
        self.interval_s = interval_s
        self.jitter_s = jitter_s

    async def stop(self, limit_s: float) -> None:
        """Stop starting probes, let those in flight finish (up to ``limit_s``), shut the scheduler down."""
        self.stopped = True
        await stop(self._scheduler, self._prober, limit_s)  # the module's stop(), below


# Jobs a PhasedSchedule adds or removes between two turns of the event loop: about 10 ms of APScheduler's work.
JOBS_PER_TURN = 200


class SlotTrigger(BaseTrigger):
    """Fires at one series' slots on the shared clock: exact times, no jitter, no drift."""

    __slots__ = ("_clock", "_interval", "_phase")

    def __init__(self, phase: int, interval: int, clock: SharedClock) -> None:
        self._phase = phase
        self._interval = interval
        self._clock = clock

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        """The first slot after the previous run (or from ``now``), as a local wall-clock time."""
        if previous_fire_time is None:
            due = first_slot_from(self._clock.from_local(now), self._phase, self._interval)
        else:
            # Strictly after the previous run: with the same offset that is the next slot;
            # after the offset shrank it may be the same slot again, which _fire() skips.
            due = first_slot_from(self._clock.from_local(previous_fire_time) + 1, self._phase, self._interval)
        return self._clock.to_local(due)

    def __str__(self) -> str:
        return f"slots[phase {self._phase} µs, every {self._interval} µs]"


@dataclass(slots=True)
class _Slotted:
    """One series on the slot grid, and the last slot this process probed."""

    series: Series
    shard: int
    phase: int
    last: int | None = None


class PhasedSchedule:
    """Probes each series at its slots, those of the shards this process owns (``apply``).

    Jobs exist only for the series of shards whose tenure has not ended, so a
    process holding a third of the shards wakes up for a third of the slots.
    Every job asks at its slot whether the slot is owned (the ownership may
    have changed since the job was added) and never probes a slot twice.
    """

    def __init__(
        self,
        scheduler: AsyncIOScheduler,
        prober: Prober,
        series: Sequence[Series],
        interval_s: float,
        shards: int,
        clock: SharedClock | None = None,
    ) -> None:
        """Nothing is owned (so nothing probed) until the first ``apply``."""
        self._scheduler = scheduler
        self._prober = prober
        self._shards = shards
        self._entries: dict[str, _Slotted] = {}
        self._retime(interval_s)
        self._plan(series)
        self._jobs: set[str] = set()
        self._applying = asyncio.Lock()
        self.clock = clock or SharedClock()
        self.ownership = Ownership()
        self.stopped = False
        self.not_owned = 0  # slots that fired but were not this process's (an ownership that ended)
        scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)

    def _skipped(self, event: JobSubmissionEvent) -> None:
        # A slot came while the series' previous probe still ran (max_instances=1): it is not probed.
        if event.job_id in self._entries:
            self._prober.still_running_skipped += 1

    def _retime(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._interval = interval_us(interval_s)
        # A job runs a little after its slot; one that finds the shared clock slightly
        # before it (the offset changed since it was scheduled) still means that slot.
        self._early_us = min(self._interval // 4, 500_000)
        # APScheduler drops a run later than this; one less late still finds its own slot.
        self._grace = max(1, (self._interval - self._early_us) // 1_000_000)

    def _plan(self, series: Sequence[Series]) -> None:
        """The slot grid of ``series`` at the current interval; a series kept keeps its last slot."""
        entries = {}
        for s in series:
            entry = self._entries.get(s.key) or _Slotted(s, shard_of(s.key, self._shards), 0)
            entry.series = s  # same key, maybe another URL, header or message
            entry.phase = phase_us(s.key, self._interval)
            entries[s.key] = entry
        self._entries = entries
        self._by_shard: dict[int, list[str]] = {}
        for key, entry in entries.items():
            self._by_shard.setdefault(entry.shard, []).append(key)

    @property
    def prober(self) -> Prober:
        """What runs the probes."""
        return self._prober

    async def replace(self, series: Sequence[Series], interval_s: float) -> None:
        """Probe ``series`` every ``interval_s`` from now on (a configuration reload), on the owned slots.

        A series kept at the same interval keeps its job and its slots; one
        whose URL, headers or message changed is probed with them from its
        next slot. A series removed loses its job (a probe of it in flight
        finishes and reaches the sink); a new one gets a job if its shard is
        owned, and is first probed at its next slot. A new interval moves
        every phase (a phase is taken modulo the interval), so every job is
        made anew: each series may see one gap shorter or longer than either
        interval.
        """
        async with self._applying:
            if self.stopped:
                raise RuntimeError("the probe schedule has stopped")
            retimed = interval_us(interval_s) != self._interval
            keep = {s.key for s in series}
            drop = [key for key in self._jobs if retimed or key not in keep]
            for at in range(0, len(drop), JOBS_PER_TURN):
                if at:
                    await asyncio.sleep(0)
                with self._quiet():
                    for key in drop[at : at + JOBS_PER_TURN]:
                        self._scheduler.remove_job(key)
                        self._jobs.discard(key)
            if retimed:
                self._retime(interval_s)
                for entry in self._entries.values():
                    entry.last = None  # slot numbers of the old grid mean nothing on the new one
            known = set(self._entries)
            self._plan(series)
            # A series added now (a model just discovered, or reloaded in) missed no slot: the
            # catch-up in _add_job is for slots of known series that passed before their shard
            # came to this process. Catching up new ones would probe at once every new model whose
            # slot passed during a slow list read: a burst, not first probes spread over the interval.
            now = self.clock.now_us()
            for key, entry in self._entries.items():
                if key not in known:
                    entry.last = slot_at_or_before(now, entry.phase, self._interval)
        await self.apply(self.ownership)

    @property
    def series(self) -> list[Series]:
        """Every configured series, owned or not."""
        return [entry.series for entry in self._entries.values()]

    @property
    def scheduled(self) -> int:
        """Series with a job now: those of the shards this process owns or is handing over."""
        return len(self._jobs)

    def shard(self, key: str) -> int:
        """The shard of the series ``key``."""
        return self._entries[key].shard

    async def apply(self, ownership: Ownership) -> None:
        """Probe the slots ``ownership`` gives, from now on.

        The ownership is swapped in at once: from then on every job asks the
        new one. Series of newly owned shards get a job whose first run is
        their first owned slot. A tenure that began less than an interval ago
        was granted a moment before this process heard of it: a series whose
        slot fell in between is probed at once, the only catching up there is.
        Jobs of shards whose tenure has ended are removed. Adding or removing
        thousands of jobs takes APScheduler tenths of a second, so it is done
        :data:`JOBS_PER_TURN` at a time, letting probes in flight read their
        streams in between (a stalled loop would spoil their timings).
        """
        async with self._applying:
            if self.stopped:
                raise RuntimeError("the probe schedule has stopped")
            self.ownership = ownership
            now = self.clock.now_us()
            live = {shard for shard, spans in ownership.tenures.items() if any(t.end_us > now for t in spans)}
            gone = [(k, True) for k in self._jobs if self._entries[k].shard not in live]
            new = [(k, False) for shard in sorted(live & self._by_shard.keys()) for k in self._by_shard[shard]]
            work = gone + new
            for at in range(0, len(work), JOBS_PER_TURN):
                if at:
                    await asyncio.sleep(0)
                with self._quiet():
                    for key, ended in work[at : at + JOBS_PER_TURN]:
                        if ended:
                            self._scheduler.remove_job(key)
                            self._jobs.discard(key)
                        elif key not in self._jobs:
                            entry = self._entries[key]
                            self._add_job(entry, self.ownership.tenures[entry.shard], self.clock.now_us())

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """Keep a running scheduler from waking up once per job added or removed (it would
        recompute its next wake-up for every one); it wakes up once at the end instead."""
        running = self._scheduler.state == STATE_RUNNING
        if running:
            self._scheduler.pause()
        try:
            yield
        finally:
            if running and self._scheduler.state == STATE_PAUSED:
                self._scheduler.resume()

    def _add_job(self, entry: _Slotted, spans: Sequence[Tenure], now: int) -> None:
        latest = slot_at_or_before(now, entry.phase, self._interval)
        due = slot_time(latest, entry.phase, self._interval)
        recent = any(t.start_us > now - self._interval and t.covers(due) for t in spans)
        if recent and (entry.last is None or latest > entry.last):
            first = datetime.now(UTC)  # its slot has just passed: probe it now
        else:
            start = min(t.start_us for t in spans if t.end_us > now)
            first = self.clock.to_local(first_slot_from(max(now + 1, start), entry.phase, self._interval))
        key = entry.series.key
        self._scheduler.add_job(
            self._fire,
            SlotTrigger(entry.phase, self._interval, self.clock),
            args=[key],
            id=key,
            name=key,
            next_run_time=first,
            max_instances=1,  # a slow probe delays its own next run, never overlaps it
            coalesce=True,  # after a stall, run once, not once per missed slot
            misfire_grace_time=self._grace,
        )
        self._jobs.add(key)

    def take_slot(self, key: str, now_us: int, mono: float) -> int | None:
        """The slot of series ``key`` due at ``now_us`` (shared clock), marked as probed, if this
        process is to probe it; None if it is not this process's or has been probed already."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        k = slot_at_or_before(now_us + self._early_us, entry.phase, self._interval)
        if entry.last is not None and k <= entry.last:
            return None
        if not self.ownership.owns(entry.shard, slot_time(k, entry.phase, self._interval), mono):
            self.not_owned += 1
            return None
        entry.last = k
        return k

    async def _fire(self, key: str) -> None:
        if self.stopped or self.take_slot(key, self.clock.now_us(), time.monotonic()) is None:
            return
        await self._prober.scheduled(self._entries[key].series)  # quiet if cancelled at shutdown

    async def stop(self, limit_s: float) -> None:
        """Stop starting probes, let those in flight finish (up to ``limit_s``), shut the scheduler down."""
        self.stopped = True
        await stop(self._scheduler, self._prober, limit_s)


async def stop(scheduler: AsyncIOScheduler, prober: Prober, limit_s: float) -> None:
    """Stop starting probes, let those in flight finish (up to ``limit_s``), then shut down.

    APScheduler cancels running coroutine jobs at shutdown; pausing first
    keeps every probe that already sent its request from being lost.
    """
    prober.close()
    scheduler.pause()
    # A job submitted just before the pause has a task that has not run yet; let it
    # run (closed, it returns at once) rather than be cancelled before its first step,
    # which APScheduler would log as a job failure with a traceback.
    await asyncio.sleep(0)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            await prober.idle()
    scheduler.shutdown(wait=False)
