"""The JSON error every route of the app answers with, and how it is written.

One shape for the catalog API (``api.py``) and the public status routes
(``public_routes.py``)::

    {"error": {"status": 400, "message": "...", "parameter": "limit"}}

``parameter`` is always present: the query, path or header parameter at
fault, or null when none applies. The config reload endpoint adds
``issues``. The OpenAPI document describes it as the ``Error`` schema.

A module of its own so that both route modules use the same code:
``api.py`` imports ``public_routes.py``, so neither can import the other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

__all__ = ["JSON_TYPE", "ApiError", "dumps", "error_payload"]

JSON_TYPE = "application/json; charset=utf-8"


def dumps(payload: Any) -> bytes:
    """``payload`` as compact JSON bytes.

    ``allow_nan=False``: a NaN would be invalid JSON for every client; better a
    logged 500. ASCII escapes: input echoed back (ids, parameter names) may
    hold lone surrogates, which have no UTF-8 encoding.
    """
    return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()


def error_payload(
    status: int, message: str, parameter: str | None = None, *, issues: list[str] | None = None
) -> dict[str, Any]:
    """``{"error": {"status", "message", "parameter"[, "issues"]}}``; ``parameter`` null when none applies."""
    error: dict[str, Any] = {"status": status, "message": message, "parameter": parameter}
    if issues is not None:
        error["issues"] = issues
    return {"error": error}


class ApiError(Exception):
    """A request answered with a JSON error instead of a result."""

    def __init__(
        self,
        status: int,
        message: str,
        parameter: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        issues: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.parameter = parameter
        self.headers = dict(headers or {})
        self.issues = issues

    def response(self) -> web.Response:
        """This error as an uncacheable JSON response with its status and headers."""
        body = dumps(error_payload(self.status, self.message, self.parameter, issues=self.issues))
        headers = {"Content-Type": JSON_TYPE, "Cache-Control": "no-store", **self.headers}
        return web.Response(status=self.status, body=body, headers=headers)
