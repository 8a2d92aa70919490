"""Timing maths of one probe (pure functions, no I/O)."""

import numpy as np
import pytest

from routewatch.probe.redact import redact
from routewatch.probe.timing import StreamMarks, chunk_gaps_ms, derive, output_tps, percentile
from routewatch.probe.tokens import estimate_tokens

MS = 1_000_000


def test_derive_from_marks() -> None:
    marks = StreamMarks(t0=1_000 * MS, connect_start=1_000 * MS, connect_end=1_012 * MS, headers=1_100 * MS,
                        first_answer=1_400 * MS, token_times=[1_300 * MS, 1_400 * MS, 1_420 * MS, 1_500 * MS])
    t = derive(marks, output_tokens=4)
    assert t.connect_ms == 12
    assert t.ttfb_ms == 100
    assert t.ttft_ms == 300  # the first token may be reasoning ...
    assert t.ttfat_ms == 400  # ... the first answer token comes later
    assert t.e2e_ms == 500
    assert t.output_tps == pytest.approx(3 / 0.2)
    assert t.chunk_gap_max_ms == 100
    assert t.chunk_gap_p95_ms == pytest.approx(float(np.percentile([100, 20, 80], 95)))


def test_phases_that_never_happened_are_none_not_zero() -> None:
    t = derive(StreamMarks(t0=5), output_tokens=None)
    assert (t.connect_ms, t.ttfb_ms, t.ttft_ms, t.ttfat_ms, t.e2e_ms, t.output_tps) == (None,) * 6
    assert t.chunk_gap_max_ms is None and t.chunk_gap_p95_ms is None


@pytest.mark.parametrize(
    ("tokens", "first", "last", "expected"),
    [
        (None, 0, 10, None),
        (1, 0, 10 * MS, None),  # one token: no interval to divide by
        (2, 0, 0, None),  # whole answer in one chunk: no speed
        (2, 5, 3, None),
        (11, 0, 1_000 * MS, 10.0),
        (101, 0, 2_000 * MS, 50.0),
    ],
)
def test_output_tps(tokens: int | None, first: int, last: int, expected: float | None) -> None:
    assert output_tps(tokens, first, last) == (None if expected is None else pytest.approx(expected))


def test_percentile_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    values = sorted(rng.lognormal(6, 1, 501).tolist())
    for q in (0.0, 0.5, 0.95, 0.99, 1.0):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_chunk_gaps() -> None:
    assert chunk_gaps_ms([0, 2 * MS, 7 * MS]) == [2.0, 5.0]
    assert chunk_gaps_ms([3]) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 0), (" one two three", 3), (" seventeen nineteen", 2), ("Hello, world!", 4),
     ("supercalifragilistic", 5), ("12345", 2)],
)
def test_estimate_tokens(text: str, expected: int) -> None:
    assert estimate_tokens(text) == expected


def test_redact_removes_keys_and_url_credentials() -> None:
    text = redact("bad key sk-or-v1-abcdef0123456789 for https://bob:hunter2@host/v1; Bearer abc.def", ["hunter2"])
    assert "abcdef0123456789" not in text and "hunter2" not in text and "abc.def" not in text
    assert "https://***@host/v1" in text
