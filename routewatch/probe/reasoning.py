"""The output budget of reasoning models, and knowing which models reason.

A reasoning model spends output tokens thinking before it answers, and the
request's output cap covers both (OpenAI's ``max_completion_tokens``,
OpenRouter's ``max_tokens``). With a canary's short cap such a model can spend
it all reasoning and never answer. A reasoning model is therefore sent a
larger cap: the prompt's ``max_tokens`` plus ``reasoning.budget_tokens`` of
room for reasoning, in the router's own request fields.

A model is a reasoning model when a ``reasoning.models`` glob names it, or,
with ``reasoning.detect`` (the default), once one of its probes reasoned:
its stream carried reasoning deltas, its usage counted reasoning tokens, or its
budget ran out before an answer. That knowledge lives in the prober process
(``ReasoningModels``): a restarted prober learns it again from its first probe
of each model, which at worst ends ``budget_exhausted`` (not a router failure).

A probe sent the budget also gets its router's reasoning deadlines
(``deadlines``): a model that hides its reasoning is silent while it reasons,
and under the ordinary first-token deadline that silence would end
``timeout_ttft``, a router failure of our making.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from routewatch.config.model import PhaseLimits, ReasoningConfig
from routewatch.probe.target import Target
from routewatch.results.probe_result import ProbeResult

log = logging.getLogger(__name__)

OPENAI = "openai"
OPENROUTER = "openrouter"


@dataclass(frozen=True, slots=True)
class OutputBudget:
    """What a reasoning model's request asks for: the whole output cap, the room for reasoning, the effort."""

    total_tokens: int  # reasoning and answer together
    reasoning_tokens: int  # of total_tokens, the room left for reasoning
    effort: str | None  # reasoning effort asked for; None: the model's own
    style: str  # OPENAI or OPENROUTER: which request fields carry it

    def fields(self) -> dict[str, Any]:
        """The request body's fields that carry this budget (they replace ``max_tokens``).

        OpenAI (and LiteLLM, which takes OpenAI's parameters): ``max_completion_tokens``
        covers reasoning and answer, ``reasoning_effort`` is optional. OpenRouter:
        ``max_tokens`` is the whole cap and ``reasoning`` takes either an effort or a
        token limit, never both.
        """
        if self.style == OPENROUTER:
            reasoning: dict[str, Any] = (
                {"effort": self.effort} if self.effort is not None else {"max_tokens": self.reasoning_tokens}
            )
            return {"max_tokens": self.total_tokens, "reasoning": reasoning}
        fields: dict[str, Any] = {"max_completion_tokens": self.total_tokens}
        if self.effort is not None:
            fields["reasoning_effort"] = self.effort
        return fields


def request_style(settings: ReasoningConfig, configured_dialect: str, detected_dialect: str | None) -> str:
    """Which request fields carry the budget: the setting, else the router's dialect (configured or detected)."""
    if settings.request != "auto":
        return settings.request
    dialect = detected_dialect if configured_dialect == "auto" else configured_dialect
    return OPENROUTER if dialect == OPENROUTER else OPENAI


def choose_budget(answer_tokens: int, settings: ReasoningConfig, style: str) -> OutputBudget:
    """The budget of a reasoning model asked for ``answer_tokens`` of answer: room for reasoning on top."""
    return OutputBudget(answer_tokens + settings.budget_tokens, settings.budget_tokens, settings.effort, style)


def deadlines(target: Target, budget: OutputBudget | None, ordinary: PhaseLimits) -> PhaseLimits:
    """The limits ``target``'s probe runs under: its router's reasoning deadlines exactly when it is sent a budget.

    A model that reasons without streaming it is silent for as long as it
    reasons, so the room given to its output needs matching room in time; a
    model sent no budget keeps the ordinary deadlines, whatever its router says.
    """
    if budget is None or target.reasoning is None:
        return ordinary
    return target.reasoning.deadlines(ordinary)


def shows_reasoning(result: ProbeResult) -> bool:
    """Whether a probe's result shows its model reasons: reasoning tokens, or a budget spent before any answer."""
    return bool(result.reasoning_tokens) or result.error_class == "budget_exhausted"


class ReasoningModels:
    """The reasoning models this prober process knows, and each router's detected dialect."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()  # (router, model) seen reasoning
        self._dialects: dict[str, str] = {}  # router -> the dialect its last response was read in

    def is_reasoning(self, target: Target) -> bool:
        """Whether ``target``'s model gets the reasoning budget now."""
        settings = target.reasoning
        if settings is None:
            return False
        if settings.names(target.model):
            return True
        return settings.detect and (target.router, target.model) in self._seen

    def budget(self, target: Target, answer_tokens: int) -> OutputBudget | None:
        """The budget for ``target``'s next probe; None: a plain ``max_tokens`` of ``answer_tokens``."""
        if target.reasoning is None or not self.is_reasoning(target):
            return None
        style = request_style(target.reasoning, target.dialect, self._dialects.get(target.router))
        return choose_budget(answer_tokens, target.reasoning, style)

    def observe(self, result: ProbeResult) -> None:
        """Learn from a finished probe: its router's dialect, and whether its model reasons."""
        if result.dialect:
            self._dialects[result.router] = result.dialect
        key = (result.router, result.model)
        if key not in self._seen and shows_reasoning(result):
            self._seen.add(key)
            log.info(
                "%s on %s was seen reasoning: with reasoning.detect on, its probes get the reasoning budget now",
                result.model,
                result.router,
            )
