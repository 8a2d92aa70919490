"""``POST /v1/ingest/catalog``: a pushing prober's read of a router's model list, into the central catalog.

A prober without a database (``ingest:``) reads its discovering routers'
lists like any prober; this is how each read reaches ``model_catalog`` on the
central server, so that the central API and status page mark its vanished
models retired, its listed prices cost its probes in ``/v1/costs`` and the
status engine knows its models are still listed. The body::

    {"router": "openrouter", "seen": "2026-11-30T08:00:00+00:00", "complete": true,
     "models": [{"id": "openai/gpt-4.1", "input": 2.0, "output": 8.0, "cached_input": 0.5}, ...],
     "keep": ["openai/gpt-4.1-nano"]}

A separate endpoint rather than a field of the results batch: a list is up to
20,000 models (megabytes) sent once per read, never spooled (the next read
sends the list anew), and must not share the results' 4 MiB, 1,000-result
limits or their split-in-halves on a 413 (half a list would retire the other
half).

The body is hostile input, checked as whole (a 400 names the field:
``models[12].id: ...``), except the prices, which are refused per model, as
the prober's own list reader refuses them (``model_listing.listed_price``): a
model whose price is negative, not finite, over the bound or not a number is
recorded without a listed price, and the answer says which field was refused.
The router must be one the central probes.yaml configures (its name as at
start). ``seen`` may be at most :data:`MAX_SEEN_AHEAD` ahead of the server's
clock: a list read "tomorrow" would stop every real read from retiring the
model until then.

The token decides the region, but the catalog has no region: a router's list
read in two regions lands in the same rows, ordered by ``seen`` as the writes
of two local processes are (``catalog_queries.record_listing``). So the newest
read wins, whichever region made it: if the regions disagree (a model listed
in one and not the other), the model is retired at the read that lacks it and
listed again at the next read that names it. This is documented in
docs/push.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from routewatch.aggregator.publish.http_errors import JSON_TYPE, ApiError, dumps
from routewatch.probe.model_listing import MAX_LISTED, MAX_PRICE_PER_MTOK, usable_id
from routewatch.storage.catalog_queries import ListedModel
from routewatch.storage.errors import database_unavailable

__all__ = [
    "CATALOG_PATH",
    "MAX_CATALOG_BODY_BYTES",
    "MAX_CATALOG_MODELS",
    "MAX_KEEP",
    "MAX_SEEN_AHEAD",
    "CatalogPush",
    "CatalogStore",
    "ingest_catalog",
    "read_catalog_push",
]

log = logging.getLogger(__name__)

CATALOG_PATH = "/v1/ingest/catalog"
# A prober reads at most MAX_LISTED ids of a list (model_listing.py); more is no list it sent.
MAX_CATALOG_MODELS = MAX_LISTED
MAX_KEEP = 10_000  # configured models a prober asks to keep; a probes.yaml has a few
# 20,000 models with 40-character ids and three prices measure 1.83 MB (tests/test_catalog_push.py),
# 200-character ids (the longest label) 5.60 MB; 8 MiB leaves room above both.
MAX_CATALOG_BODY_BYTES = 8 * 1024 * 1024
MAX_SEEN_AHEAD = timedelta(minutes=5)
_PRICES = ("input", "output", "cached_input")
_KEYS = frozenset({"router", "seen", "complete", "models", "keep"})
_MODEL_KEYS = frozenset({"id", *_PRICES})

# Records one list: (router, seen, models, complete, keep) -> how many models it retired.
CatalogStore = Callable[[str, datetime, list[ListedModel], bool, list[str]], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class CatalogPush:
    """A checked catalog push: what ``record_listing`` is given, and the prices refused."""

    router: str
    seen: datetime
    complete: bool
    models: list[ListedModel]
    keep: list[str]
    prices_refused: list[dict[str, str]]  # {"field": "models[3].input", "reason": ...}


def _bad(where: str, reason: str) -> ApiError:
    return ApiError(400, f"{where}: {reason}", where)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _model_id(value: object, where: str) -> str:
    """A model id as a prober's list reader accepts one (``model_listing.usable_id``) and the config would."""
    if not isinstance(value, str):
        raise _bad(where, f"{_show(value)} is not a string")
    if usable_id(value) != value:
        raise _bad(
            where, "not a model id (empty, white space, control characters, key-like text or over 200 characters)"
        )
    return value


def _price(value: object) -> float | None:
    """A listed price, USD per 1M tokens; None if absent. :raises ValueError: the reason it is refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{_show(value)} is not a number")
    price = float(value)
    if not math.isfinite(price):  # 1e400 parses as infinity
        raise ValueError(f"{_show(value)} is not a finite number")
    if price < 0:
        raise ValueError(f"{_show(value)} is negative")
    if price > MAX_PRICE_PER_MTOK:
        raise ValueError(f"{_show(value)} is over ${MAX_PRICE_PER_MTOK:,.0f} per 1M tokens")
    return price


def _listed(raw: object, index: int, refused: list[dict[str, str]]) -> ListedModel:
    where = f"models[{index}]"
    if not isinstance(raw, dict):
        raise _bad(where, f"a model must be an object {{id, input, output, cached_input}}, not {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _MODEL_KEYS)
    if unknown:
        raise _bad(f"{where}.{unknown[0][:40]}", "unknown field")
    if "id" not in raw:
        raise _bad(f"{where}.id", "missing")
    model = _model_id(raw["id"], f"{where}.id")
    prices: list[float | None] = []
    for name in _PRICES:
        try:
            prices.append(_price(raw.get(name)))
        except ValueError as exc:
            refused.append({"field": f"{where}.{name}", "id": model, "reason": str(exc)})
            return (model, None, None, None)  # a price is used whole or not at all, as the list reader does
    given, output, cached = prices
    if (given is None) != (output is None) or (cached is not None and given is None):
        refused.append({"field": where, "id": model, "reason": "input and output must be given together"})
        return (model, None, None, None)
    return (model, given, output, cached)


def _seen(raw: object, now: datetime, oldest: datetime) -> datetime:
    if not isinstance(raw, str):
        raise _bad("seen", f"{_show(raw)} is not an ISO-8601 time")
    try:
        seen = datetime.fromisoformat(raw)
    except ValueError:
        raise _bad("seen", f"{_show(raw)} is not an ISO-8601 time") from None
    if seen.utcoffset() is None:
        raise _bad("seen", f"{_show(raw)} has no UTC offset")
    if seen > now + MAX_SEEN_AHEAD:
        raise _bad("seen", f"{seen.isoformat()} is ahead of this server's clock ({now.isoformat()}) by more than 5 min")
    if seen < oldest:
        raise _bad("seen", f"{seen.isoformat()} is older than this server keeps ({oldest.isoformat()})")
    return seen


def read_catalog_push(
    body: bytes, routers: Sequence[str] | frozenset[str], *, now: datetime, oldest: datetime
) -> CatalogPush:
    """The checked push in ``body``; ``routers``: the router names this server's probes.yaml configures.

    :raises ApiError: 400 naming the field that is wrong, or 413 over :data:`MAX_CATALOG_MODELS`.
    """
    try:
        payload = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise _bad("body", f"not JSON: {reason}") from None
    if not isinstance(payload, dict):
        raise _bad("body", "must be a JSON object {router, seen, complete, models, keep}")
    unknown = sorted(str(k) for k in payload if k not in _KEYS)
    if unknown:
        raise _bad(unknown[0][:40], "unknown field")
    missing = sorted(_KEYS - {"keep"} - set(payload))
    if missing:
        raise _bad(missing[0], "missing")
    router = payload["router"]
    if not isinstance(router, str) or router not in routers:
        raise _bad("router", f"{_show(router)} is not a router this server's probes.yaml configures")
    if not isinstance(payload["complete"], bool):
        raise _bad("complete", f"{_show(payload['complete'])} is not true or false")
    seen = _seen(payload["seen"], now, oldest)
    raws = payload["models"]
    if not isinstance(raws, list):
        raise _bad("models", "must be a list")
    if len(raws) > MAX_CATALOG_MODELS:
        raise ApiError(413, f"models: {len(raws)} models; at most {MAX_CATALOG_MODELS} are taken", "models")
    if not raws:
        # A prober never sends an empty list (its reader takes one as a router fault): it would retire everything.
        raise _bad("models", "is empty; a router's list names at least one model")
    refused: list[dict[str, str]] = []
    listed: list[ListedModel] = []
    ids: set[str] = set()
    for index, raw in enumerate(raws):
        model = _listed(raw, index, refused)
        if model[0] in ids:
            raise _bad(f"models[{index}].id", f"{_show(model[0])} is listed twice")
        ids.add(model[0])
        listed.append(model)
    keep_raw = payload.get("keep", [])
    if not isinstance(keep_raw, list):
        raise _bad("keep", "must be a list of model ids")
    if len(keep_raw) > MAX_KEEP:
        raise ApiError(413, f"keep: {len(keep_raw)} models; at most {MAX_KEEP} are taken", "keep")
    keep = [_model_id(m, f"keep[{i}]") for i, m in enumerate(keep_raw)]
    return CatalogPush(router, seen, payload["complete"], listed, keep, refused)


async def ingest_catalog(
    region: str,
    body: bytes,
    store: CatalogStore,
    routers: dict[str, tuple[str, ...]],
    retention: timedelta,
) -> web.Response:
    """Check and record one pushed list read in ``region`` (authenticated, its body read within the limits)."""
    now = datetime.now(UTC)
    # Checking 20,000 entries takes tens of milliseconds: in a thread, so the API keeps answering.
    push = await asyncio.to_thread(read_catalog_push, body, frozenset(routers), now=now, oldest=now - retention)
    # The central probes.yaml's own models for the router are never retired either.
    keep = sorted({*push.keep, *routers[push.router]})
    try:
        retired = await store(push.router, push.seen, push.models, push.complete, keep)
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        log.warning(
            "ingest: database unavailable (%s); region %s's model list not recorded", type(exc).__name__, region
        )
        raise ApiError(
            503, "the database is unavailable; the list is sent again at its next read", headers={"Retry-After": "5"}
        ) from None
    if push.prices_refused:
        first = push.prices_refused[0]
        log.warning(
            "ingest: region %s's list of router %s: the prices of %d models refused (%s: %s)",
            region,
            push.router,
            len(push.prices_refused),
            first["field"],
            first["reason"],
        )
    log.debug(
        "ingest: region %s recorded router %s's list (%d models, %d retired)",
        region,
        push.router,
        len(push.models),
        retired,
    )
    report = {
        "region": region,
        "router": push.router,
        "complete": push.complete,
        "models": len(push.models),
        "retired": retired,
        "prices_refused": push.prices_refused,
    }
    return web.Response(body=dumps(report), headers={"Content-Type": JSON_TYPE, "Cache-Control": "no-store"})
