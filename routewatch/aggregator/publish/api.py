"""The HTTP API the catalog pulls: models, their rolling stats, series and status.

Read endpoints are public and served from the aggregator's last snapshot:
each response body is serialized once per snapshot (``BodyCache``) and
served through ``http_cache.cached_response`` (ETag, 304, Cache-Control,
gzip), so the hot path is a dict lookup. Only ``/series`` reads the database
(``stats_history``), and its bodies are cached the same way.

Bad input is a JSON 400/404 naming the parameter; unknown paths and methods
are JSON 404/405 (``router_errors_as_json``). State-changing endpoints need
the bearer token (``ROUTEWATCH_ADMIN_TOKEN``, given to ``create_app``) and act through an
``AdminActions``.
The document at ``/openapi.json`` (``openapi.py``) describes all of it.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import logging
import math
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from aiohttp import web
from pydantic import SecretStr

from routewatch.aggregator.provider_cap import OTHER, UNKNOWN, is_named
from routewatch.aggregator.publish import openapi
from routewatch.aggregator.publish.cost_view import costs_json, price_json
from routewatch.aggregator.publish.http_cache import cached_response, etag_for
from routewatch.aggregator.publish.http_errors import JSON_TYPE, ApiError, Handler, dumps, error_payload, errors_as_json
from routewatch.aggregator.publish.http_errors import clip as _clip
from routewatch.aggregator.publish.ingest import IngestReceiver, setup_ingest_route
from routewatch.aggregator.publish.keys import AGGREGATOR
from routewatch.aggregator.publish.metrics import HealthSource, WorkerMetrics, setup_metrics_route
from routewatch.aggregator.publish.metrics_snapshot import DEFAULT_EXPORT, MetricsExport
from routewatch.aggregator.publish.openapi import (
    MAX_COST_DAYS,
    MAX_SERIES_POINTS,
    SERIES_BUCKETS,
    SERIES_METRICS,
    STATES,
)
from routewatch.aggregator.publish.public_routes import setup_status_routes
from routewatch.aggregator.publish.served_models import served_model_cells
from routewatch.aggregator.refresh import Aggregator, Snapshot
from routewatch.aggregator.rollup import BREAKDOWNS
from routewatch.aggregator.stats import ModelStats
from routewatch.config.model import Price
from routewatch.config.settings import ENV_ADMIN_TOKEN
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.errors import DATABASE_ERRORS
from routewatch.storage.history_queries import series_points
from routewatch.storage.read_pools import ReadPools

log = logging.getLogger(__name__)

CATALOG_WINDOW = "7d"
READY_INTERVALS = 3  # /readyz fails once the last refresh is older than this many intervals
SERIES_SPAN = timedelta(days=7)  # default from = to - SERIES_SPAN
SERIES_TIMEOUT_S = 5.0
SERVED_MODEL = "served_model"  # the breakdown read from the probes, not from the rollup
# Cached bodies per snapshot, beyond the first of each request shape: explicit
# from/to values and query-string spellings are unbounded, the memory is not.
MAX_CACHED_BODIES = 4096
_BUCKET_UNITS = {"1h": ("hour", timedelta(hours=1)), "1d": ("day", timedelta(days=1))}

assert set(_BUCKET_UNITS) == set(SERIES_BUCKETS)


# ---------------------------------------------------------------- errors
# ApiError and the error shape live in http_errors.py, shared with public_routes.py.


class ConfigRejected(Exception):
    """``AdminActions.reload_config``: the file is not valid; ``issues`` as file:line: field: message."""

    def __init__(self, issues: list[str]) -> None:
        super().__init__("\n".join(issues))
        self.issues = issues


def cached_read(render: Handler) -> Handler:
    """A public read that answers from the per-snapshot body cache first.

    Hot path: a request spelled exactly as one served before in this
    generation is a dictionary lookup. Otherwise ``render`` (with
    ``errors_as_json``) validates the query, builds and caches the body.
    """
    guarded = errors_as_json(render)

    @functools.wraps(render)
    async def handler(request: web.Request) -> web.Response:
        api = request.app[API]
        body = api.cache.hit(api.aggregator, request.raw_path)
        if body is None:
            return await guarded(request)
        return api.respond(request, body)

    return handler


async def router_errors_as_json(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: aiohttp's own 404 (no route) and 405 (wrong method) as JSON errors.

    Only the router's answers are rewritten (the request has no route);
    what handlers send, in any format, is left as it is.
    """
    if response.status < 400:
        return  # every successful response passes here: leave it at one comparison
    exc = request.match_info.http_exception
    if exc is None or not isinstance(response, web.Response):
        return
    if exc.status == 404:
        message = f"no such path: {_clip(request.path)}"
    elif exc.status == 405:
        message = f"method {_clip(request.method)} is not allowed here; allowed: {exc.headers.get('Allow', '')}"
    else:
        message = exc.reason
    body = dumps(error_payload(exc.status, message))
    response.body = body
    # Set directly: aiohttp filled in the text error's type and length already.
    response.headers["Content-Type"] = JSON_TYPE
    response.headers["Content-Length"] = str(len(body))
    response.headers["Cache-Control"] = "no-store"


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once and all of them known."""
    out: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise ApiError(400, f"unknown query parameter {_clip(name)!r}; known here: {known}", _clip(name))
        if name in out:
            raise ApiError(400, f"query parameter {name!r} is given more than once", name)
        out[name] = value
    return out


def _choice(query: Mapping[str, str], name: str, choices: tuple[str, ...], default: str | None) -> str | None:
    value = query.get(name, default)
    if value is not None and value not in choices:
        raise ApiError(400, f"{name} must be one of {', '.join(choices)}; got {_clip(value)!r}", name)
    return value


# ---------------------------------------------------------------- per-snapshot bodies


@dataclass(frozen=True, slots=True)
class Body:
    """A response body serialized once, with its ETag."""

    data: bytes
    etag: str


def make_body(payload: Any) -> Body:
    """``payload`` serialized, with its ETag."""
    data = dumps(payload)
    return Body(data, etag_for(data))


class BodyCache:
    """Response bodies of one generation (a snapshot and a status report, by identity).

    A new snapshot or status report starts a new, empty generation, so a body
    is never served for figures other than those it was built from. Entries
    are keyed twice: by the normalized request (so equivalent spellings share
    one body) and by the raw request (so a repeat skips validation too).
    """

    def __init__(self, max_entries: int = MAX_CACHED_BODIES) -> None:
        self._max = max_entries
        self._generation: tuple[object, object] = (None, None)
        self._bodies: dict[Hashable, Body] = {}
        self._routers: dict[str, list[str]] | None = None

    def generation(self, snapshot: Snapshot, status: object) -> dict[Hashable, Body]:
        """The bodies of (``snapshot``, ``status``), emptied when either changed."""
        gen = self._generation
        if gen[0] is not snapshot or gen[1] is not status:
            self._generation = (snapshot, status)
            self._bodies = {}
            self._routers = None
        return self._bodies

    def hit(self, aggregator: Aggregator, raw_path: str) -> Body | None:
        """The body served before for ``raw_path`` (path and query as sent) in the current generation."""
        gen = self._generation
        if gen[0] is not aggregator.snapshot or gen[1] is not aggregator.status:
            return None
        return self._bodies.get(raw_path)

    def routers_of(self, snapshot: Snapshot, model: str) -> list[str]:
        """The routers ``model`` is published for in ``snapshot`` (indexed once per generation)."""
        if self._routers is None or self._generation[0] is not snapshot:
            index: dict[str, list[str]] = {}
            for router, name in snapshot.models:
                index.setdefault(name, []).append(router)
            self._routers = index
        return self._routers.get(model, [])

    def store(self, bodies: dict[Hashable, Body], key: Hashable, alias: Hashable, payload: Any) -> Body:
        """Serialize ``payload`` under ``key`` and ``alias``; return its Body."""
        body = make_body(payload)
        self._put(bodies, key, body)
        self._put(bodies, alias, body)
        return body

    def get_or_store(
        self, bodies: dict[Hashable, Body], key: Hashable, alias: Hashable, build: Callable[[], Any]
    ) -> Body:
        """The body under ``key`` (remembered under ``alias`` too), serialized from ``build()`` if there is none."""
        known = bodies.get(key)
        if known is not None:
            return self.link(bodies, alias, known)
        return self.store(bodies, key, alias, build())

    def link(self, bodies: dict[Hashable, Body], alias: Hashable, body: Body) -> Body:
        """Remember ``body`` under ``alias`` too (another spelling of the same request)."""
        self._put(bodies, alias, body)
        return body

    def _put(self, bodies: dict[Hashable, Body], key: Hashable, body: Body) -> None:
        if len(bodies) < self._max:
            bodies[key] = body


# ---------------------------------------------------------------- admin


class AdminActions(Protocol):
    """What the token-protected endpoints do; ``routewatch run`` provides one (routewatch/admin.py)."""

    async def probe_now(self, model_id: str) -> list[dict[str, Any]]:
        """Probe every series of ``model_id`` once; results as ``probe_result_json``.

        Raises LookupError when no configured series probes the model."""
        ...

    async def reload_config(self) -> dict[str, Any]:
        """Re-read the config file; a ReloadReport (openapi.py). Raises ConfigRejected when invalid."""
        ...


def probe_result_json(result: ProbeResult) -> dict[str, Any]:
    """One probe result as JSON (the ProbeResult schema): uuid and datetimes as strings."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        out[f.name] = value
    return out


class _Token:
    """The admin token; never part of a repr, a log line or a response."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value.encode("utf-8", "surrogatepass")

    def __repr__(self) -> str:
        return "_Token(<redacted>)"

    def matches(self, given: str) -> bool:
        """Constant-time comparison with ``given``."""
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._value)


# ---------------------------------------------------------------- application state


@dataclass(slots=True)
class ApiState:
    """What the handlers share: the aggregator, where it reads (its pools), the cache, the admin side."""

    aggregator: Aggregator
    reads: ReadPools | None
    admin: AdminActions | None
    token: _Token | None
    cache: BodyCache = dataclasses.field(default_factory=BodyCache)
    prices: Mapping[tuple[str, str], Price] = dataclasses.field(default_factory=dict)  # probes.yaml's
    # /v1/costs' bodies: of a snapshot and the budget report read in the same refresh.
    costs_cache: BodyCache = dataclasses.field(default_factory=BodyCache)
    openapi_bodies: dict[tuple[str, ...] | None, Body] = dataclasses.field(default_factory=dict)

    def snapshot(self) -> Snapshot:
        """The current snapshot, or a 503 while the first refresh has not finished."""
        snap = self.aggregator.snapshot
        if snap is None:
            raise ApiError(503, "stats not computed yet", headers={"Retry-After": "5"})
        return snap

    def bodies(self, snap: Snapshot) -> dict[Hashable, Body]:
        """The cached bodies of ``snap`` (and of the status read with it)."""
        return self.cache.generation(snap, self.aggregator.status)

    def store_read(self, snap: Snapshot, key: Hashable, raw_path: str, payload: Any) -> Body:
        """``payload``, read from the database for ``snap``, as a body: cached under ``key``
        unless a refresh landed during the read (then served, but filed under no snapshot)."""
        if self.aggregator.snapshot is snap:
            return self.cache.store(self.bodies(snap), key, raw_path, payload)
        return make_body(payload)

    def respond(self, request: web.Request, body: Body) -> web.Response:
        """``body`` with ETag/304/Cache-Control/gzip, cacheable for one refresh interval."""
        return cached_response(
            request, body.data, content_type=JSON_TYPE, max_age=self.aggregator.interval_s, etag=body.etag
        )


API = web.AppKey("routewatch_api", ApiState)
# Set by the process that serves the app: one line per long-lived part that
# died (routewatch/supervision.py). Non-empty: /readyz answers 503.
FAILED_COMPONENTS = web.AppKey("failed_components", list)


def _default_window(snap: Snapshot) -> str:
    return CATALOG_WINDOW if CATALOG_WINDOW in snap.windows else snap.windows[-1]


def _resolve(api: ApiState, snap: Snapshot, model: str, query: Mapping[str, str]) -> tuple[str, str]:
    """(window, router) for ``model`` from the query, or a 400/404 naming the parameter."""
    window = _choice(query, "window", snap.windows, _default_window(snap))
    assert window is not None
    routers = api.cache.routers_of(snap, model)
    if not routers:
        raise ApiError(404, f"no model {_clip(model)!r} is monitored", "id")
    router = query.get("router")
    if router is None:
        if len(routers) > 1:
            raise ApiError(400, f"model {model!r} is probed on several routers; add router=one of {routers}", "router")
        return window, routers[0]
    if router not in routers:
        raise ApiError(404, f"model {model!r} is not probed on router {_clip(router)!r}", "router")
    return window, router


# ---------------------------------------------------------------- public reads


@cached_read
async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models[?provider=][&state=]: every model with its catalog-window stats."""
    api = request.app[API]
    snap = api.snapshot()
    bodies = api.bodies(snap)
    query = _query(request, ("provider", "state"))
    state = _choice(query, "state", STATES, None)
    provider = query.get("provider")
    key = ("models", provider, state)
    body = api.cache.get_or_store(bodies, key, request.raw_path, lambda: _listing(api, snap, provider, state))
    return api.respond(request, body)


def _listing(api: ApiState, snap: Snapshot, provider: str | None, state: str | None) -> dict[str, Any]:
    window = _default_window(snap)
    report = api.aggregator.status
    # Status is per model id (whatever the router); a model it has no verdict on is unknown.
    states = {m.model: m.state.value for m in report.models} if report is not None else {}
    spent = _spent_today(api)
    models = []
    for router, model in snap.models:
        labels = snap.stats[window][(router, model)].breakdown.get("provider", {})
        model_state = states.get(model, "unknown")
        if (provider is not None and provider not in labels) or (state is not None and model_state != state):
            continue
        models.append(
            {
                **_listing_entry(snap, router, model, window, model_state),
                "cost_today_usd": spent.get((router, model)),
                "price": _price(api, snap, (router, model)),
            }
        )
    return {
        "window": window,
        "updated_at": snap.updated_at.isoformat(),
        "status_enabled": api.aggregator.status_enabled,
        "models": models,
    }


def _spent_today(api: ApiState) -> dict[tuple[str, str], float]:
    """USD per (router, model) its priced probes cost today (UTC), as the budget last read it."""
    budget = api.aggregator.budget.report
    spent: dict[tuple[str, str], float] = {}
    if budget is not None:
        for spend in budget.today():
            if spend.priced_probes:
                key = (spend.router, spend.model)
                spent[key] = spent.get(key, 0.0) + spend.cost_usd
    return spent


def _price(api: ApiState, snap: Snapshot, key: tuple[str, str]) -> dict[str, Any] | None:
    """The price ``key``'s probes are costed at, and its source (probes.yaml, else the router's list)."""
    return price_json(api.prices.get(key), snap.catalog.get(key))


def _listing_entry(snap: Snapshot, router: str, model: str, window: str, state: str) -> dict[str, Any]:
    """One model of the listing: its state, providers and ``window``'s stats."""
    stats = snap.stats[window][(router, model)]
    return {
        "id": model,
        "router": router,
        "state": state,
        "providers": _providers(stats.breakdown.get("provider", {})),
        "retired": snap.retired_at((router, model)) is not None,
        "retired_at": _retired_at(snap, (router, model)),
        "stats": stats.as_json(),
    }


def _retired_at(snap: Snapshot, key: tuple[str, str]) -> str | None:
    """When the router's model list stopped naming the model (ISO 8601); None while listed or not discovered."""
    at = snap.retired_at(key)
    return at.isoformat() if at is not None else None


def _providers(labels: Iterable[str]) -> list[str | None]:
    """A model's provider cells as listed: names sorted, then ``other``, then null for no provider."""
    present = set(labels)
    named = sorted(label for label in present if is_named(label))
    return [*named, *([OTHER] if OTHER in present else []), *([None] if UNKNOWN in present else [])]


@cached_read
async def model_stats(request: web.Request) -> web.Response:
    """GET /v1/models/{id}/stats?window=7d[&by=provider|region|served_model][&router=name]: one model, one window."""
    api, snap, model, query = _model_request(request, ("window", "router", "by"))
    window, router = _resolve(api, snap, model, query)
    by = _choice(query, "by", (*BREAKDOWNS, SERVED_MODEL), None)
    key = ("stats", router, model, window, by)
    bodies = api.bodies(snap)
    if by == SERVED_MODEL and bodies.get(key) is None:
        payload = snap.stats[window][(router, model)].as_json()
        payload["breakdown"] = {SERVED_MODEL: await _read_served(api.reads, snap.stats[window][(router, model)])}
        return api.respond(request, api.store_read(snap, key, request.raw_path, payload))
    body = api.cache.get_or_store(bodies, key, request.raw_path, lambda: _stats_json(snap, router, model, window, by))
    return api.respond(request, body)


def _model_request(request: web.Request, allowed: tuple[str, ...]) -> tuple[ApiState, Snapshot, str, dict[str, str]]:
    """What a handler of ``/v1/models/{id}...`` starts from: the state, the snapshot, the model id
    and the query (a 400 for a parameter not in ``allowed``)."""
    api = request.app[API]
    return api, api.snapshot(), request.match_info["id"], _query(request, allowed)


@cached_read
async def model_detail(request: web.Request) -> web.Response:
    """GET /v1/models/{id}[?router=name]: one model as the listing shows it, plus every window in full."""
    api, snap, model, query = _model_request(request, ("router",))
    _, router = _resolve(api, snap, model, query)
    bodies = api.bodies(snap)
    key = ("model", router, model)
    body = api.cache.get_or_store(bodies, key, request.raw_path, lambda: _detail_json(api, snap, router, model))
    return api.respond(request, body)


def _detail_json(api: ApiState, snap: Snapshot, router: str, model: str) -> dict[str, Any]:
    window = _default_window(snap)
    report = api.aggregator.status
    state = next((m.state.value for m in report.models if m.model == model), "unknown") if report else "unknown"
    return {
        **_listing_entry(snap, router, model, window, state),
        "cost_today_usd": _spent_today(api).get((router, model)),
        "price": _price(api, snap, (router, model)),
        "routers": api.cache.routers_of(snap, model),
        "window": window,
        "updated_at": snap.updated_at.isoformat(),
        "status_enabled": api.aggregator.status_enabled,
        "windows": {w: _full_stats_json(snap.stats[w][(router, model)]) for w in snap.windows},
    }


def _full_stats_json(stats: ModelStats) -> dict[str, Any]:
    """``stats`` with every breakdown dimension (present even when empty)."""
    payload = stats.as_json()
    payload["breakdown"] = {
        dim: {value: cell.as_json() for value, cell in sorted(stats.breakdown.get(dim, {}).items())}
        for dim in BREAKDOWNS
    }
    return payload


def _stats_json(snap: Snapshot, router: str, model: str, window: str, by: str | None) -> dict[str, Any]:
    stats = snap.stats[window][(router, model)]
    payload = stats.as_json()
    if by is not None:
        # as_json(breakdown=True)'s shape, for the one dimension asked for (present even when empty).
        cells = stats.breakdown.get(by, {})
        payload["breakdown"] = {by: {value: cell.as_json() for value, cell in sorted(cells.items())}}
    return payload


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """A validated /series request: what to read from stats_history."""

    router: str
    model: str
    window: str
    metric: str
    bucket: str
    start: datetime
    end: datetime


@cached_read
async def model_series(request: web.Request) -> web.Response:
    """GET /v1/models/{id}/series?metric=&bucket=&from=&to=: one published figure over time."""
    api = request.app[API]
    snap = api.snapshot()
    series = _series_query(api, snap, request.match_info["id"], request)
    known = api.bodies(snap).get(series)
    if known is not None:
        body = api.cache.link(api.bodies(snap), request.raw_path, known)
    else:
        body = api.store_read(snap, series, request.raw_path, await _read_series(api.reads, series))
    return api.respond(request, body)


def _series_query(api: ApiState, snap: Snapshot, model: str, request: web.Request) -> SeriesQuery:
    query = _query(request, ("metric", "bucket", "from", "to", "window", "router"))
    window, router = _resolve(api, snap, model, query)
    metric = _choice(query, "metric", tuple(SERIES_METRICS), "ttft_p50")
    bucket = _choice(query, "bucket", SERIES_BUCKETS, "1h")
    assert metric is not None and bucket is not None
    # Default end: the snapshot's time, the newest figures there are; it also
    # keeps the default request one cacheable body per snapshot.
    end = _timestamp(query["to"], "to") if "to" in query else snap.updated_at
    if "from" in query:
        start = _timestamp(query["from"], "from")
    else:
        try:
            start = end - SERIES_SPAN
        except OverflowError:
            raise ApiError(400, "to is too early for the default range (to - 7d); give from", "to") from None
    if start >= end:
        raise ApiError(400, "from must be before to", "from")
    step = _BUCKET_UNITS[bucket][1]
    points = math.ceil((end - start) / step) + 1  # a range not aligned to buckets touches one more
    if points > MAX_SERIES_POINTS:
        raise ApiError(
            400,
            f"from..to spans {points} buckets of {bucket}; at most {MAX_SERIES_POINTS}: "
            "shorten the range or use a larger bucket",
            "from",
        )
    return SeriesQuery(router, model, window, metric, bucket, start, end)


def _timestamp(value: str, name: str) -> datetime:
    """An ISO-8601 timestamp in UTC; without an offset it is taken as UTC."""
    for candidate in (value, value.replace(" ", "+")):  # an unescaped '+' arrives as a space
        try:
            parsed = datetime.fromisoformat(candidate)
            break
        except ValueError:
            continue
    else:
        raise ApiError(
            400, f"{name} must be an ISO-8601 timestamp such as 2024-05-01T00:00:00Z; got {_clip(value)!r}", name
        )
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ApiError(400, f"{name} is out of range", name) from None


async def _read_served(reads: ReadPools | None, stats: ModelStats) -> dict[str, Any]:
    """The by=served_model cells, read from the probes of the window (on the read replica while it answers)."""
    if reads is None:
        raise ApiError(503, "the served-model breakdown is not available: this server has no database pool")
    try:
        async with reads.connection() as conn:
            return await served_model_cells(conn, stats, SERIES_TIMEOUT_S)
    except DATABASE_ERRORS as exc:
        log.warning("served-model read failed (%s)", exc.__class__.__name__)
        raise ApiError(503, "the database is unavailable; try again shortly", headers={"Retry-After": "5"}) from None


async def _read_series(reads: ReadPools | None, q: SeriesQuery) -> dict[str, Any]:
    """The last snapshot's value in each bucket (DISTINCT ON picks the newest row per bucket);
    from the read replica while it answers."""
    if reads is None:
        raise ApiError(503, "series are not available: this server has no database pool")
    column = SERIES_METRICS[q.metric]  # from a fixed map, never from the request text
    unit = _BUCKET_UNITS[q.bucket][0]
    try:
        async with reads.connection() as conn:
            rows = await series_points(
                conn, q.router, q.model, q.window, column, unit, q.start, q.end, timeout=SERIES_TIMEOUT_S
            )
    except DATABASE_ERRORS as exc:
        log.warning("series read failed (%s)", exc.__class__.__name__)
        raise ApiError(503, "the database is unavailable; try again shortly", headers={"Retry-After": "5"}) from None
    return {
        "model": q.model,
        "router": q.router,
        "window": q.window,
        "metric": q.metric,
        "bucket": q.bucket,
        "from": q.start.isoformat(),
        "to": q.end.isoformat(),
        "aggregation": "last",
        "points": [{"t": r["b"].isoformat(), "taken_at": r["taken_at"].isoformat(), "value": r["v"]} for r in rows],
    }


@errors_as_json
async def status(request: web.Request) -> web.Response:
    """GET /v1/status: every model's state, the overall state, open and recent incidents."""
    api = request.app[API]
    _query(request, ())
    if not api.aggregator.status_enabled:
        raise ApiError(404, "model status is not enabled on this server (no SLO configured)")
    report = api.aggregator.status
    if report is None:
        raise ApiError(503, "status not computed yet", headers={"Retry-After": "5"})
    bodies = api.cache.generation(api.snapshot(), report)
    body = bodies.get("status")
    if body is None:
        body = api.cache.store(bodies, "status", "status", report.as_json())
    return api.respond(request, body)


@errors_as_json
async def costs(request: web.Request) -> web.Response:
    """GET /v1/costs[?days=1][&router=][&model=]: spend per router, model and UTC day, and the budget."""
    api = request.app[API]
    query = _query(request, ("days", "router", "model"))
    days = _int_param(query, "days", 1, MAX_COST_DAYS)
    report = api.aggregator.budget.report
    if report is None:
        raise ApiError(503, "spend not read yet", headers={"Retry-After": "5"})
    snap = api.snapshot()
    router, model = query.get("router"), query.get("model")

    def build() -> dict[str, Any]:
        keys = {(s.router, s.model) for s in report.spend}
        prices = {key: price_json(api.prices.get(key), snap.catalog.get(key)) for key in keys}
        return costs_json(report, days, router, model, prices)

    # The spend changes once per refresh, with the snapshot: cached like the other aggregate bodies.
    bodies = api.costs_cache.generation(snap, report)
    return api.respond(request, api.costs_cache.get_or_store(bodies, (days, router, model), request.raw_path, build))


def _int_param(query: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    """A whole-number query parameter from 1 to ``maximum``, or a 400 naming it."""
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise ApiError(400, f"{name} must be a whole number from 1 to {maximum}, not {_clip(raw)!r}", name)
    return int(raw)


@errors_as_json
async def openapi_document(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI 3.1 document, with the configured windows as the window enum."""
    api = request.app[API]
    _query(request, ())
    snap = api.aggregator.snapshot
    windows = snap.windows if snap is not None else None
    body = api.openapi_bodies.get(windows)
    if body is None:
        body = api.openapi_bodies[windows] = make_body(openapi.build(windows))
    return api.respond(request, body)


# ---------------------------------------------------------------- health


def _uncached(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=dumps(payload), headers={"Content-Type": JSON_TYPE, "Cache-Control": "no-store"}
    )


@errors_as_json
async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is up (stats may still be computing)."""
    _query(request, ())
    aggregator = request.app[API].aggregator
    snap = aggregator.snapshot
    return _uncached(
        {
            "status": "ok",
            "role": aggregator.role,
            "refreshes": aggregator.refreshes,
            "updated_at": snap.updated_at.isoformat() if snap else None,
        }
    )


@errors_as_json
async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: 200 when a snapshot exists and is younger than READY_INTERVALS refreshes, else 503.

    Also 503, whatever the snapshot, once a long-lived part of the process has died (FAILED_COMPONENTS).
    """
    _query(request, ())
    aggregator = request.app[API].aggregator
    limit = READY_INTERVALS * aggregator.interval_s
    snap = aggregator.snapshot
    failed = request.app.get(FAILED_COMPONENTS)
    if failed:
        age_s = None if snap is None else round((datetime.now(UTC) - snap.updated_at).total_seconds(), 3)
        return _uncached(
            {
                "status": "not_ready",
                "reason": "; ".join(failed),
                "updated_at": snap.updated_at.isoformat() if snap else None,
                "age_s": age_s,
                "max_age_s": limit,
            },
            503,
        )
    if snap is None:
        return _uncached(
            {
                "status": "not_ready",
                "reason": "no stats snapshot yet: the first refresh has not finished",
                "updated_at": None,
                "age_s": None,
                "max_age_s": limit,
            },
            503,
        )
    age = (datetime.now(UTC) - snap.updated_at).total_seconds()
    body = {
        "status": "ready",
        "reason": None,
        "updated_at": snap.updated_at.isoformat(),
        "age_s": round(age, 3),
        "max_age_s": limit,
    }
    if age > limit:
        body["status"] = "not_ready"
        body["reason"] = f"the last stats refresh was {age:.1f}s ago, more than {READY_INTERVALS} intervals"
        return _uncached(body, 503)
    return _uncached(body)


# ---------------------------------------------------------------- admin endpoints


def _authorize(request: web.Request) -> AdminActions:
    """The admin actions, once the bearer token checks out; 403 when disabled, 401 when wrong."""
    api = request.app[API]
    if api.token is None:
        raise ApiError(403, f"admin endpoints are disabled: {ENV_ADMIN_TOKEN} is not set")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        raise ApiError(
            401,
            "this endpoint needs Authorization: Bearer <token>",
            "Authorization",
            headers={"WWW-Authenticate": 'Bearer realm="routewatch"'},
        )
    if not api.token.matches(given):
        # Nothing about the token that was sent goes into the answer or the log.
        raise ApiError(
            401,
            "the bearer token is not valid",
            "Authorization",
            headers={"WWW-Authenticate": 'Bearer realm="routewatch", error="invalid_token"'},
        )
    if api.admin is None:
        raise ApiError(403, "admin actions are not available in this process")
    return api.admin


@errors_as_json
async def probe_model(request: web.Request) -> web.Response:
    """POST /v1/models/{id}/probe: probe the model now on every router and prompt (admin)."""
    admin = _authorize(request)
    _query(request, ())
    model = request.match_info["id"]
    log.info("admin: probing %r now", _clip(model))
    try:
        results = await admin.probe_now(model)
    except LookupError:
        raise ApiError(404, f"no configured router probes model {_clip(model)!r}", "id") from None
    return _uncached({"model": model, "results": results})


@errors_as_json
async def reload_config(request: web.Request) -> web.Response:
    """POST /v1/config/reload: re-read probes.yaml; a bad file is a 400 and the old config stays (admin)."""
    admin = _authorize(request)
    _query(request, ())
    log.info("admin: config reload requested")
    try:
        report = await admin.reload_config()
    except ConfigRejected as exc:
        raise ApiError(
            400, "the config file is not valid; the running configuration is kept:\n" + str(exc), issues=exc.issues
        ) from None
    return _uncached(report)


# ---------------------------------------------------------------- application


def setup_routes(app: web.Application) -> None:
    """The API's routes. Model ids contain '/', so an id runs up to the final path segment."""
    app.router.add_get("/v1/models", list_models)
    app.router.add_get(r"/v1/models/{id:.+}/stats", model_stats)
    app.router.add_get(r"/v1/models/{id:.+}/series", model_series)
    app.router.add_post(r"/v1/models/{id:.+}/probe", probe_model)
    # The rest of the path is the id, unless it ends in one of the sub-resources above:
    # an id that itself ends in "/stats" is asked for with that "/" sent as %2F (matched encoded).
    app.router.add_get(r"/v1/models/{id:[\s\S]+(?<!/stats)(?<!/series)(?<!/probe)}", model_detail)
    app.router.add_post("/v1/config/reload", reload_config)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/costs", costs)
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def create_app(
    aggregator: Aggregator,
    *,
    admin: AdminActions | None = None,
    admin_token: SecretStr | None = None,
    prices: Mapping[tuple[str, str], float] | None = None,
    model_prices: Mapping[tuple[str, str], Price] | None = None,
    prober_health: HealthSource | None = None,
    prober_workers: WorkerMetrics | None = None,
    ingest: IngestReceiver | None = None,
    metrics: MetricsExport = DEFAULT_EXPORT,
    public_url: str | None = None,
) -> web.Application:
    """Everything routewatch serves over ``aggregator``'s snapshots: the catalog API,
    the status page and its JSON twin, badges, ``/metrics`` and the ingest endpoint.

    ``admin`` serves the token-protected endpoints, which also need
    ``admin_token`` (the ``ROUTEWATCH_ADMIN_TOKEN`` setting; None or blank: disabled).
    ``prices``: USD per 1M input tokens per (router, model), for the badges;
    ``model_prices``: the prices probes.yaml gives per (router, model), for ``/v1/costs`` and ``/v1/models``.
    ``prober_health``: a prober on this process's loop, for ``/metrics``;
    ``prober_workers``: the families of ``routewatch run``'s prober workers, for ``/metrics``.
    ``ingest``: the regions' tokens and the store behind ``POST /v1/ingest`` (None: it answers 403).
    ``metrics``: which windows and breakdowns of the stats ``/metrics`` exports.
    ``public_url``: this server's public address (``api.public_url``), for the model pages' embed snippets.
    """
    token = admin_token.get_secret_value().strip() if admin_token is not None else ""
    app = web.Application()
    app.on_response_prepare.append(router_errors_as_json)
    app[AGGREGATOR] = aggregator
    app[API] = ApiState(
        aggregator, aggregator.reads, admin, _Token(token) if token else None, prices=dict(model_prices or {})
    )
    setup_routes(app)
    setup_status_routes(app, reads=aggregator.reads, prices=prices, public_url=public_url)
    setup_metrics_route(app, aggregator, prober_health, metrics, prober_workers)
    setup_ingest_route(app, ingest)
    return app
