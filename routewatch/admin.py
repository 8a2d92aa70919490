"""The admin actions behind the token-protected API endpoints, for ``routewatch run``.

``probe_now`` probes one model on every configured router and prompt, on a
client session of its own, and returns the results; they are not stored, so
the published stats keep their fixed sampling schedule.

``reload_config`` re-reads probes.yaml. A bad file changes nothing. A good
one is applied live where this process can do it safely: the probe series
(routers, models, prompts), the schedule's interval and jitter, the probe
timeouts and loop-lag limit, and the status rules (SLO, maintenance windows)
are swapped in without stopping anything, and the stats list the configured
models from the next refresh on. What is bound to objects built at start (the
region stamped by the prober, its concurrency limit and connection pool, the
API listener and prices, the aggregator's windows, refresh and headline
tier, storage) is reported as needing a restart; so is a change of the
effective headline tier that comes from the prompts alone (a smaller tier
added while ``aggregator.headline_tier`` is unset). Without a probe schedule (``routewatch
serve``) nothing is applied and every change waits for a restart. In
``routewatch run`` the probes run in prober workers (:class:`LiveProbes`):
a reload applies the aggregator's part here and tells each worker to re-read
the same file (SIGHUP), which applies the same live part to its own schedule.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from routewatch.aggregator.publish.api import ConfigRejected, probe_result_json
from routewatch.aggregator.refresh import Aggregator
from routewatch.config import Config, ConfigError, load_config
from routewatch.probe.scheduler import Prober, ProbeSchedule, Series, new_session
from routewatch.probe.targets import TargetError, plan

log = logging.getLogger(__name__)

RESTART = " (restart required)"

# Applied live: (label, value). Scalars are shown as old -> new, sections as "changed".
_LIVE: tuple[tuple[str, Callable[[Config], Any]], ...] = (
    ("schedule.interval", lambda c: c.schedule.interval),
    ("schedule.jitter", lambda c: c.schedule.jitter),
    ("schedule.max_loop_lag", lambda c: c.schedule.max_loop_lag),
    ("timeouts", lambda c: c.timeouts),
    ("slo", lambda c: c.slo),
    ("maintenance", lambda c: c.maintenance),
    # The probers read the model lists: new globs change what they probe at their next read.
    ("routers[].discover", lambda c: {r.name: r.discover for r in c.routers}),
    ("budget.usd_per_day", lambda c: str(c.budget.usd_per_day)),  # not a duration: shown as "changed"
)
# Bound to what was built at start: the prober (region, semaphore and pool size),
# the HTTP listener and the badges' prices, the aggregator loop, the database.
_AT_START: tuple[tuple[str, Callable[[Config], Any]], ...] = (
    ("region", lambda c: c.region),
    ("schedule.concurrency", lambda c: c.schedule.concurrency),
    ("routers[].prices", lambda c: {(r.name, m): p for r in c.routers for m, p in r.prices.items()}),
    ("api", lambda c: c.api),
    ("aggregator", lambda c: c.aggregator),
    ("storage", lambda c: c.storage),
    # The targets' secrets are read from the environment at start, with the sender.
    ("notifications", lambda c: c.notifications),
)


class LiveProbes(Protocol):
    """Probes elsewhere than on this event loop (``routewatch run``'s workers), which a reload reaches."""

    @property
    def stopped(self) -> bool:
        """Stopping or stopped: nothing to apply to."""
        ...

    def apply(self, config: Config, series: Sequence[Series]) -> None:
        """Probe ``series`` with ``config``'s live settings from now on."""
        ...


class LocalAdmin:
    """``AdminActions`` over the configuration this process runs."""

    def __init__(
        self,
        config: Config,
        config_path: str | Path,
        series: Sequence[Series],
        *,
        simulator_url: str | None = None,
        router_keys: Mapping[str, str] | None = None,
        router_url: str | None = None,
        region: str | None = None,
        schedule: ProbeSchedule | LiveProbes | None = None,
        aggregator: Aggregator | None = None,
    ) -> None:
        """``series`` is what the scheduler probes (targets resolved); ``simulator_url``
        stands in for routers whose base_url is ``simulator`` when a reload is planned
        (None: such a router is rejected); ``router_keys`` and ``router_url`` are the
        settings a reload plans with (``Settings.router_keys``, ``ROUTEWATCH_ROUTER_URL``;
        default none); ``region`` (``ROUTEWATCH_REGION``) replaces the file's at each reload,
        as it did at start. A reload is applied to ``schedule`` (see ``attach``) and
        ``aggregator``; without a schedule nothing is applied."""
        self._started = config  # what the parts built at start keep until a restart
        self._config = config  # the file as last applied
        self._path = str(config_path)
        self._series = list(series)
        self._simulator_url = simulator_url
        self._router_keys: Mapping[str, str] = router_keys if router_keys is not None else {}
        self._router_url = router_url
        self._region = region
        self._schedule = schedule
        self._aggregator = aggregator
        self._lock = asyncio.Lock()  # one reload at a time

    def attach(self, schedule: ProbeSchedule | LiveProbes) -> None:
        """Apply reloads to ``schedule`` from now on (``routewatch run``, once its probes start)."""
        self._schedule = schedule

    async def probe_now(self, model_id: str) -> list[dict[str, Any]]:
        """Probe every series of ``model_id`` once; LookupError when none probes it."""
        chosen = [s for s in self._series if s.target.model == model_id]
        if not chosen:
            raise LookupError(model_id)
        concurrency = self._config.schedule.concurrency
        async with new_session(concurrency) as session:
            prober = Prober(session, self._config.timeouts, self._config.region, concurrency)
            results = await prober.round_with_budgets(chosen)
        return [probe_result_json(r) for r in results]

    async def reload_config(self) -> dict[str, Any]:
        """Validate the file again, apply what can change live, list every difference.

        Raises ConfigRejected (running configuration untouched) when the file is not valid.
        """
        async with self._lock:
            try:
                # A file read and a YAML parse: off the event loop, which serves the API and probes.
                new = await asyncio.to_thread(load_config, self._path, self._region)
                series, _ = plan(new, self._router_keys, self._simulator_url, router_url=self._router_url)
            except ConfigError as exc:
                log.warning(
                    "config reload rejected: %s has %d problem(s); running configuration kept",
                    self._path,
                    len(exc.issues),
                )
                raise ConfigRejected([str(issue) for issue in exc.issues]) from None
            except TargetError as exc:
                log.warning("config reload rejected: %s: %s; running configuration kept", self._path, exc)
                raise ConfigRejected([f"{self._path}: {exc}"]) from None

            live = self._schedule is not None and not self._schedule.stopped
            if not live:
                changes = describe_changes(self._config, new, self._series, series)
                log.info(
                    "config reload of %s: %d change(s), none applied (no probe schedule here)", self._path, len(changes)
                )
                message = (
                    f"valid; {len(changes)} change(s) take effect at the next restart"
                    if changes
                    else "valid; nothing changed"
                )
                return self._report(False, bool(changes), changes, message)

            applied = live_changes(self._config, new, self._series, series)
            pending = [line + RESTART for line in restart_changes(self._started, new)]
            if applied:
                self._apply(new, series)
            log.info(
                "config reload of %s: %d change(s) applied, %d need a restart", self._path, len(applied), len(pending)
            )
            if applied and pending:
                message = f"applied {len(applied)} change(s); {len(pending)} take effect at the next restart"
            elif applied:
                message = f"applied {len(applied)} change(s)"
            elif pending:
                message = f"valid; {len(pending)} change(s) take effect at the next restart"
            else:
                message = "valid; nothing changed"
            return self._report(bool(applied), bool(pending), applied + pending, message)

    def _apply(self, new: Config, series: list[Series]) -> None:
        """Swap the new settings in; no await, so the event loop sees them change at once."""
        assert self._schedule is not None
        if isinstance(self._schedule, ProbeSchedule):
            self._schedule.replace(series, new.schedule.interval, new.schedule.jitter)
            self._schedule.prober.retune(new.timeouts, new.schedule.max_loop_lag)
        else:
            self._schedule.apply(new, series)
        if self._aggregator is not None:
            self._aggregator.set_configured([(r.name, m) for r in new.routers for m in r.models])
            self._aggregator.set_status_rules(new.slo, new.schedule.interval, new.maintenance)
            self._aggregator.budget.configure(new.budget.usd_per_day, 86400 / new.schedule.interval, new)
        self._config = new
        self._series = series

    def _report(self, applied: bool, restart: bool, changes: list[str], message: str) -> dict[str, Any]:
        return {
            "file": self._path,
            "applied": applied,
            "restart_required": restart,
            "changes": changes,
            "message": message,
        }


def _series_changes(old: Sequence[Series], new: Sequence[Series]) -> list[str]:
    before = {s.key: s for s in old}
    after = {s.key: s for s in new}
    changes = [f"probe series added: {key}" for key in sorted(after.keys() - before.keys())]
    changes += [f"probe series removed: {key}" for key in sorted(before.keys() - after.keys())]
    # Same router, model and prompt, another URL, header, key or message; the key is never shown.
    changes += [
        f"probe series changed: {key}" for key in sorted(before.keys() & after.keys()) if before[key] != after[key]
    ]
    return changes


def _show(value: Any) -> str:
    return f"{value:g} s" if isinstance(value, float) else str(value)


def live_changes(old: Config, new: Config, old_series: Sequence[Series], new_series: Sequence[Series]) -> list[str]:
    """What a reload applies live: series added, removed or changed, then each live setting."""
    changes = _series_changes(old_series, new_series)
    for label, value in _LIVE:
        before, after = value(old), value(new)
        if before != after:
            scalar = isinstance(before, float)
            changes.append(f"{label}: {_show(before)} -> {_show(after)}" if scalar else f"{label}: changed")
    return changes


def restart_changes(started: Config, new: Config) -> list[str]:
    """What differs from the configuration the process started with and only a restart applies."""
    changes = [f"{label}: changed" for label, value in _AT_START if value(started) != value(new)]
    return changes + headline_tier_change(started, new)


def headline_tier_change(old: Config, new: Config) -> list[str]:
    """The headline tier's change as one line, or none: the aggregator's rollup and snapshot are built
    with it at start. Named whether ``aggregator.headline_tier`` changed or, unset, the prompts'
    smallest tier moved (a prompt of a smaller tier added), which ``aggregator: changed`` would miss."""
    before, after = old.headline_tier(), new.headline_tier()
    if before == after:
        return []
    implicit = "" if new.aggregator.headline_tier is not None else " (the prompts' smallest tier)"
    return [f"aggregator.headline_tier: {before} -> {after}{implicit}"]


def describe_changes(old: Config, new: Config, old_series: Sequence[Series], new_series: Sequence[Series]) -> list[str]:
    """One line per difference: probe series added or removed, then each changed section."""
    before = {s.key for s in old_series}
    after = {s.key for s in new_series}
    changes = [f"probe series added: {key}" for key in sorted(after - before)]
    changes += [f"probe series removed: {key}" for key in sorted(before - after)]
    changes += [f"{name}: changed" for name in type(old).model_fields if getattr(old, name) != getattr(new, name)]
    return changes + headline_tier_change(old, new)
