"""A loopback "router" that answers with whatever a test tells it to.

Unlike the simulator, which models well-behaved and faulty upstreams, this
one sends exactly the status, headers and bytes a test sets: the way to put
hostile values (huge integers, lone surrogates, echoed keys, wrong JSON
types) in front of the real probe.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from routewatch.config import TimeoutsConfig
from routewatch.probe import chat_stream
from routewatch.probe.target import Canary, Target
from routewatch.results.probe_result import ProbeResult

INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
CANARY = Canary("short", [{"role": "user", "content": "Count from 1 to 40 in words."}], 64, 8)


def timeouts(**seconds: float) -> TimeoutsConfig:
    """The probe's limits as a config would give them: 1 s per phase, 2 s in all, unless overridden."""
    limits = {"connect": 1.0, "headers": 1.0, "first_token": 1.0, "idle": 1.0, "total": 2.0}
    return TimeoutsConfig(**{**limits, **seconds})


@dataclass
class Reply:
    """What the router answers to the next request."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=lambda: {"Content-Type": "text/event-stream"})
    body: bytes = b""
    # Write this event forever, every `endless_every_s`, after `body`.
    endless: bytes | None = None
    endless_every_s: float = 0.05


def sse(*chunks: Any, done: bool = True) -> bytes:
    """An SSE body: each chunk JSON-encoded (bytes and str as they are), then [DONE]."""
    out = bytearray()
    for chunk in chunks:
        if isinstance(chunk, bytes):
            data = chunk
        elif isinstance(chunk, str):
            data = chunk.encode()
        else:
            data = json.dumps(chunk).encode()
        out += b"data: " + data + b"\n\n"
    if done:
        out += b"data: [DONE]\n\n"
    return bytes(out)


def token(text: str = "one", **extra: Any) -> dict[str, Any]:
    """A well-formed chunk carrying ``text``, with ``extra`` top-level fields."""
    return {"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "delta": {"content": text}}], **extra}


def finish(**extra: Any) -> dict[str, Any]:
    """The last chunk: a finish_reason and the usage (overridable)."""
    chunk: dict[str, Any] = {
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 3},
    }
    chunk.update(extra)
    return chunk


def healthy_body(*tokens: str, **finish_extra: Any) -> bytes:
    return sse(*(token(t) for t in tokens or (" one", " two", " three")), finish(**finish_extra))


class HostileRouter:
    """The router; set ``reply`` before each probe, or ``replies`` by requested model."""

    def __init__(self) -> None:
        self.reply = Reply()
        self.replies: dict[str, Reply] = {}
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        model = json.loads(await request.read()).get("model")
        reply = self.replies.get(model, self.reply)
        resp = web.StreamResponse(status=reply.status, headers=dict(reply.headers))
        await resp.prepare(request)
        try:
            if reply.body:
                await resp.write(reply.body)
            while reply.endless is not None:
                await asyncio.sleep(reply.endless_every_s)
                await resp.write(reply.endless)
            await resp.write_eof()
        except ConnectionError:
            pass  # the probe hung up, as it should on a hostile answer
        return resp


async def start_router() -> tuple[HostileRouter, web.AppRunner]:
    router = HostileRouter()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", router.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    router.base_url = f"http://127.0.0.1:{port}/v1"
    return router, runner


async def running_router() -> AsyncIterator[HostileRouter]:
    """Fixture body: one router for a test."""
    router, runner = await start_router()
    try:
        yield router
    finally:
        await runner.cleanup()


async def probe(
    session: Any,
    router: HostileRouter,
    reply: Reply | None = None,
    *,
    key: str | None = None,
    limits: TimeoutsConfig | None = None,
) -> ProbeResult:
    if reply is not None:
        router.reply = reply
    return await chat_stream.run(
        session, Target("hostile", router.base_url, "m", key), CANARY, limits or timeouts(), region="test"
    )


def storable_problems(r: ProbeResult) -> list[str]:
    """Why ``r`` could not be stored in ``probe_results`` as it is (empty when it can)."""
    problems = []
    for name in (
        "region",
        "router",
        "model",
        "prompt",
        "methodology",
        "error_class",
        "error_detail",
        "model_served",
        "provider",
        "request_id",
    ):
        value = getattr(r, name)
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            problems.append(f"{name} is not valid UTF-8: {value!r:.80}")
        if "\x00" in value:
            problems.append(f"{name} contains NUL")
    for name in ("http_status", "input_tokens", "output_tokens", "chunks"):
        value = getattr(r, name)
        if value is not None and not INT4_MIN <= value <= INT4_MAX:
            problems.append(f"{name} = {value} is outside int4")
    for name in (
        "connect_ms",
        "ttfb_ms",
        "ttft_ms",
        "ttfat_ms",
        "e2e_ms",
        "output_tps",
        "chunk_gap_max_ms",
        "chunk_gap_p95_ms",
        "retry_after_s",
        "loop_lag_ms",
    ):
        value = getattr(r, name)
        if value is not None and not (value == value and abs(value) != float("inf")):
            problems.append(f"{name} = {value} is not finite")
    return problems
