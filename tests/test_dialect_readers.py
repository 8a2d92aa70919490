"""Router dialects read in isolation: detection, each reader's fields, hostile values, and probes.yaml's checks."""

from __future__ import annotations

from typing import Any

import pytest
from factories import MINIMAL_CONFIG, probe_result
from multidict import CIMultiDict

from routewatch.config import ConfigError, parse_config
from routewatch.config.dialects import DIALECTS
from routewatch.config.model import RouterConfig
from routewatch.once import result_notes
from routewatch.probe import dialects
from routewatch.probe.router_values import MAX_ATTEMPTS, ReportedFacts, reported_facts, storable

pytestmark = pytest.mark.unit

KEY = "sk-or-v1-0123456789abcdef0123456789abcdef"


def read(kind: str, headers: dict[str, str], chunks: list[dict[str, Any]], **fields: str) -> ReportedFacts:
    """What dialect ``kind`` makes of one response, normalised as the probe stores it."""
    reader = dialects.reader(kind, fields)
    reader.headers(CIMultiDict(headers))
    for chunk in chunks:
        reader.chunk(chunk)
    return reported_facts(reader.facts(), [KEY])


def chunk(**fields: Any) -> dict[str, Any]:
    return {"id": "gen-1", "model": "openai/gpt-4.1-nano-2025-04-14", "choices": [], **fields}


LITELLM = {
    "x-litellm-model-api-base": "https://api.openai.com/v1",
    "x-litellm-model-id": "e3b0c44298fc1c149afbf4c8996fb924",
    "x-litellm-attempted-retries": "1",
    "x-litellm-attempted-fallbacks": "1",
    "x-litellm-call-id": "8911edb3-074c-4a37-8de4-42f043d434e7",
    "x-litellm-response-cost": "0.000123",
    "llm_provider-x-request-id": "req_upstream",
}


def test_the_config_and_the_readers_know_the_same_dialects() -> None:
    assert dialects.KINDS == DIALECTS
    literal = RouterConfig.model_fields["dialect"].annotation
    assert literal is not None and tuple(literal.__args__) == DIALECTS
    for kind in DIALECTS:
        assert dialects.reader(kind, {"provider": "header:X-Up"}) is not None


@pytest.mark.parametrize(
    ("headers", "chunks", "detected"),
    [
        (LITELLM, [chunk()], "litellm"),
        ({"Ngrok-AIG-Attempts": "2", "X-Provider": "OpenAI"}, [chunk()], "headers"),
        ({}, [chunk(provider="OpenAI")], "openrouter"),
        ({}, [chunk(usage={"prompt_tokens": 1, "completion_tokens": 2, "cost": 0.1})], "openrouter"),
        ({"X-Provider": "OpenAI"}, [chunk()], "plain"),
        ({}, [], "plain"),
    ],
)
def test_auto_reads_each_response_in_the_dialect_it_carries(
    headers: dict[str, str], chunks: list[dict[str, Any]], detected: str
) -> None:
    assert read("auto", headers, chunks) == read(detected, headers, chunks)
    assert read("auto", headers, chunks).dialect == detected


def test_litellm_reads_its_documented_headers() -> None:
    facts = read("litellm", LITELLM, [chunk()])
    assert facts == ReportedFacts(
        dialect="litellm",
        provider="api.openai.com",
        served_model="openai/gpt-4.1-nano-2025-04-14",
        attempts=3,  # the first call, one retry, one fallback
        fallbacks=1,
        router_request_id="8911edb3-074c-4a37-8de4-42f043d434e7",
        cost_usd=0.000123,
    )


def test_litellm_names_the_deployment_when_it_sends_no_api_base() -> None:
    headers = {k: v for k, v in LITELLM.items() if k != "x-litellm-model-api-base"}
    assert read("litellm", headers, []).provider == "e3b0c44298fc1c149afbf4c8996fb924"


def test_openrouter_reads_the_chunks() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "cost": 2.5e-6}
    facts = read("openrouter", {}, [chunk(provider="DeepInfra"), chunk(provider="DeepInfra", usage=usage)])
    assert facts == ReportedFacts(
        dialect="openrouter",
        provider="DeepInfra",
        served_model="openai/gpt-4.1-nano-2025-04-14",
        router_request_id="gen-1",
        cost_usd=2.5e-6,
    )


def test_a_gateway_header_names_the_model_over_the_body() -> None:
    headers = {"Ngrok-AIG-Model": "claude-haiku-4-5", "Ngrok-AIG-Attempts": "3", "Ngrok-AIG-Request-Id": "aig_1"}
    facts = read("headers", headers, [chunk()])
    assert (facts.served_model, facts.attempts, facts.router_request_id, facts.provider) == (
        "claude-haiku-4-5",
        3,
        "aig_1",
        None,
    )


def test_generic_reads_the_configured_sources() -> None:
    facts = read(
        "generic",
        {"X-Up": "Groq", "X-Tries": "2", "X-Trace": "t-1"},
        [chunk(meta={"cost": 0.5}), chunk(meta={"cost": 0.75}), chunk()],
        provider="header:X-Up",
        attempts="header:X-Tries",
        request_id="header:X-Trace",
        cost="field:meta.cost",
        fallbacks="field:meta.fallbacks",
    )
    # The last chunk with the field wins; a fact with no value stays unknown.
    assert (facts.provider, facts.attempts, facts.router_request_id, facts.cost_usd, facts.fallbacks) == (
        "Groq",
        2,
        "t-1",
        0.75,
        None,
    )
    assert facts.served_model == "openai/gpt-4.1-nano-2025-04-14"


@pytest.mark.parametrize(
    "value", ["-1", "1e9", "abc", "", " ", "٣", "2.5", "99999999999999999999", str(MAX_ATTEMPTS + 1)]
)
def test_a_count_that_is_no_count_is_dropped_not_fatal(value: str) -> None:
    facts = read("headers", {"Ngrok-AIG-Attempts": value}, [])
    assert facts.attempts is None


def test_zero_attempts_is_no_count_but_zero_retries_is_one_attempt() -> None:
    assert read("headers", {"Ngrok-AIG-Attempts": "0"}, []).attempts is None
    assert read("litellm", {"x-litellm-attempted-retries": " 0 "}, []).attempts == 1


@pytest.mark.parametrize("cost", ["nan", "inf", "-0.1", "1e400", "1e9", "free", "0x10"])
def test_a_cost_that_is_no_cost_is_dropped(cost: str) -> None:
    assert read("litellm", {**LITELLM, "x-litellm-response-cost": cost}, []).cost_usd is None


@pytest.mark.parametrize("cost", [True, [1], {"usd": 1}, "1", float("nan")])
def test_a_cost_field_of_the_wrong_type_is_dropped(cost: object) -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "cost": cost}
    expected = 1.0 if cost == "1" else None  # a number in a string is still the number
    assert read("openrouter", {}, [chunk(provider="X", usage=usage)]).cost_usd == expected


def test_hostile_labels_are_cleaned_redacted_and_cut() -> None:
    headers = {
        "x-litellm-model-api-base": f"https://user:{KEY}@api.evil.example/v1?key={KEY}",
        "x-litellm-call-id": f"\x1b[2Jcall\x00-{KEY}\u202e" + "x" * 5000,
        "x-litellm-attempted-retries": "1",
    }
    facts = read("litellm", headers, [chunk(model=["not", "a", "string"])])
    assert facts.provider == "api.evil.example"  # the host only: no credentials, no query
    assert facts.router_request_id is not None
    assert KEY not in facts.router_request_id and "\x1b" not in facts.router_request_id
    assert "\x00" not in facts.router_request_id and "\u202e" not in facts.router_request_id
    assert len(facts.router_request_id) <= 200
    assert facts.served_model is None


@pytest.mark.parametrize("blank", ["", "   ", "\x00", "\x1b[0m"])
def test_a_blank_provider_is_unknown_never_empty(blank: str) -> None:
    assert read("plain", {"X-Provider": blank}, [chunk(provider=blank)]).provider is None
    assert read("openrouter", {}, [chunk(provider=blank)]).provider is None


def test_a_blank_provider_header_leaves_the_chunks_provider() -> None:
    assert read("plain", {"X-Provider": "  "}, [chunk(provider="Groq")]).provider == "Groq"


def config_with(router_lines: str) -> str:
    return MINIMAL_CONFIG.replace("    base_url: simulator\n", "    base_url: simulator\n" + router_lines)


def test_dialect_defaults_to_auto_and_is_settable() -> None:
    assert parse_config(MINIMAL_CONFIG, "probes.yaml").routers[0].dialect == "auto"
    router = parse_config(config_with("    dialect: litellm\n"), "probes.yaml").routers[0]
    assert router.dialect == "litellm" and router.dialect_fields is None


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            "    dialect: generic\n",
            "probes.yaml:4: routers[0].dialect: dialect: generic needs dialect_fields: where each fact is",
        ),
        (
            "    dialect: litellm\n    dialect_fields: {provider: 'header:X-Up'}\n",
            "probes.yaml:5: routers[0].dialect_fields: only dialect: generic takes dialect_fields "
            "(this router's is litellm)",
        ),
        (
            "    dialect: generic\n    dialect_fields:\n      provider: 'head:X-Up'\n      colour: 'header:X'\n"
            "      cost: 'field:usage..cost'\n      attempts: 'header:X Y'\n",
            "\n".join(
                [
                    "probes.yaml:6: routers[0].dialect_fields.provider: "
                    '\'head:X-Up\' is not "header:<Name>" or "field:<path>" (e.g. "field:usage.cost")',
                    "probes.yaml:7: routers[0].dialect_fields.colour: unknown fact "
                    "(known: provider, served_model, attempts, retries, fallbacks, request_id, cost)",
                    "probes.yaml:8: routers[0].dialect_fields.cost: "
                    "'field:usage..cost': a field path is names joined by dots, none of them empty",
                    "probes.yaml:9: routers[0].dialect_fields.attempts: 'X Y' is not a valid HTTP header name",
                ]
            ),
        ),
        (
            "    dialect: litelm\n",
            "probes.yaml:4: routers[0].dialect: "
            "Input should be 'auto', 'openrouter', 'litellm', 'headers', 'generic' or 'plain'",
        ),
    ],
)
def test_a_bad_dialect_setting_names_file_line_and_field(lines: str, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(config_with(lines), "probes.yaml")
    assert str(excinfo.value) == message


def test_once_says_when_the_router_retried() -> None:
    retried = probe_result(model="m/a", attempts=3, fallbacks=1)
    first_call = probe_result(model="m/b", attempts=1)
    notes = [n.plain for n in result_notes([retried, first_call])]
    assert len(notes) == 1
    assert notes[0].endswith("the router made 3 upstream calls, 1 to a fallback")


@pytest.mark.parametrize(
    ("field", "value"),
    [("attempts", 0), ("attempts", -2), ("attempts", 2**31), ("fallbacks", -1), ("reported_cost_usd", -1.0)],
)
def test_a_result_made_elsewhere_is_held_to_the_same_bounds(field: str, value: object) -> None:
    # What a pushed record (read by the ingest endpoint, not by a dialect here) goes through too.
    assert getattr(storable(probe_result(**{field: value})), field) is None
