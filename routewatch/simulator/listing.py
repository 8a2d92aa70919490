"""The simulator's model list (``GET /v1/models``) and the controls a test changes it with.

The list is the simulator's served models in the order they were added,
optionally paged the OpenAI/Anthropic way (``limit`` and ``after``, answered
with ``has_more``, ``first_id`` and ``last_id``) and carrying OpenRouter's
``pricing`` (USD per token, as strings) for the models given a price. A test
changes it at run time through ``/v1/simulator/...`` (add or remove a model,
set the page size and prices, or serve a raw, malformed body instead), and
reads back what was served (``GET /v1/simulator/listing``): every list request
with the ids each page held, the ground truth for what a prober could have read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from routewatch.simulator.profiles import ModelProfile
from routewatch.simulator.validation import ApiError

# Longer than this a page is not asked for: OpenAI-style lists cap ``limit`` at 100 or 1000.
MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class ListingPrice:
    """A model's price in the list, as OpenRouter writes it: USD per token, as decimal strings."""

    prompt: str
    completion: str
    input_cache_read: str | None = None  # the cached-input price, when given

    def as_json(self) -> dict[str, str]:
        """The ``pricing`` object of the model's entry."""
        out = {"prompt": self.prompt, "completion": self.completion}
        if self.input_cache_read is not None:
            out["input_cache_read"] = self.input_cache_read
        return out


@dataclass(slots=True)
class ServedPage:
    """One list request the simulator answered."""

    at_ns: int  # time.perf_counter_ns() when it was answered
    after: str | None
    ids: list[str]
    raw: bool  # the raw body was served instead of a list
    bearer: bool  # the request carried an "Authorization: Bearer ..." header (the key itself is not kept)


@dataclass
class ModelListing:
    """What ``GET /v1/models`` answers, and what it answered."""

    page_size: int | None = None  # None: one page, as OpenAI's and OpenRouter's /models
    prices: dict[str, ListingPrice] = field(default_factory=dict)
    raw_body: bytes | None = None  # served as it is instead of the list (a malformed list)
    pad_bytes: int = 0  # white space after the raw body: a page of any size without sending it here
    delay_s: float = 0.0  # wait this long before answering (a slow router)
    served: list[ServedPage] = field(default_factory=list)

    def page(self, models: list[str], after: str | None, limit: int | None) -> tuple[list[str], bool]:
        """The ids of the page after ``after`` (all if not paged), and whether more follow."""
        size = limit or self.page_size
        start = 0
        if after is not None:
            if after not in models:
                raise ApiError(400, "'after' names no listed model")
            start = models.index(after) + 1
        if size is None:
            return models[start:], False
        chunk = models[start : start + size]
        return chunk, start + size < len(models)

    def entry(self, profile: ModelProfile) -> dict[str, Any]:
        """One model as the list shows it."""
        out: dict[str, Any] = {"id": profile.model, "object": "model", "created": 0, "owned_by": profile.provider}
        price = self.prices.get(profile.model)
        if price is not None:
            out["pricing"] = price.as_json()
        return out


LISTING = web.AppKey("listing", ModelListing)


def setup_listing(app: web.Application, profiles: dict[str, ModelProfile]) -> None:
    """Serve the list and its controls on ``app``; ``profiles`` (the models it serves) is changed in place."""
    app[LISTING] = ModelListing()

    async def list_models(request: web.Request) -> web.StreamResponse:
        listing = request.app[LISTING]
        if listing.delay_s > 0:
            await asyncio.sleep(listing.delay_s)
        if listing.raw_body is not None:
            listing.served.append(ServedPage(time.perf_counter_ns(), None, [], raw=True, bearer=_bearer(request)))
            # Streamed: a raw body may be many megabytes (a list past the reader's bound).
            raw = web.StreamResponse(headers={"Content-Type": "application/json"})
            await raw.prepare(request)
            await raw.write(listing.raw_body)
            for at in range(0, listing.pad_bytes, 65_536):
                await raw.write(b" " * min(65_536, listing.pad_bytes - at))
            await raw.write_eof()
            return raw
        after = request.query.get("after")
        try:
            limit = _limit(request.query.get("limit"))
            ids, more = listing.page(list(profiles), after, limit)
        except ApiError as exc:
            return exc.response({})
        listing.served.append(ServedPage(time.perf_counter_ns(), after, ids, raw=False, bearer=_bearer(request)))
        body: dict[str, Any] = {"object": "list", "data": [listing.entry(profiles[m]) for m in ids]}
        if listing.page_size is not None or limit is not None:
            body.update(has_more=more, first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None)
        return web.json_response(body)

    async def add_model(request: web.Request) -> web.Response:
        """PUT /v1/simulator/models: serve (and list) one more model, a profile as profiles.yaml writes it."""
        try:
            fields = await request.json()
            if not isinstance(fields, dict):
                raise TypeError("expected a JSON object")
            profile = ModelProfile(**fields)
        except (ValueError, TypeError) as exc:
            return ApiError(400, f"not a model profile: {exc}").response({})
        profiles[profile.model] = profile
        return web.json_response({"added": profile.model})

    async def remove_model(request: web.Request) -> web.Response:
        """DELETE /v1/simulator/models/{id}: neither serve nor list the model any more."""
        model = request.match_info["id"]
        gone = profiles.pop(model, None)
        request.app[LISTING].prices.pop(model, None)
        return web.json_response({"removed": model if gone is not None else None})

    async def set_listing(request: web.Request) -> web.Response:
        """PUT /v1/simulator/listing: ``page_size``, ``prices`` ({id: [prompt, completion(, input_cache_read)]},
        USD per token as OpenRouter writes them: strings, or anything, sent as its ``str``), ``raw_body``
        ``pad_bytes`` (white space after the raw body) and ``delay_s`` (before each answer)."""
        listing = request.app[LISTING]
        try:
            body = await request.json()
            if "page_size" in body:
                listing.page_size = None if body["page_size"] is None else max(1, int(body["page_size"]))
            if "prices" in body:
                listing.prices = {
                    m: ListingPrice(str(p[0]), str(p[1]), str(p[2]) if len(p) > 2 else None)
                    for m, p in body["prices"].items()
                }
            if "raw_body" in body:
                raw = body["raw_body"]
                listing.raw_body = None if raw is None else str(raw).encode("utf-8", "surrogatepass")
            if "delay_s" in body:
                listing.delay_s = max(0.0, float(body["delay_s"]))
            if "pad_bytes" in body:
                listing.pad_bytes = max(0, int(body["pad_bytes"]))
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            return ApiError(400, f"not a listing setting: {exc}").response({})
        return web.json_response({"page_size": listing.page_size, "raw": listing.raw_body is not None})

    async def listing_truth(request: web.Request) -> web.Response:
        """GET /v1/simulator/listing: the models listed now, the prices published, every list request answered."""
        listing = request.app[LISTING]
        served = [
            {"at_ns": p.at_ns, "after": p.after, "ids": p.ids, "raw": p.raw, "bearer": p.bearer} for p in listing.served
        ]
        prices = {m: p.as_json() for m, p in listing.prices.items() if m in profiles}
        return web.json_response({"models": list(profiles), "prices": prices, "served": served})

    app.router.add_get("/v1/models", list_models)
    app.router.add_put("/v1/simulator/models", add_model)
    app.router.add_delete(r"/v1/simulator/models/{id:.+}", remove_model)
    app.router.add_put("/v1/simulator/listing", set_listing)
    app.router.add_get("/v1/simulator/listing", listing_truth)


def _bearer(request: web.Request) -> bool:
    return request.headers.get("Authorization", "").startswith("Bearer ")


def _limit(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        limit = int(value)
    except ValueError:
        raise ApiError(400, "'limit' must be a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, f"'limit' must be between 1 and {MAX_LIMIT}")
    return limit
