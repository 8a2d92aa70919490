"""The model pages' data and bodies: read once per refresh and model, rendered once, then served from memory.

A model page needs more than the snapshot: its charted history, the hourly
profile and its served models (``storage.model_page_queries``, four indexed
reads per router). :class:`ModelPages` reads them the first time a page is
asked for after a refresh, renders it, and keeps the body with its ETag
until the next refresh (the snapshot or the status report changes), like
the status page's :class:`~.public_status.PublicStatus`. Requests for the
same page that arrive while it renders wait for that one render instead of
reading again. At most :data:`MAX_PAGES` bodies are kept per refresh; a
page past that is rendered per request (crawlers of a catalog of thousands
cost reads, never unbounded memory).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from routewatch.aggregator.model_state import State
from routewatch.aggregator.publish.cost_view import listed_price
from routewatch.aggregator.publish.display import format_utc
from routewatch.aggregator.publish.http_cache import etag_for
from routewatch.aggregator.publish.model_view import (
    CHART_METRICS,
    PROFILE_SPAN,
    RANGES,
    Chart,
    ModelPageView,
    RoutePage,
    ShareTable,
    chart_lines,
    chart_window,
    hour_profile,
    model_incidents,
    provider_shares,
    served_shares,
    window_lengths,
)
from routewatch.aggregator.publish.public_status import Published
from routewatch.aggregator.publish.status_view import page_window
from routewatch.aggregator.refresh import Aggregator, SeriesKey, Snapshot
from routewatch.storage.connection import Conn
from routewatch.storage.model_page_queries import history_buckets, model_hours, served_model_counts
from routewatch.storage.read_pools import ReadPools

__all__ = ["MAX_PAGES", "MAX_SERVED_MODELS", "ModelPages", "load_view"]

MAX_PAGES = 1024  # rendered pages kept per refresh (~30 KB each, gzip kept separately by http_cache)
MAX_SERVED_MODELS = 8  # served models listed by name; the rest are counted as "other"
READ_TIMEOUT_S = 5.0

Body = tuple[bytes, str]  # (body, its ETag)
Render = Callable[[ModelPageView], bytes]


@dataclass(frozen=True, slots=True)
class _Generation:
    snapshot: Snapshot
    status: object


class ModelPages:
    """Rendered model pages of the current refresh, by model id."""

    def __init__(self, reads: ReadPools, prices: Mapping[SeriesKey, float]) -> None:
        self._reads = reads
        self._prices = prices
        self._generation: _Generation | None = None
        self._bodies: dict[str, Body] = {}
        # By (snapshot, status, model) identity: a render of the previous refresh is never waited for.
        self._pending: dict[tuple[int, int, str], asyncio.Future[Body | None]] = {}

    async def body(
        self, aggregator: Aggregator, published: Published | None, model: str, render: Render
    ) -> Body | None:
        """The page of ``model`` and its ETag; None when no router publishes it.

        Database errors propagate (the caller answers 503); nothing is cached then.
        """
        snapshot = aggregator.snapshot
        if snapshot is None:
            raise ValueError("stats not computed yet")
        gen = _Generation(snapshot, aggregator.status)
        if self._generation is None or not _same(self._generation, gen):
            self._generation, self._bodies = gen, {}
        found = self._bodies.get(model)
        if found is not None:
            return found
        # The ids are unique while the render runs: it holds gen, and with it both objects.
        key = (id(snapshot), id(gen.status), model)
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Body | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            view = await load_view(self._reads, aggregator, snapshot, published, model, self._prices)
            result = None if view is None else _with_etag(render(view))
            current = self._generation is not None and _same(self._generation, gen)
            if result is not None and current and len(self._bodies) < MAX_PAGES:
                self._bodies[model] = result
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it; no "never retrieved" warning without them
            raise
        finally:
            del self._pending[key]


def _same(a: _Generation, b: _Generation) -> bool:
    return a.snapshot is b.snapshot and a.status is b.status


def _with_etag(data: bytes) -> Body:
    return data, etag_for(data)


def _input_price(configured: Mapping[SeriesKey, float], snapshot: Snapshot, key: SeriesKey) -> float | None:
    """USD per 1M input tokens: probes.yaml's, else the router's list's (the rule the probes are costed by)."""
    if key in configured:
        return configured[key]
    listed = listed_price(snapshot.catalog.get(key))
    return listed.input if listed is not None else None


async def load_view(
    reads: ReadPools,
    aggregator: Aggregator,
    snapshot: Snapshot,
    published: Published | None,
    model: str,
    prices: Mapping[SeriesKey, float],
) -> ModelPageView | None:
    """Read and join everything ``model``'s page shows; None when no router publishes it."""
    routers = [router for router, name in snapshot.models if name == model]
    if not routers:
        return None
    report = aggregator.status
    status = next((m for m in report.models if m.model == model), None) if report is not None else None
    row = next((r for r in published.view.models if r.model == model), None) if published is not None else None
    incidents = model_incidents(model, published.open, published.closed) if published is not None else ()
    async with reads.connection() as conn:
        routes = [
            await _route_page(conn, snapshot, router, model, _input_price(prices, snapshot, (router, model)))
            for router in routers
        ]
    return ModelPageView(
        model=model,
        state=status.state if status is not None else State.UNKNOWN,
        since=status.since if status is not None else None,
        reason=status.reason if status is not None else "",
        window=page_window(snapshot),
        updated_at=snapshot.updated_at,
        status_updated_at=report.updated_at if report is not None else None,
        routes=tuple(routes),
        status=row,
        incidents=incidents,
    )


async def _route_page(conn: Conn, snapshot: Snapshot, router: str, model: str, price: float | None) -> RoutePage:
    end = snapshot.updated_at
    lengths = window_lengths(snapshot.windows)
    charts: list[Chart] = []
    # One read per (window, bucket unit): the 24 h and 7 d ranges share their hourly rows.
    reads: dict[tuple[str, str], list[asyncpg.Record]] = {}
    for chart_range in RANGES:
        window = chart_window(lengths, chart_range.bucket_s)
        longest = max(r.span for r in RANGES if r.unit == chart_range.unit)
        key = (window, chart_range.unit)
        if key not in reads:
            reads[key] = await history_buckets(
                conn, router, model, window, chart_range.unit, end - longest, end, timeout=READ_TIMEOUT_S
            )
        start = end - chart_range.span
        for metric, title, unit, columns in CHART_METRICS:
            charts.append(
                Chart(
                    id=f"{metric}-{chart_range.label.replace(' ', '')}",
                    title=title,
                    unit=unit,
                    range=chart_range,
                    window=window,
                    start=start,
                    end=end,
                    lines=chart_lines(reads[key], columns, _floor(start, chart_range.unit)),
                )
            )
    hours = await model_hours(conn, router, model, _floor(end - PROFILE_SPAN, "hour"), end, timeout=READ_TIMEOUT_S)
    headline = snapshot.stats[page_window(snapshot)][(router, model)]
    served_from = headline.window_start
    served = await served_model_counts(conn, router, model, served_from, end, MAX_SERVED_MODELS, timeout=READ_TIMEOUT_S)
    return RoutePage(
        router=router,
        stats={w: snapshot.stats[w][(router, model)] for w in snapshot.windows},
        input_price=price,
        charts=tuple(charts),
        profile=hour_profile(hours),
        shares=(
            ShareTable(
                "providers",
                "Providers",
                f"Who served the probes of the last {headline.window}, as the router named them.",
                "no provider named",
                provider_shares(headline),
            ),
            ShareTable(
                "served",
                "Served models",
                f"The model the router says answered, since {format_utc(served_from)}.",
                "not reported",
                served_shares(served),
            ),
        ),
    )


def _floor(at: datetime, unit: str) -> datetime:
    """The start of ``at``'s hour or UTC day: the bucket a range's first point falls in."""
    hour = at.replace(minute=0, second=0, microsecond=0)
    return hour if unit == "hour" else hour.replace(hour=0)
