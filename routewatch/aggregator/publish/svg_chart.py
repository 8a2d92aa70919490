"""Server-side SVG charts for the model page: a line chart over time and a 24-bar hour-of-day chart.

Pure functions, data in, an inline ``<svg>`` element out (no script, no
external resource). Accessible without seeing them: each chart is
``role="img"`` labelled by its ``<title>`` and a ``<desc>`` that states
the figures in words (range, lowest, highest, latest); both axes carry a
label; each point and bar has its own ``<title>`` with its time and value
(shown on hover, read by screen readers). Every piece of text is escaped.
The ``data-t`` / ``data-v`` attributes carry the plotted values as numbers,
for tests and scrapers.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from datetime import datetime

from routewatch.aggregator.publish.display import MISSING, format_error_rate, format_tps, format_ttft
from routewatch.aggregator.publish.model_view import Chart, HourOfDay, Line

__all__ = ["bar_chart", "format_value", "line_chart", "nice_max"]

WIDTH, HEIGHT = 320.0, 168.0
LEFT, RIGHT, TOP, BOTTOM = 52.0, 10.0, 10.0, 34.0
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
LINE_CLASSES = ("l1", "l2", "l3")
BAR_WIDTH = 640.0  # the profile is drawn wider, at about the size it is shown, so its text stays small
BAR_PLOT_W = BAR_WIDTH - LEFT - RIGHT


def esc(text: object) -> str:
    """``text`` escaped for SVG/HTML text and attributes."""
    return html.escape(str(text), quote=True)


def format_value(value: float | None, unit: str) -> str:
    """A chart value as text: ``412 ms``, ``85.2 tok/s``, ``1.25%`` (never truncated to a lower error rate)."""
    if value is None:
        return MISSING
    if unit == "ms":
        return format_ttft(value)
    if unit == "tok/s":
        return format_tps(value)
    if unit == "%":
        return format_error_rate(value)
    return f"{value:g} {unit}"


def nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value`` (at least a tiny positive number)."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * magnitude >= value * (1 - 1e-12):
            return step * magnitude
    return 10 * magnitude


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _time_label(t: datetime, unit: str) -> str:
    return t.strftime("%d %b %H:%M") if unit == "hour" else t.strftime("%d %b")


def line_chart(chart: Chart) -> str:
    """``chart`` as a line chart; an empty range says so in the plot."""
    title = f"{chart.title}, last {chart.range.label}"
    values = [p.value for line in chart.lines for p in line.points if p.value is not None]
    scale = chart.unit == "%"
    top = nice_max(max(values) * (100 if scale else 1) if values else 0.0) / (100 if scale else 1)
    span = (chart.end - chart.start).total_seconds() or 1.0

    def x(t: datetime) -> float:
        return LEFT + PLOT_W * min(1.0, max(0.0, (t - chart.start).total_seconds() / span))

    def y(v: float) -> float:
        return TOP + PLOT_H * (1 - min(1.0, v / top))

    parts = [_axes(chart, top)]
    for index, line in enumerate(chart.lines):
        parts.append(_line(line, LINE_CLASSES[index % len(LINE_CLASSES)], chart, x, y))
    if not values:
        parts.append(
            f'<text class="empty" x="{_n(LEFT + PLOT_W / 2)}" y="{_n(TOP + PLOT_H / 2)}" text-anchor="middle">'
            "no data in this range yet</text>"
        )
    legend = _legend(chart.lines) if len(chart.lines) > 1 else ""
    cid = esc(chart.id)
    return (
        f'<figure class="chart" id="c-{cid}"><svg role="img" aria-labelledby="{cid}-t {cid}-d" '
        f'viewBox="0 0 {_n(WIDTH)} {_n(HEIGHT)}" data-chart="{cid}" data-window="{esc(chart.window)}">'
        f'<title id="{cid}-t">{esc(title)}</title><desc id="{cid}-d">{esc(describe(chart))}</desc>'
        f"{''.join(parts)}</svg><figcaption>{esc(title)}{legend}</figcaption></figure>"
    )


def describe(chart: Chart) -> str:
    """The chart in words: per line, its points, lowest, highest and latest value."""
    unit = chart.unit
    bucket = "hour" if chart.range.unit == "hour" else "day"
    head = f"Per {bucket}, the last published figure of the {chart.window} window. "
    lines = []
    for line in chart.lines:
        measured = [p for p in line.points if p.value is not None]
        if not measured:
            lines.append(f"{line.name}: no data")
            continue
        low = min(measured, key=lambda p: p.value or 0.0)
        high = max(measured, key=lambda p: p.value or 0.0)
        lines.append(
            f"{line.name}: {len(measured)} points, lowest {format_value(low.value, unit)}, "
            f"highest {format_value(high.value, unit)}, latest {format_value(measured[-1].value, unit)}"
        )
    return head + "; ".join(lines) + "."


def _axes(chart: Chart, top: float) -> str:
    base = TOP + PLOT_H
    ticks = []
    for fraction in (0.0, 0.5, 1.0):
        yy = TOP + PLOT_H * (1 - fraction)
        ticks.append(
            f'<line class="grid" x1="{_n(LEFT)}" x2="{_n(LEFT + PLOT_W)}" y1="{_n(yy)}" y2="{_n(yy)}"/>'
            f'<text class="tick" x="{_n(LEFT - 4)}" y="{_n(yy + 3.5)}" text-anchor="end">'
            f"{esc(_tick(top * fraction, chart.unit))}</text>"
        )
    x_labels = (
        f'<text class="tick" x="{_n(LEFT)}" y="{_n(base + 13)}" text-anchor="start">'
        f"{esc(_time_label(chart.start, chart.range.unit))}</text>"
        f'<text class="tick" x="{_n(LEFT + PLOT_W)}" y="{_n(base + 13)}" text-anchor="end">'
        f"{esc(_time_label(chart.end, chart.range.unit))}</text>"
    )
    y_title = {"ms": "milliseconds", "tok/s": "tokens per second", "%": "percent of probes"}.get(chart.unit, chart.unit)
    return (
        "".join(ticks)
        + f'<line class="axis" x1="{_n(LEFT)}" x2="{_n(LEFT + PLOT_W)}" y1="{_n(base)}" y2="{_n(base)}"/>'
        + x_labels
        + f'<text class="axis-title" x="{_n(LEFT + PLOT_W / 2)}" y="{_n(HEIGHT - 4)}" text-anchor="middle">'
        "time (UTC)</text>" + f'<text class="axis-title" transform="translate(11 {_n(TOP + PLOT_H / 2)}) rotate(-90)" '
        f'text-anchor="middle">{esc(y_title)}</text>'
    )


def _tick(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:g}%"
    return f"{value:,.0f}" if value >= 10 or value == 0 else f"{value:.2g}"


def _line(line: Line, cls: str, chart: Chart, x: Callable[[datetime], float], y: Callable[[float], float]) -> str:
    segments: list[list[str]] = [[]]
    circles = []
    for p in line.points:
        if p.value is None:
            segments.append([])  # a gap: an unmeasured bucket is not drawn as a straight line through it
            continue
        px, py = _n(x(p.t)), _n(y(p.value))
        segments[-1].append(f"{px},{py}")
        text = f"{p.t:%Y-%m-%d %H:%M} UTC · {line.name} {format_value(p.value, chart.unit)}"
        # Class and line name sit on the group: a 7-day chart has 168 points per line.
        circles.append(
            f'<circle cx="{px}" cy="{py}" r="2" data-t="{esc(p.t.isoformat())}" data-v="{p.value!r}">'
            f"<title>{esc(text)}</title></circle>"
        )
    paths = "".join(f'<polyline class="{cls}" points="{" ".join(s)}"/>' for s in segments if len(s) > 1)
    return f'{paths}<g class="pts {cls}" data-line="{esc(line.name)}">{"".join(circles)}</g>'


def _legend(lines: Sequence[Line]) -> str:
    items = "".join(
        f'<span class="key"><span class="sw {LINE_CLASSES[i % len(LINE_CLASSES)]}" aria-hidden="true"></span>'
        f"{esc(line.name)}</span>"
        for i, line in enumerate(lines)
    )
    return f' <span class="keys">{items}</span>'


def bar_chart(profile: Sequence[HourOfDay], chart_id: str, days: int) -> str:
    """The time-of-day profile: one bar per UTC hour (p50 TTFT), hour 0 on the left."""
    values = [h.ttft_p50_ms for h in profile if h.ttft_p50_ms is not None]
    top = nice_max(max(values) if values else 0.0)
    slot = BAR_PLOT_W / max(1, len(profile))
    base = TOP + PLOT_H
    title = f"p50 time to first token by hour of day (UTC), last {days} days"
    bars = []
    for h in profile:
        xx = LEFT + slot * h.hour + 1
        label = f"{h.hour:02d}:00–{(h.hour + 1) % 24:02d}:00 UTC"
        if h.ttft_p50_ms is None:
            text = f"{label}: no data"
            bars.append(
                f'<rect class="bar nodata" x="{_n(xx)}" y="{_n(base - 2)}" width="{_n(slot - 2)}" height="2" '
                f'data-hour="{h.hour}" data-v=""><title>{esc(text)}</title></rect>'
            )
            continue
        height = PLOT_H * min(1.0, h.ttft_p50_ms / top)
        text = f"{label}: p50 TTFT {format_ttft(h.ttft_p50_ms)} (median of {h.hours} hourly p50s, {h.probes:,} probes)"
        bars.append(
            f'<rect class="bar" x="{_n(xx)}" y="{_n(base - height)}" width="{_n(slot - 2)}" height="{_n(height)}" '
            f'data-hour="{h.hour}" data-v="{h.ttft_p50_ms!r}"><title>{esc(text)}</title></rect>'
        )
    hour_ticks = "".join(
        f'<text class="tick" x="{_n(LEFT + slot * (hour + 0.5))}" y="{_n(base + 13)}" text-anchor="middle">'
        f"{hour:02d}</text>"
        for hour in range(0, 24, 3)
    )
    y_ticks = "".join(
        f'<text class="tick" x="{_n(LEFT - 4)}" y="{_n(TOP + PLOT_H * (1 - f) + 3.5)}" text-anchor="end">'
        f"{esc(_tick(top * f, 'ms'))}</text>"
        f'<line class="grid" x1="{_n(LEFT)}" x2="{_n(LEFT + BAR_PLOT_W)}" y1="{_n(TOP + PLOT_H * (1 - f))}" '
        f'y2="{_n(TOP + PLOT_H * (1 - f))}"/>'
        for f in (0.0, 0.5, 1.0)
    )
    if values:
        slowest = max((h for h in profile if h.ttft_p50_ms is not None), key=lambda h: h.ttft_p50_ms or 0.0)
        fastest = min((h for h in profile if h.ttft_p50_ms is not None), key=lambda h: h.ttft_p50_ms or 0.0)
        desc = (
            f"{len(values)} of 24 hours measured; fastest at {fastest.hour:02d}:00 UTC "
            f"({format_ttft(fastest.ttft_p50_ms)}), slowest at {slowest.hour:02d}:00 UTC "
            f"({format_ttft(slowest.ttft_p50_ms)})."
        )
    else:
        desc = "No hour measured yet."
    cid = esc(chart_id)
    return (
        f'<figure class="chart wide" id="c-{cid}"><svg role="img" aria-labelledby="{cid}-t {cid}-d" '
        f'viewBox="0 0 {_n(BAR_WIDTH)} {_n(HEIGHT)}" data-chart="{cid}">'
        f'<title id="{cid}-t">{esc(title)}</title><desc id="{cid}-d">{esc(desc)}</desc>'
        f"{y_ticks}{''.join(bars)}"
        f'<line class="axis" x1="{_n(LEFT)}" x2="{_n(LEFT + BAR_PLOT_W)}" y1="{_n(base)}" y2="{_n(base)}"/>'
        f"{hour_ticks}"
        f'<text class="axis-title" x="{_n(LEFT + BAR_PLOT_W / 2)}" y="{_n(HEIGHT - 4)}" text-anchor="middle">'
        "hour of day (UTC)</text>"
        f'<text class="axis-title" transform="translate(11 {_n(TOP + PLOT_H / 2)}) rotate(-90)" '
        'text-anchor="middle">milliseconds</text>'
        f"</svg><figcaption>{esc(title)}</figcaption></figure>"
    )
