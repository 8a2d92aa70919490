"""The daily budget at run time: today's measured spend, and which series to pause when it crosses the budget.

One process decides, the aggregator's leader (the holder of the refresher
lock): it already reads the database every refresh, it is the only writer of
shared verdicts (status, incidents), and there is exactly one of it however
many prober processes share the series through shard leases. It writes its
decision to ``budget_pauses``; every prober process reads that table and skips
the paused series, whichever shard they fall in. Standbys read the same rows,
so the API and /metrics say the same on every instance.

:func:`choose_pauses` is the rule, a pure function: nothing is paused while
the day's spend is below the budget; once it crosses it, series are paused
dearest first (by their measured cost rate: mean cost per probe today
× probes per day) until the rate of those still probed fits within the
budget. Pauses last until the UTC day turns (a new day has no rows) or the
budget is raised above the day's spend.

Every check also carries the cost plan per day (``BudgetReport.planned_usd_per_day``),
made by a :data:`Planner` from the configuration and what the model catalog says the
routers list, re-made every :data:`PLAN_REREAD_S` and after a reload: the figure each
prober logs, for the API and /metrics. Every process makes it from the same rows.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta

from routewatch.config import Config
from routewatch.storage.connection import Conn
from routewatch.storage.cost_queries import (
    Pause,
    SeriesId,
    SeriesSpend,
    add_pauses,
    clear_pauses,
    db_today,
    read_pauses,
    spend_between,
)

SPEND_DAYS = 31  # days of spend kept for the API's per-day figures
PAST_REREAD_S = 600.0
"""Past days are re-read this often (late results from a drained spool still add to them); today at every check."""
PLAN_REREAD_S = 60.0
"""The cost plan is re-made this often from the catalog (the routers' lists change at ``discover.refresh``), and
at the first check after a reload."""

Planner = Callable[[Conn, Config], Awaitable[float | None]]
"""USD per day a configuration plans with what the catalog says the routers list (``model_discovery``)."""


def series_rate(spend: SeriesSpend, probes_per_day: float) -> float:
    """A series' measured cost rate in USD per day: its mean cost per probe with a cost today × probes per day.

    A probe's cost is the router's reported one where it reported one, else
    the one computed from the model's price (``SeriesSpend.billed_usd``).
    """
    if spend.billed_probes <= 0:
        return 0.0
    return spend.billed_usd / spend.billed_probes * probes_per_day


def choose_pauses(
    today: Iterable[SeriesSpend],
    budget_usd: float,
    probes_per_day: float,
    paused: Mapping[SeriesId, float],
) -> list[Pause]:
    """The series to pause now, dearest first, beyond those already ``paused`` (series -> rate when paused).

    None while the day's spend is below ``budget_usd``. Then the dearest
    series not yet paused are paused until the cost rate of the series still
    probed is at most ``budget_usd`` per day. Series without any cost (no
    price and no reported cost) cost nothing as far as routewatch knows and
    are never paused.
    """
    spends = list(today)
    if sum(s.billed_usd for s in spends) < budget_usd:
        return []
    rates = sorted(
        ((series_rate(s, probes_per_day), s) for s in spends if s.billed_probes > 0),
        key=lambda pair: (-pair[0], pair[1].series),
    )
    running = sum(rate for rate, s in rates if s.series not in paused)
    chosen: list[Pause] = []
    for rate, s in rates:
        if running <= budget_usd:
            break
        if s.series in paused or rate <= 0:
            continue
        chosen.append(Pause(s.router, s.model, s.prompt, rate))
        running -= rate
    return chosen


@dataclass(frozen=True, slots=True)
class BudgetReport:
    """What the API, /metrics and the status page say about spend and the budget."""

    day: date
    budget_usd: float | None  # budget.usd_per_day; None without a budget
    past: tuple[SeriesSpend, ...] = ()  # every series on each of the SPEND_DAYS - 1 days before today
    current: tuple[SeriesSpend, ...] = ()  # every series today
    paused: tuple[Pause, ...] = ()  # today's, dearest first
    planned_usd_per_day: float | None = None  # the cost plan with discovered models and listed prices

    @property
    def spend(self) -> tuple[SeriesSpend, ...]:
        """Every series on each of the last SPEND_DAYS days, oldest first."""
        return (*self.past, *self.current)

    @property
    def spent_today_usd(self) -> float:
        """Today's measured spend over every series: the routers' reported costs where they report them."""
        return sum(s.billed_usd for s in self.current)

    def today(self) -> tuple[SeriesSpend, ...]:
        """Every series' spend today."""
        return self.current

    @property
    def note(self) -> str | None:
        """One sentence for the status page and the API while series are paused."""
        if not self.paused or self.budget_usd is None:
            return None
        n = len(self.paused)
        return (
            f"Probing of {n} series {'is' if n == 1 else 'are'} paused until the end of the day (UTC): "
            f"today's spend ${self.spent_today_usd:,.2f} reached the budget of ${self.budget_usd:,.2f}/day."
        )


@dataclass
class BudgetKeeper:
    """Reads today's spend each time it is asked to; as leader, also pauses series (see the module docstring)."""

    budget_usd: float | None
    probes_per_day: float  # per series: 86400 / schedule.interval
    report: BudgetReport | None = field(default=None)
    # Days before today: read when the day turns and every PAST_REREAD_S, not at every refresh,
    # so that a check reads one row per series, not SPEND_DAYS.
    _past: tuple[SeriesSpend, ...] = field(default=(), repr=False)
    _past_key: tuple[date, float] | None = field(default=None, repr=False)  # (today, monotonic time read)
    # The plan: of ``config`` by ``planner``; None: not planned (the report's figure stays None).
    config: Config | None = field(default=None, repr=False)
    planner: Planner | None = field(default=None, repr=False)
    _planned: tuple[float, float | None] | None = field(default=None, repr=False)  # (monotonic time, USD/day)

    def configure(self, budget_usd: float | None, probes_per_day: float, config: Config | None = None) -> None:
        """Use a reloaded configuration's budget and interval (and ``config``'s plan) from the next check on."""
        self.budget_usd = budget_usd
        self.probes_per_day = probes_per_day
        if config is not None:
            self.config = config
            self._planned = None

    async def _plan(self, conn: Conn) -> float | None:
        """The planned USD per day, re-made every PLAN_REREAD_S."""
        if self.planner is None or self.config is None:
            return None
        if self._planned is None or time.monotonic() - self._planned[0] > PLAN_REREAD_S:
            self._planned = (time.monotonic(), await self.planner(conn, self.config))
        return self._planned[1]

    async def check(self, conn: Conn, *, leader: bool) -> BudgetReport:
        """Read spend and pauses; as ``leader``, pause (or resume) series first. Returns the new report."""
        day = await db_today(conn)
        if self._past_key is None or self._past_key[0] != day or time.monotonic() - self._past_key[1] > PAST_REREAD_S:
            yesterday = day - timedelta(days=1)
            self._past = tuple(await spend_between(conn, day - timedelta(days=SPEND_DAYS - 1), yesterday))
            self._past_key = (day, time.monotonic())
        today = tuple(await spend_between(conn, day, day))
        paused = await read_pauses(conn, day)
        if leader:
            spent = sum(s.billed_usd for s in today)
            if paused and (self.budget_usd is None or spent < self.budget_usd):
                await clear_pauses(conn, day)  # the budget was raised or removed
                paused = []
            elif self.budget_usd is not None:
                new = choose_pauses(
                    today, self.budget_usd, self.probes_per_day, {p.series: p.usd_per_day for p in paused}
                )
                if new:
                    await add_pauses(conn, day, new)
                    paused = await read_pauses(conn, day)
        planned = await self._plan(conn)
        self.report = BudgetReport(day, self.budget_usd, self._past, today, tuple(paused), planned)
        return self.report
