"""The PromQL of Grafana dashboards, as Grafana would send it to Prometheus.

:func:`panel_queries` collects the ``expr`` of every Prometheus target of
every panel (rows' nested panels included) in ``dashboards/*.json``;
:func:`substitute` expands the template variables and Grafana's built-in
interval variables the way Grafana does before it queries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# Grafana's built-ins, for a dashboard scraped every second over the last few minutes.
BUILTINS = {
    "__rate_interval": "4s",  # max(4 x scrape interval, $__interval + scrape interval)
    "__interval_ms": "1000",
    "__interval": "1s",
    "__range_s": "300",
    "__range_ms": "300000",
    "__range": "5m",
}
# Grafana's prometheusSpecialRegexEscape: a regex metacharacter gets two backslashes, so that the
# PromQL string literal holds one (a single one would be an invalid escape in PromQL).
_REGEX_SPECIAL = re.compile(r"([$^*+?.()|\\{}\[\]])")
_VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]|\$(\w+)")


def _datasource_is_prometheus(datasource: Any, prometheus_vars: set[str]) -> bool:
    if isinstance(datasource, dict):
        if datasource.get("type") == "prometheus":
            return True
        uid = str(datasource.get("uid", ""))
    else:
        uid = str(datasource or "")
    return uid.strip("${}") in prometheus_vars


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def panel_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every Prometheus target of ``dashboard``."""
    variables = dashboard.get("templating", {}).get("list", [])
    prometheus_vars = {v["name"] for v in variables if v.get("type") == "datasource" and v.get("query") == "prometheus"}
    out = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            source = target.get("datasource", panel.get("datasource"))
            if "expr" in target and _datasource_is_prometheus(source, prometheus_vars):
                out.append((str(panel.get("title", "")), str(target["expr"])))
    return out


def dashboard_files(folder: Path) -> list[Path]:
    """The dashboards in ``folder`` (none when it does not exist yet)."""
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def load(path: Path) -> dict[str, Any]:
    """One dashboard's JSON."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data.get("dashboard", data)


def substitute(expr: str, values: Mapping[str, list[str]]) -> str:
    """``expr`` with every variable expanded: one value as it is, several as Grafana's regex ``(a|b)``."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in BUILTINS:
            return BUILTINS[name]
        if name not in values:
            return m.group(0)
        chosen = values[name]
        if len(chosen) == 1:
            return chosen[0]
        return "(" + "|".join(_REGEX_SPECIAL.sub(r"\\\\\1", v) for v in chosen) + ")"

    return _VAR.sub(one, expr)
