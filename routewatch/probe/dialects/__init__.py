"""Router dialects: what a router says about how it served a request, read per router kind.

A router answers in OpenAI's shape, but announces the rest (which upstream
served, how often it retried or fell back, its own request id, the cost it
charged) in its own way: OpenRouter in every stream chunk, the LiteLLM proxy
in response headers, other gateways in headers of their own. A dialect is a
small reader for one such way (see ``base.Dialect``): it is shown the response
headers once and every parsed stream chunk, and gives back ``RouterFacts``,
raw values that ``router_values.reported_facts`` then normalises.

``reader(kind, fields)`` makes a fresh reader for one response; ``auto``
reads with every built-in dialect at once and keeps the one whose marks the
response carries (see ``auto``).
"""

from __future__ import annotations

from collections.abc import Mapping

from routewatch.config.dialects import DIALECTS as KINDS
from routewatch.probe.dialects.auto import AutoDialect
from routewatch.probe.dialects.base import Dialect, RouterFacts
from routewatch.probe.dialects.gateway_headers import GatewayHeadersDialect
from routewatch.probe.dialects.generic import GenericDialect
from routewatch.probe.dialects.litellm import LiteLLMDialect
from routewatch.probe.dialects.openrouter import OpenRouterDialect, PlainDialect

__all__ = ["KINDS", "Dialect", "RouterFacts", "reader"]


def reader(kind: str, fields: Mapping[str, str] | None = None) -> Dialect:
    """A fresh reader of one response in dialect ``kind``; ``fields`` are the generic dialect's sources."""
    if kind == "auto":
        return AutoDialect()
    if kind == "openrouter":
        return OpenRouterDialect()
    if kind == "litellm":
        return LiteLLMDialect()
    if kind == "headers":
        return GatewayHeadersDialect()
    if kind == "generic":
        return GenericDialect(fields or {})
    if kind == "plain":
        return PlainDialect()
    raise ValueError(f"unknown router dialect {kind!r} (known: {', '.join(KINDS)})")
