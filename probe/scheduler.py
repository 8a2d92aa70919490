"""Running probes: one APScheduler job per model × prompt, a global limit.

Each series (router, model, prompt) is one interval job with jitter that
never overlaps itself (``max_instances=1``). A global semaphore caps how
many probes are in flight, because a prober that opens too many streams at
once measures its own queueing instead of the model. ``ProbeSchedule``
owns the jobs of ``routewatch run`` and swaps them when the config is reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from routewatch.probe import chat_stream
from routewatch.probe.loop_lag import LoopLagMonitor
from routewatch.probe.target import Canary, Target
from routewatch.results.probe_result import ProbeResult

log = logging.getLogger(__name__)

Sink = Callable[[ProbeResult], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Series:
    """One model on one router probed with one prompt."""

    target: Target
    canary: Canary

    @property
    def key(self) -> str:
        """Stable id, also the scheduler job id."""
        return f"{self.target.router}|{self.target.model}|{self.canary.name}"


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
        self.closed = False  # set by close(): scheduled probes no longer start

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
                    result = await chat_stream.run(
                        self._session,
                        series.target,
                        series.canary,
                        self._timeouts,
                        region=self._region,
                        lag=self.lag,
                        max_lag_ms=self._max_lag_ms,
                    )
                finally:
                    self.running -= 1
            self.completed += 1
            self.results["ok" if result.ok else result.error_class or "unknown"] += 1
            self.overloaded += result.prober_overloaded
            if self._sink is not None:
                # A finished measurement reaches the sink even when a shutdown cancels its probe now.
                await asyncio.shield(self._sink(result))
            return result
        finally:
            if queued:  # cancelled while waiting for a slot
                self.queued -= 1
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def scheduled(self, series: Series) -> None:
        """The scheduler's job: probe ``series`` once, unless the prober is closed.

        A job the scheduler started just before shutdown can reach the loop
        after ``close``: it returns without sending a request (the HTTP session
        may be closed by then). A probe the shutdown cancels, still running
        past its grace time, is logged in one line, not as a job failure.
        """
        if self.closed:
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
