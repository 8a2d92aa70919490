"""Reasoning models: the output budget they are sent, and a budget spent reasoning, against the simulator."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from factories import MINIMAL_CONFIG, probe_result

from routewatch.config import (
    REASONING_SLOW_TPS,
    ConfigError,
    Deadlines,
    ReasoningConfig,
    ReasoningTimeoutsConfig,
    TimeoutsConfig,
    format_summary,
    parse_config,
)
from routewatch.probe import chat_stream
from routewatch.probe.reasoning import (
    OPENAI,
    OPENROUTER,
    OutputBudget,
    ReasoningModels,
    choose_budget,
    request_style,
    shows_reasoning,
)
from routewatch.probe.scheduler import PhasedSchedule, Prober, Series, SkippedSlotWarnings, new_session
from routewatch.probe.slots import Ownership
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
        budget_tokens=2048, effort=None, models=[], detect=True, request="auto", timeouts=ReasoningTimeoutsConfig()
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
            "(allowed: budget_tokens, effort, models, detect, request, timeouts)",
        ),
        (
            "    reasoning:\n      request: anthropic\n",
            "probes.yaml:5: routers[0].reasoning.request: Input should be 'auto', 'openai' or 'openrouter'",
        ),
        (
            "    reasoning: 4096\n",
            "probes.yaml:4: routers[0].reasoning: expected a mapping of fields "
            "(budget_tokens, effort, models, detect, request, timeouts), got a number",
        ),
        (
            "    reasoning:\n      budget_tokens: 200000\n      detect: maybe\n",
            "probes.yaml:5: routers[0].reasoning.budget_tokens: Input should be less than or equal to 131072\n"
            "probes.yaml:6: routers[0].reasoning.detect: Input should be a valid boolean, unable to interpret input",
        ),
        # reasoning.timeouts: like timeouts', none past its total, and none shorter than the ordinary one
        (
            "    reasoning:\n      timeouts:\n        first_token: 300s\n        total: 200s\n",
            "probes.yaml:6: routers[0].reasoning.timeouts.first_token: 300 s exceeds total (200 s)",
        ),
        (
            # The default first_token (188 s) is past a total set too short: pointed at the section.
            "    reasoning:\n      timeouts:\n        total: 150s\n",
            "probes.yaml:5: routers[0].reasoning.timeouts.first_token: 188 s (the default: timeouts.first_token "
            "+ budget_tokens at 16 tok/s) exceeds total (150 s)",
        ),
        (
            "    reasoning:\n      timeouts:\n        first_token: 30s\n",
            "probes.yaml:6: routers[0].reasoning.timeouts.first_token: 30 s is shorter than timeouts.first_token "
            "(60 s): a reasoning model's deadlines add room to the ordinary ones",
        ),
        (
            "    reasoning:\n      timeouts:\n        idle: 10m\n",
            "probes.yaml:6: routers[0].reasoning.timeouts.idle: 600 s exceeds total (248 s)",
        ),
        (
            "    reasoning:\n      timeouts:\n        first_token: 0s\n",
            "probes.yaml:6: routers[0].reasoning.timeouts.first_token: must be longer than 0 s",
        ),
        (
            "    reasoning:\n      timeouts:\n        headers: 5m\n",
            'probes.yaml:6: routers[0].reasoning.timeouts.headers: unknown field "headers" '
            "(allowed: first_token, idle, total)",
        ),
    ],
)
def test_a_bad_reasoning_setting_names_file_line_and_field(lines: str, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(_with_router_lines(lines), "probes.yaml")
    assert str(excinfo.value) == message


# ---------------------------------------------------------------- deadlines in probes.yaml


@pytest.mark.unit
def test_reasoning_deadlines_default_to_the_ordinary_ones_plus_the_budget_reasoned_slowly() -> None:
    config = parse_config(MINIMAL_CONFIG, "probes.yaml")
    # 2048 tokens at 16 tok/s: 128 s of silence on top of first_token (60 s) and total (120 s).
    assert REASONING_SLOW_TPS == 16
    assert config.routers[0].reasoning.deadlines(config.timeouts) == Deadlines(5, 30, 188, 30, 248)
    assert config.longest_probe_s() == 248
    lines = "    reasoning:\n      budget_tokens: 4096\n"
    text = _with_router_lines(lines) + "timeouts:\n  headers: 20s\n  first_token: 10s\n  idle: 5s\n  total: 20s\n"
    config = parse_config(text, "probes.yaml")
    assert config.routers[0].reasoning.deadlines(config.timeouts) == Deadlines(5, 20, 266, 5, 276)


@pytest.mark.unit
def test_reasoning_deadlines_set_in_the_file_replace_the_defaults_one_by_one() -> None:
    lines = "    reasoning:\n      timeouts:\n        first_token: 200s\n        idle: 45s\n"
    config = parse_config(_with_router_lines(lines), "probes.yaml")
    assert config.routers[0].reasoning.deadlines(config.timeouts) == Deadlines(5, 30, 200, 45, 248)
    lines = "    reasoning:\n      timeouts: {total: 10m}\n"
    config = parse_config(_with_router_lines(lines), "probes.yaml")
    assert config.routers[0].reasoning.deadlines(config.timeouts) == Deadlines(5, 30, 188, 30, 600)
    assert config.longest_probe_s() == 600


@pytest.mark.unit
def test_a_router_that_never_sends_a_budget_adds_no_longer_probe() -> None:
    lines = "    reasoning:\n      detect: false\n      timeouts: {total: 10m}\n"
    config = parse_config(_with_router_lines(lines), "probes.yaml")
    assert config.longest_probe_s() == 120, "no glob and no detection: no probe gets the reasoning deadlines"


@pytest.mark.unit
def test_check_config_shows_the_reasoning_deadlines_per_router_when_they_differ() -> None:
    summary = format_summary(parse_config(MINIMAL_CONFIG, "probes.yaml"), "probes.yaml")
    assert (
        "  reasoning models' deadlines: first token 188 s, total 248 s (others: first token 60 s, total 120 s)"
        in summary.splitlines()
    )
    second = "  - name: slow\n    base_url: simulator\n    models: [o/think]\n"
    second += "    reasoning: {budget_tokens: 512, timeouts: {idle: 1m}}\n"
    text = MINIMAL_CONFIG.replace("prompts:\n", second + "prompts:\n", 1)
    summary = format_summary(parse_config(text, "probes.yaml"), "probes.yaml")
    assert (
        "  reasoning models' deadlines: orcarouter: first token 188 s, total 248 s; "
        "slow: first token 92 s, idle 60 s, total 152 s (others: first token 60 s, total 120 s)"
    ) in summary.splitlines()


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
    prober_session: aiohttp.ClientSession

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
            yield Lab(sim, Prober(session, TimeoutsConfig(), "test", 4), session)
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


# ---------------------------------------------------------------- deadlines against the simulator

# Deadlines in fractions of a second, so that a silence of a few hundred milliseconds tells them apart.
# The simulator reasons at 1000 tok/s: N hidden reasoning tokens are N ms of silence before the answer.
ORDINARY = TimeoutsConfig(connect=1, headers=1, first_token=0.25, idle=0.25, total=1.0)
REASONING_DEADLINES = {"first_token": 0.9, "total": 1.5}


@pytest.fixture
async def timed_lab() -> AsyncIterator[Lab]:
    sim = await start_simulator(
        [
            _thinker("t/quiet", reasoning_hidden=True, reasoning_tokens=400),  # 0.44 s of silence
            _thinker("t/mute", reasoning_hidden=True, reasoning_tokens=1500),  # 1.54 s: past every deadline
            # Streamed, 1.16 s in all: past the ordinary total (never sooner: the simulator keeps an absolute
            # schedule, and load only makes it late), with 0.34 s to spare before its own for a loaded machine.
            _thinker("t/long", reasoning_tokens=1100),
            _thinker("t/plain", reasoning_tokens=0, ttft_median_ms=500),  # no reasoning, slow to start
        ]
    )
    try:
        async with new_session(4) as session:
            yield Lab(sim, Prober(session, ORDINARY, "test", 4), session)
    finally:
        await sim.close()


def _named(lab: Lab, model: str) -> Series:
    """A series whose model a reasoning.models glob names: the budget, and the deadlines, from its first probe."""
    return lab.series(model, models=["t/*"], budget_tokens=2048, timeouts=REASONING_DEADLINES)


@pytest.mark.system
@pytest.mark.alone  # TTFT is compared to the simulator's to 25 ms
async def test_a_silent_reasoner_within_its_reasoning_deadline_is_measured_ok(timed_lab: Lab) -> None:
    lab = timed_lab
    series = _named(lab, "t/quiet")
    result = await lab.prober.probe(series)
    assert (result.ok, result.error_class) == (True, None)
    truth = lab.truth(result)
    assert truth.injected_ttft_ms is not None and truth.injected_ttft_ms > 1000 * ORDINARY.first_token
    assert result.ttft_ms is not None and result.ttft_ms == result.ttfat_ms
    # The probe's TTFT is the simulator's: its drawn TTFT plus the silence of 400 reasoning tokens.
    assert result.ttft_ms == pytest.approx(truth.injected_ttft_ms, abs=25)
    assert result.reasoning_tokens == 400 and truth.max_tokens_asked == CANARY.max_tokens + 2048
    assert (lab.prober.route_attempts[("sim", "t/quiet")], lab.prober.route_failures[("sim", "t/quiet")]) == (1, 0)
    assert lab.prober.longest_s == REASONING_DEADLINES["total"]
    print(f"\nsilent reasoner: TTFT {result.ttft_ms:.1f} ms, simulator {truth.injected_ttft_ms:.1f} ms")

    # The same request under the ordinary deadlines, as every probe had before: a router failure of ours.
    budget = lab.prober.reasoning.budget(series.target, CANARY.max_tokens)
    assert budget is not None
    old = await chat_stream.run(lab.prober_session, series.target, CANARY, ORDINARY, region="test", budget=budget)
    assert (old.ok, old.error_class, old.error_detail) == (False, "timeout_ttft", "no first token within its limit")


@pytest.mark.system
async def test_a_reasoner_silent_past_its_reasoning_deadline_is_still_a_router_failure(timed_lab: Lab) -> None:
    lab = timed_lab
    started = time.monotonic()
    result = await lab.prober.probe(_named(lab, "t/mute"))
    waited = time.monotonic() - started
    assert (result.ok, result.error_class, result.ttft_ms) == (False, "timeout_ttft", None)
    # It waited for the reasoning deadline, not the ordinary one, and not to the total.
    assert REASONING_DEADLINES["first_token"] <= waited < REASONING_DEADLINES["total"]
    assert (lab.prober.route_attempts[("sim", "t/mute")], lab.prober.route_failures[("sim", "t/mute")]) == (1, 1)


@pytest.mark.system
async def test_a_streamed_reasoner_may_run_past_the_ordinary_total_to_its_own(timed_lab: Lab) -> None:
    lab = timed_lab
    result = await lab.prober.probe(_named(lab, "t/long"))
    assert (result.ok, result.error_class, result.reasoning_tokens) == (True, None, 1100)
    assert result.e2e_ms is not None and result.e2e_ms > 1000 * ORDINARY.total


@pytest.mark.system
async def test_a_model_sent_no_budget_keeps_the_ordinary_deadlines(timed_lab: Lab) -> None:
    lab = timed_lab
    # Its router has reasoning deadlines, but the model has never reasoned: no budget, so no more time.
    series = lab.series("t/plain", budget_tokens=2048, timeouts=REASONING_DEADLINES)
    result = await lab.prober.probe(series)
    assert (result.ok, result.error_class) == (False, "timeout_ttft")
    assert lab.prober.longest_s == ORDINARY.total


@pytest.mark.system
async def test_a_reasoning_probe_longer_than_the_interval_skips_slots_without_overlap_or_a_queue(
    timed_lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    """The slot schedule under a probe that outlasts its interval: one probe of the series at a time,
    the slots it covers skipped (not queued, not made up in a burst) and counted, the next owned slot
    probed."""
    caplog.set_level(logging.WARNING, logger="apscheduler.scheduler")
    lab = timed_lab
    interval_s = 0.2
    series = _named(lab, "t/quiet")  # about 0.45 s a probe: two slots and more each
    scheduler = AsyncIOScheduler()
    schedule = PhasedSchedule(scheduler, lab.prober, [series], interval_s, 128)
    scheduler.start()
    seen: list[tuple[int, int]] = []  # (in flight, queued) every 50 ms
    try:
        await schedule.apply(Ownership.everything(range(128)))
        for _ in range(44):  # 2.2 s
            await asyncio.sleep(0.05)
            seen.append((lab.prober.in_flight, lab.prober.queued))
    finally:
        await schedule.stop(2.0)
    truth = lab.sim.ground_truth.records
    assert 3 <= len(truth) <= 6, "about 2.2 s / 0.45 s; a probe per slot would make 11"
    assert lab.prober.results == Counter(ok=len(truth)), "every probe had its reasoning deadlines"
    assert max(n for n, _ in seen) == 1, "one probe of the series in the prober at a time"
    assert {q for _, q in seen} == {0}, "no probe waits for another: the skipped slots are not queued"
    for earlier, later in zip(truth, truth[1:]):
        assert later.received_ns >= earlier.token_times_ns[-1], "two probes of one series overlapped"
        # The next probe starts at the first slot after the last ended (plus the scheduler's wake-up).
        assert (later.received_ns - earlier.token_times_ns[-1]) / 1e9 < interval_s + 0.1
    # Each skipped slot is counted (routewatch_probe_slots_skipped_total), and APScheduler's warning
    # for it, one line a slot, is what the command line's log filter drops: nothing else.
    skipped = lab.prober.still_running_skipped
    print(f"{len(truth)} probes, {skipped} slots skipped")
    assert 9 <= len(truth) + skipped <= 14, (
        "2.2 s of 0.2 s slots (and those of the last probe's end): each probed or skipped"
    )
    warnings = [r for r in caplog.records if r.name == "apscheduler.scheduler"]
    dropped = [r for r in warnings if not SkippedSlotWarnings().filter(r)]
    assert len(dropped) == skipped, [r.getMessage() for r in warnings]
    assert all("skipped: maximum number of running instances" in r.getMessage() for r in dropped)
