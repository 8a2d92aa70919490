"""``dialect: auto``: each response is read in the dialect whose marks it carries.

Every built-in reader sees the response at once (they keep single values, so
that costs a few dictionary look-ups per chunk), and the first of these that
recognised its own marks gives the facts:

1. LiteLLM: an ``x-litellm-*`` header;
2. a headers-only gateway: an ``Ngrok-AIG-*`` header;
3. OpenRouter: a chunk with a ``provider`` field or ``usage.cost``;
4. otherwise plain (an ``X-Provider`` header at most).

The choice is made per response rather than once per router: it costs
nothing, and a router that answers an error without its usual headers, or
that changes behind the same URL, is still read for what each answer says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from routewatch.probe.dialects.base import RouterFacts
from routewatch.probe.dialects.gateway_headers import GatewayHeadersDialect
from routewatch.probe.dialects.litellm import LiteLLMDialect
from routewatch.probe.dialects.openrouter import OpenRouterDialect, PlainDialect


class AutoDialect:
    """Reads with every built-in dialect and keeps the one the response's marks point to."""

    name = "auto"

    def __init__(self) -> None:
        self._litellm = LiteLLMDialect()
        self._gateway = GatewayHeadersDialect()
        self._openrouter = OpenRouterDialect()
        self._plain = PlainDialect()

    def headers(self, headers: Mapping[str, str]) -> None:
        """Show the headers to every reader."""
        for dialect in (self._litellm, self._gateway, self._plain):
            dialect.headers(headers)

    def chunk(self, chunk: Mapping[str, Any]) -> None:
        """Show the chunk to the readers that could still be chosen."""
        if self._litellm.saw_marks or self._gateway.saw_marks:
            # Chosen by the headers already: only the chosen one reads on.
            (self._litellm if self._litellm.saw_marks else self._gateway).chunk(chunk)
            return
        self._openrouter.chunk(chunk)
        self._plain.chunk(chunk)

    def facts(self) -> RouterFacts:
        """The facts of the dialect detected."""
        if self._litellm.saw_marks:
            return self._litellm.facts()
        if self._gateway.saw_marks:
            return self._gateway.facts()
        if self._openrouter.saw_marks:
            return self._openrouter.facts()
        return self._plain.facts()
