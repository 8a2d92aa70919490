"""Each router dialect, spoken by the simulator, read by the probe: every field against the ground truth.

The simulated router fails upstream calls at random, retries them, falls
back to a second upstream and sometimes gives up, so the probes see first
attempts, retried answers, fallbacks and the router's 502 alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from routewatch.config import TimeoutsConfig
from routewatch.probe import chat_stream
from routewatch.probe.scheduler import new_session
from routewatch.probe.target import Canary, Target
from routewatch.results.probe_result import ProbeResult
from routewatch.simulator import ModelProfile, start_simulator
from routewatch.simulator.dialects import GENERIC_FIELDS
from routewatch.simulator.groundtruth import ServedRequest

pytestmark = pytest.mark.system

CANARY = Canary("short", [{"role": "user", "content": "Count from 1 to 40 in words."}], 64, 8)
PROBES = 40


def router(dialect: str) -> ModelProfile:
    """A model whose upstream fails 40% of calls; the router retries once, then falls back once."""
    return ModelProfile(
        model=f"sim/{dialect}",
        provider="Prime Cloud",
        ttft_median_ms=10,
        ttft_sigma=0.0,
        tokens_per_s=1000,
        output_tokens=8,
        served_model=f"sim/{dialect}-2025-01-01",
        dialect=dialect,
        upstream_failure_rate=0.4,
        router_retries=1,
        fallback_provider="Backup Cloud",
        upstream_failure_ms=15,
    )


async def probe_all(dialect: str, read_as: str) -> list[tuple[ProbeResult, ServedRequest]]:
    """``PROBES`` probes of a simulated router speaking ``dialect``, read as ``read_as``, with their truths."""
    fields = GENERIC_FIELDS if read_as == "generic" else {}
    pairs = []
    async with await start_simulator([router(dialect)], seed=15) as sim, new_session(4) as session:
        target = Target("sim", sim.base_url, f"sim/{dialect}", dialect=read_as, dialect_fields=fields)
        for _ in range(PROBES):
            result = await chat_stream.run(session, target, CANARY, TimeoutsConfig(), region="test")
            assert result.request_id is not None
            truth = sim.ground_truth.by_request_id(result.request_id)
            assert truth is not None
            pairs.append((result, truth))
    return pairs


def check_every_field(result: ProbeResult, truth: ServedRequest, dialect: str, read_as: str) -> None:
    """The probe read what the simulator announced, field by field."""
    assert result.ok == (truth.status == 200), result.error_detail
    if read_as == "auto" and not result.ok and dialect == "openrouter":
        # OpenRouter's marks are in the chunks; an error has none, and reads as plain (finding nothing).
        assert result.dialect == "plain"
    else:
        assert result.dialect == dialect
    assert result.provider == truth.provider_label
    assert result.provider != ""
    if result.ok:
        assert result.model_served == truth.served_model
    assert result.attempts == truth.attempts_sent
    assert result.fallbacks == truth.fallbacks_sent
    assert result.router_request_id == truth.router_request_id
    assert result.reported_cost_usd == (None if truth.cost_usd is None else pytest.approx(truth.cost_usd))
    if result.ok:
        assert result.ttft_ms is not None and truth.injected_ttft_ms is not None
        # The failed calls the router hid are in the first token's wait, and so in the TTFT.
        assert truth.injected_ttft_ms == pytest.approx(truth.upstream_delay_ms + (truth.drawn_ttft_ms or 0))
        assert result.ttft_ms >= truth.injected_ttft_ms - 1.0
    else:
        assert result.error_class == "http_5xx"
        assert truth.fault == "upstream_exhausted"


@pytest.mark.parametrize(
    ("dialect", "read_as"),
    [
        ("openrouter", "auto"),
        ("openrouter", "openrouter"),
        ("litellm", "auto"),
        ("litellm", "litellm"),
        ("headers", "auto"),
        ("headers", "headers"),
        ("generic", "generic"),
        ("plain", "auto"),
    ],
)
async def test_every_field_matches_the_ground_truth(dialect: str, read_as: str) -> None:
    pairs = await probe_all(dialect, read_as)
    for result, truth in pairs:
        check_every_field(result, truth, dialect, read_as)
    truths = [truth for _, truth in pairs]
    # The seed gives every case: first attempts, retries, fallbacks and a router that gave up.
    assert {t.attempts for t in truths} >= {1, 2, 3}
    assert any(t.fallbacks for t in truths) and any(t.status == 502 for t in truths)
    assert {t.provider for t in truths} == {"Prime Cloud", "Backup Cloud"}


async def test_a_dialect_that_does_not_match_reads_nothing_it_cannot_see() -> None:
    # Told the router is OpenRouter, a LiteLLM proxy's headers are not read: attempts stay unknown, never 1.
    for result, _truth in await probe_all("litellm", "openrouter"):
        assert (result.dialect, result.attempts, result.fallbacks, result.provider) == ("openrouter", None, None, None)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_session(2) as s:
        yield s


async def test_a_failed_probe_stores_no_empty_provider(session: aiohttp.ClientSession) -> None:
    failing = ModelProfile(
        model="sim/down", provider="Down Inc", ttft_median_ms=10, error_rate=1.0, faults={"http_500": 1.0}
    )
    async with await start_simulator([failing]) as sim:
        result = await chat_stream.run(
            session, Target("sim", sim.base_url, "sim/down"), CANARY, TimeoutsConfig(), region="t"
        )
    assert result.error_class == "http_5xx"
    assert result.provider is None and result.model_served is None
