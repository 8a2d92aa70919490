"""The aggregator loop: read the store, publish one consistent snapshot.

Readers (the API) only ever see a complete ``Snapshot``; a refresh builds a
new one and swaps it in, so no request sees half-updated figures.

A refresh first brings the hourly histogram rollup up to date
(``rollup.refresh_hist``: only the hours that received rows, plus the
current one). The leader then updates its in-memory window sums
(``sliding.SlidingWindows``: what changed since the last refresh) and adds
the current hour; a standby keeps the same sums and follows the leader's
changes (``SlidingWindows.follow``: the hours the leader changed since its
previous refresh, read from the table). Both give the figures
``rollup.window_stats`` computes from the table, and a standby that becomes
leader carries its sums over. Windows are hour-aligned: ``n`` whole hours plus the current
partial hour. ``exact_reference.window_counts`` (exact percentiles over raw rows) is
not used here; it stays as the exact reference.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from routewatch.aggregator.budget import BudgetKeeper
from routewatch.aggregator.history import record as record_history
from routewatch.aggregator.model_state_store import StatusReport, StatusTracker, read_report
from routewatch.aggregator.provider_cap import DEFAULT_MAX_PROVIDERS
from routewatch.aggregator.replication_watch import ReplicationWatch
from routewatch.aggregator.rollup import CellKey, RefreshReport, floor_hour, refresh_hist, window_hours, window_start
from routewatch.aggregator.sliding import SlidingWindows
from routewatch.aggregator.stats import CellStats, ModelStats, WindowCounts
from routewatch.config import MaintenanceWindow, SLOConfig
from routewatch.config.tiers import DEFAULT_TIER
from routewatch.storage import catalog_queries, hist_queries
from routewatch.storage.catalog_queries import CatalogRow
from routewatch.storage.clock import db_now
from routewatch.storage.connection import Conn
from routewatch.storage.errors import DATABASE_ERRORS
from routewatch.storage.housekeeping import DEFAULT_RETENTION
from routewatch.storage.leadership import Leadership
from routewatch.storage.read_pools import PRIMARY, ReadPools

log = logging.getLogger(__name__)

KEEP_CHANGES = timedelta(days=1)
"""How long the record of which rollup hours changed (``probe_hist_changes``) is kept:
a standby that has not refreshed for longer rebuilds its window sums."""

SeriesKey = tuple[str, str]  # (router, model)

FULL_COLLECTION_EVERY = 1000
"""The garbage collector's third threshold in a refreshing process (CPython's default is 10):
see :func:`collect_less_often`."""


def collect_less_often() -> None:
    """Make full garbage collections rare in this process.

    Between two refreshes the aggregator keeps hundreds of thousands of
    objects alive (window sums, the snapshot, the status window), and a
    refresh and the bodies rendered after it replace many of them. A full
    collection walks all of them: 0.4 s at 10,000 series. With CPython's
    default thresholds (700, 10, 10) there are about two per refresh, a
    third of its time; with the third threshold at 1000, about one every ten
    refreshes (fewer with fewer series, which allocate less). Those objects
    hold no reference cycles, so reference counting frees them; the
    collector is only needed for cycles elsewhere, which wait longer. Young
    collections, the short and frequent ones, are left as they are.
    """
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every model's stats for every window, as of ``updated_at``."""

    updated_at: datetime
    windows: tuple[str, ...]
    models: tuple[SeriesKey, ...]  # configured first, then any others seen in the data
    stats: Mapping[str, Mapping[SeriesKey, ModelStats]] = field(default_factory=dict)
    # What the routers' model lists said (discovery): retired models and listed prices.
    catalog: Mapping[SeriesKey, CatalogRow] = field(default_factory=dict)

    def retired_at(self, key: SeriesKey) -> datetime | None:
        """When the router's list stopped naming this model; None while listed or never discovered."""
        row = self.catalog.get(key)
        return row.retired_at if row is not None else None


def _empty(key: SeriesKey) -> WindowCounts:
    return WindowCounts(key[0], key[1], 0, 0, 0, 0, None, None, None, None, None, 0, 0, None, None)


def _window_stats(
    name: str,
    now: datetime,
    seconds: float,
    cells: Mapping[CellKey, CellStats],
    models: Sequence[SeriesKey],
    headline_tier: str,
) -> dict[SeriesKey, ModelStats]:
    """Each of ``models``' published stats over one window, from that window's cells
    (the model cells are of ``headline_tier``, see ``rollup.cell_keys``)."""
    start = window_start(now, seconds)
    breakdowns: dict[SeriesKey, dict[str, dict[str, CellStats]]] = {}
    for cell_key, slice_ in cells.items():
        if len(cell_key) == 4:
            by_dim = breakdowns.setdefault((cell_key[0], cell_key[1]), {})
            by_dim.setdefault(cell_key[2], {})[cell_key[3]] = slice_
    out: dict[SeriesKey, ModelStats] = {}
    for key in models:
        cell = cells.get(key)
        out[key] = ModelStats(
            key[0],
            key[1],
            name,
            start,
            now,
            now,
            cell.counts if cell is not None else _empty(key),
            cell=cell,
            breakdown=breakdowns.get(key, {}),
            tier=headline_tier,
        )
    return out


class _Laps:
    """Wall time of each part of one refresh, in the order the parts ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, part: str) -> None:
        """``part`` ended now: it took the time since the previous lap."""
        now = time.perf_counter()
        self.seconds[part] = now - self._last
        self._last = now


class Aggregator:
    """Computes snapshots from the store every ``interval_s`` seconds."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        windows: Mapping[str, float],
        configured: Iterable[SeriesKey],
        interval_s: float,
        *,
        retention: timedelta = DEFAULT_RETENTION,
        leadership: Leadership | None = None,
        history_every: timedelta | None = None,
        slo: SLOConfig | None = None,
        probe_interval_s: float | None = None,
        maintenance: Sequence[MaintenanceWindow] = (),
        max_providers: int = DEFAULT_MAX_PROVIDERS,
        headline_tier: str = DEFAULT_TIER,
        clock: Callable[[], datetime] | None = None,
        notify_targets: Sequence[str] = (),
        reads: ReadPools | None = None,
        budget: BudgetKeeper | None = None,
    ) -> None:
        """With ``leadership``, only the process holding the refresher lock
        rewrites rollups; the others (standbys) compute their snapshots from
        the rollups as the leader left them. Without it, this process always
        refreshes (a single aggregator). With ``history_every``, the
        refreshing process records its snapshot in ``stats_history`` that often.
        With ``slo`` and ``probe_interval_s`` (the probe schedule interval), the
        refreshing process also evaluates model status, incidents and daily
        uptime (``model_state_store``); every process publishes them as ``status``.
        ``max_providers``: named providers per model at most, the rest counted
        as ``other`` (``provider_cap``). ``headline_tier``: the prompt tier the model's headline
        figures come from (``rollup.cell_keys``). ``clock`` gives each refresh's time
        instead of the database's clock (a benchmark pins it). ``notify_targets``: the
        notification targets each incident open and close is queued for. ``reads``: where
        a standby reads (a read replica's pool while it answers, see ``storage.read_pools``);
        default ``pool``. The leader reads and writes on ``pool`` alone. ``budget``: after each
        refresh, today's spend is read and, as leader, the budget's pauses decided (``budget.py``)."""
        self._pool = pool
        self._reads = reads if reads is not None else ReadPools(pool)
        # The server the window sums were last read from (read_pools.PRIMARY or REPLICA):
        # state read from one server is never carried on against another's tables.
        self._sums_from: str | None = None
        self._replication = ReplicationWatch()
        self._windows = dict(windows)  # name -> length in seconds
        self._configured = tuple(configured)
        self._interval = interval_s
        self._retention = retention
        self._leadership = leadership
        self._history_every = history_every
        self._history_last: datetime | None = None
        self._status: StatusTracker | None = None
        if slo is not None:
            if probe_interval_s is None:
                raise ValueError("status needs the probe schedule interval (probe_interval_s) with slo")
            self._status = StatusTracker(
                slo,
                probe_interval_s,
                maintenance,
                refresh_s=interval_s,
                notify_targets=notify_targets,
                headline_tier=headline_tier,
            )
        self._max_providers = max_providers
        self._clock = clock
        self._headline_tier = headline_tier
        self._sliding = SlidingWindows(self._windows, max_providers, headline_tier)
        self._led_last = False  # whether the previous refresh was the leader's
        self._pruned_hour: datetime | None = None  # the hour probe_hist_changes was last pruned in
        # Without a budget, today's spend is still read for the API and /metrics.
        self.budget = budget if budget is not None else BudgetKeeper(None, 0.0)
        self.snapshot: Snapshot | None = None
        self.status: StatusReport | None = None  # None: status disabled, or not read yet
        self.refreshes = 0
        self.last_refresh_s: float | None = None  # wall time of the last successful refresh
        # ... and of its parts: catch-up (a new leader), rollup (leader), windows, snapshot, status,
        # history (when they ran).
        self.last_refresh_parts: dict[str, float] = {}

    def set_configured(self, models: Iterable[SeriesKey]) -> None:
        """Replace the configured (router, model) list, e.g. after a config reload.

        From the next refresh on, these are listed first (with empty stats
        until their first results are stored); a model no longer configured
        stays listed, after them, while some window still holds its results.
        """
        self._configured = tuple(models)

    def set_status_rules(
        self, slo: SLOConfig, probe_interval_s: float, maintenance: Sequence[MaintenanceWindow] = ()
    ) -> None:
        """Judge model status with these SLO targets, probe schedule interval and
        maintenance windows from the next refresh on; nothing when status is disabled."""
        if self._status is not None:
            self._status.reconfigure(slo, probe_interval_s, maintenance)

    @property
    def status_enabled(self) -> bool:
        """Whether this aggregator publishes model status (it was given an SLO)."""
        return self._status is not None

    @property
    def pool(self) -> asyncpg.Pool:
        """The database pool the aggregator reads (and, as leader, writes) through."""
        return self._pool

    @property
    def reads(self) -> ReadPools:
        """Where this process's reads that may be a little behind go (a standby's refresh, the API's)."""
        return self._reads

    @property
    def interval_s(self) -> float:
        """Seconds between refreshes."""
        return self._interval

    @property
    def window_rebuilds(self) -> int:
        """How often this process read its window sums whole from the table (``sliding.SlidingWindows``)."""
        return self._sliding.rebuilds

    @property
    def window_follows(self) -> int:
        """How often this process, as a standby, brought its window sums up to date by
        reading only what the leader changed (``SlidingWindows.follow``)."""
        return self._sliding.follows

    @property
    def status_window_reads(self) -> int:
        """How often the leader read the SLO window's probes whole from the table
        (``model_state_store.RecentProbes``); 0 with status disabled."""
        return self._status.recent.reloads if self._status is not None else 0

    @property
    def role(self) -> str:
        """``leader`` (this process refreshes the rollups) or ``standby``."""
        return "leader" if self._leadership is None or self._leadership.is_leader else "standby"

    async def refresh(self) -> Snapshot:
        """Bring the rollup up to date (leader only), recompute every window, publish the result.

        A standby's refresh that failed because its read replica went away is
        tried again at once, on the primary.
        """
        started = time.perf_counter()
        parts = _Laps()
        switches = self._reads.switches
        try:
            snapshot = await self._refresh(parts)
        except DATABASE_ERRORS:
            if self._reads.switches == switches:
                raise
            parts = _Laps()
            snapshot = await self._refresh(parts)
        self.last_refresh_s = time.perf_counter() - started
        self.last_refresh_parts = parts.seconds
        return snapshot

    async def _refresh(self, laps: _Laps) -> Snapshot:
        if self._leadership is not None:
            await self._leadership.try_acquire()
        report: RefreshReport | None = None  # the leader's rollup refresh
        if self.role == "leader":
            async with self._pool.acquire() as conn:
                self._sums_on(PRIMARY)
                if not self._led_last:
                    # Just became leader (or started): bring the sums to the table as it
                    # stands, so that the refresh below finds them in step.
                    await self._sliding.follow(conn, await self._now(conn))
                    self._led_last = True
                    laps.lap("catch-up")
                if self._replication.due():
                    await self._replication.check(conn)
                report = await refresh_hist(
                    conn,
                    now=self._clock() if self._clock is not None else None,
                    retention=self._retention,
                    known=self._sliding.known_hour(),
                    max_providers=self._max_providers,
                    headline_tier=self._headline_tier,
                    label_hours=max((window_hours(s) for s in self._windows.values()), default=1),
                )
                now = report.now
                laps.lap("rollup")
                await self._sliding.update(conn, report)
                await self._sliding.note_position(conn)
                await self._prune_changes(conn, now)
                cells = self._sliding.stats()
        else:
            self._led_last = False
            async with self._reads.acquire() as read:
                self._sums_on(read.server)
                now = await self._now(read.conn)
                await self._sliding.follow(read.conn, now)
                cells = self._sliding.stats()
        seen: list[SeriesKey] = list(self._configured)
        others = sorted({(k[0], k[1]) for per_window in cells.values() for k in per_window} - set(seen))
        seen.extend(others)
        # Which models a router still lists (``discover:``): written by the probers, read where the API reads.
        async with self._reads.connection() as conn:
            catalog = {(row.router, row.model): row for row in await catalog_queries.read_catalog(conn, seen)}
        laps.lap("windows")
        stats = {
            name: _window_stats(name, now, seconds, cells.get(name, {}), seen, self._headline_tier)
            for name, seconds in self._windows.items()
        }
        laps.lap("snapshot")
        if self._status is not None:
            # Configured, or found by discovery and still listed (the status engine adds those probed lately).
            monitored = {model for _, model in self._configured} | {
                key[1] for key, row in catalog.items() if row.retired_at is None
            }
            await self._refresh_status(now, [model for _, model in seen], report, monitored)
            laps.lap("status")
        # Before the snapshot: the bodies cached for it carry this spend.
        async with self._pool.acquire() as conn:
            await self.budget.check(conn, leader=self.role == "leader")
        laps.lap("budget")
        self.snapshot = Snapshot(now, tuple(self._windows), tuple(seen), stats, catalog)
        self.refreshes += 1
        if self._history_due(now):
            async with self._pool.acquire() as conn:
                await record_history(conn, now, [m for per in stats.values() for m in per.values()])
            self._history_last = now
            laps.lap("history")
        return self.snapshot

    def _sums_on(self, server: str) -> None:
        """The window sums are about to be read from ``server``: from another than last time,
        they start again from its tables (a replica is behind the primary; positions taken
        on one are not compared against the other)."""
        if self._sums_from is not None and self._sums_from != server:
            self._sliding.forget()
        self._sums_from = server

    async def _now(self, conn: Conn) -> datetime:
        return self._clock() if self._clock is not None else await db_now(conn)

    async def _prune_changes(self, conn: Conn, now: datetime) -> None:
        """Once an hour, forget which rollup hours changed more than KEEP_CHANGES ago."""
        hour = floor_hour(now)
        if self._pruned_hour != hour:
            await hist_queries.prune_changes(conn, KEEP_CHANGES)
            self._pruned_hour = hour

    async def _refresh_status(
        self, now: datetime, models: list[str], report: RefreshReport | None, monitored: set[str]
    ) -> None:
        """Leader: evaluate and store the status; everyone: read back what is stored."""
        assert self._status is not None
        if self.role == "leader":
            async with self._pool.acquire() as conn:
                await self._status.evaluate(conn, models, now, report, monitored)
                self.status = await read_report(conn)
            return
        self._status.forget()  # a later leadership starts from the tables
        async with self._reads.connection() as conn:
            self.status = await read_report(conn)

    def _history_due(self, now: datetime) -> bool:
        if self._history_every is None or self.role != "leader":
            return False
        return self._history_last is None or now - self._history_last >= self._history_every

    async def run(self) -> None:
        """Refresh forever; a failed refresh keeps the last snapshot published.

        Also makes full garbage collections rarer in this process (:func:`collect_less_often`).
        """
        collect_less_often()
        while True:
            try:
                await self.refresh()
            except DATABASE_ERRORS as exc:
                log.warning("stats refresh failed (%s); serving the previous snapshot", exc.__class__.__name__)
            await asyncio.sleep(self._interval)
