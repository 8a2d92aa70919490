"""URLs of a model's page and badge: model ids contain ``/`` and come from routers, so they are quoted.

An id's ``/`` stays a ``/`` (``/status/models/openai/gpt-4o``) unless a
segment is empty, ``.`` or ``..``, which a browser would collapse or
resolve (``a/../b`` would lead to another page): then every ``/`` and dot
segment is percent-encoded, and the routes, which match the encoded path,
still find the id. Everything else outside the unreserved characters is
percent-encoded (``?``, ``#``, spaces, ``<``, non-ASCII).
"""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["badge_path", "model_json_path", "model_page_path", "quote_model_id"]

MODEL_PAGE_PREFIX = "/status/models/"
# GET /v1/models/<id> reads a path ending in one of these as that sub-resource of a shorter id.
SUB_RESOURCES = ("stats", "series", "probe")


def quote_model_id(model: str) -> str:
    """``model`` as a path: ``/`` kept where that is safe, everything else quoted."""
    segments = model.split("/")
    if any(s in ("", ".", "..") for s in segments):
        return "%2F".join(_dots(quote(s, safe="")) for s in segments)
    return quote(model, safe="/")


def _dots(segment: str) -> str:
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


def model_page_path(model: str) -> str:
    """The path of ``model``'s page."""
    return MODEL_PAGE_PREFIX + quote_model_id(model)


def badge_path(model: str) -> str:
    """The path of ``model``'s embed badge."""
    return "/badge/" + quote_model_id(model) + ".svg"


def model_json_path(model: str, router: str | None = None) -> str:
    """The path of ``GET /v1/models/<id>`` (``?router=`` when given); an id ending in a
    sub-resource's name has its slashes encoded, which the route matches as part of the id."""
    quoted = quote_model_id(model)
    if model.rsplit("/", 1)[-1] in SUB_RESOURCES:
        quoted = quoted.replace("/", "%2F")
    return "/v1/models/" + quoted + (f"?router={quote(router, safe='')}" if router is not None else "")
