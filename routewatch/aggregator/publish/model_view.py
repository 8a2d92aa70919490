"""What one model's page shows: pure data built from the snapshot, the status and a few reads, no I/O.

:mod:`.model_page_store` reads the rows; the functions here turn them into
a :class:`ModelPageView` that :mod:`.model_page` renders:

- charts (:class:`Chart`) of p50/p95 TTFT, tok/s and error rate over the
  last 24 h, 7 d and 90 d, each point the last published figure of its
  bucket (``stats_history``), from the shortest configured window that
  covers a bucket (:func:`chart_window`);
- the time-of-day profile (:class:`HourOfDay`): per UTC hour of day, the
  median of that hour's p50 TTFT over the last 7 days (the hourly rollup's
  model rows). Percentiles cannot be pooled from percentiles; the median of
  the hourly medians is the typical p50 at that hour, and it costs one
  indexed read of at most 168 rows;
- providers and served models with their shares (:class:`Share`);
- the model's incidents, newest first, and its uptime with the span it
  was measured over.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from routewatch.aggregator.model_state import Incident, State
from routewatch.aggregator.provider_cap import OTHER, UNKNOWN
from routewatch.aggregator.publish.status_view import ModelRow
from routewatch.aggregator.stats import ModelStats
from routewatch.config.durations import parse_duration

__all__ = [
    "CHART_METRICS",
    "PROFILE_SPAN",
    "RANGES",
    "Chart",
    "ChartRange",
    "HourOfDay",
    "Line",
    "ModelPageView",
    "Point",
    "RoutePage",
    "Row",
    "Share",
    "ShareTable",
    "chart_window",
    "hour_profile",
    "model_incidents",
    "provider_shares",
    "served_shares",
]

PROFILE_SPAN = timedelta(days=7)


class Row(Protocol):
    """A database row by column name (an asyncpg Record, or a dict in tests)."""

    def __getitem__(self, key: str, /) -> Any: ...


MAX_INCIDENTS = 10  # the model's incidents on its page, newest first


@dataclass(frozen=True, slots=True)
class ChartRange:
    """One time range the page charts: its label, its length and its bucket (a ``date_trunc`` unit)."""

    label: str
    span: timedelta
    unit: str  # "hour" or "day"

    @property
    def bucket_s(self) -> float:
        """The bucket's length in seconds."""
        return 3600.0 if self.unit == "hour" else 86400.0


RANGES = (
    ChartRange("24 h", timedelta(hours=24), "hour"),
    ChartRange("7 d", timedelta(days=7), "hour"),
    ChartRange("90 d", timedelta(days=90), "day"),
)

# (chart id, title, unit, lines as (legend, stats_history column)).
CHART_METRICS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...] = (
    ("ttft", "Time to first token", "ms", (("p50", "ttft_p50_ms"), ("p95", "ttft_p95_ms"))),
    ("ttfat", "Time to first answer token", "ms", (("p50", "ttfat_p50_ms"), ("p95", "ttfat_p95_ms"))),
    ("tps", "Output speed (p50)", "tok/s", (("p50", "tps_p50"),)),
    ("errors", "Error rate", "%", (("errors", "error_rate"),)),
)


@dataclass(frozen=True, slots=True)
class Point:
    """One bucket's value (None: the figure was not measured in that snapshot)."""

    t: datetime  # start of the bucket, UTC
    value: float | None


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a chart."""

    name: str  # legend: "p50", "p95"
    points: tuple[Point, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    """One figure over one range."""

    id: str  # "ttft-24h"
    title: str
    unit: str  # "ms", "tok/s", "%"
    range: ChartRange
    window: str  # the stats window each point is a figure of
    start: datetime
    end: datetime
    lines: tuple[Line, ...]

    @property
    def empty(self) -> bool:
        """No line has a single measured point."""
        return not any(p.value is not None for line in self.lines for p in line.points)


@dataclass(frozen=True, slots=True)
class HourOfDay:
    """One bar of the time-of-day profile."""

    hour: int  # 0..23, UTC
    ttft_p50_ms: float | None  # median of the hourly p50s at this hour; None: no ok probe
    hours: int  # hourly rows with a p50 behind it
    probes: int  # attempts in those rows


@dataclass(frozen=True, slots=True)
class Share:
    """A provider's or served model's part of the probes."""

    label: str | None  # None: the router named none
    probes: int
    share: float  # of every probe counted


@dataclass(frozen=True, slots=True)
class ShareTable:
    """One "who answered" breakdown of the probes: providers, served models, and whatever a router
    dialect adds later (a new table is one more entry in :attr:`RoutePage.shares`)."""

    key: str  # CSS class and anchor: "providers", "served"
    title: str
    note: str  # what was counted, over what span
    none_label: str  # what a None label reads as
    shares: tuple[Share, ...]


@dataclass(frozen=True, slots=True)
class RoutePage:
    """The model through one router."""

    router: str
    stats: Mapping[str, ModelStats]  # by window, in the snapshot's order
    input_price: float | None
    charts: tuple[Chart, ...]
    profile: tuple[HourOfDay, ...]  # 24, hour 0 first
    shares: tuple[ShareTable, ...]  # providers, served models


@dataclass(frozen=True, slots=True)
class ModelPageView:
    """Everything one model's page shows, as of one aggregator refresh."""

    model: str
    state: State
    since: datetime | None
    reason: str
    window: str  # the headline window (the catalog's)
    updated_at: datetime  # the snapshot's time
    status_updated_at: datetime | None
    routes: tuple[RoutePage, ...]
    status: ModelRow | None  # uptime bars and span; None without status
    incidents: tuple[Incident, ...]  # newest first


def chart_window(windows: Mapping[str, float], bucket_s: float) -> str:
    """The shortest window at least ``bucket_s`` long, else the longest: each point then covers its bucket."""
    ordered = sorted(windows.items(), key=lambda item: item[1])
    return next((name for name, seconds in ordered if seconds >= bucket_s), ordered[-1][0])


def window_lengths(names: Iterable[str]) -> dict[str, float]:
    """Seconds per window name (names are durations: ``1h``, ``7d``)."""
    return {name: parse_duration(name) for name in names}


def chart_lines(rows: Sequence[Row], columns: Sequence[tuple[str, str]], start: datetime) -> tuple[Line, ...]:
    """One line per (legend, column) from bucketed history rows (``b`` and the columns), from ``start`` on."""
    kept = [r for r in rows if _at(r["b"]) >= start]
    return tuple(Line(name, tuple(Point(_at(r["b"]), _number(r[column])) for r in kept)) for name, column in columns)


def hour_profile(rows: Iterable[Row]) -> tuple[HourOfDay, ...]:
    """24 bars from hourly rows (``bucket``, ``attempts``, ``ttft_p50_ms``), hour 0 (UTC) first."""
    p50s: dict[int, list[float]] = {h: [] for h in range(24)}
    probes = dict.fromkeys(range(24), 0)
    for row in rows:
        hour = _at(row["bucket"]).hour
        attempts = row["attempts"]
        probes[hour] += attempts if isinstance(attempts, int) else 0
        value = _number(row["ttft_p50_ms"])
        if value is not None:
            p50s[hour].append(value)
    return tuple(
        HourOfDay(h, statistics.median(p50s[h]) if p50s[h] else None, len(p50s[h]), probes[h]) for h in range(24)
    )


def provider_shares(stats: ModelStats) -> tuple[Share, ...]:
    """The providers of ``stats``' window by probes, most first; ``other`` and no provider last."""
    cells = stats.breakdown.get("provider", {})
    total = sum(c.counts.attempts for c in cells.values())
    if total <= 0:
        return ()

    def rank(item: tuple[str, int]) -> tuple[int, int, str]:
        label, n = item
        return (label in (OTHER, UNKNOWN), -n, label)

    counted = sorted(((label, c.counts.attempts) for label, c in cells.items()), key=rank)
    return tuple(Share(None if label == UNKNOWN else label, n, n / total) for label, n in counted)


def served_shares(rows: Sequence[Row]) -> tuple[Share, ...]:
    """Served models from (``model_served``, ``n``, ``total``) rows; what the limit left out becomes ``other``."""
    if not rows:
        return ()
    total = _count(rows[0]["total"])
    out = [Share(_label(r["model_served"]), _count(r["n"]), _count(r["n"]) / total) for r in rows]
    rest = total - sum(s.probes for s in out)
    if rest > 0:
        out.append(Share(OTHER, rest, rest / total))
    return tuple(out)


def model_incidents(model: str, open_: Iterable[Incident], closed: Iterable[Incident]) -> tuple[Incident, ...]:
    """The incidents that involved ``model``: open ones, then closed ones, newest first, at most MAX_INCIDENTS."""
    mine = [i for i in (*open_, *closed) if model in i.models]
    return tuple(mine[:MAX_INCIDENTS])


def _at(value: object) -> datetime:
    assert isinstance(value, datetime)
    return value


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _count(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _label(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
