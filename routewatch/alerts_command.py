"""``routewatch alerts render``: write the alert rules, their promtool tests and the Grafana provisioning."""

from __future__ import annotations

import sys
from pathlib import Path

from routewatch.alerting import Deployment, plan_alerts, render_files
from routewatch.config import Config


def render_alerts(config: Config, out: Path, grafana_url: str, job: str, regions: tuple[str, ...] = ()) -> int:
    """Write every generated file under ``out`` and list them; 0, or 1 with a message on a bad option or path.

    ``regions``: every region probing the routes (default the configuration's own).
    """
    try:
        files = render_files(plan_alerts(config, Deployment(grafana_url=grafana_url, job=job, regions=regions)))
    except ValueError as exc:  # a bad --grafana-url or --region
        print(f"routewatch alerts: {exc}", file=sys.stderr)
        return 1
    for relative, text in files.items():
        path = out / relative
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"routewatch alerts: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(path)
    return 0
