"""The hostile sweep: nothing a router sends stops recording, leaks a key or takes the prober down.

One scenario (``scenario.py``) drives the real ``routewatch run`` and
``routewatch once`` against the hostile router (``router.py``); each test
below judges one part of what it observed. Sentinel keys are searched in the
processes' output, every file of the data directory (scanned every second
while the run lasts), a ``pg_dump`` of the database and every API answer.

``pytest tests/hostile`` takes about 40 s (``-m "not system"`` leaves it out).
A test that cannot judge its row says so ("nothing to judge", "cannot
judge") rather than pass on nothing; ``ROUTEWATCH_HOSTILE_EXCLUDE=name,...``
leaves behaviours out of a run, to look past one failure that hides others.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from html_tags import active_parts

from .harness import readable_in_table, strict_json
from .router import CONTROLS, model_id
from .scenario import ADMIN_PROBED, ROUTER_BARE, ROUTER_SK, WINDOWS, Scenario

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

INT4_MAX = 2**31 - 1  # probe_results' token columns are PostgreSQL integers
POISON = (
    "usage_overflow_31",
    "usage_overflow_63",
    "lone_surrogate_error",
    "lone_surrogate_model",
    "lone_surrogate_id",
    "nul_strings",
)
ECHO = ("echo_headers", "echo_body", "echo_error_straddle")
# Distinct providers one model may publish: a "small default" cap of at most 10, plus "other".
PROVIDER_BOUND = 11
# What the 16 MiB answer may add to the process's resident memory (peak over the run
# against the resident size when the banner was printed; the API sweep is in it too).
HUGE_ANSWER_RSS_BUDGET_KB = 128 * 1024
RETRY_AFTER_MAX_S = 86_400.0  # a Retry-After beyond a day is not an instruction anyone follows
_LABELS = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _needs(scenario: Scenario, behaviour: str) -> str:
    if not any(m == model_id(behaviour) for _, m in scenario.series):
        pytest.skip(f"{behaviour} left out of this sweep (ROUTEWATCH_HOSTILE_EXCLUDE)")
    return model_id(behaviour)


def _tail(text: str, chars: int = 3000) -> str:
    return text[-chars:]


def _stored(scenario: Scenario, router: str, model: str) -> list[dict[str, Any]]:
    rows = scenario.rows_of(router, model)
    assert rows, (
        f"no probe of {router}|{model} was stored in the first run "
        f"({scenario.served.get(f'{router}|{model}', 0)} served); nothing to judge"
    )
    return rows


def _once_table(scenario: Scenario) -> str:
    """once's stdout, once it is known to hold the table (so checks on it are not vacuous)."""
    out = scenario.once_stdout.decode("utf-8", "replace")
    summary = rf"\b\d+ of {len(scenario.series)} probes\b"
    assert re.search(summary, out), (
        f"once printed no '{summary}' summary (exit {scenario.once_code}):\n"
        + (out + scenario.once_stderr.decode("utf-8", "replace"))[-3000:]
    )
    return out


def _metric_samples(scenario: Scenario, name: str) -> list[tuple[dict[str, str], float]]:
    samples = []
    for line in scenario.api["/metrics"].body.decode("utf-8", "replace").splitlines():
        if line.startswith(name + "{"):
            labels_text, _, value = line[len(name) + 1 :].rpartition("} ")
            samples.append((dict(_LABELS.findall(labels_text)), float(value)))
    return samples


def _stats_bodies(scenario: Scenario) -> dict[str, Any]:
    return {
        path: scenario.api_json(path) for path in scenario.api if "/stats?" in path and scenario.api[path].status == 200
    }


def _published_attempts(scenario: Scenario, router: str, model: str) -> int:
    body = scenario.api_json(f"/v1/models/{model}/stats?window=1h&router={router}")
    return int(body["samples"]["attempted"])


# ---------------------------------------------------------------- the process


def test_run_stops_cleanly_on_sigterm(scenario: Scenario) -> None:
    """The first run came up, kept going and exited 0 on SIGTERM."""
    run = scenario.run1
    assert run.failure is None, run.failure
    assert run.exit_code == 0, _tail(run.output)


def test_restart_with_a_clean_config_stores_new_probes(scenario: Scenario) -> None:
    """Whatever the first run left in the spool, a restart on it stores new probes and stops cleanly."""
    run = scenario.run2
    assert run.failure is None, run.failure
    assert scenario.rows_after_restart, f"no probe stored after the restart:\n{_tail(run.output)}"
    assert run.exit_code == 0, _tail(run.output)


@pytest.mark.parametrize("which", ["run1", "run2"])
def test_no_traceback_in_the_output(scenario: Scenario, which: str) -> None:
    """Nothing a router sends (nor an admin probe of it, in the second run) ends in a traceback."""
    output = getattr(scenario, which).output
    assert output, f"{which} printed nothing"
    assert "Traceback" not in output, _tail(output)


# ---------------------------------------------------------------- one bad record stops nothing


def test_control_models_were_stored_throughout_the_run(scenario: Scenario) -> None:
    """The well-behaved models' stored rows grew between every two samples (every 2 s)."""
    counts = scenario.control_counts
    assert len(counts) >= 5, counts
    # The first sample is taken as the banner appears, before any probe could be stored.
    stalls = [(a, b) for a, b in zip(counts[1:], counts[2:], strict=False) if b[1] <= a[1]]
    assert not stalls, f"control rows stopped growing (seconds, rows): {counts}"


def test_every_probe_served_was_stored_or_rejected(scenario: Scenario) -> None:
    """Per series: requests the router served == rows stored + results in the rejected file."""
    lost = {}
    for router, model in scenario.series:
        served = scenario.served.get(f"{router}|{model}", 0)
        kept = len(scenario.rows_of(router, model)) + scenario.rejected_of(router, model)
        if kept != served:
            lost[f"{router}|{model}"] = f"served {served}, stored or rejected {kept}"
    assert not lost, lost


@pytest.mark.parametrize("behaviour", POISON)
def test_poison_value_is_normalised_or_rejected(scenario: Scenario, behaviour: str) -> None:
    """A value no column can hold is clamped/replaced before storing, or the result is rejected with a reason."""
    model = _needs(scenario, behaviour)
    rows = scenario.rows_of(ROUTER_SK, model)
    rejected = scenario.rejected_of(ROUTER_SK, model)
    assert rows or rejected, f"no probe of {model} stored or in the rejected file"
    for row in rows:
        for column in ("input_tokens", "output_tokens"):
            assert row[column] is None or 0 <= row[column] <= INT4_MAX, row
        for column in ("model_served", "provider", "request_id", "error_detail"):
            text = row[column]
            assert text is None or "\x00" not in text, row


# ---------------------------------------------------------------- no key anywhere


@pytest.mark.parametrize("kind", ["logs", "data dir", "database", "api", "once output"])
def test_no_sentinel_key(scenario: Scenario, kind: str) -> None:
    """Neither key (nor its first or last 12 characters) nor the admin token is anywhere in ``kind``."""
    finder = scenario.finder
    assert finder.scanned.get(kind), f"nothing was scanned in {kind}"
    assert not finder.leaks.get(kind), f"secrets found in {kind}:\n{finder.report(kind)}"
    if kind == "once output":
        _once_table(scenario)
    if kind in ("database", "api"):
        # Otherwise "not found" would only mean the echoing probes never got this far.
        for router in (ROUTER_SK, ROUTER_BARE):
            for behaviour in ECHO:
                model = _needs(scenario, behaviour)
                assert scenario.rows_of(router, model), f"no {router}|{model} probe stored: the sweep proves nothing"
                if kind == "api":
                    assert _published_attempts(scenario, router, model), f"{router}|{model} not published"


# ---------------------------------------------------------------- label cardinality


def test_providers_per_model_are_capped(scenario: Scenario) -> None:
    """A new provider name on every response adds at most PROVIDER_BOUND providers to any publication."""
    model = _needs(scenario, "provider_per_response")
    for router in (ROUTER_SK, ROUTER_BARE):
        attempts = _published_attempts(scenario, router, model)
        # Each probe brought a new name: with fewer, an uncapped publication could not exceed the bound.
        assert attempts >= PROVIDER_BOUND + 5, f"{router}|{model}: only {attempts} probes published; cannot judge"
        labels = {
            s["provider"]
            for s, _ in _metric_samples(scenario, "routewatch_provider_window_probes_attempted")
            if s["model"] == model and s["router"] == router
        }
        assert len(labels) <= PROVIDER_BOUND, f"/metrics: {len(labels)} provider labels for {router}|{model}"
        for window in WINDOWS:
            body = scenario.api_json(f"/v1/models/{model}/stats?window={window}&router={router}&by=provider")
            cells = body["breakdown"]["provider"]
            assert len(cells) <= PROVIDER_BOUND, f"{window} by=provider: {len(cells)} cells"
    listed = [m["providers"] for m in scenario.api_json("/v1/models")["models"] if m["id"] == model]
    assert listed and all(len(p) <= PROVIDER_BOUND for p in listed), listed


def test_unknown_provider_is_never_an_empty_string(scenario: Scenario) -> None:
    """A router that names no provider: ``null`` in JSON, ``unknown`` in labels, never ``""``."""
    model = CONTROLS[1]  # answers without any provider
    assert _published_attempts(scenario, ROUTER_SK, model), f"{model} not published; cannot judge"
    empty = [
        s
        for s, _ in _metric_samples(scenario, "routewatch_provider_window_probes_attempted")
        if s.get("provider") == ""
    ]
    assert not empty, f'/metrics has provider="" samples: {empty[:3]}'
    for path, body in _stats_bodies(scenario).items():
        assert "" not in body.get("breakdown", {}).get("provider", {}), path
    for entry in scenario.api_json("/v1/models")["models"]:
        assert "" not in entry["providers"], entry["id"]


def test_model_pages_show_router_text_inert(scenario: Scenario) -> None:
    """Every model's page and JSON answer 200, and the page runs nothing, whatever the routers named."""
    pages = {path: a for path, a in scenario.api.items() if path.startswith("/status/models/")}
    details = {path: a for path, a in scenario.api.items() if re.match(r"/v1/models/[^?]+\?router=", path)}
    assert pages and details, "no model page was read: nothing to judge"
    for path, answer in {**pages, **details}.items():
        assert answer.status == 200, (path, answer.status, answer.body[:200])
    for path, answer in pages.items():
        assert active_parts(answer.body.decode("utf-8")) == [], path
    for path in details:
        strict_json(scenario.api[path].body)


# ---------------------------------------------------------------- malformed structure


@pytest.mark.parametrize("behaviour", ["choices_int", "choices_bool"])
def test_malformed_choices_are_bad_response_and_the_model_goes_down(scenario: Scenario, behaviour: str) -> None:
    """``{"choices": 5}`` / ``{"choices": true}``: every probe stored as bad_response; the model went down."""
    model = _needs(scenario, behaviour)
    classes = {row["error_class"] for row in _stored(scenario, ROUTER_SK, model)}
    assert classes == {"bad_response"}, classes
    # Down now, or down in an incident: a moment of "unknown" (prober heartbeat) at the sweep is not judged here.
    states = {m["id"]: m for m in scenario.api_json("/v1/status")["models"]}
    incidents = scenario.api_json("/v1/incidents?state=all")["incidents"]
    went_down = any(model in i["models"] and i["worst_state"] == "down" for i in incidents)
    assert states[model]["state"] == "down" or went_down, (states[model], incidents)


# ---------------------------------------------------------------- big answers


def test_a_16_mib_answer_keeps_memory_bounded(scenario: Scenario) -> None:
    """Peak resident memory over the run stays within HUGE_ANSWER_RSS_BUDGET_KB of the start's."""
    model = _needs(scenario, "huge_answer")
    assert scenario.served.get(f"{ROUTER_SK}|{model}", 0) >= 1, "the huge answer was never served"
    run = scenario.run1
    peak, base = run.memory_kb.get("VmHWM"), run.rss_at_banner_kb
    assert peak is not None and base is not None, run.memory_kb
    assert peak - base <= HUGE_ANSWER_RSS_BUDGET_KB, (
        f"peak RSS {peak / 1024:.0f} MiB, {(peak - base) / 1024:.0f} MiB over the {base / 1024:.0f} MiB at start"
    )


# ---------------------------------------------------------------- classification


def test_http_299_is_bad_response(scenario: Scenario) -> None:
    """A 2xx that is not 200 is not a client error."""
    model = _needs(scenario, "http_299")
    classes = {row["error_class"] for row in _stored(scenario, ROUTER_SK, model)}
    assert classes == {"bad_response"}, classes


def test_never_ending_stream_is_timeout_total_not_no_next_token(scenario: Scenario) -> None:
    """Tokens that never stop: timeout_total, and the detail does not claim the tokens stopped."""
    model = _needs(scenario, "never_ending_stream")
    rows = _stored(scenario, ROUTER_SK, model)
    assert {row["error_class"] for row in rows} == {"timeout_total"}, rows[:2]
    details = {row["error_detail"] for row in rows}
    assert not any("no next token" in (d or "") for d in details), details


def test_negative_usage_never_shows_negative_tokens(scenario: Scenario) -> None:
    """Negative usage counts are neither stored nor published as negative token totals."""
    model = _needs(scenario, "negative_usage")
    for row in _stored(scenario, ROUTER_SK, model):
        for column in ("input_tokens", "output_tokens"):
            assert row[column] is None or row[column] >= 0, row
    assert _published_attempts(scenario, ROUTER_SK, model), f"{model} not published; cannot judge"
    for path, body in _stats_bodies(scenario).items():
        assert all(v >= 0 for v in body["tokens"].values()), (path, body["tokens"])
    for entry in scenario.api_json("/v1/models")["models"]:
        assert all(v >= 0 for v in entry["stats"]["tokens"].values()), (entry["id"], entry["stats"]["tokens"])
    for name in ("routewatch_window_input_tokens", "routewatch_window_output_tokens"):
        negative = [(s, v) for s, v in _metric_samples(scenario, name) if v < 0]
        assert not negative, negative[:3]


@pytest.mark.parametrize("behaviour", ["retry_after_nan", "retry_after_negative", "retry_after_huge"])
def test_retry_after_is_stored_finite_and_sane(scenario: Scenario, behaviour: str) -> None:
    """Retry-After NaN, -100 and 1e308: stored as nothing or a finite number in [0, a day]."""
    model = _needs(scenario, behaviour)
    rows = _stored(scenario, ROUTER_SK, model)
    assert {row["error_class"] for row in rows} == {"http_429"}, rows[:2]
    values = {row["retry_after_s"] for row in rows}
    assert all(v is None or (math.isfinite(v) and 0 <= v <= RETRY_AFTER_MAX_S) for v in values), values


def test_admin_probe_of_a_nan_retry_after_answers_json(scenario: Scenario) -> None:
    """POST /v1/models/{id}/probe on a model that sends Retry-After: NaN answers 200 with valid JSON."""
    model = _needs(scenario, "retry_after_nan")
    assert "retry_after_nan" in ADMIN_PROBED
    answer = scenario.admin[f"/v1/models/{model}/probe"]
    assert answer.status == 200, answer.body[:500]
    results = strict_json(answer.body)["results"]
    assert results and all(r["error_class"] == "http_429" for r in results), results


# ---------------------------------------------------------------- routewatch once


def test_once_exits_non_zero_when_a_probe_failed(scenario: Scenario) -> None:
    """Some probes fail against this router: ``once`` prints its table and says so in its exit code."""
    _once_table(scenario)
    assert scenario.once_code not in (None, 0), scenario.once_stdout.decode("utf-8", "replace")[-2000:]


def test_once_prints_no_traceback(scenario: Scenario) -> None:
    """Markup, escapes, surrogates and malformed chunks end up in the table, not in a traceback."""
    out = (scenario.once_stdout + scenario.once_stderr).decode("utf-8", "replace")
    assert "Traceback" not in out, out[-3000:]
    _once_table(scenario)


def test_once_prints_no_terminal_control_sequences(scenario: Scenario) -> None:
    """No ESC, BEL or C1 CSI from a router's text reaches the terminal."""
    _once_table(scenario)
    for name, data in (("stdout", scenario.once_stdout), ("stderr", scenario.once_stderr)):
        for control in (b"\x1b", b"\x07", "\x9b".encode()):
            assert control not in data, f"{control!r} in once's {name}"


def test_once_shows_every_model_id_whole_in_80_columns(scenario: Scenario) -> None:
    """Every model id can be read whole (on a line, or wrapped within its cell), never cut to "hostile/…"."""
    out = _once_table(scenario)
    unreadable = sorted({m for _, m in scenario.series if not readable_in_table(out, m)})
    assert not unreadable, f"cut or missing in 80 columns: {unreadable}\n{out[-3000:]}"
