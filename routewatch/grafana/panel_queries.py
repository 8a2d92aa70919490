"""Every SQL query a dashboard sends, and the variable selections to send it with, for tests and benchmarks.

:func:`sql_queries` walks a dashboard's JSON for the SQL Grafana would run:
each panel target on the PostgreSQL data source, each SQL variable's options
query and each annotation. :func:`variable_options` finds the options a user
would be offered (running the variables' own queries, upstream ones set to
"All", through a caller's ``fetch``), and :func:`selections` makes the
selections worth trying: "All", two values, one value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from routewatch.grafana.model import POSTGRES_TYPE
from routewatch.grafana.sql_macros import TimeRange, VariableValue, expand

JSON = dict[str, Any]
Kind = Literal["panel", "variable", "annotation"]


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One SQL query of a dashboard: where it is, its text (macros and variables unexpanded), its format."""

    dashboard: str  # uid
    where: str  # "panel 3 'Title'", "variable model", "annotation 'Incidents'"
    kind: Kind
    sql: str
    format: str  # "time_series" or "table"
    panel_type: str = ""  # timeseries, table, heatmap, ... for panels


def sql_queries(d: JSON) -> list[PanelQuery]:
    """Every SQL query of dashboard ``d`` (its JSON)."""
    uid = str(d["uid"])
    out = []
    for panel in d.get("panels", []):
        for t in panel.get("targets", []):
            if t.get("datasource", {}).get("type") == POSTGRES_TYPE:
                where = f"panel {panel['id']} {panel['title']!r} ({t['refId']})"
                out.append(PanelQuery(uid, where, "panel", t["rawSql"], t["format"], panel["type"]))
    out += [
        PanelQuery(uid, f"variable {v['name']}", "variable", v["query"], "table")
        for v in d.get("templating", {}).get("list", [])
        if v.get("type") == "query" and v.get("datasource", {}).get("type") == POSTGRES_TYPE
    ]
    out += [
        PanelQuery(uid, f"annotation {a['name']!r}", "annotation", a["target"]["rawSql"], "table")
        for a in d.get("annotations", {}).get("list", [])
        if a.get("datasource", {}).get("type") == POSTGRES_TYPE
    ]
    return out


Fetch = Callable[[str], Awaitable[list[str]]]


async def variable_options(d: JSON, fetch: Fetch, tr: TimeRange, *, timescaledb: bool = False) -> dict[str, list[str]]:
    """The options of each variable, as Grafana would offer them over ``tr``.

    SQL variables run in dashboard order with the ones before them on "All";
    ``fetch`` runs an expanded query and returns its first column. Custom
    variables offer their list, text boxes their default; Prometheus variables
    have no options here (no Prometheus), and data source variables need none.
    """
    options: dict[str, list[str]] = {}
    chosen: dict[str, VariableValue] = {}
    for v in d.get("templating", {}).get("list", []):
        name = v["name"]
        if v["type"] == "custom":
            options[name] = [o["value"] for o in v["options"]]
        elif v["type"] == "textbox":
            options[name] = [v["query"]]
        elif v["type"] == "query" and v["datasource"]["type"] == POSTGRES_TYPE:
            options[name] = await fetch(expand(v["query"], chosen, tr, timescaledb=timescaledb))
        else:
            continue
        multi = bool(v.get("multi") or v.get("includeAll"))
        chosen[name] = VariableValue(tuple(options[name]), multi) if multi else VariableValue.single(options[name][0])
    return options


def selections(d: JSON, options: dict[str, list[str]]) -> dict[str, dict[str, VariableValue]]:
    """Selections to try: "all" (every multi-value variable on All), "two" (its first two options), "one"
    (its first option). Single-value variables take their first option (their default) in each."""
    multi = {v["name"] for v in d.get("templating", {}).get("list", []) if v.get("multi") or v.get("includeAll")}
    out: dict[str, dict[str, VariableValue]] = {}
    for label, take in (("all", None), ("two", 2), ("one", 1)):
        out[label] = {
            name: VariableValue(tuple(values[:take]), True) if name in multi else VariableValue.single(values[0])
            for name, values in options.items()
        }
    return out
