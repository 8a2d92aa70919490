"""Probes that spent their output budget reasoning, as the aggregator publishes them.

Probes of a reasoning model go through the real simulator and prober into the
database; the aggregator's figures, /metrics and the model's state are read
back and compared with what the prober recorded.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from factories import probe_result
from prometheus_client.parser import text_string_to_metric_families

from routewatch.aggregator.exact_reference import window_counts
from routewatch.aggregator.model_state import ModelStatus, Observation, State, advance
from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.refresh import Aggregator
from routewatch.config import ReasoningConfig, SLOConfig, TimeoutsConfig
from routewatch.probe.scheduler import Prober, Series, new_session
from routewatch.probe.target import Canary, Target
from routewatch.results.probe_result import ProbeResult
from routewatch.simulator import ModelProfile, start_simulator
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import write_batch

MODEL = "t/think"
CANARY = Canary("short", [{"role": "user", "content": "Count from 1 to 20 in words."}], 16, 4)
# down_after 3: three router failures in a row would make the model down.
SLO = SLOConfig(window=900, down_after=3, up_after=2, min_samples=5)
THINKER = ModelProfile(
    model=MODEL,
    provider="Thinker",
    ttft_median_ms=20,
    ttft_sigma=0.0,
    tokens_per_s=2000,
    output_tokens=8,
    reasoning_tokens=100,  # more than the canary's 16: only the reasoning budget leaves room for an answer
    dialect="litellm",
)


async def _probe_through_the_simulator() -> list[ProbeResult]:
    """Four probes with budget_tokens too small, then (the operator raised it) six that answer."""
    sim = await start_simulator([THINKER])
    try:
        async with new_session(2) as session:
            prober = Prober(session, TimeoutsConfig(), "test", 2)
            results = []
            for budget, n in ((50, 4), (400, 6)):
                settings = ReasoningConfig(budget_tokens=budget, models=["t/*"])
                series = Series(Target("sim", sim.base_url, MODEL, reasoning=settings), CANARY)
                results += [await prober.probe(series) for _ in range(n)]
            return results
    finally:
        await sim.close()


@pytest.mark.unit
def test_a_run_of_exhausted_budgets_is_neither_down_nor_a_silent_prober() -> None:
    start = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    ok = [Observation(MODEL, start + timedelta(seconds=10 * i), True, 100.0, id=i) for i in range(6)]
    spent = [
        Observation(MODEL, start + timedelta(seconds=60 + 10 * i), False, 90.0, id=6 + i, not_router_fault=True)
        for i in range(5)
    ]
    now = start + timedelta(seconds=110)
    status = advance(ModelStatus.initial(MODEL, start), [*ok, *spent], now, SLO, 10.0)
    # Five in a row would be down (down_after 3) were they failures; a prober that only lagged would be unknown.
    assert (status.state, status.consecutive_failures) == (State.OPERATIONAL, 0), status.reason


@pytest.mark.db
async def test_budget_exhausted_probes_are_counted_apart_never_as_router_failures(db_dsn: str, aiohttp_client) -> None:
    probed = await _probe_through_the_simulator()
    assert Counter(r.error_class for r in probed) == {"budget_exhausted": 4, None: 6}
    # Two router failures, before the simulator's probes.
    now = datetime.now(UTC)
    failed = [
        probe_result(
            started_at=now - timedelta(seconds=120 + i),
            router="sim",
            model=MODEL,
            ok=False,
            error_class="http_5xx",
            error_detail="HTTP 502",
        )
        for i in range(2)
    ]
    # The exhausted ones last of all: were they failures, the model would be down (3 in a row).
    exhausted = [r for r in probed if r.error_class == "budget_exhausted"]
    answered = [r for r in probed if r.ok]
    moved = [
        *(replace(r, started_at=now - timedelta(seconds=60 - i)) for i, r in enumerate(answered)),
        *(replace(r, started_at=now - timedelta(seconds=10 - i)) for i, r in enumerate(exhausted)),
    ]
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            assert await write_batch(conn, [*failed, *moved]) == 12
            stored = await conn.fetch(
                "SELECT error_class, reasoning_tokens, ttfat_ms IS NULL AS no_answer FROM probe_results"
                " WHERE error_class = 'budget_exhausted'"
            )
            assert [(r["reasoning_tokens"], r["no_answer"]) for r in stored] == [(66, True)] * 4
            exact = {c.model: c for c in await window_counts(conn, now - timedelta(hours=1), now + timedelta(1))}
        aggregator = Aggregator(pool, {"1h": 3600.0}, [("sim", MODEL)], 10.0, slo=SLO, probe_interval_s=60.0)
        await aggregator.refresh()
        client = await aiohttp_client(create_app(aggregator))

        body = await (await client.get("/v1/models")).json()
        (model,) = body["models"]
        stats = model["stats"]
        assert stats["samples"]["attempted"] == 8 == exact[MODEL].attempts, "6 answered + 2 router failures"
        assert (stats["samples"]["failed"], stats["samples"]["excluded_budget_exhausted"]) == (2, 4)
        assert stats["errors_by_class"] == {"http_5xx": 2}
        assert stats["error_rate"] == 0.25
        figures = ("ttft_p50_ms", "ttfat_p50_ms", "error_rate", "errors_by_class", "samples")
        print("\n" + json.dumps({k: stats[k] for k in figures}))
        # 3 exhausted probes in a row would make it down, were they failures; 2 failures of 8 make it degraded.
        assert aggregator.status is not None
        (status,) = [m for m in aggregator.status.models if m.model == MODEL]
        assert (status.state, status.consecutive_failures) == ("degraded", 0)
        assert model["state"] == "degraded" and status.reason.endswith("(2/8)"), status.reason
        # TTFAT is the answer's: 100 reasoning tokens at 2000 tok/s after the first token.
        ttft = [r.ttft_ms for r in answered if r.ttft_ms is not None]
        ttfat = [r.ttfat_ms for r in answered if r.ttfat_ms is not None]
        assert stats["ttfat_p50_ms"] - stats["ttft_p50_ms"] == pytest.approx(sorted(ttfat)[3] - sorted(ttft)[3], abs=15)
        assert stats["ttfat_p50_ms"] - stats["ttft_p50_ms"] > 40

        metrics = (await (await client.get("/metrics")).text()).replace("\r", "")
        samples = {
            s.name: s.value
            for f in text_string_to_metric_families(metrics)
            for s in f.samples
            if s.labels.get("model") == MODEL
        }
        assert samples["routewatch_window_probes_budget_exhausted"] == 4
        assert samples["routewatch_window_probes_attempted"] == 8
    finally:
        await pool.close()
