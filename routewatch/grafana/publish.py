"""``routewatch grafana publish``: upsert a :class:`~.plan.PublishPlan` through Grafana's HTTP API.

Uses grafana-client's async API (``grafana_client.AsyncGrafanaApi``, the
extra ``routewatch[grafana]``). Each object is read first and written only
when what Grafana holds differs from the plan in a field the plan sets
(fields Grafana adds, such as ids, versions and timestamps, are not
compared), so a second run changes nothing. Per object it reports
``created``, ``changed`` or ``unchanged``; with ``dry_run`` (``--diff``) it
writes nothing and shows, as a unified diff of the JSON, what it would
change. A data source's password is sent on create and update but never
read back, printed or compared: Grafana only says whether one is set.

Endpoints (Grafana's HTTP API): ``GET/POST /api/folders``, ``PUT
/api/folders/:uid``; ``GET /api/datasources/uid/:uid``, ``POST
/api/datasources``, ``PUT /api/datasources/uid/:uid``; ``GET
/api/dashboards/uid/:uid``, ``POST /api/dashboards/db``; ``GET/PUT
/api/v1/provisioning/alert-rules/:uid``, ``POST
/api/v1/provisioning/alert-rules``; ``GET/PUT
/api/v1/provisioning/folder/:folderUid/rule-groups/:group``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from grafana_client.api import AsyncGrafanaApi
from grafana_client.client import GrafanaClientError

from routewatch.grafana.plan import FOLDER_UID, DataSource, PublishPlan, RuleGroup

MESSAGE = "routewatch grafana publish"


@dataclass(frozen=True)
class Change:
    """What publishing did (or, in a dry run, would do) to one object."""

    kind: str  # folder, data source, dashboard, alert rule, rule group
    uid: str
    title: str
    action: str  # created, changed, unchanged
    diff: tuple[str, ...] = ()  # unified diff lines of the JSON, current -> planned

    def line(self, dry_run: bool) -> str:
        """One line for the terminal."""
        action = {"created": "would create", "changed": "would change"}.get(self.action, self.action)
        return f"{action if dry_run else self.action:<13} {self.kind:<11} {self.uid} ({self.title})"


def differs(planned: Any, current: Any) -> bool:
    """Whether ``current`` lacks or has another value for something ``planned`` sets.

    Keys only ``current`` has (ids, versions, timestamps Grafana adds) do
    not count; lists are compared item by item, in order.
    """
    if isinstance(planned, dict):
        return not isinstance(current, dict) or any(
            key not in current or differs(value, current[key]) for key, value in planned.items()
        )
    if isinstance(planned, list):
        return (
            not isinstance(current, list)
            or len(planned) != len(current)
            or any(differs(p, c) for p, c in zip(planned, current, strict=True))
        )
    return bool(planned != current)


def _shown(planned: Any, current: Any) -> Any:
    """``current`` cut to the keys ``planned`` sets, for a readable diff."""
    if isinstance(planned, dict) and isinstance(current, dict):
        return {k: _shown(planned[k], current[k]) for k in planned if k in current}
    if isinstance(planned, list) and isinstance(current, list) and len(planned) == len(current):
        return [_shown(p, c) for p, c in zip(planned, current, strict=True)]
    return current


def _diff(planned: Any, current: Any) -> tuple[str, ...]:
    before = json.dumps(_shown(planned, current), indent=2, sort_keys=True).splitlines() if current is not None else []
    after = json.dumps(planned, indent=2, sort_keys=True).splitlines()
    return tuple(difflib.unified_diff(before, after, "grafana", "planned", lineterm="", n=2))


async def _get(fetch: Awaitable[Any]) -> Any:
    """The object, or None when Grafana answers 404."""
    try:
        return await fetch
    except GrafanaClientError as exc:
        if exc.status_code == 404:
            return None
        raise


class Publisher:
    """Upserts the objects of a plan, one at a time, in dependency order."""

    def __init__(self, api: AsyncGrafanaApi, *, dry_run: bool = False) -> None:
        """``api``: a connected client; ``dry_run``: read only, report what would change."""
        self._api = api
        self._dry_run = dry_run

    async def publish(self, plan: PublishPlan, report: Callable[[Change], None] = lambda change: None) -> list[Change]:
        """Every object of ``plan`` brought to its planned state; each change is also passed to ``report``."""
        changes: list[Change] = []

        async def step(change: Change) -> None:
            changes.append(change)
            report(change)

        await step(await self._folder(plan.folder))
        for ds in plan.datasources:
            await step(await self._datasource(ds))
        for dashboard in plan.dashboards:
            await step(await self._dashboard(dashboard))
        for rule in plan.alert_rules:
            await step(await self._alert_rule(rule))
        for group in plan.rule_groups:
            await step(await self._rule_group(group))
        return changes

    async def _folder(self, planned: dict[str, str]) -> Change:
        current = await _get(self._api.folder.get_folder(planned["uid"]))
        change = self._change("folder", planned["uid"], planned["title"], planned, current)
        if not self._dry_run and change.action == "created":
            await self._api.folder.create_folder(planned["title"], uid=planned["uid"])
        elif not self._dry_run and change.action == "changed":
            await self._api.folder.update_folder(planned["uid"], title=planned["title"], overwrite=True)
        return change

    async def _datasource(self, ds: DataSource) -> Change:
        current = await _get(self._api.datasource.get_datasource_by_uid(ds.uid))
        change = self._change("data source", ds.uid, ds.body["name"], ds.body, current)
        # Grafana never returns a secret, only whether one is set.
        unset = [k for k in ds.secure if current is not None and not current.get("secureJsonFields", {}).get(k)]
        if change.action == "unchanged" and unset:
            change = Change(change.kind, change.uid, change.title, "changed", (f"+ {', '.join(unset)}: (set)",))
        if not self._dry_run and change.action != "unchanged":
            body = {**ds.body, "secureJsonData": ds.secure} if ds.secure else ds.body
            if change.action == "created":
                await self._api.datasource.create_datasource(body)
            else:
                await self._api.datasource.update_datasource_by_uid(ds.uid, body)
        return change

    async def _dashboard(self, planned: dict[str, Any]) -> Change:
        uid = planned["uid"]
        found = await _get(self._api.dashboard.get_dashboard(uid))
        current = None
        if found is not None:
            # Where it lives counts too: a dashboard moved out of the folder is moved back.
            current = {**found.get("dashboard", {}), "folderUid": found.get("meta", {}).get("folderUid")}
        change = self._change(
            "dashboard", uid, planned.get("title", uid), {**planned, "folderUid": FOLDER_UID}, current
        )
        if not self._dry_run and change.action != "unchanged":
            await self._api.dashboard.update_dashboard(
                {"dashboard": {**planned, "id": None}, "folderUid": FOLDER_UID, "overwrite": True, "message": MESSAGE}
            )
        return change

    async def _alert_rule(self, planned: dict[str, Any]) -> Change:
        uid = planned["uid"]
        current = await _get(self._api.alertingprovisioning.get_alertrule(uid))
        change = self._change("alert rule", uid, planned["title"], planned, current)
        if not self._dry_run and change.action == "created":
            await self._api.alertingprovisioning.create_alertrule(planned)
        elif not self._dry_run and change.action == "changed":
            await self._api.alertingprovisioning.update_alertrule(uid, planned)
        return change

    async def _rule_group(self, group: RuleGroup) -> Change:
        current = await _get(self._api.alertingprovisioning.get_rule_group(FOLDER_UID, group.title))
        planned = {"title": group.title, "folderUid": FOLDER_UID, "interval": group.interval_s}
        # Its rules created it (a dry run aside): what is left to set is its interval.
        change = self._change("rule group", group.title, f"every {group.interval_s}s", planned, current)
        if not self._dry_run and change.action != "unchanged":
            rules = current.get("rules", []) if current is not None else []
            await self._api.alertingprovisioning.update_rule_group(FOLDER_UID, group.title, {**planned, "rules": rules})
        return change

    def _change(self, kind: str, uid: str, title: str, planned: Any, current: Any) -> Change:
        if current is None:
            return Change(kind, uid, title, "created", _diff(planned, None) if self._dry_run else ())
        if differs(planned, current):
            return Change(kind, uid, title, "changed", _diff(planned, current) if self._dry_run else ())
        return Change(kind, uid, title, "unchanged")


def connect(url: str, token: str, timeout_s: float = 10.0) -> AsyncGrafanaApi:
    """A client for the Grafana at ``url`` (its base URL) authenticating with a bearer ``token``."""
    api: AsyncGrafanaApi = AsyncGrafanaApi.from_url(url, credential=token, timeout=timeout_s)
    return api


async def close(api: AsyncGrafanaApi) -> None:
    """Close the client's connections."""
    session: Any = api.client.s  # a niquests.AsyncSession: its close() is a coroutine
    await session.close()
