"""Spend per day and series (``probe_cost_daily``, kept by the writer) and the budget's pauses (``budget_pauses``).

Reading spend never touches ``probe_results``: the daily table holds one row
per (UTC day, router, model, prompt), added to in the transaction that stores
the probes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from routewatch.storage.connection import Conn
from routewatch.storage.tables import BUDGET_PAUSES, PROBE_COST_DAILY

SeriesId = tuple[str, str, str]  # (router, model, prompt)


@dataclass(frozen=True, slots=True)
class SeriesSpend:
    """One series' probes and spend over one UTC day."""

    day: date
    router: str
    model: str
    prompt: str
    probes: int
    priced_probes: int  # probes with a cost: the model had a price
    cost_usd: float  # over the priced probes
    reported_probes: int = 0  # probes whose router reported their cost
    reported_cost_usd: float = 0.0  # the router's figures, summed
    compared_probes: int = 0  # probes with both figures
    compared_reported_usd: float = 0.0  # the router's figure over those
    compared_computed_usd: float = 0.0  # routewatch's figure over the same probes

    @property
    def billed_usd(self) -> float:
        """The spend the budget counts: each probe at the router's reported cost, else at the computed one."""
        return self.cost_usd - self.compared_computed_usd + self.reported_cost_usd

    @property
    def billed_probes(self) -> int:
        """Probes with a cost either way (reported or computed)."""
        return self.priced_probes + self.reported_probes - self.compared_probes

    @property
    def series(self) -> SeriesId:
        """(router, model, prompt)."""
        return (self.router, self.model, self.prompt)


@dataclass(frozen=True, slots=True)
class Pause:
    """A series the budget paused for ``day``, and its cost rate (USD per day) when paused."""

    router: str
    model: str
    prompt: str
    usd_per_day: float

    @property
    def series(self) -> SeriesId:
        """(router, model, prompt)."""
        return (self.router, self.model, self.prompt)


async def db_today(conn: Conn) -> date:
    """The database's current UTC day: the one every prober and the writer count spend in."""
    day: date = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    return day


async def spend_between(conn: Conn, first_day: date, last_day: date) -> list[SeriesSpend]:
    """Every series' spend on each UTC day from ``first_day`` to ``last_day`` (both included), oldest day first."""
    rows = await conn.fetch(
        f"SELECT day, router, model, prompt, probes, priced_probes, cost_usd, reported_probes, reported_cost_usd, "
        f"compared_probes, compared_reported_usd, compared_computed_usd FROM {PROBE_COST_DAILY} "
        "WHERE day BETWEEN $1 AND $2 ORDER BY day, router, model, prompt",
        first_day,
        last_day,
    )
    return [SeriesSpend(*row) for row in rows]


async def read_pauses(conn: Conn, day: date) -> list[Pause]:
    """The series paused for ``day``, dearest first."""
    rows = await conn.fetch(
        f"SELECT router, model, prompt, usd_per_day FROM {BUDGET_PAUSES} WHERE day = $1 "
        "ORDER BY usd_per_day DESC, router, model, prompt",
        day,
    )
    return [Pause(*row) for row in rows]


async def add_pauses(conn: Conn, day: date, pauses: Iterable[Pause]) -> None:
    """Pause these series for ``day`` (a series already paused keeps its row)."""
    await conn.executemany(
        f"INSERT INTO {BUDGET_PAUSES} (day, router, model, prompt, usd_per_day) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT DO NOTHING",
        [(day, p.router, p.model, p.prompt, p.usd_per_day) for p in pauses],
    )


async def clear_pauses(conn: Conn, day: date) -> None:
    """Resume every series paused for ``day`` (the budget was raised or removed)."""
    await conn.execute(f"DELETE FROM {BUDGET_PAUSES} WHERE day = $1", day)
