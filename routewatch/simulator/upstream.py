"""The simulated router's upstream calls: failures it retries, and fallbacks, hidden from the client.

A real router retries a failed upstream call before the client sees a byte;
the client only notices the time it took. ``route`` decides, before the
answer is planned, how many calls the router made and which upstream
answered, and how long the failed calls took (which the first token then
waits for).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from routewatch.simulator.profiles import ModelProfile


@dataclass(frozen=True)
class Routing:
    """How the router got its answer for one request."""

    provider: str  # the upstream that answered (or the last one tried)
    attempts: int  # upstream calls made, the answering one included
    fallbacks: int  # of those, calls to the fallback upstream
    failed_ms: list[float] = field(default_factory=list)  # how long each failed call took
    answered: bool = True  # False: every call failed and the router gives up

    @property
    def delay_ms(self) -> float:
        """Time spent on failed calls before the answering one started."""
        return sum(self.failed_ms)


def route(profile: ModelProfile, rng: random.Random, prompt_tokens: int = 0) -> Routing:
    """The calls the router makes for one request of ``prompt_tokens``.

    Draws nothing when the profile has no upstream failures, so that a
    seeded simulator serves the same TTFTs with or without this feature.
    A failed call without ``upstream_failure_ms`` takes a first token's time,
    prefill of the prompt included.
    """
    if profile.upstream_failure_rate <= 0:
        return Routing(provider=profile.provider, attempts=1, fallbacks=0)
    failed: list[float] = []
    upstreams = [profile.provider] * (1 + profile.router_retries)
    if profile.fallback_provider is not None:
        upstreams.append(profile.fallback_provider)
    for i, provider in enumerate(upstreams):
        if rng.random() >= profile.upstream_failure_rate:
            fallbacks = int(i > profile.router_retries)  # past the retries: the fallback answered
            return Routing(provider=provider, attempts=i + 1, fallbacks=fallbacks, failed_ms=failed)
        took_ms = profile.upstream_failure_ms
        failed.append(took_ms if took_ms is not None else profile.draw_ttft_ms(rng, prompt_tokens))
    return Routing(
        provider=upstreams[-1],
        attempts=len(failed),
        fallbacks=int(profile.fallback_provider is not None),
        failed_ms=failed,
        answered=False,
    )
