"""The rules of Grafana's dashboard-linter, checked on dashboard JSON (the linter itself cannot run here).

:func:`lint` returns one line per problem, naming the dashboard and panel:
a stable uid of at most 40 characters, a schemaVersion, unique panel ids,
grid positions within 24 columns that do not overlap, every data source
through a dashboard variable of type ``datasource``, a unit, title and
description on every panel, no counter (``*_total``) without ``rate()``,
``irate()`` or ``increase()``, rate windows of ``$__rate_interval``, and every
variable used somewhere other than its own definition.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

MAX_UID = 40
MIN_SCHEMA_VERSION = 36  # Grafana 9.3 and later
_UID = re.compile(r"^[A-Za-z0-9_-]+$")
_COUNTER = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*_total)\b")
_RATE_CALL = re.compile(r"(?:\b(?:rate|irate|increase)\s*\(\s*)$")
_RANGE = re.compile(r"\[([^\]]+)\]")
_VAR_REF = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")

JSON = dict[str, Any]


def lint(dashboard: JSON) -> list[str]:
    """Every problem found in ``dashboard`` (the parsed JSON), empty when it passes."""
    name = dashboard.get("uid") or dashboard.get("title") or "<dashboard>"
    return [f"{name}: {p}" for p in _problems(dashboard)]


def _problems(d: JSON) -> Iterator[str]:
    uid = d.get("uid")
    if not isinstance(uid, str) or not uid:
        yield "no uid: links and provisioning need a stable one"
    elif len(uid) > MAX_UID or not _UID.match(uid):
        yield f"uid {uid!r}: at most {MAX_UID} letters, digits, '-' or '_'"
    if not d.get("title"):
        yield "no title"
    version = d.get("schemaVersion")
    if not isinstance(version, int) or version < MIN_SCHEMA_VERSION:
        yield f"schemaVersion {version!r}: need {MIN_SCHEMA_VERSION} or later"
    variables = d.get("templating", {}).get("list", [])
    datasource_vars = {v["name"]: v.get("query") for v in variables if v.get("type") == "datasource"}
    panels = d.get("panels", [])
    yield from _ids_and_grid(panels)
    for panel in panels:
        where = f"panel {panel.get('id')} {panel.get('title', '')!r}"
        for field in ("title", "description"):
            if not str(panel.get(field, "")).strip():
                yield f"{where}: no {field}"
        if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            yield f"{where}: no unit"
        sources = [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]
        for source in sources:
            yield from (f"{where}: {p}" for p in _datasource_problems(source, datasource_vars))
        if not panel.get("targets"):
            yield f"{where}: no query"
        for target in panel.get("targets", []):
            if "expr" in target:
                yield from (f"{where}: {p}" for p in promql_problems(target["expr"]))
    for variable in variables:
        if variable.get("type") == "query":
            for p in _datasource_problems(variable.get("datasource"), datasource_vars):
                yield f"variable {variable['name']}: {p}"
    for annotation in d.get("annotations", {}).get("list", []):
        if annotation.get("builtIn"):
            continue
        for p in _datasource_problems(annotation.get("datasource"), datasource_vars):
            yield f"annotation {annotation.get('name')!r}: {p}"
    yield from _unused_variables(d, variables)


def _ids_and_grid(panels: list[JSON]) -> Iterator[str]:
    seen: set[Any] = set()
    boxes: list[tuple[Any, int, int, int, int]] = []
    for panel in panels:
        pid = panel.get("id")
        if pid in seen:
            yield f"panel id {pid} used twice"
        seen.add(pid)
        g = panel.get("gridPos") or {}
        x, y, w, h = (g.get(k) for k in ("x", "y", "w", "h"))
        if not all(isinstance(v, int) for v in (x, y, w, h)):
            yield f"panel {pid}: gridPos needs integer x, y, w and h"
            continue
        assert isinstance(x, int) and isinstance(y, int) and isinstance(w, int) and isinstance(h, int)
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > 24:
            yield f"panel {pid}: gridPos {g} is not within the 24 columns"
        for other, ox, oy, ow, oh in boxes:
            if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                yield f"panel {pid} overlaps panel {other}"
        boxes.append((pid, x, y, w, h))


def _datasource_problems(source: Any, datasource_vars: dict[str, Any]) -> Iterator[str]:
    if not isinstance(source, dict):
        yield "no data source"
        return
    uid = str(source.get("uid", ""))
    m = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", uid)
    name = (m[1] or m[2]) if m else None
    if name is None or name not in datasource_vars:
        yield f"data source {uid!r} is not a data source variable"
    elif datasource_vars[name] != source.get("type"):
        yield f"data source variable ${name} is of type {datasource_vars[name]!r}, not {source.get('type')!r}"


def promql_problems(expr: str) -> list[str]:
    """Counters read without rate()/irate()/increase(), and rate windows other than ``$__rate_interval``."""
    problems = [
        f"counter {m[1]} without rate(), irate() or increase()"
        for m in _COUNTER.finditer(expr)
        if not _RATE_CALL.search(expr[: m.start()])
    ]
    for m in re.finditer(r"\b(?:rate|irate|increase)\s*\(", expr):
        window = _RANGE.search(expr, m.end())
        if window is None or window[1] != "$__rate_interval":
            problems.append(f"{expr[m.start() : m.end()]}…) should use [$__rate_interval]")
    return problems


def _unused_variables(d: JSON, variables: list[JSON]) -> Iterator[str]:
    for variable in variables:
        name = variable["name"]
        rest = {**d, "templating": {"list": [v for v in variables if v is not variable]}}
        used = {a or b or c for a, b, c in _VAR_REF.findall(json.dumps(rest))}
        if name not in used:
            yield f"variable ${name} is never used"
