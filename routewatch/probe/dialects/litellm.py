"""The LiteLLM proxy: the deployment that served and what the call took, in response headers.

The documented headers read here (names are case-insensitive):

* ``x-litellm-model-api-base``: the deployment's API base URL; its host names
  the upstream (``api.openai.com``), which is what routewatch publishes as the
  provider, since LiteLLM sends no provider name;
* ``x-litellm-model-id``: the deployment's id, the provider when no API base is sent;
* ``x-litellm-attempted-retries`` and ``x-litellm-attempted-fallbacks``: calls
  made after the first one, to the same model group and to fallbacks;
* ``x-litellm-call-id``: LiteLLM's id of the call;
* ``x-litellm-response-cost``: the cost LiteLLM computed, in USD.

``llm_provider-*`` headers are the upstream's own, passed through: an
``llm_provider-x-request-id`` is no LiteLLM value and is not read. The served
model is the chunks' ``model``, which LiteLLM takes from the upstream's answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar
from urllib.parse import urlsplit

from routewatch.probe.dialects.base import HeaderDialect, header


def api_base_host(api_base: str | None) -> str | None:
    """The host of an API base URL (``https://api.openai.com/v1`` -> ``api.openai.com``); else the value itself."""
    if api_base is None:
        return None
    try:
        host = urlsplit(api_base).hostname
    except ValueError:  # e.g. a bracketed host that is no IPv6 address
        host = None
    return host or api_base


class LiteLLMDialect(HeaderDialect):
    """Provider, attempts, fallbacks, call id and cost from LiteLLM's response headers."""

    name = "litellm"
    MARK_PREFIX = "x-litellm-"
    HEADERS: ClassVar[Mapping[str, str]] = {
        "retries": "x-litellm-attempted-retries",
        "fallbacks": "x-litellm-attempted-fallbacks",
        "request_id": "x-litellm-call-id",
        "cost": "x-litellm-response-cost",
    }

    def headers(self, headers: Mapping[str, str]) -> None:
        """Take LiteLLM's headers; the provider is the API base's host, else the deployment id."""
        super().headers(headers)
        self.read["provider"] = api_base_host(header(headers, "x-litellm-model-api-base")) or header(
            headers, "x-litellm-model-id"
        )
