"""What one probe is aimed at, and the canary request it sends."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from routewatch.config.model import Price, ReasoningConfig
from routewatch.config.tiers import DEFAULT_TIER, estimate_chat_tokens
from routewatch.probe.tier_prompt import tier_messages


@dataclass(frozen=True, slots=True)
class Target:
    """One model behind one router. The key is never in ``repr``."""

    router: str
    base_url: str  # ends before /chat/completions, e.g. "https://orcarouter.ai/v1"
    model: str
    api_key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)
    dialect: str = "auto"  # how the router reports provider, attempts, cost (routewatch/probe/dialects/)
    dialect_fields: Mapping[str, str] = field(default_factory=dict)  # the generic dialect's sources
    price: Price | None = None  # probes.yaml's, else the router's list's; None: its probes have no cost
    reasoning: ReasoningConfig | None = None  # the router's reasoning budget; None: never sent one

    @property
    def url(self) -> str:
        """The chat-completions endpoint."""
        return self.base_url.rstrip("/") + "/chat/completions"


@dataclass(frozen=True, slots=True)
class Canary:
    """A prompt as configured: messages, token limits, its name and its input-length tier."""

    name: str
    messages: Sequence[Mapping[str, str]]
    max_tokens: int
    min_output_tokens: int
    tier: str = DEFAULT_TIER  # the label its probes are stored under
    tier_tokens: int | None = None  # generate the prompt at this many input tokens; None: as written

    def input_tokens(self) -> int:
        """Estimated input tokens of one probe (its cost when the router reports no usage)."""
        if self.tier_tokens is not None:
            return self.tier_tokens
        return estimate_chat_tokens([m["content"] for m in self.messages])


def new_nonce() -> str:
    """A fresh random tag: no prompt cache has seen it before."""
    return secrets.token_hex(8)


def request_body(
    model: str, canary: Canary, nonce: str, budget_fields: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The streaming chat-completions body for one probe.

    The nonce goes at the start of the last user message, where prefix
    caches cannot reuse anything after it; a tier prompt's generated words
    follow it (``tier_prompt``). ``budget_fields`` (a reasoning model's
    output budget, ``reasoning.OutputBudget.fields``) replace ``max_tokens``
    and ``temperature``: reasoning models sample as they must, and OpenAI's
    refuse a temperature.
    """
    if canary.tier_tokens is not None:
        messages = tier_messages(canary.messages, canary.tier_tokens, nonce)
    else:
        messages = [dict(m) for m in canary.messages]
        last = messages[-1]
        last["content"] = f"[probe {nonce}] {last['content']}"
    body: dict[str, Any] = {"model": model, "messages": messages}
    if budget_fields is None:
        body.update({"max_tokens": canary.max_tokens, "temperature": 0})
    else:
        body.update(budget_fields)
    body.update({"stream": True, "stream_options": {"include_usage": True}})
    return body
