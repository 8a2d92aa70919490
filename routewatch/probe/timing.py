"""Timing maths of one probe: pure functions from raw monotonic marks.

The probe records nanosecond marks as bytes arrive; everything here derives
durations from them once, so that the definitions live in one place and
are tested without I/O.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

NS_PER_MS = 1_000_000


def _int64s() -> MutableSequence[int]:
    # 8 bytes a mark, not a Python int's 36: a long answer can have hundreds
    # of thousands of token events.
    return array("q")


@dataclass(slots=True)
class StreamMarks:
    """Raw ``time.perf_counter_ns()`` marks taken during one probe."""

    t0: int  # just before the request is sent
    connect_start: int | None = None  # a new connection was opened ...
    connect_end: int | None = None  # ... and was ready at this mark
    headers: int | None = None  # response headers received
    first_answer: int | None = None  # first non-empty `content` delta
    token_times: MutableSequence[int] = field(default_factory=_int64s)  # every token-bearing event


@dataclass(frozen=True, slots=True)
class Timings:
    """Durations in milliseconds derived from ``StreamMarks``; None = never happened."""

    connect_ms: float | None
    ttfb_ms: float | None
    ttft_ms: float | None
    ttfat_ms: float | None
    e2e_ms: float | None
    output_tps: float | None
    chunk_gap_max_ms: float | None
    chunk_gap_p95_ms: float | None


def _since(t0: int, t: int | None) -> float | None:
    return None if t is None else (t - t0) / NS_PER_MS


def output_tps(output_tokens: int | None, t_first_ns: int | None, t_last_ns: int | None) -> float | None:
    """Output speed, (tokens - 1) / (t_last - t_first) in tokens/s, i.e. 1 / TPOT.

    The first token is excluded because its time is TTFT, not generation.
    None with fewer than 2 tokens or a non-positive interval: a single chunk
    carrying the whole answer says nothing about speed.
    """
    if output_tokens is None or output_tokens < 2 or t_first_ns is None or t_last_ns is None:
        return None
    interval_s = (t_last_ns - t_first_ns) / 1e9
    if interval_s <= 0:
        return None
    return (output_tokens - 1) / interval_s


def percentile(sorted_values: Sequence[float] | npt.NDArray[np.float64], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of already sorted values."""
    if len(sorted_values) == 0:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside [0, 1]")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def chunk_gaps_ms(token_times: Sequence[int]) -> npt.NDArray[np.float64]:
    """Gaps between consecutive token-bearing events, in ms (vectorised: there may be very many)."""
    gaps_ns = np.diff(np.asarray(token_times, dtype=np.int64))
    return gaps_ns.astype(np.float64) / NS_PER_MS


def derive(marks: StreamMarks, output_tokens: int | None) -> Timings:
    """All durations of one probe from its marks and its output token count."""
    first = marks.token_times[0] if marks.token_times else None
    last = marks.token_times[-1] if marks.token_times else None
    connect_ms = None
    if marks.connect_start is not None and marks.connect_end is not None:
        connect_ms = (marks.connect_end - marks.connect_start) / NS_PER_MS
    gaps = np.sort(chunk_gaps_ms(marks.token_times))
    return Timings(
        connect_ms=connect_ms,
        ttfb_ms=_since(marks.t0, marks.headers),
        ttft_ms=_since(marks.t0, first),
        ttfat_ms=_since(marks.t0, marks.first_answer),
        e2e_ms=_since(marks.t0, last),
        output_tps=output_tps(output_tokens, first, last),
        chunk_gap_max_ms=float(gaps[-1]) if gaps.size else None,
        chunk_gap_p95_ms=percentile(gaps, 0.95) if gaps.size else None,
    )
