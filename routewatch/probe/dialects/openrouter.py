"""OpenRouter: every stream chunk names the provider; the usage chunk carries the cost.

OpenRouter's chunk ``id`` ("gen-...") is its own request id. It says nothing
about retries in a stream, so attempts stay unknown (None), never 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from routewatch.probe.dialects.base import ChunkLabels, RouterFacts, header

# Headers some routers use to name the upstream; read by the plain dialect.
PROVIDER_HEADERS = ("X-Provider", "X-Model-Provider")


class OpenRouterDialect:
    """Provider, served model and id from the chunks; ``usage.cost`` from the usage chunk."""

    name = "openrouter"

    def __init__(self) -> None:
        self._labels = ChunkLabels()
        self._cost: object = None
        self.saw_marks = False  # a chunk carried `provider` or `usage.cost`: the mark of this dialect

    def headers(self, headers: Mapping[str, str]) -> None:
        """OpenRouter says nothing in headers that the chunks do not say better."""

    def chunk(self, chunk: Mapping[str, Any]) -> None:
        """Take the labels, and the cost when the chunk carries usage."""
        self._labels.take(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict) and "cost" in usage:
            self._cost = usage["cost"]
            self.saw_marks = True
        if self._labels.provider is not None:
            self.saw_marks = True

    def facts(self) -> RouterFacts:
        """The provider, served model, router id and cost seen."""
        return RouterFacts(
            dialect=self.name,
            provider=self._labels.provider,
            served_model=self._labels.model,
            router_request_id=self._labels.id,
            cost_usd=self._cost,
        )


class PlainDialect:
    """A router that adds nothing to OpenAI's shape but perhaps an ``X-Provider`` header or a ``provider`` field."""

    name = "plain"

    def __init__(self) -> None:
        self._labels = ChunkLabels()
        self._provider_header: str | None = None

    def headers(self, headers: Mapping[str, str]) -> None:
        """Take the first provider header present."""
        self._provider_header = next(filter(None, (header(headers, h) for h in PROVIDER_HEADERS)), None)

    def chunk(self, chunk: Mapping[str, Any]) -> None:
        """Take the chunk's labels."""
        self._labels.take(chunk)

    def facts(self) -> RouterFacts:
        """The provider (a header's first, then the chunks') and the served model."""
        provider = self._provider_header if self._provider_header is not None else self._labels.provider
        return RouterFacts(dialect=self.name, provider=provider, served_model=self._labels.model)
