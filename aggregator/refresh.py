"""The aggregator loop: read the store, publish one consistent snapshot.

Readers (the API) only ever see a complete ``Snapshot``; a refresh builds a
new one and swaps it in, so no request sees half-updated figures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import asyncpg

from .stats import ModelStats, WindowCounts
from .store import window_counts

log = logging.getLogger(__name__)

SeriesKey = tuple[str, str]  # (router, model)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every model's stats for every window, as of ``updated_at``."""

    updated_at: datetime
    windows: tuple[str, ...]
    models: tuple[SeriesKey, ...]  # configured first, then any others seen in the data
    stats: Mapping[str, Mapping[SeriesKey, ModelStats]] = field(default_factory=dict)


def _empty(key: SeriesKey) -> WindowCounts:
    return WindowCounts(key[0], key[1], 0, 0, 0, 0, None, None, None, None, None, 0, 0, None, None)


class Aggregator:
    """Computes snapshots from the store every ``interval_s`` seconds."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        windows: Mapping[str, float],
        configured: Iterable[SeriesKey],
        interval_s: float,
    ) -> None:
        self._pool = pool
        self._windows = dict(windows)  # name -> length in seconds
        self._configured = tuple(configured)
        self._interval = interval_s
        self.snapshot: Snapshot | None = None
        self.refreshes = 0

    @property
    def interval_s(self) -> float:
        """Seconds between refreshes."""
        return self._interval

    async def refresh(self) -> Snapshot:
        """Recompute every window now and publish the result."""
        now = datetime.now(timezone.utc)
        stats: dict[str, dict[SeriesKey, ModelStats]] = {}
        seen: list[SeriesKey] = list(self._configured)
        async with self._pool.acquire() as conn:
            for name, seconds in self._windows.items():
                start = now - timedelta(seconds=seconds)
                counts = {(c.router, c.model): c for c in await window_counts(conn, start, now)}
                for key in counts:
                    if key not in seen:
                        seen.append(key)
                stats[name] = {
                    key: ModelStats(key[0], key[1], name, start, now, now, counts.get(key) or _empty(key))
                    for key in seen
                }
        # Keys first seen in a later window must appear in every window.
        for name, per_model in stats.items():
            start = now - timedelta(seconds=self._windows[name])
            for key in seen:
                if key not in per_model:
                    per_model[key] = ModelStats(key[0], key[1], name, start, now, now, _empty(key))
        self.snapshot = Snapshot(now, tuple(self._windows), tuple(seen), stats)
        self.refreshes += 1
        return self.snapshot

    async def run(self) -> None:
        """Refresh forever; a failed refresh keeps the last snapshot published."""
        while True:
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("stats refresh failed (%s); serving the previous snapshot", exc.__class__.__name__)
            await asyncio.sleep(self._interval)
