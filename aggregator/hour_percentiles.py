"""The hourly rollup made SQL-readable: counts and percentiles per hour, model and scope.

``probe_hist_hourly`` stores its latency distributions as binary histograms
(``sketch.Histogram``) that only routewatch decodes; Grafana's SQL cannot.
``probe_percentiles_hourly`` (migration 0009) holds, for each hour and
(router, model), what a dashboard reads: attempts, outcomes, failures by
error class, tokens, TTFT p50/p95/p99, TTFAT p50/p95, tok/s p50 and a coarse
TTFT distribution (:data:`TTFT_HEATMAP_BOUNDS_MS`), at four scopes
(:data:`SCOPES`). Percentiles cannot be merged in SQL, so every scope is
computed here from the merged histograms, the way the published stats are.

:func:`percentile_rows` turns complete hourly rows (every series of the
(router, model) and hour in question) into the table's records; the rollup
refresh writes them in the transaction that writes the hourly rows.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from routewatch.aggregator.provider_cap import provider_label
from routewatch.aggregator.sketch import Histogram, bucket_values, quantile_table

if TYPE_CHECKING:
    from routewatch.aggregator.rollup import HourRow

# Rows per (router, model) and hour: one per (provider, region), per provider,
# per region, and the model as a whole. ``ALL`` fills the dimension a scope merges.
SCOPES = ("series", "provider", "region", "model")
ALL = "*"

# Upper bounds (ms) of the TTFT distribution's cells; one more cell counts the rest.
# Doubling from 25 ms: fine where routers answer, coarse in the tail.
TTFT_HEATMAP_BOUNDS_MS = tuple(25.0 * 2**i for i in range(12))
_BOUNDS = np.array(TTFT_HEATMAP_BOUNDS_MS)

# probe_percentiles_hourly's columns, in the order of the records below (COPY writes this order).
PERCENTILE_COLUMNS = (
    "bucket",
    "router",
    "model",
    "scope",
    "provider",
    "region",
    "attempts",
    "ok",
    "failures",
    "rate_limited",
    "overloaded",
    "errors",
    "input_tokens",
    "output_tokens",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "ttft_p99_ms",
    "ttfat_p50_ms",
    "ttfat_p95_ms",
    "tps_p50",
    "ttft_counts",
)

# (bucket, router, model, scope, provider, region): one record's key.
PercentileKey = tuple[datetime, str, str, str, str, str]


def scope_keys(h: HourRow) -> list[PercentileKey]:
    """The four records an hourly row counts in."""
    provider = provider_label(h.provider)
    head = (h.bucket, h.router, h.model)
    return [
        (*head, "series", provider, h.region),
        (*head, "provider", provider, ALL),
        (*head, "region", ALL, h.region),
        (*head, "model", ALL, ALL),
    ]


def ttft_counts(h: Histogram) -> list[int]:
    """How many values of ``h`` fall at or below each bound of :data:`TTFT_HEATMAP_BOUNDS_MS`
    (and above the previous one), then how many above the last: ``len(bounds) + 1`` cells."""
    cells = np.zeros(_BOUNDS.size + 1, dtype=np.int64)
    cells[0] += h.zeros
    if h.counts.size:
        values = bucket_values(np.arange(h.offset, h.offset + h.counts.size, dtype=np.int64))
        np.add.at(cells, np.searchsorted(_BOUNDS, values, side="left"), h.counts)
    return [int(c) for c in cells]


def percentile_rows(rows: Sequence[HourRow]) -> list[tuple[Any, ...]]:
    """probe_percentiles_hourly records (in :data:`PERCENTILE_COLUMNS` order) of ``rows``.

    ``rows`` must hold every hourly row of each (hour, router, model) it
    touches: a scope's record is computed from the rows given, and replaces
    whatever the table held for that key.
    """
    groups: dict[PercentileKey, list[HourRow]] = defaultdict(list)
    for h in rows:
        for key in scope_keys(h):
            groups[key].append(h)
    keys = list(groups)
    members = [groups[k] for k in keys]
    ttft = quantile_table([[h.ttft for h in g] for g in members], (0.5, 0.95, 0.99))
    ttfat = quantile_table([[h.ttfat for h in g] for g in members], (0.5, 0.95))
    tps = quantile_table([[h.tps for h in g] for g in members], (0.5,))
    out = []
    for i, (key, group) in enumerate(zip(keys, members, strict=True)):
        errors: dict[str, int] = defaultdict(int)
        for h in group:
            for cls, n in h.errors.items():
                errors[cls] += n
        attempts = sum(h.attempts for h in group)
        ok = sum(h.ok for h in group)
        out.append(
            (
                *key,
                attempts,
                ok,
                attempts - ok,
                sum(h.rate_limited for h in group),
                sum(h.overloaded for h in group),
                json.dumps(dict(sorted(errors.items()))),
                sum(h.input_tokens for h in group),
                sum(h.output_tokens for h in group),
                ttft.value(i, 0),
                ttft.value(i, 1),
                ttft.value(i, 2),
                ttfat.value(i, 0),
                ttfat.value(i, 1),
                tps.value(i, 0),
                ttft_counts(Histogram.merge_all(h.ttft for h in group)),
            )
        )
    return out
