"""End to end on real parts: simulator → scheduled probes → PostgreSQL → stats API.

The simulator's ground truth says what was served; the API must report the
same number of probes, the same failures, and latencies that match what
was served, each probe off by no more than the stalls its loop-lag monitor saw.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from factories import LOOPBACK_TIMEOUTS, config_text, prompt_entry, router_entry

from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.refresh import Aggregator
from routewatch.config import Config, parse_config
from routewatch.probe.loop_lag import LoopLagMonitor
from routewatch.probe.scheduler import Prober, Series, new_session, schedule, stop
from routewatch.probe.targets import plan
from routewatch.simulator import ModelProfile, RunningSimulator, start_simulator
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import BatchWriter

pytestmark = pytest.mark.system

PROFILES = (
    ModelProfile(
        model="test/fast", provider="FastCo", ttft_median_ms=40, ttft_sigma=0.2, tokens_per_s=200, output_tokens=24
    ),
    ModelProfile(
        model="test/flaky",
        provider="FlakyCo",
        ttft_median_ms=90,
        ttft_sigma=0.2,
        tokens_per_s=150,
        output_tokens=24,
        error_rate=0.3,
        faults={"http_500": 1.0, "http_429": 1.0, "drop": 1.0},
    ),
    ModelProfile(
        model="test/slow", provider="SlowCo", ttft_median_ms=220, ttft_sigma=0.2, tokens_per_s=100, output_tokens=24
    ),
)
WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
# The prober's loop-lag monitor ticks this often here (25 ms in routewatch probe), so that a
# stall shows in a probe's stored lag to within a millisecond.
TICK_MS = 1.0
TRANSIT_MS = 2.0  # loopback transit, the handler's start and the reading task's turn, on an idle loop


def sim_config(base_url: str, models: Sequence[str], interval: str, jitter: str) -> str:
    return config_text(
        [router_entry("sim", base_url, models)],
        [prompt_entry(max_tokens=64, min_output_tokens=16)],
        region="test",
        schedule={"interval": interval, "jitter": jitter, "concurrency": 16},
        timeouts=LOOPBACK_TIMEOUTS,
    )


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    sim = await start_simulator(PROFILES, seed=1234)
    yield sim
    await sim.close()


async def run_scheduled(
    series: list[Series], pool: asyncpg.Pool, interval: float, jitter: float, seconds: float, spool_dir: Path
) -> Prober:
    """Probe ``series`` on the real scheduler for ``seconds``, storing every result.

    The prober watches its loop lag and flags probes past ``schedule.max_loop_lag``, as
    ``routewatch probe`` does (parts.py): on a busy machine that is what accounts for a probe's error.
    """
    writer = BatchWriter(pool, spool_dir, flush_s=0.1)
    await writer.start()
    lag = LoopLagMonitor(tick_s=TICK_MS / 1e3)
    lag.start()
    defaults = _defaults()
    try:
        async with new_session(16) as session:
            prober = Prober(
                session,
                defaults.timeouts,
                "test",
                16,
                sink=writer.submit,
                lag=lag,
                max_lag_s=defaults.schedule.max_loop_lag,
            )
            scheduler = AsyncIOScheduler()
            schedule(scheduler, prober, series, interval, jitter)
            scheduler.start()
            await asyncio.sleep(seconds)
            await stop(scheduler, prober, limit_s=10)
    finally:
        await lag.stop()
    await writer.close()
    return prober


def _defaults() -> Config:
    """A configuration's timeouts and schedule limits, as the tests' configurations have them."""
    return parse_config(sim_config("http://127.0.0.1:1/v1", ["x"], "1s", "0s"), "t.yaml")


@pytest.mark.alone  # each probe's TTFT is judged to within the loop's blocked time and a few ms
async def test_scheduled_probes_reach_the_api_with_true_figures(
    db_dsn: str, db_mode: str, simulator: RunningSimulator, aiohttp_client, tmp_path: Path
) -> None:
    config = parse_config(sim_config(simulator.base_url, [p.model for p in PROFILES], "500ms", "100ms"), "e2e.yaml")
    series, _ = plan(config, {})
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            assert await ensure_schema(conn) == db_mode
            assert await ensure_schema(conn) == db_mode, "a second start must find the schema in place"
            if db_mode == "timescaledb":
                assert (
                    await conn.fetchval(
                        "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'probe_results'"
                    )
                    == 1
                )
        prober = await run_scheduled(series, pool, 0.5, 0.1, seconds=8.0, spool_dir=tmp_path / "spool")
        assert prober.completed >= 3 * 10, "the scheduler should have run about 16 rounds"

        aggregator = Aggregator(pool, WINDOWS, [("sim", p.model) for p in PROFILES], 10.0)
        await aggregator.refresh()
        client = await aiohttp_client(create_app(aggregator))

        listing = await (await client.get("/v1/models")).json()
        assert [m["id"] for m in listing["models"]] == [p.model for p in PROFILES]
        assert listing["window"] == "7d"

        served = simulator.ground_truth.records
        truth = {r.request_id: r for r in served}
        rows = await pool.fetch(
            "SELECT request_id, model, ok, ttft_ms, output_tps, loop_lag_ms, prober_overloaded FROM probe_results"
        )
        # Every request the simulator served is one stored probe, no more, no less (matched by the id it sent).
        assert sorted(r["request_id"] for r in rows) == sorted(truth)
        for row in rows:
            assert row["ok"] == (truth[row["request_id"]].fault is None), row
        # Each probe's TTFT against what the simulator actually served (its first token's
        # send, which a busy machine delays past the drawn TTFT): never earlier, and later
        # only by what the prober's loop-lag monitor saw, flagged or not. A TTFT spans two
        # waits on the one loop both run on, the request reaching the handler and the first
        # token reaching the reader: each is at most the time the loop was blocked within it
        # (the monitor adds up every stall) plus three passes of under a tick that it cannot
        # see. Neither wait is longer than the error, which bounds the spans searched.
        assert prober.lag is not None
        unexplained, worst = [], 0.0
        for row in rows:
            if row["ok"]:
                sent = truth[row["request_id"]]
                error_ms = row["ttft_ms"] - (sent.token_times_ns[0] - sent.received_ns) / 1e6
                error_ns = round(max(error_ms, 0.0) * 1e6)
                blocked = prober.lag.blocked_ms_between(
                    sent.received_ns - error_ns, sent.received_ns
                ) + prober.lag.blocked_ms_between(sent.token_times_ns[0], sent.token_times_ns[0] + error_ns)
                worst = max(worst, error_ms - blocked)
                if not 0 <= error_ms <= blocked + 6 * TICK_MS + TRANSIT_MS:
                    unexplained.append((round(error_ms, 2), round(blocked, 2), row["loop_lag_ms"], row["model"]))
        print(f"TTFT error beyond the loop's blocked time: at most {worst:.2f} ms")
        assert not unexplained, f"TTFT errors (ms) the loop's stalls do not account for: {unexplained}"

        for profile in PROFILES:
            resp = await client.get(f"/v1/models/{profile.model}/stats", params={"window": "7d"})
            assert resp.status == 200
            stats = await resp.json()
            mine = [r for r in rows if r["model"] == profile.model]
            # The published figures leave out the probes the prober flagged overloaded.
            kept = [r for r in mine if not r["prober_overloaded"]]
            assert kept, f"every probe of {profile.model} was flagged overloaded"
            faulted = [truth[r["request_id"]].fault for r in kept if not r["ok"]]
            assert stats["samples"]["excluded_prober_overloaded"] == len(mine) - len(kept)
            assert stats["samples"]["attempted"] == len(kept)
            assert stats["samples"]["failed"] == len(faulted)
            assert stats["samples"]["rate_limited"] == faulted.count("http_429")

            # The error rate is consistent with the injected probability (binomial, 4 sigma).
            n, p = len(kept), profile.error_rate
            assert abs(stats["error_rate"] - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1 / n

            # The published p50 TTFT is the median of the stored probes (the sketch is within 1%,
            # then rounded to 0.1 ms), so it lies between the median TTFT served and that plus
            # the worst error their stored lag allows.
            ok = [r for r in kept if r["ok"]]
            stored = statistics.median(r["ttft_ms"] for r in ok)
            assert abs(stats["ttft_p50_ms"] - stored) <= 0.01 * stored + 0.05
            served_p50 = statistics.median(
                (truth[r["request_id"]].token_times_ns[0] - truth[r["request_id"]].received_ns) / 1e6 for r in ok
            )
            allowed = 2 * (max(r["loop_lag_ms"] for r in ok) + TICK_MS) + TRANSIT_MS
            assert served_p50 * 0.99 - 0.05 <= stats["ttft_p50_ms"] <= (served_p50 + allowed) * 1.01 + 0.05
            # The simulator's draws are consistent with the profile's median: a sample median of
            # n lognormal draws is off by 1.2533 * sigma / sqrt(n) in log space (one standard
            # error); allow 4 of them.
            drawn = [r.injected_ttft_ms for r in served if r.model == profile.model and r.fault is None]
            injected = statistics.median(drawn)
            spread = 4 * 1.2533 * profile.ttft_sigma / math.sqrt(len(drawn))
            assert abs(math.log(injected / profile.ttft_median_ms)) <= spread, (injected, len(drawn))
            print(
                f"{profile.model}: published p50 TTFT {stats['ttft_p50_ms']} ms, served {served_p50:.1f}, "
                f"drawn {injected:.1f}; worst stored lag {max(r['loop_lag_ms'] for r in ok):.1f} ms; "
                f"{len(mine) - len(kept)} of {len(mine)} probes flagged"
            )
            assert stats["ttft_p95_ms"] >= stats["ttft_p50_ms"]
            # Output speed: the published median is the stored one, and the simulator sends tokens at a fixed rate.
            tps = statistics.median(r["output_tps"] for r in ok)
            assert abs(stats["tps_p50"] - tps) <= 0.01 * tps + 0.05
            assert stats["tps_p50"] == pytest.approx(profile.tokens_per_s, rel=0.1)
            assert stats["tokens"]["output"] >= stats["samples"]["ok"] * profile.output_tokens
            assert stats["window"] == "7d" and stats["updated_at"]

        bad = await client.get("/v1/models/test/fast/stats", params={"window": "3w"})
        assert bad.status == 400
        assert (await bad.json())["error"]["parameter"] == "window"
        missing = await client.get("/v1/models/nobody/none/stats")
        assert missing.status == 404
    finally:
        await pool.close()


async def test_a_probe_never_overlaps_itself(db_dsn: str, tmp_path: Path) -> None:
    """A model slower than the interval is probed back to back, never twice at once."""
    slow = ModelProfile(
        model="test/glacial", provider="Slow", ttft_median_ms=600, ttft_sigma=0.0, tokens_per_s=100, output_tokens=5
    )
    async with await start_simulator([slow], seed=3) as sim:
        config = parse_config(sim_config(sim.base_url, [slow.model], "200ms", "0s"), "overlap.yaml")
        series, _ = plan(config, {})
        pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await ensure_schema(conn)
            await run_scheduled(series, pool, 0.2, 0.0, seconds=3.0, spool_dir=tmp_path / "spool")
            rows = await pool.fetch("SELECT started_at, e2e_ms FROM probe_results ORDER BY started_at")
        finally:
            await pool.close()
        truth = sim.ground_truth.records
    assert 2 <= len(truth) <= 6  # ~3 s / 0.65 s per probe; overlapping runs would make ~15
    assert len(rows) == len(truth)
    for earlier, later in zip(truth, truth[1:]):
        assert later.received_ns >= earlier.token_times_ns[-1], "two probes of one series overlapped"
