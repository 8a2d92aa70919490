"""The router simulator in its own process, and what it says it served (for tests with real processes)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from routewatch.simulator.process import SimulatorProcess


@contextmanager
def simulator_process(workdir: Path, profiles: str) -> Iterator[SimulatorProcess]:
    """``routewatch simulate`` with the model ``profiles`` (YAML text), stopped at exit."""
    path = workdir / "profiles.yaml"
    path.write_text(profiles)
    with SimulatorProcess(path) as sim:
        yield sim


def served(sim: SimulatorProcess) -> list[dict[str, Any]]:
    """Every request the simulator served, oldest first (its ground truth: request ids, times, faults)."""
    with urllib.request.urlopen(sim.base_url + "/ground-truth", timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]
