"""Grafana's PostgreSQL query expansion, step for step, so panel SQL can run without Grafana.

Grafana turns a panel's ``rawSql`` into the statement it sends in three steps,
reproduced here from its source (the PostgreSQL data source's macro engine
and the SQL engine's ``Interpolate``) and its documentation:

1. **Template variables** (in the browser): ``$var``, ``${var}``,
   ``${var:format}`` and ``[[var]]``. Without a format, the PostgreSQL data
   source quotes each value of a multi-value or "include All" selection
   (``'a','b'``, quotes doubled).
   ``:sqlstring`` always quotes, ``:csv`` joins with commas, ``:raw`` and
   ``:text`` insert as is. "All" without a custom value stands for every option.
   (A single value without a format has its quotes doubled but is not
   quoted: the query must quote it, ``'$var'``.)
2. **Global substitutions**: ``$__interval_ms`` (milliseconds),
   ``$__interval`` (Grafana's short form: ``30s``, ``5m``, ``1h``, ``1d``),
   ``$__unixEpochFrom()``, ``$__unixEpochTo()``.
3. **Macros** ``$__name(args)``: ``$__time``, ``$__timeEpoch``,
   ``$__timeFilter`` (``col BETWEEN 'from' AND 'to'``, RFC 3339 UTC),
   ``$__timeFrom()``, ``$__timeTo()``, ``$__timeGroup`` (``floor(extract(epoch
   from col)/s)*s``, or ``time_bucket('s.000s',col)`` when the data source
   has TimescaleDB enabled), ``$__timeGroupAlias`` (the same ``AS "time"``;
   a ``$__timeGroup`` directly followed by a comma gets the alias too, as in
   Grafana before 5.3), ``$__unixEpochFilter``, ``$__unixEpochGroup``,
   ``$__unixEpochGroupAlias``. A fill argument is accepted and ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True, slots=True)
class VariableValue:
    """What a variable holds: its selected values, and whether it is multi-value or has "All"."""

    values: tuple[str, ...]
    multi: bool = False  # multi-value or include-All: the default SQL format quotes

    @classmethod
    def single(cls, value: str) -> VariableValue:
        """A single-value variable (no "All" option)."""
        return cls((value,), multi=False)

    @classmethod
    def many(cls, *values: str) -> VariableValue:
        """A multi-value selection; "All" (without a custom value) is every option."""
        return cls(tuple(values), multi=True)


@dataclass(frozen=True, slots=True)
class TimeRange:
    """The dashboard's time range and the panel's interval."""

    start: datetime
    end: datetime
    interval: timedelta


_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::([\w]+))?\}|\[\[(\w+)(?::(\w+))?\]\]")
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _format(var: VariableValue, fmt: str | None) -> str:
    if fmt == "sqlstring" or (fmt is None and var.multi):
        return ",".join(_quote(v) for v in var.values)
    if fmt is None:  # one value of a single-value variable: quotes doubled, not quoted
        return ",".join(v.replace("'", "''") for v in var.values)
    if fmt in ("raw", "text", "csv"):
        return ",".join(var.values)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in var.values)
    raise ValueError(f"variable format {fmt!r} is not supported here")


def interpolate_variables(sql: str, variables: Mapping[str, VariableValue]) -> str:
    """Step 1: template variables. Grafana's own (``$__…``) are left for steps 2 and 3; an unknown one is an error."""

    def one(m: re.Match[str]) -> str:
        name = m[1] or m[2] or m[4]
        if name.startswith("__"):
            return m[0]
        if name not in variables:
            raise KeyError(f"variable ${name} is not defined")
        return _format(variables[name], m[3] or m[5])

    return _VARIABLE.sub(one, sql)


def format_interval(interval: timedelta) -> str:
    """Grafana's short form of an interval (gtime.FormatInterval): whole days, hours, minutes, seconds or ms."""
    ms = int(interval / timedelta(milliseconds=1))
    for unit, size in (("y", 31_536_000_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _parse_interval(text: str) -> timedelta:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w|y)", text.strip().strip("'"))
    if m is None:
        raise ValueError(f"error parsing interval {text}")
    size = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31_536_000}[m[2]]
    return timedelta(seconds=int(m[1]) * size)


def _rfc3339(ts: datetime) -> str:
    # Go's time.RFC3339Nano in UTC: "Z", fractional seconds without trailing zeros.
    ts = ts.astimezone(UTC)
    base = ts.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{ts.microsecond:06d}".rstrip("0")
    return f"{base}{'.' + frac if frac else ''}Z"


def _seconds(interval: timedelta) -> str:
    # Go's %v of a float64: no trailing ".0" for whole numbers.
    s = interval.total_seconds()
    return str(int(s)) if s == math.floor(s) else repr(s)


def _macro(name: str, args: list[str], tr: TimeRange, timescaledb: bool) -> str:
    def column() -> str:
        if not args or not args[0]:
            raise ValueError(f"missing time column argument for macro {name}")
        return args[0]

    if name == "__time":
        return f'{column()} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {column()}) as "time"'
    if name == "__timeFilter":
        return f"{column()} BETWEEN '{_rfc3339(tr.start)}' AND '{_rfc3339(tr.end)}'"
    if name == "__timeFrom":
        return f"'{_rfc3339(tr.start)}'"
    if name == "__timeTo":
        return f"'{_rfc3339(tr.end)}'"
    if name in ("__timeGroup", "__timeGroupAlias"):
        if len(args) < 2:
            raise ValueError(f"macro {name} needs time column and interval and optional fill value")
        interval = _parse_interval(args[1])
        if timescaledb:
            group = f"time_bucket('{interval.total_seconds():.3f}s',{args[0]})"
        else:
            group = f"floor(extract(epoch from {args[0]})/{_seconds(interval)})*{_seconds(interval)}"
        return group + (' AS "time"' if name == "__timeGroupAlias" else "")
    if name == "__unixEpochFilter":
        col = column()
        return f"{col} >= {int(tr.start.timestamp())} AND {col} <= {int(tr.end.timestamp())}"
    if name in ("__unixEpochGroup", "__unixEpochGroupAlias"):
        if len(args) < 2:
            raise ValueError(f"macro {name} needs time column and interval and optional fill value")
        s = _seconds(_parse_interval(args[1]))
        return f"floor(({args[0]})/{s})*{s}" + (' AS "time"' if name == "__unixEpochGroupAlias" else "")
    raise ValueError(f"unknown macro {name!r}")


def expand(sql: str, variables: Mapping[str, VariableValue], tr: TimeRange, *, timescaledb: bool = False) -> str:
    """``sql`` as Grafana's PostgreSQL data source would send it: variables, global substitutions, macros."""
    sql = interpolate_variables(sql, variables)
    sql = sql.replace("$__interval_ms", str(int(tr.interval / timedelta(milliseconds=1))))
    sql = sql.replace("$__interval", format_interval(tr.interval))
    sql = sql.replace("$__unixEpochFrom()", str(int(tr.start.timestamp())))
    sql = sql.replace("$__unixEpochTo()", str(int(tr.end.timestamp())))
    original = sql

    def one(m: re.Match[str]) -> str:
        name = m[1]
        if name == "__timeGroup":
            # Grafana looks at the first occurrence of this exact call in the query.
            at = original.find(m[0]) + len(m[0])
            if at < len(original) and original[at] == ",":
                name = "__timeGroupAlias"
        return _macro(name, [a.strip() for a in m[2].split(",")], tr, timescaledb)

    return _MACRO.sub(one, sql)
