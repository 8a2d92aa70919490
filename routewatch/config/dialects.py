"""The router dialects probes.yaml can name, and the sources of the generic one.

The readers live in ``routewatch.probe.dialects``; what a configuration may
say about them is here, so the loader can check it without the prober.
"""

from __future__ import annotations

DIALECTS = ("auto", "openrouter", "litellm", "headers", "generic", "plain")
"""Every value ``dialect:`` takes; ``auto`` (the default) detects the dialect from each response."""

GENERIC_FACTS = ("provider", "served_model", "attempts", "retries", "fallbacks", "request_id", "cost")
"""The facts ``dialect_fields:`` can give a source for."""

SOURCE_KINDS = ("header", "field")


def parse_source(source: str) -> tuple[str, str]:
    """``"header:X-Upstream"`` -> ``("header", "X-Upstream")``; ValueError for anything else.

    A ``field:`` source is a dotted path into a stream chunk's JSON (``usage.cost``).
    """
    kind, sep, name = source.partition(":")
    kind, name = kind.strip(), name.strip()
    if not sep or kind not in SOURCE_KINDS or not name:
        raise ValueError(f'{source!r} is not "header:<Name>" or "field:<path>" (e.g. "field:usage.cost")')
    if kind == "field" and not all(name.split(".")):
        raise ValueError(f"{source!r}: a field path is names joined by dots, none of them empty")
    return kind, name
