"""The API server's limits with real sockets on loopback: the connection cap, head and body deadlines.

The default head deadline against a real ``routewatch serve`` is tested in
tests/test_cli_run.py; here the same server code runs with short limits.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from routewatch.aggregator.publish.api import create_app
from routewatch.aggregator.publish.server import ApiLimits, ApiServer, PortInUse, bind_listeners, start_api
from routewatch.aggregator.refresh import Aggregator
from routewatch.storage.schema import ensure_schema

LIMITS = ApiLimits(head_timeout_s=1.0, body_timeout_s=1.0, max_connections=20)


@pytest.fixture
async def api(pool: asyncpg.Pool) -> AsyncIterator[ApiServer]:
    async with pool.acquire() as conn:
        await ensure_schema(conn)
    aggregator = Aggregator(pool, {"1h": 3600.0}, [("r", "acme/m")], 60.0)
    server = await start_api(create_app(aggregator), bind_listeners("127.0.0.1", 0), LIMITS)
    try:
        yield server
    finally:
        await server.close()


async def _healthz(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def _wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.db
async def test_connections_beyond_the_cap_get_a_503_and_are_closed(api: ApiServer) -> None:
    port = api.addresses[0][1]
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.max_connections)]
    await _wait_for(lambda: api.open_connections == LIMITS.max_connections)
    answer = await _healthz(port)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"Retry-After: 1" in head
    assert json.loads(body)["error"]["status"] == 503
    assert api.refused_connections == 1
    for _, writer in idle[:5]:
        writer.close()
    await _wait_for(lambda: api.open_connections == LIMITS.max_connections - 5)
    assert (await _healthz(port)).startswith(b"HTTP/1.1 200 OK")
    for _, writer in idle[5:]:
        writer.close()


@pytest.mark.db
async def test_an_incomplete_request_head_is_cut_off_however_slowly_it_trickles(api: ApiServer) -> None:
    port = api.addresses[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    closed_after = None
    while time.monotonic() - started < 5:
        try:
            writer.write(b"X")
            await writer.drain()
            if await asyncio.wait_for(reader.read(100), 0.2) == b"":
                closed_after = time.monotonic() - started
                break
        except TimeoutError:
            continue
        except ConnectionError:
            closed_after = time.monotonic() - started
            break
    writer.close()
    assert closed_after is not None and LIMITS.head_timeout_s - 0.1 <= closed_after < LIMITS.head_timeout_s + 1
    await _wait_for(lambda: api.open_connections == 0)


@pytest.mark.db
async def test_an_unread_body_is_drained_for_a_bounded_time(api: ApiServer) -> None:
    """A request announcing a large body it sends slowly: answered, then closed after body_timeout_s."""
    port = api.addresses[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc")
    started = time.monotonic()
    received = b""
    while time.monotonic() - started < 5:
        try:
            writer.write(b"x")
            chunk = await asyncio.wait_for(reader.read(4096), 0.2)
        except TimeoutError:
            continue
        except ConnectionError:
            break
        if not chunk:
            break
        received += chunk
    closed_after = time.monotonic() - started
    writer.close()
    assert received.startswith(b"HTTP/1.1 200 OK")
    assert closed_after < LIMITS.body_timeout_s + 1.5


@pytest.mark.system
async def test_binding_a_taken_port_names_it() -> None:
    [first] = bind_listeners("127.0.0.1", 0)
    first.listen()
    port = first.getsockname()[1]
    try:
        with pytest.raises(PortInUse, match=rf"^the API address 127\.0\.0\.1:{port} is already in use by pid \d+ "):
            bind_listeners("127.0.0.1", port)
    finally:
        first.close()
