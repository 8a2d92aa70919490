"""The JSON error every route of the app answers with, and how it is written.

One shape for the catalog API (``api.py``) and the public status routes
(``public_routes.py``)::

    {"error": {"status": 400, "message": "...", "parameter": "limit"}}

``parameter`` is always present: the query, path or header parameter at
fault, or null when none applies. The config reload endpoint adds
``issues``. The OpenAPI document describes it as the ``Error`` schema.

A module of its own so that every route module uses the same code:
``api.py`` imports ``public_routes.py`` and ``ingest.py``, so none of them can
import another.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

__all__ = ["JSON_TYPE", "ApiError", "Handler", "clip", "dumps", "error_payload", "errors_as_json"]

log = logging.getLogger(__name__)

JSON_TYPE = "application/json; charset=utf-8"
CLIP = 80  # longest piece of user input echoed back in an error message

Handler = Callable[[web.Request], Awaitable[web.Response]]


def clip(text: str) -> str:
    """``text`` cut to CLIP characters, for echoing user input in a message."""
    return text if len(text) <= CLIP else text[:CLIP] + "…"


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


def errors_as_json(handler: Handler) -> Handler:
    """``handler`` with ApiError as its JSON response, and anything unexpected a logged JSON 500.

    A decorator rather than a middleware: aiohttp's middleware chain costs
    more per request than the cached hot path itself, and the hot paths
    (``hit`` then ``respond``) raise nothing of their own.
    """

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except Exception:
            # The traceback goes to the log, never to the client.
            log.exception("unhandled error serving %s %s", request.method, clip(request.path))
            return ApiError(500, "internal error").response()

    return guarded
