"""The HTTP API the catalog pulls: models, their rolling stats and their status.

Read endpoints are public and served from the aggregator's last snapshot,
so a request never touches the database.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .keys import AGGREGATOR
from .refresh import Aggregator, Snapshot

CATALOG_WINDOW = "7d"


def _error(status: int, message: str, parameter: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": {"status": status, "message": message}}
    if parameter is not None:
        body["error"]["parameter"] = parameter
    return web.json_response(body, status=status)


def _snapshot(request: web.Request) -> Snapshot:
    snap = request.app[AGGREGATOR].snapshot
    if snap is None:
        raise web.HTTPServiceUnavailable(
            text='{"error": {"status": 503, "message": "stats not computed yet"}}',
            content_type="application/json",
            headers={"Retry-After": "5"},
        )
    return snap


def _cached(request: web.Request, body: Any) -> web.Response:
    resp = web.json_response(body)
    # Figures change only at a refresh; let clients and caches keep them that long.
    resp.headers["Cache-Control"] = f"public, max-age={int(request.app[AGGREGATOR].interval_s)}"
    return resp


def _default_window(snap: Snapshot) -> str:
    return CATALOG_WINDOW if CATALOG_WINDOW in snap.windows else snap.windows[-1]


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: every model with its catalog-window stats."""
    snap = _snapshot(request)
    window = _default_window(snap)
    models = [
        {"id": model, "router": router, "stats": snap.stats[window][(router, model)].as_json()}
        for router, model in snap.models
    ]
    return _cached(request, {"window": window, "updated_at": snap.updated_at.isoformat(), "models": models})


async def model_stats(request: web.Request) -> web.Response:
    """GET /v1/models/{id}/stats?window=7d[&router=name]: one model, one window."""
    snap = _snapshot(request)
    model_id = request.match_info["model_id"]
    window = request.query.get("window", _default_window(snap))
    if window not in snap.windows:
        return _error(400, f"unknown window {window!r}; one of: {', '.join(snap.windows)}", "window")
    routers = [r for r, m in snap.models if m == model_id]
    if not routers:
        return _error(404, f"no model {model_id!r} is monitored", "id")
    router = request.query.get("router")
    if router is None:
        if len(routers) > 1:
            return _error(400, f"model {model_id!r} is probed on several routers; add router=one of {routers}", "router")
        router = routers[0]
    elif router not in routers:
        return _error(404, f"model {model_id!r} is not probed on router {router!r}", "router")
    return _cached(request, snap.stats[window][(router, model_id)].as_json())


async def status(request: web.Request) -> web.Response:
    """GET /v1/status: every model's state, the overall state, open and recent incidents."""
    aggregator = request.app[AGGREGATOR]
    if not aggregator.status_enabled:
        return _error(404, "model status is not enabled on this server (no SLO configured)")
    if aggregator.status is None:
        return web.json_response(
            {"error": {"status": 503, "message": "status not computed yet"}},
            status=503,
            headers={"Retry-After": "5"},
        )
    return _cached(request, aggregator.status.as_json())


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is up (stats may still be computing)."""
    aggregator = request.app[AGGREGATOR]
    snap = aggregator.snapshot
    return web.json_response({
        "status": "ok",
        "role": aggregator.role,
        "refreshes": aggregator.refreshes,
        "updated_at": snap.updated_at.isoformat() if snap else None,
    })


def create_app(aggregator: Aggregator) -> web.Application:
    """The API application over ``aggregator``'s snapshots."""
    app = web.Application()
    app[AGGREGATOR] = aggregator
    app.router.add_get("/v1/models", list_models)
    # Model ids contain '/', so the id pattern runs up to the final /stats.
    app.router.add_get(r"/v1/models/{model_id:.+}/stats", model_stats)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/healthz", healthz)
    return app
