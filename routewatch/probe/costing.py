"""A probe's cost in USD, added to its result from the tokens it used and its model's price."""

from __future__ import annotations

import dataclasses

from routewatch.config.costs import probe_cost_usd
from routewatch.probe.target import Canary, Target
from routewatch.results.probe_result import ProbeResult


def with_cost(result: ProbeResult, target: Target, canary: Canary) -> ProbeResult:
    """``result`` with ``cost_usd`` set: None without a price, 0 when the router served nothing.

    Where the router reported no usage, the output tokens are the probe's own
    count (``tokens_estimated``) and the input tokens the prompt's estimated
    size, so the cost is an estimate too; a probe that received no token and
    no usage is taken as unbilled (0).
    """
    if target.price is None:
        return result
    if result.input_tokens is None and result.output_tokens is None:
        return dataclasses.replace(result, cost_usd=0.0)
    input_tokens = result.input_tokens
    if input_tokens is None:
        input_tokens = canary.input_tokens()
    cost = probe_cost_usd(target.price, input_tokens, result.output_tokens, result.cached_input_tokens)
    return dataclasses.replace(result, cost_usd=cost)
