"""The public status page: server-rendered HTML with inline CSS and no JavaScript.

Pure functions, a :class:`~.status_view.StatusView` in, a complete HTML
document out. Every name that comes from configuration or data (model ids,
router names, reasons) goes through :func:`esc` (``html.escape`` with
``quote=True``), in text and in attributes alike.

The page reads top to bottom without scripts: the overall banner, the count
of models in each state (links to their groups), open incidents, the models
grouped by state with the ones not operational first (per model its state,
reason, p50 TTFT, TTFAT, tok/s, error rate, router, uptime with its span and
the 90 days as one compact SVG strip, :mod:`.uptime_strip`), recent
incidents, the legend and the last-updated time. The page must stay small
at thousands of models, so a row carries no per-day markup: each day's
figures are on the model's own page, whose ``<li>`` bars
(:func:`uptime_bars`) say them on hover. Colour is never the only signal:
states are written out, and unknown days are also striped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import date, datetime

from routewatch.aggregator.model_state import UPTIME_DAYS, Incident, State
from routewatch.aggregator.publish.display import (
    MISSING,
    STATE_LABELS,
    format_duration,
    format_error_rate,
    format_percent,
    format_price,
    format_tps,
    format_ttft,
    format_utc,
)
from routewatch.aggregator.publish.model_links import model_page_path
from routewatch.aggregator.publish.status_view import LEVELS, DayBar, ModelRow, RouteFigures, StatusView, UptimeSpan
from routewatch.aggregator.publish.uptime_strip import DEFS, STRIP_CSS, uptime_strip

__all__ = [
    "BANNERS",
    "CSS",
    "GROUP_ORDER",
    "bar_text",
    "document",
    "esc",
    "incident_item",
    "render_message_page",
    "render_status_page",
    "time_html",
    "uptime_bars",
    "uptime_text",
]

BANNERS = {
    State.OPERATIONAL: "All models operational",
    State.DEGRADED: "Degraded performance",
    State.DOWN: "Outage: at least one model is down",
    State.UNKNOWN: "Status unknown for some models",
}

_LEVEL_NAMES = {level: text for level, _, text in LEVELS} | {"unknown": "no data or mostly unknown"}

# Colours: states and levels are also written out, so colour is never the only cue;
# the unknown stripes keep unknown days apart from every uptime colour.
CSS = """
:root{color-scheme:light;--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#fff;
--up:#2da44e;--minor:#9bd35a;--partial:#d4a72c;--major:#cf222e;--unknown:#aab3bd}
*{box-sizing:border-box}
body{margin:0;background:#f6f8fa;color:var(--fg);
font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:960px;margin:0 auto;padding:1.5rem 1rem 3rem}
h1{font-size:1.6rem;margin:0}
h2{font-size:1.2rem;margin:2rem 0 .75rem}
h3{font-size:1rem;margin:1rem 0 .5rem}
header{display:flex;flex-wrap:wrap;justify-content:space-between;align-items:baseline;gap:.5rem}
.updated,.note,.reason,.muted,p.uptime{color:var(--muted)}
.updated{margin:0;font-size:.9rem}
.banner{margin:1rem 0;padding:1rem 1.25rem;border-radius:6px;font-size:1.15rem;font-weight:600;
border:1px solid transparent}
.banner.s-operational{background:#dafbe1;border-color:#4ac26b;color:#116329}
.banner.s-degraded{background:#fff8c5;border-color:#d4a72c;color:#7d4e00}
.banner.s-down{background:#ffebe9;border-color:#ff8182;color:#a40e26}
.banner.s-unknown{background:#eaeef2;border-color:#afb8c1;color:#424a53}
.models,.incidents{list-style:none;margin:0;padding:0}
.model{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:.75rem 1rem;margin:0 0 .75rem}
.model-head{display:flex;flex-wrap:wrap;justify-content:space-between;gap:.25rem .75rem;align-items:baseline}
.name{font-weight:600;overflow-wrap:anywhere}
a.name{color:inherit}
.retired{font-size:.8rem;padding:0 .4em;border:1px solid var(--line);border-radius:4px;color:var(--muted)}
.state{font-weight:600;white-space:nowrap}
.state::before{content:"";display:inline-block;width:.7em;height:.7em;border-radius:50%;margin-right:.35em;
background:currentColor}
.state.s-operational{color:#1a7f37}.state.s-degraded{color:#9a6700}
.state.s-down{color:#cf222e}.state.s-unknown{color:#59636e}
.reason,.figures,p.uptime{margin:.15rem 0;font-size:.9rem;overflow-wrap:anywhere}
.counts{margin:.5rem 0;font-weight:600}
.bars{display:flex;gap:1px;list-style:none;margin:.5rem 0 .2rem;padding:0;height:32px}
.bar{flex:1 1 0;min-width:0;border-radius:1px}
.l-up{background:var(--up)}.l-minor{background:var(--minor)}
.l-partial{background:var(--partial)}.l-major{background:var(--major)}
.l-unknown{background:repeating-linear-gradient(135deg,var(--unknown) 0 2px,#d5dbe1 2px 4px)}
.bars-foot{display:flex;justify-content:space-between;gap:.5rem;font-size:.8rem;color:var(--muted)}
.legend{display:flex;flex-wrap:wrap;gap:.35rem 1rem;list-style:none;padding:0;margin:.5rem 0 1rem;
font-size:.85rem;color:var(--muted)}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.35em;vertical-align:-.05em}
.incident{background:var(--bg);border:1px solid var(--line);border-left-width:4px;border-radius:6px;
padding:.5rem .75rem;margin:0 0 .5rem;overflow-wrap:anywhere}
.incident.w-down{border-left-color:#cf222e}.incident.w-degraded{border-left-color:#d4a72c}
.tag{font-weight:600}
footer{margin-top:2rem;font-size:.85rem;color:var(--muted)}
@media (max-width:600px){main{padding:1rem .5rem 2rem}.bars{gap:0;height:28px}.model{padding:.6rem}}
"""


def esc(text: object) -> str:
    """``text`` as HTML text or attribute content: ``& < > " '`` escaped."""
    return html.escape(str(text), quote=True)


def render_status_page(view: StatusView) -> str:
    """The complete status page for ``view``."""
    body = "".join(
        [
            _header(view),
            f'<section class="banner s-{view.overall.value}" role="status">{esc(BANNERS[view.overall])}</section>',
            f'<p class="note budget" role="note">{esc(view.budget_note)}</p>' if view.budget_note else "",
            _counts(view),
            _incident_section("open-h", "Open incidents", view.open, view, "No open incidents."),
            _models_section(view),
            _incident_section("recent-h", "Recent incidents", view.recent, view, "No incidents recently."),
            _footer(view),
        ]
    )
    return document("Model status", DEFS + body, STRIP_CSS)


def render_message_page(heading: str, message: str) -> str:
    """A page that only says why there is no status to show (not enabled, not computed yet)."""
    body = (
        f"<header><h1>{esc(heading)}</h1></header>"
        f'<section class="banner s-unknown" role="status">{esc(message)}</section>'
        '<p class="note">The figures are also served as JSON: <a href="/v1/models">/v1/models</a>.</p>'
    )
    return document(heading, body)


def document(title: str, body: str, extra_css: str = "") -> str:
    """A complete page: ``body`` in the status page's frame and style (plus ``extra_css``)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · routewatch</title><style>{CSS}{extra_css}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _header(view: StatusView) -> str:
    updated = time_html(view.updated_at)
    return f'<header><h1>Model status</h1><p class="updated">Updated {updated}</p></header>'


def time_html(value: datetime | None) -> str:
    """``value`` as a ``<time>`` element in UTC; :data:`MISSING` for None."""
    if value is None:
        return MISSING
    return f'<time datetime="{esc(value.isoformat())}">{esc(format_utc(value))}</time>'


def _models_section(view: StatusView) -> str:
    window = f" over the last {esc(view.window)}" if view.window else ""
    tier = f", of the {esc(view.tier)}-token prompt tier" if view.tier else ""
    intro = (
        f'<p class="note">Figures are medians (p50){window}{tier}. {_TTFT}: time to the first token of any kind;'
        f" {_TTFAT}: to the first token of the answer (later than TTFT by a reasoning model's reasoning)."
        f" The strip: the last {UPTIME_DAYS} UTC days, oldest on the left, today on the right;"
        " each day's figures are on the model's page (follow its name).</p>"
    )
    if not view.models:
        return (
            f'<section aria-labelledby="models-h"><h2 id="models-h">Models</h2>{intro}'
            '<p class="muted">No models are monitored yet.</p></section>'
        )
    groups = "".join(_group(state, rows) for state, rows in _by_state(view.models).items())
    return f'<section aria-labelledby="models-h"><h2 id="models-h">Models</h2>{intro}{_legend()}{groups}</section>'


# Groups in this order: what needs attention first, the (usually many) operational models last.
GROUP_ORDER = (State.DOWN, State.DEGRADED, State.UNKNOWN, State.OPERATIONAL)


def _by_state(rows: Iterable[ModelRow]) -> dict[State, list[ModelRow]]:
    """``rows`` by state in :data:`GROUP_ORDER`, each in the view's order; empty states left out."""
    groups: dict[State, list[ModelRow]] = {state: [] for state in GROUP_ORDER}
    for row in rows:
        groups[row.state].append(row)
    return {state: found for state, found in groups.items() if found}


def _counts(view: StatusView) -> str:
    """How many models are in each state, each a link to its group; nothing without models."""
    groups = _by_state(view.models)
    if not groups:
        return ""
    links = " · ".join(
        f'<a href="#g-{state.value}">{len(rows):,} {esc(STATE_LABELS[state].lower())}</a>'
        for state, rows in groups.items()
    )
    return f'<p class="counts">{len(view.models):,} models: {links}</p>'


def _group(state: State, rows: list[ModelRow]) -> str:
    items = "".join(_model(row) for row in rows)
    return (
        f'<section class="group" aria-labelledby="g-{state.value}">'
        f'<h3 id="g-{state.value}">{esc(STATE_LABELS[state])} ({len(rows):,})</h3>'
        f'<ul class="models">{items}</ul></section>'
    )


def _legend() -> str:
    items = "".join(
        f'<li><span class="swatch l-{level}" aria-hidden="true"></span>{esc(text)}</li>'
        for level, text in _LEVEL_NAMES.items()
    )
    return f'<ul class="legend" aria-label="Legend of the uptime bars">{items}</ul>'


def _model(row: ModelRow) -> str:
    label = STATE_LABELS[row.state]
    # Since when matters for a model in trouble; an operational one's is on its page.
    since = row.since if row.state is not State.OPERATIONAL else None
    since_html = f' <span class="muted">since {time_html(since)}</span>' if since is not None else ""
    reason = f'<p class="reason">{esc(row.reason)}</p>' if row.reason else ""
    # No longer in its router's model list: not probed any more, its history kept.
    retired = ' <span class="retired" title="no longer listed by its router; not probed">retired</span>' * row.retired
    # A model probed but not (yet) in the stats still gets its figure line, with dashes.
    figures = "".join(_figures(route) for route in row.routes) or _figures(None)
    return (
        f'<li class="model"><div class="model-head"><a class="name" href="{esc(model_page_path(row.model))}">'
        f"{esc(row.model)}</a>{retired}"
        f'<span><span class="state s-{row.state.value}">{esc(label)}</span>{since_html}</span></div>'
        f"{reason}{figures}{uptime_strip(row.model, row.days)}"
        f'<p class="uptime">{esc(uptime_text(row.uptime, row.measured))}</p></li>'
    )


# Both first-token times, labelled with what each one means (they differ for a reasoning model): once, in the intro.
_TTFT = '<abbr title="time to first token of any kind, reasoning included">TTFT</abbr>'
_TTFAT = '<abbr title="time to first answer token: for a reasoning model, after its reasoning">TTFAT</abbr>'


def _figures(route: RouteFigures | None) -> str:
    if route is None:
        return (
            f'<p class="figures">TTFT <b class="ttft">{MISSING}</b> · TTFAT <b class="ttfat">{MISSING}</b>'
            f' · output <b class="tps">{MISSING}</b> · errors <b class="errors">{MISSING}</b></p>'
        )
    price = f" · {esc(format_price(route.input_price))}/M input tokens" if route.input_price is not None else ""
    return (
        f'<p class="figures">TTFT <b class="ttft">{esc(format_ttft(route.ttft_p50_ms))}</b>'
        f' · TTFAT <b class="ttfat">{esc(format_ttft(route.ttfat_p50_ms))}</b>'
        f' · output <b class="tps">{esc(format_tps(route.tps_p50))}</b>'
        f' · errors <b class="errors">{esc(format_error_rate(route.error_rate))}</b>{price}'
        f' · via <span class="router">{esc(route.router)}</span></p>'
    )


def uptime_bars(row: ModelRow) -> str:
    """The daily uptime bars of ``row`` with their foot line (first day, uptime and its span, today)."""
    today = row.days[-1].day if row.days else None
    bars = "".join(_bar(bar, bar.day == today) for bar in row.days)
    first = row.days[0].day.isoformat() if row.days else MISSING
    return (
        f'<ol class="bars" aria-label="Daily uptime of {esc(row.model)}, {len(row.days)} days">{bars}</ol>'
        f'<div class="bars-foot"><span>{esc(first)}</span>'
        f'<span class="uptime">{esc(uptime_text(row.uptime, row.measured))}</span>'
        "<span>today</span></div>"
    )


def _bar(bar: DayBar, today: bool) -> str:
    text = esc(bar_text(bar, today))
    return f'<li class="bar l-{bar.level}" title="{text}" aria-label="{text}"></li>'


def uptime_text(uptime: float | None, span: UptimeSpan) -> str:
    """``99.95% uptime over 90 days`` only when all 90 days have data; else what was measured:
    ``100.00% uptime since 2025-11-29 (2 min of data)``, or ``no uptime data yet``."""
    if span.first_day is None:
        return "no uptime data yet"
    if uptime is None:  # time recorded, all of it unknown (no probes, or the prober down)
        return f"uptime unknown since {_day(span.first_day)} ({format_duration(span.recorded_s)} of data, none known)"
    if span.full:
        return f"{format_percent(uptime)} uptime over {span.days} days"
    return f"{format_percent(uptime)} uptime since {_day(span.first_day)} ({format_duration(span.recorded_s)} of data)"


def bar_text(bar: DayBar, today: bool = False) -> str:
    """What one bar says on hover and to a screen reader: the day, then its percentages."""
    day = _day(bar.day) + (" (today, so far)" if today else "")
    u = bar.uptime
    if u is None or bar.recorded <= 0:
        return f"{day}: no data"
    unknown = f"{format_percent(u.unknown / bar.recorded)} of the time unknown"
    if u.known <= 0:
        return f"{day}: unknown ({unknown})"
    up = format_percent(u.operational / u.known)
    split = f"degraded {format_percent(u.degraded / u.known)}, down {format_percent(u.down / u.known)}"
    if bar.level == "unknown":
        return f"{day}: mostly unknown ({unknown}); {up} up when known ({split})"
    return f"{day}: {up} up ({split}); {unknown}"


def _day(day: date) -> str:
    return day.isoformat()


def _incident_section(
    heading_id: str, heading: str, incidents: Iterable[Incident], view: StatusView, empty: str
) -> str:
    items = "".join(incident_item(i, view.updated_at) for i in incidents)
    content = f'<ul class="incidents">{items}</ul>' if items else f'<p class="muted">{esc(empty)}</p>'
    return f'<section aria-labelledby="{heading_id}"><h2 id="{heading_id}">{esc(heading)}</h2>{content}</section>'


def incident_item(incident: Incident, now: datetime | None) -> str:
    """One incident as a list item; an open one says for how long as of ``now``."""
    worst = incident.worst_state
    models = ", ".join(f'<span class="name">{esc(m)}</span>' for m in sorted(incident.models))
    if incident.end is None:
        ongoing = f" for {esc(format_duration((now - incident.start).total_seconds()))}" if now is not None else ""
        when = f"started {time_html(incident.start)}, ongoing{ongoing}"
    else:
        lasted = format_duration((incident.end - incident.start).total_seconds())
        when = f"{time_html(incident.start)} to {time_html(incident.end)} ({esc(lasted)})"
    planned = ' · <span class="tag">planned maintenance</span>' if incident.suppressed else ""
    return (
        f'<li class="incident w-{worst.value}"><span class="tag">#{incident.id} {esc(STATE_LABELS[worst])}</span>'
        f" · {models} · {when}{planned}</li>"
    )


def _footer(view: StatusView) -> str:
    stats = f" Figures from the stats of {time_html(view.stats_updated_at)}." if view.stats_updated_at else ""
    return (
        f"<footer><p>Status evaluated {time_html(view.updated_at)}.{stats}"
        ' Machine-readable: <a href="/status.json">/status.json</a>,'
        ' <a href="/v1/incidents">/v1/incidents</a>.</p></footer>'
    )
