"""What ``/v1/costs``, ``/v1/models`` and ``/metrics`` say about prices and spend.

Each model's price is the one its probes are costed at: probes.yaml's, else
the one the router's model list publishes (``config.costs.pick_price``), shown
with its ``source``. Spend is shown two ways side by side: ``usd``, computed by
routewatch from the reported tokens and that price, and ``reported_usd``, what
the router itself said the probes cost (OpenRouter's ``usage.cost``,
LiteLLM's ``x-litellm-response-cost``). ``reported_vs_computed`` is their ratio
over the probes that have both, so an operator sees a configured or listed
price that is wrong. The budget counts ``billed_usd``: the router's figure
where it gave one, else the computed one (docs/cost.md says why).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from routewatch.aggregator.budget import BudgetReport
from routewatch.config.costs import pick_price
from routewatch.config.model import Price
from routewatch.storage.catalog_queries import CatalogRow
from routewatch.storage.cost_queries import SeriesSpend

SeriesKey = tuple[str, str]  # (router, model)


def listed_price(row: CatalogRow | None) -> Price | None:
    """The price the router's list published for the model (both input and output), or None."""
    if row is None or row.input_usd_per_mtok is None or row.output_usd_per_mtok is None:
        return None
    # Not validated again (this runs per model per refresh): the catalog holds only prices the list reader accepted.
    return Price.model_construct(
        input=row.input_usd_per_mtok, output=row.output_usd_per_mtok, cached_input=row.cached_input_usd_per_mtok
    )


def price_json(configured: Price | None, row: CatalogRow | None) -> dict[str, Any] | None:
    """A model's price as the API shows it (USD per 1M tokens, and where it came from); None without one."""
    price, source = pick_price(configured, listed_price(row))
    if price is None:
        return None
    return {
        "input_usd_per_mtok": price.input,
        "output_usd_per_mtok": price.output,
        "cached_input_usd_per_mtok": price.cached_input,
        "source": source,
    }


@dataclass(slots=True)
class SpendSum:
    """Spend summed over series (a model's prompts, or a router's models)."""

    probes: int = 0
    priced_probes: int = 0
    usd: float = 0.0
    reported_probes: int = 0
    reported_usd: float = 0.0
    compared_reported_usd: float = 0.0
    compared_computed_usd: float = 0.0
    billed_usd: float = 0.0

    def add(self, s: SeriesSpend) -> None:
        """Add one series-day."""
        self.probes += s.probes
        self.priced_probes += s.priced_probes
        self.usd += s.cost_usd
        self.reported_probes += s.reported_probes
        self.reported_usd += s.reported_cost_usd
        self.compared_reported_usd += s.compared_reported_usd
        self.compared_computed_usd += s.compared_computed_usd
        self.billed_usd += s.billed_usd

    @property
    def ratio(self) -> float | None:
        """The router's figure over routewatch's, over the probes with both; None where none has both."""
        if self.compared_computed_usd <= 0:
            return None
        return self.compared_reported_usd / self.compared_computed_usd

    def as_json(self) -> dict[str, Any]:
        """The figures of one row of ``/v1/costs``."""
        return {
            "probes": self.probes,
            "priced_probes": self.priced_probes,
            "usd": self.usd,
            "reported_probes": self.reported_probes,
            "reported_usd": self.reported_usd if self.reported_probes else None,
            "reported_vs_computed": self.ratio,
            "billed_usd": self.billed_usd,
        }


def sum_by_model(spend: Iterable[SeriesSpend]) -> dict[tuple[date, str, str], SpendSum]:
    """Series-days summed per (day, router, model) (over prompts)."""
    out: dict[tuple[date, str, str], SpendSum] = {}
    for s in spend:
        out.setdefault((s.day, s.router, s.model), SpendSum()).add(s)
    return out


def costs_json(
    report: BudgetReport,
    days: int,
    router: str | None,
    model: str | None,
    prices: Mapping[SeriesKey, dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """``/v1/costs``' body: the last ``days`` days of ``report``, newest first, filtered.

    ``prices``: each (router, model)'s price as :func:`price_json` shows it.
    """
    first = report.day - timedelta(days=days - 1)
    chosen = [
        s
        for s in report.spend
        if s.day >= first and (router is None or s.router == router) and (model is None or s.model == model)
    ]
    models = sum_by_model(chosen)
    routers: dict[tuple[date, str], SpendSum] = {}
    for s in chosen:
        routers.setdefault((s.day, s.router), SpendSum()).add(s)
    newest = sorted(models, key=lambda k: (-k[0].toordinal(), k[1], k[2]))
    return {
        "day": report.day.isoformat(),
        "budget": {
            "usd_per_day": report.budget_usd,
            "planned_usd_per_day": report.planned_usd_per_day,
            "spent_today_usd": report.spent_today_usd,
            "paused": [
                {"router": p.router, "model": p.model, "prompt": p.prompt, "usd_per_day": p.usd_per_day}
                for p in report.paused
            ],
            "note": report.note,
        },
        "routers": [
            {"day": day.isoformat(), "router": r, **total.as_json()}
            for (day, r), total in sorted(routers.items(), key=lambda kv: (-kv[0][0].toordinal(), kv[0][1]))
        ],
        "models": [
            {
                "day": k[0].isoformat(),
                "router": k[1],
                "model": k[2],
                **models[k].as_json(),
                "price": (prices or {}).get((k[1], k[2])),
            }
            for k in newest
        ],
    }


def cost_families(report: BudgetReport) -> Iterator[Metric]:
    """Per (router, model) today: the computed spend, the router's reported spend, and their ratio."""
    today = {(day_router, m): total for (_, day_router, m), total in sum_by_model(report.today()).items()}
    computed = GaugeMetricFamily(
        "routewatch_cost_today_usd",
        "USD a model's probes on a router cost so far today (UTC day), computed from the tokens and the "
        "model's price (probes.yaml's, else the router's list's); only models with a price",
        labels=["router", "model"],
    )
    reported = GaugeMetricFamily(
        "routewatch_cost_reported_today_usd",
        "USD the router itself reported a model's probes cost so far today (UTC day); only where it reports it",
        labels=["router", "model"],
    )
    ratio = GaugeMetricFamily(
        "routewatch_cost_reported_ratio",
        "Today's reported cost over the computed cost, over the probes with both: far from 1, the price is wrong",
        labels=["router", "model"],
    )
    for (router, model), total in sorted(today.items()):
        if total.priced_probes:
            computed.add_metric([router, model], total.usd)
        if total.reported_probes:
            reported.add_metric([router, model], total.reported_usd)
        if total.ratio is not None:
            ratio.add_metric([router, model], total.ratio)
    yield computed
    yield reported
    yield ratio
