"""Tests of the mergeable log-bucket histogram (routewatch/aggregator/sketch.py)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import asyncpg
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routewatch.aggregator.sketch import (
    EXACT_BINOMIAL_MAX_TAIL,
    GAMMA,
    LN_GAMMA,
    MAX_INDEX,
    MAX_VALUE,
    MIN_INDEX,
    MIN_SAMPLES_FOR_CI,
    MIN_SAMPLES_FOR_P95_CI,
    MIN_VALUE,
    NUM_BUCKETS,
    RELATIVE_ACCURACY,
    Histogram,
    bucket_bounds,
    bucket_indices,
    bucket_values,
    order_statistic_ranks,
    quantile_table,
    sql_bucket_expr,
)

# The accuracy contract: percentiles within 1% of numpy's on the raw values.
CONTRACT_TOLERANCE = 0.01
# Slack for float rounding at bucket edges, far below anything that matters.
ULP_SLACK = 1e-12


# --- Buckets ---------------------------------------------------------------


@pytest.mark.unit
def test_constants_are_consistent() -> None:
    assert RELATIVE_ACCURACY < CONTRACT_TOLERANCE
    assert pytest.approx((1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY), rel=1e-15) == GAMMA
    assert math.log(GAMMA) == LN_GAMMA
    assert bucket_indices([MIN_VALUE])[0] == MIN_INDEX
    assert bucket_indices([MAX_VALUE])[0] == MAX_INDEX
    assert NUM_BUCKETS == MAX_INDEX - MIN_INDEX + 1 < 2**16  # the u16 length field


in_range = st.floats(min_value=MIN_VALUE, max_value=MAX_VALUE, allow_nan=False)


@pytest.mark.unit
@given(st.lists(in_range, min_size=1, max_size=50))
def test_representative_within_relative_accuracy(values: list[float]) -> None:
    x = np.array(values)
    idx = bucket_indices(x)
    rep = bucket_values(idx)
    assert np.all(np.abs(rep - x) <= RELATIVE_ACCURACY * x * (1 + ULP_SLACK))
    lower, upper = bucket_bounds(idx)
    assert np.all(lower <= x * (1 + ULP_SLACK)) and np.all(x <= upper * (1 + ULP_SLACK))


@pytest.mark.unit
def test_worst_case_is_at_bucket_edges() -> None:
    # Every edge of the range, and a hair either side: the error peaks there at exactly a.
    edges = np.exp(np.arange(MIN_INDEX, MAX_INDEX) * LN_GAMMA)
    x = np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf)])
    x = x[(x >= MIN_VALUE) & (x <= MAX_VALUE)]
    err = np.abs(bucket_values(bucket_indices(x)) - x) / x
    assert err.max() <= RELATIVE_ACCURACY * (1 + ULP_SLACK)
    assert err.max() >= RELATIVE_ACCURACY * (1 - 1e-9)  # the bound is tight


@pytest.mark.unit
def test_bucket_indices_clamps_and_rejects() -> None:
    idx = bucket_indices([1e-9, MIN_VALUE / 2, 1e9, np.inf])
    assert idx.dtype == np.int32
    assert list(idx) == [MIN_INDEX, MIN_INDEX, MAX_INDEX, MAX_INDEX]
    for bad in ([0.0], [-1.0], [np.nan], [1.0, -np.inf]):
        with pytest.raises(ValueError):
            bucket_indices(bad)
    assert bucket_indices(np.array([])).size == 0
    with pytest.raises(ValueError):
        bucket_values([MAX_INDEX + 1])
    with pytest.raises(ValueError):
        bucket_values([1.5])


# --- Construction, merge, subtract -----------------------------------------

values_st = st.lists(
    st.one_of(
        st.floats(min_value=1e-5, max_value=1e9, allow_nan=False),
        st.sampled_from([0.0, -3.0, math.nan, math.inf, 1.0]),
    ),
    max_size=40,
)


@pytest.mark.unit
def test_from_values_counts_zeros_nan_and_clamped() -> None:
    h = Histogram.from_values([np.nan, 0.0, -5.0, 1e-6, 1e12, 100.0])
    assert h.zeros == 2
    assert h.count == 5  # NaN ignored; clamped values still count
    assert h.offset == MIN_INDEX and h.offset + h.counts.size - 1 == MAX_INDEX
    assert h.counts[0] == 1 and h.counts[-1] == 1
    assert not h.counts.flags.writeable


@pytest.mark.unit
def test_empty_and_tiny() -> None:
    empty = Histogram.empty()
    assert empty.count == 0 and empty == Histogram.from_values([])
    assert empty == Histogram.from_values([np.nan])
    assert empty.quantile(0.5) is None and empty.quantile_ci(0.5) is None
    one = Histogram.from_values([250.0])
    assert one.quantile(0.5) == pytest.approx(250.0, rel=RELATIVE_ACCURACY)
    assert one.quantile(0.0) == one.quantile(1.0) == one.quantile(0.5)
    assert one.quantile_ci(0.5) is None
    zeros = Histogram.from_values([0.0, 0.0, -1.0])
    assert zeros.quantile(0.5) == 0.0 and zeros.count == 3
    for n in range(MIN_SAMPLES_FOR_CI):
        assert Histogram.from_values(np.arange(1.0, n + 1)).quantile_ci(0.5) is None
    with pytest.raises(ValueError):
        one.quantile(1.5)


@pytest.mark.unit
def test_from_indices_matches_from_values() -> None:
    x = np.random.default_rng(3).lognormal(5, 1, 500)
    idx = bucket_indices(x)
    uniq, cnt = np.unique(idx, return_counts=True)
    expected = Histogram.from_values(np.concatenate([x, [0.0, 0.0]]))
    assert Histogram.from_indices(uniq[::-1], cnt[::-1], zeros=2) == expected
    assert Histogram.from_indices(idx, zeros=2) == expected
    assert Histogram.from_indices([5, 5, 7], [0, 0, 0]) == Histogram.empty()
    with pytest.raises(ValueError):
        Histogram.from_indices([MIN_INDEX - 1])
    with pytest.raises(ValueError):
        Histogram.from_indices([1, 2], [1, -1])
    with pytest.raises(ValueError):
        Histogram.from_indices([1, 2], [1])


@pytest.mark.unit
def test_invariants_enforced() -> None:
    with pytest.raises(ValueError):
        Histogram(0, np.array([0, 1]), 0)  # not trimmed
    with pytest.raises(ValueError):
        Histogram(0, np.array([1, -1, 1]), 0)
    with pytest.raises(ValueError):
        Histogram(MAX_INDEX, np.array([1, 1]), 0)
    with pytest.raises(ValueError):
        Histogram(3, np.zeros(0, dtype=np.int64), 0)


@pytest.mark.unit
@settings(max_examples=60, deadline=None)
@given(values_st, values_st, values_st)
def test_merge_is_union_commutative_associative(a: list[float], b: list[float], c: list[float]) -> None:
    ha, hb, hc = (Histogram.from_values(v) for v in (a, b, c))
    union = Histogram.from_values(a + b + c)
    assert ha.merge(hb) == hb.merge(ha)
    assert ha.merge(hb).merge(hc) == ha.merge(hb.merge(hc)) == union
    assert Histogram.merge_all([ha, hb, hc]) == union
    assert Histogram.merge_all(h for h in (hc, Histogram.empty(), ha, hb)) == union
    assert ha.merge(Histogram.empty()) == ha
    assert Histogram.merge_all([]) == Histogram.empty()


@pytest.mark.unit
@settings(max_examples=60, deadline=None)
@given(values_st, values_st)
def test_subtract_inverts_merge(a: list[float], b: list[float]) -> None:
    ha, hb = Histogram.from_values(a), Histogram.from_values(b)
    assert ha.merge(hb).subtract(hb) == ha
    assert ha.merge(hb).subtract(ha) == hb
    assert ha.subtract(ha) == Histogram.empty()


@pytest.mark.unit
def test_subtract_refuses_to_go_negative() -> None:
    h = Histogram.from_values([10.0, 20.0, 0.0])
    for other in ([10.0, 10.0], [30.0], [0.0, 0.0], [20.0, 5000.0]):
        with pytest.raises(ValueError):
            h.subtract(Histogram.from_values(other))


@pytest.mark.unit
def test_sliding_window_by_subtraction() -> None:
    rng = np.random.default_rng(11)
    hours = [rng.lognormal(6, 0.8, 60) for _ in range(30)]
    hists = [Histogram.from_values(v) for v in hours]
    window = Histogram.merge_all(hists[:24])
    for start in range(1, 7):
        window = window.merge(hists[start + 23]).subtract(hists[start - 1])
        assert window == Histogram.from_values(np.concatenate(hours[start : start + 24]))


@pytest.mark.unit
def test_merge_all_speed() -> None:
    rng = np.random.default_rng(5)
    samples = rng.lognormal(6.0, 0.7, (10_000, 60))
    hists = [Histogram.from_values(row) for row in samples]
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        merged = Histogram.merge_all(hists)
        best = min(best, time.perf_counter() - t0)
    assert merged == Histogram.from_values(samples.ravel())
    assert best < 0.1, f"merge of 10,000 histograms took {best * 1e3:.1f} ms"


# --- Encoding ----------------------------------------------------------------


@pytest.mark.unit
@settings(max_examples=60, deadline=None)
@given(values_st, st.integers(min_value=1, max_value=70_000))
def test_bytes_round_trip(values: list[float], scale: int) -> None:
    h = Histogram.from_values(values)
    assert Histogram.from_bytes(h.to_bytes()) == h
    # Large counts pick wider fields and still round-trip.
    big = Histogram(h.offset, h.counts * scale, h.zeros * scale)
    assert Histogram.from_bytes(big.to_bytes()) == big


@pytest.mark.unit
def test_encoding_is_compact() -> None:
    hour = Histogram.from_values(np.random.default_rng(2).lognormal(6.5, 0.5, 60))
    assert len(hour.to_bytes()) == 12 + hour.counts.size  # one byte per bucket
    assert len(Histogram.empty().to_bytes()) == 12
    big = Histogram(0, np.array([2**32 - 1]), 2**32 - 1)
    assert Histogram.from_bytes(big.to_bytes()) == big
    with pytest.raises(ValueError, match="2\\*\\*32"):
        Histogram(0, np.array([2**32]), 0).to_bytes()


@pytest.mark.unit
def test_malformed_bytes_rejected() -> None:
    good = Histogram.from_values([1.0, 2.0, 3.0, 0.0]).to_bytes()
    header = good[:12]
    cases: dict[str, bytes] = {
        "truncated": good[:5],
        "version": b"\x07" + good[1:],
        "width": good[:1] + b"\x03" + good[2:],
        "length": good[:-1],
        "length ": good + b"\x00",
        "trimmed": header[:10] + (3).to_bytes(2, "little") + b"\x00\x01\x01",
        "outside": header[:2]
        + (MAX_INDEX).to_bytes(4, "little", signed=True)
        + header[6:10]
        + (2).to_bytes(2, "little")
        + b"\x01\x01",
        "empty": header[:2] + (5).to_bytes(4, "little", signed=True) + header[6:10] + b"\x00\x00",
        "exceeds": header[:10] + (NUM_BUCKETS + 1).to_bytes(2, "little") + b"\x01" * (NUM_BUCKETS + 1),
    }
    for problem, data in cases.items():
        with pytest.raises(ValueError, match=problem.strip()):
            Histogram.from_bytes(data)


# --- Accuracy against numpy ------------------------------------------------

Gen = Callable[[np.random.Generator, int], np.ndarray]


def _mixture(rng: np.random.Generator, n: int) -> np.ndarray:
    # 90% fast responses, 10% from a slow provider ten times slower.
    slow = rng.random(n) < 0.1
    return np.where(slow, rng.lognormal(math.log(3000), 0.5, n), rng.lognormal(math.log(300), 0.3, n))


def _slow_tail(rng: np.random.Generator, n: int) -> np.ndarray:
    # A 1% tail of very slow values (100x): cold starts, queueing.
    x = rng.lognormal(math.log(500), 0.4, n)
    return np.where(rng.random(n) < 0.01, x * 100, x)


def _tokens_per_second(rng: np.random.Generator, n: int) -> np.ndarray:
    # Output speed: a gamma body around 80 tok/s and 5% stalled streams.
    x = rng.gamma(9.0, 80 / 9.0, n)
    return np.where(rng.random(n) < 0.05, rng.uniform(0.5, 5.0, n), x)


def _integer_ms(rng: np.random.Generator, n: int) -> np.ndarray:
    # Millisecond-rounded timings: many exact ties.
    return np.round(rng.lognormal(math.log(120), 0.6, n))


DATASETS: dict[str, Gen] = {
    **{
        f"lognormal-s{s}": functools.partial(lambda rng, n, s: rng.lognormal(math.log(800), s, n), s=s)
        for s in (0.25, 0.5, 1.0, 2.0)
    },
    "mixture-90-10": _mixture,
    "slow-tail-1pct": _slow_tail,
    "tokens-per-second": _tokens_per_second,
    "integer-ms": _integer_ms,
}
SIZES = (60, 200, 1_000, 10_000, 100_000)


def _relative_errors(h: Histogram, raw: np.ndarray) -> list[float]:
    errors = []
    for q in (0.5, 0.95):
        exact = float(np.percentile(raw, 100 * q))
        est = h.quantile(q)
        assert est is not None
        errors.append(abs(est - exact) / exact)
    return errors


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_percentiles_match_numpy(name: str) -> None:
    rng = np.random.default_rng(sum(map(ord, name)))
    worst = 0.0
    for n in SIZES:
        repeats = 20 if n <= 1_000 else 2
        for _ in range(repeats):
            raw = DATASETS[name](rng, n)
            worst = max(worst, *_relative_errors(Histogram.from_values(raw), raw))
    # The 1% of the contract, and the tighter bound the interpolation argument gives.
    assert worst <= CONTRACT_TOLERANCE
    assert worst <= RELATIVE_ACCURACY * (1 + 1e-9)


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_merged_hourly_histograms_match_numpy_on_all_raw(name: str) -> None:
    # A 7-day window: 168 hours of ~60 probes, merged, against the raw rows.
    rng = np.random.default_rng(sum(map(ord, name)) + 1)
    hours = [DATASETS[name](rng, int(rng.integers(40, 80))) for _ in range(168)]
    merged = Histogram.merge_all(Histogram.from_values(v) for v in hours)
    raw = np.concatenate(hours)
    assert merged == Histogram.from_values(raw)
    assert max(_relative_errors(merged, raw)) <= RELATIVE_ACCURACY * (1 + 1e-9)


@pytest.mark.unit
def test_extreme_quantiles_and_zeros() -> None:
    rng = np.random.default_rng(8)
    raw = np.concatenate([rng.lognormal(3, 1, 300), np.zeros(20)])
    h = Histogram.from_values(raw)
    for q in (0.0, 0.01, 0.05, 0.1, 0.5, 0.99, 1.0):
        exact = float(np.percentile(raw, 100 * q))
        est = h.quantile(q)
        assert est is not None
        assert abs(est - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9)


# --- Confidence intervals ------------------------------------------------


def _binomial_cdf(n: int, q: float, k: int) -> float:
    """P(Binomial(n, q) <= k), by exact integer arithmetic over a common denominator."""
    num, den = q.as_integer_ratio()
    total = sum(math.comb(n, i) * num**i * (den - num) ** (n - i) for i in range(k + 1))
    return total / den**n


@pytest.mark.unit
def test_ranks_match_published_tables_and_minimums() -> None:
    # Conover-style tables: n=20 median -> (6, 15); n=100 median -> (40, 61).
    assert order_statistic_ranks(20, 0.5) == (6, 15)
    assert order_statistic_ranks(100, 0.5) == (40, 61)
    assert order_statistic_ranks(MIN_SAMPLES_FOR_CI, 0.5) == (1, MIN_SAMPLES_FOR_CI)
    assert order_statistic_ranks(MIN_SAMPLES_FOR_CI - 1, 0.5) is None
    assert order_statistic_ranks(MIN_SAMPLES_FOR_P95_CI - 1, 0.95) is None
    assert order_statistic_ranks(MIN_SAMPLES_FOR_P95_CI, 0.95) is not None
    assert order_statistic_ranks(500, 0.0) is None and order_statistic_ranks(500, 1.0) is None
    for bad_conf in (0.0, 1.0, 1.2):
        with pytest.raises(ValueError):
            order_statistic_ranks(50, 0.5, bad_conf)


@pytest.mark.unit
@pytest.mark.parametrize("n,q", [(6, 0.5), (30, 0.5), (72, 0.95), (150, 0.95), (300, 0.05), (500, 0.9)])
def test_exact_ranks_are_equal_tailed(n: int, q: float) -> None:
    ranks = order_statistic_ranks(n, q)
    assert ranks is not None
    lo, up = ranks
    tail = 0.025
    # Each tail is at most 2.5%, and moving either rank inward would break that.
    assert _binomial_cdf(n, q, lo - 1) <= tail < _binomial_cdf(n, q, lo)
    assert 1 - _binomial_cdf(n, q, up - 1) <= tail < 1 - _binomial_cdf(n, q, up - 2)


@pytest.mark.unit
@pytest.mark.parametrize("q", [0.5, 0.95])
def test_normal_approximation_agrees_with_exact_at_the_switch(q: float) -> None:
    n_switch = math.floor(EXACT_BINOMIAL_MAX_TAIL / min(q, 1 - q))
    exact = order_statistic_ranks(n_switch, q)
    normal = order_statistic_ranks(n_switch + 1, q)
    assert exact is not None and normal is not None
    # One more sample shifts each exact rank by at most one; the approximation
    # may be off by one more.
    assert abs(normal[0] - exact[0]) <= 2 and abs(normal[1] - exact[1]) <= 2


@pytest.mark.unit
@pytest.mark.parametrize("q", [0.5, 0.95])
def test_ci_coverage(q: float) -> None:
    n, trials, mu, sigma = 200, 2000, math.log(600), 0.8
    true_quantile = math.exp(mu + sigma * float(np.sqrt(2)) * _erfinv(2 * q - 1))
    rng = np.random.default_rng(int(q * 1000))
    covered = 0
    for row in rng.lognormal(mu, sigma, (trials, n)):
        ci = Histogram.from_values(row).quantile_ci(q)
        assert ci is not None
        covered += ci[0] <= true_quantile <= ci[1]
    coverage = covered / trials
    lo, up = order_statistic_ranks(n, q) or (0, 0)
    expected = _binomial_cdf(n, q, up - 1) - _binomial_cdf(n, q, lo - 1)
    assert 0.92 <= coverage <= 0.98
    # Bucketing only widens the interval, by a fraction of a percent.
    assert abs(coverage - expected) <= 3 * math.sqrt(expected * (1 - expected) / trials) + 0.005


def _erfinv(y: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf((y + 1) / 2) / math.sqrt(2)


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_ci_contains_sample_percentile_and_estimate(name: str) -> None:
    rng = np.random.default_rng(sum(map(ord, name)) + 2)
    for n in (6, 20, 72, 200, 5_000):
        raw = DATASETS[name](rng, n)
        h = Histogram.from_values(raw)
        for q in (0.5, 0.95):
            ci = h.quantile_ci(q)
            if ci is None:
                assert q == 0.95 and n < MIN_SAMPLES_FOR_P95_CI
                continue
            est = h.quantile(q)
            assert est is not None
            assert ci[0] <= float(np.percentile(raw, 100 * q)) <= ci[1]
            assert ci[0] <= est <= ci[1]


# --- SQL -------------------------------------------------------------------


@pytest.mark.unit
def test_sql_expr_takes_only_column_names() -> None:
    assert "ttft_ms" in sql_bucket_expr("ttft_ms")
    sql_bucket_expr('p."Output TPS"')
    for bad in ("x); DROP TABLE t; --", "ttft_ms + 1", "", '"unterminated'):
        with pytest.raises(ValueError):
            sql_bucket_expr(bad)


def _sql_test_values() -> np.ndarray:
    rng = np.random.default_rng(13)
    spread = np.exp(rng.uniform(math.log(1e-5), math.log(1e9), 9_000))
    edges = np.exp(rng.integers(MIN_INDEX, MAX_INDEX, 300) * LN_GAMMA)
    special = np.array([0.0, -1.0, np.nan, np.inf, -np.inf, MIN_VALUE, MAX_VALUE, 5e-324, 1.7e308])
    return np.concatenate([spread, edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf), special])


@pytest.mark.db
async def test_sql_expression_matches_numpy_on_server(db_dsn: str) -> None:
    values = _sql_test_values()
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch(
            f"SELECT i, {sql_bucket_expr('v')} AS idx FROM unnest($1::float8[]) WITH ORDINALITY AS t(v, i)",
            [float(v) for v in values],
        )
    finally:
        await conn.close()
    sql = {int(r["i"]) - 1: r["idx"] for r in rows}
    positive = values > 0  # NaN compares false
    assert all(sql[i] is None for i in np.flatnonzero(~positive))
    pos_idx = np.flatnonzero(positive)
    numpy_idx = bucket_indices(values[pos_idx])
    sql_idx = np.array([sql[i] for i in pos_idx])
    mismatch = numpy_idx != sql_idx
    # Disagreement is allowed only within 1e-9 (relative) of a bucket edge.
    x = np.clip(values[pos_idx][mismatch], MIN_VALUE, MAX_VALUE)
    position = np.log(x) / LN_GAMMA
    assert np.all(np.abs(position - np.round(position)) * LN_GAMMA <= 1e-9)
    assert np.all(np.abs(numpy_idx[mismatch] - sql_idx[mismatch]) == 1)
    assert mismatch.sum() < 0.1 * positive.sum()


# --- quantile_table against a one-histogram-at-a-time reference ------------


def _order_statistic(h: Histogram, rank: int) -> float | None:
    """Bucket index of the 0-based order statistic ``rank`` of ``h``; None for one of the zeros."""
    if rank < h.zeros:
        return None
    return h.offset + int(np.searchsorted(np.cumsum(h.counts), rank - h.zeros, side="right"))


def _reference(h: Histogram, q: float) -> tuple[float | None, tuple[float, float] | None]:
    """quantile and quantile_ci computed plainly, one histogram, Python arithmetic."""
    n = h.count
    if n == 0:
        return None, None

    def value(rank: int) -> float:
        b = _order_statistic(h, rank)
        return 0.0 if b is None else float(bucket_values([b])[0])

    r = q * (n - 1)
    lo = math.floor(r)
    v_lo, v_hi = value(lo), value(min(lo + 1, n - 1))
    quantile = v_lo + (v_hi - v_lo) * (r - lo)
    ranks = order_statistic_ranks(n, q)
    if ranks is None:
        return quantile, None
    low_rank = min(ranks[0], lo + 1)
    high_rank = max(ranks[1], min(lo + 2, n))
    b_low, b_high = _order_statistic(h, low_rank - 1), _order_statistic(h, high_rank - 1)
    low = 0.0 if b_low is None else float(bucket_bounds([b_low])[0][0])
    high = 0.0 if b_high is None else float(bucket_bounds([b_high])[1][0])
    return quantile, (low, high)


groups_st = st.lists(st.lists(values_st, max_size=4), min_size=1, max_size=12)


@pytest.mark.unit
@settings(max_examples=150, deadline=None)
@given(groups_st)
def test_quantile_table_matches_the_merged_histograms(groups: list[list[list[float]]]) -> None:
    """Groups of several histograms (empty ones, zeros, disjoint spans) laid side by side give
    what each group's merged histogram gives alone."""
    hists = [[Histogram.from_values(v) for v in members] for members in groups]
    qs = (0.5, 0.95, 0.0, 1.0)
    table = quantile_table(hists, qs)
    for g, members in enumerate(hists):
        merged = Histogram.merge_all(members)
        assert int(table.counts[g]) == merged.count
        for j, q in enumerate(qs):
            want_value, want_ci = _reference(merged, q)
            got = table.value(g, j)
            if want_value is None:
                assert got is None
            else:
                assert got == pytest.approx(want_value, rel=1e-12, abs=1e-12)
            got_ci = table.ci(g, j)
            if want_ci is None:
                assert got_ci is None
            else:
                assert got_ci == pytest.approx(want_ci, rel=1e-12, abs=1e-12)
