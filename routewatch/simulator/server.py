"""The simulator's aiohttp application, and running it in tests or from the command line."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from routewatch.simulator.clock import sleep_until
from routewatch.simulator.dialects import Announcement, announce
from routewatch.simulator.groundtruth import GroundTruthLog, ServedRequest, json_batches
from routewatch.simulator.listing import setup_listing
from routewatch.simulator.profiles import DEFAULT_PROFILES, HTTP_FAULTS, ModelProfile
from routewatch.simulator.responses import WHOLE_FAULTS, Plan, make_plan, whole_completion, write_stream
from routewatch.simulator.sse import ChunkMaker
from routewatch.simulator.upstream import Routing, route
from routewatch.simulator.validation import ApiError, check_authorization, parse_chat_request

GROUND_TRUTH = web.AppKey("ground_truth", GroundTruthLog)
PROFILES = web.AppKey("profiles", dict[str, ModelProfile])
RNG = web.AppKey("rng", random.Random)
# Handlers still streaming; cancelled at shutdown so a stalled one cannot hold it up.
HANDLERS = web.AppKey("handlers", set[asyncio.Task[Any]])

# message, OpenAI error type, code
_HTTP_FAULT_ERRORS: dict[str, tuple[str, str, str | None]] = {
    "http_429": ("Rate limit exceeded (simulated)", "rate_limit_error", "rate_limit_exceeded"),
    "http_500": ("Internal server error (simulated)", "server_error", None),
    "http_400": ("Provider returned error (simulated)", "invalid_request_error", None),
}
RETRY_AFTER_S = 1


def create_app(profiles: Iterable[ModelProfile] = DEFAULT_PROFILES, *, seed: int | None = None) -> web.Application:
    """An OpenAI-compatible router serving `profiles`; `seed` makes faults and TTFTs reproducible."""
    by_model: dict[str, ModelProfile] = {}
    for profile in profiles:
        if profile.model in by_model:
            raise ValueError(f"model {profile.model!r} is listed twice")
        by_model[profile.model] = profile
    app = web.Application()
    app[PROFILES] = by_model
    app[RNG] = random.Random(seed)
    app[GROUND_TRUTH] = GroundTruthLog()
    app[HANDLERS] = set()
    app.on_shutdown.append(_cancel_handlers)
    setup_listing(app, by_model)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/ground-truth", ground_truth)
    app.router.add_delete("/v1/ground-truth", clear_ground_truth)
    app.router.add_get("/healthz", healthz)
    return app


async def _cancel_handlers(app: web.Application) -> None:
    handlers: set[asyncio.Task[Any]] = app[HANDLERS]
    for task in list(handlers):
        task.cancel()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ground_truth(request: web.Request) -> web.StreamResponse:
    """Served-request records, optionally only those after `?since=<seq>`."""
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        return ApiError(400, "'since' must be an integer").response({})
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    # Tens of thousands of token lists take a while to encode: in pieces, so streams keep their pace.
    for piece in json_batches(request.app[GROUND_TRUTH].since(since)):
        await resp.write(piece)
        await asyncio.sleep(0)
    await resp.write_eof()
    return resp


async def clear_ground_truth(request: web.Request) -> web.Response:
    """Forget the records so far, e.g. between the phases of a benchmark."""
    return web.json_response({"cleared": request.app[GROUND_TRUTH].clear()})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Serve one completion as the model's profile says, recording what was sent."""
    received_ns = time.perf_counter_ns()  # the injected TTFT counts from here
    request_id = f"gen-{int(time.time())}-{secrets.token_hex(8)}"
    record = request.app[GROUND_TRUTH].open(request_id, received_ns)
    handlers = request.app[HANDLERS]
    task = asyncio.current_task()
    if task is not None:
        handlers.add(task)
    try:
        resp = await _serve(request, record)
        if record.headers_ns is None:  # a whole response: aiohttp sends it once we return it
            record.headers_ns = time.perf_counter_ns()
        return resp
    finally:
        if task is not None:
            handlers.discard(task)


async def _serve(request: web.Request, record: ServedRequest) -> web.StreamResponse:
    headers = {"X-Request-Id": record.request_id}
    try:
        check_authorization(request.headers.get("Authorization"))
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "request body is not valid JSON") from None
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            record.model = body["model"]
        profiles: dict[str, ModelProfile] = request.app[PROFILES]
        chat = parse_chat_request(body, profiles)
    except ApiError as exc:
        record.status = exc.status
        return exc.response(headers)

    profile = chat.profile
    record.nonce_prompt = chat.nonce_prompt
    record.max_tokens_asked = chat.max_tokens
    record.reasoning_asked = chat.reasoning_asked
    record.prompt_tokens = chat.prompt_tokens + profile.prompt_overhead_tokens
    record.cached_prompt_tokens = min(profile.cached_prompt_tokens, record.prompt_tokens)
    rng = request.app[RNG]
    fault = profile.draw_fault(rng)
    ttft_ms = profile.draw_ttft_ms(rng, record.prompt_tokens)
    if not chat.stream and fault not in HTTP_FAULTS and fault not in WHOLE_FAULTS:
        fault = None  # a stream-only fault has no effect on a whole answer, so none was injected
    record.fault = fault
    record.drawn_ttft_ms = ttft_ms
    routing = route(profile, rng, record.prompt_tokens)
    plan = make_plan(
        profile,
        fault=fault,
        ttft_ms=ttft_ms,
        max_tokens=chat.max_tokens,
        prompt_tokens=record.prompt_tokens,
        cached_prompt_tokens=record.cached_prompt_tokens,
        wants_usage=chat.wants_usage,
        upstream_delay_ms=routing.delay_ms,
    )
    said = _announce(record, profile, routing, plan)
    headers.update(said.headers)
    if not routing.answered:
        # Every upstream call failed: the client waits for them all, then gets the router's 502.
        await asyncio.sleep(routing.delay_ms / 1000)
        record.fault, record.status = "upstream_exhausted", 502
        _no_chunks_sent(record, said)
        return ApiError(502, "every upstream call failed (simulated)", error_type="server_error").response(headers)
    if fault is not None and fault in HTTP_FAULTS:
        await asyncio.sleep(routing.delay_ms / 1000)
        _no_chunks_sent(record, said)
        record.status = HTTP_FAULTS[fault]
        if fault == "http_429":
            headers["Retry-After"] = str(RETRY_AFTER_S)
        message, error_type, code = _HTTP_FAULT_ERRORS[fault]
        return ApiError(record.status, message, error_type=error_type, code=code).response(headers)

    chunks = ChunkMaker(
        id=record.request_id,
        created=int(time.time()),
        model=profile.reported_model,
        provider=said.chunk_provider,
        usage_fields=said.usage_fields,
        usage_chunk_fields=said.usage_chunk_fields,
    )

    def abort() -> None:
        # Close without the chunked-encoding terminator: the client sees a cut connection.
        if request.transport is not None:
            request.transport.abort()

    record.status = 200
    if not chat.stream or fault == "not_sse":
        whole = await whole_completion(plan, chunks, record, abort)
        whole.headers.update(headers)
        return whole
    resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        await sleep_until(record.received_ns + plan.headers_delay_ns)  # slow_headers: not a byte before
        record.headers_ns = time.perf_counter_ns()
        await resp.prepare(request)
        await write_stream(resp, plan, chunks, record, abort)
    except ConnectionResetError:
        pass  # the client went away; the record shows how far the answer got
    finally:
        if said.cost_in_chunks and not record.usage_sent:
            record.cost_usd = None  # the usage chunk that carries it never went out
    return resp


def _announce(record: ServedRequest, profile: ModelProfile, routing: Routing, plan: Plan) -> Announcement:
    """How the answer announces its serving in the profile's dialect, noted in the ground truth."""
    output_tokens = len(plan.tokens())
    cost = (plan.prompt_tokens * profile.input_usd_per_1m + output_tokens * profile.output_usd_per_1m) / 1e6
    said = announce(profile.dialect, routing, profile.reported_model, cost)
    record.dialect = profile.dialect
    record.provider = routing.provider
    record.provider_label = said.provider_label
    record.served_model = profile.reported_model
    record.attempts = routing.attempts
    record.fallbacks = routing.fallbacks
    record.attempts_sent = said.attempts_sent
    record.fallbacks_sent = said.fallbacks_sent
    record.upstream_delay_ms = routing.delay_ms
    record.router_request_id = said.router_request_id
    record.cost_usd = said.cost_sent
    return said


def _no_chunks_sent(record: ServedRequest, said: Announcement) -> None:
    """An error answer carries headers only: what only chunks would have said was not said."""
    if said.provider_in_chunks:
        record.provider_label = None
    if said.cost_in_chunks:
        record.cost_usd = None


@dataclass
class RunningSimulator:
    """A simulator listening on a socket; `base_url` ends in /v1 like a router's."""

    base_url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def ground_truth(self) -> GroundTruthLog:
        return self.app[GROUND_TRUTH]

    async def close(self) -> None:
        await self.runner.cleanup()

    async def __aenter__(self) -> RunningSimulator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_simulator(
    profiles: Iterable[ModelProfile] = DEFAULT_PROFILES,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int | None = None,
) -> RunningSimulator:
    """Start serving; port 0 picks a free port, read back into `base_url`."""
    app = create_app(profiles, seed=seed)
    # Cancel a handler when its client disconnects, so a stall does not outlive its probe.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    url_host = f"[{host}]" if ":" in host else host
    return RunningSimulator(base_url=f"http://{url_host}:{bound_port}/v1", app=app, runner=runner)


async def _serve_forever(host: str, port: int, profiles: Iterable[ModelProfile], seed: int | None) -> None:
    async with await start_simulator(profiles, host, port, seed) as sim:
        print(f"routewatch simulator: {sim.base_url} (no API key needed)")
        for p in sim.app[PROFILES].values():
            print(
                f"  {p.model:<36} {p.provider:<18} TTFT p50 {p.ttft_median_ms:.0f} ms, "
                f"{p.tokens_per_s:.0f} tok/s, errors {p.error_rate:.0%}, {p.dialect} dialect"
                + (
                    f", upstream fails {p.upstream_failure_rate:.0%} (retried {p.router_retries}x)"
                    if p.upstream_failure_rate
                    else ""
                )
            )
        print("Ctrl-C stops it.", flush=True)
        await asyncio.Event().wait()


def run_simulator_forever(
    host: str = "127.0.0.1",
    port: int = 8400,
    profiles: Iterable[ModelProfile] = DEFAULT_PROFILES,
    *,
    seed: int | None = None,
) -> None:
    """Run the simulator in the foreground until Ctrl-C."""
    try:
        asyncio.run(_serve_forever(host, port, profiles, seed))
    except KeyboardInterrupt:
        print("simulator stopped")
