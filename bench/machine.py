"""What a benchmark ran on, writing its JSON and printing its table: the figures mean little without the first."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


def package_version(dist: str) -> str | None:
    """Installed version of ``dist``, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def describe_machine(packages: list[str], **extra: Any) -> dict[str, Any]:
    """CPUs, platform, Python, the given packages' versions and the load
    average (a busy shared machine shows there), plus ``extra``."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    info.update({name: package_version(name) for name in packages})
    info.update(extra)
    info["loadavg_start"] = list(os.getloadavg())
    return info


def result_header(benchmark: str, quick: bool, machine: dict[str, Any]) -> dict[str, Any]:
    """The fields every results file starts with: which benchmark, when, the command line, the machine."""
    return {
        "benchmark": benchmark,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "quick": quick,
        "machine": machine,
    }


def write_results(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as JSON to ``path`` atomically (a half-written file never replaces a good one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def print_table(lines: list[list[str]], left: int = 0) -> None:
    """Print rows of cells (the first row is the header) as aligned columns.

    The first ``left`` columns (names) are left-aligned, the rest (numbers)
    right-aligned; a rule of dashes goes under the header.
    """
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for i, line in enumerate(lines):
        cells = (c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths, strict=True)))
        print("  ".join(cells))
        if i == 0:
            print("  ".join("-" * w for w in widths))
