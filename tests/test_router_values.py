"""Normalising router values and redacting secrets: pure functions, no I/O."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from factories import probe_result
from hostile_router import storable_problems

from routewatch.probe.redact import MAX_DETAIL_CHARS, redact
from routewatch.probe.router_values import (
    INT4_MAX,
    MAX_LABEL_CHARS,
    UnusableValue,
    label,
    retry_after_seconds,
    storable,
    token_count,
    valid_text,
)
from routewatch.results.probe_result import ProbeResult

pytestmark = pytest.mark.unit

KEY = "SENTINELabc123def456ghi789jkl"


def poisoned() -> ProbeResult:
    """A result carrying every kind of value the database refuses."""
    return probe_result(
        error_class="bad_response",
        error_detail=f"bad \ud800 \x00 {KEY} " + "x" * 10_000,
        http_status=200,
        model_served="\udfff" * 3,
        provider="",
        request_id=f"id-{KEY}",
        input_tokens=-5,
        output_tokens=2**40,
        chunks=2**33,
        ttft_ms=math.nan,
        e2e_ms=math.inf,
        retry_after_s=-math.inf,
    )


def test_storable_leaves_nothing_the_database_refuses() -> None:
    r = storable(poisoned(), [KEY])
    assert storable_problems(r) == []
    assert r.input_tokens is None and r.output_tokens is None and r.chunks == INT4_MAX
    assert r.ttft_ms is None and r.e2e_ms is None and r.retry_after_s is None
    assert r.provider is None and r.model_served == "\ufffd" * 3
    assert KEY[:8] not in repr(r)
    assert r.error_detail is not None and len(r.error_detail) == MAX_DETAIL_CHARS


def test_storable_keeps_good_values() -> None:
    good = probe_result(
        http_status=200,
        model_served="openai/gpt-4.1",
        provider="OpenAI",
        request_id="gen-123",
        ttft_ms=12.5,
        input_tokens=20,
        output_tokens=3,
        chunks=3,
    )
    assert storable(good, [KEY]) == good


@pytest.mark.parametrize(("value", "expected"), [(None, None), (0, 0), (12, 12), (12.0, 12), (INT4_MAX, INT4_MAX)])
def test_token_count_accepts_counts(value: object, expected: int | None) -> None:
    assert token_count(value, "usage.x") == expected


@pytest.mark.parametrize("value", [-1, INT4_MAX + 1, 2**63, 1.5, math.nan, math.inf, "3", True, [3], {"n": 3}])
def test_token_count_refuses_what_is_not_a_count(value: object) -> None:
    with pytest.raises(UnusableValue, match=r"usage\.x is"):
        token_count(value, "usage.x")


def test_valid_text() -> None:
    assert valid_text("a\ud800b\x00c\x1b[0m\td\ne") == "a\ufffdbc\ufffdd\ufffde"  # the escape sequence goes whole
    assert valid_text("a\tb\nc\x07", multiline=True) == "a\tb\nc\ufffd"
    valid_text("x\udc80" * 10).encode("utf-8")


def test_label_is_capped_and_blank_is_none() -> None:
    assert label("  ") is None and label("") is None and label(5) is None and label("\x00") is None
    long = label("p" * 10_000)
    assert long is not None and len(long) == MAX_LABEL_CHARS


def test_retry_after() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert retry_after_seconds("Mon, 99 Foo 2025 99:99:99 GMT", now) is None
    assert retry_after_seconds(None) is None


@pytest.mark.parametrize("offset", range(MAX_DETAIL_CHARS - 30, MAX_DETAIL_CHARS + 2))
def test_redact_masks_a_secret_across_the_cut(offset: int) -> None:
    text = redact("e" * offset + KEY + " rest", [KEY])
    assert len(text) <= MAX_DETAIL_CHARS
    assert not any(KEY[i : i + 4] in text for i in range(len(KEY) - 3))


def test_redact_masks_pieces_of_a_secret_only_when_asked() -> None:
    text = f"key {KEY[:12]}... is invalid; {KEY[-9:]}"
    assert redact(text, [KEY], fragments=True) == "key ***... is invalid; ***"
    assert redact(text, [KEY]) == text  # e.g. a database URL, whose pieces are ordinary words


@pytest.mark.parametrize("unit", ["a", "a:", "a://", "sk-", "bearer ", "x@"])
def test_redaction_time_is_linear_in_the_text(unit: str) -> None:
    # 30 KB of one word took the URL-credentials pattern seconds (quadratic).
    text = unit * (30_000 // len(unit))
    t0 = time.perf_counter()
    redact(text, [KEY], fragments=True)
    assert time.perf_counter() - t0 < 0.2
