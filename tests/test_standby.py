"""A standby aggregator publishes what the leader publishes, from window sums of its own.

Two ``Aggregator`` instances on one real database, each with the real
refresher lock (``Leadership``) and its own API (``create_app``) on loopback:
the first to refresh leads, the other is a standby that follows the leader's
changes. After every step the data can take in production (new probes, late
probes, the hour turning, retention, the leader going away) both refresh at
the same pinned instant, and every body a user can fetch (``/v1/models``, each
model's stats in every window, ``/v1/status``) must be byte for byte the same
on both, with figures that moved. The standby must never read its window
sums whole after its first refresh, and must not when it becomes leader.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from mixed_probes import mixed, spread

from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.refresh import Aggregator
from routewatch.aggregator.rollup import floor_hour
from routewatch.config import SLOConfig
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.housekeeping import PartitionCache, apply_retention
from routewatch.storage.leadership import Leadership
from routewatch.storage.migrate import migrate
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.db

WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
# (router, model, provider, region)
SERIES = [("r1", "m/a", "P1", "eu"), ("r1", "m/a", "P2", "us"), ("r2", "m/b", None, "eu"), ("r2", "m/c", "P3", "us")]
CONFIGURED = sorted({(router, model) for router, model, _, _ in SERIES})

Client = Callable[..., Awaitable[TestClient[Any, Any]]]


def made_at(times: list[datetime], rng: np.random.Generator) -> list[ProbeResult]:
    return mixed(times, rng, SERIES)


class Pair:
    """Two aggregators on one database, each with its refresher lock and its own API."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, clock: list[datetime]) -> None:
        self.locks = [Leadership(dsn), Leadership(dsn)]
        self.aggregators = [
            Aggregator(
                pool,
                WINDOWS,
                CONFIGURED,
                10.0,
                leadership=lock,
                slo=SLOConfig(),
                probe_interval_s=60.0,
                clock=lambda: clock[0],
            )
            for lock in self.locks
        ]
        self.clients: list[TestClient[Any, Any]] = []

    async def serve(self, aiohttp_client: Client) -> None:
        self.clients = [await aiohttp_client(create_app(a)) for a in self.aggregators]

    async def refresh(self, leader_first: int) -> None:
        """Refresh both, ``aggregators[leader_first]`` first (the leader, or the one to take the lock)."""
        for i in (leader_first, 1 - leader_first):
            await self.aggregators[i].refresh()

    async def published(self, i: int) -> dict[str, bytes]:
        """Every body of aggregator ``i``'s API that carries figures or states."""
        paths = ["/v1/models", "/v1/status"] + [
            f"/v1/models/{model}/stats?router={router}&window={window}{by}"
            for router, model in CONFIGURED
            for window in WINDOWS
            for by in ("", "&by=provider", "&by=region")
        ]
        out = {}
        for path in paths:
            resp = await self.clients[i].get(path)
            assert resp.status == 200, (path, await resp.text())
            out[path] = await resp.read()
        return out


async def same_on_both(pair: Pair, what: str) -> dict[str, bytes]:
    """The leader's and the standby's published bodies, equal; returned for the caller to check they moved."""
    leader, standby = await pair.published(0), await pair.published(1)
    for path in leader:
        assert standby[path] == leader[path], (what, path)
    return leader


async def attempts_7d(client: TestClient[Any, Any], router: str, model: str) -> int:
    resp = await client.get(f"/v1/models/{model}/stats?router={router}&window=7d")
    body = await resp.json()
    return int(body["samples"]["attempted"])


async def test_standby_publishes_what_the_leader_publishes(
    pool: asyncpg.Pool, db_dsn: str, mode: str, aiohttp_client: Client
) -> None:
    async with pool.acquire() as conn:
        await migrate(conn, mode=mode)
        now = floor_hour(await conn.fetchval("SELECT now()")) + timedelta(minutes=30)
    rng = np.random.default_rng(21)
    partitions = PartitionCache()

    async def store(results: list[ProbeResult]) -> None:
        async with pool.acquire() as conn:
            await partitions.ensure_for(conn, mode, (r.started_at for r in results))
            await write_batch(conn, results)

    await store(made_at(spread(now - timedelta(days=7, hours=3), now, 4000, rng), rng))
    clock = [now]
    pair = Pair(pool, db_dsn, clock)
    leader, standby = pair.aggregators
    try:
        await pair.serve(aiohttp_client)
        await pair.refresh(0)
        assert (leader.role, standby.role) == ("leader", "standby")
        before = await same_on_both(pair, "first refresh")
        assert standby.window_rebuilds == 1

        async def step(what: str, probes: list[ProbeResult], at: datetime, first: int = 0) -> dict[str, bytes]:
            nonlocal before
            await store(probes)
            clock[0] = at
            await pair.refresh(first)
            published = await same_on_both(pair, what)
            assert published != before, f"{what}: nothing published changed, the comparison shows nothing"
            before = published
            return published

        t = now + timedelta(minutes=2)
        await step("new probes", made_at(spread(now, t, 40, rng), rng), t)
        late = [t - timedelta(hours=2), t - timedelta(hours=2, minutes=5), t - timedelta(hours=40)]
        await step("late probes, 2 h and 40 h back", made_at(late, rng), t + timedelta(seconds=10))
        assert standby.window_rebuilds == 2, "the hour 40 h back is older than the hours a standby keeps"

        turn = floor_hour(t) + timedelta(hours=1, minutes=1)
        await step("the hour turned", made_at(spread(t, turn, 60, rng), rng), turn)
        await step(
            "a probe of the hour just completed, stored after the turn",
            made_at([turn - timedelta(minutes=2), turn + timedelta(seconds=5)], rng),
            turn + timedelta(seconds=20),
        )
        assert (standby.window_rebuilds, standby.window_follows) == (2, 3)

        # Retention cuts the rollup inside the 7-day window: both read it again.
        week = await attempts_7d(pair.clients[1], "r1", "m/a")
        await store(made_at(spread(turn, turn + timedelta(minutes=1), 8, rng), rng))
        async with pool.acquire() as conn:
            await apply_retention(
                conn, mode, timedelta(days=30), rollup_retention=timedelta(days=5), now=turn + timedelta(minutes=1)
            )
        clock[0] = turn + timedelta(minutes=1)
        await pair.refresh(0)
        after = await same_on_both(pair, "retention inside the 7-day window")
        assert await attempts_7d(pair.clients[1], "r1", "m/a") < week / 6 * 5 + 10, "two days of the week are gone"
        before = after
        rebuilt = (leader.window_rebuilds, standby.window_rebuilds)

        # The leader refreshes once more, unseen by the standby, and goes away (its lock connection
        # closes); the standby takes over at its next refresh.
        await store(made_at(spread(turn + timedelta(minutes=1), turn + timedelta(minutes=2), 10, rng), rng))
        clock[0] = turn + timedelta(minutes=2)
        await leader.refresh()
        await pair.locks[0].release()
        probes = made_at(spread(turn + timedelta(minutes=1), turn + timedelta(minutes=3), 20, rng), rng)
        await step("leadership changed", probes, turn + timedelta(minutes=3), first=1)
        assert (leader.role, standby.role) == ("standby", "leader")
        assert standby.window_rebuilds == rebuilt[1], "the new leader carried its sums over"
        assert leader.window_rebuilds == rebuilt[0], "the old leader, now standby, follows from where it led"

        end = turn + timedelta(minutes=5)
        probes = made_at(spread(turn + timedelta(minutes=3), end, 20, rng), rng)
        await step("new probes under the new leader", probes, end, first=1)
        assert (leader.window_rebuilds, standby.window_rebuilds) == rebuilt
    finally:
        for lock in pair.locks:
            await lock.release()
