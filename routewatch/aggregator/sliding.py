"""Sliding windows kept in memory: a refresh costs the same at any window length.

``rollup.window_stats`` reads and merges every hourly row of the longest
window at each refresh: 1,000 series x 169 hours is 169,000 rows of three
histograms, seconds of work that does not change from one refresh to the
next. The leading aggregator keeps instead, per window and per cell, the sum
of the window's *complete* hours (``[floor_hour(now) - n h, floor_hour(now))``)
and changes it only by what changed:

* the current hour is not in the sums: each refresh takes its rows from
  ``refresh_hist``'s report, which carries them;
* when ``refresh_hist`` recomputes an earlier hour (late rows, a spool
  replayed after an outage), its report also carries the rows it replaced:
  the sums lose the old rows and gain the new ones;
* when the hour turns, each window gains the hour that just completed and
  loses the one that slid out, both read from the table (two hours of rows).

A window's figures are its sums plus the current hour's rows, kept as
arrays over all cells (``window_arrays.WindowArrays``): a leader's refresh
adds the probes it took in (``RefreshReport.added``), a standby's follow what
each series gained, and every percentile of every cell comes from one
cumulative sum per window and metric. Where ``provider_cap.cap_cells`` would
move provider cells into ``other``, the rows are merged per cell as
``window_stats`` does. The longest window's provider cells are
also what the next ``refresh_hist`` is told were admitted
(``KnownHour.providers``), so it need not read them back. The result is the same as
``window_stats`` on the same table (tests/test_sliding.py checks it through
hour turns, late rows and retention).

The copy must never drift from the table. Every transaction that changes
``probe_hist_hourly`` bumps a generation counter
(``storage.hist_queries.bump_hist_generation``); a refresh whose
``generation_before`` is not the generation this copy last saw (another
process refreshed in between, or retention deleted hours) rebuilds from the
table, as does the first refresh, any inconsistency (a subtraction that
would go negative) and a catch-up that recomputed too many hours in the
windows for its report to carry their rows (``RefreshReport.rows_omitted``).

A **standby** (an aggregator not holding the refresher lock) keeps the same
sums and follows the leader's changes with :meth:`SlidingWindows.follow`:
triggers record which hours each transaction changed
(``probe_hist_changes``, migration 0008), and a follow reads, in one
snapshot, only the changes its previous snapshot did not see. The current
hour it reads again when it changed; a complete hour the leader recomputed
(late rows) it swaps like the leader does, taking the old rows from the
last :data:`RECENT_HOURS` complete hours it keeps; the hour turning it
handles like the leader. It rebuilds when it cannot tell what changed (first
follow, changes pruned, a TRUNCATE, a recomputed hour older than those it
keeps, time moving back). Its sums are then what the leader's are, so a
standby that takes the lock carries on without reading the table whole.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import asyncpg

from routewatch.aggregator.provider_cap import DEFAULT_MAX_PROVIDERS, SeriesKey, cap_cells
from routewatch.aggregator.rollup import (
    HOUR,
    CellKey,
    HourRow,
    KnownHour,
    RefreshReport,
    cell_keys,
    cells_stats_many,
    combine,
    decode_row,
    encode_row,
    floor_hour,
    series_key,
    window_hours,
)
from routewatch.aggregator.sketch import Histogram
from routewatch.aggregator.stats import CellStats
from routewatch.aggregator.window_arrays import WindowArrays
from routewatch.config.tiers import DEFAULT_TIER
from routewatch.storage import hist_queries
from routewatch.storage.connection import Conn

log = logging.getLogger(__name__)

# An hourly row as the table holds it: a record with hist_queries.HIST_COLUMNS.
StoredRow = asyncpg.Record | Mapping[str, Any]

# A rebuild reads the table this many hours at a time.
REBUILD_CHUNK = 24 * HOUR

# The complete hours whose rows are kept (besides the sums): a follower takes
# the old rows of an hour the leader recomputed from here. The leader
# recomputes the hour just completed at nearly every hour turn (probes started
# before it and stored after it); older ones after an outage, when a spool
# is replayed. A recomputed hour older than these makes a follower rebuild.
RECENT_HOURS = 3


@dataclass(slots=True)
class _CellHours:
    """Per cell, the first and last probe of each complete hour, hours ascending."""

    hours: list[datetime] = field(default_factory=list)
    spans: dict[datetime, tuple[datetime | None, datetime | None]] = field(default_factory=dict)

    def put(self, hour: datetime, first: datetime | None, last: datetime | None) -> None:
        if hour not in self.spans:
            bisect.insort(self.hours, hour)
            self.spans[hour] = (first, last)
            return
        f0, l0 = self.spans[hour]
        self.spans[hour] = (_min(f0, first), _max(l0, last))

    def drop(self, hour: datetime) -> None:
        if self.spans.pop(hour, None) is not None:
            self.hours.pop(bisect.bisect_left(self.hours, hour))

    def first_last(self, start: datetime) -> tuple[datetime | None, datetime | None]:
        """First and last probe of the hours from ``start`` on (probes of an hour lie inside it)."""
        i = bisect.bisect_left(self.hours, start)
        if i == len(self.hours):
            return None, None
        return self.spans[self.hours[i]][0], self.spans[self.hours[-1]][1]


def _min(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def _same_sums(a: HourRow, b: HourRow) -> bool:
    """Whether two sums hold the same figures (what cells_stats reads), labels aside."""
    return (
        (a.attempts, a.ok, a.rate_limited, a.overloaded, a.input_tokens, a.output_tokens, a.rows, a.first, a.last)
        == (b.attempts, b.ok, b.rate_limited, b.overloaded, b.input_tokens, b.output_tokens, b.rows, b.first, b.last)
        and a.errors == b.errors
        and a.ttft == b.ttft
        and a.ttfat == b.ttfat
        and a.tps == b.tps
        and (a.reported_ok, a.retried, a.calls, a.calls_failed) == (b.reported_ok, b.retried, b.calls, b.calls_failed)
        and a.ttft_first == b.ttft_first
        and a.ttft_retried == b.ttft_retried
    )


class SlidingWindows:
    """Per window and cell, the sum of the window's complete hours (see the module docstring)."""

    def __init__(
        self,
        windows: Mapping[str, float],
        max_providers: int = DEFAULT_MAX_PROVIDERS,
        headline_tier: str = DEFAULT_TIER,
    ) -> None:
        """``windows``: name -> length in seconds, hour-aligned like ``rollup.window_start``;
        ``max_providers``: named provider cells per model at most (``provider_cap.cap_cells``);
        ``headline_tier``: the prompt tier of the model cells (``rollup.cell_keys``)."""
        self._headline_tier = headline_tier
        self._lengths = {name: window_hours(seconds) for name, seconds in windows.items()}
        self._longest = max(self._lengths.values(), default=1)
        self._keep = min(RECENT_HOURS, self._longest)
        self._max_providers = max_providers
        self._current: datetime | None = None  # the hour the sums are aligned to
        self._generation: int | None = None
        self._sums: dict[str, dict[CellKey, HourRow]] = {}
        self._cells: dict[CellKey, _CellHours] = {}
        self._now_rows: tuple[HourRow, ...] = ()  # the current hour, from the last report
        # The rows of the complete hours [current - _keep h, current), as the table holds them,
        # kept encoded: a decoded row's histograms take about eight times the memory.
        self._recent: dict[datetime, list[StoredRow]] = {}
        # What the table looked like when the sums were last brought to it (None: unknown).
        self._position: hist_queries.Position | None = None
        # Per window, the breakdown cells whose sums equal their model cell's (one provider,
        # one region): stats() hands cells_stats the model's sum object for them, so their
        # figures are computed once (see rollup.cells_stats).
        self._aliases: dict[str, set[CellKey]] = {}
        # Per window, the sums plus the current hour as arrays over all cells: what stats() reads.
        self._arrays = WindowArrays(max_providers, headline_tier)
        self.rebuilds = 0  # how often the sums were read from the table whole
        self.follows = 0  # how often they followed the table without a rebuild

    @property
    def array_compiles(self) -> int:
        """How often the windows' arrays were laid out from scratch rather than added to
        (``window_arrays.WindowArrays``)."""
        return self._arrays.compiles

    def forget(self) -> None:
        """Drop everything (leadership lost): the next update rebuilds."""
        self._generation = None
        self._current = None
        self._sums = {}
        self._cells = {}
        self._now_rows = ()
        self._aliases = {}
        self._recent = {}
        self._position = None
        self._arrays.rows = None

    async def update(self, conn: Conn, report: RefreshReport) -> None:
        """Bring the sums to ``report``: the refresh_hist that has just run on ``conn``."""
        current = floor_hour(report.now)
        in_step = (
            self._current is not None
            and self._generation == report.generation_before
            and self._current <= current < self._current + self._longest * HOUR
        )
        if in_step and report.rows_omitted and report.hours[-1] >= self._current - self._longest * HOUR:  # type: ignore[operator]
            in_step = False  # a long catch-up did not carry the rows it changed in the windows: read the table
        held = self._now_rows
        try:
            if in_step:
                self._replace_rows(report.replaced, report.written)
                self._renew_recent(report.hours, [stored(h) for h in report.written if h.bucket in self._recent])
                if current > self._current:  # type: ignore[operator]
                    await self._advance(conn, current)
        except ValueError as exc:
            log.warning("sliding windows inconsistent with the rollup (%s): rebuilding", exc)
            in_step = False
        if not in_step:
            await self._rebuild(conn, current)
        self._generation = report.generation
        self._now_rows = report.current
        # The arrays hold the sums as they stood and the hour's rows as the refresh found them
        # (nothing changed the sums, which drops them): add the minute's probes.
        if self._arrays.rows is held and held and report.added is not None:
            self._arrays.add(report.current, report.added)
        self._position = None  # until note_position finds where the table stands

    async def note_position(self, conn: Conn) -> None:
        """After :meth:`update`: remember where the table stands, so that a later
        :meth:`follow` (this process no longer leading) reads only what changed after.

        The sums are the table as the refresh left it; if the generation has moved
        on since, another process changed the table meanwhile, and a later follow rebuilds.
        """
        async with hist_queries.follow_transaction(conn):
            position = await hist_queries.position(conn)
        self._position = position if position.generation == self._generation else None

    async def follow(self, conn: Conn, now: datetime) -> None:
        """Standby: bring the sums to the table as it stands, aligned to ``now``'s hour.

        Reads, in one snapshot, the hours changed since the previous follow (or
        :meth:`note_position`) and only those rows; rebuilds when it cannot tell
        what changed (see the module docstring).
        """
        current = floor_hour(now)
        try:
            async with hist_queries.follow_transaction(conn):
                position = await hist_queries.position(conn)
                followed = False
                if (
                    self._position is not None
                    and self._current is not None
                    and self._current <= current < self._current + self._longest * HOUR
                ):
                    changed = await hist_queries.hours_changed_since(conn, self._position, position)
                    try:
                        followed = changed is not None and await self._catch_up(conn, current, changed)
                    except ValueError as exc:
                        log.warning("sliding windows inconsistent with the rollup (%s): rebuilding", exc)
                if followed:
                    self.follows += 1
                else:
                    await self._rebuild(conn, current)
                    self._now_rows = tuple(decode_row(r) for r in await hist_queries.rows_of_hour(conn, current))
        except BaseException:
            self.forget()  # part of the sums may have moved: start again from the table
            raise
        self._generation = position.generation
        self._position = position

    async def _catch_up(self, conn: Conn, current: datetime, changed: Sequence[datetime]) -> bool:
        """Apply the ``changed`` hours to the sums; False (sums unusable) when an hour
        in them changed whose old rows are not kept."""
        assert self._current is not None
        previous = self._current
        redone = [h for h in changed if previous - self._longest * HOUR <= h < previous]
        if any(h not in self._recent for h in redone):
            return False
        if redone:
            records = await hist_queries.rows_of_hours(conn, redone)
            old = [decode_row(r) for hour in redone for r in self._recent[hour]]
            self._replace_rows(old, [decode_row(r) for r in records])
            self._renew_recent(redone, records)
        if current > previous:
            await self._advance(conn, current)
        if current > previous or current in changed:
            self._now_rows = self._grown_hour(
                tuple(decode_row(r) for r in await hist_queries.rows_of_hour(conn, current))
            )
        return True

    def _grown_hour(self, rows: tuple[HourRow, ...]) -> tuple[HourRow, ...]:
        """The current hour's ``rows`` read again: in the order of the rows they replace, and,
        when the arrays hold those (nothing else changed the sums), added to the arrays as
        what each series gained (a series' row of the current hour only ever grows)."""
        held = self._now_rows
        if self._arrays.rows is not held or not held:
            return rows
        at = {series_key(h): i for i, h in enumerate(held)}
        ordered: list[HourRow | None] = [None] * len(held)
        new: list[HourRow] = []
        for h in rows:
            i = at.get(series_key(h))
            if i is None:
                new.append(h)
            else:
                ordered[i] = h
        kept = [h for h in ordered if h is not None]
        if new or len(kept) != len(held):  # a series new in the hour (or gone): laid out again
            self._arrays.rows = None
            return (*kept, *new)
        grown = tuple(kept)
        try:
            gained = [
                (i, combine(h, old, -1))
                for i, (old, h) in enumerate(zip(held, grown, strict=True))
                if (h.attempts, h.overloaded) != (old.attempts, old.overloaded)
            ]
        except ValueError:  # a row that shrank: not a gain to add
            self._arrays.rows = None
            return grown
        self._arrays.add(grown, gained)
        return grown

    def known_hour(self) -> KnownHour | None:
        """The current hour's rows as of the last update, for the next refresh_hist."""
        if self._generation is None or self._current is None:
            return None
        return KnownHour(self._generation, self._current, self._now_rows, *self._providers())

    def _providers(self) -> tuple[dict[SeriesKey, frozenset[str]] | None, int]:
        """Per (router, model), the provider cells of the longest window's complete hours, and its length."""
        if not self._sums:
            return None, 0
        longest = max(self._lengths, key=self._lengths.__getitem__)
        found: dict[SeriesKey, set[str]] = {}
        for key in self._sums[longest]:
            if len(key) == 4 and key[2] == "provider":
                found.setdefault((key[0], key[1]), set()).add(key[3])
        return {k: frozenset(v) for k, v in found.items()}, self._lengths[longest]

    def stats(self) -> dict[str, dict[CellKey, CellStats]]:
        """Stats per window per cell: the complete hours' sums plus the current hour's rows.

        From the arrays (``window_arrays``), laid out again when the sums or the hour's
        rows changed otherwise than by an addition; merged from the rows when a window's
        provider cells are capped, which the arrays do not do.
        """
        if self._arrays.rows is not self._now_rows and not self._arrays.compile(
            self._sums, self._aliases, self._now_rows
        ):
            return self._merged_stats()
        return self._arrays.stats()

    def _merged_stats(self) -> dict[str, dict[CellKey, CellStats]]:
        """stats() merged from the rows, provider cells capped (``provider_cap.cap_cells``)."""
        current_by_key: dict[CellKey, list[HourRow]] = {}
        for h in self._now_rows:
            for key in cell_keys(h, self._headline_tier):
                current_by_key.setdefault(key, []).append(h)
        per_window: list[dict[CellKey, Sequence[HourRow]]] = []
        for name, sums in self._sums.items():
            aliases = self._aliases.get(name, set())
            groups: dict[CellKey, list[HourRow]] = {
                key: [sums[key[:2]] if key in aliases else acc] for key, acc in sums.items()
            }
            for key, rows in current_by_key.items():
                groups.setdefault(key, []).extend(rows)
            per_window.append(cap_cells(groups, self._max_providers))
        # One computation of the percentiles for every window at once.
        return dict(zip(self._sums, cells_stats_many(per_window), strict=True))

    # -- keeping the sums ----------------------------------------------

    def _start(self, name: str, current: datetime) -> datetime:
        return current - self._lengths[name] * HOUR

    def _apply(self, rows: Iterable[HourRow], sign: int, windows: Iterable[str]) -> set[tuple[str, CellKey]]:
        touched = set()
        for name in windows:
            sums = self._sums[name]
            for h in rows:
                for key in cell_keys(h, self._headline_tier):
                    acc = sums.get(key)
                    if acc is not None:
                        sums[key] = combine(acc, h, sign)
                    elif sign > 0:
                        sums[key] = h  # a sum of one row is the row (rows are never mutated)
                    else:
                        raise ValueError(f"no sum to take an hour of {key} out of")
                    touched.add((name, key))
        return touched

    def _spans(self, rows: Iterable[HourRow]) -> None:
        for h in rows:
            for key in cell_keys(h, self._headline_tier):
                self._cells.setdefault(key, _CellHours()).put(h.bucket, h.first, h.last)

    def _settle(self, touched: set[tuple[str, CellKey]], current: datetime) -> None:
        """Drop emptied sums; set first/last of the changed ones from the cells' hour spans."""
        self._arrays.rows = None  # the sums change: lay the arrays out again
        for name, key in touched:
            acc = self._sums[name][key]
            if acc.rows == 0:
                del self._sums[name][key]
                continue
            cell = self._cells.get(key)
            first, last = cell.first_last(self._start(name, current)) if cell else (None, None)
            self._sums[name][key] = replace(acc, first=first, last=last)
        for name in {name for name, _ in touched}:
            sums = self._sums[name]
            self._aliases[name] = {
                key for key, acc in sums.items() if len(key) > 2 and key[:2] in sums and _same_sums(acc, sums[key[:2]])
            }

    def _replace_rows(self, old: Iterable[HourRow], new: Iterable[HourRow]) -> None:
        """Whole earlier hours were recomputed: swap their ``old`` rows for the ``new`` ones."""
        assert self._current is not None
        lo = self._current - self._longest * HOUR
        old = [h for h in old if lo <= h.bucket < self._current]
        new = [h for h in new if lo <= h.bucket < self._current]
        if not old and not new:
            return
        touched: set[tuple[str, CellKey]] = set()
        for name in self._sums:
            start = self._start(name, self._current)
            touched |= self._apply([h for h in old if h.bucket >= start], -1, [name])
            touched |= self._apply([h for h in new if h.bucket >= start], +1, [name])
        for h in old:
            for key in cell_keys(h, self._headline_tier):
                if key in self._cells:
                    self._cells[key].drop(h.bucket)
        self._spans(new)
        self._settle(touched, self._current)

    async def _advance(self, conn: Conn, current: datetime) -> None:
        """The hour turned: each window gains its newly complete hours and loses those that slid out."""
        assert self._current is not None
        previous = self._current
        gains = {name: (max(previous, self._start(name, current)), current) for name in self._sums}
        losses = {name: (self._start(name, previous), min(previous, self._start(name, current))) for name in self._sums}
        needed = sorted(
            {lo + i * HOUR for lo, hi in [*gains.values(), *losses.values()] for i in range(int((hi - lo) / HOUR))}
        )
        records = await hist_queries.rows_of_hours(conn, needed)
        rows = [decode_row(r) for r in records]
        touched: set[tuple[str, CellKey]] = set()
        for name in self._sums:
            g0, g1 = gains[name]
            l0, l1 = losses[name]
            touched |= self._apply([h for h in rows if g0 <= h.bucket < g1], +1, [name])
            touched |= self._apply([h for h in rows if l0 <= h.bucket < l1], -1, [name])
        self._spans(h for h in rows if previous <= h.bucket < current)
        self._keep_recent(current, (r for r in records if previous <= r["bucket"] < current))
        horizon = current - self._longest * HOUR
        for cell in self._cells.values():
            while cell.hours and cell.hours[0] < horizon:
                cell.drop(cell.hours[0])
        self._current = current
        self._settle(touched, current)

    def _keep_recent(self, current: datetime, rows: Iterable[StoredRow]) -> None:
        """Keep the rows of the complete hours [current - _keep h, current) that are in ``rows``
        (hours read whole from the table), dropping the hours before; every such hour has an entry."""
        first = current - self._keep * HOUR
        self._recent = {hour: kept for hour, kept in self._recent.items() if first <= hour < current}
        for i in range(self._keep):
            self._recent.setdefault(first + i * HOUR, [])
        for r in rows:
            if first <= r["bucket"] < current:
                self._recent[r["bucket"]].append(r)

    def _renew_recent(self, hours: Iterable[datetime], rows: Sequence[StoredRow]) -> None:
        """``hours`` were recomputed whole: the kept ones now hold ``rows`` (their new rows)."""
        for hour in hours:
            if hour in self._recent:
                self._recent[hour] = [r for r in rows if r["bucket"] == hour]

    async def _rebuild(self, conn: Conn, current: datetime) -> None:
        """Read the complete hours of the longest window and sum them per window.

        A day of hourly rows at a time: each day is summed per cell and added to
        the sums, so memory holds one day's rows, not the whole window's (a week
        of 1,000 series is 168,000 rows of three histograms).
        """
        self.forget()
        self._current = current
        self._sums = {name: {} for name in self._lengths}
        touched: set[tuple[str, CellKey]] = set()
        lo = current - self._longest * HOUR
        self._keep_recent(current, ())
        while lo < current:
            hi = min(lo + REBUILD_CHUNK, current)
            records = await hist_queries.rows_between(conn, lo, hi)
            self._keep_recent(current, records)
            rows = [decode_row(r) for r in records]
            del records
            self._spans(rows)
            for name in self._lengths:
                start = self._start(name, current)
                by_key: dict[CellKey, list[HourRow]] = {}
                for h in rows:
                    if h.bucket >= start:
                        for key in cell_keys(h, self._headline_tier):
                            by_key.setdefault(key, []).append(h)
                sums = self._sums[name]
                for key, hours in by_key.items():
                    part = _sum(hours)
                    acc = sums.get(key)
                    sums[key] = part if acc is None else combine(acc, part)
                    touched.add((name, key))
            del rows
            lo = hi
        self._settle(touched, current)
        self.rebuilds += 1


def stored(h: HourRow) -> StoredRow:
    """``h`` as the table stores it (``hist_queries.HIST_COLUMNS``), for :func:`~.rollup.decode_row`."""
    return dict(zip(hist_queries.HIST_COLUMNS, encode_row(h), strict=True))


def _sum(hours: list[HourRow]) -> HourRow:
    """One row holding the sum of ``hours`` (all of one cell)."""
    errors: Counter[str] = Counter()
    for h in hours:
        errors.update(h.errors)
    return replace(
        hours[0],
        attempts=sum(h.attempts for h in hours),
        ok=sum(h.ok for h in hours),
        rate_limited=sum(h.rate_limited for h in hours),
        overloaded=sum(h.overloaded for h in hours),
        errors={k: v for k, v in errors.items() if v},
        input_tokens=sum(h.input_tokens for h in hours),
        output_tokens=sum(h.output_tokens for h in hours),
        ttft=Histogram.merge_all(h.ttft for h in hours),
        ttfat=Histogram.merge_all(h.ttfat for h in hours),
        tps=Histogram.merge_all(h.tps for h in hours),
        rows=len(hours),
        reported_ok=sum(h.reported_ok for h in hours),
        retried=sum(h.retried for h in hours),
        calls=sum(h.calls for h in hours),
        calls_failed=sum(h.calls_failed for h in hours),
        ttft_first=Histogram.merge_all(h.ttft_first for h in hours),
        ttft_retried=Histogram.merge_all(h.ttft_retried for h in hours),
    )
