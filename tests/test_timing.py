"""Timing maths of one probe (pure functions, no I/O)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routewatch.probe.redact import redact
from routewatch.probe.timing import StreamMarks, chunk_gaps_ms, derive, output_tps, percentile
from routewatch.probe.tokens import TokenCounter, estimate_tokens

pytestmark = pytest.mark.unit

MS = 1_000_000


def test_derive_from_marks() -> None:
    marks = StreamMarks(
        t0=1_000 * MS,
        connect_start=1_000 * MS,
        connect_end=1_012 * MS,
        headers=1_100 * MS,
        first_answer=1_400 * MS,
        token_times=[1_300 * MS, 1_400 * MS, 1_420 * MS, 1_500 * MS],
    )
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
    assert chunk_gaps_ms([0, 2 * MS, 7 * MS]).tolist() == [2.0, 5.0]
    assert chunk_gaps_ms([3]).tolist() == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        (" one two three", 3),
        (" seventeen nineteen", 2),
        ("Hello, world!", 4),
        ("supercalifragilistic", 5),
        ("12345", 2),
    ],
)
def test_estimate_tokens(text: str, expected: int) -> None:
    assert estimate_tokens(text) == expected


def counted_in_pieces(text: str, cuts: list[int]) -> int:
    edges = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    counter = TokenCounter()
    for a, b in zip(edges, edges[1:]):
        counter.feed(text[a:b])
    return counter.count


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([" super", "califragi", "listic"], 5),
        ([" one", " two"], 2),
        (["12", "345"], 2),
        (["1", "2", "3", "4"], 2),
        (["Hello", ",", " world", "!"], 4),
        (["", " a", "", "_b"], 2),
        ([], 0),
    ],
)
def test_token_counter_counts_a_word_split_across_pieces_once(pieces: list[str], expected: int) -> None:
    counter = TokenCounter()
    for piece in pieces:
        counter.feed(piece)
    assert counter.count == expected == estimate_tokens("".join(pieces))


_prose = st.text(st.sampled_from(list("abcxyz ABC 0123456789 ,.!?;:'\"-_()\n\t")), max_size=300)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_prose, st.text(max_size=120)), st.lists(st.integers(0, 10_000), max_size=15))
def test_token_counter_over_any_split_equals_the_whole_text_estimate(text: str, cuts: list[int]) -> None:
    assert counted_in_pieces(text, cuts) == estimate_tokens(text)


def test_token_counter_keeps_no_text() -> None:
    counter = TokenCounter()
    for _ in range(1000):
        counter.feed("x" * 1000)  # one word a million letters long, fed in pieces
    assert counter.count == estimate_tokens("x" * 1_000_000) == 250_000
    assert not any(
        isinstance(getattr(counter, name), str) and len(getattr(counter, name)) > 16 for name in TokenCounter.__slots__
    )


def test_redact_removes_keys_and_url_credentials() -> None:
    text = redact("bad key sk-or-v1-abcdef0123456789 for https://bob:hunter2@host/v1; Bearer abc.def", ["hunter2"])
    assert "abcdef0123456789" not in text and "hunter2" not in text and "abc.def" not in text
    assert "https://***@host/v1" in text
