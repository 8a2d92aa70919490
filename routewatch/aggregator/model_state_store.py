"""Model status, incidents and daily uptime in the database (migration 0005).

The leading aggregator owns a :class:`StatusTracker`: at each refresh it
brings its copy of the SLO window's probes up to date (:class:`RecentProbes`),
advances every model with :func:`~.model_state.evaluate_grouped`, updates the
incidents and adds the elapsed time to the daily uptime, then upserts ``model_status``, ``incidents`` and
``uptime_daily`` in one transaction. The statuses stay in memory between
refreshes; a tracker starting (or a standby becoming leader) loads them from
``model_status`` first, so the hysteresis carries on where it stopped.
The SQL is ``routewatch.storage.model_state_queries``.

Everyone (leader and standbys) publishes what :func:`read_report` reads back.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from routewatch.aggregator.model_state import (
    HEARTBEAT_INTERVALS,
    DailyUptime,
    DayUptime,
    Incident,
    IncidentBook,
    ModelStatus,
    Observation,
    State,
    evaluate_grouped,
)
from routewatch.aggregator.rollup import RefreshReport
from routewatch.config import MaintenanceWindow, SLOConfig
from routewatch.config.tiers import DEFAULT_TIER
from routewatch.results.probe_result import NOT_ROUTER_FAULTS
from routewatch.storage import model_state_queries as queries
from routewatch.storage.connection import Conn
from routewatch.storage.outbox_queries import OutboxCounts, outbox_counts

RECENT_INCIDENTS = 10  # closed incidents published besides the open one
INCIDENT_LIST_MAX = 500  # closed incidents GET /v1/incidents can list at most (its limit's ceiling)

# Worst first wins for the overall state; unknown is worse than operational
# (nobody can say it is fine) but better than any evidence of trouble.
_RANK = {State.OPERATIONAL: 0, State.UNKNOWN: 1, State.DEGRADED: 2, State.DOWN: 3}


def worst_state(states: Iterable[State]) -> State:
    """The worst of ``states`` (down > degraded > unknown > operational); unknown when none."""
    return max(states, key=_RANK.__getitem__, default=State.UNKNOWN)


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What ``GET /v1/status`` publishes, as the tables stood at one refresh."""

    updated_at: datetime | None
    models: tuple[ModelStatus, ...]  # by model id
    open: tuple[Incident, ...]
    recent: tuple[Incident, ...]  # closed, newest first, at most RECENT_INCIDENTS
    notifications: OutboxCounts = field(default_factory=OutboxCounts)  # the notification outbox by state

    @property
    def overall(self) -> State:
        """The worst state over the models."""
        return worst_state(m.state for m in self.models)

    def as_json(self) -> dict[str, Any]:
        """The response body of ``GET /v1/status``."""
        return {
            "updated_at": _iso(self.updated_at),
            "overall": self.overall.value,
            "models": [
                {"id": m.model, "state": m.state.value, "since": _iso(m.since), "reason": m.reason} for m in self.models
            ],
            "incidents": {
                "open": [_incident_json(i) for i in self.open],
                "recent": [_incident_json(i) for i in self.recent],
            },
        }


class RecentProbes:
    """The probes of the status horizon, kept in memory by the leader between evaluations.

    Reading every probe of ``slo.window + 2 x interval`` at each refresh
    fetches and decodes about 17 probes per series (170,000 rows at 10,000
    series probed once a minute) to learn about the one or so that is new.
    The leader keeps them instead, per model in the order they started (the
    shape ``model_state.evaluate_grouped`` takes): each evaluation adds the
    rows of the batches the rollup refresh just took in (found by their
    transaction ids, as ``rollup.refresh_hist`` finds them), by probe id so
    that none counts twice, and drops those that left the horizon. It reads
    the whole horizon from the table again whenever it cannot be sure the
    copy is whole: the first time, without a refresh report, when the
    horizon grows or moves back, and when the rollup's generation counter
    says another process refreshed since (it took in batches this copy never
    saw).
    """

    def __init__(self, headline_tier: str = DEFAULT_TIER) -> None:
        """Only probes of ``headline_tier`` carry their TTFT into the status: a longer prompt's
        first token is slower by design, and slo.ttft_p95_ms is a target for the headline's."""
        self._headline_tier = headline_tier
        self._by_model: dict[str, list[Observation]] = {}
        self._ids: set[int] = set()
        self._since: datetime | None = None
        self._generation: int | None = None  # the rollup generation the copy is as of; None: reload
        self.reloads = 0  # how often the whole horizon was read from the table

    def forget(self) -> None:
        """Drop the copy: the next update reads the whole horizon."""
        self._by_model, self._ids, self._since, self._generation = {}, set(), None, None

    async def update(
        self, conn: Conn, since: datetime, now: datetime, report: RefreshReport | None
    ) -> dict[str, list[Observation]]:
        """Per model, its probes started in ``(since, now]`` in the order they started, as of
        ``report`` (the rollup refresh that has just run on ``conn``)."""
        in_step = (
            report is not None
            and not report.batches_omitted  # a catch-up too long to list its batches
            and self._generation is not None
            and report.generation_before == self._generation
            and self._since is not None
            and since >= self._since
        )
        if not in_step:
            self.forget()
            self._add(await queries.recent_probes(conn, since))
            self.reloads += 1
        elif report is not None and report.batches:
            until = max(b.last_started for b in report.batches)
            self._add(await queries.batch_probes(conn, since, until, [b.xmin for b in report.batches]))
        self._drop_before(since)
        self._since = since
        self._generation = report.generation if report is not None else None
        out: dict[str, list[Observation]] = {}
        for model, mine in self._by_model.items():
            # Probes from a clock ahead wait in the copy until ``now`` reaches them.
            cut = mine if mine[-1].started_at <= now else mine[: bisect_right(mine, now, key=_started)]
            if cut:
                out[model] = cut
        return out

    def _add(self, rows: Iterable[asyncpg.Record]) -> None:
        touched: set[str] = set()
        for r in rows:
            # The id as an int: the same probe read twice is the same key, and an
            # int (unlike asyncpg's UUID) is no work for the garbage collector.
            key = r["id"].int
            if key in self._ids:
                continue
            self._ids.add(key)
            ttft = r["ttft_ms"] if r["tier"] == self._headline_tier else None
            obs = Observation(
                r["model"],
                r["started_at"],
                r["ok"],
                ttft,
                r["prober_overloaded"],
                key,
                r["attempts"],
                r["error_class"] in NOT_ROUTER_FAULTS,
            )
            self._by_model.setdefault(obs.model, []).append(obs)
            touched.add(obs.model)
        for model in touched:
            self._by_model[model].sort(key=_started)  # stable, and nearly sorted already

    def _drop_before(self, since: datetime) -> None:
        for model in list(self._by_model):
            mine = self._by_model[model]
            cut = bisect_right(mine, since, key=_started)  # started at or before since: out
            if not cut:
                continue
            self._ids.difference_update(o.id for o in mine[:cut])
            if cut == len(mine):
                del self._by_model[model]
            else:
                del mine[:cut]


def _started(obs: Observation) -> datetime:
    return obs.started_at


class StatusTracker:
    """The leader's status engine: evaluate, update incidents and uptime, persist."""

    def __init__(
        self,
        slo: SLOConfig,
        interval_s: float,
        maintenance: Sequence[MaintenanceWindow] = (),
        *,
        refresh_s: float = 0.0,
        notify_targets: Sequence[str] = (),
        headline_tier: str = DEFAULT_TIER,
    ) -> None:
        """``interval_s`` is the probe schedule interval; ``refresh_s`` the aggregator's.
        ``notify_targets``: the notification targets every incident open and close is
        queued for, with the incident itself (``storage.outbox_queries``). ``headline_tier``:
        the prompt tier whose TTFT is judged against ``slo.ttft_p95_ms`` (see RecentProbes)."""
        self._refresh_s = refresh_s
        self._notify_targets = tuple(notify_targets)
        self.reconfigure(slo, interval_s, maintenance)
        self._statuses: dict[str, ModelStatus] | None = None  # None: load from the table first
        self._book = IncidentBook()
        self.recent = RecentProbes(headline_tier)

    def reconfigure(self, slo: SLOConfig, interval_s: float, maintenance: Sequence[MaintenanceWindow] = ()) -> None:
        """Judge with these targets, probe interval and maintenance windows from the next evaluation on."""
        self._slo = slo
        self._interval = interval_s
        self._maintenance = tuple(maintenance)
        # Longer than this between two evaluations (no leader meanwhile), the
        # rest of the gap is counted unknown in the uptime, not as the old state.
        self._max_gap = timedelta(seconds=HEARTBEAT_INTERVALS * max(interval_s, self._refresh_s))

    def forget(self) -> None:
        """Drop the in-memory state (not leader any more): reload before the next evaluation."""
        self._statuses = None
        self.recent.forget()

    async def evaluate(
        self,
        conn: Conn,
        models: Iterable[str],
        now: datetime,
        report: RefreshReport | None = None,
        monitored: Iterable[str] | None = None,
    ) -> None:
        """Advance every model (``models`` and any seen in the window) to ``now`` and persist.

        ``report``: the rollup refresh that has just run on ``conn``; with it
        only the probes of the batches it took in are read (:class:`RecentProbes`).
        ``monitored``: the models meant to be probed (configured, or listed by
        their router); with those probed in the recent window, the only ones that
        open incidents or hold one open. None: every model.
        """
        slo, interval, maintenance = self._slo, self._interval, self._maintenance  # one set per evaluation
        try:
            if self._statuses is None:
                self._statuses = await load_statuses(conn)
                self._book = await _load_book(conn, self._statuses)
            since = now - timedelta(seconds=slo.window + 2 * interval)
            probes = await self.recent.update(conn, since, now, report)
            everyone = set(models) | set(probes)
            new, transitions = evaluate_grouped(self._statuses, everyone, probes, now, slo, interval)
            # A model still being probed is monitored, whatever the configuration here says
            # (a regional prober's discovered models reach this database, not its catalog).
            watched = None if monitored is None else set(monitored) | set(probes)
            changed = self._book.update(transitions, now, maintenance, watched)
            uptime = self._elapsed(new, now)
            await _save(conn, new, changed, uptime, now, self._notify_targets)
        except BaseException:
            self.forget()  # memory may be ahead of the tables: start again from them
            raise
        self._statuses = new
        del self._book.incidents[:-1]  # only the latest is needed: the open one, or the next id

    def _elapsed(self, new: dict[str, ModelStatus], now: datetime) -> DailyUptime:
        """The time since each model's previous evaluation, in its previous state."""
        assert self._statuses is not None
        uptime = DailyUptime()
        for model in new:
            old = self._statuses.get(model)
            if old is None or old.as_of is None or old.as_of >= now:
                continue
            known_until = min(now, old.as_of + self._max_gap)
            uptime.record(model, old.state, old.as_of, known_until)
            if known_until < now:
                uptime.record(model, State.UNKNOWN, known_until, now)
        return uptime


async def load_statuses(conn: Conn) -> dict[str, ModelStatus]:
    """Every model's stored status, by model id."""
    rows = await queries.model_statuses(conn)
    return {
        r["model"]: ModelStatus(
            r["model"],
            State(r["state"]),
            r["since"],
            r["consecutive_failures"],
            r["consecutive_successes"],
            r["reason"],
            r["latched_down"],
            r["as_of"],
        )
        for r in rows
    }


async def read_report(conn: Conn) -> StatusReport:
    """The published status: every model, the open incident, the last closed ones."""
    statuses = await load_statuses(conn)
    updated_at = await queries.statuses_updated_at(conn)
    open_ = await queries.open_incidents(conn)
    recent = await queries.closed_incidents(conn, RECENT_INCIDENTS)
    return StatusReport(
        updated_at,
        tuple(statuses.values()),
        tuple(_incident(r) for r in open_),
        tuple(_incident(r) for r in recent),
        await outbox_counts(conn),
    )


async def _load_book(conn: Conn, statuses: dict[str, ModelStatus]) -> IncidentBook:
    # The latest incident is all the book needs: it is the open one, if any,
    # and the next id follows it.
    row = await queries.latest_incident(conn)
    return IncidentBook(
        [_incident(row)] if row is not None else [],
        {model: s.state for model, s in statuses.items()},
    )


async def _save(
    conn: Conn,
    statuses: dict[str, ModelStatus],
    incidents: Sequence[Incident],
    uptime: DailyUptime,
    now: datetime,
    notify_targets: Sequence[str] = (),
) -> None:
    """Persist in one transaction, with the notifications of the incidents that opened or
    closed; models not in ``statuses`` are no longer published."""
    await queries.save_model_state(
        conn,
        [
            (
                s.model,
                s.state.value,
                s.since,
                s.reason,
                s.consecutive_failures,
                s.consecutive_successes,
                s.latched_down,
                s.as_of,
                now,
            )
            for s in statuses.values()
        ],
        [(i.id, i.start, i.end, i.worst_state.value, sorted(i.models), i.suppressed, now) for i in incidents],
        [(model, day, d.operational, d.degraded, d.down, d.unknown) for (model, day), d in uptime.days.items()],
        notify_targets,
    )


def _incident(row: asyncpg.Record) -> Incident:
    return Incident(
        row["id"],
        row["start"],
        row["end"],
        State(row["worst_state"]),
        frozenset(row["models"]),
        row["suppressed"],
    )


def _incident_json(incident: Incident) -> dict[str, Any]:
    return {
        "id": incident.id,
        "start": incident.start.isoformat(),
        "end": _iso(incident.end),
        "worst_state": incident.worst_state.value,
        "models": sorted(incident.models),
        "suppressed": incident.suppressed,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def read_uptime(conn: Conn, first_day: date) -> dict[tuple[str, date], DayUptime]:
    """Seconds per state of every model on every UTC day from ``first_day`` on, by (model, day).

    Days with no row are absent: the caller shows them as unknown (no data).
    """
    rows = await queries.uptime_since(conn, first_day)
    return {
        (r["model"], r["day"]): DayUptime(r["operational_s"], r["degraded_s"], r["down_s"], r["unknown_s"])
        for r in rows
    }


async def read_incidents(
    conn: Conn, closed_limit: int = INCIDENT_LIST_MAX
) -> tuple[tuple[Incident, ...], tuple[Incident, ...]]:
    """Every open incident (newest first), and the ``closed_limit`` latest closed ones (newest end first)."""
    open_ = await queries.open_incidents(conn, newest_first=True)
    closed = await queries.closed_incidents(conn, closed_limit)
    return tuple(_incident(r) for r in open_), tuple(_incident(r) for r in closed)


def incident_json(incident: Incident) -> dict[str, Any]:
    """An incident as the API serves it: id, start, end (null while open), worst_state, models, suppressed."""
    return _incident_json(incident)
