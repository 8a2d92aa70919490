"""The public status endpoints' data, read from the database once per aggregator refresh.

The aggregator publishes the status (states, the open and last 10 closed
incidents) and the stats in memory, but not the 90-day uptime nor a longer
incident history. :class:`PublicStatus` reads those two from the database the
first time they are asked for after a refresh, joins everything into a
:class:`~.status_view.StatusView`, and memoises each rendered body with its
ETag until the next refresh. So a request costs at most two small queries
per refresh, and usually none.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from routewatch.aggregator.model_state import UPTIME_DAYS, DayUptime, Incident
from routewatch.aggregator.model_state_store import StatusReport, read_incidents, read_uptime
from routewatch.aggregator.publish.http_cache import etag_for
from routewatch.aggregator.publish.status_view import StatusView, build_view, with_listed_prices
from routewatch.aggregator.refresh import Aggregator, SeriesKey, Snapshot
from routewatch.storage.errors import DATABASE_ERRORS
from routewatch.storage.read_pools import ReadPools

__all__ = ["PublicStatus", "Published"]

log = logging.getLogger(__name__)

Body = tuple[bytes, str]  # (body, its ETag)


@dataclass(slots=True)
class Published:
    """Everything public about one refresh: the view, the incident history, rendered bodies."""

    report: StatusReport
    snapshot: Snapshot | None
    view: StatusView
    open: tuple[Incident, ...]  # newest first
    closed: tuple[Incident, ...]  # newest end first, at most status_store.INCIDENT_LIST_MAX
    _bodies: dict[str, Body] = field(default_factory=dict)

    def body(self, name: str, render: Callable[[StatusView], bytes]) -> Body:
        """``render(view)`` and its ETag, computed once per refresh and ``name``."""
        found = self._bodies.get(name)
        if found is None:
            data = render(self.view)
            found = self._bodies[name] = (data, etag_for(data))
        return found


class PublicStatus:
    """Reads the uptime and incident history for the aggregator's current status, once per refresh."""

    def __init__(self, reads: ReadPools, prices: Mapping[SeriesKey, float] | None = None) -> None:
        """``reads``: where to read (``storage.read_pools``); ``prices``: USD per 1M input tokens
        by (router, model), from probes.yaml; see ``input_prices``."""
        self._reads = reads
        self.prices: Mapping[SeriesKey, float] = dict(prices or {})
        self._current: Published | None = None
        # One reader at a time: the requests arriving just after a refresh share one read.
        self._lock = asyncio.Lock()

    async def current(self, aggregator: Aggregator) -> Published:
        """The published data for ``aggregator``'s current status and snapshot.

        The status must have been computed (``aggregator.status`` not None).
        If the database cannot be read, the previous refresh's uptime and
        incidents are served with the new states; with no previous read the
        error propagates.
        """
        report, snapshot = aggregator.status, aggregator.snapshot
        budget = aggregator.budget.report
        if report is None:
            raise ValueError("status not computed yet")
        async with self._lock:
            cur = self._current
            if cur is not None and cur.report is report and cur.snapshot is snapshot:
                return cur
            today = _today(report, snapshot)
            try:
                async with self._reads.connection() as conn:
                    uptime = await read_uptime(conn, today - timedelta(days=UPTIME_DAYS - 1))
                    open_, closed = await read_incidents(conn)
            except DATABASE_ERRORS as exc:
                if cur is None:
                    raise
                log.warning(
                    "status page: cannot read uptime and incidents (%s); serving the previous ones",
                    exc.__class__.__name__,
                )
                uptime, open_, closed = _uptime_of(cur.view), cur.open, cur.closed
            view = build_view(
                report,
                snapshot,
                uptime,
                today,
                with_listed_prices(self.prices, snapshot),
                budget.note if budget else None,
            )
            self._current = Published(report, snapshot, view, open_, closed)
            return self._current


def _today(report: StatusReport, snapshot: Snapshot | None) -> date:
    # The evaluation time, not the wall clock: a cached page stays consistent with its data.
    at = report.updated_at or (snapshot.updated_at if snapshot is not None else None) or datetime.now(UTC)
    return at.astimezone(UTC).date()


def _uptime_of(view: StatusView) -> dict[tuple[str, date], DayUptime]:
    return {(row.model, bar.day): bar.uptime for row in view.models for bar in row.days if bar.uptime is not None}


def json_bytes(body: object) -> bytes:
    """Compact UTF-8 JSON, as every public JSON body is sent."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
