"""Hourly histogram rollups: incremental refresh and window merges.

``probe_hist_hourly`` (migration 0003) holds, per UTC hour and series
(router, model, provider, region, prompt, methodology, tier), the counts and the
mergeable log-bucket histograms (``sketch.Histogram``) of TTFT, TTFAT and
output tokens/s. Two steps use it:

* :func:`refresh_hist` takes in the batches not yet taken in (the ingest
  log the batch writer keeps, ``routewatch.storage.ingest_log``): their rows
  in the current hour are added to the hour's rows, and every earlier hour
  they touched is recomputed whole. Cost follows the new data, never the
  published windows.
* :func:`window_stats` reads the hourly rows of the longest window once and
  merges them per window: the standby's path, and the reference the
  leader's in-memory windows (``sliding.SlidingWindows``) are tested against.

Windows are whole UTC hours: a window of ``n`` hours starts at
``floor_hour(now) - n h`` and ends at ``now``, i.e. ``n`` full hours plus the
current, partial hour: it always covers at least its nominal length (between
``n`` and ``n + 1`` hours), so "1h" is never just the few minutes since :00.
The partial hour holds every row stored before the refresh, because
``refresh_hist`` runs first: a new probe shows at the next refresh.
A window length that is not a whole number of hours is rounded up.

Percentiles come from the histograms (<= 0.5% relative error against numpy's
exact percentiles, see sketch.RELATIVE_ACCURACY); each carries a 95%
order-statistic confidence interval, None when the sample is too small for one.

Provider names come from the router, so their number is capped (see
``provider_cap``): ``refresh_hist`` stores at most ``max_providers`` named
providers per (router, model) within the label horizon, the rest as
``other``; no provider is stored as ``''`` and published as ``unknown``.

Every hour a refresh writes also gets its SQL-readable counts and
percentiles (``probe_percentiles_hourly``, ``hour_percentiles``) replaced in
the same transaction, so Grafana's SQL always reads what the histograms say.

The SQL is in ``routewatch.storage.hist_queries``, ``.percentile_queries`` and
``.ingest_log``; this module decodes their records into :class:`HourRow` and
does the arithmetic.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np

from routewatch.aggregator.hour_percentiles import PERCENTILE_COLUMNS, percentile_rows, row_totals
from routewatch.aggregator.provider_cap import (
    DEFAULT_HORIZON_HOURS,
    DEFAULT_MAX_PROVIDERS,
    NO_PROVIDER,
    OTHER,
    UNKNOWN,
    LabelCap,
    SeriesKey,
    cap_cells,
    provider_label,
    stored_provider,
)
from routewatch.aggregator.sketch import Histogram, QuantileTable, bucket_indices, grouped_histograms, quantile_table
from routewatch.aggregator.stats import CellStats, RetryStats, WindowCounts
from routewatch.config.tiers import DEFAULT_TIER
from routewatch.results.probe_result import NOT_ROUTER_FAULTS
from routewatch.storage import hist_queries, ingest_log, percentile_queries
from routewatch.storage.clock import db_now
from routewatch.storage.connection import Conn
from routewatch.storage.housekeeping import DEFAULT_RETENTION

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)

# A batch whose started_at range reaches further than this past the current
# hour (a prober with a wrong clock) only gets that many future hours recomputed.
MAX_FUTURE = timedelta(days=1)

# A recompute holds at most this many raw rows at once (about 1 KiB each in
# Python): a catch-up after hours or days of backlog reads them a piece at a
# time and writes each hour once all its rows are read.
CHUNK_ROWS = 20_000

# A report carries the hourly rows it wrote and replaced in earlier hours
# (for the in-memory windows, ``sliding.SlidingWindows``; about 3 KiB each)
# when it recomputed at most REPORT_HOURS hours (late probes, a short spool
# replay, the previous hour as the hour turns), or at most REPORT_ROWS rows
# in all. A longer catch-up sets ``rows_omitted`` instead, and the windows
# are read from the table again, a day at a time: never fewer rows than
# REPORT_HOURS hours' worth would have been.
REPORT_HOURS = 6
REPORT_ROWS = 5_000

# Hours of percentiles a refresh backfills (rows stored before
# probe_percentiles_hourly existed), newest first: a day's worth at a time.
BACKFILL_HOURS = 24

# ... and the batches it took in only up to this many: after an outage they
# are about one per probe (a refresh usually takes in tens or hundreds).
# Pending batches are read this many at a time.
REPORT_BATCHES = 20_000
BATCH_PIECE = 10_000

# Breakdown dimensions of window_stats keys.
BREAKDOWNS = ("provider", "region", "tier")

# Keys of window_stats: (router, model) or (router, model, dimension, value).
CellKey = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RefreshReport:
    """What one :func:`refresh_hist` did."""

    now: datetime  # the database's clock at the refresh
    log_rows: int  # ingest log rows (batches) taken in
    hours: tuple[datetime, ...]  # earlier (or future) hours recomputed whole, ascending
    skipped_hours: int  # affected hours older than now - retention, kept as they were
    raw_rows: int  # probe_results rows read: the recomputed hours' and the new rows of the current hour
    series_hours: int  # probe_hist_hourly rows written
    generation_before: int  # hist_queries.HIST_GENERATION_KEY when this refresh started
    generation: int  # ... and after it
    current: tuple[HourRow, ...] = ()  # every row of the current hour, as it now stands
    written: tuple[HourRow, ...] = ()  # the rows written in the recomputed hours (see rows_omitted)
    replaced: tuple[HourRow, ...] = ()  # the rows they replaced
    capped: tuple[SeriesKey, ...] = ()  # (router, model) whose providers overflowed into "other" first now
    batches: tuple[ingest_log.PendingBatch, ...] = ()  # the batches taken in
    # More than REPORT_HOURS hours and more than ``report_rows`` rows were
    # recomputed: ``written`` and ``replaced`` are left empty rather than
    # holding them all; a copy of the rollup kept in memory must read the
    # changed hours from the table.
    rows_omitted: bool = False
    # More than ``report_batches`` batches were taken in: ``batches`` is left
    # empty; a copy of the probes kept in memory must read them from the table.
    batches_omitted: bool = False
    # When the current hour's rows were ``known.rows`` with the new probes added (not read
    # again): per series that received probes, its index in ``current`` and the row of
    # those probes alone; a copy of the hour kept in memory adds these. None otherwise.
    added: tuple[tuple[int, HourRow], ...] | None = None


def floor_hour(ts: datetime) -> datetime:
    """``ts`` rounded down to a whole UTC hour."""
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def window_hours(seconds: float) -> int:
    """Whole hours a window of ``seconds`` covers (rounded up, at least 1)."""
    return max(1, math.ceil(seconds / 3600.0 - 1e-9))


def window_start(now: datetime, seconds: float) -> datetime:
    """Start of the hour-aligned window ending at ``now``: floor_hour(now) - n h."""
    return floor_hour(now) - window_hours(seconds) * HOUR


def _hour_ranges(hours: Sequence[datetime]) -> list[tuple[datetime, datetime]]:
    """Sorted hours merged into contiguous [start, end) ranges."""
    ranges: list[tuple[datetime, datetime]] = []
    for h in hours:
        if ranges and ranges[-1][1] == h:
            ranges[-1] = (ranges[-1][0], h + HOUR)
        else:
            ranges.append((h, h + HOUR))
    return ranges


@dataclass(frozen=True, slots=True)
class KnownHour:
    """The current hour's rows as a caller kept them from the previous refresh's report."""

    generation: int  # RefreshReport.generation of that refresh
    hour: datetime
    rows: tuple[HourRow, ...]
    # Per (router, model), the provider values of the complete hours
    # [hour - providers_hours h, hour): what refresh_hist would otherwise read
    # from the table to know which names are admitted (provider_cap).
    providers: Mapping[SeriesKey, frozenset[str]] | None = None
    providers_hours: int = 0


async def refresh_hist(
    conn: Conn,
    *,
    retention: timedelta = DEFAULT_RETENTION,
    now: datetime | None = None,
    known: KnownHour | None = None,
    max_providers: int = DEFAULT_MAX_PROVIDERS,
    label_hours: int = DEFAULT_HORIZON_HOURS,
    chunk_rows: float = CHUNK_ROWS,
    report_rows: float = REPORT_ROWS,
    report_batches: float = REPORT_BATCHES,
    headline_tier: str = DEFAULT_TIER,
) -> RefreshReport:
    """Take every batch not yet in probe_hist_hourly into it; report what changed.

    Pending batches are those the ingest log (``storage.ingest_log``) has
    not marked taken in. Their rows in the current hour are *added* to the hour's rows (a
    delta: only those rows are read, found by the writing transaction's id),
    so a refresh reads what arrived, not the whole hour. Every other hour a
    pending batch touched (late data, a replayed spool, a clock ahead) is
    recomputed whole from the raw rows. Hours older than ``now - retention``
    are never recomputed: their raw rows may be gone, so their rollup is kept.

    One REPEATABLE READ transaction, begun after taking the refresh lock
    (``hist_queries.refresh_transaction``):
    the batches, the raw rows and the hourly rows are all read from one
    snapshot, so each batch is counted exactly once, and it is marked done in
    the same commit. ``now`` defaults to the database's clock (tests pin it).
    ``known``: the current hour's rows from the previous report, used instead
    of reading them back when nothing else changed the table since (same
    generation, same hour).

    Provider names are capped (``provider_cap``): per (router, model), at most
    ``max_providers`` named providers are stored within the last
    ``label_hours`` whole hours (the longest published window) and later; the
    first seen are kept, the others stored as ``other``. The first time a
    model overflows within that horizon is logged, once.

    Memory does not grow with the backlog (an aggregator that was down while
    probers kept writing, a long spool replayed): the recomputed hours are
    read in time order ``chunk_rows`` raw rows at a time, each hour written
    as soon as all its rows are read, and the cap learns the names to admit
    from an aggregate on the server. The report carries the hours' rows
    (written and replaced) when they are at most :data:`REPORT_HOURS` hours
    or ``report_rows`` rows (``rows_omitted`` otherwise), and the batches it
    took in (read from the ingest log a piece at a time) only up to
    ``report_batches`` (``batches_omitted`` otherwise). ``math.inf`` for all three reads every
    recomputed hour into one list and reports every row and batch, as the
    refresh did before it was bounded (kept for the benchmark to compare).

    The SQL-readable percentiles (``probe_percentiles_hourly``) written with
    the rows are of ``headline_tier``'s rows only, as the API's headline is.
    """
    if not chunk_rows >= 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    async with hist_queries.refresh_transaction(conn):
        report = await _refresh(
            conn,
            retention,
            now,
            known,
            max_providers,
            label_hours,
            chunk_rows,
            report_rows,
            report_batches,
            headline_tier,
        )
    log.debug("hist refresh: %s", report)
    for router, model in report.capped:  # committed: the "other" rows now in the table keep it to once
        log.warning(
            "router %s, model %s: more than %d distinct providers reported within %d h;"
            " the rest are counted as %r (aggregator.max_providers_per_model)",
            router,
            model,
            max_providers,
            label_hours,
            "other",
        )
    return report


async def _refresh(
    conn: Conn,
    retention: timedelta,
    now: datetime | None,
    known: KnownHour | None,
    max_providers: int,
    label_hours: int,
    chunk_rows: float,
    report_rows: float,
    report_batches: float,
    headline_tier: str,
) -> RefreshReport:
    if now is None:
        now = await db_now(conn)
    generation_before = await hist_queries.bump_hist_generation(conn)
    current = floor_hour(now)
    pending = await _pending(conn, current, now - retention, report_batches)
    hours = sorted(pending.affected - {current})

    # The current hour: the pending batches' rows in it, to be added to what is there.
    batches = pending.in_current
    new_raw: list[asyncpg.Record] = []
    if batches:
        new_raw = await ingest_log.batch_rows(
            conn,
            max(current, min(b.first_started for b in batches)),
            min(current + HOUR, max(b.last_started for b in batches) + timedelta(microseconds=1)),
            batches,
        )
    # Read before anything is deleted: the names admitted are those the table holds.
    cap = await _label_cap(conn, known, generation_before, current, max_providers, label_hours)
    cap.admit(await _first_seen(conn, hours, new_raw, max_providers))
    # Any earlier hour: recomputed whole, a bounded number of raw rows at a time.
    keep = math.inf if len(hours) <= REPORT_HOURS else report_rows
    redone = await _recompute(conn, hours, cap.label, chunk_rows, keep, headline_tier)

    delta = {series_key(h): h for h in _hourly_rows(new_raw, cap.label)}
    if known is not None and known.generation == generation_before and known.hour == current:
        now_rows = list(known.rows)
        added: list[tuple[int, HourRow]] | None = []
    else:
        now_rows = [decode_row(r) for r in await hist_queries.rows_of_hour(conn, current)]
        added = None  # the rows were read again: the caller's copy of the hour is no base to add to
    changed: list[HourRow] = []
    for i, h in enumerate(now_rows):
        d = delta.pop(series_key(h), None)
        if d is not None:
            now_rows[i] = combine(h, d)
            changed.append(now_rows[i])
            if added is not None:
                added.append((i, d))
    if added is not None:  # series new in this hour
        added.extend(enumerate(delta.values(), len(now_rows)))
    changed.extend(delta.values())
    now_rows.extend(delta.values())
    if changed:
        await hist_queries.delete_series(conn, current, [series_key(h)[1:] for h in changed])
    await hist_queries.copy_rows(conn, [encode_row(h) for h in changed])
    # The percentiles of every model whose rows changed, from all its rows of the hour.
    models = {(h.router, h.model) for h in changed}
    model_rows = [h for h in now_rows if (h.router, h.model) in models]
    records = percentile_rows(of_tier(model_rows, headline_tier))
    await percentile_queries.replace_models(conn, current, models, records, PERCENTILE_COLUMNS)
    await _backfill_percentiles(conn, headline_tier)

    await ingest_log.mark_taken(conn, now)
    return RefreshReport(
        now,
        pending.count,
        tuple(hours),
        len(pending.skipped),
        redone.raw_rows + len(new_raw),
        redone.series_hours + len(changed),
        generation_before,
        generation_before + 1,
        tuple(now_rows),
        tuple(redone.written or ()),
        tuple(redone.replaced or ()),
        tuple(cap.newly_capped),
        tuple(pending.kept or ()),
        rows_omitted=redone.written is None,
        batches_omitted=pending.kept is None,
        added=None if added is None else tuple(added),
    )


@dataclass(slots=True)
class _Pending:
    """What :func:`_pending` learnt from the batches not yet taken in."""

    count: int = 0
    affected: set[datetime] = field(default_factory=set)  # hours to bring up to date
    skipped: set[datetime] = field(default_factory=set)  # hours touched but past the retention horizon
    in_current: list[ingest_log.PendingBatch] = field(default_factory=list)  # batches reaching into the current hour
    kept: list[ingest_log.PendingBatch] | None = field(default_factory=list)  # all of them, while few enough


async def _pending(conn: Conn, current: datetime, horizon: datetime, keep: float) -> _Pending:
    """The hours the pending batches touched, read :data:`BATCH_PIECE` batches at a time.

    After an outage the ingest log holds about a batch per probe (a writer
    flushes every half second), so they are never all held at once: only
    those reaching into the current hour (whose rows are added as a delta),
    and all of them only while they are at most ``keep``.
    """
    latest = current + MAX_FUTURE
    first_ok = floor_hour(horizon) + (HOUR if floor_hour(horizon) < horizon else timedelta(0))
    out = _Pending()
    async for piece in ingest_log.pending_batches(conn, BATCH_PIECE):
        out.count += len(piece)
        for batch in piece:
            hour = floor_hour(batch.first_started)
            last = min(floor_hour(batch.last_started), latest)
            if hour < horizon:
                # Whole hours older than the horizon are left alone; jump
                # straight to the first hour that may be recomputed.
                old_end = min(last + HOUR, first_ok)
                out.skipped.update(hour + i * HOUR for i in range(int((old_end - hour) / HOUR)))
                hour = first_ok
            while hour <= last:
                out.affected.add(hour)
                hour += HOUR
            if batch.first_started < current + HOUR and batch.last_started >= current:
                out.in_current.append(batch)
        if out.kept is not None and out.count <= keep:
            out.kept.extend(piece)
        else:
            out.kept = None
    return out


async def _first_seen(
    conn: Conn, hours: Sequence[datetime], new_raw: Sequence[asyncpg.Record], limit: int
) -> dict[tuple[str, str, str | None], datetime]:
    """(router, model, reported provider) -> earliest probe, over ``hours`` and the rows ``new_raw``.

    What ``LabelCap.admit`` needs before any row is labelled. For the
    recomputed hours it comes from an aggregate on the server, which keeps
    per (router, model) only the first ``limit + 1`` names: the names a
    refresh admits are among the first ``limit``, and a model overflows
    (one of them is refused) exactly when it has more than ``limit`` names,
    so the cap ends the same as with every name, while a router naming a
    new provider on every answer cannot make this dict as long as the rows.
    A name cut here but present in ``new_raw`` enters later than its first
    probe, behind ``limit + 1`` earlier names: refused either way.
    """
    first: dict[tuple[str, str, str | None], datetime] = {}
    for start, end in _hour_ranges(hours):
        for r in await hist_queries.first_providers(conn, start, end, (NO_PROVIDER, UNKNOWN, OTHER), limit + 1):
            key, t = (r["router"], r["model"], r["provider"]), r["first_started"]
            if first.get(key, t) >= t:
                first[key] = t
    for r in new_raw:
        key, t = (r["router"], r["model"], r["provider"]), r["started_at"]
        if first.get(key, t) >= t:
            first[key] = t
    return first


@dataclass(slots=True)
class _Recomputed:
    """What :func:`_recompute` did; ``written``/``replaced`` None once more than ``keep`` in all."""

    keep: float
    headline_tier: str  # the tier of the percentiles written with the rows
    raw_rows: int = 0
    series_hours: int = 0
    written: list[HourRow] | None = field(default_factory=list)
    replaced: list[HourRow] | None = field(default_factory=list)


async def _recompute(
    conn: Conn,
    hours: Sequence[datetime],
    provider_of: ProviderOf,
    chunk_rows: float,
    keep: float,
    headline_tier: str,
) -> _Recomputed:
    """Recompute ``hours`` whole from the raw rows, holding at most ``chunk_rows`` of them at once.

    Each contiguous run of hours is read in order of ``started_at``, a piece
    at a time; a piece's hourly rows are added to those of its hours read so
    far, and every hour before the last row's is complete: its old rows are
    deleted and the new ones written. Both are returned (for the report)
    while they are at most ``keep`` rows in all. An infinite ``chunk_rows``
    reads each run as one unordered list.
    """
    done = _Recomputed(keep, headline_tier)
    for start, end in _hour_ranges(hours):
        partial: dict[datetime, dict[HourKey, HourRow]] = {}  # per hour, per series: the rows so far
        written_to = start  # the hours before it are written
        pieces = (
            hist_queries.raw_row_pieces(conn, start, end, int(chunk_rows))
            if math.isfinite(chunk_rows)
            else _one_piece(conn, start, end)
        )
        async for piece in pieces:
            done.raw_rows += len(piece)
            for h in _hourly_rows(piece, provider_of):
                rows = partial.setdefault(h.bucket, {})
                key = series_key(h)
                before = rows.get(key)
                rows[key] = h if before is None else _joined(before, h)
            if math.isfinite(chunk_rows):  # in time order: the hours before the last row's are whole
                complete = piece[-1]["bucket"]
                del piece
                await _write_hours(conn, written_to, complete, partial, done)
                written_to = complete
        await _write_hours(conn, written_to, end, partial, done)
    return done


async def _one_piece(conn: Conn, start: datetime, end: datetime) -> AsyncIterator[list[asyncpg.Record]]:
    rows = await hist_queries.raw_rows(conn, start, end)
    if rows:
        yield rows


def _joined(a: HourRow, b: HourRow) -> HourRow:
    """Two parts of one series-hour's rollup, read in different pieces, as one row."""
    joined = combine(a, b)
    joined.rows = 1
    return joined


async def _write_hours(
    conn: Conn, start: datetime, end: datetime, partial: dict[datetime, dict[HourKey, HourRow]], done: _Recomputed
) -> None:
    """Replace the rows of the hours in ``[start, end)`` by those in ``partial`` (taken out of it)."""
    hours = [start + i * HOUR for i in range(int((end - start) / HOUR))]
    if not hours:
        return
    rows = [h for hour in hours for h in partial.pop(hour, {}).values()]
    if done.replaced is None or done.written is None:
        await hist_queries.drop_hours(conn, hours)
    else:
        replaced = await hist_queries.delete_hours(conn, hours)
        if len(done.replaced) + len(done.written) + len(replaced) + len(rows) <= done.keep:
            done.replaced.extend(map(decode_row, replaced))
            done.written.extend(rows)
        else:  # too many to report: the report says so instead
            done.replaced = done.written = None
    await hist_queries.copy_rows(conn, [encode_row(h) for h in rows])
    records = percentile_rows(of_tier(rows, done.headline_tier))
    await percentile_queries.replace_hours(conn, hours, records, PERCENTILE_COLUMNS)
    done.series_hours += len(rows)


def of_tier(rows: Iterable[HourRow], tier: str) -> list[HourRow]:
    """The rows of prompt tier ``tier``: probe_percentiles_hourly holds the headline tier's
    figures, so that Grafana's lines and the model page's profile are the API's headline."""
    return [h for h in rows if h.tier == tier]


async def _backfill_percentiles(conn: Conn, headline_tier: str) -> None:
    """Compute the percentiles of up to :data:`BACKFILL_HOURS` hours stored before their table existed.

    Newest first, from the hourly rows as this transaction sees them (what
    this refresh wrote included), so a backfilled hour agrees with its rows.
    """
    newest = await percentile_queries.backfill_cursor(conn)
    if newest is None:
        return
    oldest = newest - (BACKFILL_HOURS - 1) * HOUR
    rows = [decode_row(r) for r in await hist_queries.rows_between(conn, oldest, newest + HOUR)]
    hours = [oldest + i * HOUR for i in range(BACKFILL_HOURS)]
    await percentile_queries.replace_hours(
        conn, hours, percentile_rows(of_tier(rows, headline_tier)), PERCENTILE_COLUMNS
    )
    next_hour = await percentile_queries.hist_hour_at_or_before(conn, oldest - HOUR)
    await percentile_queries.set_backfill_cursor(conn, next_hour)


async def _label_cap(
    conn: Conn, known: KnownHour | None, generation: int, current: datetime, limit: int, hours: int
) -> LabelCap:
    """The provider cap of this refresh: the names stored from ``current - hours`` h on are admitted.

    With ``known`` from the previous refresh (nothing changed the table since,
    its hour not after this one, a horizon at least as long), the hours up to
    and including its hour come from memory and only later ones are read:
    usually none, so this costs a lookup of the (empty) future hours.
    """
    stored: dict[SeriesKey, set[str]] = {}
    since = current - hours * HOUR
    if (
        known is not None
        and known.providers is not None
        and known.generation == generation
        and known.hour <= current
        and known.providers_hours >= hours
    ):
        for key, values in known.providers.items():
            stored.setdefault(key, set()).update(values)
        for h in known.rows:
            stored.setdefault((h.router, h.model), set()).add(h.provider)
        since = known.hour + HOUR
    for r in await hist_queries.stored_providers(conn, since):
        stored.setdefault((r["router"], r["model"]), set()).add(r["provider"])
    return LabelCap(limit, stored)


# (bucket, router, model, provider, region, prompt, methodology, tier): HourRow's leading fields.
HourKey = tuple[datetime, str, str, str, str, str, str, str]


def series_key(h: HourRow) -> HourKey:
    """(bucket, router, model, provider, region, prompt, methodology, tier): one probe_hist_hourly row's key."""
    return (h.bucket, h.router, h.model, h.provider, h.region, h.prompt, h.methodology, h.tier)


def encode_row(h: HourRow) -> tuple[Any, ...]:
    """``h`` as a probe_hist_hourly record, in ``hist_queries.HIST_COLUMNS`` order."""
    return (
        *series_key(h),
        h.attempts,
        h.ok,
        h.rate_limited,
        h.overloaded,
        _errors_json(tuple(sorted(h.errors.items()))),
        h.input_tokens,
        h.output_tokens,
        h.first,
        h.last,
        h.ttft.to_bytes(),
        h.ttfat.to_bytes(),
        h.tps.to_bytes(),
        h.reported_ok,
        h.retried,
        h.calls,
        h.calls_failed,
        h.ttft_first.to_bytes(),
        h.ttft_retried.to_bytes(),
    )


@functools.lru_cache(maxsize=4096)  # a refresh encodes every series of the hour; few distinct error mixes
def _errors_json(errors: tuple[tuple[str, int], ...]) -> str:
    return json.dumps(dict(errors))


def combine(a: HourRow, b: HourRow, sign: int = 1) -> HourRow:
    """``a`` with ``b`` added (sign 1) or taken out (sign -1), counts and histograms.

    first/last become the min/max of both (meaningless when taking out: the
    caller sets them). ValueError if a count would go negative.
    """
    errors = dict(a.errors)
    for cls, n in b.errors.items():
        errors[cls] = errors.get(cls, 0) + sign * n
    if sign < 0 and any(v < 0 for v in errors.values()):
        raise ValueError("an error count would go negative")
    if sign > 0:
        ttft, ttfat, tps = a.ttft.merge(b.ttft), a.ttfat.merge(b.ttfat), a.tps.merge(b.tps)
        first, retried = a.ttft_first.merge(b.ttft_first), a.ttft_retried.merge(b.ttft_retried)
    else:
        ttft, ttfat, tps = a.ttft.subtract(b.ttft), a.ttfat.subtract(b.ttfat), a.tps.subtract(b.tps)
        first, retried = a.ttft_first.subtract(b.ttft_first), a.ttft_retried.subtract(b.ttft_retried)
    # Built directly, not with dataclasses.replace: a refresh combines every
    # series of the current hour, and replace() costs more than the rest.
    out = HourRow(
        a.bucket,
        a.router,
        a.model,
        a.provider,
        a.region,
        a.prompt,
        a.methodology,
        a.tier,
        a.attempts + sign * b.attempts,
        a.ok + sign * b.ok,
        a.rate_limited + sign * b.rate_limited,
        a.overloaded + sign * b.overloaded,
        {k: v for k, v in errors.items() if v},
        a.input_tokens + sign * b.input_tokens,
        a.output_tokens + sign * b.output_tokens,
        _earliest(a.first, b.first),
        _latest(a.last, b.last),
        ttft,
        ttfat,
        tps,
        a.rows + sign * b.rows,
        a.reported_ok + sign * b.reported_ok,
        a.retried + sign * b.retried,
        a.calls + sign * b.calls,
        a.calls_failed + sign * b.calls_failed,
        first,
        retried,
    )
    if min(out.attempts, out.ok, out.rate_limited, out.overloaded, out.rows, out.reported_ok, out.calls) < 0:
        raise ValueError("a count would go negative")
    return out


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None or a <= b else b


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None or a >= b else b


ProviderOf = Callable[[str, str, "str | None"], str]  # (router, model, reported) -> stored provider


def _uncapped(router: str, model: str, reported: str | None) -> str:
    return stored_provider(reported)


def _hourly_rows(raw: Sequence[asyncpg.Record], provider_of: ProviderOf = _uncapped) -> list[HourRow]:
    """probe_hist_hourly rows of the raw rows, grouped per series-hour with numpy.

    ``provider_of`` gives the stored provider of each row (the cap's
    ``LabelCap.label`` in a refresh). Rows are sorted by series-hour once;
    sums are ``np.add.reduceat`` over the sorted runs, and bucket indices are
    computed for all values at once, so the per-group Python work is a few
    slices whatever the group sizes.
    """
    if not raw:
        return []
    n = len(raw)
    index: dict[HourKey, int] = {}
    keys: list[HourKey] = []
    group = np.empty(n, dtype=np.int64)
    for i, r in enumerate(raw):
        provider = provider_of(r["router"], r["model"], r["provider"])
        key: HourKey = (
            r["bucket"],
            r["router"],
            r["model"],
            provider,
            r["region"],
            r["prompt"],
            r["methodology"],
            r["tier"],
        )
        g = index.get(key)
        if g is None:
            g = index[key] = len(keys)
            keys.append(key)
        group[i] = g
    started = np.array([r["started_at"].timestamp() for r in raw], dtype=np.float64)
    order = np.lexsort((started, group))  # by group, then time: first/last are a run's ends
    rows = [raw[i] for i in order.tolist()]
    group = group[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    ends = np.r_[starts[1:], n]

    ok = np.fromiter((r["ok"] for r in rows), dtype=bool, count=n)
    over = np.fromiter((r["prober_overloaded"] for r in rows), dtype=bool, count=n)
    # A budget spent reasoning is ours, not the router's: out of attempts and figures, counted in errors apart.
    ours = np.fromiter((r["error_class"] in NOT_ROUTER_FAULTS for r in rows), dtype=bool, count=n)
    counted = ~over & ~ours
    good = ok & counted
    tok_in = np.nan_to_num(np.array([r["input_tokens"] for r in rows], dtype=np.float64))
    tok_out = np.nan_to_num(np.array([r["output_tokens"] for r in rows], dtype=np.float64))

    def sums(x: np.ndarray) -> list[int]:
        per_run: list[int] = np.add.reduceat(x.astype(np.int64), starts).tolist()
        return per_run

    # The upstream calls the router reported (NaN: it said nothing), over the counted rows.
    calls_raw = np.array([r["upstream_calls"] for r in rows], dtype=np.float64)
    reported = counted & ~np.isnan(calls_raw)
    calls_n = np.where(reported, calls_raw, 0.0)
    calls_failed = sums(np.maximum(calls_n - (reported & ok), 0.0))
    first_call = good & reported & (calls_n == 1)
    retried = good & reported & (calls_n > 1)

    attempts, oks, overloaded = sums(counted), sums(good), sums(over)
    reported_ok, retried_n, calls_sum = sums(reported & ok), sums(retried), sums(calls_n)
    tokens_in, tokens_out = sums(tok_in), sums(tok_out)
    errors: list[Counter[str]] = [Counter() for _ in keys]
    for i in np.flatnonzero(~over & ~ok).tolist():
        errors[int(group[i])][rows[i]["error_class"] or "unknown"] += 1

    # Per metric: the good values' bucket indices per run, zeros apart, made into
    # every run's histogram at once.
    run_of = np.repeat(np.arange(starts.size), ends - starts)
    hists: list[list[Histogram]] = []
    for column, among in (
        ("ttft_ms", good),
        ("ttfat_ms", good),
        ("output_tps", good),
        ("ttft_ms", first_call),
        ("ttft_ms", retried),
    ):
        x = np.array([r[column] for r in rows], dtype=np.float64)
        keep = among & ~np.isnan(x)
        positive = keep & (x > 0)
        zero_counts = np.add.reduceat((keep & ~positive).astype(np.int64), starts).tolist()
        hists.append(grouped_histograms(run_of[positive], bucket_indices(x[positive]), zero_counts))

    return [
        HourRow(
            *keys[int(group[a])],
            attempts=attempts[g],
            ok=oks[g],
            rate_limited=errors[int(group[a])].get("http_429", 0),
            overloaded=overloaded[g],
            errors=dict(sorted(errors[int(group[a])].items())),
            input_tokens=tokens_in[g],
            output_tokens=tokens_out[g],
            first=rows[a]["started_at"],
            last=rows[b - 1]["started_at"],
            ttft=hists[0][g],
            ttfat=hists[1][g],
            tps=hists[2][g],
            reported_ok=reported_ok[g],
            retried=retried_n[g],
            calls=calls_sum[g],
            calls_failed=calls_failed[g],
            ttft_first=hists[3][g],
            ttft_retried=hists[4][g],
        )
        for g, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True))
    ]


@dataclass(slots=True)
class HourRow:
    """One probe_hist_hourly row, decoded; or the sum of several (a window's complete hours).

    ``rows`` counts the hourly rows summed in (1 for a row): a cell is
    published in a window only when at least one row falls in it.
    """

    bucket: datetime
    router: str
    model: str
    provider: str
    region: str
    prompt: str
    methodology: str
    tier: str  # the prompt's input-length tier (migration 0012)
    attempts: int
    ok: int
    rate_limited: int
    overloaded: int
    errors: dict[str, int]
    input_tokens: int
    output_tokens: int
    first: datetime | None
    last: datetime | None
    ttft: Histogram
    ttfat: Histogram
    tps: Histogram
    rows: int = 1
    # What the routers reported of their upstream calls (migration 0011; see _hourly_rows).
    reported_ok: int = 0  # successes whose router reported its attempts
    retried: int = 0  # ... of them, answered after more than one upstream call
    calls: int = 0  # upstream calls reported
    calls_failed: int = 0  # ... of them, failed
    ttft_first: Histogram = field(default_factory=Histogram.empty)  # TTFT of successes at the first call
    ttft_retried: Histogram = field(default_factory=Histogram.empty)  # TTFT of successes after a retry


def _histogram(data: bytes | None) -> Histogram:
    """A stored histogram; NULL (a row written before the column existed) is empty."""
    return Histogram.empty() if data is None else Histogram.from_bytes(data)


def decode_row(r: asyncpg.Record | Mapping[str, Any]) -> HourRow:
    """A probe_hist_hourly row (a record with ``hist_queries.HIST_COLUMNS``) decoded."""
    errors = r["errors"]
    return HourRow(
        r["bucket"],
        r["router"],
        r["model"],
        r["provider"],
        r["region"],
        r["prompt"],
        r["methodology"],
        r["tier"],
        r["attempts"],
        r["ok"],
        r["rate_limited"],
        r["overloaded"],
        json.loads(errors) if isinstance(errors, str) else dict(errors),
        r["input_tokens"],
        r["output_tokens"],
        r["first_started"],
        r["last_started"],
        Histogram.from_bytes(r["ttft"]),
        Histogram.from_bytes(r["ttfat"]),
        Histogram.from_bytes(r["tps"]),
        1,
        r["reported_ok"],
        r["retried"],
        r["calls"],
        r["calls_failed"],
        _histogram(r["ttft_first"]),
        _histogram(r["ttft_retried"]),
    )


def cell_keys(h: HourRow, headline_tier: str) -> list[CellKey]:
    """The window_stats keys one series-hour contributes to; a stored ``''`` provider is ``unknown``.

    Every row counts in its tier's cell. Only rows of ``headline_tier`` count
    in the model's headline cell and its provider and region cells, so a
    10k-token prompt's slower first token never raises the headline TTFT.
    """
    tier_cell: CellKey = (h.router, h.model, BREAKDOWNS[2], h.tier)
    if h.tier != headline_tier:
        return [tier_cell]
    return [
        (h.router, h.model),
        (h.router, h.model, BREAKDOWNS[0], provider_label(h.provider)),
        (h.router, h.model, BREAKDOWNS[1], h.region),
        tier_cell,
    ]


def cells_stats(groups: Mapping[CellKey, Sequence[HourRow]]) -> dict[CellKey, CellStats]:
    """CellStats of each cell from the rows (hourly, or already summed) that make it up.

    Counts add up; percentiles and their intervals come from one
    :func:`~.sketch.quantile_table` per metric over all cells at once. A
    breakdown cell made of the very same row objects as its model's cell (a
    model served by one provider, probed from one region: the common case)
    gets the model cell's CellStats without computing them again.
    """
    return cells_stats_many([groups])[0]


def cells_stats_many(windows: Sequence[Mapping[CellKey, Sequence[HourRow]]]) -> list[dict[CellKey, CellStats]]:
    """:func:`cells_stats` of each of several sets of cells (one per window), with
    one :func:`~.sketch.quantile_table` per metric for all of them."""
    unique: list[tuple[CellKey, Sequence[HourRow]]] = []
    slots: list[dict[CellKey, int]] = []  # per window: cell key -> index in unique
    for groups in windows:
        seen: dict[tuple[str, str, tuple[int, ...]], int] = {}
        slot: dict[CellKey, int] = {}
        for key, rows in groups.items():
            if not rows:
                continue
            signature = (key[0], key[1], tuple(map(id, rows)))
            at = seen.get(signature)
            if at is None:
                at = seen[signature] = len(unique)
                unique.append((key, rows))
            slot[key] = at
        slots.append(slot)
    ttft = quantile_columns(quantile_table([[h.ttft for h in rows] for _, rows in unique], (0.5, 0.95)))
    ttfat = quantile_columns(quantile_table([[h.ttfat for h in rows] for _, rows in unique], (0.5, 0.95)))
    tps = quantile_columns(quantile_table([[h.tps for h in rows] for _, rows in unique], (0.5,)))
    first = quantile_columns(quantile_table([[h.ttft_first for h in rows] for _, rows in unique], (0.5, 0.95)))
    retried = quantile_columns(quantile_table([[h.ttft_retried for h in rows] for _, rows in unique], (0.5, 0.95)))
    computed = [
        _cell_stats(key, rows, ttft[g], ttfat[g], tps[g][0], retry_stats(retry_totals(rows), first[g], retried[g]))
        for g, (key, rows) in enumerate(unique)
    ]
    return [{key: computed[at] for key, at in slot.items()} for slot in slots]


_Quantile = tuple[float | None, tuple[float, float] | None]  # a value and its interval


def _cell_stats(
    key: CellKey,
    rows: Sequence[HourRow],
    ttft: Sequence[_Quantile],
    ttfat: Sequence[_Quantile],
    tps: _Quantile,
    retries: RetryStats,
) -> CellStats:
    """One cell's CellStats: its rows' counts added up, and its quantiles."""
    attempts, ok, rate_limited, overloaded, tokens_in, tokens_out = row_totals(rows)
    errors, first_probe, last_probe = errors_and_span(rows)
    (ttft_p50, ttft_p50_ci), (ttft_p95, ttft_p95_ci) = ttft
    (ttfat_p50, ttfat_p50_ci), (ttfat_p95, ttfat_p95_ci) = ttfat
    tps_p50, tps_p50_ci = tps
    counts = WindowCounts(
        key[0],
        key[1],
        attempts,
        ok,
        rate_limited,
        overloaded,
        ttft_p50,
        ttft_p95,
        ttfat_p50,
        ttfat_p95,
        tps_p50,
        tokens_in,
        tokens_out,
        first_probe,
        last_probe,
    )
    return CellStats(
        counts,
        dict(sorted((k, v) for k, v in errors.items() if v)),
        ttft_p50_ci,
        ttft_p95_ci,
        ttfat_p50_ci,
        ttfat_p95_ci,
        tps_p50_ci,
        retries,
    )


def retry_totals(rows: Iterable[HourRow]) -> tuple[int, int, int, int]:
    """(reported_ok, retried, calls, calls_failed) of ``rows`` together."""
    reported_ok = retried = calls = calls_failed = 0
    for h in rows:
        reported_ok += h.reported_ok
        retried += h.retried
        calls += h.calls
        calls_failed += h.calls_failed
    return reported_ok, retried, calls, calls_failed


def retry_stats(
    totals: tuple[int, int, int, int], first: Sequence[_Quantile], retried: Sequence[_Quantile]
) -> RetryStats:
    """RetryStats from ``retry_totals`` and the p50/p95 of the first-call and retried TTFTs."""
    (first_p50, _), (first_p95, _) = first
    (retried_p50, _), (retried_p95, _) = retried
    return RetryStats(*totals, first_p50, first_p95, retried_p50, retried_p95)


def errors_and_span(rows: Iterable[HourRow]) -> tuple[dict[str, int], datetime | None, datetime | None]:
    """The failures per class of ``rows`` together (zeros kept), and their first and last probe."""
    errors: dict[str, int] = {}
    first: datetime | None = None
    last: datetime | None = None
    for h in rows:
        for cls, n in h.errors.items():
            errors[cls] = errors.get(cls, 0) + n
        if h.first is not None and (first is None or h.first < first):
            first = h.first
        if h.last is not None and (last is None or h.last > last):
            last = h.last
    return errors, first, last


def quantile_columns(table: QuantileTable) -> list[list[tuple[float | None, tuple[float, float] | None]]]:
    """Per group, per quantile: (value or None, interval or None), as Python floats."""
    per_q = []
    for j in range(table.values.shape[1]):
        values, lows, highs = (a[:, j].tolist() for a in (table.values, table.ci_low, table.ci_high))
        # NaN marks "none" (NaN != NaN).
        per_q.append(
            [
                (v if v == v else None, (lo, hi) if lo == lo else None)
                for v, lo, hi in zip(values, lows, highs, strict=True)
            ]
        )
    return list(map(list, zip(*per_q, strict=True))) if per_q else []


async def window_stats(
    conn: Conn,
    windows: Mapping[str, float],
    now: datetime,
    max_providers: int = DEFAULT_MAX_PROVIDERS,
    headline_tier: str = DEFAULT_TIER,
) -> dict[str, dict[CellKey, CellStats]]:
    """Stats per window (name -> seconds) per key, merged from probe_hist_hourly.

    Keys: ``(router, model)``, ``(router, model, "provider", p)``,
    ``(router, model, "region", r)`` (those three of ``headline_tier`` alone) and
    ``(router, model, "tier", t)``; a key appears in a window only when it
    has rows there. Windows are hour-aligned (see the module docstring) and
    include the current partial hour as last refreshed by :func:`refresh_hist`:
    call that first. The hourly rows of the longest window are read once.
    At most ``max_providers`` named provider cells per model
    (``provider_cap.cap_cells``), besides ``other`` and ``unknown``.
    """
    if not windows:
        return {}
    current = floor_hour(now)
    starts = {name: window_start(now, seconds) for name, seconds in windows.items()}
    rows = await hist_queries.rows_between(conn, min(starts.values()), current + HOUR)
    by_key: dict[CellKey, list[HourRow]] = defaultdict(list)
    for r in rows:
        h = decode_row(r)
        for key in cell_keys(h, headline_tier):
            by_key[key].append(h)
    return {
        name: cells_stats(
            cap_cells({key: [h for h in hours if h.bucket >= start] for key, hours in by_key.items()}, max_providers)
        )
        for name, start in starts.items()
    }
