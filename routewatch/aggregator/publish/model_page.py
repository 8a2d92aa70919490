"""One model's public page: server-rendered HTML with inline SVG charts, no JavaScript.

Pure functions, a :class:`~.model_view.ModelPageView` in, a complete HTML
document out, in the status page's frame and style. It reads top to
bottom: the state and its reason, the uptime bars (with the span they
measured), per router the headline figures over every window, the charts
over 24 h / 7 d / 90 d, the time-of-day profile, providers and served
models with their shares, the model's incidents, and "Embed this badge"
with ready HTML and Markdown. Every name from configuration or data goes
through :func:`~.status_page.esc`; the SVGs escape their own text.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from routewatch.aggregator.provider_cap import OTHER
from routewatch.aggregator.publish.display import (
    MISSING,
    STATE_LABELS,
    format_error_rate,
    format_price,
    format_tps,
    format_ttft,
)
from routewatch.aggregator.publish.model_links import badge_path, model_json_path, model_page_path, quote_model_id
from routewatch.aggregator.publish.model_view import PROFILE_SPAN, RANGES, ModelPageView, RoutePage, Share
from routewatch.aggregator.publish.status_page import document, esc, incident_item, time_html, uptime_bars
from routewatch.aggregator.publish.svg_chart import bar_chart, line_chart

__all__ = ["embed_snippets", "render_model_page"]

_CSS = """
.crumbs{margin:0 0 .5rem;font-size:.9rem}
.table-wrap{overflow-x:auto}
.summary{width:100%;border-collapse:collapse;background:var(--bg);border:1px solid var(--line);font-size:.9rem}
.summary th,.summary td{padding:.3rem .5rem;border-bottom:1px solid var(--line);text-align:right}
.summary th:first-child,.summary td:first-child{text-align:left}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(340px,100%),1fr));gap:.75rem}
.chart{margin:0;background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:.4rem}
.chart svg{display:block;width:100%;height:auto}
.chart figcaption{font-size:.85rem;color:var(--muted)}
.chart.wide{max-width:640px}
.grid{stroke:#eaeef2;stroke-width:1}.axis{stroke:#8c959f;stroke-width:1}
.tick,.axis-title,.empty{font:10px system-ui,sans-serif;fill:#59636e}
polyline{fill:none;stroke-width:1.6}
polyline.l1{stroke:#0969da}polyline.l2{stroke:#bc4c00}polyline.l3{stroke:#8250df}
.pts.l1{fill:#0969da}.pts.l2{fill:#bc4c00}.pts.l3{fill:#8250df}
.bar{fill:#0969da}.bar.nodata{fill:#aab3bd}
.keys{margin-left:.5rem}.key{margin-right:.6rem;white-space:nowrap}
.sw{display:inline-block;width:.9em;height:.25em;vertical-align:.2em;margin-right:.25em}
.sw.l1{background:#0969da}.sw.l2{background:#bc4c00}.sw.l3{background:#8250df}
.shares{list-style:none;margin:0;padding:0;max-width:640px}
.shares li{display:grid;grid-template-columns:minmax(0,1fr) 5rem 6rem;gap:.5rem;align-items:center;
padding:.2rem 0;border-bottom:1px solid var(--line);font-size:.9rem}
.shares .label{overflow-wrap:anywhere}.shares .pct{text-align:right;font-weight:600}
.meter{display:block;height:.5rem;background:#eaeef2;border-radius:2px;overflow:hidden}
.meter span{display:block;height:100%;background:#0969da}
.snippet{background:#f6f8fa;border:1px solid var(--line);border-radius:6px;padding:.5rem;
white-space:pre-wrap;overflow-wrap:anywhere;font-size:.8rem;margin:.25rem 0 .75rem}
"""


def render_model_page(view: ModelPageView, public_url: str | None = None) -> str:
    """The complete page of ``view``'s model; ``public_url`` makes the embed snippets absolute."""
    label = STATE_LABELS[view.state]
    since = f' <span class="muted">since {time_html(view.since)}</span>' if view.since is not None else ""
    reason = f'<p class="reason">{esc(view.reason)}</p>' if view.reason else ""
    several = len(view.routes) > 1
    body = "".join(
        [
            '<p class="crumbs"><a href="/status">← All models</a></p>',
            f'<header><h1 class="name">{esc(view.model)}</h1>'
            f'<p class="updated">Updated {time_html(view.updated_at)}</p></header>',
            f'<p><span class="state s-{view.state.value}">{esc(label)}</span>{since}</p>{reason}',
            _uptime(view),
            *(_route(route, several) for route in view.routes),
            _incidents(view),
            _embed(view, public_url),
            _footer(view),
        ]
    )
    return document(view.model, body, _CSS)


def _uptime(view: ModelPageView) -> str:
    if view.status is None:
        return ""
    return (
        '<section aria-labelledby="uptime-h"><h2 id="uptime-h">Uptime</h2>'
        f'<div class="model">{uptime_bars(view.status)}</div></section>'
    )


def _route(route: RoutePage, several: bool) -> str:
    slug = esc(quote_model_id(route.router))
    heading = f"Via {esc(route.router)}" if several else "Figures"
    return (
        f'<section class="route" aria-labelledby="r-{slug}"><h2 id="r-{slug}">{heading}</h2>'
        f"{_summary(route)}{_charts(route)}{_profile(route, slug)}{_shares(route)}</section>"
    )


def _summary(route: RoutePage) -> str:
    rows = []
    for window, stats in route.stats.items():
        c = stats.counts
        rows.append(
            f'<tr data-window="{esc(window)}"><th scope="row">last {esc(window)}</th>'
            f"<td>{esc(format_ttft(c.ttft_p50_ms))}</td><td>{esc(format_ttft(c.ttft_p95_ms))}</td>"
            f'<td class="ttfat">{esc(format_ttft(c.ttfat_p50_ms))}</td>'
            f'<td class="ttfat">{esc(format_ttft(c.ttfat_p95_ms))}</td>'
            f"<td>{esc(format_tps(c.tps_p50))}</td><td>{esc(format_error_rate(stats.error_rate))}</td>"
            f"<td>{c.attempts:,}</td></tr>"
        )
    price = (
        f'<p class="figures">{esc(format_price(route.input_price))} per 1M input tokens</p>'
        if route.input_price is not None
        else ""
    )
    # Every window's figures are of the headline tier: say which, as a 10k prompt's TTFT is not a 100's.
    tier = next(iter(route.stats.values())).tier if route.stats else None
    of_tier = f" of the {esc(tier)}-token prompt tier" if tier is not None else ""
    return (
        f'{price}<div class="table-wrap"><table class="summary"><caption class="muted">Via {esc(route.router)};'
        f" percentiles over ok probes{of_tier}</caption>"
        '<thead><tr><th scope="col">window</th><th scope="col">p50 TTFT</th><th scope="col">p95 TTFT</th>'
        '<th scope="col">p50 TTFAT</th><th scope="col">p95 TTFAT</th>'
        '<th scope="col">p50 output</th><th scope="col">error rate</th><th scope="col">probes</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>{_first_tokens_note(route)}"
    )


def _first_tokens_note(route: RoutePage) -> str:
    """What TTFT and TTFAT each mean, and the probes a too small reasoning budget left out."""
    counts = [(s.cell.budget_exhausted, w) for w, s in route.stats.items() if s.cell is not None]
    exhausted, window = max(counts, default=(0, ""))
    spent = (
        f" In the last {window}, {exhausted:,} probes ran out of output budget while the model reasoned: they"
        " are not counted as attempts (the reasoning budget is too small, which is not the router's fault)."
        if exhausted
        else ""
    )
    return (
        '<p class="note first-tokens"><b>TTFT</b> is the time to the first token of any kind, reasoning included;'
        " <b>TTFAT</b> the time to the first token of the answer itself. They are equal for a model that does"
        " not reason. For a reasoning model TTFAT &minus; TTFT is the time it streams its reasoning, and a model that"
        f" reasons without streaming it shows both only after it has reasoned.{esc(spent)}</p>"
    )


def _charts(route: RoutePage) -> str:
    out = []
    for chart_range in RANGES:
        charts = [c for c in route.charts if c.range == chart_range]
        out.append(
            f'<h3>Last {esc(chart_range.label)}</h3><div class="charts">{"".join(line_chart(c) for c in charts)}</div>'
        )
    return "".join(out)


def _profile(route: RoutePage, slug: str) -> str:
    days = PROFILE_SPAN.days
    return (
        f"<h3>Time of day</h3>"
        f'<p class="note">Per UTC hour of day: the median of that hour\'s p50 TTFT over the last {days} days.'
        " A model that slows down at peak hours shows it here.</p>"
        f"{bar_chart(route.profile, f'profile-{slug}', days)}"
    )


def _shares(route: RoutePage) -> str:
    return "".join(
        f'<h3>{esc(table.title)}</h3><p class="note">{esc(table.note)}</p>'
        f"{_share_list(table.shares, table.key, table.none_label)}"
        for table in route.shares
    )


def _share_list(shares: Sequence[Share], cls: str, none_label: str) -> str:
    if not shares:
        return f'<p class="muted {esc(cls)}">No probes in this window.</p>'
    items = []
    for share in shares:
        if share.label is None:
            label = f'<span class="muted">{esc(none_label)}</span>'
        elif share.label == OTHER:
            label = '<span class="muted">others</span>'
        else:
            label = esc(share.label)
        pct = f"{share.share * 100:.1f}%"
        items.append(
            f'<li><span class="label">{label}</span><span class="pct">{esc(pct)}</span>'
            f'<span class="meter" title="{share.probes:,} probes"><span style="width:{share.share * 100:.1f}%">'
            "</span></span></li>"
        )
    return f'<ul class="shares {esc(cls)}">{"".join(items)}</ul>'


def _incidents(view: ModelPageView) -> str:
    if view.incidents:
        content = (
            f'<ul class="incidents">{"".join(incident_item(i, view.status_updated_at) for i in view.incidents)}</ul>'
        )
    else:
        content = '<p class="muted">No incidents recorded for this model.</p>'
    return f'<section aria-labelledby="incidents-h"><h2 id="incidents-h">Recent incidents</h2>{content}</section>'


def embed_snippets(model: str, router: str, public_url: str | None, several: bool) -> tuple[str, str]:
    """(HTML, Markdown) that embed ``model``'s badge linking to its page; absolute with ``public_url``."""
    base = (public_url or "").rstrip("/")
    badge = base + badge_path(model) + (f"?router={_query_value(router)}" if several else "")
    page = base + model_page_path(model)
    alt = f"{model} on routewatch"
    html_snippet = f'<a href="{esc(page)}"><img src="{esc(badge)}" alt="{esc(alt)}"></a>'
    markdown = f"[![{_markdown_text(alt)}]({_markdown_url(badge)})]({_markdown_url(page)})"
    return html_snippet, markdown


def _query_value(value: str) -> str:
    return quote(value, safe="")


def _markdown_text(text: str) -> str:
    # Brackets and backslashes would end or escape the link text early.
    return "".join("\\" + ch if ch in "[]\\`*_<>" else ch for ch in text)


def _markdown_url(url: str) -> str:
    # Parentheses and spaces would end the link destination (the paths are already percent-encoded).
    return url.replace("(", "%28").replace(")", "%29").replace(" ", "%20")


def _embed(view: ModelPageView, public_url: str | None) -> str:
    several = len(view.routes) > 1
    blocks = []
    for route in view.routes:
        html_snippet, markdown = embed_snippets(view.model, route.router, public_url, several)
        preview_src = badge_path(view.model) + (f"?router={_query_value(route.router)}" if several else "")
        via = f"<h3>Via {esc(route.router)}</h3>" if several else ""
        blocks.append(
            f'{via}<p><img class="badge-preview" src="{esc(preview_src)}" alt="{esc(view.model)} badge"></p>'
            f'<p class="muted">HTML</p><pre class="snippet html"><code>{esc(html_snippet)}</code></pre>'
            f'<p class="muted">Markdown</p><pre class="snippet markdown"><code>{esc(markdown)}</code></pre>'
        )
    note = (
        ""
        if public_url
        else '<p class="note">These links are relative to this server: set <code>api.public_url</code>'
        " in probes.yaml to get them with its public address.</p>"
    )
    return f'<section aria-labelledby="embed-h"><h2 id="embed-h">Embed this badge</h2>{note}{"".join(blocks)}</section>'


def _footer(view: ModelPageView) -> str:
    several = len(view.routes) > 1
    paths = [model_json_path(view.model, route.router if several else None) for route in view.routes]
    links = ", ".join(f'<a href="{esc(path)}">{esc(path)}</a>' for path in paths)
    status = f" Status evaluated {time_html(view.status_updated_at)}." if view.status_updated_at else ""
    return (
        f"<footer><p>Figures from the stats of {time_html(view.updated_at)}.{status}"
        f" Machine-readable: {links}. {MISSING} = not measured.</p></footer>"
    )
