"""``routewatch grafana publish``: dashboards, data sources and alert rules into a running Grafana.

Reads ``ROUTEWATCH_GRAFANA_TOKEN`` (a service-account token with the Editor
role, or Admin for the data sources) and ``ROUTEWATCH_GRAFANA_DB_URL`` (how
Grafana reaches the database) from the settings, builds the plan from the
files and upserts it (``routewatch.grafana.publish``). Needs the extra
``routewatch[grafana]``. Every message is cleared of the token and the
database password.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from routewatch.config.settings import ENV_GRAFANA_DB_URL, ENV_GRAFANA_TOKEN, Settings
from routewatch.grafana.plan import PlanError, build_plan
from routewatch.probe.redact import redact

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
EXTRA_MISSING = "routewatch grafana publish needs grafana-client: pip install 'routewatch[grafana]'"


@dataclass(frozen=True)
class PublishOptions:
    """What ``routewatch grafana publish`` was asked to do."""

    url: str
    diff: bool
    dashboards: Path
    alerting: Path
    prometheus_url: str
    timescaledb: bool


def _check_url(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "--url is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "--url must be Grafana's http(s):// base URL, e.g. https://grafana.example.com"
    if parts.username or parts.password:
        return f"--url must carry no credentials: the token comes from {ENV_GRAFANA_TOKEN}"
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        return "--url must be https:// (over http the token would cross the network in clear); http:// to loopback only"
    return None


def grafana_main(opts: PublishOptions, settings: Settings) -> int:
    """Publish; print one line per object (and the diffs with ``--diff``). 0 on success, 1 on any failure."""
    token = settings.grafana_token.get_secret_value() if settings.grafana_token is not None else ""
    db_url = settings.grafana_db_url.get_secret_value() if settings.grafana_db_url is not None else ""
    problem = _check_url(opts.url)
    if problem is None and not token:
        problem = f"set {ENV_GRAFANA_TOKEN} to a Grafana service-account token"
    if problem is None and not db_url:
        problem = f"set {ENV_GRAFANA_DB_URL} to the postgresql:// URL Grafana reaches the database with"
    if problem is not None:
        print(f"routewatch: {problem}", file=sys.stderr)
        return 1
    try:
        plan = build_plan(opts.dashboards, opts.alerting, db_url, opts.prometheus_url, timescaledb=opts.timescaledb)
    except PlanError as exc:
        print(f"routewatch: {exc}", file=sys.stderr)
        return 1
    secrets = [token, db_url, *plan.secrets()]
    try:
        from routewatch.grafana.publish import Change, Publisher, close, connect
    except ImportError:
        print(f"routewatch: {EXTRA_MISSING}", file=sys.stderr)
        return 1

    def show(change: Change) -> None:
        print(change.line(opts.diff), flush=True)
        for line in change.diff:
            print(f"    {line}")

    async def run() -> None:
        api = connect(opts.url, token)
        try:
            await Publisher(api, dry_run=opts.diff).publish(plan, show)
        finally:
            await close(api)

    try:
        asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - whatever the client raised, shown as one redacted line
        print(
            f"routewatch: publishing to Grafana failed: {redact(f'{exc.__class__.__name__}: {exc}', secrets)}",
            file=sys.stderr,
        )
        return 1
    if opts.diff:
        print("(--diff: nothing was changed)")
    return 0
