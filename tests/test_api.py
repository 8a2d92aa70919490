"""The public HTTP API on real parts: PostgreSQL, the aggregator, aiohttp servers on loopback.

Probe results are written with the project's own writer, the aggregator
computes a real snapshot from them, and stats_history rows are inserted as
the refreshing aggregator would have recorded them. The admin endpoints run
against the real LocalAdmin probing the router simulator. The last test
checks the served OpenAPI document against the running server with
schemathesis.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from factories import LOOPBACK_TIMEOUTS, config_text, outcome, probe_result, prompt_entry, router_entry
from pydantic import SecretStr

from routewatch.admin import LocalAdmin
from routewatch.aggregator.publish import openapi
from routewatch.aggregator.publish.api import API, create_app
from routewatch.aggregator.publish.http_errors import JSON_TYPE
from routewatch.aggregator.publish.ingest import IngestReceiver, IngestTokens
from routewatch.aggregator.publish.openapi import MAX_SERIES_POINTS
from routewatch.aggregator.refresh import Aggregator
from routewatch.config import SLOConfig, load_config
from routewatch.probe.targets import plan
from routewatch.results.probe_result import ProbeResult
from routewatch.simulator import ModelProfile, RunningSimulator, start_simulator
from routewatch.sinks import record_pushed_listing
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import store_results, write_batch

ClientFactory = Callable[..., Any]  # pytest-aiohttp's aiohttp_client

WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
INTERVAL_S = 10.0
FAST, FLAKY, BOTH = "acme/fast", "acme/flaky", "acme/both"
CONFIGURED = [("sim", FAST), ("sim", FLAKY), ("sim", BOTH), ("alt", BOTH)]
# min_samples above the probes written: only the down/up hysteresis decides states.
SLO = SLOConfig(window=3600, down_after=3, up_after=2, min_samples=500)
TOKEN = "s3cret-admin-token-" + uuid.uuid4().hex
PRICES = {("sim", FAST): 0.15}  # USD per 1M input tokens, for the badges and /status.json


def _probe(
    router: str,
    model: str,
    at: datetime,
    *,
    ok: bool = True,
    provider: str | None = "Alpha",
    region: str = "eu",
    ttft: float = 100.0,
) -> ProbeResult:
    return probe_result(
        started_at=at,
        region=region,
        router=router,
        model=model,
        provider=provider,
        input_tokens=12,
        **outcome(ok, ttft_ms=ttft, ttfat_ms=ttft, output_tokens=20, output_tps=80.0),
    )


def _probes(now: datetime) -> list[ProbeResult]:
    out = []
    for i in range(30):  # FAST: two providers, two regions, all ok
        at = now - timedelta(minutes=50) + timedelta(seconds=60 * i)
        out.append(
            _probe(
                "sim", FAST, at, provider="Alpha" if i % 2 else "Beta", region="eu" if i < 20 else "us", ttft=100.0 + i
            )
        )
    for i in range(10):  # FLAKY: the last probes fail, so it is down
        at = now - timedelta(minutes=30) + timedelta(seconds=60 * i)
        out.append(_probe("sim", FLAKY, at, ok=i < 5, provider="Beta"))
    for i in range(4):
        at = now - timedelta(minutes=20) + timedelta(seconds=60 * i)
        out.append(_probe("sim", BOTH, at, provider="Gamma"))
        out.append(_probe("alt", BOTH, at, provider="Gamma", ttft=300.0))
    out.append(_probe("sim", BOTH, now - timedelta(minutes=10), provider=None))  # the router named none
    return out


@dataclass
class History:
    """stats_history rows seeded for FAST: (taken_at, window, ttft_p50_ms, error_rate)."""

    rows: list[tuple[datetime, str, float, float]]


_HISTORY_SQL = """
INSERT INTO stats_history (taken_at, router, model, "window", attempts, ok, rate_limited, error_rate,
    error_rate_excl_429, ttft_p50_ms, ttft_p95_ms, ttfat_p50_ms, ttfat_p95_ms, tps_p50, input_tokens, output_tokens)
VALUES ($1, $2, $3, $4, 10, 9, 0, $6::float8, $6::float8, $5::float8, $5::float8 * 2, $5::float8, $5::float8 * 2, 80.0, 100, 200)
"""


async def _seed_history(conn: asyncpg.Connection, now: datetime) -> History:
    hour = now.replace(minute=0, second=0, microsecond=0)
    rows = [
        (now - timedelta(days=8), "7d", 50.0, 0.5),  # outside the default 7 days
        (now - timedelta(days=2), "7d", 90.0, 0.2),
        (hour - timedelta(hours=3) + timedelta(minutes=10), "7d", 100.0, 0.1),
        (hour - timedelta(hours=3) + timedelta(minutes=40), "7d", 110.0, 0.1),  # same hour: the last wins
        (hour - timedelta(hours=2) + timedelta(minutes=5), "7d", 120.0, 0.05),
        (hour - timedelta(hours=2) + timedelta(minutes=5), "1h", 900.0, 0.9),  # another window
    ]
    await conn.executemany(_HISTORY_SQL, [(t, "sim", FAST, w, v, e) for t, w, v, e in rows])
    await conn.execute(_HISTORY_SQL, hour - timedelta(hours=1), "sim", FLAKY, "7d", 777.0, 0.5)
    return History(rows)


_INCIDENT_SQL = """
INSERT INTO incidents (id, start, "end", worst_state, models, suppressed, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $3)
"""


async def _seed_status_history(conn: asyncpg.Connection, now: datetime) -> None:
    """Closed incidents (one in maintenance) and past days of uptime, for the public status routes.

    Written before the first refresh: the incident that refresh opens (FLAKY is down) gets the next id.
    """
    two_days, five_days = now - timedelta(days=2), now - timedelta(days=5)
    await conn.execute(_INCIDENT_SQL, 1, five_days, five_days + timedelta(hours=1), "down", [FAST, BOTH], True)
    await conn.execute(_INCIDENT_SQL, 2, two_days, two_days + timedelta(minutes=45), "degraded", [FLAKY], False)
    today = now.date()
    days = {1: (86400.0, 0.0, 0.0, 0.0), 2: (86000.0, 400.0, 0.0, 0.0), 3: (16400.0, 0.0, 0.0, 70000.0)}
    await conn.executemany(
        "INSERT INTO uptime_daily (model, day, operational_s, degraded_s, down_s, unknown_s)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [(m, today - timedelta(days=ago), *secs) for m in (FAST, FLAKY) for ago, secs in days.items()],
    )


@dataclass
class Seeded:
    pool: asyncpg.Pool
    aggregator: Aggregator
    history: History
    now: datetime


@pytest.fixture
async def seeded(db_dsn: str) -> AsyncIterator[Seeded]:
    """A database with probes and history, and an aggregator that has refreshed once."""
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    try:
        now = datetime.now(UTC) - timedelta(seconds=5)
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            await write_batch(conn, _probes(now))
            history = await _seed_history(conn, now)
            await _seed_status_history(conn, now)
        aggregator = Aggregator(pool, WINDOWS, CONFIGURED, INTERVAL_S, slo=SLO, probe_interval_s=3600.0)
        await aggregator.refresh()
        yield Seeded(pool, aggregator, history, now)
    finally:
        await pool.close()


async def _client(aiohttp_client: ClientFactory, app: web.Application, **kwargs: Any) -> TestClient:
    client: TestClient = await aiohttp_client(app, **kwargs)
    return client


async def _error(resp: Any, status: int, parameter: str | None) -> str:
    """Assert a JSON error with ``status`` naming ``parameter``; return its message."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"]["status"] == status
    assert body["error"]["parameter"] == parameter
    message: str = body["error"]["message"]
    assert message
    return message


# ---------------------------------------------------------------- reads


@pytest.mark.db
async def test_list_models_with_state_and_provider_filters(seeded: Seeded, aiohttp_client: ClientFactory) -> None:
    client = await _client(aiohttp_client, create_app(seeded.aggregator))
    body = await (await client.get("/v1/models")).json()
    assert body["window"] == "7d" and body["status_enabled"] is True
    assert [(m["router"], m["id"]) for m in body["models"]] == CONFIGURED
    by_id = {m["id"]: m for m in body["models"]}
    assert by_id[FLAKY]["state"] == "down"
    assert by_id[FAST]["state"] == "operational"
    assert by_id[FAST]["providers"] == ["Alpha", "Beta"]
    assert by_id[FAST]["stats"]["samples"]["attempted"] == 30
    assert "breakdown" not in by_id[FAST]["stats"]

    alpha = await (await client.get("/v1/models", params={"provider": "Alpha"})).json()
    assert [m["id"] for m in alpha["models"]] == [FAST]
    beta = await (await client.get("/v1/models", params={"provider": "Beta"})).json()
    assert [m["id"] for m in beta["models"]] == [FAST, FLAKY]
    down = await (await client.get("/v1/models", params={"state": "down"})).json()
    assert [m["id"] for m in down["models"]] == [FLAKY]
    both = await (await client.get("/v1/models", params={"state": "operational", "provider": "Beta"})).json()
    assert [m["id"] for m in both["models"]] == [FAST]
    nobody = await (await client.get("/v1/models", params={"provider": "Nobody"})).json()
    assert nobody["models"] == []

    await _error(await client.get("/v1/models", params={"state": "sideways"}), 400, "state")
    await _error(await client.get("/v1/models", params={"limit": "3"}), 400, "limit")
    await _error(await client.get("/v1/models?state=down&state=up"), 400, "state")


@pytest.mark.db
async def test_provider_cells_are_capped_and_no_provider_is_null(db_dsn: str, aiohttp_client: ClientFactory) -> None:
    """A model whose router named 200 providers (and sometimes none), stored by the writer: the listing
    and ?by=provider show the first 2 names, "other" and no provider (null / "unknown"), never ""."""
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        now = datetime.now(UTC) - timedelta(seconds=5)
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            await write_batch(
                conn,
                [
                    _probe(
                        "sim",
                        FAST,
                        now - timedelta(seconds=230 - i),
                        ok=i % 9 != 0,
                        provider=f"up-{i}" if i % 10 else None,
                    )
                    for i in range(220)
                ],
            )
        aggregator = Aggregator(pool, WINDOWS, [("sim", FAST)], INTERVAL_S, max_providers=2)
        await aggregator.refresh()
        client = await _client(aiohttp_client, create_app(aggregator))
        (model,) = (await (await client.get("/v1/models")).json())["models"]
        assert model["providers"] == ["up-1", "up-2", "other", None]
        for label in ("other", "unknown", "up-2"):
            found = (await (await client.get("/v1/models", params={"provider": label})).json())["models"]
            assert [m["id"] for m in found] == [FAST], label
        for window in WINDOWS:
            body = await (
                await client.get(f"/v1/models/{FAST}/stats", params={"by": "provider", "window": window})
            ).json()
            cells = body["breakdown"]["provider"]
            assert set(cells) == {"up-1", "up-2", "other", "unknown"}, window
            assert cells["unknown"]["samples"]["attempted"] == 22
            for field in ("attempted", "ok", "failed"):
                assert sum(c["samples"][field] for c in cells.values()) == body["samples"][field], (window, field)
            assert sum(c["tokens"]["total"] for c in cells.values()) == body["tokens"]["total"]
    finally:
        await pool.close()


@pytest.mark.db
async def test_without_status_every_model_is_unknown(seeded: Seeded, aiohttp_client: ClientFactory) -> None:
    plain = Aggregator(seeded.pool, WINDOWS, CONFIGURED, INTERVAL_S)
    await plain.refresh()
    client = await _client(aiohttp_client, create_app(plain))
    body = await (await client.get("/v1/models")).json()
    assert body["status_enabled"] is False
    assert {m["state"] for m in body["models"]} == {"unknown"}
    assert len((await (await client.get("/v1/models?state=unknown")).json())["models"]) == 4
    await _error(await client.get("/v1/status"), 404, None)
    # The public status routes answer with the same error shape (parameter present, null).
    await _error(await client.get("/status.json"), 404, None)
    await _error(await client.get("/v1/incidents?limit=0"), 404, None)


@pytest.mark.db
async def test_stats_by_provider_and_region(seeded: Seeded, aiohttp_client: ClientFactory) -> None:
    client = await _client(aiohttp_client, create_app(seeded.aggregator))
    plain = await (await client.get(f"/v1/models/{FAST}/stats")).json()
    assert plain["window"] == "7d" and plain["model"] == FAST and "breakdown" not in plain

    by_provider = await (await client.get(f"/v1/models/{FAST}/stats", params={"by": "provider"})).json()
    cells = by_provider["breakdown"]["provider"]
    assert list(by_provider["breakdown"]) == ["provider"]
    assert sorted(cells) == ["Alpha", "Beta"]
    assert sum(c["samples"]["attempted"] for c in cells.values()) == plain["samples"]["attempted"] == 30
    assert cells["Alpha"]["samples"]["attempted"] == 15

    by_region = await (await client.get(f"/v1/models/{FAST}/stats", params={"by": "region", "window": "1h"})).json()
    assert by_region["window"] == "1h"
    regions = by_region["breakdown"]["region"]
    assert {k: v["samples"]["attempted"] for k, v in regions.items()} == {"eu": 20, "us": 10}
    assert regions["eu"]["ttft_p50_ms"] < regions["us"]["ttft_p50_ms"]  # ttft grows with i

    # The '/' of a model id may also come percent-encoded.
    encoded = await client.get("/v1/models/acme%2Ffast/stats")
    assert encoded.status == 200 and (await encoded.json())["model"] == FAST

    alt = await (await client.get(f"/v1/models/{BOTH}/stats", params={"router": "alt"})).json()
    assert alt["router"] == "alt" and alt["ttft_p50_ms"] == pytest.approx(300.0, rel=0.05)


@pytest.mark.db
async def test_one_model_on_two_routers(seeded: Seeded, aiohttp_client: ClientFactory) -> None:
    """GET /v1/models/{id} asks which router, as /stats does; the page shows both, each with its snippet."""
    client = await _client(aiohttp_client, create_app(seeded.aggregator, prices=PRICES))
    assert "router" in await _error(await client.get(f"/v1/models/{BOTH}"), 400, "router")
    alt = await (await client.get(f"/v1/models/{BOTH}", params={"router": "alt"})).json()
    assert alt["router"] == "alt" and alt["routers"] == ["sim", "alt"]
    assert alt["windows"]["1h"]["ttft_p50_ms"] == pytest.approx(300.0, rel=0.05)
    assert alt["windows"]["7d"]["breakdown"]["provider"]["Gamma"]["samples"]["attempted"] == 4
    await _error(await client.get(f"/v1/models/{BOTH}", params={"router": "nope"}), 404, "router")

    page = await (await client.get(f"/status/models/{BOTH}")).text()
    assert '<h2 id="r-sim">Via sim</h2>' in page and '<h2 id="r-alt">Via alt</h2>' in page
    for router in ("sim", "alt"):
        assert f"/badge/{BOTH}.svg?router={router}" in page
        assert f'href="/v1/models/{BOTH}?router={router}"' in page  # the JSON link names its router
        assert (await client.get(f"/v1/models/{BOTH}?router={router}")).status == 200


@pytest.mark.db
async def test_stats_bad_input_names_the_parameter(seeded: Seeded, aiohttp_client: ClientFactory) -> None:
    client = await _client(aiohttp_client, create_app(seeded.aggregator))
    url = f"/v1/models/{FAST}/stats"
    assert "one of" in await _error(await client.get(url, params={"window": "3w"}), 400, "window")
    await _error(await client.get(url, params={"by": "country"}), 400, "by")
    await _error(await client.get(url, params={"windw": "7d"}), 400, "windw")
    await _error(await client.get("/v1/models/nobody/none/stats"), 404, "id")
    await _error(await client.get(f"/v1/models/{BOTH}/stats"), 400, "router")
    await _error(await client.get(f"/v1/models/{BOTH}/stats", params={"router": "nope"}), 404, "router")
    await _error(await client.get("/v1/models/%00evil/stats"), 404, "id")
    await _error(await client.get(url + "?window=%ff"), 400, "window")


@pytest.mark.db
async def test_unknown_paths_and_methods_are_json(seeded: Seeded, aiohttp_client: ClientFactory) -> None:
    client = await _client(aiohttp_client, create_app(seeded.aggregator))
    assert "/v2/nothing" in await _error(await client.get("/v2/nothing"), 404, None)
    resp = await client.delete("/v1/models")
    await _error(resp, 405, None)
    assert "GET" in resp.headers["Allow"]
    await _error(await client.get(f"/v1/models/{FAST}/probe"), 405, None)
    await _error(await client.put("/v1/config/reload"), 405, None)


# ---------------------------------------------------------------- series


def _expected(
    history: History,
    window: str,
    bucket: timedelta,
    start: datetime,
    end: datetime,
    pick: Callable[[tuple[datetime, str, float, float]], float],
) -> list[tuple[datetime, float]]:
    """The last value per UTC bucket, computed here independently of the SQL."""
    last: dict[datetime, tuple[datetime, float]] = {}
    for row in sorted(history.rows):
        taken, w = row[0], row[1]
        if w != window or not start <= taken <= end:
            continue
        origin = datetime(1970, 1, 1, tzinfo=UTC)
        b = origin + ((taken - origin) // bucket) * bucket
        last[b] = (taken, pick(row))
    return [(b, v) for b, (_, v) in sorted(last.items())]


def _points(body: dict[str, Any]) -> list[tuple[datetime, float]]:
    return [(datetime.fromisoformat(p["t"]), p["value"]) for p in body["points"]]


@pytest.mark.db
async def test_series_reads_the_last_value_per_bucket(seeded: Seeded, aiohttp_client: ClientFactory) -> None:
    client = await _client(aiohttp_client, create_app(seeded.aggregator))
    snap_at = seeded.aggregator.snapshot.updated_at  # type: ignore[union-attr]
    url = f"/v1/models/{FAST}/series"

    body = await (await client.get(url)).json()
    assert (body["metric"], body["bucket"], body["window"], body["aggregation"]) == ("ttft_p50", "1h", "7d", "last")
    assert datetime.fromisoformat(body["to"]) == snap_at
    assert datetime.fromisoformat(body["from"]) == snap_at - timedelta(days=7)
    hourly = _expected(seeded.history, "7d", timedelta(hours=1), snap_at - timedelta(days=7), snap_at, lambda r: r[2])
    assert _points(body) == hourly
    assert [v for _, v in hourly][-2:] == [110.0, 120.0]  # the 40-minute row beat the 10-minute one
    assert 50.0 not in [v for _, v in hourly]  # 8 days old: outside the default range

    daily = await (await client.get(url, params={"bucket": "1d", "metric": "error_rate"})).json()
    assert _points(daily) == _expected(
        seeded.history, "7d", timedelta(days=1), snap_at - timedelta(days=7), snap_at, lambda r: r[3]
    )
    assert all(datetime.fromisoformat(p["t"]).hour == 0 for p in daily["points"])

    one_hour = await (await client.get(url, params={"window": "1h"})).json()
    assert [v for _, v in _points(one_hour)] == [900.0]

    start = seeded.now - timedelta(days=9)
    wide = await (
        await client.get(url, params={"from": start.isoformat(), "to": snap_at.isoformat(), "bucket": "1d"})
    ).json()
    assert _points(wide)[0][1] == 50.0
    p95 = await (await client.get(url, params={"metric": "ttft_p95"})).json()
    assert [v for _, v in _points(p95)][-1] == 240.0
    # A '+' offset sent unescaped arrives as a space, and is still understood.
    raw = await client.get(f"{url}?to=2030-01-01T00:00:00+00:00&from=2029-12-31T00:00:00+00:00")
    assert raw.status == 200 and (await raw.json())["points"] == []


@pytest.mark.db
async def test_series_bad_input(seeded: Seeded, aiohttp_client: ClientFactory) -> None:
    client = await _client(aiohttp_client, create_app(seeded.aggregator))
    url = f"/v1/models/{FAST}/series"
    await _error(await client.get(url, params={"metric": "ttft_p99"}), 400, "metric")
    await _error(await client.get(url, params={"bucket": "5m"}), 400, "bucket")
    await _error(await client.get(url, params={"to": "yesterday"}), 400, "to")
    await _error(await client.get(url, params={"from": "2024-13-45T00:00:00Z"}), 400, "from")
    await _error(
        await client.get(url, params={"from": "2024-05-02T00:00:00Z", "to": "2024-05-01T00:00:00Z"}), 400, "from"
    )
    too_long = {"from": "2024-01-01T00:00:00Z", "to": "2024-07-01T00:00:00Z"}
    assert str(MAX_SERIES_POINTS) in await _error(await client.get(url, params=too_long), 400, "from")
    assert (await client.get(url, params={**too_long, "bucket": "1d"})).status == 200
    await _error(await client.get(url, params={"to": "0001-01-02T00:00:00Z"}), 400, "to")
    await _error(await client.get(url, params={"to": "0001-01-01T00:00:00+01:00"}), 400, "to")
    await _error(await client.get(url, params={"window": "2h"}), 400, "window")
    await _error(await client.get(url, params={"colour": "red"}), 400, "colour")
    await _error(await client.get("/v1/models/no/such/series"), 404, "id")


# ---------------------------------------------------------------- caching


@pytest.mark.db
async def test_etag_304_and_cache_control(seeded: Seeded, aiohttp_client: ClientFactory) -> None:
    app = create_app(seeded.aggregator)
    client = await _client(aiohttp_client, app)
    url = f"/v1/models/{FAST}/stats"
    first = await client.get(url, params={"window": "7d", "by": "provider"})
    assert first.status == 200
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')
    assert first.headers["Cache-Control"] == f"public, max-age={int(INTERVAL_S)}"
    assert first.headers["Vary"] == "Accept-Encoding"

    again = await client.get(url, params={"by": "provider", "window": "7d"}, headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == etag
    other = await client.get(url, headers={"If-None-Match": etag})  # another representation
    assert other.status == 200 and other.headers["ETag"] != etag

    # Both spellings share one serialized body: one normalized entry plus two aliases.
    bodies = app[API].cache.generation(seeded.aggregator.snapshot, seeded.aggregator.status)  # type: ignore[arg-type]
    assert bodies[("stats", "sim", FAST, "7d", "provider")].etag == etag

    # A refresh with new probes publishes new figures under a new ETag.
    async with seeded.pool.acquire() as conn:
        await write_batch(conn, [_probe("sim", FAST, datetime.now(UTC), provider="Alpha")])
    await seeded.aggregator.refresh()
    fresh = await client.get(url, params={"window": "7d", "by": "provider"}, headers={"If-None-Match": etag})
    assert fresh.status == 200 and fresh.headers["ETag"] != etag
    assert (await fresh.json())["samples"]["attempted"] == 31


@pytest.mark.db
async def test_gzip_for_large_bodies_only(seeded: Seeded, aiohttp_client: ClientFactory) -> None:
    client = await _client(aiohttp_client, create_app(seeded.aggregator), auto_decompress=False)
    plain = await client.get("/v1/models", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    identity = await plain.read()
    assert len(identity) > 1024

    packed = await client.get("/v1/models", headers={"Accept-Encoding": "gzip, deflate"})
    assert packed.headers["Content-Encoding"] == "gzip"
    assert packed.headers["ETag"] == plain.headers["ETag"]
    compressed = await packed.read()
    assert len(compressed) < len(identity)
    assert gzip.decompress(compressed) == identity

    refused = await client.get("/v1/models", headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers

    small = await client.get("/healthz", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers
    assert small.headers["Cache-Control"] == "no-store"


# ---------------------------------------------------------------- health


@pytest.mark.db
async def test_readyz_before_and_after_a_refresh(db_dsn: str, aiohttp_client: ClientFactory) -> None:
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
        aggregator = Aggregator(pool, WINDOWS, CONFIGURED, 0.5)
        client = await _client(aiohttp_client, create_app(aggregator))

        before = await client.get("/readyz")
        assert before.status == 503
        assert "no stats snapshot" in (await before.json())["reason"]
        assert (await client.get("/healthz")).status == 200  # up, though not ready
        not_yet = await client.get("/v1/models")
        await _error(not_yet, 503, None)
        assert not_yet.headers["Retry-After"] == "5"

        await aggregator.refresh()
        after = await client.get("/readyz")
        assert after.status == 200, await after.text()
        assert (await after.json())["status"] == "ready"

        await asyncio.sleep(2.0)  # more than 3 refresh intervals without a refresh
        stale = await client.get("/readyz")
        assert stale.status == 503
        assert "ago" in (await stale.json())["reason"]
        await _error(await client.get("/readyz?verbose=1"), 400, "verbose")
    finally:
        await pool.close()


# ---------------------------------------------------------------- admin


def _config_text(base_url: str, models: list[str], max_tokens: int | str = 32) -> str:
    return config_text(
        [router_entry("sim", base_url, models)],
        [prompt_entry(content="Count from 1 to 10.", max_tokens=max_tokens, min_output_tokens=4)],
        region="test",
        timeouts=LOOPBACK_TIMEOUTS,
    )


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    sim = await start_simulator(
        [
            ModelProfile(
                model=FAST, provider="Alpha", ttft_median_ms=20, ttft_sigma=0.1, tokens_per_s=500, output_tokens=8
            ),
            ModelProfile(
                model=FLAKY, provider="Beta", ttft_median_ms=20, ttft_sigma=0.1, tokens_per_s=500, output_tokens=8
            ),
        ],
        seed=7,
    )
    yield sim
    await sim.close()


def _local_admin(sim: RunningSimulator, path: Path) -> LocalAdmin:
    path.write_text(_config_text(sim.base_url, [FAST]))
    config = load_config(path)
    series, _ = plan(config, {})
    return LocalAdmin(config, path, series)


@pytest.mark.db
async def test_admin_endpoints_are_disabled_without_a_token(
    seeded: Seeded,
    simulator: RunningSimulator,
    tmp_path: Path,
    aiohttp_client: ClientFactory,
) -> None:
    admin = _local_admin(simulator, tmp_path / "probes.yaml")
    client = await _client(aiohttp_client, create_app(seeded.aggregator, admin=admin))
    for path in (f"/v1/models/{FAST}/probe", "/v1/config/reload"):
        resp = await client.post(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert "disabled" in await _error(resp, 403, None)
    assert simulator.ground_truth.records == []  # nothing was probed


@pytest.mark.db
async def test_admin_token_checks_and_actions(
    seeded: Seeded,
    simulator: RunningSimulator,
    tmp_path: Path,
    aiohttp_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "probes.yaml"
    admin = _local_admin(simulator, path)
    client = await _client(aiohttp_client, create_app(seeded.aggregator, admin=admin, admin_token=SecretStr(TOKEN)))
    probe_url = f"/v1/models/{FAST}/probe"

    missing = await client.post(probe_url)
    await _error(missing, 401, "Authorization")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong_token = TOKEN[:-1] + "x"
    wrong = await client.post(probe_url, headers={"Authorization": f"Bearer {wrong_token}"})
    await _error(wrong, 401, "Authorization")
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert wrong_token not in await wrong.text()
    basic = await client.post("/v1/config/reload", headers={"Authorization": f"Basic {TOKEN}"})
    await _error(basic, 401, "Authorization")
    assert simulator.ground_truth.records == []

    auth = {"Authorization": f"Bearer {TOKEN}"}
    probed = await client.post(probe_url, headers=auth)
    assert probed.status == 200, await probed.text()
    run = await probed.json()
    assert run["model"] == FAST and len(run["results"]) == 1
    result = run["results"][0]
    assert result["ok"] is True and result["model"] == FAST and result["provider"] == "Alpha"
    assert result["ttft_ms"] > 0 and uuid.UUID(result["id"])
    assert len(simulator.ground_truth.records) == 1
    await _error(await client.post(f"/v1/models/{FLAKY}/probe", headers=auth), 404, "id")

    unchanged = await client.post("/v1/config/reload", headers=auth)
    assert unchanged.status == 200
    assert (await unchanged.json())["changes"] == []

    path.write_text(_config_text(simulator.base_url, [FAST, FLAKY]))
    grown = await (await client.post("/v1/config/reload", headers=auth)).json()
    assert grown["applied"] is False and grown["restart_required"] is True
    assert f"probe series added: sim|{FLAKY}|short" in grown["changes"]

    path.write_text(_config_text(simulator.base_url, [FAST], max_tokens="lots"))
    bad = await client.post("/v1/config/reload", headers=auth)
    await _error(bad, 400, None)
    issues = (await bad.json())["error"]["issues"]
    assert len(issues) == 1 and issues[0].startswith(f"{path}:9: prompts[0].max_tokens: ")  # file:line: field: message
    assert issues[0] in (await bad.json())["error"]["message"]
    # The old configuration is kept: the model it probes still probes.
    assert (await client.post(probe_url, headers=auth)).status == 200

    assert TOKEN not in caplog.text
    assert wrong_token not in caplog.text
    assert "admin: probing" in caplog.text  # the log was captured at all


@pytest.mark.db
async def test_admin_token_set_but_no_actions_is_forbidden(seeded: Seeded, aiohttp_client: ClientFactory) -> None:
    client = await _client(aiohttp_client, create_app(seeded.aggregator, admin_token=SecretStr(TOKEN)))
    resp = await client.post("/v1/config/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert "not available" in await _error(resp, 403, None)


class _BrokenAdmin:
    """An AdminActions whose probe fails unexpectedly, with a detail that must not leak."""

    async def probe_now(self, model_id: str) -> list[dict[str, Any]]:
        raise RuntimeError("internal detail: /var/lib/routewatch")

    async def reload_config(self) -> dict[str, Any]:
        return {}


@pytest.mark.db
async def test_an_unexpected_error_is_a_json_500_without_detail(
    seeded: Seeded,
    aiohttp_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await _client(
        aiohttp_client, create_app(seeded.aggregator, admin=_BrokenAdmin(), admin_token=SecretStr(TOKEN))
    )
    resp = await client.post(f"/v1/models/{FAST}/probe", headers={"Authorization": f"Bearer {TOKEN}"})
    assert await _error(resp, 500, None) == "internal error"
    text = await resp.text()
    assert "Traceback" not in text and "internal detail" not in text
    assert "unhandled error serving POST" in caplog.text  # logged for the operator


# ---------------------------------------------------------------- OpenAPI


@pytest.mark.db
async def test_openapi_document_describes_this_server(seeded: Seeded, aiohttp_client: ClientFactory) -> None:
    client = await _client(aiohttp_client, create_app(seeded.aggregator))
    resp = await client.get("/openapi.json")
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["parameters"]["Window"]["schema"]["enum"] == list(WINDOWS)
    assert doc["paths"]["/v1/models/{id}/probe"]["post"]["security"] == [{"bearerAuth": []}]
    assert doc["paths"]["/v1/ingest"]["post"]["security"] == [{"ingestAuth": []}]
    # The served stats carry exactly the documented fields.
    stats = await (await client.get(f"/v1/models/{FAST}/stats?by=region")).json()
    schema = doc["components"]["schemas"]["ModelStats"]
    assert set(stats) == set(schema["properties"])
    assert set(schema["required"]) == set(stats) - {"breakdown"}
    assert (await client.get("/openapi.json", headers={"If-None-Match": resp.headers["ETag"]})).status == 304


@pytest.mark.db
async def test_openapi_names_the_content_types_served(seeded: Seeded, aiohttp_client: ClientFactory) -> None:
    """Each response's Content-Type is the documented media type, parameters and all (JSON: up to its charset).

    schemathesis compares only type/subtype; /metrics' version parameter matters to scrapers.
    """
    client = await _client(aiohttp_client, create_app(seeded.aggregator, prices=PRICES))
    doc = openapi.build(tuple(WINDOWS))
    calls = [
        ("/status", "/status", 200),
        ("/status.json", "/status.json", 200),
        ("/metrics", "/metrics", 200),
        ("/v1/incidents", "/v1/incidents?state=closed", 200),
        ("/v1/incidents", "/v1/incidents?limit=501", 400),
        ("/badge/status.svg", "/badge/status.svg", 200),
        ("/badge/status.svg", "/badge/status.svg?model=no/ne", 404),
        ("/badge/{model_id}.svg", f"/badge/{FAST}.svg", 200),
        ("/badge/{model_id}.svg", "/badge/no/ne.svg", 404),
        ("/badge/{model_id}.svg", "/badge/a%0Ab.svg", 404),
        ("/badge/{model_id}.svg", "/badge/acme%2Ffast.svg", 200),
        ("/status/models/{model_id}", f"/status/models/{FAST}", 200),
        ("/status/models/{model_id}", "/status/models/no/ne", 404),
        ("/v1/models/{id}", f"/v1/models/{FAST}", 200),
        ("/v1/models/{id}", "/v1/models/no/ne", 404),
        ("/v1/models", "/v1/models", 200),
    ]
    for path, url, status in calls:
        resp = await client.get(url)
        assert resp.status == status, url
        documented = doc["paths"][path]["get"]["responses"][str(status)]
        if "$ref" in documented:
            documented = doc["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
        (media_type,) = documented["content"]
        served = resp.headers["Content-Type"]
        assert served == (JSON_TYPE if media_type == "application/json" else media_type), url
    incidents = await (await client.get("/v1/incidents?state=closed")).json()
    assert [i["id"] for i in incidents["incidents"]] == [2, 1]  # the seeded ones, newest first


def _schemathesis_run(base_url: str, fixed_id: str, max_examples: int) -> dict[tuple[str, str, int], int]:
    """Every documented operation against the server at ``base_url``: cases per (method, path, status).

    Operations with a model id in their path also run with ``fixed_id`` there, to reach their 200s.
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.result import Ok
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")

    # Send only the headers the document declares (an operation's parameters, its security scheme's
    # Authorization). Negative cases would add undeclared names, some drawn from Hypothesis's pool of
    # this package's own string literals, which holds HTTP's fields (routewatch/config/model.py lists
    # "expect", "transfer-encoding", ...): which literal comes up depends on the modules the session
    # has imported. aiohttp answers those before any handler, as HTTP says (417 to an Expect other
    # than 100-continue, 400 to a bad Transfer-Encoding), for every path: HTTP's answers, not the
    # API's, so the document does not list them. Undeclared query parameters stay: the API answers
    # those itself (400 naming the parameter), and that is checked below.
    @schema.hook("map_headers")
    def declared_headers_only(ctx: Any, headers: dict[str, Any] | None) -> dict[str, Any] | None:
        declared = {parameter.name.lower() for parameter in ctx.operation.headers}
        return None if headers is None else {k: v for k, v in headers.items() if k.lower() in declared}

    checks = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
    seen: dict[tuple[str, str, int], int] = {}

    def run(strategy: Any) -> None:
        @settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case: Any) -> None:
            sent = {name.lower() for name in case.headers or {}}
            declared = {parameter.name.lower() for parameter in case.operation.headers}
            assert sent <= declared, f"undeclared headers generated: {sent - declared}"  # see the hook above
            response = case.call_and_validate(
                base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, checks=checks, timeout=10
            )
            key = (case.method.upper(), case.operation.path, response.status_code)
            seen[key] = seen.get(key, 0) + 1

        # Unsatisfiable: no invalid value exists (e.g. negative cases of an operation whose only input is a free string)
        with contextlib.suppress(Unsatisfiable):
            check()

    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the document describes an operation badly: {result}"
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            run(operation.as_strategy(generation_mode=mode))
            names = re.findall(r"{(\w+)}", operation.path)  # id, model_id: a model id either way
            if names:  # also with a model that exists, to reach the 200s
                run(operation.as_strategy(generation_mode=mode, path_parameters=dict.fromkeys(names, fixed_id)))
            if operation.path == "/v1/ingest/catalog" and mode == schemathesis.GenerationMode.POSITIVE:
                # A list read now, of a router the server configures: no generated time is that recent.
                now = datetime.now(UTC).isoformat()
                body = {"router": "sim", "seen": now, "complete": False, "models": [{"id": fixed_id}]}
                run(operation.as_strategy(generation_mode=mode, body=body))
    return seen


@pytest.mark.db
async def test_schemathesis_against_a_running_server(
    seeded: Seeded, simulator: RunningSimulator, tmp_path: Path
) -> None:
    """No 5xx, no schema, status code or content type that the document does not allow.

    Status is enabled (the aggregator has an SLO) and seeded with open and closed incidents and
    past uptime, so the public status routes answer with their full bodies.
    """
    admin = _local_admin(simulator, tmp_path / "probes.yaml")
    assert seeded.aggregator.status_enabled and seeded.aggregator.status is not None
    # The admin token doubles as a region's ingest token: schemathesis sends one token to every operation.
    ingest = IngestReceiver(
        IngestTokens({"test": SecretStr(TOKEN)}),
        partial(store_results, seeded.pool),
        timedelta(days=90),
        catalog_store=partial(record_pushed_listing, seeded.pool),
        routers={"sim": (FAST,)},
    )
    app = create_app(seeded.aggregator, admin=admin, admin_token=SecretStr(TOKEN), prices=PRICES, ingest=ingest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        # Refreshing as `routewatch run` does: /readyz must not turn 503 because the run is slow.
        refresher = asyncio.create_task(seeded.aggregator.run())
        try:
            # schemathesis makes blocking calls: run it off the loop that serves them.
            seen = await asyncio.to_thread(_schemathesis_run, base_url, FAST, 30)
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
    finally:
        await runner.cleanup()
    # schemathesis leaves out the endpoint its schema came from (/openapi.json is tested above).
    documented = {
        (method.upper(), path)
        for path, item in openapi.build()["paths"].items()
        for method in item
        if path != "/openapi.json"
    }
    assert {(m, p) for m, p, _ in seen} == documented, "every operation was called"
    ok = {(m, p) for m, p, status in seen if status == 200}
    assert ok == documented, f"every operation answered 200 at least once: missing {documented - ok}"
    assert {p for _, p, status in seen if status == 400} >= {
        "/v1/models",
        "/v1/models/{id}",
        "/v1/models/{id}/stats",
        "/v1/models/{id}/series",
        "/v1/incidents",
    }
    assert {p for _, p, status in seen if status == 404} >= {
        "/badge/status.svg",
        "/badge/{model_id}.svg",
        "/v1/models/{id}",
        "/status/models/{model_id}",
    }


@pytest.mark.unit
def test_error_body_is_plain_json() -> None:
    from routewatch.aggregator.publish.http_errors import ApiError

    resp = ApiError(400, "bad", "window").response()
    assert resp.status == 400 and resp.headers["Cache-Control"] == "no-store"
    assert json.loads(resp.body) == {"error": {"status": 400, "message": "bad", "parameter": "window"}}  # type: ignore[arg-type]
