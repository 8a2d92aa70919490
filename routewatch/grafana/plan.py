"""What ``routewatch grafana publish`` puts into Grafana: built from files and settings, no I/O to Grafana.

A :class:`PublishPlan` holds, as Grafana's HTTP API takes them, the folder
everything goes in, the two data sources (PostgreSQL/TimescaleDB for the
history panels, Prometheus for the live ones), the dashboards (every
``dashboards/*.json``) and the Grafana-managed alert rules (every file of
``deploy/grafana/provisioning/alerting/``, converted from Grafana's
provisioning-file format to the API's). The data sources' secrets live in
:attr:`DataSource.secure` only, which is never printed or compared.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from routewatch.config.durations import parse_duration

FOLDER_UID = "routewatch"
FOLDER_TITLE = "routewatch"
POSTGRES_UID = "routewatch-postgres"
PROMETHEUS_UID = "routewatch-prometheus"
# Grafana's plugin id of its PostgreSQL data source (``postgres`` before Grafana 10.3 still loads it).
POSTGRES_TYPE = "grafana-postgresql-datasource"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# What Grafana would expand from its environment when it loads an alert
# provisioning file; over the API, publish puts in the data sources it creates.
PROVISIONING_VARIABLES = {"PROMETHEUS_DATASOURCE_UID": PROMETHEUS_UID, "POSTGRES_DATASOURCE_UID": POSTGRES_UID}
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PlanError(ValueError):
    """A file or setting the plan needs is missing or malformed; the message says which (never a secret)."""


@dataclass(frozen=True)
class DataSource:
    """A data source as ``POST /api/datasources`` takes it, its secrets apart."""

    body: dict[str, Any]
    secure: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def uid(self) -> str:
        """Its fixed uid, which the dashboards and alert rules name."""
        return str(self.body["uid"])


@dataclass(frozen=True)
class RuleGroup:
    """A rule group's evaluation interval (seconds); its rules are among :attr:`PublishPlan.alert_rules`."""

    title: str
    interval_s: int


@dataclass(frozen=True)
class PublishPlan:
    """Everything to upsert, in order: folder, data sources, dashboards, alert rules, their groups."""

    datasources: list[DataSource]
    dashboards: list[dict[str, Any]]
    alert_rules: list[dict[str, Any]]
    rule_groups: list[RuleGroup]
    folder: dict[str, str] = field(default_factory=lambda: {"uid": FOLDER_UID, "title": FOLDER_TITLE})

    def secrets(self) -> list[str]:
        """The data sources' secret values, to mask in anything shown."""
        return [v for ds in self.datasources for v in ds.secure.values() if v]


def postgres_datasource(db_url: str, *, timescaledb: bool) -> DataSource:
    """The PostgreSQL data source from a ``postgresql://user:password@host:port/db`` URL (as Grafana
    reaches the database: a read-only role is best). The password goes to ``secureJsonData``."""
    try:
        parts = urlsplit(db_url)
        port = parts.port or 5432
    except ValueError:
        raise PlanError("ROUTEWATCH_GRAFANA_DB_URL is not a valid postgresql:// URL") from None
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname or not parts.username:
        raise PlanError("ROUTEWATCH_GRAFANA_DB_URL must be postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    database = unquote(parts.path.lstrip("/")) or "routewatch"
    default_ssl = "disable" if parts.hostname in _LOOPBACK_HOSTS else "require"
    sslmode = parse_qs(parts.query).get("sslmode", [default_ssl])[0]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    body = {
        "uid": POSTGRES_UID,
        "name": "routewatch PostgreSQL",
        "type": POSTGRES_TYPE,
        "access": "proxy",
        "url": f"{host}:{port}",
        "user": unquote(parts.username),
        "jsonData": {
            "database": database,
            "sslmode": sslmode,
            "timescaledb": timescaledb,
            "postgresVersion": 1500,
            "maxOpenConns": 10,
        },
    }
    secure = {"password": unquote(parts.password)} if parts.password else {}
    return DataSource(body, secure)


def prometheus_datasource(url: str) -> DataSource:
    """The Prometheus data source that scrapes routewatch's ``/metrics``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PlanError(f"--prometheus-url must be an http(s):// URL, not {url!r}")
    if parts.username or parts.password:
        raise PlanError("--prometheus-url must carry no credentials")
    body = {
        "uid": PROMETHEUS_UID,
        "name": "routewatch Prometheus",
        "type": "prometheus",
        "access": "proxy",
        "url": url,
        "jsonData": {"httpMethod": "POST", "timeInterval": "15s"},
    }
    return DataSource(body)


def load_dashboards(directory: Path) -> list[dict[str, Any]]:
    """Every ``*.json`` dashboard in ``directory`` (sorted by name); none when it does not exist."""
    if not directory.is_dir():
        return []
    out = []
    for path in sorted(directory.glob("*.json")):
        try:
            dashboard = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlanError(f"{path}: not a JSON dashboard ({exc})") from None
        if not isinstance(dashboard, dict) or not isinstance(dashboard.get("uid"), str):
            raise PlanError(f"{path}: a dashboard needs a string uid")
        # Grafana's own numbers, per instance and per save: never part of what is compared.
        dashboard.pop("id", None)
        dashboard.pop("version", None)
        out.append(dashboard)
    return out


def load_alert_rules(directory: Path) -> tuple[list[dict[str, Any]], list[RuleGroup]]:
    """The rules of every provisioning file (``*.yaml``, ``*.yml``, ``*.json``) in ``directory``,
    in the API's shape, with their groups; none when it does not exist."""
    if not directory.is_dir():
        return [], []
    rules: list[dict[str, Any]] = []
    groups: list[RuleGroup] = []
    paths = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    for path in paths:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise PlanError(f"{path}: not a provisioning file ({exc.__class__.__name__})") from None
        for group in document.get("groups", []) if isinstance(document, dict) else []:
            name = str(group.get("name", ""))
            if not name:
                raise PlanError(f"{path}: a rule group without a name")
            groups.append(RuleGroup(name, int(parse_duration(group.get("interval", "1m")))))
            rules.extend(_expand(path, _api_rule(path, name, rule)) for rule in group.get("rules", []))
    return rules, groups


def _expand(path: Path, value: Any) -> Any:
    """``value`` with ``${NAME}`` replaced as Grafana's file provisioning would
    (:data:`PROVISIONING_VARIABLES`) and ``$$`` as ``$``; another variable is an error."""
    if isinstance(value, dict):
        return {k: _expand(path, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(path, v) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        if name not in PROVISIONING_VARIABLES:
            known = ", ".join(PROVISIONING_VARIABLES)
            raise PlanError(f"{path}: ${{{name}}} is not a variable publish can fill in ({known})")
        return PROVISIONING_VARIABLES[name]

    return _VARIABLE.sub(one, value)


def _api_rule(path: Path, group: str, rule: dict[str, Any]) -> dict[str, Any]:
    """A rule of a provisioning file in the shape ``POST /api/v1/provisioning/alert-rules`` takes."""
    missing = [key for key in ("uid", "title", "condition", "data") if key not in rule]
    if missing:
        raise PlanError(f"{path}: rule {rule.get('uid') or rule.get('title') or '?'} lacks {', '.join(missing)}")
    out = {
        "uid": rule["uid"],
        "title": rule["title"],
        "ruleGroup": group,
        "folderUID": FOLDER_UID,
        "orgID": 1,
        "condition": rule["condition"],
        "data": rule["data"],
        "noDataState": rule.get("noDataState", "NoData"),
        "execErrState": rule.get("execErrState", "Error"),
        "for": rule.get("for", "0s"),
        "annotations": rule.get("annotations", {}),
        "labels": rule.get("labels", {}),
        "isPaused": rule.get("isPaused", False),
    }
    return out


def build_plan(
    dashboards_dir: Path,
    alerting_dir: Path,
    db_url: str,
    prometheus_url: str,
    *,
    timescaledb: bool = False,
) -> PublishPlan:
    """The plan from the files in ``dashboards_dir`` and ``alerting_dir`` and the data sources' settings."""
    rules, groups = load_alert_rules(alerting_dir)
    return PublishPlan(
        datasources=[postgres_datasource(db_url, timescaledb=timescaledb), prometheus_datasource(prometheus_url)],
        dashboards=load_dashboards(dashboards_dir),
        alert_rules=rules,
        rule_groups=groups,
    )
