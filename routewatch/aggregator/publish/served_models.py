"""The ``by=served_model`` breakdown: which model answered, and its share of the answers."""

from __future__ import annotations

from typing import Any

from routewatch.aggregator.provider_cap import OTHER, UNKNOWN
from routewatch.aggregator.stats import ModelStats
from routewatch.storage.connection import Conn
from routewatch.storage.served_model_queries import served_models


async def served_model_cells(conn: Conn, stats: ModelStats, timeout: float) -> dict[str, dict[str, Any]]:
    """Per served model of ``stats``' model and window: its share of the ok answers, counts and TTFT.

    ``unknown`` holds the probes whose router named no model (most failed
    probes); ``other`` the names past the most common ones.
    """
    rows = await served_models(conn, stats.router, stats.model, stats.window_start, stats.window_end, timeout=timeout)
    cells: dict[str, dict[str, Any]] = {}
    if not rows:
        return cells
    all_ok = int(rows[0]["all_ok"])
    for r in rows:
        cells[r["model_served"] or UNKNOWN] = _cell(r["attempted"], r["ok"], all_ok, r["ttft_p50"], r["ttft_p95"])
    rest_attempted = int(rows[0]["all_attempted"]) - sum(r["attempted"] for r in rows)
    if rest_attempted > 0:
        rest_ok = all_ok - sum(r["ok"] for r in rows)
        cells[OTHER] = _cell(rest_attempted, rest_ok, all_ok, None, None)
    return cells


def _cell(attempted: int, ok: int, all_ok: int, p50: float | None, p95: float | None) -> dict[str, Any]:
    return {
        "share": round(ok / all_ok, 4) if all_ok else None,
        "samples": {"attempted": attempted, "ok": ok},
        "ttft_p50_ms": None if p50 is None else round(p50, 1),
        "ttft_p95_ms": None if p95 is None else round(p95, 1),
    }
