"""Reading a router's model list (``GET {base_url}/models``), bounded and checked.

The list is router-controlled input, read as the OpenAI list shape
``{"object": "list", "data": [{"id": ...}, ...]}``. Two ways of paging are
followed: ``has_more`` with a cursor (``last_id``, else the last entry's id),
asked for as ``?after=<id>`` (the parameter of OpenAI's paged lists), and a
``next`` link (absolute or relative, on the router's own origin
only: the key is never sent anywhere else). An unpaged list (OpenAI's and
OpenRouter's ``/models``, LiteLLM's ``/v1/models``) is one page.

What a listing costs is bounded whatever the router sends: each page at most
:data:`MAX_PAGE_BYTES`, at most :data:`MAX_PAGES` pages, at most
:data:`MAX_LISTED` ids (past it the listing is cut and marked ``truncated``:
the ids read are used, but no model is taken as gone, since an incomplete
list proves nothing absent). Each id is normalised as every router value is
(``router_values.label``); one the normalisation changes (control characters,
a secret, too long) or with white space is not an id the router would answer
to, so it is skipped and counted. OpenRouter's ``pricing`` (USD per token, as
strings: ``prompt``, ``completion``, ``input_cache_read``) is read into USD per
1M tokens; a model whose pricing holds a value that is not a sane, finite
number keeps its place in the list but gets no listed price, and the reason is
kept (``Listing.rejected_prices``) for the log.

Anything else (an HTTP error, a page that is not JSON or not a list, a
cursor that repeats, a list with no usable id at all, which no working router
serves) raises :class:`ListingError`, whose message never holds the key.
"""

from __future__ import annotations

import asyncio
import json
import json.scanner
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from routewatch.config.model import Price
from routewatch.probe.redact import redact
from routewatch.probe.router_values import label

# A few hundred models with all their metadata in one page (OpenRouter's list) take about 1 MB.
MAX_PAGE_BYTES = 8 * 1024 * 1024
MAX_PAGES = 100
MAX_LISTED = 20_000
# USD per 1M tokens at most (the configuration's own bound for a price).
MAX_PRICE_PER_MTOK = 100_000.0


class ListingError(Exception):
    """The router's model list could not be read or is not a model list; the message is safe to log."""


@dataclass(frozen=True, slots=True)
class ListedPrice:
    """Prices a listing publishes for a model, USD per 1M tokens."""

    input: float
    output: float
    cached_input: float | None = None  # None: not published (the input price applies)

    def as_price(self) -> Price:
        """As a configured price, so that a probe is costed the same whichever source its price has."""
        return Price(input=self.input, output=self.output, cached_input=self.cached_input)


class PriceRejected(ValueError):
    """A model's listed pricing holds a value that is not a price; the message says which and why."""


@dataclass(slots=True)
class Listing:
    """One complete read of a router's model list."""

    models: dict[str, ListedPrice | None] = field(default_factory=dict)  # id -> prices, in the router's order
    pages: int = 0
    skipped: int = 0  # entries without a usable id
    rejected_prices: dict[str, str] = field(default_factory=dict)  # id -> why its listed pricing was not used
    truncated: bool = False  # more than MAX_LISTED ids or MAX_PAGES pages: the rest was not read


def models_url(base_url: str) -> str:
    """The list endpoint of a router whose chat endpoint is ``{base_url}/chat/completions``."""
    return base_url.rstrip("/") + "/models"


async def read_listing(
    session: aiohttp.ClientSession,
    base_url: str,
    api_key: str | None,
    headers: Mapping[str, str],
    timeout_s: float,
) -> Listing:
    """Every page of the router's model list, within the bounds above and ``timeout_s`` for all of it.

    :raises ListingError: the list cannot be read or is malformed.
    """
    secrets = [api_key] if api_key else []
    send = dict(headers)
    if api_key:
        send["Authorization"] = f"Bearer {api_key}"
    first = models_url(base_url)
    origin = _origin(first)
    listing = Listing()
    url: str | None = first
    cursors: set[str] = set()
    try:
        async with asyncio.timeout(timeout_s):  # the whole list, however many pages
            while url is not None:
                if listing.pages >= MAX_PAGES:
                    listing.truncated = True
                    break
                body = await _get_page(session, url, send, secrets)
                # Decoding and checking thousands of entries takes hundreds of milliseconds:
                # in a thread that lets the event loop, which times the probes, run meanwhile.
                page = await asyncio.to_thread(decode_page, body)
                listing.pages += 1
                _take_entries(page, listing)
                if listing.truncated:
                    break
                url = _next_url(page, first, origin, cursors)
    except TimeoutError:
        raise ListingError(f"the model list was not read within {timeout_s:g} s ({listing.pages} pages)") from None
    if not listing.models:
        # A router serves at least one model: an empty list is a fault of the router, not every model gone.
        raise ListingError(f"the model list names no usable model ({listing.skipped} entries skipped)")
    return listing


async def _get_page(session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], secrets: list[str]) -> bytes:
    try:
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ListingError(f"GET /models answered HTTP {resp.status}")
            body = await _body_within(resp, MAX_PAGE_BYTES)
    except (aiohttp.ClientError, ValueError) as exc:
        reason = redact(f"{exc.__class__.__name__}: {exc}", secrets, max_chars=200)
        raise ListingError(f"GET /models failed: {reason}") from None
    if body is None:
        raise ListingError(f"a page of the model list is larger than {MAX_PAGE_BYTES // (1024 * 1024)} MiB")
    return body


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a model list, decoded and checked."""

    entries: list[tuple[str | None, ListedPrice | str | None]]  # (usable id or None: skipped; price, or why not)
    last_raw_id: str | None  # the last entry's id as sent, for a cursor
    has_more: bool
    last_id: str | None  # the page's own cursor, if it gives one
    next_link: str | None


# Past this size a page is decoded by json's pure-Python scanner: the C one holds the GIL for the whole
# page (about 100 ms for 20,000 entries), which would stall the event loop even from another thread.
_C_DECODE_BYTES = 256 * 1024


def _loads(body: bytes) -> Any:
    if len(body) <= _C_DECODE_BYTES:
        return json.loads(body)
    decoder = json.JSONDecoder()
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder.decode(body.decode("utf-8"))


def decode_page(body: bytes) -> Page:
    """A page's JSON as a :class:`Page`; pure, so that it can run in a thread.

    :raises ListingError: not JSON, or not an object with a ``data`` array.
    """
    try:
        page = _loads(body)
    except (ValueError, RecursionError):
        raise ListingError("the model list is not JSON") from None
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        raise ListingError('the model list is not an object with a "data" array')
    entries: list[tuple[str | None, ListedPrice | str | None]] = []
    last_raw: str | None = None
    for entry in page["data"]:
        raw = entry.get("id") if isinstance(entry, dict) else None
        last_raw = raw if isinstance(raw, str) else last_raw
        model = usable_id(raw)
        price: ListedPrice | str | None = None
        if model is not None:
            try:
                price = listed_price(entry.get("pricing"))
            except PriceRejected as exc:
                price = str(exc)
        entries.append((model, price))
    given = page.get("last_id")
    link = page.get("next")
    return Page(
        entries,
        last_raw,
        page.get("has_more") is True,
        given if isinstance(given, str) and given else None,
        link if isinstance(link, str) and link else None,
    )


async def _body_within(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is longer than ``limit`` bytes (the rest is not read)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _take_entries(page: Page, listing: Listing) -> None:
    """Add the page's models to ``listing``, up to :data:`MAX_LISTED`."""
    for model, price in page.entries:
        if model is None:
            listing.skipped += 1
        elif model in listing.models:
            continue
        elif len(listing.models) >= MAX_LISTED:
            listing.truncated = True
            return
        elif isinstance(price, str):
            listing.models[model] = None
            listing.rejected_prices[model] = price
        else:
            listing.models[model] = price


def usable_id(raw: object) -> str | None:
    """``raw`` if it is a model id the router can be asked for as it is; None if normalising would change it."""
    if not isinstance(raw, str) or not raw:
        return None
    normal = label(raw)
    if normal != raw or any(c.isspace() for c in raw):
        return None
    return raw


def listed_price(pricing: object) -> ListedPrice | None:
    """OpenRouter's ``pricing`` (USD per token as strings) as USD per 1M tokens; None if there is none.

    A listed price is used whole or not at all: a cost from a half-read price
    would be wrong without saying so.

    :raises PriceRejected: ``prompt`` or ``completion`` is missing, or a price
        field is not a number from 0 to :data:`MAX_PRICE_PER_MTOK` per 1M tokens
        (``"-1"``, OpenRouter's "varies" on its auto router, included).
    """
    if pricing is None:
        return None
    if not isinstance(pricing, dict):
        raise PriceRejected("pricing is not an object")
    prompt = _per_mtok(pricing, "prompt")
    completion = _per_mtok(pricing, "completion")
    if prompt is None or completion is None:
        missing = " and ".join(name for name, v in (("prompt", prompt), ("completion", completion)) if v is None)
        raise PriceRejected(f"pricing gives no {missing} price")
    return ListedPrice(prompt, completion, _per_mtok(pricing, "input_cache_read"))


def _per_mtok(pricing: Mapping[str, object], name: str) -> float | None:
    """``pricing[name]`` in USD per 1M tokens; None if absent. :raises PriceRejected: not a sane price."""
    value = pricing.get(name)
    if value is None:
        return None
    shown = _clip(value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PriceRejected(f"pricing.{name} {shown} is not a number")
    try:
        per_token = float(value)
    except ValueError:
        raise PriceRejected(f"pricing.{name} {shown} is not a number") from None
    except OverflowError:  # a JSON integer too large for a float
        raise PriceRejected(f"pricing.{name} {shown} is not a finite number") from None
    per_mtok = per_token * 1_000_000
    if not math.isfinite(per_mtok):
        raise PriceRejected(f"pricing.{name} {shown} is not a finite number")
    if per_mtok < 0:  # "-1" is OpenRouter's "the price varies" (its auto router)
        raise PriceRejected(f"pricing.{name} {shown} is negative (the price varies)")
    if per_mtok > MAX_PRICE_PER_MTOK:
        raise PriceRejected(f"pricing.{name} {shown} is over ${MAX_PRICE_PER_MTOK:,.0f} per 1M tokens")
    return round(per_mtok, 9)


def _clip(value: object) -> str:
    """A router's value as a message may quote it: normalised (``label``) and short."""
    text = label(repr(value)[:200]) or "''"
    return text if len(text) <= 40 else text[:37] + "..."


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _next_url(page: Page, first: str, origin: tuple[str, str, int | None], seen: set[str]) -> str | None:
    """The next page's URL, or None on the last page."""
    if page.next_link is not None:
        target = urljoin(first, page.next_link)
        if _origin(target) != origin:
            raise ListingError("the model list's next link leaves the router's origin; not followed")
        cursor = target
    elif page.has_more:
        after = page.last_id or page.last_raw_id
        if after is None:
            raise ListingError("the model list says has_more but gives no cursor (last_id)")
        cursor = f"{first}?{urlencode({'after': after})}"
    else:
        return None
    if cursor in seen:
        raise ListingError("the model list's pages repeat (the same cursor twice)")
    seen.add(cursor)
    return cursor
