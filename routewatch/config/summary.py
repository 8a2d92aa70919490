"""``routewatch check-config``: what a valid file will cost (series, probes, tokens, dollars per day)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from routewatch.config.costs import CostPlan, estimate_input_tokens, format_usd, plan_costs
from routewatch.config.loader import load_config
from routewatch.config.model import Config, ConfigError, Deadlines, format_seconds

LISTED = 5
"""At most this many model names in one line of the summary: a file may list thousands."""


@dataclass(frozen=True, slots=True)
class ConfigSummary:
    """What a config will do per day. Token counts are estimates; cost is an upper bound."""

    routers: int
    models: int  # router x model pairs
    prompts: int
    series: int  # router x model x prompt, each probed once per interval
    interval: float  # seconds between probes of one series
    probes_per_day: float
    input_tokens_per_day: float  # per prompt: its tier's size, or ceil(chars / 4) + 4 per message
    output_tokens_per_day: float  # max_tokens per probe: an upper bound
    cost_per_day_usd: float | None  # priced models only; None without any price
    priced_models: int
    unpriced_models: tuple[str, ...]  # model ids, "(router)" added when several routers
    plan: CostPlan

    @property
    def note(self) -> str | None:
        """Which models the cost leaves out, if any: their count and the first few."""
        if not self.unpriced_models:
            return None
        shown = ", ".join(self.unpriced_models[:LISTED])
        more = len(self.unpriced_models) - LISTED
        return f"no price for {_count(len(self.unpriced_models), 'model')}: {shown}" + (
            f" and {more:,} more" if more > 0 else ""
        )


def summarize(config: Config) -> ConfigSummary:
    """Count series and estimate daily probes, tokens and cost."""
    runs = 86400 / config.schedule.interval  # probes per series per day
    input_per_run = sum(estimate_input_tokens(p) for p in config.prompts)  # one model, all prompts
    output_per_run = sum(p.max_tokens for p in config.prompts)
    plan = plan_costs(config)
    several = len(config.routers) > 1
    unpriced = tuple(f"{m.model} ({m.router})" if several else m.model for m in plan.unpriced())
    models = len(plan.models)
    return ConfigSummary(
        routers=len(config.routers),
        models=models,
        prompts=len(config.prompts),
        series=models * len(config.prompts),
        interval=config.schedule.interval,
        probes_per_day=models * len(config.prompts) * runs,
        input_tokens_per_day=models * input_per_run * runs,
        output_tokens_per_day=models * output_per_run * runs,
        cost_per_day_usd=plan.usd_per_day,
        priced_models=models - len(unpriced),
        unpriced_models=unpriced,
        plan=plan,
    )


def format_summary(config: Config, path: str | Path) -> str:
    """A few lines for ``routewatch check-config``, however many models the file lists."""
    s = summarize(config)
    lines = [
        f"{path}: OK",
        f"  {_count(s.routers, 'router')}, {_count(s.models, 'model')}, "
        f"{_count(s.prompts, 'prompt')} → {_count(s.series, 'series', 'series')}",
        f"  {s.probes_per_day:,.0f} probes/day at one every {format_seconds(s.interval)} per series",
        f"  prompt tiers: {_tiers(config)}; headline figures from tier {config.headline_tier()}",
        f"  ≤ {_tokens(s.output_tokens_per_day)} output tokens/day, "
        f"~{_tokens(s.input_tokens_per_day)} input tokens/day",
    ]
    deadlines = _reasoning_deadlines(config)
    if deadlines:
        lines.append(f"  {deadlines}")
    if s.cost_per_day_usd is None:
        lines.append("  cost unknown: no prices in the file")
    else:
        budget = config.budget.usd_per_day
        within = "" if budget is None else f", within the budget of {format_usd(budget)}/day"
        lines.append(
            f"  ≤ {format_usd(s.cost_per_day_usd)}/day (prices for {s.priced_models:,} of {s.models:,} models){within}"
        )
        routers = s.plan.per_router()
        if len(routers) > 1:
            shown = ", ".join(f"{name} {format_usd(usd)}" for name, usd in list(routers.items())[:LISTED])
            more = len(routers) - LISTED
            lines.append(f"  per router: {shown}" + (f" and {more:,} more" if more > 0 else ""))
        several = s.routers > 1
        top = ", ".join(
            f"{m.model}{f' ({m.router})' if several else ''} {format_usd(m.usd_per_day or 0.0)}"
            for m in s.plan.most_expensive(LISTED)
        )
        lines.append(f"  dearest: {top}")
    if s.note:
        lines.append(f"  {s.note}")
    for router in config.routers:
        d = router.discover
        if d is not None and d.enabled:
            lines.append(
                f"  discover: router {router.name} also probes up to {d.max_models:,} models its list names "
                f"(include {', '.join(d.include)}; read every {format_seconds(d.refresh)}); not counted above, "
                "nor priced from its list: a prober logs that plan once it has read the list"
            )
    targets = config.notifications.targets
    if targets:
        # Names of variables only: their values are read when routewatch starts.
        listed = ", ".join(f"{t.name} ({t.kind}: {', '.join(t.env_names())})" for t in targets)
        lines.append(f"  incidents notified to {listed}")
    return "\n".join(lines)


def check_config_main(path: str) -> int:
    """``routewatch check-config PATH``: print the summary (0) or every error to stderr (1)."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(format_summary(config, path))
    return 0


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"


def _tokens(n: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.0f}"


def _tiers(config: Config) -> str:
    """Each prompt tier with its prompts' names (the first few): ``100 (short), 1k (long)``."""
    parts = []
    for tier in config.prompt_tiers():
        names = [p.name for p in config.prompts if p.tier_label() == tier]
        more = f" and {len(names) - LISTED:,} more" if len(names) > LISTED else ""
        parts.append(f"{tier} ({', '.join(names[:LISTED])}{more})")
    return ", ".join(parts)


def _reasoning_deadlines(config: Config) -> str | None:
    """The deadlines a probe sent a reasoning budget runs under, beside the others'; None if no router sends one.

    One group per distinct set of deadlines, named by its routers when there are several groups.
    """
    groups: dict[Deadlines, list[str]] = {}
    for router in config.routers:
        if router.reasoning.applies():
            groups.setdefault(router.reasoning.deadlines(config.timeouts), []).append(router.name)
    if not groups:
        return None
    t = config.timeouts
    parts = []
    for limits, names in list(groups.items())[:LISTED]:
        who = "" if len(groups) == 1 else f"{', '.join(names[:LISTED])}: "
        idle = "" if limits.idle == t.idle else f", idle {format_seconds(limits.idle)}"
        parts.append(
            f"{who}first token {format_seconds(limits.first_token)}{idle}, total {format_seconds(limits.total)}"
        )
    more = f" and {len(groups) - LISTED:,} more" if len(groups) > LISTED else ""
    return (
        f"reasoning models' deadlines: {'; '.join(parts)}{more} "
        f"(others: first token {format_seconds(t.first_token)}, total {format_seconds(t.total)})"
    )
