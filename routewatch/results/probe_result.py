"""The record of one probe: what was asked, what was measured, how it ended.

Every field is persisted as one column of ``probe_results`` (see
``routewatch/storage/migrations/``). Durations are milliseconds from ``t0`` (just before
the request was sent), derived once from raw monotonic marks; a phase that
never happened is ``None`` (stored NULL), never 0.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Bump when the prompt set, nonce scheme or token counting changes, so that
# numbers measured under different methods are never silently pooled.
METHODOLOGY_VERSION = "m1"

# The closed set of failure classes.
ERROR_CLASSES = (
    "timeout_connect",
    "timeout_headers",
    "timeout_ttft",
    "timeout_idle",
    "timeout_total",
    "connect_error",
    "http_429",
    "http_4xx",
    "http_5xx",
    "stream_error",
    "bad_response",
    "empty_response",
    # The output budget ran out while the model was still reasoning (finish_reason
    # "length", no answer token): our budget was too small, not the router's fault.
    # Counted apart and left out of the error rate (docs/reasoning-models.md).
    "budget_exhausted",
)

# Failure classes that say nothing about the router: left out of the error rate and the model's state.
NOT_ROUTER_FAULTS = ("budget_exhausted",)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One streaming probe of one model with one prompt."""

    id: uuid.UUID  # unique per probe; makes writes idempotent
    started_at: datetime  # wall clock (UTC) at t0
    region: str  # label of the prober that measured it
    router: str  # router name from probes.yaml
    model: str  # model id requested
    prompt: str  # prompt name from probes.yaml
    methodology: str  # METHODOLOGY_VERSION at the time of measuring
    ok: bool
    error_class: str | None  # one of ERROR_CLASSES, None when ok
    error_detail: str | None  # short, redacted: never a key or credential
    http_status: int | None = None
    model_served: str | None = None  # the `model` field the router streamed back
    provider: str | None = None  # upstream provider, where the router says
    request_id: str | None = None  # the router's id for the completion
    connect_ms: float | None = None  # new connection set-up; None when reused
    ttfb_ms: float | None = None  # response headers received
    ttft_ms: float | None = None  # first non-empty output delta of any kind
    ttfat_ms: float | None = None  # first non-empty `content` delta
    e2e_ms: float | None = None  # last token-bearing delta
    output_tps: float | None = None  # (tokens - 1) / (t_last - t_first)
    input_tokens: int | None = None
    output_tokens: int | None = None
    tokens_estimated: bool = False  # True when counted here, not by the router
    chunks: int = 0  # token-bearing chunks received
    chunk_gap_max_ms: float | None = None
    chunk_gap_p95_ms: float | None = None
    retry_after_s: float | None = None  # from a 429's Retry-After header
    loop_lag_ms: float | None = None  # worst prober event-loop lag during the probe
    # The loop lag exceeded schedule.max_loop_lag: the timings measured the
    # prober's backlog as much as the model, so stats leave this row out.
    prober_overloaded: bool = False
    # What the router said about serving it, read by its dialect (routewatch/probe/dialects/).
    dialect: str | None = None  # the dialect that read the response: "litellm", "openrouter", ...
    attempts: int | None = None  # upstream calls the router made, the answering one included; None: not said
    fallbacks: int | None = None  # of those, calls to a fallback deployment or model
    router_request_id: str | None = None  # the router's own id, when it differs from request_id
    reported_cost_usd: float | None = None  # the cost the router reported for the request
    # The prompt's input-length tier ("100", "1k", "10k"; config/tiers.py). The default is
    # the tier of rows written before tiers existed: every prompt then was short.
    tier: str = "100"
    # Of input_tokens, those the router says it served from its prompt cache.
    cached_input_tokens: int | None = None
    # USD, from the tokens and the model's price when measured (None: no price); see config/costs.py.
    cost_usd: float | None = None
    # Of output_tokens, those the model spent reasoning: usage's completion_tokens_details.reasoning_tokens,
    # else the streamed reasoning deltas counted here (None: no sign of reasoning).
    reasoning_tokens: int | None = None

    def as_row(self) -> tuple[Any, ...]:
        """The values in column order (``COLUMNS``), for COPY."""
        return tuple(getattr(self, name) for name in COLUMNS)


COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ProbeResult))


def new_probe_id() -> uuid.UUID:
    """A fresh random probe id."""
    return uuid.uuid4()
