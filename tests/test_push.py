"""The push writer against a real central app on loopback, storing in the test PostgreSQL.

The same spool guarantees as the database writer: spool first, deliver,
confirm, replay after a restart, retry while the central server is away;
nothing lost, nothing doubled. The central server is stopped and started on
its port as an operator would restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from factories import config_text, probe_result
from hostile.harness import free_port
from ingest_support import EU_TOKEN, MODEL, US_TOKEN, Central, central_parts
from writer_support import until

from routewatch.budget_follow import follow_pushed_pauses, pushed_paused
from routewatch.config import parse_config
from routewatch.config.settings import Settings
from routewatch.delivery.push import BudgetPaused, IngestDestination, push_writer, read_budget_paused
from routewatch.delivery.spooled import DEAD_LETTER_FILE, SpooledDelivery
from routewatch.probe.scheduler import Prober, new_session
from routewatch.results.probe_result import ProbeResult
from routewatch.sinks import push_sink

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    """An aiohttp app on a fixed loopback port that can be stopped and started again; over TLS with ``tls``."""

    def __init__(self, app: Callable[[], web.Application], tls: ssl.SSLContext | None = None) -> None:
        self._app = app
        self._tls = tls
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/v1/ingest"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._tls).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@asynccontextmanager
async def serving(app: Callable[[], web.Application], tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(app, tls)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def central(db_dsn: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Central]:
    async with central_parts(db_dsn, monkeypatch) as parts:
        yield parts


def writer(url: str, spool: Path, token: str = EU_TOKEN) -> SpooledDelivery:
    """A push writer that retries quickly (0.05 s doubling to 0.4 s), as a test can wait."""
    return push_writer(url, token, spool, token_env="EU_TOKEN", retry_s=0.05, max_retry_s=0.4, flush_s=0.05)


def results(n: int, **fields: Any) -> list[ProbeResult]:
    return [probe_result(**({"region": "eu", "model": MODEL} | fields)) for _ in range(n)]


async def submit(w: SpooledDelivery, batch: list[ProbeResult]) -> None:
    for r in batch:
        await w.submit(r)


def dead_letters(spool: Path) -> list[dict[str, Any]]:
    path = spool / DEAD_LETTER_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.db
async def test_an_outage_of_the_central_server_loses_nothing_and_doubles_nothing(
    central: Central, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    spool = tmp_path / "spool"
    async with serving(central.app) as server:
        w = writer(server.url, spool)
        await w.start()
        try:
            before = results(10)
            await submit(w, before)
            await until("the first results", lambda: w.written == 10)
            await server.stop()
            during = results(20)
            await submit(w, during)
            await until("the outage to be noticed", lambda: not w.destination_ok)
            await asyncio.sleep(1.0)  # several attempts, backing off
            assert w.written == 10 and w.spool_bytes > 0
            await server.start()
            await until("the spooled results", lambda: w.written == 30)
            after = results(5)
            await submit(w, after)
            await until("results after the outage", lambda: w.written == 35 and not w.backlog)
        finally:
            await w.close()
    ids = await central.ids()
    assert len(ids) == len(set(ids)), "a result was stored twice"
    assert set(ids) == {r.id for r in before + during + after}
    assert w.rejected == 0 and w.dropped == 0 and w.failed is None
    unavailable = [m for m in caplog.messages if "unavailable" in m and server.url in m]
    assert 1 <= len(unavailable) <= 2, unavailable  # once per episode (again only if the reason changes)
    assert any(f"ingest endpoint {server.url} reachable again" in m for m in caplog.messages)
    assert EU_TOKEN not in caplog.text


@pytest.mark.db
async def test_the_spool_is_replayed_after_a_restart(central: Central, tmp_path: Path) -> None:
    """A prober stopped while the central server is away sends what it kept when it starts again."""
    spool = tmp_path / "spool"
    server = Server(central.app)  # not started: connection refused
    first = writer(server.url, spool)
    await first.start()
    kept = results(15)
    await submit(first, kept)
    await until("the outage to be noticed", lambda: not first.destination_ok)
    await first.close(timeout_s=0.5)
    assert first.written == 0
    await server.start()
    second = writer(server.url, spool)
    try:
        await second.start()
        await until("the kept results", lambda: second.written == 15)
    finally:
        await second.close()
        await server.stop()
    ids = await central.ids()
    assert sorted(ids) == sorted(r.id for r in kept)


@pytest.mark.db
async def test_a_batch_stored_but_not_confirmed_is_sent_again_and_stored_once(central: Central, tmp_path: Path) -> None:
    """The central server stores a batch, then the answer is lost (a 502 from a proxy): the retry doubles nothing."""
    lost_answers = 2

    @web.middleware
    async def lose_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal lost_answers
        response = await handler(request)
        if lost_answers > 0:
            lost_answers -= 1
            return web.Response(status=502, text="bad gateway")
        return response

    def app() -> web.Application:
        inner = central.app()
        inner.middlewares.append(lose_answers)
        return inner

    async with serving(app) as server:
        w = writer(server.url, tmp_path / "spool")
        await w.start()
        try:
            sent = results(12)
            await submit(w, sent)
            await until("the lost answers and a confirmed retry", lambda: lost_answers == 0 and w.destination_ok)
        finally:
            await w.close()
    ids = await central.ids()
    assert len(ids) == len(set(ids)) == 12
    assert set(ids) == {r.id for r in sent}
    assert w.failed_flushes >= 2 and w.rejected == 0
    # The writer counts what the central server newly stored: the retries stored nothing new.
    assert w.written < 12


@pytest.mark.db
async def test_a_batch_over_the_servers_limits_is_split(central: Central, tmp_path: Path) -> None:
    sent = results(20)  # a record is some 700 bytes: 4000 bytes take five of them
    huge = probe_result(region="eu", model=MODEL, request_id="r" * 5000)
    spool = tmp_path / "spool"
    async with serving(lambda: central.app(max_results=7, max_body_bytes=4000)) as server:
        w = writer(server.url, spool)
        await w.start()
        try:
            await submit(w, [*sent[:10], huge, *sent[10:]])
            await until("the results that fit", lambda: w.written == 20 and w.rejected == 1)
        finally:
            await w.close()
    assert set(await central.ids()) == {r.id for r in sent}
    [letter] = dead_letters(spool)
    assert letter["result"]["id"] == str(huge.id)
    assert "too large for the central server" in letter["error"] and "at most 4000" in letter["error"]


@pytest.mark.db
async def test_records_the_server_rejects_go_to_the_dead_letter_file_with_the_reason(
    central: Central, tmp_path: Path
) -> None:
    good = results(3)
    elsewhere = results(2, region="us")  # this prober's token is eu's
    spool = tmp_path / "spool"
    async with serving(central.app) as server:
        w = writer(server.url, spool)
        await w.start()
        try:
            await submit(w, [good[0], *elsewhere, *good[1:]])
            await until("the batch", lambda: w.written == 3 and w.rejected == 2)
        finally:
            await w.close()
    assert set(await central.ids()) == {r.id for r in good}
    letters = dead_letters(spool)
    assert {letter["result"]["id"] for letter in letters} == {str(r.id) for r in elsewhere}
    assert all("region 'us' is not this token's region ('eu')" in letter["error"] for letter in letters)


@pytest.mark.db
async def test_a_refused_token_keeps_the_results_in_the_spool(
    central: Central, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-the-" + EU_TOKEN
    spool = tmp_path / "spool"
    kept = results(6)
    async with serving(central.app) as server:
        w = writer(server.url, spool, token=wrong)
        await w.start()
        try:
            await submit(w, kept)
            await until("several refused attempts", lambda: w.failed_flushes >= 3)
            assert w.written == 0 and w.rejected == 0  # kept, not thrown away
        finally:
            await w.close(timeout_s=0.3)
        refused = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(refused) == 1, "once per episode, not once per attempt"
        assert "refuses this prober's token" in refused[0].getMessage()
        assert "$EU_TOKEN" in refused[0].getMessage()
        # The operator fixes the token: the next start sends everything.
        fixed = writer(server.url, spool)
        await fixed.start()
        try:
            await until("the kept results", lambda: fixed.written == 6)
        finally:
            await fixed.close()
    assert sorted(await central.ids()) == sorted(r.id for r in kept)
    assert not dead_letters(spool)
    for token in (wrong, EU_TOKEN, US_TOKEN):
        assert token not in caplog.text


@pytest.mark.system
async def test_redirects_are_not_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A redirect could take the token to another address: it is an outage, and the target never hears of it."""
    seen: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"region": "eu", "received": 0, "stored": 0, "duplicates": 0, "rejected": []})

    target = web.Application()
    target.router.add_post("/v1/ingest", elsewhere)
    async with serving(lambda: target) as other:

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(other.url)

        def redirecting() -> web.Application:
            app = web.Application()
            app.router.add_post("/v1/ingest", redirect)
            return app

        async with serving(redirecting) as server:
            w = writer(server.url, tmp_path / "spool")
            await w.start()
            try:
                await submit(w, results(2))
                await until("the redirect to be refused", lambda: w.failed_flushes >= 2)
            finally:
                await w.close(timeout_s=0.2)
    assert seen == []
    assert w.written == 0
    assert any("a redirect, not followed" in m for m in caplog.messages)


def self_signed(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 (its own authority) and a server context serving it."""
    openssl = shutil.which("openssl")
    assert openssl, "these tests make their certificate with the openssl command"
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context


@pytest.mark.system
async def test_results_go_over_https_to_a_server_the_configured_authority_vouches_for(
    central: Central, tmp_path: Path
) -> None:
    """Through the command line's wiring (sinks.push_sink) from a probes.yaml with ingest.ca_file."""
    cert, tls = self_signed(tmp_path)
    sent = results(8)
    async with serving(central.app, tls) as server:
        config = parse_config(
            config_text(ingest={"url": server.url, "token_env": "EU_TOKEN", "ca_file": str(cert)}), "probes.yaml"
        )
        async with push_sink(config, Settings(), tmp_path / "spool") as w:
            await submit(w, sent)
            await until("the results", lambda: w.written == 8)
    assert sorted(await central.ids()) == sorted(r.id for r in sent)


@pytest.mark.system
async def test_a_certificate_no_authority_vouches_for_is_an_outage_and_the_token_is_not_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, tls = self_signed(tmp_path)
    heard: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        heard.append(request.headers.get("Authorization", ""))
        return web.json_response({})

    def app() -> web.Application:
        served_app = web.Application()
        served_app.router.add_post("/v1/ingest", handler)
        return served_app

    async with serving(app, tls) as server:
        w = writer(server.url, tmp_path / "spool")  # the system's authorities only
        await w.start()
        try:
            await submit(w, results(2))
            await until("refused handshakes", lambda: w.failed_flushes >= 2)
        finally:
            await w.close(timeout_s=0.2)
    assert heard == [] and w.written == 0 and w.rejected == 0
    assert any("unavailable" in m and "certificate" in m.lower() for m in caplog.messages), caplog.messages
    assert EU_TOKEN not in caplog.text


@pytest.mark.db
async def test_shutdown_is_bounded_when_the_centre_hangs_and_the_batch_stays_in_the_spool(
    central: Central, tmp_path: Path
) -> None:
    """A central server that takes the request and never answers: close() keeps to its time, nothing is lost."""
    arrived = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def hanging() -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/ingest", hang)
        return app

    spool = tmp_path / "spool"
    kept = results(3)
    async with serving(hanging) as server:
        w = writer(server.url, spool)
        await w.start()
        await submit(w, kept)
        await asyncio.wait_for(arrived.wait(), 10)
        started = time.monotonic()
        await w.close(timeout_s=0.5)
        took = time.monotonic() - started
    assert took < 2.0, f"close took {took:.1f} s"
    assert w.written == 0
    async with serving(central.app) as server:
        again = writer(server.url, spool)
        await again.start()
        try:
            await until("the kept batch", lambda: again.written == 3)
        finally:
            await again.close()
    assert sorted(await central.ids()) == sorted(r.id for r in kept)


@pytest.mark.db
async def test_a_pushing_prober_learns_the_budgets_pauses_from_the_ingest_report(
    central: Central, tmp_path: Path
) -> None:
    # The central server's day so far: one series spent past the budget, so its leader pauses it.
    today = await central.pool.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    await central.pool.execute("INSERT INTO probe_cost_daily VALUES ($1, 'sim', 'm/dear', 'short', 4, 4, 2.0)", today)
    central.aggregator.budget.configure(1.0, 100.0)
    await central.aggregator.refresh()
    async with serving(central.app) as server:
        w = writer(server.url, tmp_path / "spool")
        await w.start()
        try:
            await submit(w, results(1))
            await until("the first report", lambda: w.written == 1)
        finally:
            await w.close()
    destination = w.destination
    assert isinstance(destination, IngestDestination)
    assert destination.budget_paused == BudgetPaused(today, frozenset({("sim", "m/dear", "short")}))
    assert pushed_paused(destination, today) == {"sim|m/dear|short"}
    assert pushed_paused(destination, today + timedelta(days=1)) == frozenset(), "pauses end with the day"
    async with new_session(1) as session:
        prober = Prober(session, parse_config(config_text(), "p.yaml").timeouts, "eu", 1)
        following = asyncio.create_task(follow_pushed_pauses(destination, prober, every_s=0.05))
        try:
            await until("the prober to take the pauses", lambda: prober.paused == {"sim|m/dear|short"})
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following


@pytest.mark.unit
@pytest.mark.parametrize(
    "raw",
    [
        "all",
        {"day": "2026-11-30"},
        {"day": "yesterday", "series": []},
        {"day": "2026-11-30", "series": [["sim", "m"]]},
        {"day": "2026-11-30", "series": [["sim", "m", 3]]},
        {"day": "2026-11-30", "series": "everything"},
    ],
    ids=repr,
)
def test_a_malformed_budget_paused_keeps_what_was_known(raw: object) -> None:
    known = BudgetPaused(date(2026, 11, 30), frozenset({("sim", "m/a", "short")}))
    assert read_budget_paused(raw, known) is known
    assert read_budget_paused(None, known) is known  # an older server says nothing
