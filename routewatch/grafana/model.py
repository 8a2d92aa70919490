"""A small typed model of a Grafana dashboard, rendered to the JSON Grafana imports.

Only what routewatch's dashboards use: PostgreSQL and Prometheus queries,
time series, table, stat, heatmap and bar gauge panels, data source / query /
custom / textbox variables, SQL annotations and data links. Each panel's data
source is a dashboard variable (``${ds_postgres}``, ``${ds_prometheus}``), so
one import works whatever the data sources are called where it lands.
:func:`layout` places panels left to right, row after row, on Grafana's
24-column grid, so positions never overlap by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# Grafana 11's dashboard JSON schema version (Grafana 11.0 to 11.2 write 39; later ones migrate it on load).
SCHEMA_VERSION = 39
GRID_COLUMNS = 24

POSTGRES_TYPE = "grafana-postgresql-datasource"
PROMETHEUS_TYPE = "prometheus"
POSTGRES_VAR = "ds_postgres"
PROMETHEUS_VAR = "ds_prometheus"

PanelKind = Literal["timeseries", "table", "stat", "heatmap", "bargauge"]
SqlFormat = Literal["time_series", "table"]

JSON = dict[str, Any]


def _datasource(kind: str) -> JSON:
    var = POSTGRES_VAR if kind == POSTGRES_TYPE else PROMETHEUS_VAR
    return {"type": kind, "uid": f"${{{var}}}"}


@dataclass(frozen=True, slots=True)
class Sql:
    """A PostgreSQL query; ``format`` is what the panel reads: a time series or a table."""

    sql: str
    format: SqlFormat = "time_series"

    def target(self, ref_id: str) -> JSON:
        """The panel target."""
        return {
            "datasource": _datasource(POSTGRES_TYPE),
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.sql.strip(),
            "refId": ref_id,
        }


@dataclass(frozen=True, slots=True)
class PromQL:
    """A Prometheus query; ``legend`` is its series name template."""

    expr: str
    legend: str = ""
    instant: bool = False

    def target(self, ref_id: str) -> JSON:
        """The panel target."""
        return {
            "datasource": _datasource(PROMETHEUS_TYPE),
            "editorMode": "code",
            "expr": self.expr.strip(),
            "instant": self.instant,
            "legendFormat": self.legend or "__auto",
            "range": not self.instant,
            "refId": ref_id,
        }


Query = Sql | PromQL


@dataclass(frozen=True, slots=True)
class Link:
    """A data link on a table column: clicking a value opens ``url`` (Grafana's ``${__value.raw}`` etc. allowed)."""

    column: str
    title: str
    url: str


@dataclass(frozen=True, slots=True)
class Panel:
    """One panel: what it shows (``queries``), what it answers (``description``), in which ``unit``."""

    title: str
    description: str
    kind: PanelKind
    unit: str
    queries: tuple[Query, ...]
    width: int = 12
    height: int = 8
    stacked: bool = False
    links: tuple[Link, ...] = ()
    decimals: int | None = None
    thresholds: tuple[tuple[float, str], ...] = ()  # (from value, colour) after the base green
    column_units: tuple[tuple[str, str], ...] = ()  # (column, unit) where a table column differs from ``unit``

    def render(self, panel_id: int, x: int, y: int) -> JSON:
        """The panel's JSON at ``(x, y)`` with ``panel_id``."""
        kinds = {type(q) for q in self.queries}
        if len(kinds) != 1:  # one data source per panel, and that one through its variable
            raise ValueError(f"panel {self.title!r}: queries of one kind only, SQL or PromQL")
        source = POSTGRES_TYPE if kinds == {Sql} else PROMETHEUS_TYPE
        defaults: JSON = {"unit": self.unit}
        if self.decimals is not None:
            defaults["decimals"] = self.decimals
        steps: list[JSON] = [{"color": "green", "value": None}]
        steps += [{"color": colour, "value": value} for value, colour in self.thresholds]
        defaults["thresholds"] = {"mode": "absolute", "steps": steps}
        if self.kind == "timeseries":
            defaults["custom"] = {
                "drawStyle": "line",
                "fillOpacity": 30 if self.stacked else 0,
                "lineWidth": 1,
                "showPoints": "never",
                "spanNulls": False,
                "stacking": {"group": "A", "mode": "normal" if self.stacked else "none"},
            }
        overrides = [
            {
                "matcher": {"id": "byName", "options": link.column},
                "properties": [{"id": "links", "value": [{"title": link.title, "url": link.url}]}],
            }
            for link in self.links
        ] + [
            {"matcher": {"id": "byName", "options": column}, "properties": [{"id": "unit", "value": unit}]}
            for column, unit in self.column_units
        ]
        return {
            "datasource": _datasource(source),
            "description": self.description,
            "fieldConfig": {"defaults": defaults, "overrides": overrides},
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "id": panel_id,
            "options": _options(self.kind, rows=all(isinstance(q, Sql) and q.format == "table" for q in self.queries)),
            "targets": [q.target(chr(ord("A") + i)) for i, q in enumerate(self.queries)],
            "title": self.title,
            "type": self.kind,
        }


def _options(kind: PanelKind, rows: bool = False) -> JSON:
    """Panel options; ``rows``: a stat or bar gauge shows each row of a table (one per state, per model)."""
    if kind == "timeseries":
        return {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]}}
    if kind == "table":
        return {"showHeader": True, "cellHeight": "sm"}
    if kind == "heatmap":
        return {
            "calculate": False,
            "yAxis": {"unit": "ms"},
            "rowsFrame": {"layout": "le"},
            "color": {"mode": "scheme", "scheme": "Oranges"},
            "cellGap": 1,
        }
    return {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": rows}}


@dataclass(frozen=True, slots=True)
class Variable:
    """A dashboard variable.

    ``kind``: ``datasource`` (``query`` is the plugin type), ``query`` (SQL on
    the PostgreSQL variable, or PromQL), ``custom`` (``query`` is the comma
    separated options) or ``textbox`` (``query`` is the default).
    """

    name: str
    label: str
    kind: Literal["datasource", "query", "custom", "textbox"]
    query: str
    description: str
    multi: bool = False
    include_all: bool = False
    on: Literal["postgres", "prometheus"] = "postgres"
    default: str | None = None

    def render(self) -> JSON:
        """The variable's JSON."""
        out: JSON = {
            "description": self.description,
            "hide": 0,
            "label": self.label,
            "name": self.name,
            "type": self.kind,
        }
        if self.kind == "datasource":
            out.update(query=self.query, refresh=1, regex="", current={}, multi=False, includeAll=False)
        elif self.kind == "query":
            kind = POSTGRES_TYPE if self.on == "postgres" else PROMETHEUS_TYPE
            out.update(
                datasource=_datasource(kind),
                definition=self.query,
                query=self.query if self.on == "postgres" else {"query": self.query, "refId": "vars"},
                refresh=2,  # on every time range change: options follow what the range holds
                sort=1,
                regex="",
                multi=self.multi,
                includeAll=self.include_all,
                current={"text": ["All"], "value": ["$__all"]} if self.include_all else {},
            )
        elif self.kind == "custom":
            options = [o.strip() for o in self.query.split(",")]
            chosen = self.default or options[0]
            out.update(
                query=self.query,
                multi=False,
                includeAll=False,
                current={"text": chosen, "value": chosen},
                options=[{"selected": o == chosen, "text": o, "value": o} for o in options],
            )
        else:
            out.update(query=self.query, current={"text": self.query, "value": self.query})
        return out


def datasource_variables() -> tuple[Variable, Variable]:
    """The two data source variables every dashboard has: PostgreSQL and Prometheus."""
    return (
        Variable(POSTGRES_VAR, "PostgreSQL", "datasource", POSTGRES_TYPE, "routewatch's database (history)"),
        Variable(PROMETHEUS_VAR, "Prometheus", "datasource", PROMETHEUS_TYPE, "Prometheus scraping /metrics (live)"),
    )


@dataclass(frozen=True, slots=True)
class Annotation:
    """An annotation query on the PostgreSQL data source: rows with time, timeend, text and tags."""

    name: str
    sql: str
    color: str = "red"

    def render(self) -> JSON:
        """The annotation's JSON."""
        return {
            "datasource": _datasource(POSTGRES_TYPE),
            "enable": True,
            "iconColor": self.color,
            "name": self.name,
            "target": {"format": "table", "rawQuery": True, "rawSql": self.sql.strip(), "refId": "Anno"},
        }


@dataclass(frozen=True, slots=True)
class Dashboard:
    """A dashboard: a stable ``uid`` (others link to it), its variables, panels and annotations."""

    uid: str
    title: str
    description: str
    variables: tuple[Variable, ...]
    panels: tuple[Panel, ...]
    annotations: tuple[Annotation, ...] = ()
    time_from: str = "now-7d"
    refresh: str = "1m"
    tags: tuple[str, ...] = ("routewatch",)
    links: tuple[tuple[str, str], ...] = field(default=())  # (title, url)

    def render(self) -> JSON:
        """The dashboard's JSON, as Grafana imports it."""
        builtin = {
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }
        return {
            "annotations": {"list": [builtin, *(a.render() for a in self.annotations)]},
            "description": self.description,
            "editable": True,
            "graphTooltip": 1,
            "links": [
                {"title": title, "type": "link", "url": url, "keepTime": True, "includeVars": False}
                for title, url in self.links
            ],
            "panels": [
                panel.render(i + 1, x, y)
                for i, (panel, (x, y)) in enumerate(zip(self.panels, layout(self.panels), strict=True))
            ],
            "refresh": self.refresh,
            "schemaVersion": SCHEMA_VERSION,
            "tags": list(self.tags),
            "templating": {"list": [v.render() for v in self.variables]},
            "time": {"from": self.time_from, "to": "now"},
            "timepicker": {},
            "timezone": "utc",
            "title": self.title,
            "uid": self.uid,
            "version": 1,
        }


def layout(panels: Sequence[Panel]) -> list[tuple[int, int]]:
    """(x, y) of each panel: left to right, a new row when the next would pass column 24.

    A row is as tall as its tallest panel, so panels never overlap.
    """
    places = []
    x = y = row_height = 0
    for panel in panels:
        if not 0 < panel.width <= GRID_COLUMNS:
            raise ValueError(f"panel {panel.title!r}: width {panel.width} is not within 1..{GRID_COLUMNS}")
        if x + panel.width > GRID_COLUMNS:
            x, y, row_height = 0, y + row_height, 0
        places.append((x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return places
