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
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from routewatch.aggregator.provider_cap import provider_label
from routewatch.aggregator.sketch import MAX_INDEX, MIN_INDEX, Histogram, bucket_values, quantile_table

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


# For every bucket index of the sketch, the TTFT cell its values fall in (by the bucket's
# representative value): one lookup per histogram instead of a search.
_CELL_OF_INDEX = np.searchsorted(_BOUNDS, bucket_values(np.arange(MIN_INDEX, MAX_INDEX + 1)), side="left")
_CELLS = _BOUNDS.size + 1


def ttft_counts(h: Histogram) -> list[int]:
    """How many values of ``h`` fall at or below each bound of :data:`TTFT_HEATMAP_BOUNDS_MS`
    (and above the previous one), then how many above the last: ``len(bounds) + 1`` cells."""
    return [int(c) for c in _cells(h)]


def _cells(h: Histogram) -> npt.NDArray[np.int64]:
    cells = np.zeros(_CELLS, dtype=np.int64)
    cells[0] = h.zeros
    if h.counts.size:
        at = h.offset - MIN_INDEX
        cells += np.bincount(_CELL_OF_INDEX[at : at + h.counts.size], weights=h.counts, minlength=_CELLS).astype(
            np.int64
        )
    return cells


def _cells_of_rows(hists: Sequence[Histogram]) -> npt.NDArray[np.int64]:
    """:func:`_cells` of each histogram, (len(hists), cells), with one bincount for them all."""
    out = np.zeros((len(hists), _CELLS), dtype=np.int64)
    if not hists:
        return out
    out[:, 0] = [h.zeros for h in hists]
    sizes = np.fromiter((h.counts.size for h in hists), np.int64, len(hists))
    if sizes.sum():
        offsets = np.fromiter((h.offset for h in hists), np.int64, len(hists)) - MIN_INDEX
        row = np.repeat(np.arange(len(hists)), sizes)
        # Bucket index of each count: its row's offset plus its place within the row.
        place = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        cell = _CELL_OF_INDEX[np.repeat(offsets, sizes) + place]
        counts = np.concatenate([h.counts for h in hists])
        out += (
            np.bincount(row * _CELLS + cell, weights=counts, minlength=len(hists) * _CELLS)
            .astype(np.int64)
            .reshape(len(hists), _CELLS)
        )
    return out


def percentile_rows(rows: Sequence[HourRow]) -> list[tuple[Any, ...]]:
    """probe_percentiles_hourly records (in :data:`PERCENTILE_COLUMNS` order) of ``rows``.

    ``rows`` must hold every hourly row of each (hour, router, model) it
    touches: a scope's record is computed from the rows given, and replaces
    whatever the table held for that key. A scope made of the very same rows
    as another (a model served by one provider, probed from one region: the
    common case, where all four scopes are one) is computed once.
    """
    groups: dict[PercentileKey, list[int]] = defaultdict(list)
    for i, h in enumerate(rows):
        for key in scope_keys(h):
            groups[key].append(i)
    unique: dict[tuple[int, ...], int] = {}
    slot: dict[PercentileKey, int] = {}
    for key, indices in groups.items():
        slot[key] = unique.setdefault(tuple(indices), len(unique))
    members = [[rows[i] for i in m] for m in unique]
    ttft = quantile_table([[h.ttft for h in g] for g in members], (0.5, 0.95, 0.99))
    ttfat = quantile_table([[h.ttfat for h in g] for g in members], (0.5, 0.95))
    tps = quantile_table([[h.tps for h in g] for g in members], (0.5,))
    row_cells = _cells_of_rows([h.ttft for h in rows])
    records = [
        (
            *_counts(group),
            ttft.value(g, 0),
            ttft.value(g, 1),
            ttft.value(g, 2),
            ttfat.value(g, 0),
            ttfat.value(g, 1),
            tps.value(g, 0),
            row_cells[list(ids)].sum(axis=0).tolist(),
        )
        for g, (ids, group) in enumerate(zip(unique, members, strict=True))
    ]
    return [(*key, *records[g]) for key, g in slot.items()]


class RowTotals(NamedTuple):
    """The counters of hourly rows added up."""

    attempts: int
    ok: int
    rate_limited: int
    overloaded: int
    input_tokens: int
    output_tokens: int


def row_totals(rows: Iterable[HourRow]) -> RowTotals:
    """The counters of ``rows`` added up (the published cells and the percentile rows share it)."""
    attempts = ok = rate_limited = overloaded = tokens_in = tokens_out = 0
    for h in rows:
        attempts += h.attempts
        ok += h.ok
        rate_limited += h.rate_limited
        overloaded += h.overloaded
        tokens_in += h.input_tokens
        tokens_out += h.output_tokens
    return RowTotals(attempts, ok, rate_limited, overloaded, tokens_in, tokens_out)


def _counts(group: Sequence[HourRow]) -> tuple[Any, ...]:
    """(attempts, ok, failures, rate_limited, overloaded, errors as JSON, input tokens, output tokens) of ``group``."""
    errors: dict[str, int] = defaultdict(int)
    for h in group:
        for cls, n in h.errors.items():
            errors[cls] += n
    t = row_totals(group)
    return (
        t.attempts,
        t.ok,
        t.attempts - t.ok,
        t.rate_limited,
        t.overloaded,
        json.dumps(dict(sorted(errors.items()))),
        t.input_tokens,
        t.output_tokens,
    )
