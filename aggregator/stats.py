"""The published figures of one model over one window, and their arithmetic.

Pure functions and plain dataclasses: the store fetches the counts and
percentiles, this module turns them into what the catalog shows.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    @property
    def error_rate(self) -> float | None:
        """Failed / attempted; None with no attempts."""
        return error_rate(self.counts.attempts, self.counts.ok)

    @property
    def error_rate_excl_429(self) -> float | None:
        """Error rate with rate-limited attempts left out (router policy, not model health)."""
        c = self.counts
        return error_rate(c.attempts - c.rate_limited, c.ok)

    def as_json(self) -> dict[str, Any]:
        """The JSON object the API serves."""
        c = self.counts
        return {
            "model": self.model,
            "router": self.router,
            "window": self.window,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "ttft_p50_ms": _round(c.ttft_p50_ms),
            "ttft_p95_ms": _round(c.ttft_p95_ms),
            "ttfat_p50_ms": _round(c.ttfat_p50_ms),
            "ttfat_p95_ms": _round(c.ttfat_p95_ms),
            "tps_p50": _round(c.tps_p50),
            "error_rate": _round(self.error_rate, 4),
            "error_rate_excl_429": _round(self.error_rate_excl_429, 4),
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
