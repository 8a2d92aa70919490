"""A hostile OpenAI-compatible router on loopback: one named misbehaviour per model id.

The model a request asks for selects the behaviour (``hostile/<name>``), so one
router serves every behaviour and a probes.yaml lists one model per behaviour;
``good/control_a`` and ``good/control_b`` answer like a well-behaved router.
Every hostile answer echoes the request's ``Authorization`` value and the bare
key into every string the router controls (``X-Request-Id``, ``X-Provider``,
the chunks' ``id``, ``model`` and ``provider``, error bodies), so a key that
leaks anywhere downstream can be found there.

Runs in its own process (``python tests/hostile/router.py --port 0``); it
prints ``hostile router: http://127.0.0.1:<port>/v1`` once it listens.
``GET /served`` answers how many chat requests it served per model and per
key, for comparing with what the prober stored.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

V1 = "/v1"
CONTROLS = ("good/control_a", "good/control_b")
# A 16 MiB answer in 64 KiB events, kept just under the probe's 16 MiB
# response cap so that the whole answer is read and counted.
HUGE_EVENTS = 250
HUGE_EVENT_CHARS = 64 * 1024
# The huge answer is served on the first request of a run and every this-many
# after: one is enough to show the memory bound, and each costs seconds of CPU.
HUGE_EVERY = 10
ENDLESS_GAP_S = 0.05
ERROR_CUT = 200  # the probe keeps this many characters of an error body
STRADDLE_KEEP = 14  # characters of the key placed before that cut
MARKUP_AND_ESCAPES = (
    "[/] [bold red]PWNED[/bold red] [link=http://evil.invalid]click[/link] "
    "\x1b[2J\x1b]0;pwned title\x07\x9b31m red \x1b[0m"
)

Handler = Callable[[web.Request, "Exchange"], Awaitable[web.StreamResponse]]

SERVED: web.AppKey[Counter[str]] = web.AppKey("served", Counter)
COUNTER: web.AppKey[itertools.count[int]] = web.AppKey("counter", itertools.count)


class Exchange:
    """One chat request: what it asked for and the strings echoed back into the answer."""

    def __init__(self, model: str, authorization: str, n: int, nth_of_model: int) -> None:
        self.model = model
        self.authorization = authorization
        self.key = authorization.removeprefix("Bearer ").strip()
        self.n = n  # request number across the router's life
        self.nth_of_model = nth_of_model  # request number for this model, from 0

    @property
    def echo(self) -> str:
        """The Authorization value and the bare key, as a router reflecting them would."""
        return f"{self.authorization} {self.key}"

    def chunk(self, **fields: Any) -> dict[str, Any]:
        """A chat.completion.chunk with the echoing id, model and provider, overridable."""
        base: dict[str, Any] = {
            "id": f"chatcmpl-{self.n}-{self.echo}",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": f"{self.model}@{self.echo}",
            "provider": f"prov-{self.echo}",
            "choices": [],
        }
        base.update(fields)
        return base

    def headers(self, **extra: str) -> dict[str, str]:
        """Response headers echoing the key into the request id and provider."""
        return {"X-Request-Id": f"req-{self.n}-{self.echo}", "X-Provider": f"hdr-{self.echo}", **extra}


def sse(payload: Any) -> bytes:
    """One ``data:`` event; ``json.dumps`` keeps lone surrogates as ``\\ud800`` escapes."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def delta(text: str, finish: str | None = None) -> list[dict[str, Any]]:
    """The ``choices`` of a chunk carrying ``text``."""
    return [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]


async def open_stream(request: web.Request, headers: dict[str, str], status: int = 200) -> web.StreamResponse:
    """Send the headers of an event stream."""
    resp = web.StreamResponse(status=status, headers={**headers, "Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


async def answer(
    request: web.Request,
    ex: Exchange,
    *,
    headers: dict[str, str] | None = None,
    usage: dict[str, Any] | None = None,
    tokens: int = 8,
    **chunk_fields: Any,
) -> web.StreamResponse:
    """A complete, well-formed stream of ``tokens`` words, then usage (if any) and [DONE]."""
    resp = await open_stream(request, ex.headers() if headers is None else headers)
    for i in range(tokens):
        last = i == tokens - 1
        await resp.write(sse(ex.chunk(choices=delta(f" w{i}", "stop" if last else None), **chunk_fields)))
    if usage is not None:
        await resp.write(sse(ex.chunk(usage=usage, **chunk_fields)))
    await resp.write(DONE)
    await resp.write_eof()
    return resp


def error_body(status: int, text: str, headers: dict[str, str], content_type: str = "application/json") -> web.Response:
    """A whole error response whose body is ``text`` as given."""
    return web.Response(status=status, body=text.encode("utf-8"), headers={**headers, "Content-Type": content_type})


def openai_error(message: str) -> str:
    """``{"error": {"message": ...}}`` as routers send it."""
    return json.dumps({"error": {"message": message, "type": "upstream_error", "code": None}})


# ---------------------------------------------------------------- controls


async def control_a(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """Well-behaved: a provider header, usage, nothing echoed."""
    headers = {"X-Request-Id": f"req-{ex.n}", "X-Provider": "ControlCo"}
    return await answer(
        request,
        ex,
        headers=headers,
        usage={"prompt_tokens": 12, "completion_tokens": 8},
        id=f"chatcmpl-{ex.n}",
        model=ex.model,
        provider="ControlCo",
    )


async def control_b(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """Well-behaved, names no provider and sends no usage (tokens are estimated)."""
    chunk = ex.chunk(id=f"chatcmpl-{ex.n}", model=ex.model)
    del chunk["provider"]
    resp = await open_stream(request, {"X-Request-Id": f"req-{ex.n}"})
    for i in range(8):
        await resp.write(sse({**chunk, "choices": delta(f" w{i}", "stop" if i == 7 else None)}))
    await resp.write(DONE)
    await resp.write_eof()
    return resp


# ---------------------------------------------------------------- poison values


async def usage_overflow_31(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """usage counts of 2**31: one past PostgreSQL's integer."""
    return await answer(request, ex, usage={"prompt_tokens": 2**31, "completion_tokens": 2**31})


async def usage_overflow_63(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """usage counts of 2**63: past every integer column."""
    return await answer(request, ex, usage={"prompt_tokens": 2**63, "completion_tokens": 2**63})


async def lone_surrogate_error(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """A token, then an error event whose message holds a lone surrogate."""
    resp = await open_stream(request, ex.headers())
    await resp.write(sse(ex.chunk(choices=delta(" w0"))))
    await resp.write(sse(ex.chunk(error={"message": f"upstream \ud800 exploded {ex.echo}", "code": 502})))
    await resp.write_eof()
    return resp


async def lone_surrogate_model(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """A good answer whose chunks name a served model with a lone surrogate."""
    return await answer(request, ex, model=f"served-\ud800-{ex.echo}")


async def lone_surrogate_id(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """A good answer with no X-Request-Id and a chunk id with a lone surrogate."""
    headers = ex.headers()
    del headers["X-Request-Id"]
    return await answer(request, ex, headers=headers, id=f"id-\udfff-{ex.echo}")


async def nul_strings(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """NUL characters in the served model, provider and id (PostgreSQL text refuses NUL)."""
    headers = ex.headers()
    del headers["X-Request-Id"], headers["X-Provider"]
    return await answer(
        request,
        ex,
        headers=headers,
        model=f"nul\x00model-{ex.echo}",
        provider=f"nul\x00prov-{ex.echo}",
        id=f"nul\x00id-{ex.echo}",
    )


# ---------------------------------------------------------------- echoed key


async def echo_headers(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """A good answer; the key is in X-Provider and X-Request-Id (which win over the body)."""
    return await answer(request, ex, usage={"prompt_tokens": 12, "completion_tokens": 8})


async def echo_body(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """A good answer with no headers to go by: the key is in the chunks' id, model and provider."""
    return await answer(request, ex, headers={}, usage={"prompt_tokens": 12, "completion_tokens": 8})


async def echo_error_straddle(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """An error body with the bare key straddling the probe's 200-character cut."""
    prefix = '{"error":{"message":"key rejected: '
    pad = "x" * (ERROR_CUT - STRADDLE_KEEP - len(prefix))
    text = f'{prefix}{pad}{ex.key} ({ex.authorization})"}}}}'
    return error_body(401, text, ex.headers())


# ---------------------------------------------------------------- label cardinality


async def provider_per_response(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """A new provider name on every response."""
    headers = {**ex.headers(), "X-Provider": f"upstream-{ex.n}"}
    return await answer(request, ex, headers=headers, provider=f"upstream-{ex.n}")


# ---------------------------------------------------------------- malformed structure


async def _one_bad_chunk(request: web.Request, ex: Exchange, choices: Any) -> web.StreamResponse:
    resp = await open_stream(request, ex.headers())
    await resp.write(sse(ex.chunk(choices=choices)))
    await resp.write(DONE)
    await resp.write_eof()
    return resp


async def choices_int(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """``{"choices": 5}``."""
    return await _one_bad_chunk(request, ex, 5)


async def choices_bool(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """``{"choices": true}``."""
    return await _one_bad_chunk(request, ex, True)


# ---------------------------------------------------------------- size and time


async def huge_answer(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """16 MiB of short words without usage (every HUGE_EVERY-th request; a short answer otherwise)."""
    if ex.nth_of_model % HUGE_EVERY:
        return await answer(request, ex)
    words = " ab cd ef gh" * (HUGE_EVENT_CHARS // 12)
    event = sse(ex.chunk(choices=delta(words)))
    resp = await open_stream(request, ex.headers())
    for _ in range(HUGE_EVENTS):
        await resp.write(event)
    await resp.write(sse(ex.chunk(choices=delta(" end", "stop"))))
    await resp.write(DONE)
    await resp.write_eof()
    return resp


async def never_ending_stream(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """A token every ENDLESS_GAP_S for ever, never a finish; ends when the client hangs up."""
    resp = await open_stream(request, ex.headers())
    for i in itertools.count():
        await resp.write(sse(ex.chunk(choices=delta(f" w{i}"))))
        await asyncio.sleep(ENDLESS_GAP_S)
    return resp  # pragma: no cover - the loop ends by cancellation


# ---------------------------------------------------------------- classification


async def http_299(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """HTTP 299 with a JSON error body."""
    return error_body(299, openai_error(f"two-ninety-nine {ex.echo}"), ex.headers())


async def negative_usage(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """A good answer whose usage counts are negative."""
    return await answer(request, ex, usage={"prompt_tokens": -7, "completion_tokens": -5})


def _rate_limited(retry_after: str) -> Handler:
    async def handler(request: web.Request, ex: Exchange) -> web.StreamResponse:
        return error_body(429, openai_error(f"slow down {ex.echo}"), ex.headers(**{"Retry-After": retry_after}))

    handler.__doc__ = f"HTTP 429 with Retry-After: {retry_after}."
    return handler


async def markup_escapes(request: web.Request, ex: Exchange) -> web.StreamResponse:
    """HTTP 500 whose plain-text body holds rich markup and terminal escape sequences."""
    return error_body(500, f"{MARKUP_AND_ESCAPES} {ex.echo}", ex.headers(), content_type="text/plain; charset=utf-8")


BEHAVIOURS: dict[str, Handler] = {
    "usage_overflow_31": usage_overflow_31,
    "usage_overflow_63": usage_overflow_63,
    "lone_surrogate_error": lone_surrogate_error,
    "lone_surrogate_model": lone_surrogate_model,
    "lone_surrogate_id": lone_surrogate_id,
    "nul_strings": nul_strings,
    "echo_headers": echo_headers,
    "echo_body": echo_body,
    "echo_error_straddle": echo_error_straddle,
    "provider_per_response": provider_per_response,
    "choices_int": choices_int,
    "choices_bool": choices_bool,
    "huge_answer": huge_answer,
    "never_ending_stream": never_ending_stream,
    "http_299": http_299,
    "negative_usage": negative_usage,
    "retry_after_nan": _rate_limited("NaN"),
    "retry_after_negative": _rate_limited("-100"),
    "retry_after_huge": _rate_limited("1e308"),
    "markup_escapes": markup_escapes,
}
HANDLERS: dict[str, Handler] = {
    CONTROLS[0]: control_a,
    CONTROLS[1]: control_b,
    **{f"hostile/{name}": handler for name, handler in BEHAVIOURS.items()},
}


def model_id(behaviour: str) -> str:
    """The model id that selects ``behaviour``."""
    return f"hostile/{behaviour}"


# ---------------------------------------------------------------- the app


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Serve one chat request with the behaviour its model selects."""
    try:
        body = await request.json()
        model = body["model"]
        handler = HANDLERS[model]
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": {"message": "unknown model"}}, status=404)
    served = request.app[SERVED]
    authorization = request.headers.get("Authorization", "")
    nth = served[model]
    served[model] += 1
    served[f"{model}|{authorization.removeprefix('Bearer ')}"] += 1
    ex = Exchange(model, authorization, next(request.app[COUNTER]), nth)
    try:
        return await handler(request, ex)
    except ConnectionResetError:  # the prober hung up (a timeout): nothing left to send
        return web.Response(status=499)


async def served_counts(request: web.Request) -> web.Response:
    """``{"<model>": n, "<model>|<key>": n}``: chat requests served so far."""
    return web.json_response(dict(request.app[SERVED]))


def create_app() -> web.Application:
    """The hostile router's application."""
    app = web.Application(client_max_size=1 << 20)
    app[SERVED] = Counter()
    app[COUNTER] = itertools.count(1)
    app.router.add_post(V1 + "/chat/completions", chat_completions)
    app.router.add_get("/served", served_counts)
    app.router.add_get("/healthz", healthz)
    return app


async def healthz(request: web.Request) -> web.Response:
    """Liveness."""
    return web.json_response({"status": "ok"})


async def serve(host: str, port: int) -> None:
    """Listen until SIGINT or SIGTERM."""
    runner = web.AppRunner(create_app(), handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"hostile router: http://{host}:{runner.addresses[0][1]}{V1}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    """``python tests/hostile/router.py [--host 127.0.0.1] [--port 0]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
