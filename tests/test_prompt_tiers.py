"""Prompt tiers: how a tier is written, the generated prompt's size, determinism and cost, and the config keys."""

from __future__ import annotations

import json
import re
import statistics
import time
from datetime import UTC, datetime, timedelta

import pytest
from factories import config_text, probe_result, prompt_entry, router_entry

from routewatch.aggregator.publish.ingest_records import RecordRejected, read_record
from routewatch.config import ConfigError, parse_config
from routewatch.config.costs import plan_costs
from routewatch.config.model import TIER_INSTRUCTION
from routewatch.config.tiers import (
    DEFAULT_TIER,
    canonical_tier,
    estimate_chat_tokens,
    nearest_standard_tier,
    parse_tier,
)
from routewatch.delivery.spool import decode_result, encode_result
from routewatch.probe.target import Canary, request_body
from routewatch.probe.targets import plan
from routewatch.probe.tier_prompt import WORDS, filler, tier_messages
from routewatch.probe.tokens import estimate_tokens
from routewatch.results.probe_result import ProbeResult
from routewatch.simulator.validation import estimate_prompt_tokens

INSTRUCTION = [{"role": "user", "content": TIER_INSTRUCTION}]


# ---------------------------------------------------------------- writing a tier


@pytest.mark.unit
@pytest.mark.parametrize(
    ("written", "tokens", "label"),
    [(100, 100, "100"), ("100", 100, "100"), ("1k", 1000, "1k"), (1000, 1000, "1k"), ("10K", 10_000, "10k"),
     ("2500", 2500, "2500"), ("200k", 200_000, "200k"), (50, 50, "50")],
)  # fmt: skip
def test_a_tier_is_written_as_tokens_or_thousands_and_has_one_label(written: object, tokens: int, label: str) -> None:
    assert parse_tier(written) == tokens
    assert canonical_tier(written) == label


@pytest.mark.unit
@pytest.mark.parametrize("written", ["abc", "1.5k", "0", "-100", "1m", 49, "201k", True, 1.5, ""])
def test_a_tier_outside_the_forms_or_bounds_is_refused_with_the_forms(written: object) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 100, 1k, 10k or 2500"):
        parse_tier(written)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("tokens", "tier"), [(1, "100"), (20, "100"), (300, "100"), (330, "1k"), (3000, "1k"), (3300, "10k"),
                         (50_000, "100k"), (900_000, "100k")],
)  # fmt: skip
def test_a_hand_written_prompt_is_in_the_standard_tier_nearest_its_size_on_a_log_scale(tokens: int, tier: str) -> None:
    assert nearest_standard_tier(tokens) == tier


@pytest.mark.unit
def test_results_from_before_tiers_default_to_the_short_tier() -> None:
    # ProbeResult (results layer) cannot import config: the two defaults are kept equal here.
    assert ProbeResult.__dataclass_fields__["tier"].default == DEFAULT_TIER == "100"


# ---------------------------------------------------------------- the generated prompt


@pytest.mark.unit
def test_the_word_table_is_256_distinct_words_of_three_letters() -> None:
    # One random byte picks one word; four characters with the space: one token in every estimate.
    assert len(WORDS) == len(set(WORDS)) == 256
    assert {len(w) for w in WORDS} == {3} and all(w.isalpha() and w.islower() for w in WORDS)


@pytest.mark.unit
@pytest.mark.parametrize("tokens", [100, 1000, 10_000])
def test_a_generated_prompt_lands_on_its_tier_by_every_estimate(tokens: int) -> None:
    messages = tier_messages(INSTRUCTION, tokens, "0123456789abcdef")
    contents = [m["content"] for m in messages]
    # The four-characters-a-token estimate (check-config's, and the simulator's usage) is exact ...
    assert estimate_chat_tokens(contents) == tokens
    assert estimate_prompt_tokens(messages) == tokens
    # ... and the BPE-like estimate the prober counts answers with is within 2%.
    bpe = sum(estimate_tokens(c) for c in contents) + 4 * len(contents)
    assert abs(bpe - tokens) <= 0.02 * tokens, (bpe, tokens)


@pytest.mark.unit
def test_the_generated_text_is_a_function_of_the_nonce_and_differs_from_the_first_token() -> None:
    a1 = tier_messages(INSTRUCTION, 1000, "aaaaaaaaaaaaaaaa")[-1]["content"]
    a2 = tier_messages(INSTRUCTION, 1000, "aaaaaaaaaaaaaaaa")[-1]["content"]
    b = tier_messages(INSTRUCTION, 1000, "bbbbbbbbbbbbbbbb")[-1]["content"]
    assert a1 == a2, "deterministic: the same nonce gives the same prompt"
    assert a1.startswith("[probe aaaaaaaaaaaaaaaa] ") and b.startswith("[probe bbbbbbbbbbbbbbbb] ")
    assert a1.endswith("\n\n" + TIER_INSTRUCTION)
    # Past the tag, the words differ too: a prefix cache keyed on any early stretch finds nothing.
    words_a, words_b = a1.split("]", 1)[1].split()[:200], b.split("]", 1)[1].split()[:200]
    assert words_a[:3] != words_b[:3]
    assert sum(x == y for x, y in zip(words_a, words_b, strict=True)) < 20  # 1/256 by chance
    assert filler("x", 5) == filler("x", 5) and len(filler("x", 5).split()) == 5


@pytest.mark.unit
def test_generating_10k_tokens_takes_about_a_millisecond_far_below_the_loop_lag_threshold() -> None:
    times = []
    for i in range(20):
        start = time.perf_counter()
        tier_messages(INSTRUCTION, 10_000, f"{i:016x}")
        times.append(time.perf_counter() - start)
    median_ms = statistics.median(times) * 1000
    print(f"10k-token prompt generated in {median_ms:.2f} ms (median of 20)")
    assert median_ms < 10, "schedule.max_loop_lag is 50 ms by default; generation must be a small part of it"


@pytest.mark.unit
def test_request_body_generates_a_tier_canary_and_leaves_a_written_one_as_it_was() -> None:
    tiered = Canary("long", INSTRUCTION, 128, 32, "1k", 1000)
    body = request_body("m/a", tiered, "0123456789abcdef")
    assert estimate_prompt_tokens(body["messages"]) == 1000
    written = Canary("short", [{"role": "user", "content": "Count."}], 128, 32)
    assert request_body("m/a", written, "0123456789abcdef")["messages"] == [
        {"role": "user", "content": "[probe 0123456789abcdef] Count."}
    ]
    assert (tiered.input_tokens(), written.tier) == (1000, "100")


# ---------------------------------------------------------------- probes.yaml


def _config(*prompts: dict[str, object], **sections: object) -> str:
    return config_text(prompts=list(prompts), **sections)


@pytest.mark.unit
def test_a_tier_prompt_needs_no_messages_and_a_written_prompt_gets_its_nearest_tier() -> None:
    config = parse_config(_config(prompt_entry(), {"name": "long", "tier": "10k"}), "probes.yaml")
    short, long = config.prompts
    assert (short.tier, short.tier_label(), long.tier, long.tier_label()) == (None, "100", "10k", "10k")
    assert [m.content for m in long.messages] == [TIER_INSTRUCTION]
    assert config.prompt_tiers() == ["100", "10k"]
    assert config.headline_tier() == "100", "default: the smallest tier"


@pytest.mark.unit
def test_a_configured_headline_tier_is_used_and_written_as_its_label() -> None:
    text = _config(prompt_entry(), {"name": "long", "tier": 1000}, aggregator={"headline_tier": 1000})
    assert parse_config(text, "probes.yaml").headline_tier() == "1k"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("prompts", "sections", "message"),
    [
        (
            [prompt_entry(), {"name": "long", "tier": "1.5k"}],
            {},
            "probes.yaml:9: prompts[1].tier: '1.5k' is not a tier: write a whole number of input tokens "
            "from 50 to 200k, e.g. 100, 1k, 10k or 2500",
        ),
        (
            [prompt_entry(), {"name": "long", "tier": 300_000}],
            {},
            "probes.yaml:9: prompts[1].tier: 300000 tokens is outside the tiers routewatch generates: "
            "write a whole number of input tokens from 50 to 200k, e.g. 100, 1k, 10k or 2500",
        ),
        (
            [prompt_entry("big", "word " * 300, tier=100)],
            {},
            "probes.yaml:8: prompts[0].tier: the messages alone are about 386 tokens, more than tier 100: "
            "raise the tier or shorten the messages",
        ),
        (
            [prompt_entry(), {"name": "long", "tier": "1k"}],
            {"aggregator": {"headline_tier": "10k"}},
            "probes.yaml:10: aggregator.headline_tier: no prompt is at tier 10k (the prompts' tiers: 100, 1k): "
            "the headline would never have a figure",
        ),
    ],
)
def test_a_bad_tier_is_reported_with_file_line_and_field(
    prompts: list[dict[str, object]], sections: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(_config(*prompts, **sections), "probes.yaml")
    assert str(excinfo.value) == message


@pytest.mark.unit
def test_the_cost_plan_counts_a_tier_prompt_at_its_tier() -> None:
    price = {"input": 1.0, "output": 0.0}  # USD per 1M input tokens; output free to isolate input
    routers = [router_entry(models=["m/a"], prices={"m/a": price})]
    text = config_text(routers, [{"name": "long", "tier": "10k"}], schedule={"interval": "60s", "jitter": "1s"})
    plan = plan_costs(parse_config(text, "probes.yaml"))
    # 1,440 probes a day x 10,000 input tokens x $1 per 1M.
    assert plan.usd_per_day == pytest.approx(1440 * 10_000 / 1e6)


# ---------------------------------------------------------------- pushed results


def _pushed(**fields: object) -> dict[str, object]:
    record = encode_result(probe_result(region="eu"))
    return {**json.loads(record), **fields}


@pytest.mark.unit
def test_a_pushed_result_carries_its_tier_as_a_label_and_defaults_to_the_short_tier() -> None:
    now = datetime.now(UTC)
    oldest = now - timedelta(days=1)
    assert read_record(_pushed(tier="10k"), "eu", oldest=oldest, now=now).tier == "10k"
    without = _pushed()
    del without["tier"]
    assert read_record(without, "eu", oldest=oldest, now=now).tier == "100", "an older prober's result"
    for bad, reason in (("10000", "is not written as a label ('10k')"), ("huge", "'huge' is not a tier")):
        with pytest.raises(RecordRejected, match=re.escape(reason)):
            read_record(_pushed(tier=bad), "eu", oldest=oldest, now=now)


# ---------------------------------------------------------------- from the file to the probe and the spool


@pytest.mark.unit
def test_every_series_probes_with_its_prompts_tier() -> None:
    config = parse_config(_config(prompt_entry(), {"name": "long", "tier": "10k"}), "probes.yaml")
    series, _ = plan(config, {}, simulator_url="http://127.0.0.1:9")
    tiers = {s.canary.name: (s.canary.tier, s.canary.tier_tokens) for s in series}
    assert tiers == {"short": ("100", None), "long": ("10k", 10_000)}


@pytest.mark.unit
def test_a_spooled_result_keeps_its_tier_and_an_older_one_reads_as_the_short_tier() -> None:
    result = probe_result(tier="1k")
    assert decode_result(encode_result(result)).tier == "1k"
    older = json.loads(encode_result(result))
    del older["tier"]  # written by a release without tiers
    assert decode_result(json.dumps(older).encode()).tier == "100"
