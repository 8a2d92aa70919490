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
    errors_by_class: Mapping[str, int] = field(default_factory=dict)  # failures (not overloaded) per class
    ttft_p50_ci: Interval | None = None
    ttft_p95_ci: Interval | None = None
    ttfat_p50_ci: Interval | None = None
    ttfat_p95_ci: Interval | None = None
    tps_p50_ci: Interval | None = None

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
        return {**_figures(self.counts), "ci95": self.ci95(), "errors_by_class": dict(self.errors_by_class)}


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
    # dimension ("provider", "region") -> value -> that slice of this model.
    breakdown: Mapping[str, Mapping[str, CellStats]] = field(default_factory=dict)

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
        """The JSON object the API serves; ``breakdown`` adds the per provider/region cells."""
        c = self.counts
        out: dict[str, Any] = {
            "model": self.model,
            "router": self.router,
            "window": self.window,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            **_figures(c),
        }
        cell = self.cell if self.cell is not None else CellStats(c)
        out["ci95"] = cell.ci95()
        out["errors_by_class"] = dict(cell.errors_by_class)
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
