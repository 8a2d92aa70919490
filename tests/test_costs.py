"""What probes cost: one probe's cost from its tokens, the plan per day, the budget check and its message,
and ``check-config`` staying short however many models a file lists."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from factories import COUNT_TO_40, config_text, prompt_entry, router_entry

from routewatch.config import ConfigError, check_config_main, format_summary, parse_config
from routewatch.config.costs import model_price, plan_costs, probe_cost_usd
from routewatch.config.model import Price
from routewatch.probe.costing import with_cost
from routewatch.probe.target import Canary, Target
from routewatch.probe.targets import plan
from routewatch.results.probe_result import METHODOLOGY_VERSION, ProbeResult

PRICE = Price(input=2.0, output=10.0, cached_input=0.5)


# ---------------------------------------------------------------- one probe


@pytest.mark.unit
def test_probe_cost_charges_each_kind_of_token_at_its_price() -> None:
    # 1,000 input of which 400 cached, 200 output: 600 × $2 + 400 × $0.5 + 200 × $10, per 1M.
    assert probe_cost_usd(PRICE, 1000, 200, 400) == pytest.approx((600 * 2 + 400 * 0.5 + 200 * 10) / 1e6)


@pytest.mark.unit
def test_cached_tokens_cost_the_input_price_when_the_file_sets_none() -> None:
    price = Price(input=2.0, output=10.0)
    assert probe_cost_usd(price, 1000, 0, 400) == pytest.approx(1000 * 2 / 1e6)


@pytest.mark.unit
def test_a_model_without_a_price_has_no_cost_not_zero() -> None:
    assert probe_cost_usd(None, 1000, 200, 0) is None


@pytest.mark.unit
def test_more_cached_than_input_tokens_is_capped() -> None:
    # A router that claims 5,000 cached of 1,000 input: at most the 1,000 are cheaper.
    assert probe_cost_usd(PRICE, 1000, 0, 5000) == pytest.approx(1000 * 0.5 / 1e6)


def _result(**fields: object) -> ProbeResult:
    base: dict[str, object] = {
        "id": uuid.uuid4(),
        "started_at": datetime.now(UTC),
        "region": "test",
        "router": "r",
        "model": "m",
        "prompt": "short",
        "methodology": METHODOLOGY_VERSION,
        "ok": True,
        "error_class": None,
        "error_detail": None,
    }
    return ProbeResult(**(base | fields))  # type: ignore[arg-type]


CANARY = Canary("short", [{"role": "user", "content": "x" * 400}], 128, 32)  # ~104 tokens estimated


@pytest.mark.unit
def test_probe_result_cost_uses_reported_usage() -> None:
    target = Target("r", "http://127.0.0.1:1", "m", price=PRICE)
    r = with_cost(_result(input_tokens=50, output_tokens=100, cached_input_tokens=10), target, CANARY)
    assert r.cost_usd == pytest.approx((40 * 2 + 10 * 0.5 + 100 * 10) / 1e6)


@pytest.mark.unit
def test_probe_result_cost_estimates_input_when_the_router_reports_no_usage() -> None:
    target = Target("r", "http://127.0.0.1:1", "m", price=PRICE)
    r = with_cost(_result(output_tokens=100, tokens_estimated=True), target, CANARY)
    assert r.cost_usd == pytest.approx((104 * 2 + 100 * 10) / 1e6)


@pytest.mark.unit
def test_probe_result_cost_without_price_or_tokens() -> None:
    unpriced = Target("r", "http://127.0.0.1:1", "m")
    assert with_cost(_result(input_tokens=50, output_tokens=100), unpriced, CANARY).cost_usd is None
    priced = Target("r", "http://127.0.0.1:1", "m", price=PRICE)
    failed = _result(ok=False, error_class="connect_error", error_detail="refused")
    assert with_cost(failed, priced, CANARY).cost_usd == 0.0


# ---------------------------------------------------------------- the plan and the budget


def _priced_config(models: int, *, budget: float | None = None, routers: int = 1) -> str:
    """``routers`` routers of ``models`` models each, model i costing i+1 USD per 1M tokens in and out."""
    entries = []
    for r in range(routers):
        names = [f"vendor/model-{i:05d}" for i in range(models)]
        prices = {n: {"input": float(i + 1), "output": float(i + 1)} for i, n in enumerate(names)}
        entries.append(router_entry(f"router{r}", models=names, prices=prices))
    sections: dict[str, object] = {"schedule": {"interval": "60s", "jitter": "1s"}}
    if budget is not None:
        sections["budget"] = {"usd_per_day": budget}
    return config_text(entries, [prompt_entry(max_tokens=100)], **sections)


@pytest.mark.unit
def test_plan_is_probes_per_day_times_tokens_times_prices() -> None:
    config = parse_config(_priced_config(3), "probes.yaml")
    input_tokens = -(-len(COUNT_TO_40) // 4) + 4  # ceil(chars / 4) + 4 for the one message
    per_token_set = (input_tokens + 100) / 1e6  # USD per probe at $1 per 1M in and out
    plan = plan_costs(config)
    assert [m.usd_per_day for m in plan.models] == pytest.approx([1440 * per_token_set * k for k in (1, 2, 3)])
    assert plan.usd_per_day == pytest.approx(1440 * per_token_set * 6)
    assert [m.model for m in plan.most_expensive(2)] == ["vendor/model-00002", "vendor/model-00001"]


@pytest.mark.unit
def test_probes_yaml_prices_win_over_listed_ones_and_listed_ones_cost_discovered_models() -> None:
    router = router_entry(
        "r",
        models=["m/configured", "m/unpriced"],
        prices={"m/configured": {"input": 1, "output": 1}},
        discover={"include": ["m/*"]},
    )
    config = parse_config(config_text([router], [prompt_entry(max_tokens=100)]), "probes.yaml")
    listed = {"r": {"m/configured": Price(input=9, output=9), "m/unpriced": PRICE, "m/found": PRICE}}
    discovered = {"r": ["m/found", "m/not-priced"]}
    series, _ = plan(config, {}, "http://127.0.0.1:9", discovered=discovered, listed_prices=listed)
    prices = {s.target.model: s.target.price for s in series}
    assert prices == {
        "m/configured": Price(input=1, output=1),  # the file's, not the list's $9
        "m/unpriced": PRICE,  # the list's, where the file gives none
        "m/found": PRICE,  # a discovered model: the list's
        "m/not-priced": None,
    }
    assert [model_price(config.routers[0], m, listed)[1] for m in prices] == ["config", "listing", "listing", None]
    # The plan with the lists' prices and discovered models; the file alone knows only its own prices.
    with_lists = plan_costs(config, listed, discovered)
    assert [m.model for m in with_lists.models] == list(prices)
    assert [m.usd_per_day is None for m in with_lists.models] == [False, False, False, True]
    assert [m.usd_per_day is None for m in plan_costs(config).models] == [False, True]


@pytest.mark.unit
def test_a_model_named_reasoning_is_planned_with_its_reasoning_budget() -> None:
    prices = {m: {"input": 1.0, "output": 1.0} for m in ("openai/o3-mini", "openai/gpt-4.1-nano")}
    router = router_entry(models=list(prices), prices=prices, reasoning={"budget_tokens": 900, "models": ["openai/o*"]})
    config = parse_config(config_text([router], [prompt_entry(max_tokens=100)]), "probes.yaml")
    input_tokens = -(-len(COUNT_TO_40) // 4) + 4
    thinker, plain = plan_costs(config).models
    per_day = 86400 / config.schedule.interval
    assert thinker.usd_per_day == pytest.approx(per_day * (input_tokens + 100 + 900) / 1e6)
    assert plain.usd_per_day == pytest.approx(per_day * (input_tokens + 100) / 1e6), "detected at run time: unplanned"


@pytest.mark.unit
def test_a_plan_over_budget_is_refused_at_the_budget_line() -> None:
    text = _priced_config(3, budget=0.5)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "probes.yaml")
    line = text.splitlines().index("budget: {usd_per_day: 0.5}") + 1
    assert str(caught.value) == (
        f"probes.yaml:{line}: budget.usd_per_day: the planned cost is $0.96/day, $0.46 (92%) over the budget of "
        "$0.50/day; per router: router0 $0.96; dearest models: vendor/model-00002 (router0) $0.48, "
        "vendor/model-00001 (router0) $0.32, vendor/model-00000 (router0) $0.16. Raise the budget, "
        "probe less often (schedule.interval), or probe fewer or cheaper models"
    )


@pytest.mark.unit
def test_a_plan_within_budget_is_accepted_and_says_so() -> None:
    config = parse_config(_priced_config(3, budget=2), "probes.yaml")
    assert "≤ $0.96/day (prices for 3 of 3 models), within the budget of $2.00/day" in format_summary(config, "p")


@pytest.mark.unit
def test_check_config_stays_short_with_ten_thousand_models() -> None:
    # 5,000 priced and 5,000 unpriced models on two routers.
    names = [f"vendor/model-{i:05d}" for i in range(5000)]
    priced = router_entry("a", models=names, prices={n: {"input": 1.0, "output": 2.0} for n in names})
    unpriced = router_entry("b", models=names)
    config = parse_config(config_text([priced, unpriced], [prompt_entry()]), "probes.yaml")
    text = format_summary(config, "probes.yaml")
    assert len(text.encode()) < 1500, text
    assert "no price for 5,000 models: vendor/model-00000 (b), vendor/model-00001 (b)" in text
    assert text.splitlines()[-1].endswith("vendor/model-00004 (b) and 4,995 more")
    assert "(prices for 5,000 of 10,000 models)" in text


@pytest.mark.unit
def test_check_config_refuses_a_plan_over_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "probes.yaml"
    path.write_text(_priced_config(1, budget=0.1), encoding="utf-8")
    assert check_config_main(str(path)) == 1
    out, err = capsys.readouterr()
    line = path.read_text(encoding="utf-8").splitlines().index("budget: {usd_per_day: 0.1}") + 1
    assert out == ""
    assert err == (
        f"{path}:{line}: budget.usd_per_day: the planned cost is $0.16/day, $0.06 (60%) over the budget of "
        "$0.10/day; per router: router0 $0.16; dearest models: vendor/model-00000 (router0) $0.16. "
        "Raise the budget, probe less often (schedule.interval), or probe fewer or cheaper models\n"
    )
