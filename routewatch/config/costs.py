"""What probes cost in USD: one probe from its token counts, and a whole configuration's plan per day.

Pure functions of the configured prices (USD per 1M tokens) and token counts,
with no I/O, so that the prober, ``check-config`` and the loader's budget check
all compute the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from routewatch.config.model import Config, Price, PromptConfig

PER_TOKENS = 1_000_000  # prices are per 1M tokens


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


def plan_costs(config: Config) -> CostPlan:
    """Every router's model priced per day: probes per day × expected tokens per prompt × prices."""
    runs = 86400 / config.schedule.interval  # probes per series per day
    per_prompt = [(estimate_input_tokens(p), p.max_tokens) for p in config.prompts]
    models: list[ModelPlan] = []
    for router in config.routers:
        for model in router.models:
            price = router.prices.get(model)
            cost = None
            if price is not None:
                per_run = sum(probe_cost_usd(price, i, o) or 0.0 for i, o in per_prompt)
                cost = runs * per_run
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
