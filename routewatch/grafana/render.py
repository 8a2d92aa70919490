"""The dashboards as the JSON files committed under ``dashboards/``, and a check that those are current."""

from __future__ import annotations

import json
from pathlib import Path

from routewatch.grafana.dashboards import all_dashboards


def dashboard_files() -> dict[str, str]:
    """File name -> JSON text of every dashboard (``<uid>.json``, two-space indented, newline at the end)."""
    return {f"{d.uid}.json": json.dumps(d.render(), indent=2, ensure_ascii=False) + "\n" for d in all_dashboards()}


def write(directory: Path) -> list[str]:
    """Write every dashboard into ``directory``; return the names of the files that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in dashboard_files().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return changed


def stale(directory: Path) -> list[str]:
    """What differs between ``directory`` and what the code makes: missing, changed or extra JSON files."""
    files = dashboard_files()
    problems = []
    for name, text in files.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from what routewatch.grafana makes")
    problems += [
        f"{p}: not made by routewatch.grafana" for p in sorted(directory.glob("*.json")) if p.name not in files
    ]
    return problems
