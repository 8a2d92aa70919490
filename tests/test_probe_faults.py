"""Every failure a router can produce, against the real simulator on loopback.

Each fault mode must end in exactly one error class, at the phase deadline
that caught it (never later than the total timeout plus a small margin), and
leave the connection pool usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from routewatch.probe import chat_stream
from routewatch.probe.chat_stream import MAX_RESPONSE_BYTES
from routewatch.probe.loop_lag import LoopLagMonitor
from routewatch.probe.scheduler import new_session
from routewatch.probe.target import Canary, Target
from routewatch.probe.timing import StreamMarks
from routewatch.results.probe_result import ERROR_CLASSES, ProbeResult
from routewatch.simulator import ModelProfile, RunningSimulator, start_simulator

# Phase deadlines are checked with small margins: no other test may take the CPU meanwhile.
pytestmark = [pytest.mark.system, pytest.mark.alone]

# The margin every probe must end within, past its deciding deadline.
MARGIN_S = 0.1


@dataclass(frozen=True)
class Timeouts:
    connect: float = 1.0
    headers: float = 0.5
    first_token: float = 0.8
    idle: float = 0.3
    total: float = 1.5


CANARY = Canary("short", [{"role": "user", "content": "Count from 1 to 40 in words."}], 64, 8)


def fault(name: str, **extra: Any) -> ModelProfile:
    """A model that always fails with ``name``."""
    base: dict[str, Any] = dict(ttft_median_ms=20, ttft_sigma=0.0, tokens_per_s=200, output_tokens=12)
    base.update(extra)
    return ModelProfile(model=f"fault/{name}", provider="Faulty", error_rate=1.0, faults={name: 1.0}, **base)


PROFILES = [
    ModelProfile(
        model="ok/plain", provider="Good", ttft_median_ms=20, ttft_sigma=0.0, tokens_per_s=200, output_tokens=12
    ),
    ModelProfile(
        model="ok/renamed",
        provider="Good",
        ttft_median_ms=20,
        ttft_sigma=0.0,
        tokens_per_s=200,
        output_tokens=12,
        served_model="ok/renamed-2025-01-01",
    ),
    ModelProfile(
        model="ok/no-usage",
        provider="Good",
        ttft_median_ms=20,
        ttft_sigma=0.0,
        tokens_per_s=200,
        output_tokens=12,
        include_usage=False,
    ),
    ModelProfile(
        model="ok/keepalive",
        provider="Good",
        ttft_median_ms=200,
        ttft_sigma=0.0,
        tokens_per_s=200,
        output_tokens=12,
        keepalive_ms=20,
    ),
    fault("http_429"),
    fault("http_500"),
    fault("http_400"),
    fault("drop"),
    fault("malformed"),
    fault("stream_error"),
    fault("stall", stall_s=30),
    fault("empty"),
    fault("slow_headers", stall_s=30),
    fault("trickle", trickle_s=0.2),
    fault("keepalive_forever", keepalive_ms=50),
    fault("endless"),
    fault("huge"),
    fault("invalid_utf8"),
    fault("long_line", stall_s=0.5),
    fault("not_sse"),
]


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    simulator = await start_simulator(PROFILES, seed=5)
    yield simulator
    await simulator.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # One connection only: a probe that leaked its connection would make the
    # next probe on this session wait and fail.
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(
        connector=connector, trace_configs=[chat_stream.trace_config()], timeout=aiohttp.ClientTimeout(total=None)
    ) as s:
        yield s


async def probe(
    session: aiohttp.ClientSession, base_url: str, model: str, timeouts: Timeouts = Timeouts(), key: str | None = None
) -> tuple[ProbeResult, float]:
    t = time.monotonic()
    result = await chat_stream.run(session, Target("sim", base_url, model, key), CANARY, timeouts, region="test")
    return result, time.monotonic() - t


async def assert_pool_still_works(session: aiohttp.ClientSession, sim: RunningSimulator) -> None:
    after, _ = await probe(session, sim.base_url, "ok/plain")
    assert after.ok, f"connection not released: {after.error_class} {after.error_detail}"


def check_shape(r: ProbeResult) -> None:
    """Invariants of every result."""
    assert r.ok == (r.error_class is None)
    assert r.error_class is None or r.error_class in ERROR_CLASSES
    if r.ttft_ms is not None:
        assert r.ttfb_ms is not None and r.ttft_ms >= r.ttfb_ms
        assert r.e2e_ms is not None and r.e2e_ms >= r.ttft_ms


async def test_healthy_stream_measures_every_phase(session, sim) -> None:
    marks: list[StreamMarks] = []
    r = await chat_stream.run(
        session, Target("sim", sim.base_url, "ok/plain"), CANARY, Timeouts(), region="test", on_marks=marks.append
    )
    check_shape(r)
    truth = sim.ground_truth.by_request_id(r.request_id)
    assert r.ok and r.http_status == 200 and truth is not None
    assert r.output_tokens == 12 and not r.tokens_estimated and r.chunks == 12
    # Against what the simulator sent (same process, same clock), not its plan:
    # a busy machine delays the sending, the probe must measure the delay.
    t0 = marks[0].t0
    sent = truth.token_times_ns
    assert r.ttft_ms == pytest.approx((sent[0] - t0) / 1e6, abs=3)
    assert r.output_tps == pytest.approx((len(sent) - 1) / ((sent[-1] - sent[0]) / 1e9), rel=0.05)
    true_gap_max = max(b - a for a, b in zip(sent, sent[1:])) / 1e6
    assert r.chunk_gap_max_ms == pytest.approx(true_gap_max, abs=3)
    assert r.model_served == "ok/plain" and r.provider == "Good"
    assert r.connect_ms is not None  # first request on this session opened a connection
    again, _ = await probe(session, sim.base_url, "ok/plain")
    assert again.connect_ms is None  # reused: no set-up to measure


async def test_served_model_differs_from_requested(session, sim) -> None:
    r, _ = await probe(session, sim.base_url, "ok/renamed")
    assert r.ok and r.model == "ok/renamed" and r.model_served == "ok/renamed-2025-01-01"


async def test_no_usage_means_estimated_tokens(session, sim) -> None:
    r, _ = await probe(session, sim.base_url, "ok/no-usage")
    assert r.ok and r.tokens_estimated and r.output_tokens == 12


async def test_keepalive_comments_are_not_tokens(session, sim) -> None:
    r, _ = await probe(session, sim.base_url, "ok/keepalive")
    assert r.ok and r.ttft_ms == pytest.approx(200, abs=15)


@pytest.mark.parametrize(
    ("model", "error_class", "status"),
    [("fault/http_429", "http_429", 429), ("fault/http_500", "http_5xx", 500), ("fault/http_400", "http_4xx", 400)],
)
async def test_http_errors(session, sim, model: str, error_class: str, status: int) -> None:
    r, _elapsed = await probe(session, sim.base_url, model)
    check_shape(r)
    assert (r.error_class, r.http_status) == (error_class, status)
    assert r.ttfb_ms is not None and r.ttft_ms is None and r.chunks == 0
    assert r.error_detail and r.error_detail.startswith(f"HTTP {status}")
    if status == 429:
        assert r.retry_after_s is not None and r.retry_after_s > 0
    await assert_pool_still_works(session, sim)


@pytest.mark.parametrize(
    ("model", "error_class", "detail"),
    [
        ("fault/drop", "stream_error", "connection lost mid-stream"),
        ("fault/stream_error", "stream_error", "error event in stream"),
        ("fault/malformed", "bad_response", "malformed JSON"),
        ("fault/invalid_utf8", "bad_response", "invalid UTF-8"),
        ("fault/not_sse", "bad_response", "expected text/event-stream"),
        ("fault/empty", "empty_response", "without output tokens"),
    ],
)
async def test_stream_faults(session, sim, model: str, error_class: str, detail: str) -> None:
    r, elapsed = await probe(session, sim.base_url, model)
    check_shape(r)
    assert r.error_class == error_class, r.error_detail
    assert r.error_detail is not None and detail in r.error_detail
    assert elapsed < Timeouts().total
    truth = sim.ground_truth.records[-1]
    if model in ("fault/drop", "fault/stream_error"):
        # Tokens before the fault were measured, against what was sent.
        assert r.chunks == len(truth.token_times_ns) > 0
        assert r.ttft_ms is not None
    await assert_pool_still_works(session, sim)


@pytest.mark.parametrize(
    ("model", "error_class", "deadline_s"),
    [
        ("fault/slow_headers", "timeout_headers", Timeouts().headers),
        ("fault/keepalive_forever", "timeout_ttft", Timeouts().first_token),
        ("fault/trickle", "timeout_ttft", Timeouts().first_token),
        ("fault/endless", "timeout_total", Timeouts().total),
    ],
)
async def test_timeouts_fire_at_their_phase_deadline(
    session, sim, model: str, error_class: str, deadline_s: float
) -> None:
    r, elapsed = await probe(session, sim.base_url, model)
    check_shape(r)
    assert r.error_class == error_class, r.error_detail
    assert deadline_s <= elapsed <= deadline_s + MARGIN_S
    await assert_pool_still_works(session, sim)


async def test_stall_between_tokens_is_an_idle_timeout(session, sim) -> None:
    r, elapsed = await probe(session, sim.base_url, "fault/stall")
    assert r.error_class == "timeout_idle" and r.chunks > 0
    # The idle deadline runs from the last token received.
    assert r.e2e_ms is not None
    expected = r.e2e_ms / 1000 + Timeouts().idle
    assert expected - 0.01 <= elapsed <= expected + MARGIN_S
    await assert_pool_still_works(session, sim)


async def test_huge_answer_is_cut_off(session, sim) -> None:
    r, _elapsed = await probe(session, sim.base_url, "fault/huge", Timeouts(total=20.0, idle=5.0, first_token=5.0))
    assert r.error_class == "bad_response"
    assert r.error_detail == f"answer larger than {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB"
    await assert_pool_still_works(session, sim)


async def test_overlong_line_is_refused(session, sim) -> None:
    r, _elapsed = await probe(session, sim.base_url, "fault/long_line", Timeouts(total=20.0, idle=5.0, first_token=5.0))
    assert r.error_class == "bad_response" and "longer than" in (r.error_detail or "")
    await assert_pool_still_works(session, sim)


async def test_refused_connection_is_a_connect_error(session) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        r, elapsed = await probe(session, f"http://127.0.0.1:{port}/v1", "any")
    assert r.error_class == "connect_error" and r.http_status is None and r.ttfb_ms is None
    assert elapsed < 0.5


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listener whose accept queue is full: new connections hang in SYN."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    held = []
    for _ in range(3):
        c = socket.socket()
        c.settimeout(0.2)
        with contextlib.suppress(OSError):
            c.connect(("127.0.0.1", port))
        held.append(c)
    yield port
    for c in held:
        c.close()
    srv.close()


async def test_unanswered_connect_is_a_connect_timeout(session, full_backlog: int) -> None:
    r, elapsed = await probe(session, f"http://127.0.0.1:{full_backlog}/v1", "any")
    assert r.error_class == "timeout_connect", r.error_detail
    assert Timeouts().connect <= elapsed <= Timeouts().connect + MARGIN_S


async def test_the_key_never_reaches_the_result(session, sim) -> None:
    key = "sk-or-v1-0123456789abcdef0123456789"
    r, _ = await probe(session, sim.base_url, "fault/http_400", key=key)
    assert key not in repr(r)
    assert key not in str(Target("sim", sim.base_url, "m", key))


async def test_loop_lag_during_a_probe_is_recorded_and_flagged(sim) -> None:
    lag = LoopLagMonitor(tick_s=0.005)
    lag.start()
    async with new_session(4) as session:

        async def block_loop() -> None:
            await asyncio.sleep(0.01)
            time.sleep(0.12)  # deliberately block the loop while the probe streams

        blocker = asyncio.create_task(block_loop())
        r = await chat_stream.run(
            session,
            Target("sim", sim.base_url, "ok/keepalive"),
            CANARY,
            Timeouts(),
            region="test",
            lag=lag,
            max_lag_ms=50,
        )
        await blocker
        calm = await chat_stream.run(
            session, Target("sim", sim.base_url, "ok/plain"), CANARY, Timeouts(), region="test", lag=lag, max_lag_ms=50
        )
    await lag.stop()
    assert r.loop_lag_ms is not None and r.loop_lag_ms >= 100
    assert r.prober_overloaded
    assert calm.loop_lag_ms is not None and calm.loop_lag_ms < 50 and not calm.prober_overloaded
