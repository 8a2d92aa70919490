"""``by=served_model``: which model answered, read from the window's probes through the API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import pytest
from factories import probe_result

from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.refresh import Aggregator
from routewatch.storage.schema import ensure_schema
from routewatch.storage.served_model_queries import MAX_SERVED_MODELS
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.db

ClientFactory = Callable[..., Any]


async def test_served_models_their_shares_and_the_rest(db_dsn: str, aiohttp_client: ClientFactory) -> None:
    now = datetime.now(UTC) - timedelta(seconds=5)
    at = [now - timedelta(seconds=i) for i in range(200)]
    # 100 answers by the dated snapshot, 50 by a fallback model, 25 names once each (a router
    # naming a new model per answer), 20 failures naming none, 5 overloaded probes (left out).
    results = [probe_result(started_at=at[i], model_served="m/a-2025", ttft_ms=100.0 + i) for i in range(100)]
    results += [probe_result(started_at=at[100 + i], model_served="m/fallback", ttft_ms=300.0) for i in range(50)]
    results += [probe_result(started_at=at[150 + i], model_served=f"m/odd-{i}", ttft_ms=50.0) for i in range(25)]
    results += [probe_result(started_at=at[175 + i], ok=False) for i in range(20)]
    results += [probe_result(started_at=at[195 + i], model_served="m/a-2025", prober_overloaded=True) for i in range(5)]
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            await write_batch(conn, results)
        aggregator = Aggregator(pool, {"1h": 3600.0}, [("sim", "m/a")], 10.0)
        await aggregator.refresh()
        client = await aiohttp_client(create_app(aggregator))
        resp = await client.get("/v1/models/m/a/stats", params={"window": "1h", "by": "served_model"})
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        again = await client.get(
            "/v1/models/m/a/stats",
            params={"window": "1h", "by": "served_model"},
            headers={"If-None-Match": resp.headers["ETag"]},
        )
        assert again.status == 304  # cached per snapshot like every body
    finally:
        await pool.close()

    cells = body["breakdown"]["served_model"]
    assert cells["m/a-2025"] == {
        "share": round(100 / 175, 4),
        "samples": {"attempted": 100, "ok": 100},
        # Exact percentiles (linear, as numpy's default), over the ok probes of that model.
        "ttft_p50_ms": round(float(np.percentile(range(100, 200), 50)), 1),
        "ttft_p95_ms": round(float(np.percentile(range(100, 200), 95)), 1),
    }
    assert cells["m/fallback"]["share"] == round(50 / 175, 4)
    assert cells["unknown"]["samples"] == {"attempted": 20, "ok": 0}
    # Twenty names at most, the most answers first; the rest summed.
    assert len(cells) == MAX_SERVED_MODELS + 1
    listed_odd = [name for name in cells if name.startswith("m/odd-")]
    assert len(listed_odd) == MAX_SERVED_MODELS - 3  # after m/a-2025, m/fallback and unknown
    assert cells["other"]["samples"] == {"attempted": 25 - len(listed_odd), "ok": 25 - len(listed_odd)}
    assert sum(c["samples"]["attempted"] for c in cells.values()) == 195  # overloaded probes left out
    assert body["samples"]["attempted"] == 195
