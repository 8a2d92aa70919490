"""The published figures of one model over one window, and their arithmetic.

Pure functions and plain dataclasses: the store fetches the counts and
percentiles, this module turns them into what the catalog shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from routewatch.config.tiers import DEFAULT_TIER
from routewatch.results.probe_result import NOT_ROUTER_FAULTS

# Below this many ok probes a percentile is too noisy to publish unmarked:
# with 20 samples the 95% interval of the median spans ~6 order statistics.
MIN_OK_SAMPLES = 20


@dataclass(frozen=True, slots=True)
class WindowCounts:
    """What the store reads for one (router, model) over one window."""

    router: str
    model: str
    attempts: int
    ok: int
    rate_limited: int  # failures classed http_429
    overloaded: int  # probes left out: the prober's loop lag was over its bound
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttfat_p50_ms: float | None
    ttfat_p95_ms: float | None
    tps_p50: float | None
    input_tokens: int  # traffic counts every probe sent, flagged or not
    output_tokens: int
    first_probe: datetime | None
    last_probe: datetime | None


Interval = tuple[float, float]  # (lo, hi) of a 95% confidence interval

# A z of 1.96: the two-sided 95% normal quantile, for the Wilson intervals of shares.
_Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class RetryStats:
    """What routers reported of their upstream calls, over one cell and window.

    Only probes whose router reported its attempts count here (``reported_ok``
    successes, ``calls`` upstream calls); a router that says nothing leaves
    every figure None, never 0.
    """

    reported_ok: int = 0  # successes whose router reported its attempts
    retried: int = 0  # ... of them, answered after more than one upstream call
    calls: int = 0  # upstream calls reported
    calls_failed: int = 0  # ... of them, failed
    ttft_first_p50_ms: float | None = None  # successes answered at the first call
    ttft_first_p95_ms: float | None = None
    ttft_retried_p50_ms: float | None = None  # successes answered after a retry
    ttft_retried_p95_ms: float | None = None

    @property
    def retried_share(self) -> float | None:
        """Retried / reported successes; None with none reported."""
        return self.retried / self.reported_ok if self.reported_ok else None

    @property
    def upstream_failure_rate(self) -> float | None:
        """Failed upstream calls / upstream calls: the failure rate the router hid; None with none reported."""
        return self.calls_failed / self.calls if self.calls else None

    def as_json(self) -> dict[str, Any]:
        """The ``router_retries`` object of a cell."""
        return {
            "reported_ok": self.reported_ok,
            "retried": self.retried,
            "retried_share": _round(self.retried_share, 4),
            "retried_share_ci95": _rounded_ci(wilson(self.retried, self.reported_ok)),
            "upstream_calls": self.calls,
            "upstream_calls_failed": self.calls_failed,
            "upstream_failure_rate": _round(self.upstream_failure_rate, 4),
            "upstream_failure_rate_ci95": _rounded_ci(wilson(self.calls_failed, self.calls)),
            "ttft_first_attempt_p50_ms": _round(self.ttft_first_p50_ms),
            "ttft_first_attempt_p95_ms": _round(self.ttft_first_p95_ms),
            "ttft_retried_p50_ms": _round(self.ttft_retried_p50_ms),
            "ttft_retried_p95_ms": _round(self.ttft_retried_p95_ms),
        }


def wilson(successes: int, trials: int) -> Interval | None:
    """The 95% Wilson score interval of a share; None with no trials.

    Upstream calls of one probe are not independent (a retry follows a
    failure), so for the failure rate it is a lower bound on the uncertainty.
    """
    if trials <= 0:
        return None
    p = successes / trials
    z2 = _Z95 * _Z95
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = _Z95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def _rounded_ci(ci: Interval | None) -> list[float] | None:
    """A share's interval to 4 places, rounded outwards."""
    return None if ci is None else [math.floor(ci[0] * 1e4) / 1e4, math.ceil(ci[1] * 1e4) / 1e4]


# The percentiles that carry a confidence interval, as named in the JSON.
CI_FIELDS = ("ttft_p50_ms", "ttft_p95_ms", "ttfat_p50_ms", "ttfat_p95_ms", "tps_p50")


@dataclass(frozen=True, slots=True)
class CellStats:
    """One cell (a model, or a model x provider / region) over one window, from the rollups.

    Each interval is the distribution-free 95% interval of the population
    percentile (sketch.Histogram.quantile_ci), None when the cell has too few
    ok samples for one.
    """

    counts: WindowCounts
    # Failures (not overloaded) per class, with the probes of NOT_ROUTER_FAULTS that are not attempts.
    errors_by_class: Mapping[str, int] = field(default_factory=dict)
    ttft_p50_ci: Interval | None = None
    ttft_p95_ci: Interval | None = None
    ttfat_p50_ci: Interval | None = None
    ttfat_p95_ci: Interval | None = None
    tps_p50_ci: Interval | None = None
    retries: RetryStats = field(default_factory=RetryStats)

    @property
    def sufficient(self) -> bool:
        """Enough ok samples to publish the percentiles unmarked (MIN_OK_SAMPLES)."""
        return self.counts.ok >= MIN_OK_SAMPLES

    def ci95(self) -> dict[str, list[float] | None]:
        """The intervals by JSON field name, to 0.1 rounded outwards (never narrower)."""
        values = (self.ttft_p50_ci, self.ttft_p95_ci, self.ttfat_p50_ci, self.ttfat_p95_ci, self.tps_p50_ci)
        return {
            name: None if ci is None else [math.floor(ci[0] * 10) / 10, math.ceil(ci[1] * 10) / 10]
            for name, ci in zip(CI_FIELDS, values, strict=True)
        }

    def as_json(self) -> dict[str, Any]:
        """A breakdown cell's figures, in the same shape as ModelStats.as_json's."""
        out = {
            **_figures(self.counts),
            "ci95": self.ci95(),
            "errors_by_class": self.failures_by_class(),
            "router_retries": self.retries.as_json(),
        }
        out["samples"]["excluded_budget_exhausted"] = self.budget_exhausted
        return out

    @property
    def budget_exhausted(self) -> int:
        """Probes whose output budget ran out while the model reasoned: not attempts, counted apart."""
        return sum(self.errors_by_class.get(cls, 0) for cls in NOT_ROUTER_FAULTS)

    def failures_by_class(self) -> dict[str, int]:
        """The router's failures per class: ``errors_by_class`` without the classes that are not its fault."""
        return {cls: n for cls, n in self.errors_by_class.items() if cls not in NOT_ROUTER_FAULTS}


@dataclass(frozen=True, slots=True)
class ModelStats:
    """The catalog's figures for one model over one window."""

    router: str
    model: str
    window: str  # e.g. "7d"
    window_start: datetime
    window_end: datetime
    updated_at: datetime
    counts: WindowCounts
    # From the rollups: intervals and failure classes (None: not computed).
    cell: CellStats | None = None
    # dimension ("provider", "region", "tier") -> value -> that slice of this model.
    breakdown: Mapping[str, Mapping[str, CellStats]] = field(default_factory=dict)
    # The prompt tier the figures (and the provider and region slices) are of: the headline tier.
    tier: str = DEFAULT_TIER

    @property
    def error_rate(self) -> float | None:
        """Failed / attempted; None with no attempts."""
        return error_rate(self.counts.attempts, self.counts.ok)

    @property
    def error_rate_excl_429(self) -> float | None:
        """Error rate with rate-limited attempts left out (router policy, not model health)."""
        c = self.counts
        return error_rate(c.attempts - c.rate_limited, c.ok)

    def as_json(self, *, breakdown: bool = False) -> dict[str, Any]:
        """The JSON object the API serves; ``breakdown`` adds the per provider/region/tier cells."""
        c = self.counts
        out: dict[str, Any] = {
            "model": self.model,
            "router": self.router,
            "window": self.window,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "tier": self.tier,
            **_figures(c),
        }
        cell = self.cell if self.cell is not None else CellStats(c)
        out["ci95"] = cell.ci95()
        out["errors_by_class"] = cell.failures_by_class()
        out["samples"]["excluded_budget_exhausted"] = cell.budget_exhausted
        out["router_retries"] = cell.retries.as_json()
        if breakdown:
            out["breakdown"] = {
                dim: {value: v.as_json() for value, v in sorted(cells.items())} for dim, cells in self.breakdown.items()
            }
        return out


def _figures(c: WindowCounts) -> dict[str, Any]:
    """The published figures of one set of counts."""
    return {
        "ttft_p50_ms": _round(c.ttft_p50_ms),
        "ttft_p95_ms": _round(c.ttft_p95_ms),
        "ttfat_p50_ms": _round(c.ttfat_p50_ms),
        "ttfat_p95_ms": _round(c.ttfat_p95_ms),
        "tps_p50": _round(c.tps_p50),
        "error_rate": _round(error_rate(c.attempts, c.ok), 4),
        "error_rate_excl_429": _round(error_rate(c.attempts - c.rate_limited, c.ok), 4),
        "tokens": {
            "input": c.input_tokens,
            "output": c.output_tokens,
            "total": c.input_tokens + c.output_tokens,
        },
        "samples": {
            "attempted": c.attempts,
            "ok": c.ok,
            "failed": c.attempts - c.ok,
            "rate_limited": c.rate_limited,
            "excluded_prober_overloaded": c.overloaded,
            "sufficient": c.ok >= MIN_OK_SAMPLES,
            "min_ok_for_sufficient": MIN_OK_SAMPLES,
        },
        "first_probe": c.first_probe.isoformat() if c.first_probe else None,
        "last_probe": c.last_probe.isoformat() if c.last_probe else None,
    }


def error_rate(attempts: int, ok: int) -> float | None:
    """(attempts - ok) / attempts, or None when nothing was attempted."""
    if attempts <= 0:
        return None
    return (attempts - ok) / attempts


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
