"""Per-model behaviour of the router simulator, and loading it from YAML."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from routewatch.config.dialects import DIALECTS

# Faults answered before any byte of a stream, with the HTTP status they send.
HTTP_FAULTS: Mapping[str, int] = MappingProxyType({"http_429": 429, "http_500": 500, "http_400": 400})
# Faults that happen inside a 200 streaming response (or, for slow_headers, before it).
STREAM_FAULTS: tuple[str, ...] = (
    "drop",  # the connection is cut mid-stream
    "malformed",  # an event whose JSON is cut off
    "stream_error",  # an error event, then the stream ends without [DONE]
    "stall",  # nothing for stall_s mid-stream, then the rest
    "empty",  # a proper stream without a single token
    "slow_headers",  # nothing at all, not even headers, for stall_s
    "trickle",  # the whole stream one byte every trickle_s
    "keepalive_forever",  # keep-alive comments for ever, never a token
    "endless",  # tokens at the profile's rate for ever, never a finish
    "huge",  # huge_bytes of answer as fast as the socket takes it
    "invalid_utf8",  # one token's JSON string holds bytes that are not UTF-8
    "long_line",  # one token's data line is long_line_bytes long and takes stall_s to arrive
    "not_sse",  # a whole JSON completion where a stream was asked for
)
FAULT_KINDS: tuple[str, ...] = (*HTTP_FAULTS, *STREAM_FAULTS)


def _default_faults() -> Mapping[str, float]:
    return MappingProxyType({"http_500": 1.0})


@dataclass(frozen=True)
class ModelProfile:
    """How the simulator serves one model: latency, speed, answer shape and faults."""

    model: str
    """Model id clients ask for, e.g. "openai/gpt-4.1-nano"."""
    provider: str
    """Upstream name reported in every chunk, e.g. "OpenAI"."""
    ttft_median_ms: float
    """Median of the lognormal time to first token, in ms."""
    ttft_sigma: float = 0.3
    """Shape of the lognormal TTFT (standard deviation of its log)."""
    ttft_ms_per_1k_input: float = 0.0
    """Prefill time: added to the TTFT median per 1,000 prompt tokens, so a longer prompt answers later."""
    tokens_per_s: float = 50.0
    """Token rate after the first token; the gap between tokens is constant."""
    output_tokens: int = 64
    """Answer length in content tokens, capped by the request's max_tokens."""
    reasoning_tokens: int = 0
    """Tokens streamed as `reasoning` deltas before the content (all within the request's output cap)."""
    reasoning_hidden: bool = False
    """The reasoning is not streamed (as OpenAI's models do): the stream is silent while the model reasons,
    one token gap per reasoning token, and only usage counts those tokens."""
    error_rate: float = 0.0
    """Probability that a request gets a fault."""
    faults: Mapping[str, float] = field(default_factory=_default_faults, hash=False)
    """Relative weights among fault kinds; normalised to sum to 1."""
    include_usage: bool = True
    """Send usage in the final chunk when the request asks for it."""
    prompt_overhead_tokens: int = 0
    """Tokens the router adds to every prompt and bills (a system prompt of its own): usage reports them."""
    cached_prompt_tokens: int = 0
    """Of the reported prompt tokens, those usage says came from the prompt cache (capped to the prompt)."""
    keepalive_ms: float | None = None
    """Interval of `: OPENROUTER PROCESSING` comments before the first token."""
    served_model: str | None = None
    """Model name reported in chunks; defaults to `model`."""
    stall_s: float = 3600.0
    """How long the "stall", "slow_headers" and "long_line" faults hold the stream back, in seconds."""
    trickle_s: float = 60.0
    """Gap between the single bytes of a "trickle" fault, in seconds (default: one byte a minute)."""
    huge_bytes: int = 50_000_000
    """Answer text sent by a "huge" fault, in bytes."""
    long_line_bytes: int = 4 * 1024 * 1024
    """Length of the `data:` line a "long_line" fault sends, in bytes."""
    dialect: str = "openrouter"
    """How the simulated router announces provider, attempts, request id and cost (see simulator/dialects.py)."""
    upstream_failure_rate: float = 0.0
    """Probability that one upstream call fails; the simulated router retries it, unseen by the client."""
    router_retries: int = 1
    """How many times the router retries a failed upstream call before falling back or giving up."""
    upstream_failure_ms: float | None = None
    """How long a failed upstream call takes; None: a TTFT drawn from the profile (it failed instead of answering)."""
    fallback_provider: str | None = None
    """Upstream the router falls back to once its retries are spent; None: it gives up with a 502."""
    input_usd_per_1m: float = 0.1
    """Price of input tokens, for the cost the router reports."""
    output_usd_per_1m: float = 0.4
    """Price of output tokens, for the cost the router reports."""

    def __post_init__(self) -> None:
        def require(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"model {self.model!r}: {message}")

        require(isinstance(self.model, str) and bool(self.model), "model must be a non-empty string")
        require(isinstance(self.provider, str) and bool(self.provider), "provider must be a non-empty string")
        require(self.ttft_median_ms > 0, "ttft_median_ms must be > 0")
        require(self.ttft_sigma >= 0, "ttft_sigma must be >= 0")
        require(self.ttft_ms_per_1k_input >= 0, "ttft_ms_per_1k_input must be >= 0")
        require(self.tokens_per_s > 0, "tokens_per_s must be > 0")
        require(self.output_tokens >= 0, "output_tokens must be >= 0")
        require(self.reasoning_tokens >= 0, "reasoning_tokens must be >= 0")
        require(self.prompt_overhead_tokens >= 0, "prompt_overhead_tokens must be >= 0")
        require(self.cached_prompt_tokens >= 0, "cached_prompt_tokens must be >= 0")
        require(0.0 <= self.error_rate <= 1.0, "error_rate must be in [0, 1]")
        require(self.keepalive_ms is None or self.keepalive_ms > 0, "keepalive_ms must be > 0")
        require(self.stall_s >= 0, "stall_s must be >= 0")
        require(self.trickle_s >= 0, "trickle_s must be >= 0")
        require(self.dialect in DIALECTS and self.dialect != "auto", f"dialect must be one of {DIALECTS[1:]}")
        require(0.0 <= self.upstream_failure_rate <= 1.0, "upstream_failure_rate must be in [0, 1]")
        retries_ok = type(self.router_retries) is int and self.router_retries >= 0
        require(retries_ok, "router_retries must be an integer >= 0")
        require(self.upstream_failure_ms is None or self.upstream_failure_ms >= 0, "upstream_failure_ms must be >= 0")
        require(
            self.fallback_provider is None
            or (isinstance(self.fallback_provider, str) and bool(self.fallback_provider)),
            "fallback_provider must be a non-empty string",
        )
        require(self.input_usd_per_1m >= 0 and self.output_usd_per_1m >= 0, "prices must be >= 0")
        for name in ("huge_bytes", "long_line_bytes"):
            value = getattr(self, name)
            require(type(value) is int and value > 0, f"{name} must be an integer > 0")
        require(isinstance(self.faults, Mapping), "faults must be a mapping of kind to weight")
        for kind, weight in self.faults.items():
            require(kind in FAULT_KINDS, f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
            require(weight >= 0, f"fault weight of {kind!r} must be >= 0")
        total = sum(self.faults.values())
        require(total > 0 or self.error_rate == 0, "fault weights must not all be 0")
        if total > 0:
            normalised = {kind: w / total for kind, w in self.faults.items() if w > 0}
            object.__setattr__(self, "faults", MappingProxyType(normalised))

    @property
    def reported_model(self) -> str:
        """Model name the chunks carry."""
        return self.served_model or self.model

    def ttft_median_for(self, prompt_tokens: int) -> float:
        """The TTFT median of a request of ``prompt_tokens``: `ttft_median_ms` plus the prefill time."""
        return self.ttft_median_ms + self.ttft_ms_per_1k_input * max(prompt_tokens, 0) / 1000

    def draw_ttft_ms(self, rng: random.Random, prompt_tokens: int = 0) -> float:
        """One TTFT sample in ms; its median is ``ttft_median_for(prompt_tokens)``."""
        return rng.lognormvariate(math.log(self.ttft_median_for(prompt_tokens)), self.ttft_sigma)

    def draw_fault(self, rng: random.Random) -> str | None:
        """The fault kind for one request, or None."""
        # Always two draws, so that a seeded TTFT sequence does not depend on the error mix.
        roll, pick = rng.random(), rng.random()
        if roll >= self.error_rate:
            return None
        cumulative = 0.0
        for kind, weight in self.faults.items():
            cumulative += weight
            if pick < cumulative:
                return kind
        return list(self.faults)[-1]  # float rounding left pick just above the sum


DEFAULT_PROFILES: tuple[ModelProfile, ...] = (
    ModelProfile(
        model="openai/gpt-4.1-nano",
        provider="OpenAI",
        ttft_median_ms=350,
        ttft_ms_per_1k_input=20,
        ttft_sigma=0.35,
        tokens_per_s=90,
        output_tokens=56,
        error_rate=0.08,
        faults={"http_429": 0.6, "http_500": 0.4},
        served_model="openai/gpt-4.1-nano-2025-04-14",
    ),
    ModelProfile(
        model="anthropic/claude-haiku-4.5",
        provider="Anthropic",
        ttft_median_ms=600,
        ttft_ms_per_1k_input=30,
        tokens_per_s=70,
        output_tokens=56,
        error_rate=0.01,
        faults={"http_500": 0.6, "stream_error": 0.4},
        # The example probes.yaml's prices: the cost this router reports agrees with the computed one.
        input_usd_per_1m=1.0,
        output_usd_per_1m=5.0,
    ),
    ModelProfile(
        model="google/gemini-2.5-flash",
        provider="Google AI Studio",
        ttft_median_ms=450,
        ttft_ms_per_1k_input=25,
        tokens_per_s=120,
        output_tokens=64,
        error_rate=0.02,
        faults={"http_500": 0.5, "empty": 0.5},
        include_usage=False,  # probes must count tokens themselves
        input_usd_per_1m=0.3,
        output_usd_per_1m=2.5,
    ),
    ModelProfile(
        model="meta-llama/llama-3.3-70b-instruct",
        provider="DeepInfra",
        ttft_median_ms=900,
        ttft_ms_per_1k_input=60,
        ttft_sigma=0.45,
        tokens_per_s=35,
        output_tokens=48,
        error_rate=0.05,
        faults={"drop": 0.4, "stall": 0.3, "malformed": 0.3},
        keepalive_ms=300,
        stall_s=45,  # longer than the default 30 s idle timeout, shorter than a demo's patience
    ),
    ModelProfile(
        model="deepseek/deepseek-r1",
        provider="DeepSeek",
        ttft_median_ms=1500,
        ttft_ms_per_1k_input=40,
        ttft_sigma=0.4,
        tokens_per_s=30,
        output_tokens=48,
        reasoning_tokens=24,
        error_rate=0.03,
        faults={"http_500": 0.5, "stream_error": 0.3, "drop": 0.2},
        keepalive_ms=500,
    ),
)

_FIELD_NAMES = tuple(f.name for f in fields(ModelProfile))
_REQUIRED = ("model", "provider", "ttft_median_ms")


def load_profiles(path: str | Path) -> tuple[ModelProfile, ...]:
    """Read profiles from a YAML list of mappings whose keys are ModelProfile fields."""
    data: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of model profiles")
    profiles: list[ModelProfile] = []
    seen: set[str] = set()
    for index, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise ValueError(f"{path}: entry {index}: expected a mapping, got {type(item).__name__}")
        name = str(item.get("model", f"entry {index}"))
        unknown = [key for key in item if key not in _FIELD_NAMES]
        if unknown:
            raise ValueError(f"{path}: model {name!r}: unknown key {unknown[0]!r}")
        missing = [key for key in _REQUIRED if key not in item]
        if missing:
            raise ValueError(f"{path}: model {name!r}: missing key {missing[0]!r}")
        if name in seen:
            raise ValueError(f"{path}: model {name!r}: listed twice")
        seen.add(name)
        try:
            profiles.append(ModelProfile(**item))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        except TypeError as exc:  # e.g. a string where a number belongs
            raise ValueError(f"{path}: model {name!r}: {exc}") from None
    return tuple(profiles)
