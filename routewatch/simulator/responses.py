"""Timing and writing of one simulated completion, streamed or whole."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from .groundtruth import ServedRequest
from .profiles import ModelProfile
from .sse import DONE, KEEPALIVE, ChunkMaker, content_token, event, reasoning_token, usage_body

_MID_STREAM_FAULTS = ("drop", "malformed", "stream_error", "stall")


@dataclass(frozen=True)
class Plan:
    """Everything decided about one response before its first byte."""

    fault: str | None
    ttft_ms: float
    gap_ns: int
    reasoning_tokens: int
    content_tokens: int
    finish_reason: str
    prompt_tokens: int
    include_usage: bool
    keepalive_ns: int | None
    stall_s: float

    @property
    def ttft_ns(self) -> int:
        return round(self.ttft_ms * 1e6)

    def tokens(self) -> list[tuple[str, str]]:
        """(delta field, text) of every token: reasoning first, then content."""
        if self.fault == "empty":
            return []
        reasoning = [("reasoning", reasoning_token(i)) for i in range(self.reasoning_tokens)]
        return reasoning + [("content", content_token(i)) for i in range(self.content_tokens)]

    def fault_after(self) -> int:
        """How many tokens go out before a mid-stream fault strikes (-1: none)."""
        if self.fault not in _MID_STREAM_FAULTS:
            return -1
        total = len(self.tokens())
        return min(max(1, total // 2), total)


def make_plan(
    profile: ModelProfile,
    *,
    fault: str | None,
    ttft_ms: float,
    max_tokens: int | None,
    prompt_tokens: int,
    wants_usage: bool,
) -> Plan:
    """Fit the profile's answer into the request's max_tokens."""
    # Like OpenAI's max_completion_tokens, the budget covers reasoning too.
    budget = profile.reasoning_tokens + profile.output_tokens if max_tokens is None else max_tokens
    reasoning = min(profile.reasoning_tokens, budget)
    content = min(profile.output_tokens, budget - reasoning)
    return Plan(
        fault=fault,
        ttft_ms=ttft_ms,
        gap_ns=round(1e9 / profile.tokens_per_s),
        reasoning_tokens=reasoning,
        content_tokens=content,
        finish_reason="stop" if content == profile.output_tokens else "length",
        prompt_tokens=prompt_tokens,
        include_usage=profile.include_usage and wants_usage,
        keepalive_ns=None if profile.keepalive_ms is None else round(profile.keepalive_ms * 1e6),
        stall_s=profile.stall_s,
    )


async def sleep_until(deadline_ns: int) -> None:
    """Sleep until a perf_counter_ns deadline; absolute deadlines keep gaps from drifting."""
    while (remaining := deadline_ns - time.perf_counter_ns()) > 0:
        await asyncio.sleep(remaining / 1e9)


async def _wait_with_keepalive(resp: web.StreamResponse, deadline_ns: int, every_ns: int | None) -> None:
    if every_ns is not None:
        next_ns = time.perf_counter_ns() + every_ns
        while next_ns < deadline_ns:
            await sleep_until(next_ns)
            await resp.write(KEEPALIVE)
            next_ns += every_ns
    await sleep_until(deadline_ns)


async def write_stream(
    resp: web.StreamResponse,
    plan: Plan,
    chunks: ChunkMaker,
    record: ServedRequest,
    abort: Callable[[], None],
) -> None:
    """Stream the planned answer on a prepared response, noting each token in `record`."""
    # The role-only chunk goes out at once, as routers do, so it must not look like a first token.
    await resp.write(event(chunks.delta({"role": "assistant", "content": ""})))
    first_ns = record.received_ns + plan.ttft_ns
    await _wait_with_keepalive(resp, first_ns, plan.keepalive_ns)
    tokens = plan.tokens()
    strike = plan.fault_after()
    base_ns, base_k = first_ns, 0
    for k in range(len(tokens) + 1):
        due_ns = base_ns + (k - base_k) * plan.gap_ns
        if k == strike:
            # A fault strikes when the next token was due.
            await sleep_until(due_ns)
            if plan.fault == "drop":
                abort()
                return
            if plan.fault == "stream_error":
                await resp.write(event(chunks.error("Upstream provider error (simulated)", 502)))
                return
            if plan.fault == "malformed":
                await resp.write(chunks.malformed())
            elif plan.fault == "stall":
                await asyncio.sleep(plan.stall_s)
                # Resume at the normal pace rather than bursting what fell due during the stall.
                base_ns, base_k = time.perf_counter_ns(), k
                due_ns = base_ns
        if k == len(tokens):
            break
        kind, text = tokens[k]
        await sleep_until(due_ns)
        await resp.write(event(chunks.delta({kind: text})))
        record.token_times_ns.append(time.perf_counter_ns())
        if k == 0:
            record.injected_ttft_ms = plan.ttft_ms
        record.output_tokens += 1
        if kind == "reasoning":
            record.reasoning_tokens += 1
    await resp.write(event(chunks.delta({}, plan.finish_reason)))
    if plan.include_usage:
        usage = usage_body(plan.prompt_tokens, record.output_tokens, record.reasoning_tokens)
        await resp.write(event(chunks.usage(usage)))
        record.usage_sent = True
    await resp.write(DONE)
    record.finished = True


async def whole_completion(
    plan: Plan, chunks: ChunkMaker, record: ServedRequest, abort: Callable[[], None]
) -> web.Response:
    """Answer a non-streaming request when its last token would have been generated."""
    tokens = plan.tokens()
    await sleep_until(record.received_ns + plan.ttft_ns + max(len(tokens) - 1, 0) * plan.gap_ns)
    if plan.fault == "stall":
        await asyncio.sleep(plan.stall_s)
    if plan.fault == "drop":
        abort()
        return web.Response(status=200)  # never reaches the client
    if plan.fault == "stream_error":
        record.status = 502
        return web.json_response(
            {"error": {"message": "Upstream provider error (simulated)", "code": 502}}, status=502
        )
    if plan.fault == "malformed":
        return web.Response(body=chunks.malformed()[len(b"data: ") :], content_type="application/json")
    reasoning = "".join(text for kind, text in tokens if kind == "reasoning")
    content = "".join(text for kind, text in tokens if kind == "content")
    record.output_tokens = len(tokens)
    record.reasoning_tokens = plan.reasoning_tokens if tokens else 0
    if tokens:
        record.injected_ttft_ms = plan.ttft_ms
    usage = usage_body(plan.prompt_tokens, record.output_tokens, record.reasoning_tokens)
    record.usage_sent = True
    record.finished = True
    return web.json_response(chunks.completion(content.lstrip(), reasoning.lstrip(), plan.finish_reason, usage))
