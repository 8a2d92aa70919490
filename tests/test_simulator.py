"""The router simulator, exercised over loopback HTTP with a hand-written SSE reader."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hostile.harness import wait_until_async

from routewatch.simulator import (
    DEFAULT_PROFILES,
    FAULT_KINDS,
    ModelProfile,
    RunningSimulator,
    load_profiles,
    start_simulator,
)
from routewatch.simulator.server import HANDLERS

# Token gaps and deadlines are checked to the millisecond: no other test may take the CPU meanwhile.
pytestmark = pytest.mark.alone

Start = Callable[..., Awaitable[RunningSimulator]]
MS = 1_000_000


def profile(model: str = "test/fast", **overrides: Any) -> ModelProfile:
    """A quick, exact model: fixed TTFT, 500 tok/s, 10 tokens, no faults."""
    fields: dict[str, Any] = dict(
        provider="TestProvider", ttft_median_ms=40, ttft_sigma=0.0, tokens_per_s=500, output_tokens=10
    )
    return ModelProfile(model=model, **{**fields, **overrides})


def faulty(kind: str, **overrides: Any) -> ModelProfile:
    return profile(f"test/{kind}", error_rate=1.0, faults={kind: 1.0}, **overrides)


def chat(model: str, prompt: str = "Count to ten. nonce=4f2a", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


@dataclass
class Event:
    at_ns: int  # perf_counter_ns when its first line arrived
    data: str | None = None
    comment: str | None = None

    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


@dataclass
class Stream:
    events: list[Event]
    error: BaseException | None  # how reading ended, if not cleanly

    @property
    def data(self) -> list[Event]:
        return [e for e in self.events if e.data is not None]

    @property
    def done(self) -> bool:
        return bool(self.data) and self.data[-1].data == "[DONE]"

    def chunks(self) -> list[dict[str, Any]]:
        return [e.json() for e in self.data if e.data != "[DONE]"]

    def token_events(self) -> list[Event]:
        """Events whose delta carries content or reasoning text."""
        out = []
        for e in self.data:
            if e.data == "[DONE]":
                continue
            chunk = e.json()
            delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
            if delta.get("content") or delta.get("reasoning"):
                out.append(e)
        return out


async def read_stream(resp: aiohttp.ClientResponse, hang_up_after: int | None = None) -> Stream:
    """Parse SSE by hand, stamping each event when its bytes arrive.

    ``hang_up_after``: once that many token events are in, half-close the
    connection and read on to its end. The server reads end-of-file, as from a
    client gone, and closes; the stream then holds every byte it wrote.
    """
    events: list[Event] = []
    data_lines: list[str] = []
    first_ns = 0
    try:
        while line := await resp.content.readline():
            now = time.perf_counter_ns()
            text = line.decode().rstrip("\r\n")
            if not text:
                if data_lines:
                    events.append(Event(first_ns, data="\n".join(data_lines)))
                    data_lines = []
                    if hang_up_after is not None and len(Stream(events, None).token_events()) == hang_up_after:
                        assert resp.connection is not None and resp.connection.transport is not None
                        resp.connection.transport.write_eof()
            elif text.startswith(":"):
                events.append(Event(now, comment=text[1:].strip()))
            else:
                name, _, value = text.partition(":")
                assert name == "data", text
                if not data_lines:
                    first_ns = now
                data_lines.append(value.removeprefix(" "))
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Stream(events, exc)
    return Stream(events, None)


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    started: list[RunningSimulator] = []

    async def _start(*profiles: ModelProfile, seed: int | None = None) -> RunningSimulator:
        sim = await start_simulator(profiles, seed=seed)
        started.append(sim)
        return sim

    yield _start
    for sim in started:
        await sim.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.mark.system
async def test_stream_format_and_ground_truth(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(profile(served_model="test/fast-2025"))
    t0 = time.perf_counter_ns()
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/fast")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        request_id = resp.headers["X-Request-Id"]
        stream = await read_stream(resp)

    assert stream.error is None and stream.done
    chunks = stream.chunks()
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    for chunk in chunks:
        assert chunk["id"] == request_id and chunk["id"].startswith("gen-")
        assert chunk["object"] == "chat.completion.chunk"
        assert isinstance(chunk["created"], int)
        assert chunk["model"] == "test/fast-2025" and chunk["provider"] == "TestProvider"
    tokens = stream.token_events()
    texts = [e.json()["choices"][0]["delta"]["content"] for e in tokens]
    assert texts[:3] == [" one", " two", " three"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == len(tokens) == 10
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 10

    record = sim.ground_truth.by_request_id(request_id)
    assert record is not None
    assert (record.model, record.status, record.fault) == ("test/fast", 200, None)
    assert record.nonce_prompt == "Count to ten. nonce=4f2a"
    assert record.finished and record.usage_sent and record.output_tokens == 10
    assert len(record.token_times_ns) == 10
    assert record.injected_ttft_ms is not None
    assert record.injected_ttft_ms == pytest.approx(40)
    # What the client saw agrees with what the simulator says it did.
    client_ttft_ms = (tokens[0].at_ns - t0) / MS
    assert abs(client_ttft_ms - record.injected_ttft_ms) < 20
    for event, sent_ns in zip(tokens, record.token_times_ns):
        assert 0 <= event.at_ns - sent_ns < 20 * MS


@pytest.mark.system
async def test_tokens_follow_absolute_deadlines(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(profile(tokens_per_s=200, output_tokens=40, ttft_median_ms=10))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/fast")) as resp:
        await read_stream(resp)
    record = sim.ground_truth.records[-1]
    first_due = record.received_ns + 10 * MS
    lateness = [t - (first_due + k * 5 * MS) for k, t in enumerate(record.token_times_ns)]
    assert min(lateness) >= 0
    # Gap after gap would let lateness grow with every token; deadlines keep it bounded.
    assert max(lateness) < 15 * MS


@pytest.mark.system
async def test_reasoning_before_content_and_max_tokens(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(profile("test/r1", reasoning_tokens=4, output_tokens=10))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/r1", max_tokens=9)) as resp:
        stream = await read_stream(resp)
    deltas = [e.json()["choices"][0]["delta"] for e in stream.token_events()]
    assert [set(d) for d in deltas] == [{"reasoning"}] * 4 + [{"content"}] * 5
    chunks = stream.chunks()
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 9
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 4}
    record = sim.ground_truth.records[-1]
    assert (record.output_tokens, record.reasoning_tokens) == (9, 4)


@pytest.mark.system
@pytest.mark.parametrize("profile_usage, request_usage", [(False, True), (True, False)])
async def test_usage_only_when_both_want_it(
    start: Start, session: aiohttp.ClientSession, profile_usage: bool, request_usage: bool
) -> None:
    sim = await start(profile(include_usage=profile_usage))
    body = chat("test/fast", stream_options={"include_usage": request_usage})
    async with session.post(f"{sim.base_url}/chat/completions", json=body) as resp:
        stream = await read_stream(resp)
    assert stream.done
    assert all("usage" not in c for c in stream.chunks())
    assert not sim.ground_truth.records[-1].usage_sent


@pytest.mark.system
async def test_keepalive_comments_before_first_token(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(profile(ttft_median_ms=120, keepalive_ms=30))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/fast")) as resp:
        stream = await read_stream(resp)
    first_token = stream.token_events()[0].at_ns
    comments = [e for e in stream.events if e.comment is not None]
    assert len(comments) >= 3
    assert all(c.comment == "OPENROUTER PROCESSING" and c.at_ns < first_token for c in comments)


@pytest.mark.system
async def test_non_streaming_completion(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(profile())
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/fast", stream=False)) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].startswith("one two three")
    assert body["usage"]["completion_tokens"] == 10


@pytest.mark.system
async def test_http_faults(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("http_429"), faulty("http_500"), faulty("http_400"))
    for kind, status in [("http_429", 429), ("http_500", 500), ("http_400", 400)]:
        async with session.post(f"{sim.base_url}/chat/completions", json=chat(f"test/{kind}")) as resp:
            assert resp.status == status
            error = (await resp.json())["error"]
            assert error["message"] and error["type"]
            assert ("Retry-After" in resp.headers) == (kind == "http_429")
            record = sim.ground_truth.by_request_id(resp.headers["X-Request-Id"])
        assert record is not None
        assert (record.status, record.fault, record.injected_ttft_ms) == (status, kind, None)
    assert int(resp.headers.get("Retry-After", "1")) >= 1


@pytest.mark.system
async def test_drop_cuts_the_connection(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("drop"))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/drop")) as resp:
        assert resp.status == 200
        stream = await read_stream(resp)
    assert isinstance(stream.error, aiohttp.ClientPayloadError)
    assert not stream.done
    record = sim.ground_truth.records[-1]
    assert len(stream.token_events()) == record.output_tokens == 5
    assert not record.finished


@pytest.mark.system
async def test_malformed_chunk(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("malformed"))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/malformed")) as resp:
        stream = await read_stream(resp)
    bad = []
    for event in stream.data:
        try:
            json.loads(event.data or "")
        except ValueError:
            bad.append(event)
    assert len(bad) == 2  # the malformed chunk, and [DONE] which is not JSON either
    assert bad[-1].data == "[DONE]"


@pytest.mark.system
async def test_stream_error_event(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("stream_error"))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/stream_error")) as resp:
        assert resp.status == 200
        stream = await read_stream(resp)
    assert stream.error is None and not stream.done
    last = stream.chunks()[-1]
    assert last["error"]["code"] == 502 and last["error"]["message"]
    assert not sim.ground_truth.records[-1].finished


@pytest.mark.system
async def test_stall_is_caught_by_a_read_timeout(start: Start) -> None:
    sim = await start(faulty("stall", stall_s=5.0))
    timeout = aiohttp.ClientTimeout(sock_read=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.perf_counter_ns()
        async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/stall")) as resp:
            stream = await read_stream(resp)
        waited_ms = (time.perf_counter_ns() - t0) / MS
    assert isinstance(stream.error, asyncio.TimeoutError)
    assert len(stream.token_events()) == 5
    assert waited_ms < 1000
    record = sim.ground_truth.records[-1]
    assert record.fault == "stall" and not record.finished


@pytest.mark.system
async def test_stall_then_resume(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("stall", stall_s=0.2))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/stall")) as resp:
        stream = await read_stream(resp)
    assert stream.done
    times = [e.at_ns for e in stream.token_events()]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) >= 200 * MS and sorted(gaps)[-2] < 50 * MS


@pytest.mark.system
async def test_empty_answer(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("empty"))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/empty")) as resp:
        assert resp.status == 200
        stream = await read_stream(resp)
    assert stream.done and stream.token_events() == []
    chunks = stream.chunks()
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 0
    record = sim.ground_truth.records[-1]
    assert record.output_tokens == 0 and record.injected_ttft_ms is None and record.finished


async def read_raw(resp: aiohttp.ClientResponse, limit_bytes: int | None = None) -> list[tuple[int, bytes]]:
    """Bytes as they arrive, each piece stamped; stops after `limit_bytes`, at EOF or on a timeout."""
    pieces: list[tuple[int, bytes]] = []
    try:
        async for data in resp.content.iter_any():
            pieces.append((time.perf_counter_ns(), data))
            if limit_bytes is not None and sum(len(d) for _, d in pieces) >= limit_bytes:
                break
    except TimeoutError:
        pass
    return pieces


@pytest.mark.system
async def test_slow_headers(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("slow_headers", stall_s=0.3))
    t0 = time.perf_counter_ns()
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/slow_headers")) as resp:
        headers_at = time.perf_counter_ns()
        stream = await read_stream(resp)
    assert headers_at - t0 >= 300 * MS
    assert stream.done and len(stream.token_events()) == 10
    record = sim.ground_truth.records[-1]
    assert record.fault == "slow_headers" and record.finished
    assert record.headers_ns is not None and 300 * MS <= record.headers_ns - record.received_ns < 350 * MS
    assert record.headers_ns < headers_at
    # The TTFT is counted from the request, so the held-back headers are part of it.
    assert record.drawn_ttft_ms == pytest.approx(40)
    assert record.injected_ttft_ms == pytest.approx(340)
    assert record.token_times_ns[0] - record.received_ns >= 340 * MS


@pytest.mark.system
async def test_trickle_sends_one_byte_at_a_time(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("trickle", trickle_s=0.02))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/trickle")) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        pieces = await read_raw(resp, limit_bytes=8)
    assert [d for _, d in pieces] == [bytes([b]) for b in b'data: {"']
    gaps = [(b - a) / MS for (a, _), (b, _) in zip(pieces, pieces[1:])]
    assert min(gaps) >= 15 and statistics.median(gaps) < 40
    await asyncio.sleep(0.05)
    record = sim.ground_truth.records[-1]
    assert record.fault == "trickle" and not record.finished and record.token_times_ns == []
    assert not sim.app[HANDLERS]  # hanging up ended the handler


@pytest.mark.system
async def test_trickle_delivers_the_whole_stream(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("trickle", trickle_s=0.0, output_tokens=3))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/trickle")) as resp:
        stream = await read_stream(resp)
    assert stream.done and len(stream.token_events()) == 3
    assert stream.chunks()[-1]["usage"]["completion_tokens"] == 3
    record = sim.ground_truth.records[-1]
    assert record.finished and record.output_tokens == 3 and len(record.token_times_ns) == 3
    assert record.injected_ttft_ms == (record.token_times_ns[0] - record.received_ns) / 1e6
    # A token is stamped at its event's last byte, which a reader needs before it has the event.
    for event, sent_ns in zip(stream.token_events(), record.token_times_ns):
        assert sent_ns <= event.at_ns + 20 * MS


@pytest.mark.system
async def test_keepalive_forever(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("keepalive_forever", keepalive_ms=20, ttft_median_ms=5))
    timeout = aiohttp.ClientTimeout(total=0.3)
    body = chat("test/keepalive_forever")
    async with session.post(f"{sim.base_url}/chat/completions", json=body, timeout=timeout) as resp:
        stream = await read_stream(resp)
    assert isinstance(stream.error, asyncio.TimeoutError)
    comments = [e.comment for e in stream.events if e.comment is not None]
    assert len(comments) >= 8 and set(comments) == {"OPENROUTER PROCESSING"}
    assert [c["choices"][0]["delta"] for c in stream.chunks()] == [{"role": "assistant", "content": ""}]
    await asyncio.sleep(0.05)
    record = sim.ground_truth.records[-1]
    assert record.token_times_ns == [] and record.injected_ttft_ms is None and not record.finished
    assert not sim.app[HANDLERS]


@pytest.mark.system
async def test_endless(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("endless", tokens_per_s=400))
    # 60 tokens take 0.15 s at 400 tok/s; 10 s would be a machine too busy to judge.
    timeout = aiohttp.ClientTimeout(total=10)
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/endless"), timeout=timeout) as resp:
        stream = await read_stream(resp, hang_up_after=60)
    # Far past the profile's 10 tokens, it only ended because the client went away.
    assert isinstance(stream.error, aiohttp.ClientPayloadError) and not stream.done
    tokens = stream.token_events()
    assert len(tokens) >= 60
    assert all(c["choices"][0]["finish_reason"] is None and "usage" not in c for c in stream.chunks())
    await wait_until_async(lambda: not sim.app[HANDLERS], 10, "hanging up to end the handler")
    record = sim.ground_truth.records[-1]
    # The client read every byte the simulator wrote (see read_stream), however
    # late a busy machine ran either side: the record counts exactly those tokens,
    # each stamped before its bytes arrived.
    assert not record.finished and record.output_tokens == len(record.token_times_ns) == len(tokens)
    assert all(sent_ns < event.at_ns for event, sent_ns in zip(tokens, record.token_times_ns))


@pytest.mark.system
async def test_huge(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("huge", huge_bytes=3_000_500))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/huge", max_tokens=16)) as resp:
        body = await resp.read()
    events = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert sum(len(t) for t in texts) == 3_000_500
    assert max(len(t) for t in texts) == 1024
    usage = chunks[-1]["usage"]
    record = sim.ground_truth.records[-1]
    # 2930 whole KiB and the rest
    assert usage["completion_tokens"] == record.output_tokens == len(record.token_times_ns) == 2931
    assert record.finished and record.injected_ttft_ms == pytest.approx(40)


@pytest.mark.system
async def test_huge_answer_hung_up_on(
    start: Start, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    sim = await start(faulty("huge"))  # 50 MB by default
    caplog.set_level(logging.WARNING)
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/huge")) as resp:
        await read_raw(resp, limit_bytes=200_000)
        resp.close()
    await asyncio.sleep(0.1)
    record = sim.ground_truth.records[-1]
    assert not record.finished and 100 < record.output_tokens < 10_000
    assert not sim.app[HANDLERS] and caplog.records == []


@pytest.mark.system
async def test_invalid_utf8(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("invalid_utf8"))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/invalid_utf8")) as resp:
        body = await resp.read()
    events = [e for e in body.split(b"\n\n") if e]
    bad = [i for i, e in enumerate(events) if b"\xff\xfe" in e]
    assert bad == [6]  # the role chunk, five good tokens, then the broken one
    with pytest.raises(UnicodeDecodeError):
        events[6].decode()
    assert events[6].startswith(b'data: {"id":"gen-') and events[6].endswith(b'\xff\xfe"},"finish_reason":null}]}')
    assert events[-1] == b"data: [DONE]"
    record = sim.ground_truth.records[-1]
    assert record.fault == "invalid_utf8" and record.finished and len(record.token_times_ns) == 10


@pytest.mark.system
async def test_long_line(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("long_line", long_line_bytes=300_000, stall_s=0.3))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/long_line")) as resp:
        pieces = await read_raw(resp)
    body = b"".join(d for _, d in pieces)
    lines = body.split(b"\n")
    long = [line for line in lines if len(line) > 1000]
    assert [len(line) for line in long] == [300_000]
    assert json.loads(long[0].removeprefix(b"data: "))["choices"][0]["delta"]["content"].startswith(" six")
    # The line's first bytes come long before its end.
    start_at = body.index(long[0])
    offset, started_ns, ended_ns = 0, 0, 0
    for t_ns, data in pieces:
        if not started_ns and offset + len(data) > start_at:
            started_ns = t_ns
        offset += len(data)
        if offset >= start_at + len(long[0]) + 1:
            ended_ns = t_ns
            break
    assert (ended_ns - started_ns) >= 250 * MS
    assert body.endswith(b"data: [DONE]\n\n")
    record = sim.ground_truth.records[-1]
    assert record.finished and len(record.token_times_ns) == 10
    assert record.token_times_ns[5] <= ended_ns and record.token_times_ns[6] - record.token_times_ns[5] >= 2 * MS


@pytest.mark.system
async def test_not_sse(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(faulty("not_sse"))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/not_sse")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].startswith("one two")
    record = sim.ground_truth.records[-1]
    assert (record.fault, record.status, record.token_times_ns) == ("not_sse", 200, [])
    assert record.headers_ns is not None and record.headers_ns > record.received_ns


@pytest.mark.system
async def test_stream_only_fault_is_not_injected_into_a_whole_answer(
    start: Start, session: aiohttp.ClientSession
) -> None:
    sim = await start(faulty("endless"))
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/endless", stream=False)) as resp:
        body = await resp.json()
    assert body["usage"]["completion_tokens"] == 10
    assert sim.ground_truth.records[-1].fault is None


@pytest.mark.system
@pytest.mark.parametrize(
    "kind, overrides",
    [
        ("slow_headers", {"stall_s": 60.0}),
        ("trickle", {}),
        ("keepalive_forever", {}),
        ("endless", {}),
        ("long_line", {"stall_s": 60.0}),
        ("stall", {"stall_s": 60.0}),
    ],
)
async def test_hanging_up_on_a_fault_is_quiet(
    start: Start, caplog: pytest.LogCaptureFixture, kind: str, overrides: dict[str, Any]
) -> None:
    sim = await start(faulty(kind, ttft_median_ms=5, **overrides))
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.15)) as session:
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(f"{sim.base_url}/chat/completions", json=chat(f"test/{kind}")) as resp:
                await resp.read()
    await asyncio.sleep(0.05)
    assert not sim.app[HANDLERS]  # the handler was cancelled, not left running
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    assert sim.ground_truth.records[-1].fault == kind


@pytest.mark.system
async def test_token_times_precede_arrival_closely(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(profile(tokens_per_s=100, output_tokens=30))
    t0 = time.perf_counter_ns()
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/fast")) as resp:
        headers_at = time.perf_counter_ns()
        stream = await read_stream(resp)
    record = sim.ground_truth.records[-1]
    assert record.headers_ns is not None and t0 < record.headers_ns < headers_at
    delays = [e.at_ns - sent for e, sent in zip(stream.token_events(), record.token_times_ns, strict=True)]
    assert min(delays) >= 0
    # On an idle machine loopback takes well under a millisecond; leave room for a busy one.
    assert statistics.median(delays) < 3 * MS and max(delays) < 15 * MS


@pytest.mark.system
async def test_ground_truth_delete_and_size(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(profile())
    url = f"{sim.base_url}/ground-truth"
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/fast")) as resp:
        await resp.read()
    async with session.delete(url) as resp:
        assert (resp.status, await resp.json()) == (200, {"cleared": 1})
    async with session.get(url) as resp:
        assert await resp.json() == []
    assert sim.ground_truth.by_request_id(resp.headers.get("X-Request-Id", "")) is None
    # A benchmark's worth of records, each with its token times, still comes back quickly.
    log = sim.ground_truth
    for i in range(10_000):
        log.open(f"gen-{i}", i).token_times_ns.extend(range(i, i + 64))
    t0 = time.perf_counter()
    async with session.get(url, params={"since": "1"}) as resp:
        records = await resp.json()
    assert time.perf_counter() - t0 < 2.0
    assert len(records) == 10_000 and records[0]["seq"] == 2  # numbering goes on after a clear
    assert records[-1]["token_times_ns"] == list(range(9_999, 9_999 + 64))
    assert set(records[0]) >= {"headers_ns", "drawn_ttft_ms", "injected_ttft_ms", "fault", "token_times_ns"}


@pytest.mark.system
async def test_bad_requests(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(profile())
    url = f"{sim.base_url}/chat/completions"
    async with session.post(url, json=chat("no/such-model")) as resp:
        assert resp.status == 404
        error = (await resp.json())["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "model_not_found")
    async with session.post(url, data=b"{not json", headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
    async with session.post(url, json={"model": "test/fast"}) as resp:
        assert resp.status == 400
    async with session.post(url, json=chat("test/fast"), headers={"Authorization": "Basic c2VjcmV0"}) as resp:
        assert resp.status == 401
        assert "c2VjcmV0" not in await resp.text()
    async with session.post(url, json=chat("test/fast"), headers={"Authorization": "Bearer sk-test"}) as resp:
        assert resp.status == 200
        await resp.read()
    assert [r.status for r in sim.ground_truth.records] == [404, 400, 400, 401, 200]
    assert sim.ground_truth.records[0].model == "no/such-model"


@pytest.mark.system
async def test_models_health_and_ground_truth_endpoints(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(profile(), profile("test/other", provider="Other"))
    async with session.get(f"{sim.base_url}/models") as resp:
        models = await resp.json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in models["data"]] == [
        ("test/fast", "model", "TestProvider"),
        ("test/other", "model", "Other"),
    ]
    async with session.get(sim.base_url.removesuffix("/v1") + "/healthz") as resp:
        assert resp.status == 200
    for model in ("test/fast", "test/other"):
        async with session.post(f"{sim.base_url}/chat/completions", json=chat(model)) as resp:
            await resp.read()
    async with session.get(f"{sim.base_url}/ground-truth", params={"since": "1"}) as resp:
        records = await resp.json()
    assert [(r["seq"], r["model"]) for r in records] == [(2, "test/other")]
    assert records[0]["token_times_ns"] and records[0]["finished"] is True


@pytest.mark.system
async def test_client_disconnect_is_quiet(
    start: Start, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    sim = await start(profile(output_tokens=200, tokens_per_s=100))
    caplog.set_level(logging.WARNING)
    async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/fast")) as resp:
        await resp.content.readline()
        resp.close()  # hang up mid-stream
    await asyncio.sleep(0.1)
    record = sim.ground_truth.records[-1]
    assert not record.finished and record.output_tokens < 200
    assert caplog.records == []


@pytest.mark.system
async def test_seed_makes_ttfts_reproducible(start: Start, session: aiohttp.ClientSession) -> None:
    jittery = profile(ttft_median_ms=5, ttft_sigma=0.5, output_tokens=1, error_rate=0.3, faults={"empty": 1})

    async def ttfts(seed: int) -> list[tuple[float | None, str | None]]:
        sim = await start(jittery, seed=seed)
        for _ in range(8):
            async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/fast")) as resp:
                await resp.read()
        return [(r.injected_ttft_ms, r.fault) for r in sim.ground_truth.records]

    first, again, other = await ttfts(42), await ttfts(42), await ttfts(7)
    assert first == again
    assert first != other


@pytest.mark.system
async def test_ttft_median_matches_profile(start: Start, session: aiohttp.ClientSession) -> None:
    sim = await start(profile(ttft_median_ms=20, ttft_sigma=0.3, output_tokens=1), seed=1)
    # Ten at a time: a hundred simultaneous connects would measure the client, not the simulator.
    gate = asyncio.Semaphore(10)

    async def one() -> float:
        async with gate:
            t0 = time.perf_counter_ns()
            async with session.post(f"{sim.base_url}/chat/completions", json=chat("test/fast")) as resp:
                stream = await read_stream(resp)
            return (stream.token_events()[0].at_ns - t0) / MS

    seen = await asyncio.gather(*(one() for _ in range(100)))
    injected = [r.injected_ttft_ms for r in sim.ground_truth.records if r.injected_ttft_ms is not None]
    assert len(injected) == 100
    assert statistics.median(injected) == pytest.approx(20, rel=0.15)
    assert statistics.quantiles(injected, n=10)[-1] > 1.2 * statistics.quantiles(injected, n=10)[0]
    # Loopback adds a little to what the client sees, and never subtracts.
    assert statistics.median(injected) <= statistics.median(seen) < statistics.median(injected) + 10


@pytest.mark.unit
def test_default_profiles() -> None:
    models = [p.model for p in DEFAULT_PROFILES]
    assert len(set(models)) == len(models) >= 5
    assert "openai/gpt-4.1-nano" in models
    assert any(not p.include_usage for p in DEFAULT_PROFILES)
    assert any(p.reasoning_tokens for p in DEFAULT_PROFILES)
    for p in DEFAULT_PROFILES:
        assert set(p.faults) <= set(FAULT_KINDS)
        assert sum(p.faults.values()) == pytest.approx(1)
        if "stall" in p.faults:
            assert 30 < p.stall_s < 120  # caught by the default 30 s idle timeout
    assert {
        "slow_headers",
        "trickle",
        "keepalive_forever",
        "endless",
        "huge",
        "invalid_utf8",
        "long_line",
        "not_sse",
    } <= set(FAULT_KINDS)
    p = DEFAULT_PROFILES[0]
    assert (p.trickle_s, p.huge_bytes, p.long_line_bytes) == (60.0, 50_000_000, 4 * 1024 * 1024)


@pytest.mark.unit
def test_load_profiles(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text(
        "- model: acme/small\n  provider: Acme\n  ttft_median_ms: 200\n  faults: {http_429: 3, drop: 1}\n"
        "- {model: acme/big, provider: Acme, ttft_median_ms: 900, include_usage: false}\n"
    )
    small, big = load_profiles(path)
    assert small.faults == {"http_429": 0.75, "drop": 0.25}
    assert (big.model, big.include_usage) == ("acme/big", False)

    path.write_text(
        "- {model: acme/slow, provider: Acme, ttft_median_ms: 200, faults: {trickle: 1, huge: 1, long_line: 2},\n"
        "   trickle_s: 0.5, huge_bytes: 1_000_000, long_line_bytes: 65536, stall_s: 2}\n"
    )
    (slow,) = load_profiles(path)
    assert slow.faults == {"trickle": 0.25, "huge": 0.25, "long_line": 0.5}
    assert (slow.trickle_s, slow.huge_bytes, slow.long_line_bytes, slow.stall_s) == (0.5, 1_000_000, 65536, 2)
    path.write_text("- {model: acme/small, provider: Acme, ttft_median_ms: 200, huge_bytes: 1.5}\n")
    with pytest.raises(ValueError, match=r"huge_bytes must be an integer"):
        load_profiles(path)

    path.write_text("- {model: acme/small, provider: Acme, ttft_median_ms: 200, ttft_p50: 3}\n")
    with pytest.raises(ValueError, match=r"model 'acme/small': unknown key 'ttft_p50'"):
        load_profiles(path)
    path.write_text("- {model: acme/small, provider: Acme, ttft_median_ms: 200, faults: {boom: 1}}\n")
    with pytest.raises(ValueError, match=r"model 'acme/small': unknown fault kind 'boom'"):
        load_profiles(path)
