"""A hostile router against the real probe: whatever it sends, the result is classified and storable.

Every test drives ``chat_stream.run`` over loopback HTTP against a router
(tests/hostile_router.py) that answers with exactly the bytes the test
chooses, and checks what a user would: the error class, that every value
fits its PostgreSQL column, and that the key never comes back out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from hostile_router import (
    INT4_MAX,
    HostileRouter,
    Reply,
    finish,
    healthy_body,
    probe,
    running_router,
    sse,
    storable_problems,
    timeouts,
    token,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routewatch.probe import chat_stream
from routewatch.probe.scheduler import new_session
from routewatch.results.probe_result import ERROR_CLASSES, ProbeResult

pytestmark = pytest.mark.system

SSE_HEADERS = {"Content-Type": "text/event-stream"}
# The configured key, in the two shapes a redactor may or may not recognise.
KEYS = ["sk-SENTINEL-0f1e2d3c4b5a69788796a5b4", "SENTINELabc123def456ghi789jkl"]


@pytest.fixture
async def router() -> AsyncIterator[HostileRouter]:
    async for r in running_router():
        yield r


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # The prober's own session, with one connection: a probe that left its
    # connection unusable would make the next one fail.
    async with new_session(1) as s:
        yield s


def assert_classified_and_storable(r: ProbeResult) -> None:
    assert r.ok == (r.error_class is None)
    assert r.error_class is None or r.error_class in ERROR_CLASSES
    assert storable_problems(r) == []


def leaked(key: str, r: ProbeResult, n: int = 6) -> list[str]:
    """Pieces of ``key`` (``n`` characters or more) found in what the router controls in ``r``.

    Only those fields: the rest (a random UUID, timings) holds hex and digits
    in which a short piece of a key turns up by chance.
    """
    text = repr((r.error_detail, r.model_served, r.provider, r.request_id))
    return [key[i : i + n] for i in range(len(key) - n + 1) if key[i : i + n] in text]


# --- every value is made storable before it becomes a result ---


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 20, "completion_tokens": 2**31},
        {"prompt_tokens": 2**63, "completion_tokens": 3},
        {"prompt_tokens": 20, "completion_tokens": 10**40},
        {"prompt_tokens": 20, "completion_tokens": -3},
        {"prompt_tokens": -1, "completion_tokens": 3},
        {"prompt_tokens": 20, "completion_tokens": float("inf")},
        {"prompt_tokens": 20, "completion_tokens": float("nan")},
        {"prompt_tokens": 20, "completion_tokens": 2.5},
        {"prompt_tokens": 20, "completion_tokens": "3"},
        {"prompt_tokens": 20, "completion_tokens": True},
        {"prompt_tokens": 20, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": -1}},
        {"prompt_tokens": 20, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2**31}},
        {"prompt_tokens": 20, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": "all"}},
        {"prompt_tokens": 20, "completion_tokens": 3, "completion_tokens_details": {"reasoning_tokens": -5}},
        {"prompt_tokens": 20, "completion_tokens": 3, "completion_tokens_details": {"reasoning_tokens": [1]}},
    ],
    ids=repr,
)
async def test_impossible_usage_counts_are_a_bad_response(session, router, usage: dict[str, Any]) -> None:
    r = await probe(session, router, Reply(body=healthy_body(usage=usage)))
    assert_classified_and_storable(r)
    assert r.error_class == "bad_response", (r.error_class, r.error_detail, r.output_tokens)
    assert r.error_detail is not None and "usage." in r.error_detail
    assert r.output_tokens is None or r.output_tokens >= 0
    assert r.input_tokens is None or r.input_tokens >= 0
    # What was measured before the bad chunk is kept.
    assert r.chunks == 3 and r.ttft_ms is not None


async def test_cached_tokens_are_read_and_odd_details_ignored(session, router) -> None:
    usage = {"prompt_tokens": 20, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 16}}
    r = await probe(session, router, Reply(body=healthy_body(usage=usage)))
    assert r.ok and r.cached_input_tokens == 16
    # Details that are not an object, or without a cached count, leave it unknown rather than failing the probe.
    for details in ("none", None, {"audio_tokens": 2}):
        usage = {"prompt_tokens": 20, "completion_tokens": 3, "prompt_tokens_details": details}
        r = await probe(session, router, Reply(body=healthy_body(usage=usage)))
        assert r.ok and r.cached_input_tokens is None, details


def _reasoning(text: str) -> dict[str, Any]:
    # DeepSeek's name for the reasoning delta; OpenRouter's is "reasoning".
    return {"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "delta": {"reasoning_content": text}}]}


async def test_a_stream_that_only_reasoned_until_length_is_budget_exhausted(session, router) -> None:
    length = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    usage = {"prompt_tokens": 20, "completion_tokens": 3, "completion_tokens_details": {"reasoning_tokens": 3}}
    r = await probe(session, router, Reply(body=sse(_reasoning(" let"), _reasoning(" me"), {**length, "usage": usage})))
    assert_classified_and_storable(r)
    assert (r.error_class, r.reasoning_tokens, r.ttfat_ms) == ("budget_exhausted", 3, None)
    assert r.ttft_ms is not None and "max_tokens 64 was spent reasoning" in (r.error_detail or "")
    # No usage at all, and nothing streamed (reasoning hidden): still the budget, not an empty answer.
    r = await probe(session, router, Reply(body=sse(length)))
    assert (r.error_class, r.reasoning_tokens, r.ttft_ms) == ("budget_exhausted", None, None)
    # Usage saying no reasoning at all: an answer that never came is an empty one.
    no_reasoning = {"prompt_tokens": 20, "completion_tokens": 0, "completion_tokens_details": {"reasoning_tokens": 0}}
    r = await probe(session, router, Reply(body=sse({**length, "usage": no_reasoning})))
    assert r.error_class == "empty_response"
    # Reasoning then an answer cut short by length is an answer: ok, with both first tokens.
    r = await probe(session, router, Reply(body=sse(_reasoning(" hm"), token(" one"), token(" two"), length)))
    assert r.ok and r.ttft_ms is not None and r.ttfat_ms is not None and r.ttfat_ms >= r.ttft_ms
    assert r.reasoning_tokens == 1, "no usage: the streamed reasoning, counted"


async def test_usage_as_whole_floats_is_accepted(session, router) -> None:
    r = await probe(session, router, Reply(body=healthy_body(usage={"prompt_tokens": 20.0, "completion_tokens": 3.0})))
    assert r.ok and (r.input_tokens, r.output_tokens) == (20, 3) and not r.tokens_estimated


@pytest.mark.parametrize("field", ["model", "id", "provider"])
async def test_invalid_text_in_labels_is_made_storable(session, router, field: str) -> None:
    value = "gpt\ud800-x\x00y\x1b[31m" + "z" * 5000
    r = await probe(session, router, Reply(body=sse(token(" one", **{field: value}), finish())))
    assert_classified_and_storable(r)
    assert r.ok
    stored = {"model": r.model_served, "id": r.request_id, "provider": r.provider}[field]
    assert stored is not None and stored.startswith("gpt\ufffd-xyzzz")
    assert len(stored) <= 200


async def test_invalid_text_in_an_error_event_is_made_storable(session, router) -> None:
    bad = {"error": {"message": "upstream \ud800 said \x00 no \udfff"}}
    r = await probe(session, router, Reply(body=sse(token(" one"), bad)))
    assert_classified_and_storable(r)
    assert r.error_class == "stream_error"
    assert r.error_detail == "error event in stream: upstream \ufffd said  no \ufffd"


async def test_invalid_bytes_in_headers_are_made_storable(session) -> None:
    """Headers that are not UTF-8 come out of the HTTP client as lone surrogates."""
    body = healthy_body()
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
        b"X-Request-Id: req-\xff\xfe-1\r\nX-Provider: Prov\xc3(ider\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        r = await probe(session, HostileRouterAt(f"http://127.0.0.1:{port}/v1"))
    finally:
        server.close()
        await server.wait_closed()
    assert_classified_and_storable(r)
    assert r.ok and r.request_id == "req-\ufffd\ufffd-1" and r.provider == "Prov\ufffd(ider"


class HostileRouterAt(HostileRouter):
    """A router address served by something else (a raw socket server)."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url


# --- router-controlled strings are redacted before they are stored ---


@pytest.mark.parametrize("key", KEYS)
async def test_key_echoed_in_headers_is_not_stored(session, router, key: str) -> None:
    headers = {**SSE_HEADERS, "X-Provider": f"Bearer {key}", "X-Request-Id": f"req for {key}"}
    r = await probe(session, router, Reply(headers=headers, body=healthy_body()), key=key)
    assert r.ok and r.provider and r.request_id
    assert leaked(key, r) == []


@pytest.mark.parametrize("key", KEYS)
async def test_key_echoed_in_the_body_labels_is_not_stored(session, router, key: str) -> None:
    chunk = token(" one", model=f"m/{key}", id=f"Authorization: Bearer {key}", provider=f"p{key[:12]}...")
    r = await probe(session, router, Reply(body=sse(chunk, finish())), key=key)
    assert r.ok and r.model_served and r.request_id and r.provider
    assert leaked(key, r) == []


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("offset", [185, 190, 195, 199, 285, 290, 296])
async def test_key_across_the_error_body_cut_leaves_no_prefix(session, router, key: str, offset: int) -> None:
    body = ("e" * offset + key + " was rejected").encode()
    reply = Reply(status=401, headers={"Content-Type": "application/json"}, body=body)
    r = await probe(session, router, reply, key=key)
    assert r.error_class == "http_4xx" and r.error_detail is not None
    assert leaked(key, r, n=4) == []


@pytest.mark.parametrize("key", KEYS)
async def test_key_echoed_in_part_is_masked(session, router, key: str) -> None:
    body = json.dumps({"error": {"message": f"invalid api key {key[:14]}...{key[-6:]}"}}).encode()
    r = await probe(
        session, router, Reply(status=403, headers={"Content-Type": "application/json"}, body=body), key=key
    )
    assert r.error_class == "http_4xx"
    assert key[:8] not in (r.error_detail or "") and leaked(key, r, n=8) == []


@pytest.mark.parametrize("provider", ["", "   ", "\x00"])
async def test_blank_provider_is_none_never_empty(session, router, provider: str) -> None:
    r = await probe(
        session,
        router,
        Reply(
            headers={**SSE_HEADERS, "X-Provider": provider.replace("\x00", "")},
            body=sse(token(" one", provider=provider), finish()),
        ),
    )
    assert r.ok and r.provider is None


# --- malformed structures are a bad_response, never an exception ---


MALFORMED = [
    {"choices": 5},
    {"choices": True},
    {"choices": "abc"},
    {"choices": {"0": {"delta": {"content": "x"}}}},
    {"choices": [5]},
    {"choices": [{"delta": ["content"]}]},
    {"choices": [{"delta": {"content": 5}}]},
    {"choices": [{"delta": {"content": ["x"]}}]},
    {"choices": [{"delta": {"reasoning": {"text": "x"}}}]},
    {"choices": [{"delta": {"tool_calls": 7}}]},
    {"choices": [{"delta": {}, "finish_reason": {"why": "stop"}}]},
    {"usage": [1, 2]},
    {"usage": "lots"},
    {"usage": {"completion_tokens": [3]}},
    [1, 2, 3],
    "just a string",
]


@pytest.mark.parametrize("chunk", MALFORMED, ids=lambda c: json.dumps(c)[:40])
async def test_malformed_chunk_is_a_bad_response(session, router, chunk: Any) -> None:
    r = await probe(session, router, Reply(body=sse(token(" one"), chunk, finish())))
    assert_classified_and_storable(r)
    assert r.error_class == "bad_response", (r.error_class, r.error_detail)
    assert r.chunks == 1 and r.ttft_ms is not None  # the good chunk before it was measured


async def test_error_message_of_any_type_is_a_stream_error(session, router) -> None:
    r = await probe(session, router, Reply(body=sse(token(" one"), {"error": {"message": {"code": 7}}})))
    assert r.error_class == "stream_error" and r.error_detail == 'error event in stream: {"code": 7}'


async def test_null_error_field_is_not_an_error(session, router) -> None:
    r = await probe(session, router, Reply(body=sse(token(" one", error=None), token(" two"), finish())))
    assert r.ok, r.error_detail


async def test_long_error_message_is_redacted_in_linear_time(session, router) -> None:
    message = "a" * 200_000  # as long as an event may be
    t0 = time.perf_counter()
    r = await probe(session, router, Reply(body=sse(token(" one"), {"error": {"message": message}})), key=KEYS[1])
    assert time.perf_counter() - t0 < 1.0
    assert r.error_class == "stream_error" and r.error_detail is not None and len(r.error_detail) == 300


async def test_json_nested_past_the_parser_stack_is_a_bad_response(session, router) -> None:
    deep = b"[" * 50_000 + b"]" * 50_000
    r = await probe(session, router, Reply(body=sse(token(" one"), deep)))
    assert_classified_and_storable(r)
    assert r.error_class == "bad_response" and "malformed JSON" in (r.error_detail or "")


async def test_an_unforeseen_error_while_parsing_is_a_bad_response(
    session, router, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(data: str) -> Any:
        raise ZeroDivisionError(f"boom near {KEYS[1]}")

    # A stand-in for a bug in the parsing: the stream's JSON decoder fails in
    # a way nobody wrote a handler for.
    monkeypatch.setattr(chat_stream, "json", SimpleNamespace(loads=broken, dumps=json.dumps))
    with caplog.at_level(logging.WARNING, logger="routewatch.probe.chat_stream"):
        r = await probe(session, router, Reply(body=healthy_body()), key=KEYS[1])
    assert_classified_and_storable(r)
    assert r.error_class == "bad_response"
    assert r.error_detail == "unexpected ZeroDivisionError while reading the response: boom near ***"
    assert r.ttfb_ms is not None  # what was measured is kept
    (record,) = caplog.records
    assert "unexpected ZeroDivisionError at" in record.getMessage() and "in broken" in record.getMessage()
    assert KEYS[1][:8] not in caplog.text


async def test_cancelling_a_probe_is_not_swallowed(session, router) -> None:
    reply = Reply(body=sse(token(" one"), done=False), endless=sse(token(" more"), done=False))
    task = asyncio.create_task(probe(session, router, reply))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**31, 2**63, -1, -(2**31) - 1, 10**30])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec=None), max_size=12)
    | st.sampled_from(["\ud800", "\x00", "x\udfffy", "", "stop"])
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``strategy``, or any JSON value in its place."""
    return st.one_of(strategy, _json)


_delta = st.fixed_dictionaries(
    {},
    optional=dict.fromkeys(("content", "reasoning", "reasoning_content", "tool_calls", "role"), _json),
)
_choice = st.fixed_dictionaries({}, optional={"delta": _maybe(_delta), "finish_reason": _json, "index": _json})
_usage = st.fixed_dictionaries({}, optional={"prompt_tokens": _json, "completion_tokens": _json})
_chunk = st.fixed_dictionaries(
    {},
    optional={
        "choices": _maybe(st.lists(_maybe(_choice), max_size=2)),
        "usage": _maybe(_usage),
        "model": _json,
        "id": _json,
        "provider": _json,
        "error": _maybe(st.fixed_dictionaries({}, optional={"message": _json, "code": _json})),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(_maybe(_chunk), min_size=1, max_size=4), done=st.booleans())
async def test_any_json_in_any_field_gives_a_classified_storable_result(
    session, router, chunks: list[Any], done: bool
) -> None:
    # Each chunk JSON-encoded, strings included (a lone surrogate becomes a \\u escape).
    r = await probe(session, router, Reply(body=sse(*(json.dumps(c).encode() for c in chunks), done=done)))
    assert_classified_and_storable(r)
    assert r.output_tokens is None or 0 <= r.output_tokens <= INT4_MAX
    assert r.input_tokens is None or 0 <= r.input_tokens <= INT4_MAX


# --- classification of statuses, deadlines and Retry-After ---


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (299, "bad_response"),
        (204, "bad_response"),
        (201, "bad_response"),
        (300, "bad_response"),
        (304, "bad_response"),
        (418, "http_4xx"),
        (429, "http_429"),
        (503, "http_5xx"),
    ],
)
async def test_statuses_other_than_200_are_classified_by_range(session, router, status: int, error_class: str) -> None:
    body = b"" if status in (204, 304) else healthy_body()
    r = await probe(session, router, Reply(status=status, body=body))
    assert_classified_and_storable(r)
    assert (r.error_class, r.http_status) == (error_class, status)
    assert r.error_detail is not None and r.error_detail.startswith(f"HTTP {status}")


async def test_never_ending_stream_says_it_did_not_finish(session, router) -> None:
    reply = Reply(body=sse(token(" one"), done=False), endless=sse(token(" more"), done=False), endless_every_s=0.05)
    r = await probe(
        session, router, reply, limits=timeouts(connect=0.6, headers=0.6, first_token=0.6, idle=0.5, total=0.6)
    )
    assert r.error_class == "timeout_total"
    assert r.error_detail == "stream did not finish within the total limit of 0.6 s"
    assert r.chunks > 5


async def test_silence_past_the_total_limit_names_what_was_awaited(session, router) -> None:
    reply = Reply(body=b": waiting\n\n", endless=b": still waiting\n\n", endless_every_s=0.05)
    # The first-token limit is the total one (a config allows no more).
    r = await probe(
        session, router, reply, limits=timeouts(connect=0.4, headers=0.4, first_token=0.4, idle=0.4, total=0.4)
    )
    assert r.error_class == "timeout_total"
    assert r.error_detail == "no first token within the total limit of 0.4 s"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7.5 ", 7.5),
        ("86400", 86400.0),
        ("-100", None),
        ("NaN", None),
        ("nan", None),
        ("inf", None),
        ("-inf", None),
        ("1e308", None),
        ("86401", None),
        ("soon", None),
        ("", None),
    ],
)
async def test_retry_after_is_a_sane_delay_or_nothing(session, router, header: str, expected: float | None) -> None:
    reply = Reply(status=429, headers={"Content-Type": "application/json", "Retry-After": header}, body=b"{}")
    r = await probe(session, router, reply)
    assert r.error_class == "http_429" and r.retry_after_s == expected


async def test_retry_after_as_an_http_date(session, router) -> None:
    at = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    reply = Reply(status=429, headers={"Content-Type": "application/json", "Retry-After": at}, body=b"{}")
    r = await probe(session, router, reply)
    assert r.retry_after_s is not None and 85 <= r.retry_after_s <= 90
    assert math.isfinite(r.retry_after_s)
