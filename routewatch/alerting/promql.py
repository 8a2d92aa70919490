"""PromQL durations and label matchers, and annotation templates that can also be expanded here.

Annotations are Go templates that Prometheus (and Grafana) expand per
alert. A promtool unit test must state every annotation exactly as expanded,
so each annotation is built from :class:`Template` pieces that render both as
the Go template and as the text it expands to for given labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote_plus

__all__ = ["Label", "Template", "duration", "label_value"]

_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))


def duration(seconds: float) -> str:
    """``seconds`` as a PromQL duration, in whole milliseconds: ``1h``, ``5m``, ``1m30s``, ``2500ms``."""
    ms = round(seconds * 1000)
    if ms <= 0:
        raise ValueError(f"a PromQL duration must be at least 1ms, not {seconds} s")
    parts: list[str] = []
    for unit, size in _UNITS:
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def label_value(value: str) -> str:
    """``value`` quoted as a PromQL string (a JSON string is a valid one)."""
    return json.dumps(value)


def number(value: float) -> str:
    """A threshold as PromQL reads it, without float noise (``0.72``, not ``0.7200000000000001``)."""
    if math.isclose(value, round(value)):
        return str(round(value))
    return f"{value:.12g}"


@dataclass(frozen=True, slots=True)
class Label:
    """A piece of a template: the alert's label ``name``, URL-query-escaped when ``query``."""

    name: str
    query: bool = False


@dataclass(frozen=True, slots=True)
class Template:
    """An annotation made of literal text and label references."""

    parts: tuple[str | Label, ...]

    def go(self, labels: str = "$labels") -> str:
        """The Go template that expands to :meth:`expand`.

        ``labels`` is how the template reaches the alert's labels: ``$labels``
        in Prometheus; Grafana has ``.Labels`` too, which a provisioning file
        must use because Grafana reads ``$name`` there as an environment variable.
        """
        out = []
        for part in self.parts:
            if isinstance(part, Label):
                out.append(f"{{{{ {labels}.{part.name}{' | urlquery' if part.query else ''} }}}}")
            else:
                out.append(part.replace("{{", '{{ "{{" }}'))
        return "".join(out)

    def expand(self, labels: Mapping[str, str]) -> str:
        """What :meth:`go` expands to for an alert with ``labels`` (a missing label is empty, as in Go)."""
        out = []
        for part in self.parts:
            if isinstance(part, Label):
                value = labels.get(part.name, "")
                # Go's urlquery is url.QueryEscape: spaces as "+", everything else outside [A-Za-z0-9-_.~] escaped.
                out.append(quote_plus(value, safe="") if part.query else value)
            else:
                out.append(part)
        return "".join(out)
