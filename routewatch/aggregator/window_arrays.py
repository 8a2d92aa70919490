"""Window figures kept as arrays over all cells: a refresh pays for what it adds.

``sliding.SlidingWindows`` keeps, per window and cell, the sum of the
window's complete hours; a window's figures are that sum plus the current
hour's rows. Merging the two into histogram objects and laying every cell's
counts out again at every refresh costs a second at 10,000 series, though
between two refreshes of one hour only the minute's new probes change.

:class:`WindowArrays` keeps each window's *totals* (the sums plus the current
hour) instead, per histogram metric as one flat array holding every cell's
bucket counts side by side, each cell's span widened by :data:`ROOM` buckets
on both sides. Cells with the same figures share a slot: a breakdown cell
whose sum is its model cell's (``SlidingWindows`` aliases) and whose current
rows are its model cell's (one provider, one region: the common case).

* :meth:`WindowArrays.compile` lays everything out from the sums and the
  current hour's rows: when the sums change (the hour turns, an earlier hour
  is recomputed, a rebuild), after a standby's follow, when a series is new
  in the hour, and when slots moved (below) left half an array unused.
* :meth:`WindowArrays.add` adds what a refresh took into the current hour
  (``RefreshReport.added``: per series, the row of its new probes) to the
  slots of its cells: an ``np.add.at`` of a few values per series. A slot
  whose span a new value falls outside moves to a wider span at the end of
  the array.
* :meth:`WindowArrays.stats` computes every percentile of every slot of
  every window from one cumulative sum per window and metric
  (``sketch.quantiles_of_layout``), and the counts from the sums' and the
  current rows' counts with ``np.bincount``.

The figures are exactly those of ``rollup.cells_stats`` on the same rows
(integer additions in another order; tests/test_window_arrays.py and
tests/test_sliding.py check it). A window where ``provider_cap.cap_cells``
would move provider cells into ``other`` (rows stored under a higher limit)
is not laid out: :meth:`compile` returns False and the caller merges the
rows as before. Pure: numpy and the rollup's types, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from routewatch.aggregator.provider_cap import is_named
from routewatch.aggregator.rollup import (
    CellKey,
    HourRow,
    cell_keys,
    errors_and_span,
    quantile_columns,
    retry_stats,
)
from routewatch.aggregator.sketch import MAX_INDEX, MIN_INDEX, Histogram, quantiles_of_layout
from routewatch.aggregator.stats import CellStats, WindowCounts
from routewatch.config.tiers import DEFAULT_TIER

# Buckets of room on each side of a cell's span (about 60% of the value each
# way): new probes of the current hour mostly land inside it, so slots seldom
# move to a wider span.
ROOM = 48

METRICS = ("ttft", "ttfat", "tps", "ttft_first", "ttft_retried")
QUANTILES = {
    "ttft": (0.5, 0.95),
    "ttfat": (0.5, 0.95),
    "tps": (0.5,),
    "ttft_first": (0.5, 0.95),
    "ttft_retried": (0.5, 0.95),
}
_COUNTS = (
    "attempts",
    "ok",
    "rate_limited",
    "overloaded",
    "input_tokens",
    "output_tokens",
    "reported_ok",
    "retried",
    "calls",
    "calls_failed",
)

Ints = npt.NDArray[np.int64]


@dataclass(slots=True)
class _Layout:
    """One metric of one window: every slot's bucket counts side by side in ``flat``."""

    lo: Ints  # per slot, the bucket at the start of its span
    starts: Ints  # per slot, where its span starts in flat
    width: Ints  # per slot, buckets in its span
    flat: npt.NDArray[np.int32]
    zeros: Ints  # per slot, values <= 0
    dead: int = 0  # buckets of flat no slot uses any more (slots moved to wider spans)


@dataclass(slots=True)
class _Window:
    """One window's slots: which cells share one, what each holds, their histograms."""

    keys: list[CellKey]  # every cell published in the window, in rollup.cells_stats' order
    slot_of: list[int]  # per key, its slot
    base: list[HourRow | None]  # per slot, the sum of the complete hours (None: current rows only)
    pair_row: Ints  # (current row, slot) pairs: the slots each current row belongs to
    pair_slot: Ints
    layouts: dict[str, _Layout]
    base_counts: dict[str, Ints]  # per _COUNTS name, per slot, the sum's count
    rowset: list[int]  # per slot, its current rows (an index into WindowArrays' row sets)
    key_of: list[CellKey]  # per slot, the first key in it (its router and model are every key's)

    @property
    def slots(self) -> int:
        return len(self.base)


class WindowArrays:
    """Per window, the totals of every cell kept as arrays (see the module docstring)."""

    def __init__(self, max_providers: int, headline_tier: str = DEFAULT_TIER) -> None:
        """``max_providers``: named provider cells per model at most (``provider_cap.cap_cells``);
        ``headline_tier``: the prompt tier of the model cells (``rollup.cell_keys``)."""
        self._max_providers = max_providers
        self._headline_tier = headline_tier
        self._windows: dict[str, _Window] = {}
        self._rowsets: dict[tuple[int, ...], int] = {}  # indices of current rows -> row set id
        self.rows: tuple[HourRow, ...] | None = None  # the current hour's rows the totals hold; None: none
        self.compiles = 0  # how often the totals were laid out from scratch

    def compile(
        self,
        sums: Mapping[str, Mapping[CellKey, HourRow]],
        aliases: Mapping[str, set[CellKey]],
        rows: tuple[HourRow, ...],
    ) -> bool:
        """Lay out every window's totals: ``sums`` (per window, per cell, the complete hours;
        the ``aliases`` of a window take their model cell's sum) plus the current hour's
        ``rows``. False, and nothing kept, when a window's provider cells would be capped."""
        self.rows = None
        self._windows = {}
        self._rowsets = {}
        current: dict[CellKey, list[int]] = {}
        for i, h in enumerate(rows):
            for key in cell_keys(h, self._headline_tier):
                current.setdefault(key, []).append(i)
        windows = {}
        for name, window_sums in sums.items():
            window = self._lay_out(window_sums, aliases.get(name, set()), current, rows)
            if window is None:
                return False
            windows[name] = window
        self._windows = windows
        self.rows = rows
        self.compiles += 1
        return True

    def _lay_out(
        self,
        sums: Mapping[CellKey, HourRow],
        aliases: set[CellKey],
        current: Mapping[CellKey, list[int]],
        rows: Sequence[HourRow],
    ) -> _Window | None:
        keys = [*sums, *(key for key in current if key not in sums)]
        named: dict[tuple[str, str], int] = {}
        for key in keys:
            if len(key) == 4 and key[2] == "provider" and is_named(key[3]):
                named[key[:2]] = named.get(key[:2], 0) + 1
        if any(n > self._max_providers for n in named.values()):
            return None
        seen: dict[tuple[Any, ...], int] = {}
        slot_of: list[int] = []
        base: list[HourRow | None] = []
        rowset: list[int] = []
        key_of: list[CellKey] = []
        pair_row: list[int] = []
        pair_slot: list[int] = []
        for key in keys:
            row = sums[key[:2]] if key in aliases else sums.get(key)
            members = tuple(current.get(key, ()))
            signature = (key[0], key[1], id(row), members)
            slot = seen.get(signature)
            if slot is None:
                slot = seen[signature] = len(base)
                base.append(row)
                rowset.append(self._rowsets.setdefault(members, len(self._rowsets)))
                key_of.append(key)
                pair_row.extend(members)
                pair_slot.extend([slot] * len(members))
            slot_of.append(slot)
        window = _Window(
            keys,
            slot_of,
            base,
            np.array(pair_row, dtype=np.int64),
            np.array(pair_slot, dtype=np.int64),
            {},
            {
                name: np.fromiter((getattr(b, name) if b is not None else 0 for b in base), np.int64, len(base))
                for name in _COUNTS
            },
            rowset,
            key_of,
        )
        base_slots = np.flatnonzero(np.array([b is not None for b in base], dtype=bool))
        member_slot = np.concatenate([base_slots, window.pair_slot])
        for metric in METRICS:
            hists = [getattr(base[s], metric) for s in base_slots.tolist()]
            hists += [getattr(rows[i], metric) for i in pair_row]
            window.layouts[metric] = _layout(len(base), member_slot, _Hists.of(hists))
        return window

    def add(self, rows: tuple[HourRow, ...], added: Sequence[tuple[int, HourRow]]) -> bool:
        """The current hour's rows are now ``rows``: those the totals held, with ``added``
        (per series, its index in ``rows`` and the row of its new probes) added in.

        A slot whose span a new value falls outside moves to a wider span at the end
        of its flat array. False, and the totals no longer usable (the caller compiles),
        when a series is new in the hour or moved slots left most of an array unused.
        """
        held = self.rows
        self.rows = None
        if held is None or len(rows) != len(held) or any(i >= len(held) for i, _ in added):
            return False
        if any(layout.dead * 2 > layout.flat.size for w in self._windows.values() for layout in w.layouts.values()):
            return False
        if not added:
            self.rows = rows
            return True
        at = np.fromiter((i for i, _ in added), np.int64, len(added))
        batches = {metric: _Hists.of([getattr(h, metric) for _, h in added]) for metric in METRICS}
        for window in self._windows.values():
            # The slots of each added row: the pairs of its index, found in pair_row.
            order = np.argsort(window.pair_row, kind="stable")
            sorted_rows = window.pair_row[order]
            first = np.searchsorted(sorted_rows, at, side="left")
            last = np.searchsorted(sorted_rows, at, side="right")
            per = last - first
            which = np.repeat(np.arange(at.size), per)  # index into added
            slots = window.pair_slot[order[np.repeat(first - np.cumsum(per) + per, per) + np.arange(per.sum())]]
            for metric in METRICS:
                _add(window.layouts[metric], slots, batches[metric], which)
        self.rows = rows
        return True

    def stats(self) -> dict[str, dict[CellKey, CellStats]]:
        """Per window, the CellStats of every cell (what ``rollup.cells_stats`` gives for the
        same rows); cells sharing a slot share one CellStats."""
        rows = self.rows
        if rows is None:
            raise RuntimeError("WindowArrays.stats before compile")
        now_counts = {name: np.fromiter((getattr(h, name) for h in rows), np.int64, len(rows)) for name in _COUNTS}
        now_rest = [errors_and_span(rows[i] for i in members) for members in self._rowsets]
        out: dict[str, dict[CellKey, CellStats]] = {}
        for name, window in self._windows.items():
            cells = _window_stats(window, now_counts, now_rest)
            out[name] = {key: cells[slot] for key, slot in zip(window.keys, window.slot_of, strict=True)}
        return out


@dataclass(frozen=True, slots=True)
class _Hists:
    """Many histograms as arrays: item ``k`` has ``zeros[k]`` values <= 0 and the bucket
    counts ``values[begin[k] : begin[k] + sizes[k]]`` from bucket ``offsets[k]`` on."""

    offsets: Ints
    sizes: Ints
    zeros: Ints
    begin: Ints
    values: npt.NDArray[np.int32]

    @classmethod
    def of(cls, hists: Sequence[Histogram]) -> _Hists:
        n = len(hists)
        counts = [h.counts for h in hists]
        sizes = np.fromiter((c.size for c in counts), np.int64, n)
        return cls(
            np.fromiter((h.offset for h in hists), np.int64, n),
            sizes,
            np.fromiter((h.zeros for h in hists), np.int64, n),
            np.cumsum(sizes) - sizes,
            np.concatenate(counts).astype(np.int32) if n else np.zeros(0, dtype=np.int32),
        )


def _layout(slots: int, member_slot: Ints, members: _Hists) -> _Layout:
    """Slot ``member_slot[k]`` holding ``members``' item ``k``, each slot's span widened by ROOM."""
    filled = members.sizes > 0
    lo = np.full(slots, MAX_INDEX + 1, dtype=np.int64)
    hi = np.full(slots, MIN_INDEX, dtype=np.int64)
    np.minimum.at(lo, member_slot[filled], members.offsets[filled])
    np.maximum.at(hi, member_slot[filled], (members.offsets + members.sizes)[filled])
    used = hi > lo
    lo = np.where(used, np.maximum(lo - ROOM, MIN_INDEX), 0)
    hi = np.where(used, np.minimum(hi + ROOM, MAX_INDEX + 1), 0)
    width = hi - lo
    layout = _Layout(
        lo, np.cumsum(width) - width, width, np.zeros(int(width.sum()), dtype=np.int32), np.zeros(slots, dtype=np.int64)
    )
    _place(layout, member_slot, members, np.arange(member_slot.size))
    return layout


def _place(layout: _Layout, slots: Ints, batch: _Hists, items: Ints) -> None:
    """Add ``batch``'s item ``items[k]`` into slot ``slots[k]`` (whose span holds its buckets)."""
    np.add.at(layout.zeros, slots, batch.zeros[items])
    sizes = batch.sizes[items]
    filled = sizes > 0
    slots, items, sizes = slots[filled], items[filled], sizes[filled]
    first = layout.starts[slots] + batch.offsets[items] - layout.lo[slots]
    step = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    np.add.at(layout.flat, np.repeat(first, sizes) + step, batch.values[np.repeat(batch.begin[items], sizes) + step])


def _add(layout: _Layout, slots: Ints, batch: _Hists, items: Ints) -> None:
    """:func:`_place`, moving first the slots an item does not fit into."""
    o, n = batch.offsets[items], batch.sizes[items]
    outside = (n > 0) & ((o < layout.lo[slots]) | (o + n > layout.lo[slots] + layout.width[slots]))
    if outside.any():
        _widen(layout, slots[outside], o[outside], (o + n)[outside])
    _place(layout, slots, batch, items)


def _widen(layout: _Layout, slots: Ints, lo: Ints, hi: Ints) -> None:
    """Move ``slots`` to new spans at the end of ``flat``, wide enough for buckets ``lo[k]`` to
    ``hi[k] - 1`` of slot ``slots[k]`` and ROOM more on each side; their old spans are zeroed."""
    moved, at = np.unique(slots, return_inverse=True)
    new_lo = layout.lo[moved].copy()
    new_hi = new_lo + layout.width[moved]
    empty = layout.width[moved] == 0
    new_lo[empty], new_hi[empty] = MAX_INDEX + 1, MIN_INDEX
    np.minimum.at(new_lo, at, lo)
    np.maximum.at(new_hi, at, hi)
    new_lo = np.maximum(new_lo - ROOM, MIN_INDEX)
    new_hi = np.minimum(new_hi + ROOM, MAX_INDEX + 1)
    width = new_hi - new_lo
    old_start, old_width = layout.starts[moved], layout.width[moved]
    new_start = layout.flat.size + np.cumsum(width) - width
    flat = np.zeros(layout.flat.size + int(width.sum()), dtype=layout.flat.dtype)
    flat[: layout.flat.size] = layout.flat
    begin = np.cumsum(old_width) - old_width
    step = np.arange(int(old_width.sum())) - np.repeat(begin, old_width)
    source = np.repeat(old_start, old_width) + step
    flat[np.repeat(new_start + layout.lo[moved] - new_lo, old_width) + step] = flat[source]
    flat[source] = 0
    layout.flat = flat
    layout.lo[moved], layout.starts[moved], layout.width[moved] = new_lo, new_start, width
    layout.dead += int(old_width.sum())


_Rest = tuple[dict[str, int], datetime | None, datetime | None]  # errors, first and last probe


def _window_stats(window: _Window, now_counts: Mapping[str, Ints], now_rest: Sequence[_Rest]) -> list[CellStats]:
    """Per slot of ``window``, its CellStats: its sum's counts plus those of its current rows
    (``now_counts`` per row, ``now_rest`` per row set), and its percentiles."""
    n = window.slots
    counts = {}
    for name in _COUNTS:
        now = np.bincount(window.pair_slot, weights=now_counts[name][window.pair_row], minlength=n)
        counts[name] = (window.base_counts[name] + now.astype(np.int64)).tolist()
    tables = {
        metric: quantile_columns(
            quantiles_of_layout(
                np.cumsum(layout.flat, dtype=np.int64),
                layout.starts,
                layout.lo,
                layout.width,
                layout.zeros,
                QUANTILES[metric],
            )
        )
        for metric, layout in window.layouts.items()
    }
    out = []
    ttft, ttfat, tps = tables["ttft"], tables["ttfat"], tables["tps"]
    attempts, ok, rate_limited, overloaded = (counts[k] for k in _COUNTS[:4])
    tokens_in, tokens_out = counts["input_tokens"], counts["output_tokens"]
    for s, (key, base, rowset) in enumerate(zip(window.key_of, window.base, window.rowset, strict=True)):
        now_errors, first, last = now_rest[rowset]
        errors = now_errors
        if base is not None:
            errors = dict(base.errors)
            for cls, k in now_errors.items():
                errors[cls] = errors.get(cls, 0) + k
            if base.first is not None and (first is None or base.first < first):
                first = base.first
            if base.last is not None and (last is None or base.last > last):
                last = base.last
        (ttft_p50, ttft_p50_ci), (ttft_p95, ttft_p95_ci) = ttft[s]
        (ttfat_p50, ttfat_p50_ci), (ttfat_p95, ttfat_p95_ci) = ttfat[s]
        ((tps_p50, tps_p50_ci),) = tps[s]
        totals = (counts["reported_ok"][s], counts["retried"][s], counts["calls"][s], counts["calls_failed"][s])
        retries = retry_stats(totals, tables["ttft_first"][s], tables["ttft_retried"][s])
        cell_counts = WindowCounts(
            key[0],
            key[1],
            attempts[s],
            ok[s],
            rate_limited[s],
            overloaded[s],
            ttft_p50,
            ttft_p95,
            ttfat_p50,
            ttfat_p95,
            tps_p50,
            tokens_in[s],
            tokens_out[s],
            first,
            last,
        )
        out.append(
            CellStats(
                cell_counts,
                dict(sorted((k, v) for k, v in errors.items() if v)),
                ttft_p50_ci,
                ttft_p95_ci,
                ttfat_p50_ci,
                ttfat_p95_ci,
                tps_p50_ci,
                retries,
            )
        )
    return out
