"""probes.yaml: durations, the repository's example file, one bad fixture per rule, and the limits
on what a hostile or careless file may cost (size, nesting, aliases) or slip past the check."""

from __future__ import annotations

import math
import re
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from factories import MINIMAL_CONFIG

from routewatch.config import (
    KEYS_FROM_ENV,
    MAX_FILE_BYTES,
    MAX_NODES,
    Config,
    ConfigError,
    check_config_main,
    format_summary,
    load_config,
    parse_config,
    summarize,
)
from routewatch.config.durations import MAX_SECONDS, parse_duration

TESTS = Path(__file__).parent
REPO = TESTS.parent
REPO_CONFIG = REPO / "probes.yaml"
BOMB = TESTS / "testdata" / "bad-yaml-alias-bomb.yaml"


# ---------------------------------------------------------------- durations


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("60s", 60.0),
        ("500ms", 0.5),
        ("100ms", 0.1),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1m30s", 90.0),
        ("1h30m", 5400.0),
        ("1s500ms", 1.5),
        ("1.5h", 5400.0),
        ("0.1s", 0.1),
        (" 30s ", 30.0),
        ("45", 45.0),
        ("2.5", 2.5),
        (30, 30.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty duration: expected e.g. 500ms, 30s, 5m, 1m30s, 2h, 7d, or a number of seconds"),
        ("abc", 'invalid duration "abc": expected e.g. 500ms, 30s, 5m, 1m30s, 2h, 7d, or a number of seconds'),
        ("30 s", 'invalid duration "30 s": expected e.g. 500ms, 30s, 5m, 1m30s, 2h, 7d, or a number of seconds'),
        ("5x", 'invalid duration "5x": expected e.g. 500ms, 30s, 5m, 1m30s, 2h, 7d, or a number of seconds'),
        ("s", 'invalid duration "s": expected e.g. 500ms, 30s, 5m, 1m30s, 2h, 7d, or a number of seconds'),
        ("30s1m", 'invalid duration "30s1m": units go from largest to smallest, each once (e.g. 1h30m, 1m30s)'),
        ("1m1m", 'invalid duration "1m1m": units go from largest to smallest, each once (e.g. 1h30m, 1m30s)'),
        ("-5s", 'duration must not be negative, got "-5s"'),
        (-1, "duration must not be negative, got -1"),
        (math.inf, "duration must be a finite number, got inf"),
        (math.nan, "duration must be a finite number, got nan"),
        ("nan", 'invalid duration "nan": expected e.g. 500ms, 30s, 5m, 1m30s, 2h, 7d, or a number of seconds'),
        (True, "expected a duration (e.g. 500ms, 30s, 5m, 1m30s, 2h, 7d, or a number of seconds), got true"),
    ],
)
def test_parse_duration_rejects(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_duration(value)
    assert str(excinfo.value) == message


# ---------------------------------------------------------------- the repository's probes.yaml


@pytest.mark.unit
def test_repository_config_loads() -> None:
    config = load_config(REPO_CONFIG)
    router = config.routers[0]
    assert router.base_url == "simulator"
    assert router.api_key_env == "ROUTEWATCH_API_KEY"
    assert config.schedule.interval == 30.0
    assert config.schedule.jitter == 5.0
    assert config.aggregator.refresh == 10.0


@pytest.mark.unit
def test_repository_config_summary() -> None:
    # Expected numbers come from the raw YAML, not from the models under test.
    raw = yaml.safe_load(REPO_CONFIG.read_text(encoding="utf-8"))
    interval = parse_duration(raw["schedule"]["interval"])
    runs = 86400 / interval
    n_models = sum(len(r["models"]) for r in raw["routers"])
    prompts = raw["prompts"]
    # A generated prompt is its tier's size (``1k``: 1,000 tokens); a written one ~4 characters a token.
    input_per_run = sum(
        int(p["tier"].removesuffix("k")) * 1000
        if "tier" in p
        else math.ceil(sum(len(m["content"]) for m in p["messages"]) / 4) + 4 * len(p["messages"])
        for p in prompts
    )
    output_per_run = sum(p["max_tokens"] for p in prompts)
    cost = sum(
        runs * (input_per_run * price["input"] + output_per_run * price["output"]) / 1e6
        for r in raw["routers"]
        for price in r.get("prices", {}).values()
    )
    unpriced = tuple(m for r in raw["routers"] for m in r["models"] if m not in r.get("prices", {}))

    s = summarize(load_config(REPO_CONFIG))

    assert (s.routers, s.models, s.prompts) == (len(raw["routers"]), n_models, len(prompts))
    assert s.series == n_models * len(prompts)
    assert s.probes_per_day == pytest.approx(s.series * 86400 / interval)
    assert s.input_tokens_per_day == pytest.approx(n_models * input_per_run * runs)
    assert s.output_tokens_per_day == pytest.approx(n_models * output_per_run * runs)
    assert s.cost_per_day_usd == pytest.approx(cost)
    assert s.priced_models == n_models - len(unpriced)
    assert s.unpriced_models == unpriced
    assert s.note == f"no price for {len(unpriced)} models: " + ", ".join(unpriced)


@pytest.mark.unit
def test_summary_without_prices_has_no_cost() -> None:
    s = summarize(parse_config(MINIMAL_CONFIG, "probes.yaml"))
    assert s.cost_per_day_usd is None
    assert s.unpriced_models == ("openai/gpt-4.1-nano",)


@pytest.mark.unit
def test_defaults() -> None:
    config = parse_config(MINIMAL_CONFIG, "probes.yaml")
    assert config == Config.model_validate(yaml.safe_load(MINIMAL_CONFIG))
    assert config.region == "local"
    assert (config.schedule.interval, config.schedule.jitter, config.schedule.concurrency) == (60, 10, 64)
    t = config.timeouts
    assert (t.connect, t.headers, t.first_token, t.idle, t.total) == (5, 30, 60, 30, 120)
    assert (config.slo.ttft_p95_ms, config.slo.error_rate) == (5000, 0.05)
    assert (config.api.host, config.api.port) == ("127.0.0.1", 8321)
    assert (config.aggregator.refresh, config.aggregator.windows) == (15, ["1h", "24h", "7d"])
    assert (config.prompts[0].max_tokens, config.prompts[0].min_output_tokens) == (128, 32)


@pytest.mark.unit
def test_format_summary() -> None:
    text = format_summary(load_config(REPO_CONFIG), "probes.yaml")
    assert text == (
        "probes.yaml: OK\n"
        "  1 router, 5 models, 2 prompts → 10 series\n"
        "  28,800 probes/day at one every 30 s per series\n"
        "  prompt tiers: 100 (short), 1k (long); headline figures from tier 100\n"
        "  ≤ 2.53M output tokens/day, ~14.6M input tokens/day\n"
        "  reasoning models' deadlines: first token 188 s, total 248 s (others: first token 60 s, total 120 s)\n"
        "  ≤ $8.10/day (prices for 3 of 5 models)\n"
        "  dearest: anthropic/claude-haiku-4.5 $5.46, google/gemini-2.5-flash $2.15, openai/gpt-4.1-nano $0.50\n"
        "  no price for 2 models: meta-llama/llama-3.3-70b-instruct, deepseek/deepseek-r1"
    )


@pytest.mark.unit
def test_check_config_main_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config_main(str(REPO_CONFIG)) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{REPO_CONFIG}: OK\n")
    assert err == ""


@pytest.mark.unit
def test_check_config_main_errors(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TESTS)
    assert check_config_main("testdata/bad-multiple-errors.yaml") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == BAD["bad-multiple-errors"] + "\n"


# ---------------------------------------------------------------- one bad fixture per rule

OWN_SETTING = (
    "is one of routewatch's own settings, not a router key: the probe would send its value to the router. "
    "Use ROUTEWATCH_API_KEY or a variable of your own"
)

BAD = {
    "bad-unknown-key": 'testdata/bad-unknown-key.yaml:9: probes: unknown field "probes" '
    "(allowed: region, routers, prompts, schedule, timeouts, slo, api, aggregator, storage, maintenance, ingest, notifications, budget)",
    "bad-unknown-nested-key": "testdata/bad-unknown-nested-key.yaml:10: timeouts.timeout: "
    'unknown field "timeout" (allowed: connect, headers, first_token, idle, total)',
    "bad-missing-routers": "testdata/bad-missing-routers.yaml:1: routers: required field is missing",
    "bad-empty-models": "testdata/bad-empty-models.yaml:4: routers[0].models: list at least one model, or turn on discover",
    "bad-duplicate-model": "testdata/bad-duplicate-model.yaml:7: routers[0].models[2]: "
    'duplicate model "openai/gpt-4.1-nano"',
    "bad-duplicate-router-name": "testdata/bad-duplicate-router-name.yaml:5: routers[1].name: "
    'duplicate router name "orcarouter" (also routers[0])',
    "bad-price-unlisted-model": "testdata/bad-price-unlisted-model.yaml:7: "
    'routers[0].prices["openai/gpt-4.1-mini"]: no such model in this router\'s models',
    "bad-negative-price": "testdata/bad-negative-price.yaml:7: "
    'routers[0].prices["openai/gpt-4.1-nano"].input: Input should be greater than or equal to 0',
    "bad-credentials-in-url": "testdata/bad-credentials-in-url.yaml:3: routers[0].base_url: "
    "remove the credentials from base_url: "
    "set api_key_env to the name of the environment variable holding the key",
    "bad-api-key-field": f"testdata/bad-api-key-field.yaml:4: routers[0].api_key: {KEYS_FROM_ENV}",
    "bad-authorization-header": "testdata/bad-authorization-header.yaml:7: "
    f"routers[0].headers.Authorization: {KEYS_FROM_ENV}",
    "bad-env-var-name": "testdata/bad-env-var-name.yaml:4: routers[0].api_key_env: "
    "must be the name of an environment variable (letters, digits and _, e.g. ORCAROUTER_API_KEY), "
    "not the key itself",
    "bad-base-url-scheme": "testdata/bad-base-url-scheme.yaml:3: routers[0].base_url: "
    'must be an http:// or https:// URL, or "simulator" (got "ftp:")',
    "bad-duration": "testdata/bad-duration.yaml:9: schedule.interval: "
    'invalid duration "30 seconds": expected e.g. 500ms, 30s, 5m, 1m30s, 2h, 7d, or a number of seconds',
    "bad-jitter-interval": "testdata/bad-jitter-interval.yaml:10: schedule.jitter: "
    "30 s must be less than interval (30 s)",
    "bad-timeout-total": "testdata/bad-timeout-total.yaml:9: timeouts.idle: 120 s exceeds total (90 s)",
    "bad-last-message-not-user": "testdata/bad-last-message-not-user.yaml:10: prompts[0].messages[1].role: "
    'the last message must be from "user", not "assistant"',
    "bad-min-output-tokens": "testdata/bad-min-output-tokens.yaml:9: prompts[0].min_output_tokens: "
    "must not exceed max_tokens (64)",
    "bad-yaml-syntax": "testdata/bad-yaml-syntax.yaml:5: (yaml): "
    "expected ',' or ']', but got ':' (while parsing a flow sequence at line 4)",
    "bad-empty-file": 'testdata/bad-empty-file.yaml: the file is empty: it needs at least "routers" and "prompts"',
    "bad-wrong-type": "testdata/bad-wrong-type.yaml:4: routers[0].models: Input should be a valid list",
    "bad-duplicate-key": "testdata/bad-duplicate-key.yaml:10: schedule: "
    "duplicate key (first at line 8): YAML keeps only the last",
    "bad-slo-window": "testdata/bad-slo-window.yaml:9: slo.window: must be longer than 0 s",
    "bad-slo-down-after": "testdata/bad-slo-down-after.yaml:9: slo.down_after: "
    "Input should be greater than or equal to 1",
    "bad-slo-up-after": "testdata/bad-slo-up-after.yaml:9: slo.up_after: Input should be greater than or equal to 1",
    "bad-slo-min-samples": "testdata/bad-slo-min-samples.yaml:9: slo.min_samples: "
    "Input should be greater than or equal to 1",
    "bad-maintenance-end-before-start": "testdata/bad-maintenance-end-before-start.yaml:10: maintenance[0].end: "
    "must be after start (2025-06-01T02:00:00+00:00)",
    "bad-maintenance-no-offset": "testdata/bad-maintenance-no-offset.yaml:9: maintenance[0].start: "
    "add a UTC offset, e.g. 2025-06-01T02:00:00Z or 2025-06-01T04:00:00+02:00",
    "bad-maintenance-unknown-model": "testdata/bad-maintenance-unknown-model.yaml:13: maintenance[0].models[1]: "
    'no router probes "openai/gpt-4.1-mini"',
    "bad-maintenance-empty-models": "testdata/bad-maintenance-empty-models.yaml:11: maintenance[0].models: "
    "list at least one model, or leave models out to cover all",
    "bad-storage-retention": "testdata/bad-storage-retention.yaml:9: storage.retention: must be at least 86400 s",
    # Limits on what a small file may cost to load.
    "bad-yaml-alias-bomb": "testdata/bad-yaml-alias-bomb.yaml:14: (yaml): the file expands to more than "
    "100,000 values (alias *d repeats 11,111 values): use aliases only for small repeated parts",
    "bad-yaml-deep-nesting": "testdata/bad-yaml-deep-nesting.yaml:9: (yaml): nested more than 64 levels deep",
    "bad-yaml-recursive-alias": "testdata/bad-yaml-recursive-alias.yaml:6: (yaml): alias *router is inside "
    "its own anchor: a recursive structure is not a configuration",
    # Values that passed the check and then crashed or corrupted at run time.
    "bad-yaml-lone-surrogate": "testdata/bad-yaml-lone-surrogate.yaml:4: (yaml): "
    "a lone surrogate escape (\\ud800-\\udfff) is not a character",
    "bad-model-id-control": "\n".join(
        [
            "testdata/bad-model-id-control.yaml:4: routers[0].models[0]: "
            "must not contain control characters (U+0000 at character 20)",
            "testdata/bad-model-id-control.yaml:4: routers[0].models[1]: "
            "must not contain control characters (U+001B at character 20)",
        ]
    ),
    "bad-region-control": "testdata/bad-region-control.yaml:1: region: "
    "must not contain control characters (U+0000 at character 8)",
    "bad-header-control": "\n".join(
        [
            'testdata/bad-header-control.yaml:6: routers[0].headers["HTTP-Referer"]: '
            "must not contain control characters (U+0000 at character 27)",
            'testdata/bad-header-control.yaml:7: routers[0].headers["X-Title"]: '
            "must not contain control characters (U+007F at character 7)",
            'testdata/bad-header-control.yaml:8: routers[0].headers["X-Nul\\u0000"]: not a valid HTTP header name',
        ]
    ),
    "bad-header-reserved": "\n".join(
        [
            'testdata/bad-header-reserved.yaml:6: routers[0].headers["Content-Length"]: cannot be set here: '
            "the probe sets it for the JSON body it sends; a fixed value would corrupt the request",
            "testdata/bad-header-reserved.yaml:7: routers[0].headers.Host: cannot be set here: "
            "taken from base_url: put the host there",
            'testdata/bad-header-reserved.yaml:8: routers[0].headers["Transfer-Encoding"]: cannot be set here: '
            "the probe sets it for the JSON body it sends; a fixed value would corrupt the request",
            "testdata/bad-header-reserved.yaml:9: routers[0].headers.Connection: cannot be set here: "
            "a connection header, managed by the HTTP client; it cannot be set per request",
        ]
    ),
    "bad-duration-too-long": "testdata/bad-duration-too-long.yaml:9: storage.retention: "
    'duration must be at most 36500d (100 years), got "99999999999999999d"',
    "bad-duplicate-window": "\n".join(
        [
            'testdata/bad-duplicate-window.yaml:9: aggregator.windows[2]: duplicate window "60m" '
            '(the same as windows[0], "1h")',
            'testdata/bad-duplicate-window.yaml:9: aggregator.windows[4]: duplicate window "1d" '
            '(the same as windows[1], "24h")',
        ]
    ),
    "bad-infinite-price": "\n".join(
        [
            'testdata/bad-infinite-price.yaml:7: routers[0].prices["openai/gpt-4.1-nano"].input: '
            "Input should be a finite number",
            'testdata/bad-infinite-price.yaml:8: routers[0].prices["openai/gpt-4.1-nano"].output: '
            "Input should be a finite number",
        ]
    ),
    "bad-maintenance-invalid-date": "testdata/bad-maintenance-invalid-date.yaml:12: maintenance[1].start: "
    'invalid date "2025-13-01T02:00:00Z": month must be in 1..12',
    "bad-api-key-env-own-setting": "\n".join(
        [
            f"testdata/bad-api-key-env-own-setting.yaml:4: routers[0].api_key_env: ROUTEWATCH_ADMIN_TOKEN {OWN_SETTING}",
            f"testdata/bad-api-key-env-own-setting.yaml:8: routers[1].api_key_env: ROUTEWATCH_DATABASE_URL {OWN_SETTING}",
        ]
    ),
    "bad-multiple-errors": "\n".join(
        [
            "testdata/bad-multiple-errors.yaml:4: routers[0].base_url: "
            'must be an http:// or https:// URL, or "simulator"',
            'testdata/bad-multiple-errors.yaml:5: routers[0].models[1]: duplicate model "openai/gpt-4.1-nano"',
            "testdata/bad-multiple-errors.yaml:8: prompts[0].messages[0].role: "
            'the last message must be from "user", not "system"',
            "testdata/bad-multiple-errors.yaml:9: prompts[0].max_tokens: Input should be greater than or equal to 1",
            "testdata/bad-multiple-errors.yaml:12: schedule.concurency: "
            'unknown field "concurency" (allowed: interval, jitter, concurrency, max_loop_lag)',
        ]
    ),
}


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_config(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TESTS)  # so that messages name the file as "testdata/..."
    with pytest.raises(ConfigError) as excinfo:
        load_config(f"testdata/{name}.yaml")
    assert str(excinfo.value) == BAD[name]


@pytest.mark.unit
def test_every_bad_fixture_is_tested() -> None:
    assert sorted(p.stem for p in (TESTS / "testdata").glob("bad-*.yaml")) == sorted(BAD)


@pytest.mark.unit
def test_missing_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as excinfo:
        load_config("nope.yaml")
    assert str(excinfo.value) == "nope.yaml: cannot read: No such file or directory"


@pytest.mark.unit
def test_credentials_never_echoed() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(TESTS / "testdata" / "bad-credentials-in-url.yaml")
    err = excinfo.value
    for text in (str(err), repr(err), *(issue.message for issue in err.issues)):
        assert "hunter2-secret" not in text
    assert err.__cause__ is None and err.__suppress_context__


@pytest.mark.unit
def test_key_never_echoed() -> None:
    for name in ("bad-api-key-field", "bad-env-var-name", "bad-authorization-header"):
        with pytest.raises(ConfigError) as excinfo:
            load_config(TESTS / "testdata" / f"{name}.yaml")
        assert "0123456789abcdef" not in str(excinfo.value) + repr(excinfo.value)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://orcarouter.ai/v1/chat/completions", "end the URL before /chat/completions: the probe appends it"),
        ("https:///v1", "the URL has no host name"),
        ("http://host:99999/v1", 'is not a valid URL: use an http(s) URL or "simulator"'),
    ],
)
def test_bad_base_url(url: str, message: str) -> None:
    text = MINIMAL_CONFIG.replace("base_url: simulator", f"base_url: {url}")
    with pytest.raises(ConfigError) as excinfo:
        parse_config(text, "probes.yaml")
    assert str(excinfo.value) == f"probes.yaml:3: routers[0].base_url: {message}"


@pytest.mark.unit
def test_good_base_url_and_headers() -> None:
    text = MINIMAL_CONFIG.replace(
        "base_url: simulator",
        "base_url: http://127.0.0.1:8080/v1\n    headers: {HTTP-Referer: https://status.example.com}",
    )
    router = parse_config(text, "probes.yaml").routers[0]
    assert router.base_url == "http://127.0.0.1:8080/v1"
    assert router.headers == {"HTTP-Referer": "https://status.example.com"}


@pytest.mark.unit
def test_default_that_breaks_a_rule_is_named() -> None:
    text = MINIMAL_CONFIG + "timeouts:\n  total: 45s\n"
    with pytest.raises(ConfigError) as excinfo:
        parse_config(text, "probes.yaml")
    assert str(excinfo.value) == "probes.yaml:8: timeouts.first_token: 60 s (the default) exceeds total (45 s)"


@pytest.mark.unit
def test_models_are_frozen() -> None:
    config = parse_config(MINIMAL_CONFIG, "probes.yaml")
    with pytest.raises(ValueError):
        config.region = "elsewhere"  # type: ignore[misc]


# ---------------------------------------------------------------- status: SLO and maintenance


@pytest.mark.unit
def test_slo_defaults() -> None:
    slo = parse_config(MINIMAL_CONFIG, "probes.yaml").slo
    assert (slo.window, slo.down_after, slo.up_after, slo.min_samples) == (900.0, 3, 2, 5)


@pytest.mark.unit
def test_slo_window_is_a_duration() -> None:
    config = parse_config(MINIMAL_CONFIG + "slo:\n  window: 1h30m\n  down_after: 4\n", "probes.yaml")
    assert config.slo.window == 5400.0
    assert config.slo.down_after == 4


@pytest.mark.unit
def test_maintenance_window() -> None:
    text = MINIMAL_CONFIG + (
        "maintenance:\n"
        "  - start: 2025-06-01T04:00:00+02:00\n"
        '    end: "2025-06-01T03:00:00Z"\n'
        "    reason: database upgrade\n"
        "  - start: 2025-06-02T02:00:00Z\n"
        "    end: 2025-06-02T03:00:00Z\n"
        "    models: [openai/gpt-4.1-nano]\n"
        "    reason: provider migration\n"
    )
    first, second = parse_config(text, "probes.yaml").maintenance
    assert first.start == datetime(2025, 6, 1, 2, tzinfo=UTC)
    assert first.end == datetime(2025, 6, 1, 3, tzinfo=UTC)
    assert first.models is None  # every model
    assert first.covers("anything/else", datetime(2025, 6, 1, 2, 30, tzinfo=UTC))
    assert not first.covers("x", first.end)  # end is exclusive
    assert second.covers("openai/gpt-4.1-nano", datetime(2025, 6, 2, 2, tzinfo=UTC))
    assert not second.covers("anthropic/claude-haiku-4.5", datetime(2025, 6, 2, 2, tzinfo=UTC))


@pytest.mark.unit
def test_maintenance_defaults_to_none() -> None:
    assert parse_config(MINIMAL_CONFIG, "probes.yaml").maintenance == []


@pytest.mark.unit
def test_maintenance_model_in_a_second_router() -> None:
    text = MINIMAL_CONFIG.replace(
        "prompts:",
        "  - name: other\n    base_url: simulator\n    models: [openai/gpt-4.1-mini]\nprompts:",
    ) + (
        "maintenance:\n"
        "  - {start: 2025-06-01T02:00:00Z, end: 2025-06-01T03:00:00Z, models: [openai/gpt-4.1-mini], reason: x}\n"
    )
    assert parse_config(text, "probes.yaml").maintenance[0].models == ["openai/gpt-4.1-mini"]


@pytest.mark.unit
def test_max_providers_per_model_defaults_to_5_and_must_be_at_least_1() -> None:
    assert parse_config(MINIMAL_CONFIG, "probes.yaml").aggregator.max_providers_per_model == 5
    assert (
        parse_config(
            MINIMAL_CONFIG + "aggregator: {max_providers_per_model: 2}\n", "probes.yaml"
        ).aggregator.max_providers_per_model
        == 2
    )
    with pytest.raises(ConfigError) as excinfo:
        parse_config(MINIMAL_CONFIG + "aggregator:\n  max_providers_per_model: 0\n", "probes.yaml")
    assert str(excinfo.value) == (
        "probes.yaml:9: aggregator.max_providers_per_model: Input should be greater than or equal to 1"
    )


@pytest.mark.unit
def test_metrics_export_the_shortest_window_by_default_and_what_aggregator_metrics_names() -> None:
    default = parse_config(MINIMAL_CONFIG, "probes.yaml").aggregator
    assert (default.metrics.windows, default.metrics.breakdowns, default.metrics_windows()) == (None, [], ["1h"])
    reordered = parse_config(MINIMAL_CONFIG + "aggregator: {windows: [7d, 30m, 24h]}\n", "probes.yaml").aggregator
    assert reordered.metrics_windows() == ["30m"]
    chosen = parse_config(
        MINIMAL_CONFIG + "aggregator:\n  metrics:\n    windows: [7d, 1h]\n    breakdowns: [region, provider]\n",
        "probes.yaml",
    ).aggregator
    assert (chosen.metrics_windows(), chosen.metrics.breakdowns) == (["7d", "1h"], ["region", "provider"])


@pytest.mark.unit
@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "aggregator:\n  metrics:\n    windows: [1h, 30d]\n",
            'probes.yaml:10: aggregator.metrics.windows[1]: "30d" is not one of aggregator.windows (1h, 24h, 7d)',
        ),
        (
            "aggregator:\n  windows: [1h]\n  metrics:\n    windows:\n      - 1h\n      - 7d\n",
            'probes.yaml:13: aggregator.metrics.windows[1]: "7d" is not one of aggregator.windows (1h)',
        ),
        (
            "aggregator:\n  metrics:\n    breakdowns: [provider, provider]\n",
            'probes.yaml:10: aggregator.metrics.breakdowns[1]: "provider" is listed twice (also [0])',
        ),
        (
            "aggregator:\n  metrics:\n    breakdowns: [model]\n",
            "probes.yaml:10: aggregator.metrics.breakdowns[0]: Input should be 'provider', 'region' or 'tier'",
        ),
        (
            "aggregator:\n  metrics:\n    labels: [router]\n",
            'probes.yaml:10: aggregator.metrics.labels: unknown field "labels" (allowed: windows, breakdowns)',
        ),
    ],
)
def test_bad_metrics_options_are_refused_with_their_line(section: str, message: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(MINIMAL_CONFIG + section, "probes.yaml")
    assert str(excinfo.value) == message


def _refusal(text: str) -> str:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(text, "probes.yaml")
    return str(excinfo.value)


# ---------------------------------------------------------------- limits: YAML bombs and size


@pytest.mark.unit
def test_alias_bomb_is_refused_in_a_fraction_of_a_second() -> None:
    started = time.perf_counter()
    with pytest.raises(ConfigError) as excinfo:
        load_config(BOMB)
    elapsed = time.perf_counter() - started
    assert "the file expands to more than 100,000 values (alias *d" in str(excinfo.value)
    assert elapsed < 0.5, f"took {elapsed:.2f} s"


# Runs the command line in a fresh interpreter and, as it exits, writes that
# interpreter's own peak RSS (VmHWM, which exec resets) to the file in argv[1].
# ru_maxrss from wait4 would not do: it keeps the forked test process's peak.
_PEAK_RSS_CHILD = """
import atexit, sys
peak_file = sys.argv.pop(1)
def _peak():
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    open(peak_file, "w").write(hwm.split()[1])  # KiB
atexit.register(_peak)
from routewatch.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.system
def test_check_config_refuses_the_bomb_with_bounded_memory(tmp_path: Path) -> None:
    """A real ``routewatch check-config`` process, and its own peak RSS."""
    peak = tmp_path / "peak"

    def cap_memory() -> None:  # so that a regression fails this test instead of exhausting the machine
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_CHILD, str(peak), "check-config", str(BOMB)],
        capture_output=True,
        text=True,
        cwd=REPO,
        preexec_fn=cap_memory,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"{BOMB}:14: (yaml): the file expands to more than 100,000 values"), proc.stderr
    assert proc.stdout == ""
    max_rss_mib = int(peak.read_text()) / 1024
    assert max_rss_mib < 200, f"check-config peaked at {max_rss_mib:.0f} MiB"


@pytest.mark.unit
def test_deep_nesting_is_a_message_not_a_recursion_error() -> None:
    deep = MINIMAL_CONFIG + "extra: " + "[" * 100_000 + "]" * 100_000 + "\n"
    assert _refusal(deep) == "probes.yaml:8: (yaml): nested more than 64 levels deep"
    block = MINIMAL_CONFIG + "".join(f"{'  ' * i}k{i}:\n" for i in range(100))  # indentation, not brackets
    assert _refusal(block) == "probes.yaml:71: (yaml): nested more than 64 levels deep"


@pytest.mark.unit
def test_nesting_up_to_the_limit_is_parsed() -> None:
    # The top-level mapping is level 1, so 63 lists below it are the deepest file allowed.
    at_limit = _refusal(MINIMAL_CONFIG + "extra: " + "[" * 63 + "]" * 63 + "\n")
    assert at_limit.startswith('probes.yaml:8: extra: unknown field "extra"'), at_limit
    assert _refusal(MINIMAL_CONFIG + "extra: " + "[" * 64 + "]" * 64 + "\n") == (
        "probes.yaml:8: (yaml): nested more than 64 levels deep"
    )


@pytest.mark.unit
def test_too_many_values_without_aliases(tmp_path: Path) -> None:
    path = tmp_path / "probes.yaml"
    path.write_text(MINIMAL_CONFIG + "extra:\n" + "  - x\n" * MAX_NODES)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    # The value that crosses the limit: counted with PyYAML's own composer, as every node of the tree.
    before = _count_nodes(yaml.compose(MINIMAL_CONFIG + "extra: []\n"))  # everything but the items
    first_item_line = MINIMAL_CONFIG.count("\n") + 2
    line = first_item_line + (MAX_NODES - before)
    assert str(excinfo.value) == f"{path}:{line}: (yaml): the file expands to more than 100,000 values"


def _count_nodes(node: yaml.Node) -> int:
    if isinstance(node, yaml.SequenceNode):
        return 1 + sum(_count_nodes(item) for item in node.value)
    if isinstance(node, yaml.MappingNode):
        return 1 + sum(_count_nodes(k) + _count_nodes(v) for k, v in node.value)
    return 1


@pytest.mark.unit
def test_small_aliases_are_still_allowed() -> None:
    text = """\
routers:
  - name: a
    base_url: simulator
    models: &models [openai/gpt-4.1-nano, anthropic/claude-haiku-4.5]
    prices: &prices
      openai/gpt-4.1-nano: &cheap {input: 0.1, output: 0.4}
  - name: b
    base_url: simulator
    models: *models
    prices: *prices
prompts:
  - name: short
    messages: [{role: user, content: "Count from 1 to 40 in words."}]
maintenance:
  - {start: 2025-06-01T02:00:00Z, end: 2025-06-01T03:00:00Z, models: *models, reason: upgrade}
"""
    config = parse_config(text, "probes.yaml")
    assert config.routers[1].models == ["openai/gpt-4.1-nano", "anthropic/claude-haiku-4.5"]
    assert config.routers[1].prices["openai/gpt-4.1-nano"].output == 0.4


@pytest.mark.unit
def test_oversize_file_is_refused_unread(tmp_path: Path) -> None:
    limit = tmp_path / "limit.yaml"
    limit.write_bytes(MINIMAL_CONFIG.encode() + b"#" * (MAX_FILE_BYTES - len(MINIMAL_CONFIG) - 1) + b"\n")
    assert limit.stat().st_size == MAX_FILE_BYTES
    assert load_config(limit).routers[0].name == "orcarouter"  # exactly at the limit: fine

    big = tmp_path / "big.yaml"
    with big.open("wb") as f:  # 50 MB, as in the report
        f.write(MINIMAL_CONFIG.encode())
        for _ in range(50):
            f.write(b"# " + b"x" * (1024 * 1024 - 3) + b"\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(big)
    assert str(excinfo.value) == f"{big}: the file is larger than 1 MiB: a probes.yaml is a few KiB"
    with pytest.raises(ConfigError) as excinfo:
        parse_config(MINIMAL_CONFIG + "#" * MAX_FILE_BYTES, "probes.yaml")
    assert str(excinfo.value) == "probes.yaml: the file is larger than 1 MiB: a probes.yaml is a few KiB"


@pytest.mark.unit
def test_endless_file_is_refused() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config("/dev/zero")
    assert str(excinfo.value) == "/dev/zero: the file is larger than 1 MiB: a probes.yaml is a few KiB"


# ---------------------------------------------------------------- values that crashed at run time


@pytest.mark.unit
def test_huge_integer_is_reported_at_its_line() -> None:
    text = MINIMAL_CONFIG.replace("    messages:", f"    max_tokens: {'9' * 5000}\n    messages:")
    assert _refusal(text) == (
        'probes.yaml:7: prompts[0].max_tokens: invalid number "' + "9" * 40 + '…": '
        "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits"
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    "field", ["schedule:\n  interval", "storage:\n  retention", "slo:\n  window", "aggregator:\n  refresh"]
)
def test_every_duration_is_bounded(field: str) -> None:
    message = _refusal(MINIMAL_CONFIG + f"{field}: 99999999999999999d\n")
    assert message.endswith('duration must be at most 36500d (100 years), got "99999999999999999d"'), message


@pytest.mark.unit
def test_the_longest_duration_still_works_with_dates() -> None:
    assert parse_duration("36500d") == MAX_SECONDS
    config = parse_config(MINIMAL_CONFIG + "storage:\n  retention: 36500d\n  compress_after: 36500d\n", "probes.yaml")
    # What ``routewatch run`` does with it at start, and what the retention job does every day.
    retention = timedelta(seconds=config.storage.retention)
    now = datetime.now(UTC)
    assert now - retention < now < now + retention
    with pytest.raises(ValueError, match=r"at most 36500d \(100 years\), got 3\.1536e\+09"):
        parse_duration(MAX_SECONDS + 1)


@pytest.mark.unit
@pytest.mark.parametrize(
    "name",
    [
        "Content-Length",
        "content-length",
        "Host",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Upgrade",
        "Expect",
        "Proxy-Connection",
        "Content-Type",
        "Content-Encoding",
    ],
)
def test_headers_the_probe_owns_are_refused(name: str) -> None:
    text = MINIMAL_CONFIG.replace("base_url: simulator", f'base_url: simulator\n    headers: {{"{name}": "x"}}')
    assert _refusal(text).startswith("probes.yaml:4: routers[0].headers"), name
    assert ": cannot be set here: " in _refusal(text)


@pytest.mark.unit
def test_a_header_value_may_hold_a_tab_and_non_ascii() -> None:
    text = MINIMAL_CONFIG.replace(
        "base_url: simulator", 'base_url: simulator\n    headers: {X-Title: "status\\tpage é"}'
    )
    assert parse_config(text, "probes.yaml").routers[0].headers == {"X-Title": "status\tpage é"}


def _own_settings() -> set[str]:
    """Every ROUTEWATCH_* variable the code reads."""
    found: set[str] = set()
    for package in ("routewatch", "probe", "aggregator"):
        for source in (REPO / package).rglob("*.py"):
            found |= set(re.findall(r"\bROUTEWATCH_[A-Z0-9_]+\b", source.read_text(encoding="utf-8")))
    return found


@pytest.mark.unit
def test_no_routewatch_setting_can_be_a_router_key() -> None:
    own = _own_settings()
    assert {"ROUTEWATCH_ADMIN_TOKEN", "ROUTEWATCH_DATABASE_URL", "ROUTEWATCH_API_KEY"} <= own
    for name in sorted(own - {"ROUTEWATCH_API_KEY"}) + ["ROUTEWATCH_SOMETHING_NEW"]:
        text = MINIMAL_CONFIG.replace("base_url: simulator", f"base_url: simulator\n    api_key_env: {name}")
        assert _refusal(text).startswith(f"probes.yaml:4: routers[0].api_key_env: {name} is one of routewatch's"), name
    text = MINIMAL_CONFIG.replace("base_url: simulator", "base_url: simulator\n    api_key_env: ROUTEWATCH_API_KEY")
    assert parse_config(text, "probes.yaml").routers[0].api_key_env == "ROUTEWATCH_API_KEY"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("section", "field"),
    [
        (
            'maintenance:\n  - {start: 2025-06-01T02:00:00Z, end: 2025-06-01T03:00:00Z, reason: "up\\0"}',
            "maintenance[0].reason",
        ),
        ('api:\n  host: "127.0.0.1\\0"', "api.host"),
    ],
)
def test_other_stored_or_bound_strings_refuse_control_characters(section: str, field: str) -> None:
    message = _refusal(MINIMAL_CONFIG + section + "\n")
    assert f": {field}: must not contain control characters (U+0000 at character " in message, message


@pytest.mark.unit
def test_base_url_refuses_control_characters_without_echoing_it() -> None:
    text = MINIMAL_CONFIG.replace("base_url: simulator", 'base_url: "https://user-token-123@\\0orcarouter.ai/v1"')
    message = _refusal(text)
    assert message == "probes.yaml:3: routers[0].base_url: must not contain control characters (U+0000 at character 24)"
    assert "user-token-123" not in message
