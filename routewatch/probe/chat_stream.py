"""The streaming chat-completions probe: one request, one ``ProbeResult``.

One attempt, no retry: the probe is a measuring instrument. Marks are taken
with ``time.perf_counter_ns()`` the moment bytes are handed to us, and every
duration is derived once at the end (``timing.derive``). Each phase has its
own deadline (connect, headers, first token, idle gap) under the total one;
whichever expires first names the failure.

Nothing the router sends makes ``run`` raise: every value is checked as it
is read, and ``router_values.storable`` normalises the finished result
(counts within int4, valid UTF-8 without NUL, secrets redacted, lengths
capped, floats finite).

Bounds per probe, whatever the router sends. Memory: the SSE reader's
unfinished line and event (``sse.MAX_LINE_BYTES`` + ``sse.MAX_EVENT_BYTES``,
256 KiB each), one network read (aiohttp's buffer, a few hundred KiB), one
event decoded from JSON (at worst ~25 times its size: ~6 MiB), labels of
``_RAW_LABEL_CHARS`` each, a constant-size token counter (the answer's text is
counted, never kept), and 8 bytes per token-bearing event, of which
``MAX_RESPONSE_BYTES`` admits at most ~400k (~3 MiB, and up to three more
arrays that size while ``timing.derive`` sorts the gaps at the end). That is
about 20 MiB at the very worst; tests/test_probe_memory.py measures the peak RSS
growth of the worst cases. CPU: the probe lets the event loop run other
tasks after at most ``_MAX_HOLD_NS`` of parsing (one event's JSON decode
excepted, which the event size bounds).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import aiohttp

from routewatch.config.model import PhaseLimits
from routewatch.probe import dialects
from routewatch.probe.loop_lag import LoopLagMonitor
from routewatch.probe.reasoning import OutputBudget
from routewatch.probe.router_values import (
    MAX_LABEL_CHARS,
    UnusableValue,
    label,
    reported_facts,
    retry_after_seconds,
    storable,
    token_count,
)
from routewatch.probe.sse import SSEProtocolError, SSEReader
from routewatch.probe.target import Canary, Target, new_nonce, request_body
from routewatch.probe.timing import StreamMarks, derive
from routewatch.probe.tokens import TokenCounter
from routewatch.results.probe_result import METHODOLOGY_VERSION, ProbeResult, new_probe_id

log = logging.getLogger(__name__)


Timeouts = PhaseLimits
"""Per-phase limits in seconds: ``routewatch.config.TimeoutsConfig``, or a reasoning model's ``Deadlines``.

Read-only: the probe only reads them, and the configuration model is frozen.
"""


# A canary answer is a few KB; past this the upstream is broken or hostile,
# and reading on would only cost the prober memory and CPU.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# Enough of an error body to say what went wrong, never the whole of it.
MAX_ERROR_BODY_BYTES = 4096
# How much of a label to hold until the result is built: more than its
# stored length, so that redaction still sees a secret crossing the cut.
_RAW_LABEL_CHARS = 4 * MAX_LABEL_CHARS
# A probe parses at most this long before letting other tasks run (other
# probes' marks, the API): a 16 MiB answer must not stall them all. Bytes
# and answer text are parsed in slices of _SLICE so that no single step
# exceeds it by much.
_MAX_HOLD_NS = 5_000_000
_SLICE = 16 * 1024

_PHASE_WAITS_FOR = {
    "connect": "connection",
    "headers": "response headers",
    "first_token": "first token",
    "idle": "next token",
}


class _Failure(Exception):
    """Ends a probe with an error class and a detail for the result."""

    def __init__(self, error_class: str, detail: str) -> None:
        super().__init__(detail)
        self.error_class = error_class
        self.detail = detail


class _Phases:
    """Which phase the probe is in, and the deadline that phase must meet."""

    def __init__(self, cm: asyncio.Timeout, total_deadline: float) -> None:
        self._cm = cm
        self._loop = asyncio.get_running_loop()
        self.total_deadline = total_deadline
        self.name = "connect"
        self.deadline = total_deadline

    def enter(self, name: str, deadline: float) -> None:
        self.name = name
        self.deadline = min(deadline, self.total_deadline)
        self._cm.reschedule(self.deadline)

    def timeout_class(self) -> str:
        if self.deadline < self.total_deadline:
            return "timeout_ttft" if self.name == "first_token" else f"timeout_{self.name}"
        return "timeout_total"

    def timeout_detail(self, total_s: float) -> str:
        """What the probe was waiting for when its deadline expired."""
        if self.deadline < self.total_deadline:
            return f"no {_PHASE_WAITS_FOR[self.name]} within its limit"
        if self.name == "idle":  # tokens kept coming: the answer never ended
            return f"stream did not finish within the total limit of {total_s:g} s"
        return f"no {_PHASE_WAITS_FOR[self.name]} within the total limit of {total_s:g} s"


def trace_config() -> aiohttp.TraceConfig:
    """Connection hooks: mark a new connection's set-up and the phase change.

    Pass it to the ClientSession that ``run`` uses; requests without a probe
    context are ignored.
    """

    async def on_create_start(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
        probe = ctx.trace_request_ctx
        if probe is not None:
            probe.marks.connect_start = time.perf_counter_ns()

    async def on_create_end(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
        probe = ctx.trace_request_ctx
        if probe is not None:
            probe.marks.connect_end = time.perf_counter_ns()
            probe.connected()

    async def on_reuse(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
        probe = ctx.trace_request_ctx
        if probe is not None:
            probe.connected()

    tc = aiohttp.TraceConfig()
    tc.on_connection_create_start.append(on_create_start)
    tc.on_connection_create_end.append(on_create_end)
    tc.on_connection_reuseconn.append(on_reuse)
    return tc


class _ProbeContext:
    """Per-request state the trace hooks reach through ``trace_request_ctx``."""

    def __init__(self, marks: StreamMarks, phases: _Phases, timeouts: Timeouts, t0_loop: float) -> None:
        self.marks = marks
        self._phases = phases
        self._timeouts = timeouts
        self._t0_loop = t0_loop

    def connected(self) -> None:
        self._phases.enter("headers", self._t0_loop + self._timeouts.headers)


class _Stream:
    """What the chunks of one completion said, gathered as they arrive.

    The request id is kept raw (only its head: ``router_values`` cuts it far
    shorter); what the router says about serving it goes to its dialect; the
    answer's text is not kept at all, only counted.
    """

    def __init__(self, dialect: dialects.Dialect) -> None:
        self.dialect = dialect
        self.request_id: str | None = None
        self.finished = False  # a finish_reason was seen
        self.finish_reason: str | None = None  # the last one seen
        self.done = False  # [DONE] was seen
        self.usage_output: int | None = None
        self.usage_input: int | None = None
        self.usage_cached_input: int | None = None
        self.usage_reasoning: int | None = None
        self.tokens = TokenCounter()
        self.reasoning = TokenCounter()  # the reasoning deltas' text alone
        self.reasoning_streamed = False  # a reasoning delta was seen

    def take(self, data: str) -> _Delta:
        """Absorb one event's data; say whether it carries a token, answer content, and its text."""
        if data == "[DONE]":
            self.done = True
            return _Delta()
        chunk = _parse_chunk(data)
        err = chunk.get("error")
        if err is not None:
            raise _Failure("stream_error", f"error event in stream: {_error_message(err)}")
        if self.request_id is None and isinstance(chunk.get("id"), str):
            self.request_id = chunk["id"][:_RAW_LABEL_CHARS]
        self.dialect.chunk(chunk)
        self._usage(chunk.get("usage"))
        choices = chunk.get("choices")
        if choices is None:
            return _Delta()
        if not isinstance(choices, list):
            raise _Failure("bad_response", f"choices is {_json_type(choices)}, not an array")
        delta = _Delta()
        for choice in choices:
            self._choice(choice, delta)
        return delta

    def _usage(self, usage: object) -> None:
        if usage is None:
            return
        if not isinstance(usage, dict):
            raise _Failure("bad_response", f"usage is {_json_type(usage)}, not an object")
        try:
            output = token_count(usage.get("completion_tokens"), "usage.completion_tokens")
            prompt = token_count(usage.get("prompt_tokens"), "usage.prompt_tokens")
        except UnusableValue as exc:
            raise _Failure("bad_response", str(exc)) from None
        if output is not None:
            self.usage_output = output
        if prompt is not None:
            self.usage_input = prompt
        self._cached_usage(usage.get("prompt_tokens_details"))
        self._reasoning_usage(usage.get("completion_tokens_details"))

    def _cached_usage(self, details: object) -> None:
        # OpenAI's place for prompt-cache hits; a router that reports none leaves it out.
        cached = _detail_count(details, "prompt_tokens_details", "cached_tokens")
        if cached is not None:
            self.usage_cached_input = cached

    def _reasoning_usage(self, details: object) -> None:
        # OpenAI's count of the output tokens spent reasoning, streamed or not.
        reasoning = _detail_count(details, "completion_tokens_details", "reasoning_tokens")
        if reasoning is not None:
            self.usage_reasoning = reasoning

    @property
    def reasoning_tokens(self) -> int | None:
        """Output tokens spent reasoning: usage's count, else the streamed reasoning counted; None: no sign."""
        if self.usage_reasoning is not None:
            return self.usage_reasoning
        return max(self.reasoning.count, 1) if self.reasoning_streamed else None

    def _choice(self, choice: object, delta: _Delta) -> None:
        if not isinstance(choice, dict):
            raise _Failure("bad_response", f"a choice is {_json_type(choice)}, not an object")
        finish = choice.get("finish_reason")
        if finish is not None and not isinstance(finish, str):
            raise _Failure("bad_response", f"finish_reason is {_json_type(finish)}, not a string")
        if finish:
            self.finished = True
            self.finish_reason = finish
        fields = choice.get("delta")
        if fields is None:
            return
        if not isinstance(fields, dict):
            raise _Failure("bad_response", f"delta is {_json_type(fields)}, not an object")
        for key in ("content", "reasoning", "reasoning_content"):
            text = fields.get(key)
            if text is not None and not isinstance(text, str):
                raise _Failure("bad_response", f"delta.{key} is {_json_type(text)}, not a string")
            if text:
                delta.add(text, answer=key == "content")
                if key != "content":
                    self.reasoning_streamed = True
                    delta.reasoning.append(text)
        calls = fields.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise _Failure("bad_response", f"delta.tool_calls is {_json_type(calls)}, not an array")
        if calls:
            delta.add(json.dumps(calls), answer=False)


class _Delta:
    """The output one event carried: whether any, whether answer content, and its text to count."""

    __slots__ = ("answer", "reasoning", "texts", "token")

    def __init__(self) -> None:
        self.token = False
        self.answer = False
        self.texts: list[str] = []
        self.reasoning: list[str] = []  # of texts, the reasoning ones

    def add(self, text: str, *, answer: bool) -> None:
        self.token = True
        self.answer = self.answer or answer
        self.texts.append(text)


def _detail_count(details: object, section: str, key: str) -> int | None:
    """A token count in one of usage's detail objects; None when the router sent none."""
    if not isinstance(details, dict):
        return None
    try:
        return token_count(details.get(key), f"usage.{section}.{key}")
    except UnusableValue as exc:
        raise _Failure("bad_response", str(exc)) from None


def _parse_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):  # nesting deeper than the parser's stack is malformed too
        raise _Failure("bad_response", f"malformed JSON in stream: {data!r}") from None
    if not isinstance(chunk, dict):
        raise _Failure("bad_response", f"stream event is {_json_type(chunk)}, not a JSON object")
    return chunk


def _error_message(err: object) -> str:
    message = err.get("message", err) if isinstance(err, dict) else err
    if isinstance(message, str):
        return message
    try:
        return json.dumps(message)
    except (ValueError, RecursionError):
        return f"({_json_type(message)})"


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, with an article, for error details."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _http_error_class(status: int) -> str:
    """The class of a response that is not a 200.

    A 2xx other than 200 promises no completion stream, and a 3xx reaching
    here was not followed (no Location, 300, 304, ...): the router answered,
    but not with a completion, so both are ``bad_response``, as is a status
    outside 100..599.
    """
    if status == 429:
        return "http_429"
    if 400 <= status < 500:
        return "http_4xx"
    if 500 <= status < 600:
        return "http_5xx"
    return "bad_response"


async def run(
    session: aiohttp.ClientSession,
    target: Target,
    canary: Canary,
    timeouts: Timeouts,
    *,
    region: str,
    lag: LoopLagMonitor | None = None,
    max_lag_ms: float | None = None,
    on_marks: Callable[[StreamMarks], None] | None = None,
    budget: OutputBudget | None = None,
) -> ProbeResult:
    """Send one streaming canary to ``target`` and measure it.

    ``session`` must have been created with ``trace_config()`` for
    ``connect_ms`` to be recorded. ``lag`` is the prober's loop-lag monitor;
    a probe during which the lag exceeded ``max_lag_ms`` is flagged
    ``prober_overloaded``. ``on_marks``, if given, receives the raw
    monotonic marks (for comparing with a ground truth on the same clock).
    ``budget``: a reasoning model's output budget, sent instead of the
    canary's ``max_tokens`` (``reasoning.ReasoningModels.budget``).
    Never raises for anything the upstream does: every failure becomes a
    result with an ``error_class``.
    """
    loop = asyncio.get_running_loop()
    headers = {"Content-Type": "application/json", **target.headers}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    fields = None if budget is None else budget.fields()
    body = json.dumps(request_body(target.model, canary, new_nonce(), fields)).encode()
    started_at = datetime.now(UTC)
    stream = _Stream(dialects.reader(target.dialect, target.dialect_fields))
    status: int | None = None
    retry_after: float | None = None
    error_class: str | None = None
    detail: str | None = None

    t0_loop = loop.time()
    marks = StreamMarks(t0=time.perf_counter_ns())
    cm = asyncio.timeout(None)
    phases = _Phases(cm, t0_loop + timeouts.total)
    ctx = _ProbeContext(marks, phases, timeouts, t0_loop)
    try:
        async with cm:
            phases.enter("connect", t0_loop + timeouts.connect)
            async with session.post(target.url, data=body, headers=headers, trace_request_ctx=ctx) as resp:
                marks.headers = time.perf_counter_ns()
                status = resp.status
                stream.request_id = _header(resp, "X-Request-Id")
                stream.dialect.headers(resp.headers)
                if status != 200:
                    retry_after = retry_after_seconds(resp.headers.get("Retry-After")) if status == 429 else None
                    head = await resp.content.read(MAX_ERROR_BODY_BYTES)
                    # Whole: the body is redacted before it is cut, never after.
                    raise _Failure(_http_error_class(status), f"HTTP {status}: {head.decode('utf-8', 'replace')}")
                ctype = resp.headers.get("Content-Type", "")
                if "text/event-stream" not in ctype:
                    raise _Failure("bad_response", f"expected text/event-stream, got {ctype or 'no content type'}")
                phases.enter("first_token", t0_loop + timeouts.first_token)
                await _read(resp, stream, marks, phases, timeouts, loop)
    except _Failure as failure:
        error_class, detail = failure.error_class, failure.detail
    except TimeoutError:
        if cm.expired():
            error_class, detail = phases.timeout_class(), phases.timeout_detail(timeouts.total)
        else:  # a timeout raised by the transport itself
            error_class, detail = "timeout_total", "transport timeout"
    except aiohttp.ClientConnectorError as exc:
        error_class, detail = "connect_error", str(exc)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionResetError) as exc:
        error_class, detail = "stream_error", f"connection lost mid-stream: {exc.__class__.__name__}"
    except SSEProtocolError as exc:
        error_class, detail = "bad_response", str(exc)
    except aiohttp.ClientResponseError as exc:
        error_class, detail = "bad_response", f"{exc.__class__.__name__}: {exc.message}"
    except (aiohttp.ClientError, OSError) as exc:
        error_class = "connect_error" if status is None else "stream_error"
        detail = f"{exc.__class__.__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - last resort; CancelledError is not an Exception and passes
        # Whatever the router sent, the probe returns a classified result:
        # an exception here is a parsing path nobody foresaw, not a crash.
        error_class = "bad_response"
        detail = f"unexpected {exc.__class__.__name__} while reading the response: {exc}"
        log.warning(
            "probe of %s %s: unexpected %s at %s; recorded as %s",
            target.router,
            target.model,
            exc.__class__.__name__,
            _raised_at(exc),
            error_class,
        )

    output_tokens = stream.usage_output
    estimated = False
    if output_tokens is None and marks.token_times:
        output_tokens = max(stream.tokens.count, 1)
        estimated = True
    if error_class is None:
        if not (stream.done or stream.finished):
            error_class, detail = "stream_error", "stream ended without [DONE] or finish_reason"
        elif stream.finish_reason == "length" and marks.first_answer is None and stream.usage_reasoning != 0:
            # The cap was reached before any answer: spent reasoning (streamed or not), unless usage says none.
            error_class, detail = "budget_exhausted", _exhausted_detail(canary, budget, stream.reasoning_tokens)
        elif not marks.token_times or output_tokens == 0:
            error_class, detail = "empty_response", "stream finished without output tokens"

    if on_marks is not None:
        on_marks(marks)
    streamed = _streamed_tokens(output_tokens, stream)
    t = derive(marks, streamed if marks.token_times else None)
    # Speed over a shorter answer than the canary asks for is mostly noise.
    tps = t.output_tps if (streamed or 0) >= canary.min_output_tokens else None
    worst_lag = None if lag is None else lag.worst_since(marks.t0)
    secrets = [target.api_key or ""]
    said = reported_facts(stream.dialect.facts(), secrets)
    router_request_id = said.router_request_id
    if router_request_id is not None and router_request_id == label(stream.request_id, secrets):
        router_request_id = None  # the same id twice is one id
    result = ProbeResult(
        id=new_probe_id(),
        started_at=started_at,
        region=region,
        router=target.router,
        model=target.model,
        prompt=canary.name,
        tier=canary.tier,
        methodology=METHODOLOGY_VERSION,
        ok=error_class is None,
        error_class=error_class,
        error_detail=detail,
        http_status=status,
        model_served=said.served_model,
        provider=said.provider,
        request_id=stream.request_id,
        connect_ms=t.connect_ms,
        ttfb_ms=t.ttfb_ms,
        ttft_ms=t.ttft_ms,
        ttfat_ms=t.ttfat_ms,
        e2e_ms=t.e2e_ms,
        output_tps=tps,
        input_tokens=stream.usage_input,
        output_tokens=output_tokens,
        tokens_estimated=estimated,
        cached_input_tokens=stream.usage_cached_input,
        chunks=len(marks.token_times),
        chunk_gap_max_ms=t.chunk_gap_max_ms,
        chunk_gap_p95_ms=t.chunk_gap_p95_ms,
        retry_after_s=retry_after,
        loop_lag_ms=worst_lag,
        prober_overloaded=worst_lag is not None and max_lag_ms is not None and worst_lag > max_lag_ms,
        dialect=said.dialect,
        attempts=said.attempts,
        fallbacks=said.fallbacks,
        router_request_id=router_request_id,
        reported_cost_usd=said.cost_usd,
        reasoning_tokens=stream.reasoning_tokens,
    )
    return storable(result, secrets)


def _streamed_tokens(output_tokens: int | None, stream: _Stream) -> int | None:
    """The output tokens that arrived as deltas: tok/s is their rate between the first and last.

    A model that reasons without streaming its reasoning (OpenAI's) is silent
    while it reasons, yet usage counts those tokens: they are left out, or
    tok/s would credit the answer's seconds with the reasoning's tokens.
    """
    if output_tokens is None or stream.reasoning_streamed or not stream.usage_reasoning:
        return output_tokens
    return max(output_tokens - stream.usage_reasoning, 0)


def _exhausted_detail(canary: Canary, budget: OutputBudget | None, reasoning: int | None) -> str:
    """Why a probe ended ``budget_exhausted``, and what the operator can do."""
    spent = "" if reasoning is None else f" ({reasoning} reasoning tokens)"
    if budget is None:
        return (
            f"finish_reason length before any answer{spent}: max_tokens {canary.max_tokens} was spent reasoning; "
            "with reasoning.detect on, its next probes get reasoning.budget_tokens of room (or name it in "
            "reasoning.models)"
        )
    return (
        f"finish_reason length before any answer{spent}: the output budget of {budget.total_tokens} tokens "
        f"({budget.reasoning_tokens} for reasoning) was spent reasoning; raise reasoning.budget_tokens "
        "or lower reasoning.effort"
    )


def _header(resp: aiohttp.ClientResponse, name: str) -> str | None:
    """A response header's value, None when absent or blank."""
    value = resp.headers.get(name, "").strip()
    return value[:_RAW_LABEL_CHARS] or None


def _raised_at(exc: BaseException) -> str:
    """Where ``exc`` was raised, as file:line in function (no message: it may hold router text)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "an unknown place"
    last = frames[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"


async def _read(
    resp: aiohttp.ClientResponse,
    stream: _Stream,
    marks: StreamMarks,
    phases: _Phases,
    timeouts: Timeouts,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Read SSE until [DONE] or EOF, marking each token-bearing event."""
    reader = SSEReader()
    pacer = _Pacer()
    received = 0
    async for chunk in resp.content.iter_any():
        t_ns = time.perf_counter_ns()
        received += len(chunk)
        if received > MAX_RESPONSE_BYTES:
            raise _Failure("bad_response", f"answer larger than {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB")
        # A burst read at once is parsed in slices, all stamped with its
        # arrival time, so that its parsing can be interleaved with others.
        for start in range(0, len(chunk), _SLICE):
            tokens_before = len(marks.token_times)
            for event in reader.feed(chunk[start : start + _SLICE], t_ns):
                delta = stream.take(event.data)
                if delta.token:
                    marks.token_times.append(event.t_ns)
                    if delta.answer and marks.first_answer is None:
                        marks.first_answer = event.t_ns
                    for text in delta.texts:
                        for i in range(0, len(text), _SLICE):
                            stream.tokens.feed(text[i : i + _SLICE])
                            await pacer.pause()
                    for text in delta.reasoning:
                        for i in range(0, len(text), _SLICE):
                            stream.reasoning.feed(text[i : i + _SLICE])
                            await pacer.pause()
                if stream.done:
                    return
                await pacer.pause()
            # Once per slice, not per event: its events all arrived together,
            # and moving the deadline has a cost.
            if len(marks.token_times) > tokens_before:
                phases.enter("idle", loop.time() + timeouts.idle)


class _Pacer:
    """Hands the loop back to other tasks whenever parsing has held it for ``_MAX_HOLD_NS``."""

    def __init__(self) -> None:
        self._since = time.perf_counter_ns()

    async def pause(self) -> None:
        if time.perf_counter_ns() - self._since > _MAX_HOLD_NS:
            await asyncio.sleep(0)
            self._since = time.perf_counter_ns()
