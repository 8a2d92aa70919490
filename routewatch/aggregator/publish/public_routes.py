"""Public status endpoints: the status page, its JSON twin, the incident list and the badges.

``setup_status_routes(app, reads=..., prices=...)`` registers them on an app
built by ``api.create_app`` (which sets ``AGGREGATOR``):

- ``GET /status``: the HTML status page (no JavaScript); a plain page that
  says why when status is not enabled or not computed yet.
- ``GET /status.json``: the same data for status aggregators
  (:func:`~.status_view.view_json` documents the shape).
- ``GET /v1/incidents?state=open|closed|all&limit=1..500``: the incident history.
- ``GET /badge/status.svg[?model=<id>]``: the overall (or one model's) state.
- ``GET /badge/<model id>.svg[?router=<name>]``: a model's embed badge
  (input price, p50 TTFT, router). Model ids contain ``/``.
- ``GET /status/models/<model id>``: one model's page (charts, time-of-day
  profile, providers, incidents, embed snippets; ``model_page.py``).

Every 200 goes through :func:`~.http_cache.cached_response` (ETag, 304,
``Cache-Control: public, max-age=<refresh interval>``, gzip). Errors are
sent without an ETag: a conditional request only applies to a 2xx (RFC 9110,
13.2.1). JSON errors are the API's (:mod:`.http_errors`: ``{"error":
{"status", "message", "parameter"}}``, ``Cache-Control: no-store``); badge
errors are explanatory SVG badges. ``openapi.py`` documents every route here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from aiohttp import web

from routewatch.aggregator.model_state import Incident
from routewatch.aggregator.model_state_store import INCIDENT_LIST_MAX, incident_json
from routewatch.aggregator.publish.badges import message_badge, model_badge, status_badge
from routewatch.aggregator.publish.http_cache import cached_response
from routewatch.aggregator.publish.http_errors import JSON_TYPE, ApiError
from routewatch.aggregator.publish.keys import AGGREGATOR, MODEL_PAGES, PUBLIC_STATUS, PUBLIC_URL
from routewatch.aggregator.publish.model_page import render_model_page
from routewatch.aggregator.publish.model_page_store import ModelPages
from routewatch.aggregator.publish.public_status import PublicStatus, Published, json_bytes
from routewatch.aggregator.publish.status_page import render_message_page, render_status_page
from routewatch.aggregator.publish.status_view import page_window, route_figures, view_json, with_listed_prices
from routewatch.aggregator.refresh import Aggregator, SeriesKey
from routewatch.config import RouterConfig
from routewatch.storage.errors import DATABASE_ERRORS
from routewatch.storage.read_pools import ReadPools

__all__ = ["INCIDENT_STATES", "input_prices", "setup_status_routes"]

log = logging.getLogger(__name__)

INCIDENT_STATES = ("all", "open", "closed")
DEFAULT_INCIDENT_LIMIT = 50
RETRY_AFTER_S = 5  # until the first refresh: refreshes take seconds, not minutes

HTML = "text/html; charset=utf-8"
JSON = JSON_TYPE
SVG = "image/svg+xml; charset=utf-8"

# Defence in depth for the HTML page and the SVGs, which carry names from
# configuration and data: even if an escape were missed, no script, frame,
# form or remote resource would load. Inline styles are all they need.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'"

NOT_ENABLED = "model status is not enabled on this server (no SLO configured)"
NOT_COMPUTED = "status not computed yet"


def input_prices(routers: Iterable[RouterConfig]) -> dict[SeriesKey, float]:
    """USD per 1M input tokens by (router, model), for every price in probes.yaml's routers."""
    return {(r.name, model): price.input for r in routers for model, price in r.prices.items()}


def setup_status_routes(
    app: web.Application,
    *,
    reads: ReadPools,
    prices: Mapping[SeriesKey, float] | None = None,
    public_url: str | None = None,
) -> None:
    """Register the public status routes on ``app``.

    ``reads`` is where the aggregator reads (the uptime and incident history
    are read there once per refresh: the read replica while it answers); ``prices`` maps (router,
    model) to USD per 1M input tokens, e.g. ``input_prices(config.routers)``;
    ``public_url`` (``api.public_url``) is the base of the model pages' embed snippets.
    ``app[AGGREGATOR]`` must be set before the first request.
    """
    app[PUBLIC_STATUS] = PublicStatus(reads, prices)
    app[MODEL_PAGES] = ModelPages(reads, app[PUBLIC_STATUS].prices)
    app[PUBLIC_URL] = public_url or ""
    app.router.add_get("/status", status_page)
    app.router.add_get("/status.json", status_json)
    # [\s\S]: ids are whatever routers call their models; the path is matched encoded, so %2F works too.
    app.router.add_get(r"/status/models/{model_id:[\s\S]+}", model_page)
    app.router.add_get("/v1/incidents", list_incidents)
    # Before the model badge route, whose pattern would also match "status".
    app.router.add_get("/badge/status.svg", state_badge)
    # [\s\S], not ".": an id with a decoded newline still gets its (404) badge, not the router's JSON 404.
    app.router.add_get(r"/badge/{model_id:[\s\S]+}.svg", model_badge_svg)


# ---------------------------------------------------------------- helpers


def _max_age(aggregator: Aggregator) -> float:
    return aggregator.interval_s


def _locked_down(resp: web.Response) -> web.Response:
    """``resp`` with the content security policy of documents that never run scripts."""
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


def _json_error(status: int, message: str, parameter: str | None = None) -> web.Response:
    """The app's JSON error (``http_errors``), with Retry-After on a 503."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return ApiError(status, message, parameter, headers=headers).response()


def _svg_error(svg: str, status: int, max_age: float) -> web.Response:
    """An explanatory badge with an error status: embeds show it instead of a broken image."""
    headers = {"Cache-Control": f"public, max-age={max(0, int(max_age))}"}
    if status == 503:
        headers = {"Cache-Control": "no-cache", "Retry-After": str(RETRY_AFTER_S)}
    return _locked_down(
        web.Response(body=svg.encode(), status=status, content_type="image/svg+xml", charset="utf-8", headers=headers)
    )


async def _published(request: web.Request) -> Published | None:
    """The current published data, or None when the database could not be read at all."""
    try:
        return await request.app[PUBLIC_STATUS].current(request.app[AGGREGATOR])
    except DATABASE_ERRORS as exc:
        log.warning("status page: cannot read uptime and incidents (%s)", exc.__class__.__name__)
        return None


# ---------------------------------------------------------------- page and JSON


async def status_page(request: web.Request) -> web.Response:
    """GET /status: the HTML status page."""
    aggregator = request.app[AGGREGATOR]
    if not aggregator.status_enabled:
        body = render_message_page(
            "Model status", "Model status is not enabled on this server: the aggregator runs without an SLO."
        )
        return _locked_down(cached_response(request, body.encode(), content_type=HTML, max_age=_max_age(aggregator)))
    if aggregator.status is None:
        body = render_message_page(
            "Model status", "The status has not been computed yet. This page fills in after the first refresh."
        )
        # Not for long: the first refresh is seconds away.
        return _locked_down(cached_response(request, body.encode(), content_type=HTML, max_age=RETRY_AFTER_S))
    published = await _published(request)
    if published is None:
        body = render_message_page("Model status", "The status database cannot be read right now.")
        return _locked_down(
            web.Response(
                text=body,
                status=503,
                content_type="text/html",
                headers={"Retry-After": str(RETRY_AFTER_S), "Cache-Control": "no-cache"},
            )
        )
    data, etag = published.body("html", lambda view: render_status_page(view).encode())
    return _locked_down(cached_response(request, data, content_type=HTML, max_age=_max_age(aggregator), etag=etag))


async def status_json(request: web.Request) -> web.Response:
    """GET /status.json: the status page's data as JSON (shape: ``status_view.view_json``)."""
    aggregator = request.app[AGGREGATOR]
    if not aggregator.status_enabled:
        return _json_error(404, NOT_ENABLED)
    if aggregator.status is None:
        return _json_error(503, NOT_COMPUTED)
    published = await _published(request)
    if published is None:
        return _json_error(503, "the status database cannot be read right now")
    data, etag = published.body("json", lambda view: json_bytes(view_json(view)))
    return cached_response(request, data, content_type=JSON, max_age=_max_age(aggregator), etag=etag)


async def model_page(request: web.Request) -> web.Response:
    """GET /status/models/<model id>: one model's page (HTML); 404 page for a model nobody publishes."""
    aggregator = request.app[AGGREGATOR]
    model = request.match_info["model_id"]
    if aggregator.snapshot is None:
        body = render_message_page("Model", "The figures have not been computed yet. This page fills in shortly.")
        return _locked_down(_html_error(body, 503))
    published = await _published(request) if aggregator.status is not None else None
    public_url = request.app[PUBLIC_URL] or None
    try:
        found = await request.app[MODEL_PAGES].body(
            aggregator, published, model, lambda view: render_model_page(view, public_url).encode()
        )
    except DATABASE_ERRORS as exc:
        log.warning("model page: cannot read its history (%s)", exc.__class__.__name__)
        body = render_message_page("Model", "The model's history cannot be read right now.")
        return _locked_down(_html_error(body, 503))
    if found is None:
        body = render_message_page("Unknown model", f"No model {model!r} is monitored here.")
        return _locked_down(_html_error(body, 404))
    data, etag = found
    return _locked_down(cached_response(request, data, content_type=HTML, max_age=_max_age(aggregator), etag=etag))


def _html_error(body: str, status: int) -> web.Response:
    """An HTML error page; a 503 says when to come back."""
    headers = {"Cache-Control": "no-cache"}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return web.Response(text=body, status=status, content_type="text/html", headers=headers)


# ---------------------------------------------------------------- incidents


def parse_incident_query(query: Mapping[str, str]) -> tuple[str, int] | web.Response:
    """``(state, limit)`` from ``?state=&limit=``, or the 400 response naming the bad parameter."""
    state = query.get("state", "all")
    if state not in INCIDENT_STATES:
        return _json_error(400, f"unknown state {state!r}; one of: {', '.join(INCIDENT_STATES)}", "state")
    raw = query.get("limit", str(DEFAULT_INCIDENT_LIMIT))
    # isdecimal: int() would also take " 5", "+5" and "٥"; a limit is plain digits.
    limit = int(raw) if raw.isascii() and raw.isdecimal() else None
    if limit is None or not 1 <= limit <= INCIDENT_LIST_MAX:
        return _json_error(400, f"limit must be an integer from 1 to {INCIDENT_LIST_MAX}, got {raw!r}", "limit")
    return state, limit


def select_incidents(
    open_: tuple[Incident, ...], closed: tuple[Incident, ...], state: str, limit: int
) -> list[Incident]:
    """Open incidents first, then closed ones newest first, filtered by ``state``, at most ``limit``."""
    chosen = {"open": open_, "closed": closed, "all": open_ + closed}[state]
    return list(chosen[:limit])


async def list_incidents(request: web.Request) -> web.Response:
    """GET /v1/incidents?state=open|closed|all&limit=1..500 (defaults: all, 50).

    Body: ``{"updated_at": <status time>, "state": "all", "limit": 50, "incidents": [{"id",
    "start", "end" (null while open), "worst_state" ("degraded"|"down"), "models" ([ids]),
    "suppressed" (inside planned maintenance)}]}``, open incidents first, then
    closed ones by end time, newest first.
    """
    aggregator = request.app[AGGREGATOR]
    if not aggregator.status_enabled:
        return _json_error(404, NOT_ENABLED)
    parsed = parse_incident_query(request.query)
    if isinstance(parsed, web.Response):
        return parsed
    state, limit = parsed
    if aggregator.status is None:
        return _json_error(503, NOT_COMPUTED)
    published = await _published(request)
    if published is None:
        return _json_error(503, "the status database cannot be read right now")
    updated = published.report.updated_at
    body = {
        "updated_at": updated.isoformat() if updated is not None else None,
        "state": state,
        "limit": limit,
        "incidents": [incident_json(i) for i in select_incidents(published.open, published.closed, state, limit)],
    }
    return cached_response(request, json_bytes(body), content_type=JSON, max_age=_max_age(aggregator))


# ---------------------------------------------------------------- badges


async def state_badge(request: web.Request) -> web.Response:
    """GET /badge/status.svg[?model=<id>]: the overall state, or one model's."""
    aggregator = request.app[AGGREGATOR]
    model = request.query.get("model")
    label = model if model is not None else "status"
    max_age = _max_age(aggregator)
    if not aggregator.status_enabled:
        return _svg_error(message_badge(label, "not enabled"), 404, max_age)
    report = aggregator.status
    if report is None:
        return _svg_error(message_badge(label, "pending"), 503, max_age)
    state = report.overall if model is None else next((m.state for m in report.models if m.model == model), None)
    if state is None:
        return _svg_error(message_badge(label, "unknown model"), 404, max_age)
    return _locked_down(
        cached_response(request, status_badge(label, state).encode(), content_type=SVG, max_age=max_age)
    )


async def model_badge_svg(request: web.Request) -> web.Response:
    """GET /badge/<model id>.svg[?router=<name>]: input price, p50 TTFT and router of one model.

    With the model on several routers, ``router`` picks one (default: the first configured).
    """
    aggregator = request.app[AGGREGATOR]
    model = request.match_info["model_id"]
    max_age = _max_age(aggregator)
    snapshot = aggregator.snapshot
    if snapshot is None:
        return _svg_error(message_badge(model, "pending"), 503, max_age)
    routes = route_figures(snapshot, model, with_listed_prices(request.app[PUBLIC_STATUS].prices, snapshot))
    if not routes:
        return _svg_error(message_badge(model, "unknown model"), 404, max_age)
    router = request.query.get("router")
    route = routes[0] if router is None else next((r for r in routes if r.router == router), None)
    if route is None:
        return _svg_error(message_badge(model, f"not via {router}"), 404, max_age)
    report = aggregator.status
    state = None
    if report is not None:
        state = next((m.state for m in report.models if m.model == model), None)
    svg = model_badge(model, route, state, page_window(snapshot))
    return _locked_down(cached_response(request, svg.encode(), content_type=SVG, max_age=max_age))
