"""From configuration to the series to probe: URLs and keys resolved.

A router whose ``base_url`` is ``simulator`` is routewatch's own router
simulator, unless ``router_url`` (the ``ROUTEWATCH_ROUTER_URL`` setting)
names a real router to use in its place. A router's key is looked up here,
by its ``api_key_env``, in the keys the command line read from the
environment at start (``Settings.router_keys``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from routewatch.config import SIMULATOR, Config, RouterConfig
from routewatch.config.costs import ListedPrices, model_price
from routewatch.config.settings import ENV_ROUTER_URL
from routewatch.config.tiers import parse_tier
from routewatch.probe.scheduler import Series
from routewatch.probe.target import Canary, Target


class TargetError(Exception):
    """A router cannot be probed as configured (missing key, bad URL)."""


@dataclass(frozen=True, slots=True)
class RouterPlan:
    """Where one configured router's probes go: for the start-up banner, and for reading its model list."""

    name: str
    url: str
    simulated: bool
    key_env: str | None  # the variable the key came from, never the key
    api_key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)


def uses_simulator(config: Config, router_url: str | None) -> bool:
    """Whether any router will be served by the built-in simulator (``router_url``: its replacement, if any)."""
    return not router_url and any(r.base_url == SIMULATOR for r in config.routers)


def _router_url(router: RouterConfig, override: str | None, simulator_url: str | None) -> tuple[str, bool]:
    if router.base_url != SIMULATOR:
        return router.base_url, False
    override = (override or "").strip()
    if override:
        parts = urlsplit(override)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TargetError(f"{ENV_ROUTER_URL} must be an http(s) URL such as https://orcarouter.ai/v1")
        if parts.username or parts.password:
            raise TargetError(f"{ENV_ROUTER_URL} must not contain credentials; put the key in the environment")
        return override, False
    if simulator_url is None:
        raise TargetError(f"router {router.name!r} uses the simulator, which is not running")
    return simulator_url, True


def plan(
    config: Config,
    keys: Mapping[str, str],
    simulator_url: str | None = None,
    *,
    router_url: str | None = None,
    discovered: Mapping[str, Sequence[str]] | None = None,
    listed_prices: ListedPrices | None = None,
) -> tuple[list[Series], list[RouterPlan]]:
    """Every (router, model, prompt) series with its resolved target.

    ``keys``: router keys by variable name, for each router's ``api_key_env``;
    ``simulator_url``: where the built-in simulator listens (None: not running);
    ``router_url``: a real router in place of the simulator; ``discovered``:
    models found in each router's list (by router name), probed with the
    prompts its ``discover.prompts`` names (all by default) besides its
    configured models. A router no longer discovering ignores its entry.
    ``listed_prices``: the prices the routers' lists publish, by router and
    model; a model's probes are costed at its probes.yaml price, else at its
    listed one (``config.costs.model_price``).
    """
    series: list[Series] = []
    routers: list[RouterPlan] = []
    canaries = [
        Canary(
            p.name,
            [{"role": m.role, "content": m.content} for m in p.messages],
            p.max_tokens,
            p.min_output_tokens,
            p.tier_label(),
            None if p.tier is None else parse_tier(p.tier),
        )
        for p in config.prompts
    ]
    for router in config.routers:
        url, simulated = _router_url(router, router_url, simulator_url)
        key = None
        if router.api_key_env and not simulated:
            key = keys.get(router.api_key_env)
            if not key:
                raise TargetError(
                    f"router {router.name!r}: environment variable {router.api_key_env} is not set "
                    "(probes.yaml names it in api_key_env)"
                )
        routers.append(
            RouterPlan(router.name, url, simulated, router.api_key_env if key else None, key, dict(router.headers))
        )
        models = [(m, canaries) for m in router.models]
        found = (discovered or {}).get(router.name, ())
        if router.discover is not None and router.discover.enabled and found:
            wanted = router.discover.prompts
            chosen = [c for c in canaries if wanted is None or c.name in wanted]
            configured = set(router.models)
            models += [(m, chosen) for m in found if m not in configured]
        for model, prompts in models:
            target = Target(
                router.name,
                url,
                model,
                key,
                dict(router.headers),
                router.dialect,
                dict(router.dialect_fields or {}),
                model_price(router, model, listed_prices)[0],
                router.reasoning,
            )
            series.extend(Series(target, canary) for canary in prompts)
    return series, routers
