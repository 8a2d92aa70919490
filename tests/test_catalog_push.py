"""A pushing prober's model lists to ``POST /v1/ingest/catalog``: the body (what a 20,000-model list
measures) and the sender (``delivery.catalog_push.CatalogPusher``) against real loopback servers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from hostile.harness import free_port
from ingest_support import EU_TOKEN, central_parts

from routewatch.aggregator.publish.ingest_catalog import MAX_CATALOG_BODY_BYTES, read_catalog_push
from routewatch.delivery.catalog_push import CatalogPusher, catalog_url, encode_listing
from routewatch.probe.model_listing import MAX_LISTED

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


@pytest.mark.unit
def test_a_20000_model_list_fits_the_body_limit_with_room() -> None:
    """The measured body: 20,000 OpenRouter-like ids with three prices, and the longest ids a reader keeps."""
    typical = [(f"vendor-{i % 300}/model-name-{i:05d}-instruct", 2.5, 10.0, 1.25) for i in range(MAX_LISTED)]
    longest = [(f"{i:05d}" + "x" * 195, 12345.678901, 23456.789012, 3456.789012) for i in range(MAX_LISTED)]
    typical_bytes = len(encode_listing("sim", T0, True, typical, []))
    longest_bytes = len(encode_listing("sim", T0, True, longest, []))
    assert typical_bytes < 2_100_000, typical_bytes
    assert longest_bytes < 0.7 * MAX_CATALOG_BODY_BYTES, longest_bytes


@pytest.mark.unit
def test_the_body_reads_back_as_sent() -> None:
    listed = [("a/b", 2.5, 10.0, None), ("c/d", None, None, None), ("e/é", 1.0, 2.0, 0.5)]
    body = encode_listing("sim", T0, False, listed, ["k/1"])
    push = read_catalog_push(body, frozenset({"sim"}), now=T0, oldest=T0 - timedelta(days=1))
    assert (push.router, push.seen, push.complete, push.models, push.keep) == ("sim", T0, False, listed, ["k/1"])
    assert push.prices_refused == []


@pytest.mark.unit
def test_the_catalog_url_sits_beside_the_ingest_url() -> None:
    assert catalog_url("https://c.example/v1/ingest") == "https://c.example/v1/ingest/catalog"
    assert catalog_url("https://c.example/rw/v1/ingest/") == "https://c.example/rw/v1/ingest/catalog"


# ------------------------------------------------------------ the prober's sender, against real servers


async def _site(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.mark.db
async def test_a_failed_send_is_logged_once_without_the_token_and_the_next_read_is_recorded(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    pusher = CatalogPusher(catalog_url(f"http://127.0.0.1:{port}/v1/ingest"), EU_TOKEN, token_env="EU_TOKEN")
    await pusher.open()
    async with central_parts(db_dsn, monkeypatch) as central:
        try:
            # The central server is down: two reads fail, one warning.
            for minute in (0, 1):
                pusher.submit("sim", T0 + timedelta(minutes=minute), [("x/a", 1.0, 2.0, None)], complete=True, keep=[])
                await pusher.wait()
            assert (pusher.sent, pusher.failed) == (0, 2)
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1 and "not recorded by the central catalog" in warnings[0], warnings
            # It is back: the next read is recorded.
            runner = await _site(central.app(), port)
            try:
                later = T0 + timedelta(minutes=2)
                pusher.submit("sim", later, [("x/a", 1.0, 2.0, None)], complete=True, keep=[])
                await pusher.wait()
            finally:
                await runner.cleanup()
            assert pusher.sent == 1
            row = await central.pool.fetchrow("SELECT * FROM model_catalog WHERE model = 'x/a'")
            assert row is not None and row["last_seen"] == later and row["input_usd_per_mtok"] == 1.0
            assert any("recorded by the central catalog again" in r.getMessage() for r in caplog.records)
        finally:
            await pusher.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert EU_TOKEN not in logged and EU_TOKEN[:12] not in logged and EU_TOKEN[-12:] not in logged


@pytest.mark.system
async def test_a_send_never_waits_and_a_newer_read_replaces_one_hanging() -> None:
    """The central server takes the request and never answers: submit returns at once, the next read's
    send replaces the hanging one, and close() ends it."""
    arrived: list[str] = []

    async def hang(request: web.Request) -> web.Response:
        arrived.append(json.loads(await request.read())["seen"])
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_post("/v1/ingest/catalog", hang)
    port = free_port()
    runner = await _site(app, port)
    pusher = CatalogPusher(f"http://127.0.0.1:{port}/v1/ingest/catalog", EU_TOKEN, token_env="EU_TOKEN")
    await pusher.open()
    try:
        started = time.perf_counter()
        pusher.submit("sim", T0, [("x/a", None, None, None)], complete=True, keep=[])
        # A submit that waited for this send would never return (it is never answered); the bound only
        # leaves room for a full garbage collection of a test worker's heap (about 0.1 s after collection).
        assert time.perf_counter() - started < 0.5
        await _until(lambda: len(arrived) == 1)
        first = next(iter(pusher._tasks.values()))
        pusher.submit("sim", T0 + timedelta(minutes=1), [("x/a", None, None, None)], complete=True, keep=[])
        await _until(lambda: len(arrived) == 2)
        assert first.cancelled()
        assert arrived == [T0.isoformat(), (T0 + timedelta(minutes=1)).isoformat()]
    finally:
        closing = time.perf_counter()
        await pusher.close()
        assert time.perf_counter() - closing < 2
        await runner.cleanup()


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
