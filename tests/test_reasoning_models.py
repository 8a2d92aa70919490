"""Reasoning models: the output budget they are sent, and a budget spent reasoning, against the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from factories import MINIMAL_CONFIG, probe_result

from routewatch.config import ConfigError, ReasoningConfig, TimeoutsConfig, parse_config
from routewatch.probe.reasoning import (
    OPENAI,
    OPENROUTER,
    OutputBudget,
    ReasoningModels,
    choose_budget,
    request_style,
    shows_reasoning,
)
from routewatch.probe.scheduler import Prober, Series, new_session
from routewatch.probe.target import Canary, Target, request_body
from routewatch.results.probe_result import ProbeResult
from routewatch.simulator import ModelProfile, RunningSimulator, start_simulator
from routewatch.simulator.groundtruth import ServedRequest

CANARY = Canary("short", [{"role": "user", "content": "Count from 1 to 20 in words."}], 64, 8)
MS = 1_000_000


# ---------------------------------------------------------------- probes.yaml


def _with_router_lines(lines: str) -> str:
    return MINIMAL_CONFIG.replace("    base_url: simulator\n", "    base_url: simulator\n" + lines)


@pytest.mark.unit
def test_every_router_detects_reasoning_models_unless_told_otherwise() -> None:
    assert parse_config(MINIMAL_CONFIG, "probes.yaml").routers[0].reasoning == ReasoningConfig(
        budget_tokens=2048, effort=None, models=[], detect=True, request="auto"
    )
    lines = "    reasoning:\n      budget_tokens: 4096\n      effort: low\n      models: ['openai/o*']\n"
    settings = parse_config(_with_router_lines(lines), "probes.yaml").routers[0].reasoning
    assert (settings.budget_tokens, settings.effort, settings.models) == (4096, "low", ["openai/o*"])


@pytest.mark.unit
@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            "    reasoning:\n      budget_tokens: 0\n",
            "probes.yaml:5: routers[0].reasoning.budget_tokens: Input should be greater than or equal to 1",
        ),
        (
            "    reasoning:\n      effort: extreme\n",
            "probes.yaml:5: routers[0].reasoning.effort: "
            "Input should be 'none', 'minimal', 'low', 'medium', 'high' or 'xhigh'",
        ),
        ("    reasoning:\n      models: ['']\n", "probes.yaml:5: routers[0].reasoning.models[0]: must not be empty"),
        (
            "    reasoning:\n      budget: 10\n",
            'probes.yaml:5: routers[0].reasoning.budget: unknown field "budget" '
            "(allowed: budget_tokens, effort, models, detect, request)",
        ),
        (
            "    reasoning:\n      request: anthropic\n",
            "probes.yaml:5: routers[0].reasoning.request: Input should be 'auto', 'openai' or 'openrouter'",
        ),
        (
            "    reasoning: 4096\n",
            "probes.yaml:4: routers[0].reasoning: expected a mapping of fields "
            "(budget_tokens, effort, models, detect, request), got a number",
        ),
        (
            "    reasoning:\n      budget_tokens: 200000\n      detect: maybe\n",
            "probes.yaml:5: routers[0].reasoning.budget_tokens: Input should be less than or equal to 131072\n"
            "probes.yaml:6: routers[0].reasoning.detect: Input should be a valid boolean, unable to interpret input",
        ),
    ],
)
def test_a_bad_reasoning_setting_names_file_line_and_field(lines: str, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(_with_router_lines(lines), "probes.yaml")
    assert str(excinfo.value) == message


# ---------------------------------------------------------------- the budget, pure


@pytest.mark.unit
def test_a_reasoning_model_gets_room_for_reasoning_on_top_of_the_answer() -> None:
    budget = choose_budget(64, ReasoningConfig(budget_tokens=2000), OPENAI)
    assert (budget.total_tokens, budget.reasoning_tokens, budget.effort) == (2064, 2000, None)
    assert budget.fields() == {"max_completion_tokens": 2064}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("style", "effort", "fields"),
    [
        (OPENAI, None, {"max_completion_tokens": 1088}),
        (OPENAI, "low", {"max_completion_tokens": 1088, "reasoning_effort": "low"}),
        (OPENROUTER, None, {"max_tokens": 1088, "reasoning": {"max_tokens": 1024}}),
        # OpenRouter takes an effort or a token limit, never both.
        (OPENROUTER, "high", {"max_tokens": 1088, "reasoning": {"effort": "high"}}),
    ],
)
def test_the_budget_goes_in_each_routers_own_fields(style: str, effort: str | None, fields: dict[str, Any]) -> None:
    assert OutputBudget(1088, 1024, effort, style).fields() == fields


@pytest.mark.unit
def test_a_budget_replaces_max_tokens_and_temperature_in_the_request() -> None:
    plain = request_body("m", CANARY, "n0nce")
    assert (plain["max_tokens"], plain["temperature"]) == (64, 0)
    reasoning = request_body("m", CANARY, "n0nce", OutputBudget(1088, 1024, "low", OPENAI).fields())
    assert "max_tokens" not in reasoning and "temperature" not in reasoning
    assert (reasoning["max_completion_tokens"], reasoning["reasoning_effort"]) == (1088, "low")
    assert reasoning["stream"] is True and reasoning["messages"][-1]["content"].startswith("[probe n0nce]")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("request_setting", "configured", "detected", "style"),
    [
        ("auto", "openrouter", None, OPENROUTER),
        ("auto", "litellm", None, OPENAI),
        ("auto", "auto", None, OPENAI),  # nothing read yet: OpenAI's fields, which most routers take
        ("auto", "auto", "openrouter", OPENROUTER),
        ("auto", "plain", "openrouter", OPENAI),  # a configured dialect wins over a detected one
        ("openai", "openrouter", "openrouter", OPENAI),
        ("openrouter", "auto", None, OPENROUTER),
    ],
)
def test_request_style_follows_the_setting_else_the_routers_dialect(
    request_setting: str, configured: str, detected: str | None, style: str
) -> None:
    settings = ReasoningConfig.model_validate({"request": request_setting})
    assert request_style(settings, configured, detected) == style


def _target(model: str = "m/think", **reasoning: Any) -> Target:
    return Target("sim", "http://127.0.0.1:9", model, reasoning=ReasoningConfig.model_validate(reasoning))


@pytest.mark.unit
def test_a_model_is_known_to_reason_once_a_probe_shows_it() -> None:
    known = ReasoningModels()
    target = _target(budget_tokens=500)
    assert known.budget(target, 64) is None, "unknown: the prompt's own max_tokens"
    known.observe(probe_result(router="sim", model="m/other", reasoning_tokens=12))
    known.observe(probe_result(router="sim", model="m/think", reasoning_tokens=None))
    assert known.budget(target, 64) is None, "another model's reasoning, or none, says nothing"
    known.observe(probe_result(router="sim", model="m/think", reasoning_tokens=40))
    assert known.budget(target, 64) == OutputBudget(564, 500, None, OPENAI)


@pytest.mark.unit
def test_a_budget_spent_reasoning_marks_the_model_as_reasoning() -> None:
    spent = probe_result(
        router="sim", model="m/think", ok=False, error_class="budget_exhausted", error_detail="x", reasoning_tokens=None
    )
    assert shows_reasoning(spent)
    known = ReasoningModels()
    known.observe(spent)
    assert known.is_reasoning(_target())


@pytest.mark.unit
def test_configured_globs_need_no_detection_and_detect_false_needs_them() -> None:
    known = ReasoningModels()
    assert known.is_reasoning(_target("openai/o3-mini", models=["openai/o*"]))
    off = _target(detect=False)
    known.observe(probe_result(router="sim", model="m/think", reasoning_tokens=40))
    assert not known.is_reasoning(off), "detection off: only the globs count"
    assert not known.is_reasoning(Target("sim", "http://127.0.0.1:9", "m/think")), "no settings: never a budget"


@pytest.mark.unit
def test_the_detected_dialect_chooses_the_request_style() -> None:
    known = ReasoningModels()
    target = _target(effort="low")
    known.observe(probe_result(router="sim", model="m/think", reasoning_tokens=3, dialect="openrouter"))
    budget = known.budget(target, 64)
    assert budget is not None and budget.fields() == {"max_tokens": 2112, "reasoning": {"effort": "low"}}


# ---------------------------------------------------------------- against the simulator

# 1000 tok/s: one token a millisecond, so 300 reasoning tokens take 299 ms after the first.
REASONING_TOKENS = 300


def _thinker(model: str, **overrides: Any) -> ModelProfile:
    fields: dict[str, Any] = dict(
        provider="Thinker",
        ttft_median_ms=40,
        ttft_sigma=0.0,
        tokens_per_s=1000,
        output_tokens=20,
        reasoning_tokens=REASONING_TOKENS,
        dialect="litellm",
    )
    return ModelProfile(model=model, **{**fields, **overrides})


@dataclass
class Lab:
    sim: RunningSimulator
    prober: Prober

    def truth(self, result: ProbeResult) -> ServedRequest:
        return next(r for r in self.sim.ground_truth.records if r.request_id == result.request_id)

    def series(self, model: str, **reasoning: Any) -> Series:
        settings = ReasoningConfig.model_validate({"budget_tokens": 512, **reasoning})
        return Series(Target("sim", self.sim.base_url, model, reasoning=settings), CANARY)


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    sim = await start_simulator(
        [
            _thinker("t/streamed"),
            _thinker("t/hidden", reasoning_hidden=True),
            _thinker("t/routed", dialect="openrouter"),
        ]
    )
    try:
        async with new_session(4) as session:
            yield Lab(sim, Prober(session, TimeoutsConfig(), "test", 4))
    finally:
        await sim.close()


@pytest.mark.system
@pytest.mark.alone  # the reasoning time is compared to 15 ms: no other test may take the CPU meanwhile
async def test_streamed_reasoning_runs_out_of_max_tokens_then_gets_its_budget(lab: Lab) -> None:
    series = lab.series("t/streamed")

    first = await lab.prober.probe(series)
    truth = lab.truth(first)
    # Not yet known to reason: the prompt's 64 tokens, all spent reasoning.
    assert truth.max_tokens_asked == CANARY.max_tokens and truth.reasoning_tokens == CANARY.max_tokens
    assert (first.ok, first.error_class, first.ttfat_ms) == (False, "budget_exhausted", None)
    assert first.reasoning_tokens == CANARY.max_tokens and first.ttft_ms is not None
    assert "max_tokens 64 was spent reasoning" in (first.error_detail or "")
    assert lab.prober.route_attempts[("sim", "t/streamed")] == 0, "not the router's failure: no attempt"

    second = await lab.prober.probe(series)
    truth = lab.truth(second)
    assert truth.max_tokens_asked == CANARY.max_tokens + 512, "the budget: the answer's tokens plus 512"
    assert second.ok and second.error_class is None
    assert (second.reasoning_tokens, truth.reasoning_tokens) == (REASONING_TOKENS, REASONING_TOKENS)
    # TTFAT - TTFT is the reasoning time the simulator spent: from the first reasoning
    # token to the first answer token, as it sent them.
    sent = truth.token_times_ns
    reasoning_ms = (sent[REASONING_TOKENS] - sent[0]) / MS
    assert second.ttft_ms is not None and second.ttfat_ms is not None
    assert reasoning_ms == pytest.approx(REASONING_TOKENS, abs=30)
    assert second.ttfat_ms - second.ttft_ms == pytest.approx(reasoning_ms, abs=15)
    print(
        f"\nreasoning time: simulator {reasoning_ms:.1f} ms, probe TTFAT - TTFT {second.ttfat_ms - second.ttft_ms:.1f} ms"
        f" (TTFT {second.ttft_ms:.1f} ms, TTFAT {second.ttfat_ms:.1f} ms)"
    )
    assert (lab.prober.route_attempts[("sim", "t/streamed")], lab.prober.route_failures[("sim", "t/streamed")]) == (
        1,
        0,
    )
    assert lab.prober.results["budget_exhausted"] == 1 and lab.prober.results["ok"] == 1


@pytest.mark.system
@pytest.mark.alone  # tok/s is compared to the simulator's rate
async def test_hidden_reasoning_is_not_an_empty_answer_and_does_not_inflate_tok_s(lab: Lab) -> None:
    series = lab.series("t/hidden", effort="low")

    first = await lab.prober.probe(series)
    truth = lab.truth(first)
    # Before budgets and this class, a silent stream ending "length" was an empty_response: a router failure.
    assert truth.token_times_ns == [] and truth.reasoning_tokens == CANARY.max_tokens
    assert (first.error_class, first.ttft_ms, first.reasoning_tokens) == ("budget_exhausted", None, 64)
    assert truth.reasoning_asked is None

    second = await lab.prober.probe(series)
    truth = lab.truth(second)
    assert truth.reasoning_asked == "reasoning_effort=low" and truth.max_tokens_asked == CANARY.max_tokens + 512
    assert second.ok and second.reasoning_tokens == REASONING_TOKENS
    assert second.output_tokens == REASONING_TOKENS + 20
    # Nothing streamed while it reasoned: the first token out is the answer's, and it came after the reasoning.
    assert second.ttft_ms == second.ttfat_ms
    assert truth.injected_ttft_ms is not None and truth.injected_ttft_ms >= 40 + REASONING_TOKENS
    assert second.ttft_ms is not None and second.ttft_ms >= truth.injected_ttft_ms
    # tok/s over the answer's 20 streamed tokens: the profile's 1000, not 320 tokens over 19 ms.
    assert second.output_tps == pytest.approx(1000, rel=0.25)
    print(f"\nhidden reasoning: tok/s {second.output_tps:.0f} (profile 1000), TTFT = TTFAT {second.ttft_ms:.1f} ms")


@pytest.mark.system
async def test_an_openrouter_router_is_sent_its_reasoning_object(lab: Lab) -> None:
    series = lab.series("t/routed")
    await lab.prober.probe(series)  # learns both: it reasons, and the router speaks OpenRouter's dialect
    result = await lab.prober.probe(series)
    truth = lab.truth(result)
    assert result.ok and result.dialect == "openrouter"
    assert (truth.max_tokens_asked, truth.reasoning_asked) == (CANARY.max_tokens + 512, "reasoning.max_tokens=512")


@pytest.mark.system
async def test_a_budget_still_too_small_is_counted_apart_with_advice(lab: Lab) -> None:
    series = lab.series("t/streamed", budget_tokens=100)
    await lab.prober.probe(series)
    result = await lab.prober.probe(series)
    assert lab.truth(result).max_tokens_asked == CANARY.max_tokens + 100
    assert result.error_class == "budget_exhausted"
    assert "budget of 164 tokens (100 for reasoning)" in (result.error_detail or "")
    assert "raise reasoning.budget_tokens" in (result.error_detail or "")
    assert lab.prober.route_failures[("sim", "t/streamed")] == 0


@pytest.mark.system
async def test_a_one_off_round_probes_a_model_it_finds_reasoning_again_with_its_budget(lab: Lab) -> None:
    streamed, named = lab.series("t/streamed"), lab.series("t/hidden", models=["t/hidden"])
    heard: list[int] = []
    results = await lab.prober.round_with_budgets([streamed, named], heard.append)
    assert heard == [1], "only the model found reasoning; the named one had its budget from the start"
    assert [r.ok for r in results] == [True, True]
    asked = [r.max_tokens_asked for r in lab.sim.ground_truth.records]
    assert sorted(asked) == [CANARY.max_tokens, CANARY.max_tokens + 512, CANARY.max_tokens + 512]


@pytest.mark.system
async def test_a_plain_model_keeps_its_max_tokens(lab: Lab) -> None:
    sim = await start_simulator([_thinker("t/plain", reasoning_tokens=0)])
    try:
        series = Series(Target("sim", sim.base_url, "t/plain", reasoning=ReasoningConfig()), CANARY)
        for _ in range(2):
            result = await lab.prober.probe(series)
            assert result.ok and result.reasoning_tokens == 0 and result.ttft_ms == result.ttfat_ms
        record = sim.ground_truth.records[-1]
        assert record.max_tokens_asked == CANARY.max_tokens and record.reasoning_asked is None
        assert not lab.prober.reasoning.is_reasoning(series.target)
    finally:
        await sim.close()


@pytest.mark.unit
def test_usage_reasoning_zero_is_no_sign_of_reasoning() -> None:
    assert not shows_reasoning(probe_result(reasoning_tokens=0))
