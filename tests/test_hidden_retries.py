"""A router that hides upstream failures behind retries, and routewatch publishing what it hides.

The simulated LiteLLM proxy's upstream fails a quarter of its calls; the
router retries each failure (up to three times), so clients almost never see
an error, only a slower first token. Probed for real over loopback, stored by
the writer, rolled up and published by the aggregator: the API must show a
client error rate near 0, an upstream failure estimate and a retried share
near 25% (within the sampling error of this run), the TTFT of retried answers
apart from first-call ones, and the model degraded with the reason.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np
import pytest

from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.refresh import Aggregator
from routewatch.config import SLOConfig, TimeoutsConfig
from routewatch.probe import chat_stream
from routewatch.probe.scheduler import new_session
from routewatch.probe.target import Canary, Target
from routewatch.results.probe_result import ProbeResult
from routewatch.simulator import ModelProfile, start_simulator
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.db

ClientFactory = Callable[..., Any]
MODEL = "acme/retrying"
SERVED = "acme/retrying-2025-06-01"
FAILURE_RATE = 0.25
PROBES = 400
CANARY = Canary("short", [{"role": "user", "content": "Count from 1 to 40 in words."}], 64, 8)
PROFILE = ModelProfile(
    model=MODEL,
    provider="Prime Cloud",
    ttft_median_ms=40,
    ttft_sigma=0.1,
    tokens_per_s=2000,
    output_tokens=8,
    served_model=SERVED,
    dialect="litellm",
    upstream_failure_rate=FAILURE_RATE,
    router_retries=3,  # a failed call takes as long as a first token would have (upstream_failure_ms unset)
)
# Where the excerpt of the API's answer goes, for the record of a run.
EXCERPT = "hidden-retries-api.json"


async def probe_many() -> tuple[list[ProbeResult], list[dict[str, Any]]]:
    """PROBES probes, 16 at a time, and the simulator's record of each."""
    async with await start_simulator([PROFILE], seed=25) as sim, new_session(16) as session:
        target = Target("litellm", sim.base_url, MODEL)
        gate = asyncio.Semaphore(16)

        async def one() -> ProbeResult:
            async with gate:
                return await chat_stream.run(session, target, CANARY, TimeoutsConfig(), region="test")

        results = await asyncio.gather(*(one() for _ in range(PROBES)))
        truth = [vars(sim.ground_truth.by_request_id(r.request_id or "")) for r in results]
    return list(results), truth


def within(estimate: float, p: float, n: int, sds: float = 4.0) -> bool:
    """Whether ``estimate`` is within ``sds`` binomial standard errors of ``p`` over ``n`` trials."""
    return abs(estimate - p) <= sds * math.sqrt(p * (1 - p) / n)


async def test_a_router_hiding_upstream_failures_is_published_as_such(
    db_dsn: str, aiohttp_client: ClientFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    results, truth = await probe_many()
    assert all(t["dialect"] == "litellm" for t in truth)
    calls = sum(t["attempts"] for t in truth)
    failed_calls = sum(t["attempts"] - (t["status"] == 200) for t in truth)
    answered = [t for t in truth if t["status"] == 200]
    retried = [t for t in answered if t["attempts"] > 1]

    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            await write_batch(conn, results)
        aggregator = Aggregator(
            pool, {"1h": 3600.0}, [("litellm", MODEL)], 10.0, slo=SLOConfig(window=3600), probe_interval_s=3600.0
        )
        await aggregator.refresh()
        client = await aiohttp_client(create_app(aggregator))
        stats = await (await client.get(f"/v1/models/{MODEL}/stats", params={"window": "1h"})).json()
        served = await (
            await client.get(f"/v1/models/{MODEL}/stats", params={"window": "1h", "by": "served_model"})
        ).json()
        status = await (await client.get("/v1/status")).json()
    finally:
        await pool.close()

    retries = stats["router_retries"]
    # What clients saw: almost no errors (only when all four calls failed: 0.4% expected).
    assert stats["samples"]["attempted"] == PROBES
    assert stats["samples"]["failed"] == PROBES - len(answered)
    assert stats["error_rate"] < 0.02
    # What the router hid, exactly as the simulator recorded it ...
    assert (retries["upstream_calls"], retries["upstream_calls_failed"]) == (calls, failed_calls)
    assert (retries["reported_ok"], retries["retried"]) == (len(answered), len(retried))
    # ... and near the upstream's true failure rate, within this run's sampling error.
    assert within(retries["upstream_failure_rate"], FAILURE_RATE, calls)
    assert retries["upstream_failure_rate_ci95"][0] <= FAILURE_RATE <= retries["upstream_failure_rate_ci95"][1]
    # A success was retried when its first call failed: P = 0.25 (less the few that never succeeded).
    assert within(retries["retried_share"], FAILURE_RATE, len(answered))
    # Retried answers waited for the failed calls (each about a first token's time) before theirs.
    first = np.array([r.ttft_ms for r in results if r.ok and r.attempts == 1])
    again = np.array([r.ttft_ms for r in results if r.ok and r.attempts is not None and r.attempts > 1])
    hidden_ms = np.median([t["upstream_delay_ms"] for t in retried])
    assert retries["ttft_first_attempt_p50_ms"] == pytest.approx(np.percentile(first, 50), rel=0.02)
    assert retries["ttft_retried_p50_ms"] == pytest.approx(np.percentile(again, 50), rel=0.02)
    assert retries["ttft_retried_p50_ms"] - retries["ttft_first_attempt_p50_ms"] > 0.5 * hidden_ms
    assert retries["ttft_retried_p95_ms"] > retries["ttft_first_attempt_p95_ms"]
    # Who answered: the served model the router named, all of the answers.
    cells = served["breakdown"]["served_model"]
    assert cells[SERVED]["share"] == 1.0 and cells[SERVED]["samples"]["ok"] == len(answered)
    # The state: degraded, and why.
    (model_status,) = [m for m in status["models"] if m["id"] == MODEL]
    assert model_status["state"] == "degraded"
    assert model_status["reason"].startswith("router retried ")
    assert "upstream failures clients do not see" in model_status["reason"]

    excerpt = {
        "GET /v1/models/acme/retrying/stats?window=1h": {
            k: stats[k] for k in ("error_rate", "samples", "ttft_p50_ms", "ttft_p95_ms", "router_retries")
        },
        "GET ...?by=served_model": served["breakdown"],
        "GET /v1/status (this model)": {k: model_status[k] for k in ("id", "state", "reason")},
        "run": {"at": datetime.now(UTC).isoformat(), "probes": PROBES, "upstream_failure_rate": FAILURE_RATE},
    }
    (tmp_path_factory.getbasetemp() / EXCERPT).write_text(json.dumps(excerpt, indent=2))
    print(json.dumps(excerpt, indent=2))
