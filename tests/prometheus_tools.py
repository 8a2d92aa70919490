"""Finding Debian's Prometheus tools for the tests: skip without them, or fail under ROUTEWATCH_REQUIRE_PROMETHEUS=1."""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_ENV = "ROUTEWATCH_REQUIRE_PROMETHEUS"
# Debian names the Alertmanager binary prometheus-alertmanager.
NAMES = {
    "promtool": ("promtool",),
    "prometheus": ("prometheus",),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
    "amtool": ("amtool",),
}


def tool(name: str) -> str:
    """The path of ``name`` (promtool, prometheus, alertmanager, amtool); skips, or fails when required, without it."""
    for candidate in NAMES[name]:
        path = shutil.which(candidate)
        if path:
            return path
    reason = f"{name} is not installed (Debian: apt-get install prometheus prometheus-alertmanager)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(reason)
    pytest.skip(f"{reason}; set {REQUIRE_ENV}=1 to make this a failure")
