"""Prompt input-length tiers: how a tier is written, its canonical label, and a prompt's tier.

A tier is a number of input tokens, written ``100``, ``1000`` or ``1k`` in
``probes.yaml`` (``prompts[].tier``, ``aggregator.headline_tier``). Its label
is what every probe result stores and the API publishes: thousands are
written with ``k`` (``1k``, ``10k``), other sizes as the number (``100``,
``1500``), so one size has one label whichever way the file wrote it.

A prompt with ``tier`` is generated at that size (``routewatch.probe.tier_prompt``).
A hand-written prompt (no ``tier``) belongs to the standard tier nearest its
estimated size on a logarithmic scale: a 20-token question is tier ``100``,
a 3,000-token document ``1k``. Pure functions, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

# The tiers the best-known public benchmark of LLM APIs measures, and 100k for long-context models.
STANDARD_TIERS: tuple[int, ...] = (100, 1_000, 10_000, 100_000)
# Below this a generated prompt has no room for its nonce and instruction; above it a
# request is larger than most routers accept and costs more than a probe should.
MIN_TIER_TOKENS = 50
MAX_TIER_TOKENS = 200_000
# Rows measured before tiers existed: every prompt routewatch shipped was short.
DEFAULT_TIER = "100"
# Framing a chat template adds per message, in the estimate (as the simulator counts it).
TOKENS_PER_MESSAGE = 4
CHARS_PER_TOKEN = 4

_WRITTEN = re.compile(r"(?P<n>[1-9][0-9]*)(?P<k>[kK]?)")
_FORMS = (
    f"write a whole number of input tokens from {MIN_TIER_TOKENS} to {MAX_TIER_TOKENS // 1000}k, "
    "e.g. 100, 1k, 10k or 2500"
)


def parse_tier(value: object) -> int:
    """The tokens a written tier stands for: ``100`` -> 100, ``"1k"`` -> 1000.

    :raises ValueError: with a message saying what forms are accepted.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"a tier is a number of tokens, not {type(value).__name__}: {_FORMS}")
    match = _WRITTEN.fullmatch(value.strip()) if isinstance(value, str) else None
    if isinstance(value, int):
        tokens = value
    elif match is None:
        raise ValueError(f"{value!r} is not a tier: {_FORMS}")
    else:
        tokens = int(match["n"]) * (1000 if match["k"] else 1)
    if not MIN_TIER_TOKENS <= tokens <= MAX_TIER_TOKENS:
        raise ValueError(f"{tokens} tokens is outside the tiers routewatch generates: {_FORMS}")
    return tokens


def tier_label(tokens: int) -> str:
    """The canonical label of a tier of ``tokens``: ``1k`` for 1000, ``100`` for 100, ``1500`` for 1500."""
    return f"{tokens // 1000}k" if tokens >= 1000 and tokens % 1000 == 0 else str(tokens)


def canonical_tier(value: object) -> str:
    """A written tier's canonical label (``"1000"`` -> ``"1k"``); ValueError as :func:`parse_tier`."""
    return tier_label(parse_tier(value))


def nearest_standard_tier(tokens: int) -> str:
    """The label of the standard tier nearest ``tokens`` on a log scale (below 100: ``100``)."""
    size = max(tokens, 1)
    best = min(STANDARD_TIERS, key=lambda t: abs(math.log(size / t)))
    return tier_label(best)


def estimate_chat_tokens(contents: Sequence[str]) -> int:
    """Rough size of chat messages with these contents: 4 characters a token plus 4 of framing each."""
    return math.ceil(sum(len(c) for c in contents) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(contents)
