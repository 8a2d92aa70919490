"""Model status wired into the aggregator: evaluated by the leader, stored, served at /v1/status."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from factories import outcome, probe_result

from routewatch.aggregator.model_state import ModelStatus, Observation, evaluate_all
from routewatch.aggregator.model_state_store import StatusTracker, load_statuses
from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.refresh import Aggregator
from routewatch.aggregator.rollup import refresh_hist
from routewatch.config import SLOConfig
from routewatch.results.probe_result import ProbeResult
from routewatch.storage.catalog_queries import record_listing
from routewatch.storage.schema import ensure_schema
from routewatch.storage.writer import write_batch

pytestmark = pytest.mark.db

WINDOWS = {"1h": 3600.0}
INTERVAL = 60.0  # probe schedule interval, seconds
# min_samples above the probes written: only the down/up hysteresis decides here.
SLO = SLOConfig(window=900, down_after=3, up_after=2, min_samples=50)
BROKEN, FINE, SILENT = "t/broken", "t/fine", "t/silent"
CONFIGURED = [("sim", BROKEN), ("sim", FINE), ("sim", SILENT)]


def _probe(model: str, ok: bool, started_at: datetime) -> ProbeResult:
    return probe_result(
        started_at=started_at, region="r", router="sim", model=model, **outcome(ok, ttft_ms=100.0, output_tokens=10)
    )


def _aggregator(pool: asyncpg.Pool) -> Aggregator:
    return Aggregator(pool, WINDOWS, CONFIGURED, 10.0, slo=SLO, probe_interval_s=INTERVAL)


async def _states(conn: asyncpg.Connection) -> dict[str, str]:
    return {r["model"]: r["state"] for r in await conn.fetch("SELECT model, state FROM model_status")}


async def test_down_model_opens_an_incident_that_closes_after_up_after_ok_probes(db_dsn: str, aiohttp_client) -> None:
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        now = datetime.now(UTC)
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            earlier = [now - timedelta(seconds=s) for s in (50, 40, 30)]
            await write_batch(
                conn, [_probe(BROKEN, False, t) for t in earlier] + [_probe(FINE, True, t) for t in earlier]
            )
        aggregator = _aggregator(pool)
        await aggregator.refresh()

        async with pool.acquire() as conn:
            assert await _states(conn) == {BROKEN: "down", FINE: "operational", SILENT: "unknown"}
            incidents = await conn.fetch("SELECT * FROM incidents")
        assert len(incidents) == 1 and incidents[0]["end"] is None
        assert incidents[0]["models"] == [BROKEN] and incidents[0]["worst_state"] == "down"

        client = await aiohttp_client(create_app(aggregator))
        resp = await client.get("/v1/status")
        assert resp.status == 200
        body = await resp.json()
        assert body["overall"] == "down"
        models = {m["id"]: m for m in body["models"]}
        assert models[BROKEN]["state"] == "down" and "3 consecutive failed probes" in models[BROKEN]["reason"]
        assert models[SILENT]["state"] == "unknown"
        assert [i["models"] for i in body["incidents"]["open"]] == [[BROKEN]]
        assert body["incidents"]["recent"] == []
        down_since = models[BROKEN]["since"]

        # A new aggregator (a restart) carries on from the stored statuses:
        # one ok probe is not enough to bring the model back.
        async with pool.acquire() as conn:
            await write_batch(conn, [_probe(BROKEN, True, datetime.now(UTC)), _probe(FINE, True, datetime.now(UTC))])
        restarted = _aggregator(pool)
        await restarted.refresh()
        assert restarted.status is not None
        broken = next(m for m in restarted.status.models if m.model == BROKEN)
        assert broken.state == "down" and broken.since.isoformat() == down_since
        assert broken.consecutive_successes == 1
        assert [i.id for i in restarted.status.open] == [1]

        async with pool.acquire() as conn:
            await write_batch(conn, [_probe(BROKEN, True, datetime.now(UTC)), _probe(FINE, True, datetime.now(UTC))])
        await restarted.refresh()
        async with pool.acquire() as conn:
            assert (await _states(conn))[BROKEN] == "operational"
            closed = await conn.fetchrow("SELECT * FROM incidents WHERE id = 1")
            uptime = await conn.fetch("SELECT * FROM uptime_daily WHERE model = $1", BROKEN)
        assert closed["end"] is not None
        assert sum(r["down_s"] for r in uptime) > 0  # the down spell between refreshes was counted

        body = await (await client.get("/v1/status")).json()  # the old instance has not refreshed
        assert body["overall"] == "down"
        restarted_client = await aiohttp_client(create_app(restarted))
        body = await (await restarted_client.get("/v1/status")).json()
        assert body["overall"] == "unknown"  # SILENT has no probe; nothing is degraded or down
        assert body["incidents"]["open"] == []
        assert [i["id"] for i in body["incidents"]["recent"]] == [1]
        assert body["incidents"]["recent"][0]["end"] is not None
    finally:
        await pool.close()


async def test_status_is_disabled_without_an_slo(db_dsn: str, aiohttp_client) -> None:
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
        aggregator = Aggregator(pool, WINDOWS, CONFIGURED, 10.0)
        await aggregator.refresh()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM model_status") == 0
        client = await aiohttp_client(create_app(aggregator))
        resp = await client.get("/v1/status")
        assert resp.status == 404
    finally:
        await pool.close()


async def test_retention_drops_old_uptime_days_and_old_closed_incidents(db_dsn: str) -> None:
    from routewatch.storage.housekeeping import apply_retention

    conn = await asyncpg.connect(db_dsn)
    try:
        mode = await ensure_schema(conn)
        now = datetime.now(UTC)
        today = now.date()
        await conn.executemany(
            "INSERT INTO uptime_daily (model, day, operational_s) VALUES ($1, $2, 60)",
            [(FINE, today - timedelta(days=89)), (FINE, today - timedelta(days=90))],
        )
        old, recent = now - timedelta(days=100), now - timedelta(days=1)
        await conn.executemany(
            'INSERT INTO incidents (id, start, "end", worst_state, models, suppressed, updated_at)'
            " VALUES ($1, $2, $3, 'down', ARRAY['t/fine'], false, $2)",
            [(1, old, old), (2, old, None), (3, recent, recent)],
        )
        await apply_retention(conn, mode, now=now)
        days = [r["day"] for r in await conn.fetch("SELECT day FROM uptime_daily")]
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM incidents ORDER BY id")]
    finally:
        await conn.close()
    assert days == [today - timedelta(days=89)]  # UPTIME_DAYS days, today included
    assert ids == [2, 3]  # an open incident stays, however old


# ---------------------------------------------------------------- the leader's copy of the SLO window


def _counters(statuses: Mapping[str, ModelStatus]) -> dict[str, tuple[str, int, int, bool]]:
    return {
        m: (s.state.value, s.consecutive_failures, s.consecutive_successes, s.latched_down) for m, s in statuses.items()
    }


async def test_the_leader_reads_only_the_new_batches_and_judges_as_if_it_had_read_every_probe(db_dsn: str) -> None:
    """Refresh after refresh, the tracker (which reads the whole SLO window once, then only the
    batches each rollup refresh takes in) stores the states and hysteresis counters that the pure
    engine computes from every probe: late probes count once, and when another process took
    batches in, the tracker reads the window again instead of missing them."""
    # up_after 3 and min_samples above what is written: the counters decide every state here.
    slo = SLOConfig(window=900, down_after=3, up_after=3, min_samples=50)
    models = [BROKEN, FINE]
    conn = await asyncpg.connect(db_dsn)
    try:
        await ensure_schema(conn)
        tracker = StatusTracker(slo, INTERVAL, refresh_s=10.0)
        every: list[Observation] = []
        expected: dict[str, ModelStatus] = {}
        judged_at: list[datetime] = []

        async def store(probes: list[ProbeResult], *, judged: bool = True) -> None:
            nonlocal expected
            await write_batch(conn, probes)
            every.extend(Observation(p.model, p.started_at, p.ok, p.ttft_ms, False, p.id.int) for p in probes)
            report = await refresh_hist(conn)
            if not judged:  # another process's refresh: it takes the batch in, this tracker does not judge
                return
            await tracker.evaluate(conn, models, report.now, report)
            judged_at.append(report.now)
            expected, _ = evaluate_all(expected, models, every, report.now, slo, INTERVAL)
            assert _counters(await load_statuses(conn)) == _counters(expected)

        def just_now() -> datetime:
            return datetime.now(UTC) - timedelta(milliseconds=10)

        # Broken fails three times (down), then recovers; a late ok probe (started before
        # the previous evaluation, stored after it) counts once.
        for broken_ok in [False, False, False, True, True]:
            at = just_now()
            await store([_probe(BROKEN, broken_ok, at), _probe(FINE, True, at)])
        assert _counters(expected)[BROKEN] == ("down", 0, 2, True)
        await store([_probe(BROKEN, True, judged_at[-2] - timedelta(seconds=1)), _probe(FINE, True, just_now())])
        assert _counters(expected)[BROKEN] == ("operational", 0, 3, False)
        assert tracker.recent.reloads == 1  # the first evaluation read the window, the others only batches

        # Another process takes a batch in: this tracker never sees it in a report, so it must read
        # the window again at its next evaluation, and count the two failures it holds.
        at = just_now()
        await store([_probe(BROKEN, False, at), _probe(FINE, True, at)], judged=False)
        at = just_now()
        await store([_probe(BROKEN, False, at), _probe(FINE, True, at)])
        assert tracker.recent.reloads == 2
        assert _counters(expected)[BROKEN] == ("operational", 2, 0, False)
    finally:
        await conn.close()


async def test_an_incident_closes_once_its_bad_model_is_neither_configured_nor_listed_nor_probed(
    db_dsn: str,
) -> None:
    """Unknown keeps an incident open (nobody knows it recovered), unless nobody will ever know.

    The refresh time is pinned (the aggregator's ``clock``) so that the 17 minutes after which
    the removed model's probes have left the status window need not be waited for.
    """
    gone = "t/discovered"  # found by a router's model list, then retired from it
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        start = datetime.now(UTC)
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            earlier = [start - timedelta(seconds=s) for s in (50, 40, 30)]
            await write_batch(conn, [_probe(m, False, t) for t in earlier for m in (BROKEN, gone)])
            await record_listing(conn, "sim", start, [(gone, None, None, None)], complete=True)
        clock = [start]
        aggregator = Aggregator(
            pool, WINDOWS, CONFIGURED, 10.0, slo=SLO, probe_interval_s=INTERVAL, clock=lambda: clock[0]
        )

        async def refresh_at(minutes: float) -> list[asyncpg.Record]:
            clock[0] = start + timedelta(minutes=minutes)
            await aggregator.refresh()
            async with pool.acquire() as conn:
                return await conn.fetch("SELECT * FROM incidents ORDER BY id")

        (opened,) = await refresh_at(0)
        assert sorted(opened["models"]) == sorted([gone, BROKEN]) and opened["end"] is None

        # Twenty minutes on, no probe of either is left in the status window: both are unknown,
        # and both are still meant to be probed (configured; listed), so the incident stays open.
        (still,) = await refresh_at(20)
        async with pool.acquire() as conn:
            states = await _states(conn)
        assert states[BROKEN] == "unknown" and states[gone] == "unknown"
        assert still["end"] is None

        # The router's list drops one: the other still holds the incident open.
        async with pool.acquire() as conn:
            await record_listing(conn, "sim", start + timedelta(minutes=21), [], complete=True)
        (held,) = await refresh_at(21)
        assert held["end"] is None

        # BROKEN leaves the configuration: nobody will learn that either recovered.
        aggregator.set_configured([("sim", FINE), ("sim", SILENT)])
        (closed,) = await refresh_at(22)
        assert closed["end"] == start + timedelta(minutes=22)
        assert sorted(closed["models"]) == sorted([gone, BROKEN]) and closed["worst_state"] == "down"
        assert aggregator.status is not None and aggregator.status.open == ()
    finally:
        await pool.close()
