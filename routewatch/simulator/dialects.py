"""How the simulated router announces who served a request, in each router dialect.

What each dialect sends, beside the ``X-Request-Id`` header and chunk ``id``
every answer carries:

* ``openrouter``: ``provider`` in every chunk, ``cost`` in the usage object;
  nothing about attempts (OpenRouter's stream says nothing of them);
* ``litellm``: the headers the LiteLLM proxy documents: ``x-litellm-model-api-base``
  (the upstream's API base, whose host is the provider a reader should
  publish), ``x-litellm-model-id``, ``x-litellm-attempted-retries``,
  ``x-litellm-attempted-fallbacks``, ``x-litellm-call-id``,
  ``x-litellm-response-cost``, and a passed-through ``llm_provider-x-request-id``
  that is the upstream's, not the router's;
* ``headers``: ``Ngrok-AIG-Model``, ``Ngrok-AIG-Attempts``, ``Ngrok-AIG-Request-Id``
  and ``X-Provider``;
* ``generic``: names of its own that a user has to configure: the headers
  ``X-Sim-Upstream``, ``X-Sim-Attempts``, ``X-Sim-Fallbacks``, ``X-Sim-Trace-Id``
  and ``x_sim.cost`` in the usage chunk (see ``GENERIC_FIELDS``);
* ``plain``: ``X-Provider`` only.

Every value a reader should end up with is recorded in the ground truth.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from routewatch.simulator.upstream import Routing

GENERIC_FIELDS = {
    "provider": "header:X-Sim-Upstream",
    "attempts": "header:X-Sim-Attempts",
    "fallbacks": "header:X-Sim-Fallbacks",
    "request_id": "header:X-Sim-Trace-Id",
    "cost": "field:x_sim.cost",
}
"""The ``dialect_fields`` that read the simulator's generic dialect."""


@dataclass(frozen=True)
class Announcement:
    """What one answer says about how it was served, and what a reader should make of it."""

    headers: dict[str, str] = field(default_factory=dict)
    chunk_provider: str | None = None  # the `provider` field of every chunk, if sent
    usage_fields: dict[str, Any] = field(default_factory=dict)  # merged into the usage object
    usage_chunk_fields: dict[str, Any] = field(default_factory=dict)  # merged into the usage chunk
    provider_label: str | None = None  # the provider a reader should publish
    router_request_id: str | None = None  # the router's own id, when distinct from the request id
    attempts_sent: int | None = None  # the attempts a reader should see (None: not announced)
    fallbacks_sent: int | None = None  # the fallbacks a reader should see (None: not announced)
    cost_sent: float | None = None  # the cost a reader should see (None: not announced)
    provider_in_chunks: bool = False  # the provider is sent only in stream chunks
    cost_in_chunks: bool = False  # the cost is sent only in the usage chunk


def api_base(provider: str) -> str:
    """The API base URL the simulated LiteLLM deployment of ``provider`` calls."""
    slug = re.sub(r"[^a-z0-9]+", "-", provider.lower()).strip("-") or "upstream"
    return f"https://api.{slug}.example/v1"


def announce(dialect: str, routing: Routing, served_model: str, cost_usd: float) -> Announcement:
    """The announcement of an answer served as ``routing`` says, in ``dialect``."""
    if dialect == "openrouter":
        return Announcement(
            chunk_provider=routing.provider,
            usage_fields={"cost": cost_usd},
            provider_label=routing.provider,
            cost_sent=cost_usd,
            provider_in_chunks=True,
            cost_in_chunks=True,
        )
    if dialect == "litellm":
        base = api_base(routing.provider)
        call_id = str(uuid.uuid4())
        headers = {
            "x-litellm-model-api-base": base,
            "x-litellm-model-id": secrets.token_hex(16),
            "x-litellm-attempted-retries": str(routing.attempts - 1 - routing.fallbacks),
            "x-litellm-attempted-fallbacks": str(routing.fallbacks),
            "x-litellm-call-id": call_id,
            "x-litellm-response-cost": repr(cost_usd),
            "x-litellm-version": "1.0.0-simulated",
            "llm_provider-x-request-id": f"req_{secrets.token_hex(8)}",
        }
        return Announcement(
            headers=headers,
            provider_label=base.split("/")[2],
            router_request_id=call_id,
            attempts_sent=routing.attempts,
            fallbacks_sent=routing.fallbacks,
            cost_sent=cost_usd,
        )
    if dialect == "headers":
        request_id = f"aig_{secrets.token_hex(10)}"
        headers = {
            "Ngrok-AIG-Model": served_model,
            "Ngrok-AIG-Attempts": str(routing.attempts),
            "Ngrok-AIG-Request-Id": request_id,
            "X-Provider": routing.provider,
        }
        return Announcement(
            headers=headers,
            provider_label=routing.provider,
            router_request_id=request_id,
            attempts_sent=routing.attempts,
        )
    if dialect == "generic":
        trace_id = f"trace-{secrets.token_hex(8)}"
        headers = {
            "X-Sim-Upstream": routing.provider,
            "X-Sim-Attempts": str(routing.attempts),
            "X-Sim-Fallbacks": str(routing.fallbacks),
            "X-Sim-Trace-Id": trace_id,
        }
        return Announcement(
            headers=headers,
            usage_chunk_fields={"x_sim": {"cost": cost_usd}},
            provider_label=routing.provider,
            router_request_id=trace_id,
            attempts_sent=routing.attempts,
            fallbacks_sent=routing.fallbacks,
            cost_sent=cost_usd,
            cost_in_chunks=True,
        )
    if dialect == "plain":
        return Announcement(headers={"X-Provider": routing.provider}, provider_label=routing.provider)
    raise ValueError(f"the simulator speaks no dialect {dialect!r}")
