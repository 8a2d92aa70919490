"""Model discovery in a prober process: each router's model list, read on a schedule, feeds the probe schedule.

Every prober process reads the lists itself (one request per router per
``discover.refresh``; a handful of requests an hour, whatever the number of
processes), so a prober needs no other process to learn the set and a
regional prober that pushes its results discovers just the same. The series
of a discovered model are added to the process's schedule like configured
ones: each is hashed to its shard and its phase, so only the shard's holder
probes it and the new models' first probes are spread over the interval, never
a burst. Two processes may disagree for up to one refresh about a model that
has just come or gone; a slot of that model is then probed or skipped once,
never twice (its shard has one holder).

With a database, each complete list is recorded in ``model_catalog``
(``storage/catalog_queries.py``), whose writes are ordered by the time each
list was read, so that processes writing in any order agree on when a model
was retired. A prober that pushes its results sends each read to the central
server instead (``delivery/catalog_push.py``), which records it the same
way. At start the catalog's listed models are probed until the first list is
read, so that a restart while the router's list is failing keeps the probes
going.

The prices a list publishes (OpenRouter's ``pricing``) are kept for the
models probed, configured or discovered, and cost their probes where
probes.yaml gives the model no price (``config.costs.model_price``); a change
of price re-plans the schedule like a change of models.

A list that cannot be read or is malformed (``routewatch/probe/model_listing.py``) keeps
the last good set: the failure is logged (without the key) and counted in
``/metrics``, and the probes go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime

import aiohttp
import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from routewatch.config import Config, RouterConfig
from routewatch.config.costs import plan_costs
from routewatch.config.model import Price
from routewatch.delivery.catalog_push import CatalogPusher
from routewatch.probe.model_listing import Listing, ListingError, read_listing
from routewatch.probe.model_selection import select_models
from routewatch.probe.targets import RouterPlan
from routewatch.results.probe_result import ProbeResult
from routewatch.storage import catalog_queries
from routewatch.storage.connection import Conn
from routewatch.storage.errors import DATABASE_ERRORS

log = logging.getLogger("routewatch.discovery")

Apply = Callable[["ModelDiscovery"], Awaitable[None]]
EARLY_READ_S = 30.0
"""A router's list is read ahead of its schedule (a discovered model answered 404) at most this often."""


def discovering(config: Config) -> list[RouterConfig]:
    """The routers whose model list is read."""
    return [r for r in config.routers if r.discover is not None and r.discover.enabled]


class ModelDiscovery:
    """The discovered models of each router, refreshed by one APScheduler job per discovering router."""

    def __init__(
        self,
        config: Config,
        routers: Sequence[RouterPlan],
        session: aiohttp.ClientSession,
        apply: Apply,
        pool: asyncpg.Pool | None = None,
        catalog_push: CatalogPusher | None = None,
    ) -> None:
        """``apply`` is awaited after the set of some router changed (it re-plans the probe schedule).
        ``pool``: the database the catalog is recorded in; else ``catalog_push`` sends it to the central server."""
        self._config = config
        self._routers = {r.name: r for r in routers}
        self._session = session
        self._apply = apply
        self._pool = pool
        self._catalog_push = catalog_push
        self._scheduler = AsyncIOScheduler()
        self.discovered: dict[str, tuple[str, ...]] = {}  # router -> models probed besides the configured ones
        self.prices: dict[str, dict[str, Price]] = {}  # router -> model probed -> its listed price
        self.listings: Counter[tuple[str, str]] = Counter()  # (router, "ok" | "failed") -> reads
        self.over_cap: dict[str, int] = {}  # router -> matching models the cap left out
        self.last_ok: dict[str, float] = {}  # router -> Unix time of its last good list
        self._early: dict[str, float] = {}  # router -> monotonic time of its last read ahead of schedule

    @property
    def config(self) -> Config:
        """The configuration discovery follows (the probe schedule's)."""
        return self._config

    @property
    def catalog_push(self) -> CatalogPusher | None:
        """What sends the list reads to the central catalog (a prober without a database); else None."""
        return self._catalog_push

    async def start(self) -> None:
        """Probe what the catalog has as listed, then read every list now and on its schedule."""
        await self._seed()
        self._scheduler.start()
        self._schedule_jobs()

    async def stop(self) -> None:
        """No more reads; one under way is abandoned."""
        self._scheduler.pause()
        # A job submitted just before the pause has a task that has not run yet: let it start
        # (and find itself cancelled quietly) rather than be cancelled before its first step.
        await asyncio.sleep(0)
        self._scheduler.shutdown(wait=False)
        await asyncio.sleep(0)

    def reconfigure(self, config: Config, routers: Sequence[RouterPlan]) -> None:
        """Follow a reloaded configuration: new globs, refresh intervals and routers; every list is read again now."""
        self._config = config
        self._routers = {r.name: r for r in routers}
        names = {r.name for r in discovering(config)}
        self.discovered = {name: models for name, models in self.discovered.items() if name in names}
        self.prices = {name: prices for name, prices in self.prices.items() if name in names}
        self._scheduler.remove_all_jobs()
        self._schedule_jobs()

    def _schedule_jobs(self) -> None:
        now = datetime.now(UTC)
        for router in discovering(self._config):
            assert router.discover is not None
            self._scheduler.add_job(
                self.refresh,
                IntervalTrigger(seconds=router.discover.refresh),
                args=[router.name],
                id=f"discover|{router.name}",
                next_run_time=now,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(router.discover.refresh)),
            )

    async def _seed(self) -> None:
        if self._pool is None:
            return
        try:
            async with self._pool.acquire() as conn:
                discovered, prices = await catalog_selection(conn, self._config)
            self.discovered.update(discovered)
            self.prices.update(prices)
        except DATABASE_ERRORS as exc:
            log.warning(
                "model catalog not read at start (%s); discovered models wait for the first list", type(exc).__name__
            )
            return
        if self.discovered:
            found = sum(len(models) for models in self.discovered.values())
            log.info("probing the %d discovered models the catalog lists until the routers' lists are read", found)
            await self._apply(self)

    def note_result(self, result: ProbeResult) -> None:
        """A probe finished: a discovered model the router answers 404 for has probably left its list, so
        the list is read now rather than at the next refresh (at most once per :data:`EARLY_READ_S` per
        router), before the failures of a model that is gone make it ``down`` and open an incident."""
        if result.http_status != 404 or result.model not in self.discovered.get(result.router, ()):
            return
        if not self._scheduler.running:  # stopping: probes in flight still finish
            return
        now = time.monotonic()
        if now - self._early.get(result.router, -EARLY_READ_S) < EARLY_READ_S:
            return
        job = self._scheduler.get_job(f"discover|{result.router}")
        if job is None:
            return
        self._early[result.router] = now
        log.info("router %s answers 404 for %s: reading its model list now", result.router, result.model)
        job.modify(next_run_time=datetime.now(UTC))

    async def refresh(self, name: str) -> None:
        """Read router ``name``'s list once; on success probe what it selects, else keep the last good set."""
        try:
            await self._refresh(name)
        except asyncio.CancelledError:
            # The job's own task, cancelled by the scheduler's shutdown: nothing awaits it.
            log.debug("model list read of router %s abandoned at shutdown", name)

    async def _refresh(self, name: str) -> None:
        router = next((r for r in discovering(self._config) if r.name == name), None)
        target = self._routers.get(name)
        if router is None or router.discover is None or target is None:
            return
        seen = datetime.now(UTC)
        try:
            # Never longer than the refresh: a read that hangs must not make the next one wait.
            timeout_s = min(self._config.timeouts.total, router.discover.refresh)
            listing = await read_listing(self._session, target.url, target.api_key, target.headers, timeout_s)
        except ListingError as exc:
            self.listings[(name, "failed")] += 1
            kept = len(self.discovered.get(name, ()))
            log.warning(
                "model list of router %s not used: %s; still probing the %d models found before", name, exc, kept
            )
            return
        self.listings[(name, "ok")] += 1
        self.last_ok[name] = seen.timestamp()
        selection = select_models(listing.models, router.discover, router.models)
        self.over_cap[name] = selection.over_cap
        self._note(name, listing, selection.over_cap)
        await self._record(name, seen, listing, router.models)
        before = self.discovered.get(name, ())
        chosen = selection.models
        if listing.truncated:  # what was cut off may still be there: nothing is dropped
            chosen = select_models({*chosen, *before}, router.discover, router.models).models
        prices = listed_prices(listing, (*router.models, *chosen), self.prices.get(name, {}))
        if chosen != before or prices != self.prices.get(name, {}):
            if chosen != before:
                added = len(set(chosen) - set(before))
                gone = len(set(before) - set(chosen))
                log.info("router %s lists %d models to probe: %d new, %d gone", name, len(chosen), added, gone)
            self.discovered[name] = chosen
            self.prices[name] = prices
            with suppress(RuntimeError):  # the probe schedule has stopped: shutting down
                await self._apply(self)

    def _note(self, name: str, listing: Listing, over_cap: int) -> None:
        if listing.truncated:
            log.warning(
                "model list of router %s is longer than routewatch reads (%d pages, %d ids): the rest is ignored",
                name,
                listing.pages,
                len(listing.models),
            )
        if listing.skipped:
            log.warning("model list of router %s: %d entries without a usable id skipped", name, listing.skipped)
        if listing.rejected_prices:
            model, why = next(iter(listing.rejected_prices.items()))
            log.warning(
                "model list of router %s: the listed prices of %d models not used (%s: %s)",
                name,
                len(listing.rejected_prices),
                model,
                why,
            )
        if over_cap:
            log.warning(
                "router %s lists %d more matching models than discover.max_models; the first by id are probed",
                name,
                over_cap,
            )

    async def _record(self, name: str, seen: datetime, listing: Listing, keep: Sequence[str]) -> None:
        if self._pool is None and self._catalog_push is None:
            return
        listed = [
            (model, price.input, price.output, price.cached_input) if price else (model, None, None, None)
            for model, price in listing.models.items()
        ]
        if self._pool is None:
            assert self._catalog_push is not None
            # In the background: neither this read's re-plan nor result delivery waits for the central server.
            self._catalog_push.submit(name, seen, listed, complete=not listing.truncated, keep=keep)
            return
        try:
            async with self._pool.acquire() as conn:
                await catalog_queries.record_listing(
                    conn, name, seen, listed, complete=not listing.truncated, keep=keep
                )
        except DATABASE_ERRORS as exc:
            # The probes follow the list all the same; the catalog catches up at the next read.
            log.warning("model list of router %s not recorded in the catalog: %s", name, type(exc).__name__)


async def catalog_selection(
    conn: Conn, config: Config
) -> tuple[dict[str, tuple[str, ...]], dict[str, dict[str, Price]]]:
    """What the catalog says each discovering router of ``config`` lists now: the models to probe
    besides the configured ones (routers with none left out), and the listed prices of the models
    probed, configured or discovered; as a prober's discovery would choose them from the lists."""
    discovered: dict[str, tuple[str, ...]] = {}
    prices: dict[str, dict[str, Price]] = {}
    for router in discovering(config):
        assert router.discover is not None
        listed = await catalog_queries.listed_models(conn, router.name)
        chosen = select_models(listed, router.discover, router.models).models
        if chosen:
            discovered[router.name] = chosen
        prices[router.name] = {
            m: Price(input=p[0], output=p[1], cached_input=p[2])
            for m in (*router.models, *chosen)
            if (p := listed.get(m)) is not None
        }
    return discovered, prices


async def catalog_cost_plan(conn: Conn, config: Config) -> float | None:
    """``config``'s planned USD per day with the models and prices the catalog has the routers list
    (``config.costs.plan_costs``), the figure each prober logs; None when no model has a price."""
    discovered, prices = await catalog_selection(conn, config)
    return plan_costs(config, prices, discovered).usd_per_day


def listed_prices(listing: Listing, models: Sequence[str], before: Mapping[str, Price]) -> dict[str, Price]:
    """The listed prices of ``models`` (those probed); ``before``: the last ones.

    A truncated listing may not have reached a model probed before: its last price is kept.
    """
    out: dict[str, Price] = {}
    for model in models:
        found = listing.models.get(model)
        if found is not None:
            out[model] = found.as_price()
        elif listing.truncated and model not in listing.models and model in before:
            out[model] = before[model]
    return out


async def discover_once(
    config: Config, routers: Sequence[RouterPlan]
) -> tuple[dict[str, tuple[str, ...]], dict[str, dict[str, Price]], list[str]]:
    """Read each discovering router's list once (``routewatch once``): the models to probe by router,
    their listed prices, and one line per router saying what was found or why its list was not used."""
    found: dict[str, tuple[str, ...]] = {}
    prices: dict[str, dict[str, Price]] = {}
    lines: list[str] = []
    targets = {r.name: r for r in routers}
    async with aiohttp.ClientSession() as session:
        for router in discovering(config):
            assert router.discover is not None
            target = targets[router.name]
            try:
                listing = await read_listing(session, target.url, target.api_key, target.headers, config.timeouts.total)
            except ListingError as exc:
                lines.append(f"router {router.name}: model list not used: {exc}")
                continue
            selection = select_models(listing.models, router.discover, router.models)
            found[router.name] = selection.models
            prices[router.name] = listed_prices(listing, (*router.models, *selection.models), {})
            capped = f" ({selection.over_cap} more past discover.max_models)" if selection.over_cap else ""
            lines.append(
                f"router {router.name} lists {len(listing.models)} models; probing {len(selection.models)}{capped}"
            )
    return found, prices, lines


@asynccontextmanager
async def running_discovery(
    config: Config,
    routers: Sequence[RouterPlan],
    apply: Apply,
    pool: asyncpg.Pool | None,
    catalog_push: CatalogPusher | None = None,
) -> AsyncIterator[ModelDiscovery]:
    """Discovery running while open (reading nothing if no router discovers); each read recorded in
    ``pool``'s catalog, else sent by ``catalog_push`` (a prober that pushes its results).

    Its own HTTP client: a list read never takes a connection the probes' pool has room for.
    """
    async with aiohttp.ClientSession() as session:
        discovery = ModelDiscovery(config, routers, session, apply, pool, catalog_push)
        await discovery.start()
        try:
            yield discovery
        finally:
            with suppress(RuntimeError):
                await discovery.stop()


def discovery_families(discovery: ModelDiscovery) -> Iterator[Metric]:
    """The ``/metrics`` families of discovery: list reads by outcome, models found, the last good read."""
    reads = CounterMetricFamily(
        "routewatch_discovery_listings", "Reads of a router's model list, by outcome", labels=["router", "outcome"]
    )
    for (router, outcome), n in sorted(discovery.listings.items()):
        reads.add_metric([router, outcome], n)
    yield reads
    models = GaugeMetricFamily(
        "routewatch_discovery_models", "Models probed because the router lists them", labels=["router"]
    )
    capped = GaugeMetricFamily(
        "routewatch_discovery_models_over_cap",
        "Listed models matching discover's globs but past discover.max_models, not probed",
        labels=["router"],
    )
    last = GaugeMetricFamily(
        "routewatch_discovery_last_success_timestamp_seconds",
        "When the router's model list was last read and used",
        labels=["router"],
    )
    for router in sorted({r.name for r in discovering(discovery.config)}):
        models.add_metric([router], len(discovery.discovered.get(router, ())))
        capped.add_metric([router], discovery.over_cap.get(router, 0))
        if router in discovery.last_ok:
            last.add_metric([router], discovery.last_ok[router])
    yield models
    yield capped
    yield last
    pusher = discovery.catalog_push
    if pusher is not None:  # a pushing prober: its reads as the central catalog took them
        pushes = CounterMetricFamily(
            "routewatch_discovery_catalog_pushes",
            "Model list reads sent to the central server's catalog, by outcome (recorded or failed)",
            labels=["router", "outcome"],
        )
        for (router, outcome), n in sorted(pusher.outcomes.items()):
            pushes.add_metric([router, outcome], n)
        yield pushes
