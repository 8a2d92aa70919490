"""Prompt tiers end to end: probes at 100 and 10k input tokens through the simulator, stored, rolled up, published.

The simulated model's first token comes later by a known prefill time per
1,000 prompt tokens. Probed for real over loopback at two generated tiers,
written by the writer, rolled up and published by the aggregator, the API
must show per-tier TTFT that differ as the simulator was told, the
router's prompt_tokens at the tier, and headline figures equal to the
headline tier's alone (and to the other tier's when that is the headline).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import pytest
from factories import probe_result

from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.refresh import Aggregator
from routewatch.config import SLOConfig, TimeoutsConfig
from routewatch.config.model import TIER_INSTRUCTION
from routewatch.probe import chat_stream
from routewatch.probe.scheduler import new_session
from routewatch.probe.target import Canary, Target
from routewatch.results.probe_result import ProbeResult
from routewatch.simulator import ModelProfile, start_simulator
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.db

ClientFactory = Callable[..., Any]
MODEL = "acme/prefill"
PER_TIER = 120
INSTRUCTION = [{"role": "user", "content": TIER_INSTRUCTION}]
CANARIES = (Canary("t100", INSTRUCTION, 16, 4, "100", 100), Canary("t10k", INSTRUCTION, 16, 4, "10k", 10_000))
PROFILE = ModelProfile(
    model=MODEL,
    provider="Prime Cloud",
    ttft_median_ms=40,
    ttft_ms_per_1k_input=50,  # 10k tokens: 500 ms of prefill on top of 40 ms
    ttft_sigma=0.1,
    tokens_per_s=2000,
    output_tokens=6,
)


async def probe_both_tiers() -> tuple[list[ProbeResult], list[dict[str, Any]]]:
    """PER_TIER probes of each tier, interleaved, 16 at a time, and the simulator's record of each."""
    async with await start_simulator([PROFILE], seed=12) as sim, new_session(16) as session:
        target = Target("sim", sim.base_url, MODEL)
        gate = asyncio.Semaphore(16)

        async def one(canary: Canary) -> ProbeResult:
            async with gate:
                return await chat_stream.run(session, target, canary, TimeoutsConfig(), region="test")

        results = await asyncio.gather(*(one(CANARIES[i % 2]) for i in range(2 * PER_TIER)))
        truth = [vars(sim.ground_truth.by_request_id(r.request_id or "")) for r in results]
    return list(results), truth


async def store(pool: asyncpg.Pool, results: list[ProbeResult]) -> None:
    """The schema made, and ``results`` written by the writer."""
    async with pool.acquire() as conn:
        await ensure_schema(conn)
        assert await write_batch(conn, results) == len(results)


async def published(pool: asyncpg.Pool, client_factory: ClientFactory, headline: str) -> dict[str, Any]:
    """What the API publishes with ``headline`` as the headline tier."""
    aggregator = Aggregator(pool, {"1h": 3600.0}, [("sim", MODEL)], 10.0, headline_tier=headline)
    await aggregator.refresh()
    client = await client_factory(create_app(aggregator))
    out = {}
    for name, path, params in (
        ("detail", f"/v1/models/{MODEL}", {}),
        ("listing", "/v1/models", {}),
        ("by_tier", f"/v1/models/{MODEL}/stats", {"window": "1h", "by": "tier"}),
    ):
        response = await client.get(path, params=params)
        assert response.status == 200, (path, await response.text())
        out[name] = await response.json()
    return out


async def test_per_tier_ttft_differs_as_the_simulator_was_told_and_the_headline_is_one_tier(
    pool: asyncpg.Pool, aiohttp_client: ClientFactory
) -> None:
    results, truth = await probe_both_tiers()
    assert all(r.ok for r in results), [r.error_detail for r in results if not r.ok][:3]
    # The router's own count (usage.prompt_tokens) lands on the tier: within 2%.
    for tier, tokens in (("100", 100), ("10k", 10_000)):
        reported = [r.input_tokens for r in results if r.tier == tier]
        assert len(reported) == PER_TIER
        assert all(n is not None and abs(n - tokens) <= 0.02 * tokens for n in reported), (tier, set(reported))
    # No two probes sent the same prompt: each nonce seeded its own words.
    assert len({t["nonce_prompt"] for t in truth}) == 2 * PER_TIER

    await store(pool, results)
    stored = await pool.fetch("SELECT tier, count(*) AS n FROM probe_results GROUP BY tier ORDER BY tier")
    assert [tuple(r) for r in stored] == [("100", PER_TIER), ("10k", PER_TIER)]
    short = await published(pool, aiohttp_client, "100")
    # Grafana's SQL-readable percentiles, written by that refresh, are the headline tier's too.
    sql = await pool.fetchrow(
        "SELECT sum(attempts) AS attempts, max(ttft_p50_ms) AS p50 FROM probe_percentiles_hourly"
        " WHERE scope = 'model' AND model = $1",
        MODEL,
    )
    long = await published(pool, aiohttp_client, "10k")

    window = short["detail"]["windows"]["1h"]
    tiers = window["breakdown"]["tier"]
    assert sql["attempts"] == PER_TIER
    assert sql["p50"] == pytest.approx(tiers["100"]["ttft_p50_ms"], rel=0.02)
    assert set(tiers) == {"100", "10k"}
    for tier, tokens in (("100", 100), ("10k", 10_000)):
        mine = [r.ttft_ms for r in results if r.tier == tier]
        cell = tiers[tier]
        assert cell["samples"]["attempted"] == PER_TIER
        # The published p50 is the measured one (the histograms' accuracy) ...
        assert cell["ttft_p50_ms"] == pytest.approx(np.percentile(mine, 50), rel=0.02)
        # ... the simulator drew its first tokens around the median it was told for that prompt
        # size (sampling error only), and the probe saw none earlier than that (loopback and a
        # loaded machine only add).
        told = PROFILE.ttft_median_for(tokens)
        drawn = [t["drawn_ttft_ms"] for t, r in zip(truth, results, strict=True) if r.tier == tier]
        assert np.median(drawn) == pytest.approx(told, rel=0.05), (tier, told)
        assert cell["ttft_p50_ms"] >= 0.95 * told, (tier, cell, told)
    # The 10k tier waited for 9,900 more tokens of prefill: 495 ms. Both tiers were probed
    # interleaved, so the overhead of the machine is in both and the difference is the prefill.
    difference = tiers["10k"]["ttft_p50_ms"] - tiers["100"]["ttft_p50_ms"]
    assert abs(difference - PROFILE.ttft_ms_per_1k_input * 9.9) <= 0.1 * PROFILE.ttft_ms_per_1k_input * 9.9 + 15

    # The headline is the headline tier's figure alone, everywhere it is shown.
    for answer, headline in ((short, "100"), (long, "10k")):
        detail = answer["detail"]["windows"]["1h"]
        cell = detail["breakdown"]["tier"][headline]
        assert detail["tier"] == headline
        for figure in ("ttft_p50_ms", "ttft_p95_ms", "tps_p50", "samples"):
            assert detail[figure] == cell[figure], (headline, figure)
        (entry,) = [m for m in answer["listing"]["models"] if m["id"] == MODEL]
        assert (entry["stats"]["tier"], entry["stats"]["ttft_p50_ms"]) == (headline, cell["ttft_p50_ms"])
        # Provider and region cells are of the headline tier too.
        assert detail["breakdown"]["provider"]["Prime Cloud"]["samples"] == cell["samples"]
        by_tier = answer["by_tier"]
        assert by_tier["breakdown"]["tier"] == detail["breakdown"]["tier"]
    assert long["detail"]["windows"]["1h"]["ttft_p50_ms"] > 4 * short["detail"]["windows"]["1h"]["ttft_p50_ms"]
    excerpt = {
        "tier": window["tier"],
        "ttft_p50_ms": window["ttft_p50_ms"],
        "breakdown.tier": {t: {k: c[k] for k in ("ttft_p50_ms", "ttft_p95_ms", "samples")} for t, c in tiers.items()},
    }
    print(f"GET /v1/models/{MODEL} windows.1h (headline tier 100):", json.dumps(excerpt))


@pytest.mark.parametrize(("headline", "state"), [("100", "operational"), ("10k", "degraded")])
async def test_the_ttft_slo_is_judged_on_the_headline_tier_alone(
    pool: asyncpg.Pool, aiohttp_client: ClientFactory, headline: str, state: str
) -> None:
    """Fast 100-token probes beside 10k ones whose first token takes 8 s (over the 5 s p95 target):
    the model is operational while the headline is 100, degraded on its TTFT when it is 10k."""
    now = datetime.now(UTC)
    results = [
        probe_result(
            model=MODEL,
            started_at=now - timedelta(seconds=60 - i),
            prompt="long" if i % 2 else "short",
            tier="10k" if i % 2 else "100",
            ttft_ms=8000.0 if i % 2 else 50.0,
        )
        for i in range(40)
    ]
    await store(pool, results)
    slo = SLOConfig(window=900)
    aggregator = Aggregator(
        pool, {"1h": 3600.0}, [("sim", MODEL)], 10.0, slo=slo, probe_interval_s=3600.0, headline_tier=headline
    )
    await aggregator.refresh()
    client = await aiohttp_client(create_app(aggregator))
    status = await (await client.get("/v1/status")).json()
    (model,) = [m for m in status["models"] if m["id"] == MODEL]
    assert model["state"] == state, model
    # The status page's JSON twin says which tier its figures are of, as the page does.
    twin = await client.get("/status.json")
    assert twin.status == 200, await twin.text()
    body = await twin.json()
    assert body["tier"] == headline, body["tier"]
    (row,) = [m for m in body["models"] if m["id"] == MODEL]
    assert row["routers"][0]["ttft_p50_ms"] == pytest.approx(8000.0 if headline == "10k" else 50.0, rel=0.05)
    if state == "degraded":
        assert model["reason"].startswith("p95 TTFT 8000 ms > 5000 ms"), model["reason"]
