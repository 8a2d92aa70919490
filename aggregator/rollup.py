"""Hourly histogram rollups (issue 5): incremental refresh and window merges.

``probe_hist_hourly`` (migration 0003) holds, per UTC hour and series
(router, model, provider, region, prompt, methodology), the counts and the
mergeable log-bucket histograms (``sketch.Histogram``) of TTFT, TTFAT and
output tokens/s. Two steps use it:

* :func:`refresh_hist` recomputes only the hours that received rows since the
  last refresh (found through ``probe_ingest_log``, which ``write_batch``
  fills in the same transaction as the rows), plus always the current hour.
  Cost scales with the new data, never with the published windows.
* :func:`window_stats` reads the hourly rows of the longest window once and
  merges them per window with ``Histogram.merge_all``.

Windows are whole UTC hours: a window of ``n`` hours starts at
``floor_hour(now) - n h`` and ends at ``now``, i.e. ``n`` full hours plus the
current, partial hour: it always covers at least its nominal length (between
``n`` and ``n + 1`` hours), so "1h" is never just the few minutes since :00.
The partial hour is exact (every row stored
before the refresh) because ``refresh_hist`` always recomputes the current
hour before ``window_stats`` reads it: a new probe shows at the next refresh.
A window length that is not a whole number of hours is rounded up.

Percentiles come from the histograms (<= 0.5% relative error against numpy's
exact percentiles, see sketch.RELATIVE_ACCURACY); each carries a 95%
order-statistic confidence interval, None when the sample is too small for one.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import numpy as np

from .maintenance import DEFAULT_RETENTION, HIST_ROLLUP, bump_hist_generation
from .sketch import Histogram, quantile_table
from .stats import CellStats, WindowCounts

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
HIST_TABLE = HIST_ROLLUP
INGEST_LOG = "probe_ingest_log"

# routewatch_meta keys: the highest probe_ingest_log id processed, and the
# xmin of the snapshot the last refresh read the log under. A writer's log row
# gets its id when it inserts but becomes visible when it commits, so a batch
# may commit with an id below the watermark; its transaction id is then >= the
# stored xmin (it was still running, or not yet started, when the snapshot was
# taken), and the next refresh picks it up through that.
WATERMARK_KEY = "hist_ingest_id"
XMIN_KEY = "hist_ingest_xmin"

# Transaction-level advisory lock: two refreshers never interleave their
# DELETE + INSERT of the same hours. Fixed 64-bit key, ASCII "rwhist" + 1.
HIST_LOCK_KEY = 0x7277_6869_7374_0001

# Processed log rows are kept this long (for inspection), then pruned.
INGEST_LOG_KEEP = timedelta(days=1)

# A batch whose started_at range reaches further than this past the current
# hour (a prober with a wrong clock) only gets that many future hours recomputed.
MAX_FUTURE = timedelta(days=1)

# Breakdown dimensions of window_stats keys.
BREAKDOWNS = ("provider", "region")

# Keys of window_stats: (router, model) or (router, model, dimension, value).
CellKey = tuple[str, ...]

_RAW = """
SELECT date_bin(INTERVAL '1 hour', started_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       router, model, coalesce(provider, '') AS provider, region, prompt, methodology,
       ok, prober_overloaded, error_class, input_tokens, output_tokens, started_at,
       ttft_ms, ttfat_ms, output_tps
FROM probe_results
WHERE started_at >= $1 AND started_at < $2
"""

_HIST_COLUMNS = (
    "bucket", "router", "model", "provider", "region", "prompt", "methodology",
    "attempts", "ok", "rate_limited", "overloaded", "errors", "input_tokens", "output_tokens",
    "first_started", "last_started", "ttft", "ttfat", "tps",
)


@dataclass(frozen=True, slots=True)
class RefreshReport:
    """What one :func:`refresh_hist` did."""

    now: datetime  # the database's clock at the refresh
    log_rows: int  # probe_ingest_log rows read
    hours: tuple[datetime, ...]  # hours recomputed, ascending (always includes the current one)
    skipped_hours: int  # affected hours older than now - retention, kept as they were
    raw_rows: int  # probe_results rows read
    series_hours: int  # probe_hist_hourly rows written
    watermark: int  # probe_ingest_log id processed up to
    generation_before: int  # GENERATION_KEY when this refresh started
    generation: int  # ... and after it
    written: tuple[HourRow, ...] = ()  # the rows written (every recomputed hour, the current one included)
    replaced: tuple[HourRow, ...] = ()  # the rows they replaced in hours before the current one


def floor_hour(ts: datetime) -> datetime:
    """``ts`` rounded down to a whole UTC hour."""
    return ts.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


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


async def _get_meta(conn: asyncpg.Connection, key: str) -> str | None:
    return await conn.fetchval("SELECT value FROM routewatch_meta WHERE key = $1", key)


async def _set_meta(conn: asyncpg.Connection, key: str, value: str) -> None:
    await conn.execute(
        "INSERT INTO routewatch_meta (key, value) VALUES ($1, $2) "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        key,
        value,
    )


async def refresh_hist(
    conn: asyncpg.Connection,
    *,
    retention: timedelta = DEFAULT_RETENTION,
    now: datetime | None = None,
) -> RefreshReport:
    """Recompute the hourly rows of every hour that received rows since the last refresh.

    Affected hours: those spanned by each new ``probe_ingest_log`` row
    (first_started..last_started), plus always the current hour. Hours older
    than ``now - retention`` are never recomputed: their raw rows may be gone,
    so their rollup is kept. One transaction under :data:`HIST_LOCK_KEY`.
    ``now`` defaults to the database's clock (tests may pin it).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", HIST_LOCK_KEY)
        # Taken before reading the log (see XMIN_KEY). No xid is assigned to
        # this transaction yet, so the xmin is the oldest running writer's.
        snap_xmin = await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        if now is None:
            now = await conn.fetchval("SELECT now()")
        assert now is not None
        watermark = int(await _get_meta(conn, WATERMARK_KEY) or 0)
        prev_xmin = await _get_meta(conn, XMIN_KEY)
        if prev_xmin is None:
            logs = await conn.fetch(
                f"SELECT id, first_started, last_started FROM {INGEST_LOG} WHERE id > $1", watermark
            )
        else:
            logs = await conn.fetch(
                f"SELECT id, first_started, last_started FROM {INGEST_LOG} "
                "WHERE id > $1 OR xid >= $2::text::xid8",
                watermark,
                prev_xmin,
            )

        current = floor_hour(now)
        horizon = now - retention
        latest = current + MAX_FUTURE
        affected: set[datetime] = {current}
        skipped: set[datetime] = set()
        for row in logs:
            h = floor_hour(row["first_started"])
            last = min(floor_hour(row["last_started"]), latest)
            if h < horizon:
                # Whole hours older than the horizon are left alone; jump
                # straight to the first hour that may be recomputed.
                first_ok = floor_hour(horizon) + (HOUR if floor_hour(horizon) < horizon else timedelta(0))
                old_end = min(last + HOUR, first_ok)
                skipped.update(h + i * HOUR for i in range(int((old_end - h) / HOUR)))
                h = first_ok
            while h <= last:
                affected.add(h)
                h += HOUR
        hours = sorted(affected)

        raw: list[asyncpg.Record] = []
        for start, end in _hour_ranges(hours):
            raw.extend(await conn.fetch(_RAW, start, end))
        records = _hourly_records(raw)

        past = [h for h in hours if h < current]
        replaced = [
            decode_row(r)
            for r in await conn.fetch(
                f"DELETE FROM {HIST_TABLE} WHERE bucket = ANY($1::timestamptz[]) RETURNING {HOUR_COLUMNS}", past
            )
        ] if past else []
        await conn.execute(f"DELETE FROM {HIST_TABLE} WHERE bucket = $1", current)
        generation_before = await bump_hist_generation(conn)
        if records:
            await conn.copy_records_to_table(HIST_TABLE, records=records, columns=_HIST_COLUMNS)

        new_watermark = max([watermark, *(int(r["id"]) for r in logs)])
        await _set_meta(conn, WATERMARK_KEY, str(new_watermark))
        await _set_meta(conn, XMIN_KEY, str(snap_xmin))
        await conn.execute(
            f"DELETE FROM {INGEST_LOG} WHERE id <= $1 AND xid < $2::text::xid8 AND stored_at < $3",
            new_watermark,
            str(snap_xmin),
            now - INGEST_LOG_KEEP,
        )
    report = RefreshReport(
        now, len(logs), tuple(hours), len(skipped), len(raw), len(records), new_watermark,
        generation_before, generation_before + 1,
        tuple(decode_row(dict(zip(_HIST_COLUMNS, r, strict=True))) for r in records), tuple(replaced),
    )
    log.debug("hist refresh: %s", report)
    return report


def _hourly_records(raw: Sequence[asyncpg.Record]) -> list[tuple[Any, ...]]:
    """probe_hist_hourly rows (in _HIST_COLUMNS order) for the raw rows, grouped with numpy."""
    if not raw:
        return []
    ok = np.fromiter((r["ok"] for r in raw), dtype=bool, count=len(raw))
    over = np.fromiter((r["prober_overloaded"] for r in raw), dtype=bool, count=len(raw))
    ttft = np.array([r["ttft_ms"] for r in raw], dtype=np.float64)
    ttfat = np.array([r["ttfat_ms"] for r in raw], dtype=np.float64)
    tps = np.array([r["output_tps"] for r in raw], dtype=np.float64)
    tok_in = np.array([r["input_tokens"] for r in raw], dtype=np.float64)
    tok_out = np.array([r["output_tokens"] for r in raw], dtype=np.float64)
    counted = ~over
    good = ok & counted

    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, r in enumerate(raw):
        groups[(r["bucket"], r["router"], r["model"], r["provider"], r["region"], r["prompt"],
                r["methodology"])].append(i)

    records = []
    for key, members in groups.items():
        idx = np.asarray(members, dtype=np.intp)
        g_counted, g_good = counted[idx], good[idx]
        failed = idx[g_counted & ~ok[idx]]
        errors = Counter(raw[i]["error_class"] or "unknown" for i in failed)
        started = [raw[i]["started_at"] for i in members]
        sel = idx[g_good]
        records.append((
            *key,
            int(g_counted.sum()),
            int(g_good.sum()),
            int(errors.get("http_429", 0)),
            int(over[idx].sum()),
            json.dumps(dict(sorted(errors.items()))),
            int(np.nansum(tok_in[idx])),
            int(np.nansum(tok_out[idx])),
            min(started),
            max(started),
            Histogram.from_values(ttft[sel]).to_bytes(),
            Histogram.from_values(ttfat[sel]).to_bytes(),
            Histogram.from_values(tps[sel]).to_bytes(),
        ))
    return records


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


HOUR_COLUMNS = (
    "bucket, router, model, provider, region, attempts, ok, rate_limited, overloaded, errors,"
    " input_tokens, output_tokens, first_started, last_started, ttft, ttfat, tps"
)


def decode_row(r: Mapping[str, Any]) -> HourRow:
    """A probe_hist_hourly row (a record with HOUR_COLUMNS, or a dict of _HIST_COLUMNS) decoded."""
    errors = r["errors"]
    return HourRow(
        r["bucket"], r["router"], r["model"], r["provider"], r["region"], r["attempts"], r["ok"],
        r["rate_limited"], r["overloaded"], json.loads(errors) if isinstance(errors, str) else dict(errors),
        r["input_tokens"], r["output_tokens"], r["first_started"], r["last_started"],
        Histogram.from_bytes(r["ttft"]), Histogram.from_bytes(r["ttfat"]), Histogram.from_bytes(r["tps"]),
    )


def cell_keys(router: str, model: str, provider: str, region: str) -> list[CellKey]:
    """The window_stats keys one series-hour contributes to."""
    return [(router, model), (router, model, "provider", provider), (router, model, "region", region)]


def cells_stats(groups: Mapping[CellKey, Sequence[HourRow]]) -> dict[CellKey, CellStats]:
    """CellStats of each cell from the rows (hourly, or already summed) that make it up.

    Counts add up; percentiles and their intervals come from one
    :func:`~.sketch.quantile_table` per metric over all cells at once.
    """
    keys = [k for k, rows in groups.items() if rows]
    members = [groups[k] for k in keys]
    ttft = quantile_table([[h.ttft for h in rows] for rows in members], (0.5, 0.95))
    ttfat = quantile_table([[h.ttfat for h in rows] for rows in members], (0.5, 0.95))
    tps = quantile_table([[h.tps for h in rows] for rows in members], (0.5,))
    out: dict[CellKey, CellStats] = {}
    for g, (key, rows) in enumerate(zip(keys, members, strict=True)):
        errors: Counter[str] = Counter()
        for h in rows:
            errors.update(h.errors)
        firsts = [h.first for h in rows if h.first is not None]
        lasts = [h.last for h in rows if h.last is not None]
        counts = WindowCounts(
            router=key[0],
            model=key[1],
            attempts=sum(h.attempts for h in rows),
            ok=sum(h.ok for h in rows),
            rate_limited=sum(h.rate_limited for h in rows),
            overloaded=sum(h.overloaded for h in rows),
            ttft_p50_ms=ttft.value(g, 0),
            ttft_p95_ms=ttft.value(g, 1),
            ttfat_p50_ms=ttfat.value(g, 0),
            ttfat_p95_ms=ttfat.value(g, 1),
            tps_p50=tps.value(g, 0),
            input_tokens=sum(h.input_tokens for h in rows),
            output_tokens=sum(h.output_tokens for h in rows),
            first_probe=min(firsts) if firsts else None,
            last_probe=max(lasts) if lasts else None,
        )
        out[key] = CellStats(
            counts=counts,
            errors_by_class=dict(sorted((k, v) for k, v in errors.items() if v)),
            ttft_p50_ci=ttft.ci(g, 0),
            ttft_p95_ci=ttft.ci(g, 1),
            ttfat_p50_ci=ttfat.ci(g, 0),
            ttfat_p95_ci=ttfat.ci(g, 1),
            tps_p50_ci=tps.ci(g, 0),
        )
    return out


async def window_stats(
    conn: asyncpg.Connection, windows: Mapping[str, float], now: datetime
) -> dict[str, dict[CellKey, CellStats]]:
    """Stats per window (name -> seconds) per key, merged from probe_hist_hourly.

    Keys: ``(router, model)``, ``(router, model, "provider", p)`` and
    ``(router, model, "region", r)``; a key appears in a window only when it
    has rows there. Windows are hour-aligned (see the module docstring) and
    include the current partial hour as last refreshed by :func:`refresh_hist`:
    call that first. The hourly rows of the longest window are read once.
    """
    if not windows:
        return {}
    current = floor_hour(now)
    starts = {name: window_start(now, seconds) for name, seconds in windows.items()}
    rows = await conn.fetch(
        f"SELECT {HOUR_COLUMNS} FROM {HIST_TABLE} WHERE bucket >= $1 AND bucket <= $2",
        min(starts.values()),
        current,
    )
    by_key: dict[CellKey, list[HourRow]] = defaultdict(list)
    for r in rows:
        h = decode_row(r)
        for key in cell_keys(h.router, h.model, h.provider, h.region):
            by_key[key].append(h)
    return {
        name: cells_stats({key: [h for h in hours if h.bucket >= start] for key, hours in by_key.items()})
        for name, start in starts.items()
    }
