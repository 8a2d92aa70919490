"""The process supervisor on real parts: asyncio tasks, the API app over a real database, loopback HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from routewatch.aggregator.publish.api import FAILED_COMPONENTS, create_app
from routewatch.aggregator.publish.server import ApiServer, bind_listeners, start_api
from routewatch.aggregator.refresh import Aggregator
from routewatch.storage.schema import ensure_schema
from routewatch.supervision import Supervisor, dsn_secrets


async def _forever() -> None:
    await asyncio.Event().wait()


async def _dies(message: str) -> None:
    await asyncio.sleep(0.05)
    raise RuntimeError(message)


@pytest.fixture
async def served(pool: asyncpg.Pool, db_dsn: str) -> AsyncIterator[tuple[Supervisor, asyncio.Event, str]]:
    """The real API app with a supervisor's failures wired to /readyz, served on loopback."""
    stop = asyncio.Event()
    supervisor = Supervisor(stop, dsn_secrets(db_dsn))
    async with pool.acquire() as conn:
        await ensure_schema(conn)
    aggregator = Aggregator(pool, {"1h": 3600.0}, [("r", "acme/m")], 60.0)
    await aggregator.refresh()
    app = create_app(aggregator)
    app[FAILED_COMPONENTS] = supervisor.failures
    api: ApiServer = await start_api(app, bind_listeners("127.0.0.1", 0))
    try:
        yield supervisor, stop, f"http://127.0.0.1:{api.addresses[0][1]}"
    finally:
        supervisor.closing()
        await api.close()


@pytest.mark.db
async def test_a_dying_task_makes_readyz_fail_and_stops_the_process(
    served: tuple[Supervisor, asyncio.Event, str],
    db_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor, stop, url = served
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/readyz") as resp:
            assert resp.status == 200
        healthy = asyncio.create_task(_forever())
        supervisor.watch("aggregator refresh", healthy)
        # The exception carries the database URL, as asyncpg errors can: it must not be logged or served.
        supervisor.watch("batch writer", asyncio.create_task(_dies(f"cannot store into {db_dsn}")))
        with caplog.at_level(logging.ERROR, logger="routewatch"):
            await asyncio.wait_for(stop.wait(), 5)
        assert supervisor.exit_code == 1
        async with http.get(url + "/readyz") as resp:
            assert resp.status == 503
            body = await resp.json()
    assert body["status"] == "not_ready"
    assert body["reason"] == "the batch writer task failed: RuntimeError: cannot store into ***"
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    logged = record.getMessage()
    assert logged.startswith("the batch writer task failed: RuntimeError: cannot store into ***; stopping routewatch")
    assert "Traceback" in logged and "_dies" in logged  # where it died, for the bug report
    password = urlsplit(db_dsn).password
    assert password and password not in logged and db_dsn not in logged
    # At shutdown the healthy task is cancelled: expected, not a failure.
    supervisor.closing()
    healthy.cancel()
    await asyncio.sleep(0)
    assert [f.component for f in supervisor.failed] == ["batch writer"]


@pytest.mark.unit
async def test_a_task_that_returns_or_is_cancelled_while_running_is_a_failure() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop)

    async def returns() -> None:
        return None

    supervisor.watch("maintenance", asyncio.create_task(returns()))
    await asyncio.wait_for(stop.wait(), 5)
    cancelled = asyncio.create_task(_forever())
    supervisor.watch("status reporter", cancelled)
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0.01)
    assert supervisor.failures == [
        "the maintenance task failed: returned although it should run until routewatch stops",
        "the status reporter task failed: CancelledError: cancelled while routewatch was running",
    ]


@pytest.mark.unit
async def test_tasks_stopped_at_shutdown_are_not_failures() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop)
    tasks = [asyncio.create_task(_forever()) for _ in range(3)]
    for i, task in enumerate(tasks):
        supervisor.watch(f"task {i}", task)
    supervisor.closing()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert supervisor.failures == [] and supervisor.exit_code == 0 and not stop.is_set()


@pytest.mark.unit
async def test_an_explained_give_up_is_logged_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    class GaveUp(Exception):
        pass

    async def gives_up() -> None:
        raise GaveUp("the server could not be restarted: 5 tries within 600s failed")

    stop = asyncio.Event()
    supervisor = Supervisor(stop)
    with caplog.at_level(logging.ERROR, logger="routewatch"):
        supervisor.watch("embedded PostgreSQL watch", asyncio.create_task(gives_up()), explained=(GaveUp,))
        await asyncio.wait_for(stop.wait(), 5)
    [record] = caplog.records
    assert record.getMessage() == (
        "the embedded PostgreSQL watch task failed: GaveUp: the server could not be"
        " restarted: 5 tries within 600s failed; stopping routewatch"
    )
