"""``POST /v1/ingest``: probers in other regions push their results here instead of holding database credentials.

The request carries a batch, ``{"results": [record, ...]}`` (a record is what
``ingest_records.read_record`` reads), and ``Authorization: Bearer <token>``.
Each region has a token of its own (``api.ingest_tokens`` in probes.yaml names
the environment variable holding it); the token decides the region every
result of the batch is stored under. The answer, ``200``, is an ingest report::

    {"region": "eu-west", "received": 3, "stored": 2, "duplicates": 0,
     "rejected": [{"index": 1, "id": "…", "reason": "…"}],
     "budget_paused": {"day": "2026-11-30", "series": [["router", "model", "prompt"]]}}

``budget_paused`` tells the prober, which reads no database, which series the
daily budget paused today (``routewatch/aggregator/budget.py``); null before the first read.

Rules, and why:

* The token is checked first, before the body is read, in constant time (each
  configured token's SHA-256 is compared with ``hmac.compare_digest``, all of
  them every time); a missing or wrong one is a ``401`` that says nothing
  about the tokens or regions there are. No token is logged, stored or echoed.
* A body over ``MAX_BODY_BYTES`` or a batch over ``MAX_RESULTS`` is a ``413``
  naming the limit; the prober splits its batch and sends the halves. A body
  that is not JSON, or has no ``results`` list, is a ``400``.
* Each record is validated on its own; a bad one is rejected with its reason
  and the others are stored.
* Results are stored through the database writer's own path
  (``storage.writer.store_results``: COPY, ``ON CONFLICT DO NOTHING`` on the
  probe's id and start time, logged for the rollup in the same transaction),
  so a retried batch stores nothing twice and the aggregator sees pushed
  results exactly as local ones. A database outage is a ``503`` with
  Retry-After: the prober keeps the batch in its spool and sends it again.
* ``200`` means committed: the prober may forget the batch.

``POST /v1/ingest/catalog`` (``ingest_catalog.py``) takes a pushing prober's
model list reads with the same tokens, the same body reading and its own
limits.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from routewatch.aggregator.publish.http_errors import JSON_TYPE, ApiError, dumps, errors_as_json
from routewatch.aggregator.publish.ingest_catalog import (
    CATALOG_PATH,
    MAX_CATALOG_BODY_BYTES,
    CatalogStore,
    ingest_catalog,
)
from routewatch.aggregator.publish.ingest_records import RecordRejected, read_record, record_id
from routewatch.aggregator.publish.keys import AGGREGATOR
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.errors import database_unavailable
from routewatch.storage.writer import Stored

__all__ = [
    "INGEST",
    "INGEST_PATH",
    "MAX_BODY_BYTES",
    "MAX_RESULTS",
    "IngestReceiver",
    "IngestStore",
    "IngestTokens",
    "setup_ingest_route",
]

log = logging.getLogger(__name__)

INGEST_PATH = "/v1/ingest"
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_RESULTS = 1000
BODY_TIMEOUT_S = 30.0  # the whole body must arrive within this
RETRY_AFTER_S = 5
REFUSED_LOG_EVERY_S = 60.0  # refused tokens are logged at most this often, with a count
_READ_CHUNK = 64 * 1024
_AUTHENTICATE = 'Bearer realm="routewatch ingest"'

# Stores a batch of validated results; raises what the database raised on an outage.
IngestStore = Callable[[list[ProbeResult]], Awaitable[Stored]]


class IngestTokens:
    """The ingest token of each region; never part of a repr, a log line or a response."""

    __slots__ = ("_digests",)

    def __init__(self, tokens: Mapping[str, SecretStr]) -> None:
        """``tokens``: region -> its token. Tokens must be distinct (the command line checks that, and their length)."""
        self._digests = [(region, _digest(token.get_secret_value())) for region, token in tokens.items()]

    def __repr__(self) -> str:
        return f"IngestTokens(<{len(self._digests)} regions, tokens hidden>)"

    def __len__(self) -> int:
        return len(self._digests)

    def region_for(self, given: str) -> str | None:
        """The region whose token ``given`` is; None if none. The time taken does not depend on which matched."""
        digest = _digest(given)
        found = None
        for region, expected in self._digests:
            if hmac.compare_digest(digest, expected):  # every token is compared: no early exit
                found = region
        return found


def _digest(token: str) -> bytes:
    # Equal-length digests: compare_digest's time then depends on neither token's length.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass
class IngestReceiver:
    """What ``POST /v1/ingest`` needs: the regions' tokens, the store, and how far back results may go."""

    tokens: IngestTokens
    store: IngestStore
    retention: timedelta  # results older than this are refused: the database would drop them anyway
    max_body_bytes: int = MAX_BODY_BYTES
    max_results: int = MAX_RESULTS
    # POST /v1/ingest/catalog: records a pushed model list; None answers 403 there.
    catalog_store: CatalogStore | None = None
    # The routers this server's probes.yaml configures (as at start), each with its configured models.
    routers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_catalog_bytes: int = MAX_CATALOG_BODY_BYTES
    _refused: int = field(default=0, repr=False)
    _refused_logged_at: float = field(default=float("-inf"), repr=False)

    def refused(self, peer: str | None) -> None:
        """Count a request with a missing or wrong token; log at most once per REFUSED_LOG_EVERY_S."""
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged_at >= REFUSED_LOG_EVERY_S:
            log.warning(
                "ingest: refused %d request(s) without a valid region token (the last from %s)",
                self._refused,
                peer or "an unknown address",
            )
            self._refused, self._refused_logged_at = 0, now


INGEST = web.AppKey("routewatch_ingest", IngestReceiver)


def _unauthorized(message: str, invalid: bool) -> ApiError:
    challenge = _AUTHENTICATE + (', error="invalid_token"' if invalid else "")
    return ApiError(401, message, "Authorization", headers={"WWW-Authenticate": challenge})


def _authenticate(request: web.Request, receiver: IngestReceiver) -> str:
    """The region of the request's bearer token; a 401 (saying nothing of the tokens there are) otherwise."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        receiver.refused(request.remote)
        raise _unauthorized("this endpoint needs Authorization: Bearer <the region's ingest token>", False)
    region = receiver.tokens.region_for(given)
    if region is None:
        receiver.refused(request.remote)
        raise _unauthorized("the bearer token is not valid", True)
    return region


def _too_large(message: str) -> ApiError:
    # The rest of the body is not read: close the connection rather than drain it.
    return ApiError(413, message, "body", headers={"Connection": "close"})


async def _read_body(request: web.Request, limit: int, hint: str = "send fewer results at once") -> bytes:
    """The request body, at most ``limit`` bytes (else a 413), arriving within BODY_TIMEOUT_S (else a 408)."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(f"the request body is {request.content_length} bytes; at most {limit} are taken: {hint}")
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            while chunk := await request.content.read(_READ_CHUNK):
                body += chunk
                if len(body) > limit:
                    raise _too_large(f"the request body is over {limit} bytes: {hint}")
    except TimeoutError:
        raise ApiError(
            408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s", "body", headers={"Connection": "close"}
        ) from None
    return bytes(body)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _batch(body: bytes, max_results: int) -> list[Any]:
    """The ``results`` list of a request body; a 400 or 413 naming what is wrong."""
    try:
        # NaN and Infinity are not JSON; Python's parser would take them.
        payload = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ApiError(400, f'the body must be a JSON object {{"results": [...]}}; {reason}', "body") from None
    if not isinstance(payload, dict) or set(payload) != {"results"} or not isinstance(payload["results"], list):
        raise ApiError(400, 'the body must be a JSON object with one key, "results", a list of results', "body")
    results: list[Any] = payload["results"]
    if len(results) > max_results:
        raise _too_large(f"{len(results)} results in one request; at most {max_results}: send them in smaller batches")
    return results


@errors_as_json
async def ingest(request: web.Request) -> web.Response:
    """POST /v1/ingest: store a batch of a region's probe results (its bearer token decides the region)."""
    receiver = request.app.get(INGEST)
    if receiver is None or not len(receiver.tokens):
        raise ApiError(403, "ingest is disabled on this server: its probes.yaml sets no api.ingest_tokens")
    region = _authenticate(request, receiver)
    if request.query:
        name = next(iter(request.query))
        raise ApiError(400, f"unknown query parameter {name[:80]!r}; known here: none", name[:80])
    raws = _batch(await _read_body(request, receiver.max_body_bytes), receiver.max_results)
    now = datetime.now(UTC)
    oldest = now - receiver.retention
    valid: list[tuple[int, ProbeResult]] = []
    rejected: list[dict[str, Any]] = []
    for index, raw in enumerate(raws):
        try:
            valid.append((index, read_record(raw, region, oldest=oldest, now=now)))
        except RecordRejected as exc:
            rejected.append({"index": index, "id": record_id(raw), "reason": str(exc)})
    stored = Stored()
    if valid:
        try:
            stored = await receiver.store([r for _, r in valid])
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            log.warning("ingest: database unavailable (%s); region %s will send again", type(exc).__name__, region)
            raise ApiError(
                503,
                "the database is unavailable; send the batch again later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
    index_of = {id(r): i for i, r in valid}
    rejected += [{"index": index_of[id(r)], "id": str(r.id), "reason": reason} for r, reason in stored.rejected]
    rejected.sort(key=lambda entry: int(entry["index"]))
    report = {
        "region": region,
        "received": len(raws),
        "stored": stored.inserted,
        "duplicates": len(valid) - len(stored.rejected) - stored.inserted,
        "rejected": rejected,
        "budget_paused": _budget_paused(request),
    }
    if rejected:
        reasons = sorted({str(entry["reason"]) for entry in rejected})
        log.warning(
            "ingest: region %s sent %d results, %d rejected: %s",
            region,
            len(raws),
            len(rejected),
            "; ".join(reasons[:5]) + (f"; and {len(reasons) - 5} more reasons" if len(reasons) > 5 else ""),
        )
    else:
        log.debug("ingest: region %s sent %d results, %d stored", region, len(raws), stored.inserted)
    return web.Response(body=dumps(report), headers={"Content-Type": JSON_TYPE, "Cache-Control": "no-store"})


@errors_as_json
async def ingest_catalog_route(request: web.Request) -> web.Response:
    """POST /v1/ingest/catalog: record a region's read of a router's model list in the catalog."""
    receiver = request.app.get(INGEST)
    if receiver is None or not len(receiver.tokens) or receiver.catalog_store is None:
        raise ApiError(403, "ingest is disabled on this server: its probes.yaml sets no api.ingest_tokens")
    region = _authenticate(request, receiver)
    if request.query:
        name = next(iter(request.query))
        raise ApiError(400, f"unknown query parameter {name[:80]!r}; known here: none", name[:80])
    body = await _read_body(request, receiver.max_catalog_bytes, "the model list is larger than this server takes")
    return await ingest_catalog(region, body, receiver.catalog_store, dict(receiver.routers), receiver.retention)


def _budget_paused(request: web.Request) -> dict[str, Any] | None:
    """Today's paused series, for a pushing prober to skip (it reads no database); None before the first read."""
    report = request.app[AGGREGATOR].budget.report
    if report is None:
        return None
    return {"day": report.day.isoformat(), "series": [[p.router, p.model, p.prompt] for p in report.paused]}


def setup_ingest_route(app: web.Application, receiver: IngestReceiver | None) -> None:
    """Register ``POST /v1/ingest`` and ``POST /v1/ingest/catalog``; without a receiver (no tokens
    configured) they answer 403."""
    if receiver is not None:
        app[INGEST] = receiver
    app.router.add_post(INGEST_PATH, ingest)
    app.router.add_post(CATALOG_PATH, ingest_catalog_route)
