"""Stopping the probe schedule: no probe starts after it, none is logged as a job failure.

Against the real simulator on loopback and the real APScheduler.
"""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from routewatch.config import TimeoutsConfig
from routewatch.probe.scheduler import Prober, ProbeSchedule, Series, new_session
from routewatch.probe.target import Canary, Target
from routewatch.results.probe_result import ProbeResult
from routewatch.simulator import ModelProfile, start_simulator

pytestmark = pytest.mark.system

CANARY = Canary("short", [{"role": "user", "content": "Count from 1 to 20 in words."}], 32, 4)
SLOW = ModelProfile(
    model="slow/model", provider="Slow", ttft_median_ms=50, ttft_sigma=0.0, tokens_per_s=4, output_tokens=12
)

TIMEOUTS = TimeoutsConfig(connect=2.0, headers=5.0, first_token=5.0, idle=5.0, total=10.0)


def _series(base_url: str, n: int) -> list[Series]:
    return [Series(Target(f"r{i}", base_url, SLOW.model), CANARY) for i in range(n)]


async def test_stop_cancels_long_probes_quietly_and_starts_none_after(caplog: pytest.LogCaptureFixture) -> None:
    """Probes still streaming past the grace time are cancelled with one warning each (no job-failure
    traceback), and no request reaches the router once the schedule has stopped."""
    caplog.set_level(logging.INFO)
    stored: list[ProbeResult] = []

    async def sink(result: ProbeResult) -> None:
        stored.append(result)

    async with await start_simulator([SLOW]) as sim, new_session(16) as session:
        prober = Prober(session, TIMEOUTS, "test", 16, sink=sink)
        scheduler = AsyncIOScheduler()
        probes = ProbeSchedule(scheduler, prober, _series(sim.base_url, 8), 0.5, 0.2, random.Random(1))
        scheduler.start()
        await asyncio.sleep(1.0)  # every series has started a ~3 s stream
        assert prober.in_flight > 0
        await probes.stop(0.2)
        served_at_stop = len(sim.ground_truth.records)
        await asyncio.sleep(1.0)  # any job task left over would send its request now
        assert len(sim.ground_truth.records) == served_at_stop
        assert prober.in_flight == 0
    failures = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures]
    cancelled = [r for r in caplog.records if "cancelled at shutdown" in r.getMessage()]
    assert cancelled, "the probes cut short say so"


async def test_a_closed_prober_sends_nothing() -> None:
    """A scheduled job that reaches the loop after close() returns without a request."""
    async with await start_simulator([SLOW]) as sim, new_session(4) as session:
        prober = Prober(session, TIMEOUTS, "test", 4)
        prober.close()
        await prober.scheduled(_series(sim.base_url, 1)[0])
        assert sim.ground_truth.records == []
        assert prober.completed == 0
