"""What the public status page, its JSON twin and the badges show: pure data, no I/O.

:func:`build_view` joins the aggregator's :class:`~.status_store.StatusReport`
(states, incidents), its :class:`~.refresh.Snapshot` (p50 TTFT and tok/s) and
the daily uptime rows into one :class:`StatusView`; :mod:`.status_page`
renders it as HTML and :func:`view_json` as the body of ``GET /status.json``.

A day's bar (:func:`day_level`) is ``unknown`` when there is no row for it or
when more than half of its recorded time is unknown (prober outage, no
probes): such a day is never drawn as up. Otherwise its level follows the
operational share of the known time (:data:`LEVELS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from routewatch.aggregator.model_state import UPTIME_DAYS, DayUptime, Incident, State
from routewatch.aggregator.model_state_store import StatusReport, incident_json
from routewatch.aggregator.publish.cost_view import listed_price
from routewatch.aggregator.refresh import SeriesKey, Snapshot

__all__ = [
    "LEVELS",
    "PAGE_WINDOW",
    "UNKNOWN_DOMINANT",
    "DayBar",
    "ModelRow",
    "RouteFigures",
    "StatusView",
    "UptimeSpan",
    "build_view",
    "day_level",
    "page_window",
    "uptime_span",
    "view_json",
    "with_listed_prices",
]

PAGE_WINDOW = "7d"
"""The stats window whose p50s the page and badges show (the catalog's), when the aggregator has it."""

UNKNOWN_DOMINANT = 0.5
"""A day whose unknown time is more than this share of its recorded time is drawn unknown."""

LEVELS: tuple[tuple[str, float, str], ...] = (
    ("up", 0.999, "99.9% or more up"),
    ("minor", 0.99, "99% to 99.9% up"),
    ("partial", 0.95, "95% to 99% up"),
    ("major", 0.0, "below 95% up"),
)
"""(level, lowest operational share of known time, legend text), best first."""


@dataclass(frozen=True, slots=True)
class RouteFigures:
    """One router's figures for a model over the page window; None: no ok probe to measure."""

    router: str
    ttft_p50_ms: float | None
    tps_p50: float | None
    input_price: float | None  # USD per 1M input tokens from probes.yaml; None: not configured
    error_rate: float | None = None  # failed / attempted over the page window; None: nothing attempted
    ttfat_p50_ms: float | None = None  # first answer token: after a reasoning model's reasoning; None: not measured


@dataclass(frozen=True, slots=True)
class DayBar:
    """One UTC day of a model's uptime bar."""

    day: date
    uptime: DayUptime | None  # None: no row for that day

    @property
    def level(self) -> str:
        """``up``, ``minor``, ``partial``, ``major`` or ``unknown`` (see :func:`day_level`)."""
        return day_level(self.uptime)

    @property
    def recorded(self) -> float:
        """Seconds recorded for that day, unknown included."""
        return 0.0 if self.uptime is None else self.uptime.known + self.uptime.unknown


@dataclass(frozen=True, slots=True)
class ModelRow:
    """One model on the status page."""

    model: str
    state: State
    since: datetime | None
    reason: str
    routes: tuple[RouteFigures, ...]  # configured routers first
    days: tuple[DayBar, ...]  # UPTIME_DAYS of them, oldest first, the last is today
    retired: bool = False  # every router that listed it has stopped listing it (discovery)

    @property
    def uptime(self) -> float | None:
        """Operational share of the known time over all days; None when nothing is known."""
        known = sum(b.uptime.known for b in self.days if b.uptime is not None)
        up = sum(b.uptime.operational for b in self.days if b.uptime is not None)
        return up / known if known > 0 else None

    @property
    def measured(self) -> UptimeSpan:
        """Over what the uptime was measured: its first day with data and the seconds recorded."""
        return uptime_span(self.days)


@dataclass(frozen=True, slots=True)
class UptimeSpan:
    """What an uptime figure covers: so that two minutes of data never read as 90 days."""

    first_day: date | None  # the first day with recorded time; None: none has any
    recorded_s: float  # seconds recorded over the days, unknown time included
    days: int  # the days the figure could cover (the bars shown)
    full: bool  # the first bar's day has data: the figure covers every day shown


def uptime_span(days: tuple[DayBar, ...]) -> UptimeSpan:
    """The span ``days`` (oldest first) actually measured."""
    first = next((bar.day for bar in days if bar.recorded > 0), None)
    return UptimeSpan(
        first_day=first,
        recorded_s=sum(bar.recorded for bar in days),
        days=len(days),
        full=first is not None and first == days[0].day,
    )


@dataclass(frozen=True, slots=True)
class StatusView:
    """Everything the status page shows, as of one aggregator refresh."""

    updated_at: datetime | None  # status evaluation time
    stats_updated_at: datetime | None  # snapshot time of the p50s
    window: str | None  # the p50s' window; None without a snapshot
    overall: State
    models: tuple[ModelRow, ...]
    open: tuple[Incident, ...]
    recent: tuple[Incident, ...]
    budget_note: str | None = None  # while the daily budget has paused series
    tier: str | None = None  # the prompt tier the p50s are of (the headline tier); None without figures


def day_level(uptime: DayUptime | None) -> str:
    """The colour class of one day: ``unknown`` when there is no data or it is mostly unknown."""
    if uptime is None:
        return "unknown"
    recorded = uptime.known + uptime.unknown
    fraction = uptime.fraction_up
    if recorded <= 0 or fraction is None or uptime.unknown > UNKNOWN_DOMINANT * recorded:
        return "unknown"
    for level, lowest, _ in LEVELS:
        if fraction >= lowest:
            return level
    return LEVELS[-1][0]


def page_window(snapshot: Snapshot) -> str:
    """:data:`PAGE_WINDOW` when the snapshot has it, else its longest (last) window."""
    return PAGE_WINDOW if PAGE_WINDOW in snapshot.windows else snapshot.windows[-1]


def route_figures(snapshot: Snapshot | None, model: str, prices: Mapping[SeriesKey, float]) -> tuple[RouteFigures, ...]:
    """Each router's figures for ``model`` in the page window, in the snapshot's order."""
    return _routes_by_model(snapshot, prices).get(model, ())


def _routes_by_model(
    snapshot: Snapshot | None, prices: Mapping[SeriesKey, float]
) -> dict[str, tuple[RouteFigures, ...]]:
    """:func:`route_figures` of every model, in one pass over the snapshot's routes."""
    if snapshot is None or not snapshot.windows:
        return {}
    stats = snapshot.stats.get(page_window(snapshot), {})
    out: dict[str, list[RouteFigures]] = {}
    for key in snapshot.models:
        found = stats.get(key)
        counts = found.counts if found is not None else None
        out.setdefault(key[1], []).append(
            RouteFigures(
                key[0],
                counts.ttft_p50_ms if counts is not None else None,
                counts.tps_p50 if counts is not None else None,
                prices.get(key),
                found.error_rate if found is not None else None,
                counts.ttfat_p50_ms if counts is not None else None,
            )
        )
    return {model: tuple(routes) for model, routes in out.items()}


def _retired(snapshot: Snapshot | None, model: str) -> bool:
    """Whether every route of ``model`` the snapshot has is retired (and there is at least one)."""
    if snapshot is None:
        return False
    keys = [key for key in snapshot.models if key[1] == model]
    return bool(keys) and all(snapshot.retired_at(key) is not None for key in keys)


def with_listed_prices(configured: Mapping[SeriesKey, float], snapshot: Snapshot | None) -> dict[SeriesKey, float]:
    """USD per 1M input tokens by (router, model): the one configured in probes.yaml, else the router's
    model list's (discovery) where it publishes a whole price; the rule probes are costed by."""
    listed = snapshot.catalog.items() if snapshot is not None else ()
    found = {key: price.input for key, row in listed if (price := listed_price(row)) is not None}
    return {**found, **configured}


def uptime_days(
    model: str, uptime: Mapping[tuple[str, date], DayUptime], today: date, days: int = UPTIME_DAYS
) -> tuple[DayBar, ...]:
    """``days`` bars ending with ``today``, oldest first; days without a row have ``uptime=None``."""
    first = today - timedelta(days=days - 1)
    return tuple(DayBar(day, uptime.get((model, day))) for day in (first + timedelta(days=i) for i in range(days)))


def build_view(
    report: StatusReport,
    snapshot: Snapshot | None,
    uptime: Mapping[tuple[str, date], DayUptime],
    today: date,
    prices: Mapping[SeriesKey, float] | None = None,
    budget_note: str | None = None,
) -> StatusView:
    """Join the status report, the snapshot's p50s and the daily uptime; ``today`` is the last bar's UTC day."""
    routes = _routes_by_model(snapshot, prices or {})
    rows = tuple(
        ModelRow(
            m.model,
            m.state,
            m.since,
            m.reason,
            routes.get(m.model, ()),
            uptime_days(m.model, uptime, today),
            retired=_retired(snapshot, m.model),
        )
        for m in report.models
    )
    return StatusView(
        updated_at=report.updated_at,
        stats_updated_at=snapshot.updated_at if snapshot is not None else None,
        window=page_window(snapshot) if snapshot is not None and snapshot.windows else None,
        overall=report.overall,
        models=rows,
        open=report.open,
        recent=report.recent,
        budget_note=budget_note,
        tier=_headline_tier(snapshot),
    )


def _headline_tier(snapshot: Snapshot | None) -> str | None:
    """The tier every published model figure is of, or None without any."""
    for per_model in snapshot.stats.values() if snapshot is not None else ():
        for stats in per_model.values():
            return stats.tier
    return None


def view_json(view: StatusView) -> dict[str, Any]:
    """The body of ``GET /status.json``, for status aggregators.

    Shape (times are ISO 8601 with offset, null when unknown; numbers null when not measured)::

        {
          "updated_at": "2025-06-01T12:00:00+00:00",   # status evaluation time
          "stats_updated_at": "2025-06-01T12:00:00+00:00",  # time of the p50 figures
          "window": "7d",                               # window of the p50 figures
          "tier": "100",                                # prompt tier of the p50 figures (the headline tier)
          "overall": "operational" | "degraded" | "down" | "unknown",
          "models": [{
            "id": "openai/gpt-4.1-nano",
            "state": "operational" | "degraded" | "down" | "unknown",
            "since": "2025-06-01T11:00:00+00:00",       # when it entered this state
            "reason": "",                               # one line; empty when operational
            "routers": [{"router": "orcarouter", "ttft_p50_ms": 412.3, "ttfat_p50_ms": 430.1, "tps_p50": 85.2,
                         "input_price_per_mtok": 0.1,   # USD per 1M input tokens, null: not configured
                         "error_rate": 0.002}],         # failed / attempted in the window, null: none
            "retired": false,                           # no longer in its router's model list (discover)
            "uptime_90d": 0.9995,                       # operational / known time over the days below
            "uptime_measured": {"since": "2025-05-30",  # first day with data; null: none yet
                                "recorded_s": 180.0,    # seconds of data behind uptime_90d
                                "full": false},         # true once every one of the 90 days has data
            "uptime": [{                                # 90 entries, oldest first, the last is today (UTC)
              "day": "2025-03-04",
              "level": "up" | "minor" | "partial" | "major" | "unknown",
              "fraction_up": 0.9995,                    # operational / known time; null: nothing known
              "operational_s": 86357.0, "degraded_s": 43.0, "down_s": 0.0, "unknown_s": 0.0
            }]
          }],
          "incidents": {
            "open": [{"id": 7, "start": "...", "end": null, "worst_state": "degraded" | "down",
                      "models": ["..."], "suppressed": false}],
            "recent": [ ... ]                           # closed, newest first, at most 10
          },
          "budget_note": null | "Probing of 2 series is paused ..."  # while the budget pauses series
        }
    """
    return {
        "updated_at": _iso(view.updated_at),
        "stats_updated_at": _iso(view.stats_updated_at),
        "window": view.window,
        "tier": view.tier,
        "overall": view.overall.value,
        "models": [_model_json(row) for row in view.models],
        "incidents": {
            "open": [incident_json(i) for i in view.open],
            "recent": [incident_json(i) for i in view.recent],
        },
        "budget_note": view.budget_note,
    }


def _model_json(row: ModelRow) -> dict[str, Any]:
    return {
        "id": row.model,
        "state": row.state.value,
        "since": _iso(row.since),
        "reason": row.reason,
        "retired": row.retired,
        "routers": [
            {
                "router": r.router,
                "ttft_p50_ms": _round(r.ttft_p50_ms),
                "ttfat_p50_ms": _round(r.ttfat_p50_ms),
                "tps_p50": _round(r.tps_p50),
                "input_price_per_mtok": r.input_price,
                "error_rate": _round(r.error_rate, 4),
            }
            for r in row.routes
        ],
        "uptime_90d": _round(row.uptime, 6),
        "uptime_measured": _span_json(row.measured),
        "uptime": [_day_json(bar) for bar in row.days],
    }


def _span_json(span: UptimeSpan) -> dict[str, Any]:
    return {
        "since": span.first_day.isoformat() if span.first_day is not None else None,
        "recorded_s": round(span.recorded_s, 1),
        "full": span.full,
    }


def _day_json(bar: DayBar) -> dict[str, Any]:
    u = bar.uptime or DayUptime()
    return {
        "day": bar.day.isoformat(),
        "level": bar.level,
        "fraction_up": _round(u.fraction_up, 6),
        "operational_s": round(u.operational, 1),
        "degraded_s": round(u.degraded, 1),
        "down_s": round(u.down, 1),
        "unknown_s": round(u.unknown, 1),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
