"""What one probe is aimed at, and the canary request it sends."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from routewatch.config.model import Price, ReasoningConfig


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
    """A prompt as configured: messages, token limits and its name."""

    name: str
    messages: Sequence[Mapping[str, str]]
    max_tokens: int
    min_output_tokens: int


def new_nonce() -> str:
    """A fresh random tag: no prompt cache has seen it before."""
    return secrets.token_hex(8)


def request_body(
    model: str, canary: Canary, nonce: str, budget_fields: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The streaming chat-completions body for one probe.

    The nonce goes at the start of the last user message, where prefix
    caches cannot reuse anything after it. ``budget_fields`` (a reasoning
    model's output budget, ``reasoning.OutputBudget.fields``) replace
    ``max_tokens`` and ``temperature``: reasoning models sample as they must,
    and OpenAI's refuse a temperature.
    """
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
