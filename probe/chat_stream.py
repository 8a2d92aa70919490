"""The streaming chat-completions probe: one request, one ``ProbeResult``.

One attempt, no retry: the probe is a measuring instrument. Marks are taken
with ``time.perf_counter_ns()`` the moment bytes are handed to us, and every
duration is derived once at the end (``timing.derive``). Each phase has its
own deadline (connect, headers, first token, idle gap) under the total one;
whichever expires first names the failure.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Protocol

import aiohttp

from .loop_lag import LoopLagMonitor
from .redact import redact
from .result import METHODOLOGY_VERSION, ProbeResult, new_probe_id
from .sse import SSEProtocolError, SSEReader
from .target import Canary, Target, new_nonce, request_body
from .timing import StreamMarks, derive
from .tokens import estimate_tokens


class Timeouts(Protocol):
    """Per-phase limits in seconds (``probe.config.TimeoutsConfig`` is one)."""

    connect: float
    headers: float
    first_token: float
    idle: float
    total: float


# A canary answer is a few KB; past this the upstream is broken or hostile,
# and reading on would only cost the prober memory and CPU.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# Enough of an error body to say what went wrong, never the whole of it.
MAX_ERROR_BODY_BYTES = 4096
# Headers some routers use to name the upstream that served a request.
PROVIDER_HEADERS = ("X-Provider", "X-Model-Provider")

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
    """What the chunks of one completion said, gathered as they arrive."""

    def __init__(self) -> None:
        self.model_served: str | None = None
        self.provider: str | None = None
        self.request_id: str | None = None
        self.finished = False  # a finish_reason was seen
        self.done = False  # [DONE] was seen
        self.usage_output: int | None = None
        self.usage_input: int | None = None
        self.text_parts: list[str] = []

    def take(self, data: str) -> tuple[bool, bool]:
        """Absorb one event's data; return (carries a token, carries answer content)."""
        if data == "[DONE]":
            self.done = True
            return False, False
        try:
            chunk = json.loads(data)
        except ValueError:
            raise _Failure("bad_response", f"malformed JSON in stream: {data[:80]!r}") from None
        if not isinstance(chunk, dict):
            raise _Failure("bad_response", "stream event is not a JSON object")
        if "error" in chunk:
            err = chunk["error"]
            msg = err.get("message") if isinstance(err, dict) else err
            raise _Failure("stream_error", f"error event in stream: {msg}")
        if self.model_served is None and isinstance(chunk.get("model"), str):
            self.model_served = chunk["model"]
        if self.provider is None and isinstance(chunk.get("provider"), str):
            self.provider = chunk["provider"]
        if self.request_id is None and isinstance(chunk.get("id"), str):
            self.request_id = chunk["id"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                self.usage_output = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                self.usage_input = usage["prompt_tokens"]
        token = answer = False
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self.finished = True
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            content = delta.get("content")
            if isinstance(content, str) and content:
                token = answer = True
                self.text_parts.append(content)
            for key in ("reasoning", "reasoning_content"):
                value = delta.get(key)
                if isinstance(value, str) and value:
                    token = True
                    self.text_parts.append(value)
            if delta.get("tool_calls"):
                token = True
                self.text_parts.append(json.dumps(delta["tool_calls"]))
        return token, answer


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP-date; rare from routers, and not worth a parser


def _http_error_class(status: int) -> str:
    if status == 429:
        return "http_429"
    return "http_5xx" if status >= 500 else "http_4xx"


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
) -> ProbeResult:
    """Send one streaming canary to ``target`` and measure it.

    ``session`` must have been created with ``trace_config()`` for
    ``connect_ms`` to be recorded. ``lag`` is the prober's loop-lag monitor;
    a probe during which the lag exceeded ``max_lag_ms`` is flagged
    ``prober_overloaded``. ``on_marks``, if given, receives the raw
    monotonic marks (for comparing with a ground truth on the same clock).
    Never raises for anything the upstream does: every failure becomes a
    result with an ``error_class``.
    """
    loop = asyncio.get_running_loop()
    headers = {"Content-Type": "application/json", **target.headers}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    body = json.dumps(request_body(target.model, canary, new_nonce())).encode()
    started_at = datetime.now(timezone.utc)
    stream = _Stream()
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
                stream.request_id = resp.headers.get("X-Request-Id")
                if status != 200:
                    retry_after = _retry_after(resp.headers) if status == 429 else None
                    head = await resp.content.read(MAX_ERROR_BODY_BYTES)
                    text = head.decode("utf-8", "replace")
                    raise _Failure(_http_error_class(status), f"HTTP {status}: {text[:200]}")
                ctype = resp.headers.get("Content-Type", "")
                if "text/event-stream" not in ctype:
                    raise _Failure("bad_response", f"expected text/event-stream, got {ctype or 'no content type'}")
                stream.provider = next((resp.headers[h] for h in PROVIDER_HEADERS if h in resp.headers), None)
                phases.enter("first_token", t0_loop + timeouts.first_token)
                await _read(resp, stream, marks, phases, timeouts, loop)
    except _Failure as failure:
        error_class, detail = failure.error_class, failure.detail
    except TimeoutError:
        if cm.expired():
            error_class = phases.timeout_class()
            detail = f"no {_PHASE_WAITS_FOR[phases.name]} within its limit"
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
    except aiohttp.ClientError as exc:
        error_class = "connect_error" if status is None else "stream_error"
        detail = f"{exc.__class__.__name__}: {exc}"

    output_tokens = stream.usage_output
    estimated = False
    if output_tokens is None and marks.token_times:
        output_tokens = max(estimate_tokens("".join(stream.text_parts)), 1)
        estimated = True
    if error_class is None:
        if not (stream.done or stream.finished):
            error_class, detail = "stream_error", "stream ended without [DONE] or finish_reason"
        elif not marks.token_times or output_tokens == 0:
            error_class, detail = "empty_response", "stream finished without output tokens"

    if on_marks is not None:
        on_marks(marks)
    t = derive(marks, output_tokens if marks.token_times else None)
    # Speed over a shorter answer than the canary asks for is mostly noise.
    tps = t.output_tps if (output_tokens or 0) >= canary.min_output_tokens else None
    worst_lag = None if lag is None else lag.worst_since(marks.t0)
    return ProbeResult(
        id=new_probe_id(),
        started_at=started_at,
        region=region,
        router=target.router,
        model=target.model,
        prompt=canary.name,
        methodology=METHODOLOGY_VERSION,
        ok=error_class is None,
        error_class=error_class,
        error_detail=None if detail is None else redact(detail, [target.api_key or ""]),
        http_status=status,
        model_served=stream.model_served,
        provider=stream.provider,
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
        chunks=len(marks.token_times),
        chunk_gap_max_ms=t.chunk_gap_max_ms,
        chunk_gap_p95_ms=t.chunk_gap_p95_ms,
        retry_after_s=retry_after,
        loop_lag_ms=worst_lag,
        prober_overloaded=worst_lag is not None and max_lag_ms is not None and worst_lag > max_lag_ms,
    )


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
    received = 0
    async for chunk in resp.content.iter_any():
        t_ns = time.perf_counter_ns()
        received += len(chunk)
        if received > MAX_RESPONSE_BYTES:
            raise _Failure("bad_response", f"answer larger than {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB")
        for event in reader.feed(chunk, t_ns):
            token, answer = stream.take(event.data)
            if token:
                marks.token_times.append(event.t_ns)
                if answer and marks.first_answer is None:
                    marks.first_answer = event.t_ns
                phases.enter("idle", loop.time() + timeouts.idle)
            if stream.done:
                return
