"""Mergeable log-bucket histograms: the per-hour latency summaries the rollups keep.

A histogram counts positive values in fixed, log-spaced buckets (the DDSketch
idea): bucket ``i`` holds the values in ``(GAMMA**(i-1), GAMMA**i]`` and reports
them as ``2 * GAMMA**i / (GAMMA + 1)``, which is within ``RELATIVE_ACCURACY`` of
every value in the bucket. Because the buckets are fixed, merging is adding
counts: the merge of hourly histograms is exactly the histogram of all their
values, so a 7-day window costs 168 additions whatever the probe rate.

Units: a histogram carries whatever unit its values had (milliseconds for
TTFT, tokens per second for output speed); every value it returns is in that
unit. Pure functions and an immutable value class, no I/O.
"""

from __future__ import annotations

import functools
import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import compress
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

# --- Buckets ---------------------------------------------------------------

# Relative accuracy of one bucket: every value is within this fraction of its
# bucket's representative. quantile() interpolates between the representatives
# of the same two order statistics numpy.percentile interpolates between, and a
# convex combination of two values each within a fraction `a` of its target is
# within `a` of the combined target; so the end-to-end error against numpy is
# <= RELATIVE_ACCURACY as well. The accuracy budget is 1%; we spend half of it so
# that what the bound does not cover (a boundary value bucketed one way by
# numpy and the other way by PostgreSQL's ln(), float rounding of edges, the
# representative stored or shown with fewer digits) cannot push a published
# figure over 1%. The price is 2x the buckets: ~230 per decade instead of ~115.
RELATIVE_ACCURACY = 0.005
GAMMA = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
# ln(GAMMA) as one double that numpy and the SQL expression both divide by, so
# that the two compute the same index (see sql_bucket_expr).
LN_GAMMA = math.log(GAMMA)

# Range covered with the accuracy above. 1e-3 ms (1 us) is below any network
# latency and 1e7 ms (~2.8 h) above any timeout; tokens/s live well inside it
# too. Positive values outside are clamped into the first/last bucket: they still
# count (ranks stay right), but their reported value is the range's edge.
MIN_VALUE = 1e-3
MAX_VALUE = 1e7
MIN_INDEX = math.ceil(math.log(MIN_VALUE) / LN_GAMMA)  # -690
MAX_INDEX = math.ceil(math.log(MAX_VALUE) / LN_GAMMA)  # 1612
NUM_BUCKETS = MAX_INDEX - MIN_INDEX + 1  # 2303: a dense histogram is at most ~9 KiB

# A representative is the harmonic-style midpoint 2*g**i/(g+1) of (g**(i-1), g**i].
_REPRESENTATIVE_FACTOR = 2.0 / (GAMMA + 1.0)


def bucket_indices(values: npt.ArrayLike) -> npt.NDArray[np.int32]:
    """Bucket index of each positive value (any unit), clamped to [MIN_INDEX, MAX_INDEX].

    Index ``i`` means ``GAMMA**(i-1) < value <= GAMMA**i``. Values must be > 0
    and not NaN (zeros and NaN are the Histogram's business); +inf lands in the
    last bucket. Raises ValueError otherwise.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size and not np.all(x > 0):  # NaN fails this comparison too
        raise ValueError("bucket_indices needs values > 0 (no zeros, negatives or NaN)")
    # Clip the values first: log(inf) would make the int cast warn.
    clipped = np.clip(x, MIN_VALUE, MAX_VALUE)
    idx = np.ceil(np.log(clipped) / LN_GAMMA)
    # Clip the indices as well: the ends of the range sit wherever log() rounds.
    return np.clip(idx, MIN_INDEX, MAX_INDEX).astype(np.int32)


def _check_indices(idx: npt.NDArray[Any]) -> None:
    if idx.size and (idx.min() < MIN_INDEX or idx.max() > MAX_INDEX):
        raise ValueError(f"bucket index out of range [{MIN_INDEX}, {MAX_INDEX}]")


def bucket_values(indices: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Representative value of each bucket index, in the unit of the bucketed values.

    Within RELATIVE_ACCURACY of every value of the bucket's range.
    """
    idx = np.asarray(indices)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError("bucket indices must be integers")
    _check_indices(idx)
    # exp(i * LN_GAMMA), not GAMMA**i: the same expression the index is defined by.
    return np.exp(idx.astype(np.float64) * LN_GAMMA) * _REPRESENTATIVE_FACTOR


def bucket_bounds(indices: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(lower, upper) edges of each bucket: it holds values in (lower, upper].

    The first bucket's lower edge is 0, since it also holds the clamped values
    in (0, MIN_VALUE]. The last bucket's upper edge is its nominal edge; values
    above MAX_VALUE were clamped into it and may be larger.
    """
    idx = np.asarray(indices)
    _check_indices(idx)
    f = idx.astype(np.float64)
    lower = np.where(idx == MIN_INDEX, 0.0, np.exp((f - 1.0) * LN_GAMMA))
    return lower, np.exp(f * LN_GAMMA)


# A column reference: dotted identifiers, each bare or double-quoted. The SQL
# helper pastes its argument into a statement, so it takes names, not expressions.
_SQL_IDENTIFIER = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
_SQL_COLUMN = re.compile(rf"^{_SQL_IDENTIFIER}(?:\.{_SQL_IDENTIFIER})*$")


def sql_bucket_expr(column: str) -> str:
    """PostgreSQL expression computing ``bucket_indices`` of a column, as ``int``.

    NULL for NULL, NaN and values <= 0: a rollup counts ``column <= 0`` as
    zeros (NaN <= 0 is false in PostgreSQL, as it must be) and drops the rest.
    Same clamping as bucket_indices. The constants are written as float8
    literals with Python's round-trip repr, so PostgreSQL divides the same
    doubles numpy does; ln() may still differ in the last ulp from np.log, which
    moves a value by one bucket only when it lies within ~1e-15 (relative) of an
    edge, and then the representative on either side is within RELATIVE_ACCURACY.
    ``column`` must be a column name (optionally qualified/quoted); ValueError otherwise.
    """
    if not _SQL_COLUMN.match(column):
        raise ValueError(f"not a column reference: {column!r}")
    x = f"({column})::float8"
    clamped = f"least(greatest({x}, '{MIN_VALUE!r}'::float8), '{MAX_VALUE!r}'::float8)"
    index = f"ceil(ln({clamped}) / '{LN_GAMMA!r}'::float8)::int"
    return f"CASE WHEN {x} > 0 AND {x} <> 'NaN'::float8 THEN least(greatest({index}, {MIN_INDEX}), {MAX_INDEX}) END"


# --- Confidence intervals --------------------------------------------------

# Below this many values no two-sided 95% order-statistic interval exists for
# any quantile: the best case is the median with [min, max], which covers
# 1 - 2 * 0.5**n, under 95% for n <= 5. (quantile_ci decides exactly for each
# q and confidence; these constants are for callers that mark thin cells.)
MIN_SAMPLES_FOR_CI = 6
# For p95 the upper bound needs P(all n values below the 95th percentile) =
# 0.95**n <= 2.5%, i.e. n >= 72: an hour of one series (~60) has no p95 interval.
MIN_SAMPLES_FOR_P95_CI = 72
# Ranks come from the exact binomial while the work (~n*min(q, 1-q) terms) is
# small; beyond, n*q*(1-q) >= 500 and the normal approximation with continuity
# correction is off by at most one rank. A plain "n >= 20" switch would be
# wrong in the tails: at p95 and n = 72..91 the normal approximation says no
# upper bound exists where the exact binomial gives one.
EXACT_BINOMIAL_MAX_TAIL = 1000


def _exact_ranks_low_q(n: int, q: float, alpha: float) -> tuple[int | None, int | None]:
    """Equal-tailed 1-based ranks (l, u) for q <= 0.5 from the exact Binomial(n, q).

    l is the largest rank with P(B <= l-1) <= alpha/2, u the smallest with
    P(B >= u) <= alpha/2; None where no order statistic qualifies.
    """
    sd = math.sqrt(n * q * (1.0 - q))
    # Past mean + 10 sd + 10 the remaining mass is < 1e-20: no need to sum it.
    last = min(n, math.ceil(n * q + 10.0 * sd + 10.0))
    log_q, log_1q = math.log(q), math.log1p(-q)
    lg_n = math.lgamma(n + 1)
    ks = np.arange(last + 1, dtype=np.float64)
    # Log-space pmf: (1-q)**n underflows for n in the thousands.
    log_comb = np.array([lg_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in range(last + 1)])
    cdf = np.cumsum(np.exp(log_comb + ks * log_q + (n - ks) * log_1q))
    below = np.flatnonzero(cdf <= alpha / 2.0)
    lower = int(below[-1]) + 1 if below.size else None
    above = np.flatnonzero(cdf >= 1.0 - alpha / 2.0)
    k_up = int(above[0]) if above.size else last  # not found only through rounding near 1
    upper = k_up + 1 if k_up + 1 <= n else None
    return lower, upper


@functools.lru_cache(maxsize=8192)  # pure; windows of many series repeat the same (n, q)
def order_statistic_ranks(n: int, q: float, confidence: float = 0.95) -> tuple[int, int] | None:
    """1-based ranks (l, u) with P(X_(l) <= population q-quantile <= X_(u)) >= confidence.

    Distribution-free (continuous distributions): the number B of the n values
    below the quantile is Binomial(n, q), and the interval covers iff
    l <= B < u. Equal tails, each <= (1 - confidence) / 2. Exact binomial while
    cheap, normal approximation with continuity correction beyond (see
    EXACT_BINOMIAL_MAX_TAIL). None when the sample is too small for such an
    interval (e.g. n < MIN_SAMPLES_FOR_CI at 95%), or q is 0 or 1.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n < 1 or q in (0.0, 1.0):
        return None
    alpha = 1.0 - confidence
    lower: int | None
    upper: int | None
    if n * min(q, 1.0 - q) <= EXACT_BINOMIAL_MAX_TAIL:
        if q <= 0.5:
            lower, upper = _exact_ranks_low_q(n, q, alpha)
        else:
            # Mirror: n - B ~ Binomial(n, 1-q), and rank r of the values is rank
            # n+1-r of their negations, so the tails swap.
            lo_m, up_m = _exact_ranks_low_q(n, 1.0 - q, alpha)
            lower = n + 1 - up_m if up_m is not None else None
            upper = n + 1 - lo_m if lo_m is not None else None
    else:
        z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
        half = z * math.sqrt(n * q * (1.0 - q))
        # P(B <= l-1) ~ Phi((l - 1 + 0.5 - nq) / sd) <= alpha/2, and symmetrically.
        lower = math.floor(n * q + 0.5 - half)
        upper = math.ceil(n * q + 0.5 + half)
    if lower is None or upper is None or lower < 1 or upper > n:
        return None
    return lower, upper


# --- Histogram -------------------------------------------------------------

_EMPTY_COUNTS: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
_EMPTY_COUNTS.flags.writeable = False

# Binary encoding, little-endian: version u8, count width u8 (1, 2 or 4 bytes),
# offset i32, zeros u32, length u16 (NUM_BUCKETS < 65536), then `length` counts
# of `width` bytes. Width is the narrowest that holds the largest count: an
# hour of one series (~60 probes over a few hundred buckets) stores 1 byte per
# bucket. u32 counts and zeros hold 4.29e9: a day of one series at 10 probes/s
# is 864,000; to_bytes raises rather than wrap if a merged window ever exceeds it.
_FORMAT_VERSION = 1
_HEADER = struct.Struct("<BBiIH")
_WIDTH_DTYPES: dict[int, np.dtype[np.unsignedinteger[Any]]] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
}
_U32_MAX = 2**32 - 1


@dataclass(frozen=True, eq=False, slots=True)
class Histogram:
    """Counts of values per log bucket, plus the count of values <= 0.

    ``counts[k]`` is the number of values in bucket ``offset + k``; the array
    is trimmed (first and last entries non-zero) so that equal contents have
    equal representations, and read-only. An empty histogram has offset 0 and
    no counts. Build one with ``empty``, ``from_values`` or ``from_indices``.
    """

    offset: int
    counts: npt.NDArray[np.int64]
    zeros: int

    def __post_init__(self) -> None:
        counts = np.array(self.counts, dtype=np.int64)  # a private copy
        if counts.ndim != 1:
            raise ValueError("counts must be one-dimensional")
        if counts.size:
            if counts[0] == 0 or counts[-1] == 0:
                raise ValueError("counts must be trimmed: first and last must be non-zero")
            if counts.min() < 0:
                raise ValueError("counts must be >= 0")
            if self.offset < MIN_INDEX or self.offset + counts.size - 1 > MAX_INDEX:
                raise ValueError(f"buckets outside [{MIN_INDEX}, {MAX_INDEX}]")
        elif self.offset != 0:
            raise ValueError("an empty histogram has offset 0")
        if self.zeros < 0:
            raise ValueError("zeros must be >= 0")
        counts.flags.writeable = False
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "offset", int(self.offset))
        object.__setattr__(self, "zeros", int(self.zeros))

    # Constructors ------------------------------------------------------

    @classmethod
    def empty(cls) -> Histogram:
        """The histogram of no values."""
        return cls(0, _EMPTY_COUNTS, 0)

    @classmethod
    def _trusted(cls, offset: int, counts: npt.NDArray[np.int64], zeros: int) -> Histogram:
        """A histogram from parts this module just computed and knows valid (trimmed,
        counts >= 0, in range, an array nothing else holds): skips __post_init__'s copy and
        checks, which dominate the cost of a merge of two small histograms."""
        counts.flags.writeable = False
        hist = object.__new__(cls)
        object.__setattr__(hist, "offset", int(offset))
        object.__setattr__(hist, "counts", counts)
        object.__setattr__(hist, "zeros", int(zeros))
        return hist

    @classmethod
    def _trimmed(cls, offset: int, dense: npt.NDArray[np.int64], zeros: int) -> Histogram:
        """``dense`` (a fresh array of counts >= 0 from bucket ``offset`` on) without its zero ends."""
        nz = np.flatnonzero(dense)
        if nz.size == 0:
            return cls._trusted(0, _EMPTY_COUNTS, zeros)
        return cls._trusted(offset + int(nz[0]), dense[nz[0] : nz[-1] + 1], zeros)

    @classmethod
    def from_values(cls, values: npt.ArrayLike) -> Histogram:
        """Histogram of raw values (any unit): NaN ignored, values <= 0 counted as zeros."""
        x = np.asarray(values, dtype=np.float64).ravel()
        x = x[~np.isnan(x)]
        positive = x[x > 0]
        zeros = int(x.size - positive.size)
        if positive.size == 0:
            return cls(0, _EMPTY_COUNTS, zeros)
        idx = bucket_indices(positive)
        lo = int(idx.min())
        # Trimmed by construction: bucket lo and the highest bucket both hold a value.
        return cls._trusted(lo, np.bincount(idx - lo).astype(np.int64), zeros)

    @classmethod
    def from_indices(cls, indices: npt.ArrayLike, counts: npt.ArrayLike | None = None, zeros: int = 0) -> Histogram:
        """Histogram from bucket indices with counts (default 1 each), e.g. rows of a SQL rollup.

        Indices may repeat (their counts add) and come in any order.
        """
        idx = np.asarray(indices).ravel()
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError("bucket indices must be integers")
        cnt = np.ones(idx.size, dtype=np.int64) if counts is None else np.asarray(counts).ravel()
        if cnt.shape != idx.shape:
            raise ValueError("indices and counts differ in length")
        if cnt.size and not np.issubdtype(cnt.dtype, np.integer):
            raise ValueError("counts must be integers")
        if cnt.size and cnt.min() < 0:
            raise ValueError("counts must be >= 0")
        _check_indices(idx)
        if idx.size == 0:
            return cls(0, _EMPTY_COUNTS, zeros)
        lo = int(idx.min())
        if counts is None:
            # Trimmed by construction: the lowest and highest index each hold a value.
            return cls._trusted(lo, np.bincount(idx.astype(np.int64) - lo), zeros)
        dense = np.zeros(int(idx.max()) - lo + 1, dtype=np.int64)
        np.add.at(dense, idx.astype(np.int64) - lo, cnt.astype(np.int64))
        return cls._trimmed(lo, dense, zeros)

    # Properties --------------------------------------------------------

    @property
    def count(self) -> int:
        """Number of values counted, zeros and clamped values included."""
        return self.zeros + int(self.counts.sum())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.offset == other.offset and self.zeros == other.zeros and np.array_equal(self.counts, other.counts)

    __hash__ = None  # type: ignore[assignment]  # equal by value, yet holds an array

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, zeros={self.zeros}, offset={self.offset}, buckets={self.counts.size})"

    # Merging -----------------------------------------------------------

    def merge(self, other: Histogram) -> Histogram:
        """Histogram of the union of both histograms' values."""
        if not other.counts.size or not self.counts.size:
            kept = self if self.counts.size else other
            return Histogram._trusted(kept.offset, kept.counts, self.zeros + other.zeros)
        # Both non-empty: the union's end buckets are non-zero, nothing to trim.
        big, small = (self, other) if self.counts.size >= other.counts.size else (other, self)
        at = small.offset - big.offset
        if at >= 0 and at + small.counts.size <= big.counts.size:
            # One span holds the other (an hour's rows plus a minute's): one copy, one addition.
            dense = big.counts.copy()
            dense[at : at + small.counts.size] += small.counts
            return Histogram._trusted(big.offset, dense, self.zeros + other.zeros)
        lo = min(self.offset, other.offset)
        dense = np.zeros(max(self.offset + self.counts.size, other.offset + other.counts.size) - lo, dtype=np.int64)
        dense[self.offset - lo : self.offset - lo + self.counts.size] += self.counts
        dense[other.offset - lo : other.offset - lo + other.counts.size] += other.counts
        return Histogram._trusted(lo, dense, self.zeros + other.zeros)

    @classmethod
    def merge_all(cls, hists: Iterable[Histogram]) -> Histogram:
        """Histogram of the union of all the histograms' values.

        One allocation over the union of the spans, then one slice addition per
        input: O(total buckets) with a small constant per histogram, so
        thousands of hourly histograms merge in milliseconds.
        """
        all_hists = list(hists)
        zeros = sum(h.zeros for h in all_hists)
        items = [h for h in all_hists if h.counts.size]
        if not items:
            return cls(0, _EMPTY_COUNTS, zeros)
        lo = min(h.offset for h in items)
        hi = max(h.offset + h.counts.size for h in items)
        dense = np.zeros(hi - lo, dtype=np.int64)
        for h in items:
            start = h.offset - lo
            dense[start : start + h.counts.size] += h.counts
        return cls._trimmed(lo, dense, zeros)

    def subtract(self, other: Histogram) -> Histogram:
        """This histogram without ``other``'s values: the exact inverse of merge.

        For sliding windows (drop the oldest hour). Raises ValueError if
        ``other`` holds a value this one does not, i.e. a count would go negative.
        """
        if other.zeros > self.zeros:
            raise ValueError("subtract: more zeros than this histogram holds")
        if other.counts.size == 0:
            return Histogram(self.offset, self.counts, self.zeros - other.zeros)
        start = other.offset - self.offset
        if start < 0 or start + other.counts.size > self.counts.size:
            raise ValueError("subtract: the other histogram has buckets this one does not")
        dense = self.counts.copy()
        dense[start : start + other.counts.size] -= other.counts
        if dense.min() < 0:
            raise ValueError("subtract: a bucket count would go negative")
        return Histogram._trimmed(self.offset, dense, self.zeros - other.zeros)

    # Quantiles ---------------------------------------------------------

    def quantile(self, q: float) -> float | None:
        """Estimate of ``numpy.percentile(values, 100*q)`` (linear method), in the values' unit.

        numpy interpolates between order statistics floor(r) and ceil(r),
        r = q*(n-1) (0-based); we interpolate the same way between their
        buckets' representatives, so the error is <= RELATIVE_ACCURACY for
        values inside [MIN_VALUE, MAX_VALUE]. Values <= 0 count as 0.0. None
        when empty. Computed by :func:`quantile_table`, like every window.
        """
        return quantile_table([[self]], (q,)).value(0, 0)

    def quantile_ci(self, q: float, confidence: float = 0.95) -> tuple[float, float] | None:
        """Distribution-free interval for the population q-quantile, in the values' unit.

        From the order statistics ranked by ``order_statistic_ranks``: the lower
        edge of the bucket holding X_(l) and the upper edge of the one holding
        X_(u), so bucketing only widens the interval. The ranks are widened if
        needed so that the interval also contains ``quantile(q)``. None when
        the sample is too small for an interval at this confidence (e.g. fewer
        than MIN_SAMPLES_FOR_CI values at 95%, MIN_SAMPLES_FOR_P95_CI for p95).
        """
        return quantile_table([[self]], (q,), confidence).ci(0, 0)

    # Encoding ----------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Compact little-endian encoding for a bytea column (see _HEADER)."""
        largest = int(self.counts.max()) if self.counts.size else 0
        if largest > _U32_MAX or self.zeros > _U32_MAX:
            raise ValueError("a count exceeds 2**32-1 and cannot be encoded")
        width = 1 if largest < 2**8 else 2 if largest < 2**16 else 4
        header = _HEADER.pack(_FORMAT_VERSION, width, self.offset, self.zeros, self.counts.size)
        return header + self.counts.astype(_WIDTH_DTYPES[width]).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Histogram:
        """Decode ``to_bytes`` output; ValueError naming the problem if malformed."""
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise ValueError(f"histogram bytes truncated: {len(data)} < {_HEADER.size}-byte header")
        version, width, offset, zeros, length = _HEADER.unpack_from(data)
        if version != _FORMAT_VERSION:
            raise ValueError(f"unknown histogram format version {version}")
        if width not in _WIDTH_DTYPES:
            raise ValueError(f"bad count width {width} (1, 2 or 4)")
        expected = _HEADER.size + length * width
        if len(data) != expected:
            raise ValueError(f"histogram bytes have length {len(data)}, header says {expected}")
        if length > NUM_BUCKETS:
            raise ValueError(f"bucket count {length} exceeds {NUM_BUCKETS}")
        counts = np.frombuffer(data, dtype=_WIDTH_DTYPES[width], offset=_HEADER.size).astype(np.int64)
        # The same checks as __post_init__, minus what the format already
        # guarantees (unsigned counts, a fresh array): windows decode
        # hundreds of thousands of these per refresh.
        if length:
            if counts[0] == 0 or counts[-1] == 0:
                raise ValueError("malformed histogram bytes: counts must be trimmed: first and last must be non-zero")
            if offset < MIN_INDEX or offset + length - 1 > MAX_INDEX:
                raise ValueError(f"malformed histogram bytes: buckets outside [{MIN_INDEX}, {MAX_INDEX}]")
        elif offset != 0:
            raise ValueError("malformed histogram bytes: an empty histogram has offset 0")
        return cls._trusted(offset, counts, zeros)


def grouped_histograms(
    run_of: npt.NDArray[np.int64], indices: npt.NDArray[Any], zeros: Sequence[int]
) -> list[Histogram]:
    """One histogram per run ``r`` in ``range(len(zeros))``: of the bucket indices ``indices[k]``
    whose ``run_of[k] == r``, plus ``zeros[r]`` values <= 0.

    The same histograms as ``Histogram.from_indices`` on each run's indices,
    built for all runs at once: one ``bincount`` lays every run's counts end
    to end, and each run's histogram is its slice (copied, so that it does
    not keep the others' memory alive). A rollup builds tens of thousands
    of hourly histograms per refresh; one numpy call per histogram is most
    of what that would cost.
    """
    idx = np.asarray(indices).astype(np.int64, copy=False)
    if idx.size and not np.issubdtype(np.asarray(indices).dtype, np.integer):
        raise ValueError("bucket indices must be integers")
    _check_indices(idx)
    n_runs = len(zeros)
    lo = np.full(n_runs, MAX_INDEX + 1, dtype=np.int64)
    hi = np.full(n_runs, MIN_INDEX - 1, dtype=np.int64)
    np.minimum.at(lo, run_of, idx)
    np.maximum.at(hi, run_of, idx)
    span = np.where(hi >= lo, hi - lo + 1, 0)
    start = np.cumsum(span) - span
    flat = np.bincount(start[run_of] + idx - lo[run_of], minlength=int(span.sum())).astype(np.int64)
    out: list[Histogram] = []
    for first, at, width, z in zip(lo.tolist(), start.tolist(), span.tolist(), zeros, strict=True):
        if width:  # trimmed by construction: the run's lowest and highest index each hold a value
            out.append(Histogram._trusted(first, flat[at : at + width].copy(), z))
        else:
            out.append(Histogram._trusted(0, _EMPTY_COUNTS, z))
    return out


# --- Quantiles of many merged histograms at once ---------------------------


@dataclass(frozen=True, slots=True)
class QuantileTable:
    """Quantiles and their intervals for G groups x Q quantiles (see :func:`quantile_table`)."""

    counts: npt.NDArray[np.int64]  # (G,) values per group
    values: npt.NDArray[np.float64]  # (G, Q); NaN where the group is empty
    ci_low: npt.NDArray[np.float64]  # (G, Q); NaN where no interval exists
    ci_high: npt.NDArray[np.float64]

    def value(self, g: int, j: int) -> float | None:
        """Quantile ``j`` of group ``g``, None when the group is empty."""
        v = float(self.values[g, j])
        return None if math.isnan(v) else v

    def ci(self, g: int, j: int) -> tuple[float, float] | None:
        """Interval of quantile ``j`` of group ``g``, None when the sample is too small."""
        low = float(self.ci_low[g, j])
        return None if math.isnan(low) else (low, float(self.ci_high[g, j]))


def quantile_table(
    groups: Sequence[Sequence[Histogram]], qs: Sequence[float], confidence: float = 0.95
) -> QuantileTable:
    """Quantile ``q`` and its confidence interval, for each q, of the merge of each group.

    The same numbers as ``Histogram.merge_all(group).quantile(q)`` and
    ``.quantile_ci(q, confidence)`` (which call this), without building the
    merged histograms: every group's merged counts are laid side by side in
    one array, one cumulative sum covers them all, and every order statistic
    of every group is found by one ``searchsorted``. A refresh computes
    thousands of cells x 5 quantiles this way at numpy speed.
    """
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
    n_groups = len(groups)
    # The members, flattened: a few passes of attribute reads, the only
    # per-histogram Python work besides one slice addition each (below).
    members = [h for group in groups for h in group]
    mg_all = np.repeat(np.arange(n_groups, dtype=np.intp), [len(group) for group in groups])
    zeros = np.zeros(n_groups, dtype=np.int64)
    np.add.at(zeros, mg_all, np.fromiter([h.zeros for h in members], np.int64, len(members)))
    all_parts = [h.counts for h in members]
    sizes = np.fromiter([c.size for c in all_parts], np.int64, len(all_parts))
    keep = sizes > 0
    mg = mg_all[keep]
    mo = np.fromiter([h.offset for h in members], np.int64, len(members))[keep]
    ms = sizes[keep]
    parts = list(compress(all_parts, keep.tolist()))
    # Each group's span: the union of its members' spans.
    lo = np.full(n_groups, MAX_INDEX + 1, dtype=np.int64)
    hi = np.full(n_groups, MIN_INDEX, dtype=np.int64)
    np.minimum.at(lo, mg, mo)
    np.maximum.at(hi, mg, mo + ms)
    width = np.where(hi > lo, hi - lo, 0)
    lo = np.where(hi > lo, lo, 0)
    starts = np.cumsum(width) - width
    # Every member's counts added at its group's place in one flat array. A slice
    # addition per member: a gather over all members' buckets at once (np.bincount
    # with weights) is slower once groups hold hundreds of hourly histograms.
    flat = np.zeros(int(width.sum()), dtype=np.int64)
    for first, counts_ in zip((starts[mg] + mo - lo[mg]).tolist(), parts, strict=True):
        flat[first : first + counts_.size] += counts_
    return quantiles_of_layout(np.cumsum(flat), starts, lo, width, zeros, qs, confidence)


def quantiles_of_layout(
    cum: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
    lo: npt.NDArray[np.int64],
    width: npt.NDArray[np.int64],
    zeros: npt.NDArray[np.int64],
    qs: Sequence[float],
    confidence: float = 0.95,
) -> QuantileTable:
    """:func:`quantile_table` of G groups already laid out side by side in one array.

    Group ``g``'s counts of buckets ``lo[g] .. lo[g] + width[g] - 1`` sit at
    ``starts[g] ..`` of the array whose cumulative sum is ``cum``; it holds
    ``zeros[g]`` values <= 0 besides. A span may reach past the group's
    lowest and highest non-empty buckets (zero counts there change nothing),
    so a layout kept from one refresh to the next can leave room to grow.
    """
    n_groups, n_q = len(starts), len(qs)
    # Cumulative count before each group and the group's own total.
    before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)] if cum.size else 0, 0)
    ends = starts + width
    totals = np.where(width > 0, (cum[np.maximum(ends - 1, 0)] if cum.size else 0) - before, 0)
    counts = zeros + totals

    def buckets(g_idx: npt.NDArray[np.int64], ranks: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        # Bucket of each 0-based order statistic, MIN_INDEX - 1 for one of the zeros.
        z = zeros[g_idx]
        pos = np.searchsorted(cum, before[g_idx] + np.maximum(ranks - z, 0), side="right") - starts[g_idx]
        return np.where(ranks < z, MIN_INDEX - 1, lo[g_idx] + pos)

    def representative(b: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        return np.where(b < MIN_INDEX, 0.0, bucket_values(np.maximum(b, MIN_INDEX)))

    values = np.full((n_groups, n_q), np.nan)
    ci_low = np.full((n_groups, n_q), np.nan)
    ci_high = np.full((n_groups, n_q), np.nan)
    filled = np.flatnonzero(counts > 0)
    n = counts[filled]
    for j, q in enumerate(qs):
        # numpy's linear method: between order statistics floor(r) and floor(r)+1.
        r = q * (n - 1).astype(np.float64)
        low_rank = np.floor(r).astype(np.int64)
        high_rank = np.minimum(low_rank + 1, n - 1)
        v_low = representative(buckets(filled, low_rank))
        v_high = representative(buckets(filled, high_rank))
        values[filled, j] = v_low + (v_high - v_low) * (r - low_rank)

        # Interval ranks (1-based), widened to contain the two interpolated ones. Ranks
        # depend on (n, q) only: computed once per distinct n.
        sizes, inverse = np.unique(n, return_inverse=True)
        ranks_of = [order_statistic_ranks(size, q, confidence) for size in sizes.tolist()]
        exists = np.array([rk is not None for rk in ranks_of], dtype=bool)[inverse]
        lower = np.array([rk[0] if rk else 0 for rk in ranks_of], dtype=np.int64)[inverse]
        upper = np.array([rk[1] if rk else 0 for rk in ranks_of], dtype=np.int64)[inverse]
        lower = np.minimum(lower, low_rank + 1)[exists]
        upper = np.maximum(upper, np.minimum(low_rank + 2, n))[exists]
        g_idx = filled[exists]
        if g_idx.size:
            b_low = buckets(g_idx, lower - 1)
            b_high = buckets(g_idx, upper - 1)
            lows, _ = bucket_bounds(np.maximum(b_low, MIN_INDEX))
            _, highs = bucket_bounds(np.maximum(b_high, MIN_INDEX))
            ci_low[g_idx, j] = np.where(b_low < MIN_INDEX, 0.0, lows)
            ci_high[g_idx, j] = np.where(b_high < MIN_INDEX, 0.0, highs)
    return QuantileTable(counts, values, ci_low, ci_high)
