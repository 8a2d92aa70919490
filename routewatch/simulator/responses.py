"""Timing and writing of one simulated completion, streamed or whole."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from routewatch.simulator import faults
from routewatch.simulator.clock import sleep_until
from routewatch.simulator.groundtruth import ServedRequest
from routewatch.simulator.profiles import ModelProfile
from routewatch.simulator.sse import (
    CONTENT_PERIOD,
    DONE,
    KEEPALIVE,
    ChunkMaker,
    content_token,
    event,
    reasoning_token,
    usage_body,
)

# Faults that strike before a token and end or interrupt the stream there.
_STRIKE_FAULTS = ("drop", "malformed", "stream_error", "stall")
# Faults carried by one token mid-stream, which is sent in a broken shape.
_CARRIED_FAULTS = ("invalid_utf8", "long_line")
# Faults a non-streaming request can get; the others only shape streams.
WHOLE_FAULTS = (*_STRIKE_FAULTS, "empty", "slow_headers")
KEEPALIVE_FOREVER_NS = 1_000_000_000  # when the profile sets no keep-alive interval


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
    cached_prompt_tokens: int
    include_usage: bool
    keepalive_ns: int | None
    stall_s: float
    trickle_s: float
    huge_bytes: int
    long_line_bytes: int
    upstream_delay_ms: float = 0.0  # failed upstream calls the router made first (simulator/upstream.py)
    reasoning_hidden: bool = False  # reasoning takes its time and is counted, but is not streamed

    @property
    def ttft_ns(self) -> int:
        return round(self.ttft_ms * 1e6)

    @property
    def headers_delay_ns(self) -> int:
        """How long after the request the headers may go out: after the router's failed calls and any stall."""
        stall_ns = round(self.stall_s * 1e9) if self.fault == "slow_headers" else 0
        return stall_ns + round(self.upstream_delay_ms * 1e6)

    @property
    def served_ttft_ms(self) -> float:
        """When the first token is due, from the request's arrival; slow headers push it back."""
        return self.ttft_ms + self.headers_delay_ns / 1e6

    def tokens(self) -> list[tuple[str, str]]:
        """(delta field, text) of every token: reasoning first, then content."""
        if self.fault == "empty":
            return []
        reasoning = [("reasoning", reasoning_token(i)) for i in range(self.reasoning_tokens)]
        return reasoning + [("content", content_token(i)) for i in range(self.content_tokens)]

    def token_events(self, chunks: ChunkMaker) -> Iterable[tuple[str, str, bytes]]:
        """(kind, text, encoded event) of every token, encoded before the first write; endless for "endless"."""
        if self.fault != "endless":
            return [(kind, text, chunks.token_event(kind, text)) for kind, text in self.tokens()]
        reasoning = [("reasoning", reasoning_token(i)) for i in range(self.reasoning_tokens)]
        # The content words repeat, so a handful of encoded events serve for ever.
        cycle = [("content", content_token(i)) for i in range(CONTENT_PERIOD)]
        return itertools.chain(
            ((k, t, chunks.token_event(k, t)) for k, t in reasoning),
            itertools.cycle([(k, t, chunks.token_event(k, t)) for k, t in cycle]),
        )

    def strike_index(self) -> int:
        """Index of the token a mid-stream fault strikes before (or is carried by); -1: none."""
        total = 0 if self.fault == "empty" else self.reasoning_tokens + self.content_tokens
        if self.fault in _STRIKE_FAULTS:
            return min(max(1, total // 2), total)
        if self.fault in _CARRIED_FAULTS and total:
            return total // 2
        return -1


def make_plan(
    profile: ModelProfile,
    *,
    fault: str | None,
    ttft_ms: float,
    max_tokens: int | None,
    prompt_tokens: int,
    wants_usage: bool,
    upstream_delay_ms: float = 0.0,
    cached_prompt_tokens: int = 0,
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
        cached_prompt_tokens=cached_prompt_tokens,
        include_usage=profile.include_usage and wants_usage,
        keepalive_ns=None if profile.keepalive_ms is None else round(profile.keepalive_ms * 1e6),
        stall_s=profile.stall_s,
        trickle_s=profile.trickle_s,
        huge_bytes=profile.huge_bytes,
        long_line_bytes=profile.long_line_bytes,
        upstream_delay_ms=upstream_delay_ms,
        reasoning_hidden=profile.reasoning_hidden,
    )


async def _wait_with_keepalive(resp: web.StreamResponse, deadline_ns: int, every_ns: int | None) -> None:
    if every_ns is not None:
        next_ns = time.perf_counter_ns() + every_ns
        while next_ns < deadline_ns:
            await sleep_until(next_ns)
            await resp.write(KEEPALIVE)
            next_ns += every_ns
    await sleep_until(deadline_ns)


def _ending(plan: Plan, chunks: ChunkMaker, output_tokens: int, reasoning_tokens: int) -> list[bytes]:
    """The finish chunk, the usage chunk if wanted, and [DONE]."""
    ending = [event(chunks.delta({}, plan.finish_reason))]
    if plan.include_usage:
        ending.append(
            event(
                chunks.usage(usage_body(plan.prompt_tokens, output_tokens, reasoning_tokens, plan.cached_prompt_tokens))
            )
        )
    return [*ending, DONE]


async def write_stream(
    resp: web.StreamResponse,
    plan: Plan,
    chunks: ChunkMaker,
    record: ServedRequest,
    abort: Callable[[], None],
) -> None:
    """Stream the planned answer on a prepared response, noting each token in `record`."""
    # The role-only chunk goes out at once, as routers do, so it must not look like a first token.
    role = event(chunks.delta({"role": "assistant", "content": ""}))
    if plan.fault == "trickle":
        await _trickle(resp, plan, chunks, record, role)
        return
    await resp.write(role)
    if plan.fault == "keepalive_forever":
        await faults.keepalive_forever(resp, plan.keepalive_ns or KEEPALIVE_FOREVER_NS)
    await _wait_with_keepalive(resp, record.received_ns + round(plan.served_ttft_ms * 1e6), plan.keepalive_ns)
    if plan.fault == "huge":
        await faults.huge(resp, chunks, plan.huge_bytes, record, plan.served_ttft_ms)
    elif not await _paced_tokens(resp, plan, chunks, record, abort):
        return
    ending = _ending(plan, chunks, record.output_tokens, record.reasoning_tokens)
    for data in ending:
        await resp.write(data)
    record.usage_sent = plan.include_usage
    record.finished = True


async def _paced_tokens(
    resp: web.StreamResponse, plan: Plan, chunks: ChunkMaker, record: ServedRequest, abort: Callable[[], None]
) -> bool:
    """Send the tokens at the profile's pace with any mid-stream fault; False when the fault ended the stream."""
    first_ns = record.received_ns + round(plan.served_ttft_ms * 1e6)
    strike = plan.strike_index()
    base_ns, base_k = first_ns, 0
    k = 0
    for kind, text, data in plan.token_events(chunks):
        due_ns = base_ns + (k - base_k) * plan.gap_ns
        if k == strike:
            if plan.fault == "invalid_utf8":
                data = faults.invalid_utf8_event(chunks, kind, text)
            elif plan.fault == "long_line":
                await sleep_until(due_ns)
                line = faults.long_line_event(chunks, kind, text, plan.long_line_bytes)
                _note_first(record, plan)
                record.note_token(kind, await faults.spread(resp, line, round(plan.stall_s * 1e9)))
                # Resume at the normal pace: the next token one gap after the long line ended.
                base_ns, base_k = time.perf_counter_ns() + plan.gap_ns, k + 1
                k += 1
                continue
            else:
                resume_ns = await _strike(resp, plan, chunks, abort, due_ns)
                if resume_ns is None:
                    return False
                base_ns, base_k, due_ns = resume_ns, k, resume_ns
        await sleep_until(due_ns)
        if kind == "reasoning" and plan.reasoning_hidden:
            record.note_hidden_reasoning()  # the model reasons in silence: nothing goes out
            k += 1
            continue
        sent_ns = time.perf_counter_ns()  # before the write: see ServedRequest.token_times_ns
        await resp.write(data)
        _note_first(record, plan)
        record.note_token(kind, sent_ns)
        k += 1
    if k == strike:
        return await _strike(resp, plan, chunks, abort, base_ns + (k - base_k) * plan.gap_ns) is not None
    return True


def _note_first(record: ServedRequest, plan: Plan) -> None:
    if not record.token_times_ns:
        # Hidden reasoning: the first token out is the answer's, a gap per reasoning token later.
        silent_ms = plan.reasoning_tokens * plan.gap_ns / 1e6 if plan.reasoning_hidden else 0.0
        record.injected_ttft_ms = plan.served_ttft_ms + silent_ms


async def _strike(
    resp: web.StreamResponse, plan: Plan, chunks: ChunkMaker, abort: Callable[[], None], due_ns: int
) -> int | None:
    """Inflict a strike fault when the next token was due.

    Returns None when the stream ends here, else when the next token is due now.
    """
    await sleep_until(due_ns)
    if plan.fault == "drop":
        abort()
        return None
    if plan.fault == "stream_error":
        await resp.write(event(chunks.error("Upstream provider error (simulated)", 502)))
        return None
    if plan.fault == "malformed":
        await resp.write(chunks.malformed())
        return due_ns
    # stall: resume at the normal pace rather than bursting what fell due during the stall.
    await asyncio.sleep(plan.stall_s)
    return time.perf_counter_ns()


async def _trickle(
    resp: web.StreamResponse, plan: Plan, chunks: ChunkMaker, record: ServedRequest, role: bytes
) -> None:
    """The whole stream as planned, but one byte every trickle_s."""
    tokens = plan.tokens()
    reasoning = sum(kind == "reasoning" for kind, _ in tokens)
    parts: list[tuple[bytes, str | None]] = [(role, None)]
    parts += [(chunks.token_event(kind, text), kind) for kind, text in tokens]
    parts += [(data, None) for data in _ending(plan, chunks, len(tokens), reasoning)]
    await faults.trickle(resp, parts, round(plan.trickle_s * 1e9), record)
    record.usage_sent = plan.include_usage
    record.finished = True


async def whole_completion(
    plan: Plan, chunks: ChunkMaker, record: ServedRequest, abort: Callable[[], None]
) -> web.Response:
    """Answer a non-streaming request (or a not_sse fault) when its last token would have been generated."""
    tokens = plan.tokens()
    last_ns = round(plan.served_ttft_ms * 1e6) + max(len(tokens) - 1, 0) * plan.gap_ns
    await sleep_until(record.received_ns + last_ns)
    if plan.fault == "stall":
        await asyncio.sleep(plan.stall_s)
    if plan.fault == "drop":
        abort()
        return web.Response(status=200)  # never reaches the client
    if plan.fault == "stream_error":
        record.status = 502
        return web.json_response({"error": {"message": "Upstream provider error (simulated)", "code": 502}}, status=502)
    if plan.fault == "malformed":
        return web.Response(body=chunks.malformed()[len(b"data: ") :], content_type="application/json")
    reasoning = "" if plan.reasoning_hidden else "".join(text for kind, text in tokens if kind == "reasoning")
    content = "".join(text for kind, text in tokens if kind == "content")
    record.output_tokens = len(tokens)
    record.reasoning_tokens = plan.reasoning_tokens if tokens else 0
    if tokens:
        record.injected_ttft_ms = plan.served_ttft_ms
    usage = usage_body(plan.prompt_tokens, record.output_tokens, record.reasoning_tokens, plan.cached_prompt_tokens)
    record.usage_sent = True
    record.finished = True
    return web.json_response(chunks.completion(content.lstrip(), reasoning.lstrip(), plan.finish_reason, usage))
