"""The admin actions behind the token-protected API endpoints, for ``routewatch run``.

``probe_now`` probes one model on every configured router and prompt, on a
client session of its own, and returns the results; they are not stored, so
the published stats keep their fixed sampling schedule. ``reload_config``
re-reads probes.yaml and reports what would change: the running schedule,
prober and aggregator are not rebuilt (that needs a restart), and a bad file
changes nothing either way.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .aggregator.api import ConfigRejected, probe_result_json
from .probe.config import Config, ConfigError, load_config
from .probe.scheduler import Prober, Series, new_session
from .probe.targets import TargetError, plan

log = logging.getLogger(__name__)


class LocalAdmin:
    """``AdminActions`` over the configuration this process started with."""

    def __init__(
        self,
        config: Config,
        config_path: str | Path,
        series: Sequence[Series],
        *,
        simulator_url: str | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        """``series`` is what the scheduler probes (targets resolved); ``simulator_url``
        stands in for routers whose base_url is ``simulator`` when a reload is checked."""
        self._config = config
        self._path = str(config_path)
        self._series = list(series)
        self._simulator_url = simulator_url
        self._environ = environ

    async def probe_now(self, model_id: str) -> list[dict[str, Any]]:
        """Probe every series of ``model_id`` once; LookupError when none probes it."""
        chosen = [s for s in self._series if s.target.model == model_id]
        if not chosen:
            raise LookupError(model_id)
        concurrency = self._config.schedule.concurrency
        async with new_session(concurrency) as session:
            prober = Prober(session, self._config.timeouts, self._config.region, concurrency)
            results = await prober.round(chosen)
        return [probe_result_json(r) for r in results]

    async def reload_config(self) -> dict[str, Any]:
        """Validate the file again and list what differs from the running configuration."""
        try:
            # A file read and a YAML parse: off the event loop, which serves the API.
            new = await asyncio.to_thread(load_config, self._path)
        except ConfigError as exc:
            raise ConfigRejected([str(issue) for issue in exc.issues]) from None
        try:
            series, _ = plan(new, self._environ, self._simulator_url)
        except TargetError as exc:
            raise ConfigRejected([f"{self._path}: {exc}"]) from None
        changes = describe_changes(self._config, new, self._series, series)
        log.info("config reload checked: %d change(s), not applied", len(changes))
        if changes:
            message = f"valid; {len(changes)} change(s) take effect at the next restart"
        else:
            message = "valid; nothing changed"
        return {"file": self._path, "applied": False, "restart_required": bool(changes),
                "changes": changes, "message": message}


def describe_changes(old: Config, new: Config, old_series: Sequence[Series], new_series: Sequence[Series]) -> list[str]:
    """One line per difference: probe series added or removed, then each changed section."""
    before = {s.key for s in old_series}
    after = {s.key for s in new_series}
    changes = [f"probe series added: {key}" for key in sorted(after - before)]
    changes += [f"probe series removed: {key}" for key in sorted(before - after)]
    changes += [f"{name}: changed" for name in type(old).model_fields if getattr(old, name) != getattr(new, name)]
    return changes
