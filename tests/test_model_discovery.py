"""One prober's discovery against the real simulator on loopback, driven read by read:
what it probes after a good, a malformed and a truncated list, and what its ``/metrics`` says."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hostile.harness import routewatch_once
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from routewatch.config import parse_config
from routewatch.config.model import Price
from routewatch.model_discovery import ModelDiscovery, discovery_families, running_discovery
from routewatch.probe import chat_stream
from routewatch.probe.model_listing import MAX_LISTED, ListingError, read_listing
from routewatch.probe.targets import plan
from routewatch.simulator import ModelProfile, RunningSimulator, start_simulator

pytestmark = pytest.mark.system

MODELS = ["a/one", "a/two", "a/skip-three", "b/four"]
CONFIG = """routers:
  - name: sim
    base_url: {url}
    models: [b/four]
    discover: {{include: ["a/*", "b/*"], exclude: ["*/skip-*"], refresh: 1h}}
prompts:
  - name: p
    messages: [{{role: user, content: hi}}]
"""


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(
        [ModelProfile(model=m, provider="P", ttft_median_ms=5, tokens_per_s=500, output_tokens=2) for m in MODELS]
    )
    try:
        yield running
    finally:
        await running.close()


async def _control(sim: RunningSimulator, path: str, body: Any) -> None:
    async with aiohttp.ClientSession() as session, session.put(sim.base_url + path, json=body) as resp:
        assert resp.status == 200, await resp.text()


class _Families(Collector):
    def __init__(self, discovery: ModelDiscovery) -> None:
        self._discovery = discovery

    def collect(self) -> Any:
        return discovery_families(self._discovery)


def _metrics(discovery: ModelDiscovery) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(discovery))
    return generate_latest(registry).decode()


async def test_good_malformed_and_truncated_lists(sim: RunningSimulator) -> None:
    config = parse_config(CONFIG.format(url=sim.base_url), "probes.yaml")
    _, routers = plan(config, {})
    applied: list[dict[str, tuple[str, ...]]] = []

    async def apply(found: ModelDiscovery) -> None:
        applied.append(dict(found.discovered))

    async with aiohttp.ClientSession() as session:
        discovery = ModelDiscovery(config, routers, session, apply)
        await discovery.refresh("sim")
        assert discovery.discovered == {"sim": ("a/one", "a/two")}  # b/four is configured, a/skip-three excluded
        assert applied == [{"sim": ("a/one", "a/two")}]
        series, _ = plan(config, {}, discovered=discovery.discovered)
        assert sorted(s.key for s in series) == ["sim|a/one|p", "sim|a/two|p", "sim|b/four|p"]

        # The same list again: nothing to re-plan.
        await discovery.refresh("sim")
        assert len(applied) == 1

        # A malformed list: the set stays, the failure is counted.
        await _control(sim, "/simulator/listing", {"raw_body": '{"data": 12}'})
        await discovery.refresh("sim")
        assert discovery.discovered == {"sim": ("a/one", "a/two")} and len(applied) == 1

        # A list cut at its bound adds what it has and drops nothing it may have cut off.
        data = [{"id": f"b/{i:06d}"} for i in range(MAX_LISTED + 1)]
        await _control(sim, "/simulator/listing", {"raw_body": json.dumps({"data": data})})
        await discovery.refresh("sim")
        found = discovery.discovered["sim"]
        assert found[:3] == ("a/one", "a/two", "b/000000") and len(found) == config.routers[0].discover.max_models
        assert discovery.over_cap["sim"] == MAX_LISTED - config.routers[0].discover.max_models

        # A reload with new globs: the next read (at once) selects with them.
        narrower = parse_config(CONFIG.format(url=sim.base_url).replace('"b/*"', '"c/*"'), "probes.yaml")
        await _control(sim, "/simulator/listing", {"raw_body": None})
        discovery.reconfigure(narrower, plan(narrower, {})[1])
        await discovery.refresh("sim")
        assert discovery.discovered == {"sim": ("a/one", "a/two")}
        assert applied[-1] == {"sim": ("a/one", "a/two")}

    text = _metrics(discovery)
    assert 'routewatch_discovery_listings_total{outcome="ok",router="sim"} 4.0' in text
    assert 'routewatch_discovery_listings_total{outcome="failed",router="sim"} 1.0' in text
    assert 'routewatch_discovery_models{router="sim"} 2.0' in text


async def test_a_listed_price_that_changes_re_plans_and_costs_the_probes_at_the_new_price(
    sim: RunningSimulator,
) -> None:
    config = parse_config(CONFIG.format(url=sim.base_url), "probes.yaml")
    _, routers = plan(config, {})
    applied: list[dict[str, dict[str, Price]]] = []

    async def apply(found: ModelDiscovery) -> None:
        applied.append({r: dict(p) for r, p in found.prices.items()})

    await _control(sim, "/simulator/listing", {"prices": {"a/one": ["0.000001", "0.000002"], "b/four": ["0", "0"]}})
    async with aiohttp.ClientSession() as session:
        discovery = ModelDiscovery(config, routers, session, apply)
        await discovery.refresh("sim")
        # The configured b/four has no price in the file: the list's ("0", free) costs it too.
        assert applied[-1] == {"sim": {"a/one": Price(input=1, output=2), "b/four": Price(input=0, output=0)}}
        await discovery.refresh("sim")
        assert len(applied) == 1, "the same prices again: nothing to re-plan"
        await _control(
            sim, "/simulator/listing", {"prices": {"a/one": ["0.000003", "0.000004"], "b/four": ["-1", "0"]}}
        )
        await discovery.refresh("sim")
        assert len(applied) == 2 and applied[-1] == {"sim": {"a/one": Price(input=3, output=4)}}
    series, _ = plan(config, {}, discovered=discovery.discovered, listed_prices=discovery.prices)
    assert {s.target.model: s.target.price for s in series} == {
        "a/one": Price(input=3, output=4),
        "a/two": None,
        "b/four": None,  # its listed price now "varies": rejected, and the file gives none
    }


async def test_a_list_slower_than_the_limit_is_a_failure_within_the_limit(sim: RunningSimulator) -> None:
    await _control(sim, "/simulator/listing", {"delay_s": 5, "page_size": 1})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ListingError, match=r"not read within 0\.3 s"):
            await read_listing(session, sim.base_url, None, {}, 0.3)


def test_once_probes_the_models_a_router_lists(tmp_path: Path) -> None:
    config = tmp_path / "probes.yaml"
    config.write_text(
        "routers:\n  - name: sim\n    base_url: simulator\n"
        '    discover: {include: ["openai/*", "google/*"]}\n'
        "prompts:\n  - name: short\n    messages: [{role: user, content: hi}]\n    max_tokens: 16\n"
    )
    done = routewatch_once(config)
    # The built-in simulator's models fail now and then, as configured: `once` exits 2 when a probe
    # failed (README, Commands), which is not a crash.
    assert done.returncode in (0, 2), done.stdout + done.stderr
    assert "router sim lists 5 models; probing 2" in done.stdout
    assert "openai/gpt-4.1-nano" in done.stdout and "google/gemini-2.5-flash" in done.stdout
    assert "anthropic/" not in done.stdout and re.search(r"\b\d of 2 probes ok", done.stdout)


def test_once_gives_a_model_it_finds_reasoning_its_budget_and_probes_it_again(tmp_path: Path) -> None:
    # The simulator's deepseek/deepseek-r1 reasons for 24 tokens: more than this prompt's 16.
    config = tmp_path / "probes.yaml"
    config.write_text(
        "routers:\n  - name: sim\n    base_url: simulator\n    models: [deepseek/deepseek-r1]\n"
        "prompts:\n  - name: short\n    messages: [{role: user, content: hi}]\n"
        "    max_tokens: 16\n    min_output_tokens: 4\n"
    )
    done = routewatch_once(config)
    # The second probe had room to reason (the model's own 3% of faults aside, it answered).
    assert "budget_exhausted" not in done.stdout and re.search(r"\b\d of 1 probes ok", done.stdout), done.stdout


async def test_a_404_for_a_discovered_model_has_the_list_read_at_once(sim: RunningSimulator) -> None:
    """With a list read every hour, a model the router drops would fail for up to an hour (and go down);
    its first 404 has the list read now, and the model is no longer probed."""
    config = parse_config(CONFIG.format(url=sim.base_url), "probes.yaml")
    _, routers = plan(config, {})
    changed = asyncio.Event()

    async def apply(found: ModelDiscovery) -> None:
        changed.set()

    async with running_discovery(config, routers, apply, None) as discovery:
        await asyncio.wait_for(changed.wait(), 10)  # the first read, at start
        assert discovery.discovered == {"sim": ("a/one", "a/two")}
        changed.clear()
        async with aiohttp.ClientSession() as session, session.delete(f"{sim.base_url}/simulator/models/a/two"):
            pass
        async with aiohttp.ClientSession() as session:
            target = next(s for s in plan(config, {}, discovered=discovery.discovered)[0] if s.target.model == "a/two")
            result = await chat_stream.run(session, target.target, target.canary, config.timeouts, region="test")
        assert result.http_status == 404
        discovery.note_result(result)
        await asyncio.wait_for(changed.wait(), 10)
        assert discovery.discovered == {"sim": ("a/one",)}
        # Another 404, for a model still listed, within EARLY_READ_S asks for no further read.
        discovery.note_result(dataclasses.replace(result, model="a/one"))
        await asyncio.sleep(1.0)
        assert discovery.listings[("sim", "ok")] == 2
