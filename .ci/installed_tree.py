#!/usr/bin/env python3
"""Lay out the package as it installs, for tools that read source trees.

``probe/`` and ``aggregator/`` install as ``routewatch.probe`` and
``routewatch.aggregator`` through setuptools' ``package-dir``. The editable
install maps them with an import hook, which Python follows but mypy and
import-linter (grimp) do not: they walk directories, and in the checkout
``routewatch/`` has no ``probe/``. This script builds the installed shape as
a tree of symlinks to the real files (``build/installed/routewatch/probe/x.py
-> probe/x.py``), from the ``[tool.setuptools]`` table itself, so it follows
the packaging wherever it changes.

    installed_tree.py build DIR     rebuild DIR (removed first: no stale links)
    installed_tree.py unmap DIR     copy stdin to stdout, with every path under
                                    DIR written as the real file's path, so
                                    that tool messages point into the checkout
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def source_dir(package: str, package_dir: dict[str, str]) -> Path:
    """Where ``package``'s modules live in the checkout (longest mapped prefix wins, as in setuptools)."""
    parts = package.split(".")
    for cut in range(len(parts), -1, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[cut:])
    raise SystemExit(f"no package-dir entry covers {package}")


def build(target: Path) -> None:
    """Recreate ``target`` holding each listed package's ``.py`` files as symlinks."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools.get("package-dir", {})
    shutil.rmtree(target, ignore_errors=True)
    for package in setuptools["packages"]:
        source = source_dir(package, package_dir)
        installed = target / Path(*package.split("."))
        installed.mkdir(parents=True, exist_ok=True)
        for module in source.glob("*.py"):
            (installed / module.name).symlink_to(module)


def unmap(target: Path) -> None:
    """Rewrite paths under ``target`` found in stdin as the checkout paths they link to."""
    prefix = re.escape(os.path.relpath(target)) + "|" + re.escape(str(target.resolve()))
    path = re.compile(rf"(?:{prefix})/[^\s:]+\.py")

    def real(match: re.Match[str]) -> str:
        return os.path.relpath(os.path.realpath(match.group(0)))

    for line in sys.stdin:
        sys.stdout.write(path.sub(real, line))


def main() -> None:
    """Dispatch ``build`` or ``unmap``."""
    if len(sys.argv) != 3 or sys.argv[1] not in ("build", "unmap"):
        raise SystemExit(__doc__)
    target = Path(sys.argv[2]).absolute()
    build(target) if sys.argv[1] == "build" else unmap(target)


if __name__ == "__main__":
    main()
