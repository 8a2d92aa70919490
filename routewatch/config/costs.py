"""What probes cost in USD: one probe from its token counts, and a whole configuration's plan per day.

Pure functions of the configured prices (USD per 1M tokens) and token counts,
with no I/O, so that the prober, ``check-config`` and the loader's budget check
all compute the same figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from routewatch.config.model import Config, Price, PromptConfig, RouterConfig

PER_TOKENS = 1_000_000  # prices are per 1M tokens
PriceSource = Literal["config", "listing"]
# Listed prices by router, then model (USD per 1M tokens), as the routers' model lists publish them.
ListedPrices = Mapping[str, Mapping[str, Price]]


def model_price(
    router: RouterConfig, model: str, listed: ListedPrices | None
) -> tuple[Price | None, PriceSource | None]:
    """The price ``router``'s ``model`` is costed at, and where it comes from; (None, None) without one.

    A price written in probes.yaml for the model wins: the user wrote it on
    purpose (a negotiated rate, a list that is wrong); else the router's model
    list's price; else none.
    """
    return pick_price(router.prices.get(model), (listed or {}).get(router.name, {}).get(model))


def configured_prices(routers: Iterable[RouterConfig]) -> dict[tuple[str, str], Price]:
    """Every price probes.yaml gives, by (router, model)."""
    return {(r.name, model): price for r in routers for model, price in r.prices.items()}


def pick_price(configured: Price | None, listed: Price | None) -> tuple[Price | None, PriceSource | None]:
    """The rule of :func:`model_price` on the two prices themselves: the configured one, else the listed one."""
    if configured is not None:
        return configured, "config"
    if listed is not None:
        return listed, "listing"
    return None, None


def probe_cost_usd(
    price: Price | None,
    input_tokens: int | None,
    output_tokens: int | None,
    cached_input_tokens: int | None = None,
) -> float | None:
    """The cost of one probe, or None when its model has no price.

    Cached input tokens are part of ``input_tokens`` (as OpenAI's usage counts
    them) and are charged at ``price.cached_input`` (the input price when the
    file sets none); a cached count above the input count is capped to it. A
    count that is None is charged as 0 tokens.
    """
    if price is None:
        return None
    total_input = max(input_tokens or 0, 0)
    cached = min(max(cached_input_tokens or 0, 0), total_input)
    cached_price = price.input if price.cached_input is None else price.cached_input
    dollars = (total_input - cached) * price.input + cached * cached_price + max(output_tokens or 0, 0) * price.output
    return dollars / PER_TOKENS


def estimate_input_tokens(prompt: PromptConfig) -> int:
    """Rough prompt size: its tier's, or 4 characters a token plus 4 tokens of framing per message."""
    return prompt.input_tokens()


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """One router's model: its planned cost per day over every prompt, None without a price."""

    router: str
    model: str
    usd_per_day: float | None


@dataclass(frozen=True, slots=True)
class CostPlan:
    """A configuration's planned spend per day: an upper bound (every answer ``max_tokens`` long)."""

    models: tuple[ModelPlan, ...]  # in file order

    @property
    def usd_per_day(self) -> float | None:
        """Total over priced models; None when no model has a price."""
        priced = [m.usd_per_day for m in self.models if m.usd_per_day is not None]
        return sum(priced) if priced else None

    def per_router(self) -> dict[str, float]:
        """Planned USD per day per router (priced models only), in file order."""
        totals: dict[str, float] = {}
        for m in self.models:
            if m.usd_per_day is not None:
                totals[m.router] = totals.get(m.router, 0.0) + m.usd_per_day
        return totals

    def most_expensive(self, n: int) -> list[ModelPlan]:
        """The ``n`` priced models that cost most per day, dearest first."""
        priced = [m for m in self.models if m.usd_per_day is not None]
        return sorted(priced, key=lambda m: -(m.usd_per_day or 0.0))[:n]

    def unpriced(self) -> list[ModelPlan]:
        """Models without a price, in file order."""
        return [m for m in self.models if m.usd_per_day is None]


def plan_costs(
    config: Config, listed: ListedPrices | None = None, discovered: Mapping[str, Sequence[str]] | None = None
) -> CostPlan:
    """Every router's model priced per day: probes per day × expected tokens per prompt × prices.

    ``listed``: the routers' listed prices (see :func:`model_price`);
    ``discovered``: models found in each router's list, probed besides the
    configured ones with the prompts its ``discover.prompts`` names. The file
    alone (``check-config``, the loader) knows neither.

    A model that ``reasoning.models`` names may use its reasoning budget on top
    of each prompt's ``max_tokens``, and is planned so. Models found to reason
    only at run time (``reasoning.detect``) are planned without it.
    """
    runs = 86400 / config.schedule.interval  # probes per series per day
    per_prompt = {p.name: (estimate_input_tokens(p), p.max_tokens) for p in config.prompts}
    models: list[ModelPlan] = []
    for router in config.routers:
        found = [m for m in (discovered or {}).get(router.name, ()) if m not in router.models]
        wanted = router.discover.prompts if router.discover is not None else None
        for model, prompts in [*((m, None) for m in router.models), *((m, wanted) for m in found)]:
            price, _ = model_price(router, model, listed)
            cost = None
            if price is not None:
                room = router.reasoning.budget_tokens if router.reasoning.names(model) else 0
                chosen = [t for name, t in per_prompt.items() if prompts is None or name in prompts]
                cost = runs * sum(probe_cost_usd(price, i, o + room) or 0.0 for i, o in chosen)
            models.append(ModelPlan(router.name, model, cost))
    return CostPlan(tuple(models))


def budget_overrun(config: Config, plan: CostPlan | None = None) -> str | None:
    """Why the plan exceeds ``budget.usd_per_day`` (by how much, and where it goes), or None when it fits."""
    budget = config.budget.usd_per_day
    plan = plan or plan_costs(config)
    planned = plan.usd_per_day
    if budget is None or planned is None or planned <= budget:
        return None
    routers = ", ".join(f"{name} {format_usd(usd)}" for name, usd in plan.per_router().items())
    top = ", ".join(f"{m.model} ({m.router}) {format_usd(m.usd_per_day or 0.0)}" for m in plan.most_expensive(3))
    return (
        f"the planned cost is {format_usd(planned)}/day, {format_usd(planned - budget)} "
        f"({(planned - budget) / budget:.0%}) over the budget of {format_usd(budget)}/day; "
        f"per router: {routers}; dearest models: {top}. Raise the budget, probe less often "
        "(schedule.interval), or probe fewer or cheaper models"
    )


def format_usd(amount: float) -> str:
    """Dollars as messages show them: cents, or four decimals for amounts below a cent (never "$0.00")."""
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.4f}"
