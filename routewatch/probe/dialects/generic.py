"""A router whose header and field names the user sets in probes.yaml (``dialect: generic``).

Each fact has one source: ``header:<Name>`` (a response header) or
``field:<path>`` (a dotted path into each stream chunk's JSON, e.g.
``field:usage.cost``; the last chunk that has the field wins, so a value
sent once at the end is read as well as one sent in every chunk). A fact with
no source is not read, except the served model, which falls back to the
chunks' ``model``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from routewatch.config.dialects import parse_source
from routewatch.probe.dialects.base import ChunkLabels, RouterFacts, facts_from, header, raw


class GenericDialect:
    """Reads each configured fact from its header or chunk field."""

    name = "generic"

    def __init__(self, sources: Mapping[str, str]) -> None:
        self._labels = ChunkLabels()
        self._headers: dict[str, str] = {}
        self._fields: dict[str, tuple[str, ...]] = {}
        for fact, source in sources.items():
            kind, name = parse_source(source)
            if kind == "header":
                self._headers[fact] = name
            else:
                self._fields[fact] = tuple(name.split("."))
        self._values: dict[str, object] = {}

    def headers(self, headers: Mapping[str, str]) -> None:
        """Take the facts sourced from headers."""
        for fact, name in self._headers.items():
            self._values[fact] = header(headers, name)

    def chunk(self, chunk: Mapping[str, Any]) -> None:
        """Take the facts sourced from chunk fields."""
        self._labels.take(chunk)
        for fact, path in self._fields.items():
            value = _at(chunk, path)
            if value is not None:
                self._values[fact] = raw(value)

    def facts(self) -> RouterFacts:
        """Every configured fact read."""
        return facts_from(self.name, self._values, self._labels)


def _at(chunk: Mapping[str, Any], path: tuple[str, ...]) -> object:
    value: object = chunk
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
