"""A central routewatch's ingest side for tests: the app as ``routewatch serve`` builds it, on real PostgreSQL.

The receiver comes from the command line's own wiring (``sinks.ingest_receiver``),
built from a probes.yaml text and the environment.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from factories import config_text, probe_result, router_entry

from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.publish.ingest import IngestReceiver
from routewatch.aggregator.refresh import Aggregator
from routewatch.config import parse_config
from routewatch.config.settings import Settings
from routewatch.delivery.spool import encode_result
from routewatch.results.probe_result import ProbeResult
from routewatch.sinks import DatabaseTarget, ingest_receiver
from routewatch.storage.housekeeping import PartitionCache
from routewatch.storage.schema import ensure_schema

EU_TOKEN = "eu-ingest-" + uuid.uuid4().hex
US_TOKEN = "us-ingest-" + uuid.uuid4().hex
MODEL = "m/a"
REGIONS = [{"region": "eu", "token_env": "EU_TOKEN"}, {"region": "us", "token_env": "US_TOKEN"}]


def record(result: ProbeResult | None = None, **changes: Any) -> dict[str, Any]:
    """A result as the prober's spool encodes it, with ``changes`` applied (None removes a key)."""
    raw: dict[str, Any] = json.loads(encode_result(result or probe_result(region="eu", model=MODEL)))
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


@dataclass
class Central:
    """The central server's parts: its app factory, pool and aggregator."""

    pool: asyncpg.Pool
    aggregator: Aggregator
    receiver: IngestReceiver | None

    def app(self, **limits: Any) -> web.Application:
        """The app, with the receiver's limits changed by ``limits`` (max_results=..., max_body_bytes=...)."""
        receiver = dataclasses.replace(self.receiver, **limits) if self.receiver and limits else self.receiver
        return create_app(self.aggregator, ingest=receiver)

    async def rows(self) -> list[asyncpg.Record]:
        return await self.pool.fetch("SELECT id, region, model, error_detail, input_tokens FROM probe_results")

    async def ids(self) -> list[uuid.UUID]:
        return [r["id"] for r in await self.pool.fetch("SELECT id FROM probe_results")]


@asynccontextmanager
async def central_parts(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch, tokens: Sequence[dict[str, str]] = REGIONS
) -> AsyncIterator[Central]:
    """The database migrated, an aggregator refreshed once, and the ingest receiver of ``tokens``."""
    config = parse_config(
        config_text([router_entry("sim", models=[MODEL])], api={"host": "127.0.0.1", "ingest_tokens": list(tokens)}),
        "probes.yaml",
    )
    monkeypatch.setenv("EU_TOKEN", EU_TOKEN)
    monkeypatch.setenv("US_TOKEN", US_TOKEN)
    settings = Settings()
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=3)
    try:
        async with pool.acquire() as conn:
            mode = await ensure_schema(conn)
        aggregator = Aggregator(pool, {"1h": 3600.0}, [("sim", MODEL)], 10.0)
        await aggregator.refresh()
        receiver = ingest_receiver(config, settings, DatabaseTarget(pool, PartitionCache(), mode), timedelta(days=90))
        yield Central(pool, aggregator, receiver)
    finally:
        await pool.close()
