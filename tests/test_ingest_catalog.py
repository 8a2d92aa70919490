"""``POST /v1/ingest/catalog`` on real parts: the app as ``routewatch serve`` builds it, on PostgreSQL.

The receiver comes from the command line's own wiring (``sinks.ingest_receiver``);
each test reads back ``model_catalog`` and, where it matters, the API's view.
The bodies are made by the prober's own encoder (``delivery.catalog_push.encode_listing``).
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from ingest_support import EU_TOKEN, MODEL, US_TOKEN, Central, central_parts

from routewatch.aggregator.publish.ingest_catalog import MAX_CATALOG_BODY_BYTES, MAX_CATALOG_MODELS
from routewatch.delivery.catalog_push import encode_listing

pytestmark = pytest.mark.db

ClientFactory = Callable[..., Any]
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


@dataclass
class Client:
    client: TestClient
    central: Central

    async def push(self, body: Any, token: str = EU_TOKEN) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        resp = await self.client.post(
            "/v1/ingest/catalog",
            data=io.BytesIO(data),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        return resp.status, await resp.json()

    async def listing(self, seen: datetime, models: list[Any], complete: bool = True, **more: Any) -> tuple[int, Any]:
        listed = [m if isinstance(m, tuple) else (m, None, None, None) for m in models]
        return await self.push(encode_listing("sim", seen, complete, listed, more.get("keep", [])))

    async def catalog(self) -> dict[str, asyncpg.Record]:
        rows = await self.central.pool.fetch("SELECT * FROM model_catalog WHERE router = 'sim'")
        return {r["model"]: r for r in rows}


@pytest.fixture
async def central(db_dsn: str, aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    async with central_parts(db_dsn, monkeypatch) as parts:
        yield Client(await aiohttp_client(parts.app()), parts)


async def test_a_list_is_recorded_and_a_later_complete_list_retires_what_it_lacks(central: Client) -> None:
    status, report = await central.listing(T0, [("x/a", 2.5, 10.0, 1.25), "x/b", MODEL])
    assert status == 200, report
    assert report == {
        "region": "eu",
        "router": "sim",
        "complete": True,
        "models": 3,
        "retired": 0,
        "prices_refused": [],
    }
    rows = await central.catalog()
    assert set(rows) == {"x/a", "x/b", MODEL}
    a = rows["x/a"]
    assert (a["input_usd_per_mtok"], a["output_usd_per_mtok"], a["cached_input_usd_per_mtok"]) == (2.5, 10.0, 1.25)
    assert rows["x/b"]["input_usd_per_mtok"] is None
    # A truncated read proves nothing absent; a complete one does. MODEL, configured centrally, is never retired.
    status, report = await central.listing(T0 + timedelta(minutes=1), ["x/a"], complete=False)
    assert (status, report["retired"]) == (200, 0)
    status, report = await central.listing(T0 + timedelta(minutes=2), ["x/a"])
    assert (status, report["retired"]) == (200, 1)
    rows = await central.catalog()
    assert rows["x/b"]["retired_at"] == T0 + timedelta(minutes=2)
    assert rows["x/a"]["retired_at"] is None and rows[MODEL]["retired_at"] is None
    # The aggregator publishes it as retired.
    await central.central.aggregator.refresh()
    snap = central.central.aggregator.snapshot
    assert snap is not None and snap.catalog[("sim", MODEL)].retired_at is None


async def test_keep_models_are_never_retired(central: Client) -> None:
    assert (await central.listing(T0, ["x/a", "x/kept"]))[0] == 200
    status, report = await central.listing(T0 + timedelta(minutes=1), ["x/a"], keep=["x/kept"])
    assert (status, report["retired"]) == (200, 0)
    assert (await central.catalog())["x/kept"]["retired_at"] is None


async def test_two_regions_disagreeing_the_newest_read_wins_in_any_arrival_order(central: Client) -> None:
    """eu lists x/b, us does not: the catalog follows the newest read, whichever region sent it; a read
    arriving late (older seen) changes nothing the newer one decided."""
    both = [("x/a", None, None, None), ("x/b", None, None, None)]
    assert (await central.push(encode_listing("sim", T0, True, both, [])))[0] == 200
    us = encode_listing("sim", T0 + timedelta(minutes=1), True, [("x/a", None, None, None)], [])
    assert (await central.push(us, token=US_TOKEN))[1]["region"] == "us"
    late_eu = encode_listing("sim", T0 + timedelta(seconds=30), True, both, [])
    assert (await central.push(late_eu))[0] == 200  # read before us's, arriving after it
    rows = await central.catalog()
    assert rows["x/b"]["retired_at"] == T0 + timedelta(minutes=1)
    eu_later = encode_listing("sim", T0 + timedelta(minutes=2), True, [("x/b", 1.0, 2.0, None)], [])
    assert (await central.push(eu_later))[0] == 200
    rows = await central.catalog()
    assert rows["x/b"]["retired_at"] is None and rows["x/b"]["input_usd_per_mtok"] == 1.0
    assert rows["x/a"]["retired_at"] == T0 + timedelta(minutes=2)


async def test_bad_prices_are_refused_per_model_and_the_model_kept(central: Client) -> None:
    body = {
        "router": "sim",
        "seen": T0.isoformat(),
        "complete": True,
        "models": [
            {"id": "ok/one", "input": 1, "output": 2},
            {"id": "neg/one", "input": -1, "output": 2},
            {"id": "huge/one", "input": 1, "output": "HUGE"},
            {"id": "text/one", "input": "1", "output": 2},
            {"id": "bool/one", "input": True, "output": 2},
            {"id": "half/one", "input": 1},
            {"id": "big/one", "input": 1, "output": 2, "cached_input": 100_001},
        ],
    }
    # 1e400 is valid JSON that parses as infinity.
    status, report = await central.push(json.dumps(body).replace('"HUGE"', "1e400").encode())
    assert status == 200, report
    refused = {r["field"]: r["reason"] for r in report["prices_refused"]}
    assert refused == {
        "models[1].input": "-1 is negative",
        "models[2].output": "inf is not a finite number",
        "models[3].input": "'1' is not a number",
        "models[4].input": "True is not a number",
        "models[5]": "input and output must be given together",
        "models[6].cached_input": "100001 is over $100,000 per 1M tokens",
    }
    rows = await central.catalog()
    assert len(rows) == 7
    assert rows["ok/one"]["input_usd_per_mtok"] == 1.0
    assert all(rows[m]["input_usd_per_mtok"] is None for m in rows if m != "ok/one")


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"router": "nowhere"}, "router"),
        ({"router": 3}, "router"),
        ({"seen": "yesterday"}, "seen"),
        ({"seen": "2026-01-01T00:00:00"}, "seen"),
        ({"seen": (datetime.now(UTC) + timedelta(minutes=20)).isoformat()}, "seen"),
        ({"seen": "1999-01-01T00:00:00+00:00"}, "seen"),
        ({"complete": "yes"}, "complete"),
        ({"models": {}}, "models"),
        ({"models": []}, "models"),
        ({"models": [{"id": "a"}, "b"]}, "models[1]"),
        ({"models": [{"id": "a"}, {"id": "a b"}]}, "models[1].id"),
        ({"models": [{"id": "a"}, {"id": "a\x1b[31m"}]}, "models[1].id"),
        ({"models": [{"id": "a"}, {"id": "x" * 201}]}, "models[1].id"),
        ({"models": [{"id": "a"}, {"id": 7}]}, "models[1].id"),
        ({"models": [{"id": "a"}, {"input": 1}]}, "models[1].id"),
        ({"models": [{"id": "a"}, {"id": "a"}]}, "models[1].id"),
        ({"models": [{"id": "a", "price": 1}]}, "models[0].price"),
        ({"keep": "a"}, "keep"),
        ({"keep": ["ok", ""]}, "keep[1]"),
        ({"extra": 1}, "extra"),
        ({"router": None}, "router"),
    ],
)
async def test_hostile_bodies_are_400_naming_the_field_and_record_nothing(
    central: Client, change: dict[str, Any], where: str
) -> None:
    body: dict[str, Any] = {"router": "sim", "seen": T0.isoformat(), "complete": True, "models": [{"id": "a"}]}
    body.update(change)
    if change == {"router": None}:
        del body["router"]
    status, answer = await central.push(body)
    assert status == 400, answer
    assert answer["error"]["message"].startswith(f"{where}: "), answer
    assert await central.catalog() == {}


@pytest.mark.parametrize("raw", [b"[]", b"not json", b'{"router": NaN}', b"[" * 100_000])
async def test_a_body_that_is_not_an_object_is_400(central: Client, raw: bytes) -> None:
    status, answer = await central.push(raw)
    assert status == 400 and answer["error"]["message"].startswith("body: "), answer


async def test_limits_are_413_naming_them(central: Client) -> None:
    models = [{"id": f"m/{i}"} for i in range(MAX_CATALOG_MODELS + 1)]
    status, answer = await central.push({"router": "sim", "seen": T0.isoformat(), "complete": True, "models": models})
    assert status == 413 and f"at most {MAX_CATALOG_MODELS}" in answer["error"]["message"]
    status, answer = await central.push(b" " * (MAX_CATALOG_BODY_BYTES + 1))
    assert status == 413 and str(MAX_CATALOG_BODY_BYTES) in answer["error"]["message"]
    assert await central.catalog() == {}


async def test_wrong_tokens_are_refused_and_record_nothing(central: Client) -> None:
    body = encode_listing("sim", T0, True, [("x/a", None, None, None)], [])
    for headers in ({}, {"Authorization": f"Bearer {EU_TOKEN}x"}, {"Authorization": f"Basic {EU_TOKEN}"}):
        resp = await central.client.post("/v1/ingest/catalog", data=body, headers=headers)
        text = await resp.text()
        assert resp.status == 401, text
        assert EU_TOKEN not in text
    assert await central.catalog() == {}


async def test_no_ingest_tokens_is_403(
    db_dsn: str, aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with central_parts(db_dsn, monkeypatch, tokens=[]) as parts:
        client = await aiohttp_client(parts.app())
        body = encode_listing("sim", T0, True, [("x/a", None, None, None)], [])
        resp = await client.post("/v1/ingest/catalog", data=body, headers={"Authorization": f"Bearer {EU_TOKEN}"})
        assert resp.status == 403
        assert await parts.pool.fetchval("SELECT count(*) FROM model_catalog") == 0
