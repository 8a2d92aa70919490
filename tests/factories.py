"""Builders of test data: probe results and probes.yaml texts, with sensible defaults.

A test names only what matters to it: ``probe_result(model="m/b", ttft_ms=120.0)``,
``config_text(routers=[router_entry(base_url=url, models=[...])], schedule={...})``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from routewatch.results.probe_result import METHODOLOGY_VERSION, ProbeResult

# ---------------------------------------------------------------- probe results

# What a failure stores when the test does not say: an HTTP 500 with nothing measured.
FAILED = {"ok": False, "error_class": "http_5xx", "error_detail": "HTTP 500"}


def probe_result(**overrides: Any) -> ProbeResult:
    """A valid :class:`ProbeResult`: a successful probe of ``sim``/``m/a`` with prompt ``short``, just now.

    ``overrides`` replace any field. The database requires ``ok`` exactly when
    there is no error class, so ``ok=False`` alone is an HTTP 500 failure, and an
    ``error_class`` alone makes the probe a failure.
    """
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "started_at": datetime.now(UTC),
        "region": "eu",
        "router": "sim",
        "model": "m/a",
        "prompt": "short",
        "methodology": METHODOLOGY_VERSION,
        "ok": True,
        "error_class": None,
        "error_detail": None,
    }
    if overrides.get("ok") is False:
        fields |= FAILED
    elif overrides.get("error_class") is not None and "ok" not in overrides:
        fields["ok"] = False
    return ProbeResult(**(fields | overrides))


def outcome(ok: bool, **measured: Any) -> dict[str, Any]:
    """Fields for :func:`probe_result`: the ``measured`` values when ``ok``, else a failure that measured nothing."""
    return measured if ok else {"ok": False}


# ---------------------------------------------------------------- probes.yaml

DEFAULT_MODEL = "openai/gpt-4.1-nano"
COUNT_TO_40 = "Count from 1 to 40 in words."
# Short phases for loopback routers and the simulator: a stuck probe fails in seconds.
LOOPBACK_TIMEOUTS = {"connect": "2s", "headers": "2s", "first_token": "3s", "idle": "1s", "total": "5s"}
# The API on a free loopback port.
LOOPBACK_API = {"host": "127.0.0.1", "port": 0}


def router_entry(
    name: str = "orcarouter", base_url: str = "simulator", models: Sequence[str] = (DEFAULT_MODEL,), **keys: Any
) -> dict[str, Any]:
    """One entry of ``routers``; ``keys`` adds settings such as ``api_key_env`` or ``prices``."""
    return {"name": name, "base_url": base_url, "models": list(models), **keys}


def prompt_entry(name: str = "short", content: str = COUNT_TO_40, **keys: Any) -> dict[str, Any]:
    """One entry of ``prompts`` with a single user message; ``keys`` adds e.g. ``max_tokens``."""
    return {"name": name, "messages": [{"role": "user", "content": content}], **keys}


def config_text(
    routers: Sequence[Mapping[str, Any]] | None = None,
    prompts: Sequence[Mapping[str, Any]] | None = None,
    *,
    region: str | None = None,
    **sections: Any,
) -> str:
    """A probes.yaml: ``region`` when given, the routers, the prompts, then ``sections`` in order.

    The routers default to one :func:`router_entry`, the prompts to one :func:`prompt_entry`.
    One line per setting, laid out as a person writes the file (block lists of
    flow mappings), so that line numbers in error messages are easy to predict.
    """
    lines = [] if region is None else [f"region: {_flow(region)}"]
    for name, items in (("routers", routers or [router_entry()]), ("prompts", prompts or [prompt_entry()])):
        lines.append(f"{name}:")
        for item in items:
            entries = [f"{key}: {_flow(value)}" for key, value in item.items()]
            lines += [f"  - {entries[0]}"] + [f"    {entry}" for entry in entries[1:]]
    lines += [f"{name}: {_flow(value)}" for name, value in sections.items()]
    return "\n".join(lines) + "\n"


def _flow(value: Any) -> str:
    """``value`` as YAML on one line (flow style), quoted only where YAML needs it."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 30, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


# routers: one simulated router with one model; prompts: one short prompt.
MINIMAL_CONFIG = config_text()
