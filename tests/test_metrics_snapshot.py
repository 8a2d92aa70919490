"""The per-refresh part of /metrics, written straight in the text format: which windows, and how it reads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from routewatch.aggregator.publish.metrics_snapshot import BREAKDOWNS, MODEL_GAUGES, MetricsExport, render_stats
from routewatch.aggregator.refresh import Snapshot
from routewatch.aggregator.stats import ModelStats, WindowCounts

pytestmark = pytest.mark.unit


def _samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample, parsed by prometheus_client's own parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
    }


def test_without_aggregator_metrics_the_shortest_window_of_the_snapshot_is_exported() -> None:
    """create_app's default (no probes.yaml at hand) exports the snapshot's shortest window, however
    the windows are named and ordered, and writes label values and numbers as the text format
    requires (read back here by prometheus_client's parser)."""
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    model = 'odd"model\\name'
    windows = ("7d", "90m", "24h")
    # 12,345,678 tokens: written in Go's e-notation, as prometheus_client writes it.
    counts = WindowCounts("sim", model, 10, 9, 0, 0, 120.0, 300.0, 130.0, 310.0, 50.0, 12_345_678, 200, now, now)
    snapshot = Snapshot(
        now,
        windows,
        (("sim", model),),
        {w: {("sim", model): ModelStats("sim", model, w, now, now, now, counts)} for w in windows},
    )
    default = _samples(render_stats(snapshot))
    labels = frozenset({"router": "sim", "model": model, "window": "90m"}.items())
    assert len(default) == MODEL_GAUGES and {dict(ls)["window"] for _, ls in default} == {"90m"}
    assert default[("routewatch_window_probes_attempted", labels)] == 10
    assert default[("routewatch_ttft_p95_seconds", labels)] == 0.3
    assert default[("routewatch_window_input_tokens", labels)] == 12_345_678
    assert b" 1.2345678e+07\n" in render_stats(snapshot)
    everything = _samples(render_stats(snapshot, MetricsExport(windows, BREAKDOWNS)))
    assert {dict(ls)["window"] for _, ls in everything} == set(windows)
    assert default.items() <= everything.items()
