"""Gateways that announce everything in response headers and pass the upstream's body through unchanged.

ngrok's AI gateway is the model: ``Ngrok-AIG-Model`` names the model that
answered (its documentation calls the header the source of truth, because
the body is the upstream's and may name another model after a failover),
``Ngrok-AIG-Attempts`` counts the upstream attempts and ``Ngrok-AIG-Request-Id``
is the gateway's id. The provider comes from ``X-Provider`` or
``X-Model-Provider`` when the gateway sends one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from routewatch.probe.dialects.base import HeaderDialect, header
from routewatch.probe.dialects.openrouter import PROVIDER_HEADERS


class GatewayHeadersDialect(HeaderDialect):
    """Served model, attempts and request id from ``Ngrok-AIG-*`` headers; provider from ``X-Provider``."""

    name = "headers"
    MARK_PREFIX = "ngrok-aig-"
    HEADERS: ClassVar[Mapping[str, str]] = {
        "served_model": "Ngrok-AIG-Model",
        "attempts": "Ngrok-AIG-Attempts",
        "request_id": "Ngrok-AIG-Request-Id",
    }

    def headers(self, headers: Mapping[str, str]) -> None:
        """Take the gateway's headers and the first provider header present."""
        super().headers(headers)
        self.read["provider"] = next(filter(None, (header(headers, h) for h in PROVIDER_HEADERS)), None)
