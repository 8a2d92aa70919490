"""Model status, incidents and daily uptime: pure logic, no database and no I/O.

Everything here is a deterministic function of its arguments (plus, for
:class:`IncidentBook` and :class:`DailyUptime`, the state they were built
with), so the aggregator can replay stored probes and get the same answer.

State of one model at an evaluation time ``now`` (:func:`advance`), first match wins:

1. ``unknown``  the prober is unhealthy: its latest probe (of any model) is
   older than ``2 x interval``, or that probe was flagged prober_overloaded.
   Prober trouble is never counted as up, nor as the model's fault.
2. ``unknown``  the model has no probe in the SLO window.
3. ``down``     the hysteresis latch is set: ``down_after`` consecutive failed
   probes set it, ``up_after`` consecutive ok probes clear it. One failure
   never makes a model down, and one success never brings it back.
4. ``degraded`` over the window, with at least ``slo.min_samples`` probes,
   error rate > ``slo.error_rate``; or, with at least ``slo.min_samples`` ok
   probes whose router reported its attempts, a share of them answered only
   after a retry > ``slo.retried_share`` (the router is hiding upstream
   failures); or, with at least ``slo.min_samples`` ok probes, p95 TTFT >
   ``slo.ttft_p95_ms`` (one early failure is not a trend).
5. ``operational`` otherwise.

Probes flagged prober_overloaded say nothing about the model: they count
neither as failures nor successes, and are left out of the window stats. So
are probes whose output budget ran out while the model reasoned
(``budget_exhausted``): the budget is ours to raise, not the router's fault;
unlike an overloaded probe, such a probe still shows the prober is healthy.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from routewatch.config import MaintenanceWindow, SLOConfig
from routewatch.storage.housekeeping import UPTIME_DAYS

__all__ = [
    "UPTIME_DAYS",
    "DailyUptime",
    "DayUptime",
    "Incident",
    "IncidentBook",
    "ModelStatus",
    "Observation",
    "State",
    "Transition",
    "advance",
    "by_model",
    "evaluate_all",
    "evaluate_grouped",
    "prober_healthy",
]

# A prober that has not produced a probe for two intervals has missed at least
# one full round (jitter is below one interval), so it is down or stuck.
HEARTBEAT_INTERVALS = 2


class State(StrEnum):
    """Status of one model, as published."""

    OPERATIONAL = "operational"
    DEGRADED = "degraded"
    DOWN = "down"
    UNKNOWN = "unknown"


# How bad a state is, for an incident's worst state; unknown is no evidence either way.
_SEVERITY = {State.OPERATIONAL: 0, State.UNKNOWN: 0, State.DEGRADED: 1, State.DOWN: 2}
_BAD = frozenset({State.DEGRADED, State.DOWN})


@dataclass(frozen=True, slots=True)
class Observation:
    """One probe outcome, as the status engine sees it."""

    model: str
    started_at: datetime  # timezone-aware
    ok: bool
    ttft_ms: float | None  # None when no first token arrived (a failed probe)
    prober_overloaded: bool = False  # the prober's loop lagged: says nothing about the model
    id: Hashable | None = None  # the probe's id: counts it once however late it arrives
    attempts: int | None = None  # upstream calls the router reported (None: it said nothing)
    not_router_fault: bool = False  # ended for a reason of ours (budget_exhausted): neither success nor failure


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """Where one model's state machine stands after an evaluation."""

    model: str
    state: State
    since: datetime  # evaluation time at which ``state`` was entered
    consecutive_failures: int
    consecutive_successes: int
    reason: str  # one line for the status page, e.g. "error rate 12% > 5% over 15m"
    # The hysteresis latch. Kept apart from ``state`` so that an unknown spell
    # (prober outage) neither clears nor sets it: a model that was down before
    # the outage is still down after it until up_after ok probes are seen.
    latched_down: bool = False
    # The evaluation time this status is as of; None = never evaluated.
    as_of: datetime | None = None
    # Ids of the probes already counted among those seen at the last evaluation.
    # A probe is stored only once it has finished (seconds after it started), so
    # "started after as_of" would miss one that started before an evaluation and
    # arrived after it; ids count each probe exactly once. None (a status read
    # back from the tables) falls back to as_of: probes started before it count
    # as counted.
    counted: frozenset[Hashable] | None = None

    @classmethod
    def initial(cls, model: str, now: datetime) -> ModelStatus:
        """A model never evaluated: unknown, with nothing counted."""
        _check_aware(now, "now")
        return cls(model, State.UNKNOWN, now, 0, 0, "not evaluated yet")


@dataclass(frozen=True, slots=True)
class Transition:
    """A model changed state at ``at`` (an evaluation time)."""

    model: str
    old: State
    new: State
    at: datetime


def prober_healthy(observations: Iterable[Observation], now: datetime, interval: float) -> tuple[bool, str]:
    """Whether the prober was healthy at ``now``, and why not.

    Healthy means its latest probe at or before ``now`` (any model) started
    within ``2 x interval`` seconds and was not flagged prober_overloaded. With
    several probes at that same instant, any flagged one makes it unhealthy:
    when in doubt the answer is unknown, never up.
    """
    return _prober_health(by_model(observations, now), now, interval)


def _prober_health(grouped: Mapping[str, Sequence[Observation]], now: datetime, interval: float) -> tuple[bool, str]:
    """:func:`prober_healthy` of probes already grouped as :func:`by_model` groups them."""
    # Each model's last probe is the latest of its own; the latest of all is among those.
    latest = max((mine[-1].started_at for mine in grouped.values() if mine), default=None)
    limit = timedelta(seconds=HEARTBEAT_INTERVALS * interval)
    if latest is None or now - latest > limit:
        last = "never" if latest is None else f"last at {latest.isoformat()}"
        return (
            False,
            f"prober silent for over {_fmt_span(limit.total_seconds())} ({last})",
        )
    for mine in grouped.values():
        for obs in reversed(mine):
            if obs.started_at != latest:
                break
            if obs.prober_overloaded:
                return False, "prober overloaded"
    return True, ""


def advance(
    status: ModelStatus,
    observations: Sequence[Observation],
    now: datetime,
    slo: SLOConfig,
    interval: float,
) -> ModelStatus:
    """Return ``status`` moved to ``now``.

    ``observations`` are probes of every model (the other models' probes are
    the prober's heartbeat); this model's probes not counted before (see
    ``ModelStatus.counted``) and started at or before ``now`` feed the
    hysteresis counters, in the order they started; those in
    ``(now - slo.window, now]`` the SLO checks. Calling it twice with the same
    arguments, or again with the same ``now``, gives the same result.
    ``interval`` is the schedule interval in seconds.
    """
    _check_aware(now, "now")
    grouped = by_model(observations, now)
    return _advance(status, grouped.get(status.model, []), _prober_health(grouped, now, interval), now, slo)


def by_model(observations: Iterable[Observation], now: datetime) -> dict[str, list[Observation]]:
    """Each model's probes started at or before ``now``, in the order they started.

    One pass and one sort per model: what :func:`evaluate_all` does once for
    every model instead of scanning all probes again for each one. The sort
    is stable, so probes starting at the same instant keep their given order.
    """
    out: dict[str, list[Observation]] = {}
    for obs in observations:
        if obs.started_at <= now:
            out.setdefault(obs.model, []).append(obs)
    for mine in out.values():
        mine.sort(key=_started_at)
    return out


def _started_at(obs: Observation) -> datetime:
    return obs.started_at


def _advance(
    status: ModelStatus,
    mine: Sequence[Observation],
    health: tuple[bool, str],
    now: datetime,
    slo: SLOConfig,
) -> ModelStatus:
    """``status`` moved to ``now``, given its model's probes (``by_model``) and the prober's health."""
    failures, successes, latched = (
        status.consecutive_failures,
        status.consecutive_successes,
        status.latched_down,
    )
    for obs in mine:
        if obs.prober_overloaded or obs.not_router_fault:
            continue
        if status.counted is not None and obs.id is not None:
            if obs.id in status.counted:
                continue
        elif status.as_of is not None and obs.started_at <= status.as_of:
            continue
        if obs.ok:
            failures, successes = 0, successes + 1
            if latched and successes >= slo.up_after:
                latched = False
        else:
            failures, successes = failures + 1, 0
            if failures >= slo.down_after:
                latched = True

    state, reason = _judge(mine, health, now, slo, failures, latched)
    since = status.since if state == status.state else now
    counted = frozenset(o.id for o in mine if o.id is not None)
    return ModelStatus(status.model, state, since, failures, successes, reason, latched, now, counted)


def _judge(
    mine: Sequence[Observation],
    health: tuple[bool, str],
    now: datetime,
    slo: SLOConfig,
    failures: int,
    latched: bool,
) -> tuple[State, str]:
    healthy, why = health
    if not healthy:
        return State.UNKNOWN, why
    window_start = now - timedelta(seconds=slo.window)
    window = [o for o in mine if o.started_at > window_start and not (o.prober_overloaded or o.not_router_fault)]
    span = _fmt_span(slo.window)
    if not window:
        return State.UNKNOWN, f"no probe in the last {span}"
    if latched:
        if failures:
            return State.DOWN, f"{failures} consecutive failed probes"
        return (
            State.DOWN,
            f"recovering: waiting for {slo.up_after} consecutive ok probes",
        )
    failed = sum(1 for o in window if not o.ok)
    rate = failed / len(window)
    if len(window) >= slo.min_samples and rate > slo.error_rate:
        return (
            State.DEGRADED,
            f"error rate {rate:.0%} > {slo.error_rate:.0%} over {span} ({failed}/{len(window)})",
        )
    # Before p95 TTFT: the retries are what makes it slow, and the more useful reason.
    reported = [o.attempts for o in window if o.ok and o.attempts is not None]
    if len(reported) >= slo.min_samples:
        retried = sum(1 for a in reported if a > 1)
        share = retried / len(reported)
        if share > slo.retried_share:
            return (
                State.DEGRADED,
                f"router retried {share:.0%} of answers > {slo.retried_share:.0%} over {span} "
                f"({retried}/{len(reported)}): upstream failures clients do not see",
            )
    ttfts = [o.ttft_ms for o in window if o.ok and o.ttft_ms is not None]
    if len(ttfts) >= slo.min_samples:
        p95 = _percentile(ttfts, 0.95)
        if p95 > slo.ttft_p95_ms:
            return (
                State.DEGRADED,
                f"p95 TTFT {p95:.0f} ms > {slo.ttft_p95_ms:.0f} ms over {span}",
            )
    return State.OPERATIONAL, ""


def evaluate_all(
    statuses: Mapping[str, ModelStatus],
    models: Iterable[str],
    observations: Sequence[Observation],
    now: datetime,
    slo: SLOConfig,
    interval: float,
) -> tuple[dict[str, ModelStatus], list[Transition]]:
    """Advance every model in ``models`` (new ones start unknown) to ``now``.

    Returns the new statuses and the state changes, ordered by model id.
    Models in ``statuses`` but not in ``models`` (removed from config) are dropped.
    The same as :func:`advance` on each model, in time linear in the probes
    and the models: the probes are grouped by model once and the prober's
    health is judged once.
    """
    _check_aware(now, "now")
    return evaluate_grouped(statuses, models, by_model(observations, now), now, slo, interval)


def evaluate_grouped(
    statuses: Mapping[str, ModelStatus],
    models: Iterable[str],
    grouped: Mapping[str, Sequence[Observation]],
    now: datetime,
    slo: SLOConfig,
    interval: float,
) -> tuple[dict[str, ModelStatus], list[Transition]]:
    """:func:`evaluate_all` of probes already grouped as :func:`by_model` groups them: per model,
    in the order they started, none after ``now`` (a caller that keeps them so need not regroup)."""
    _check_aware(now, "now")
    health = _prober_health(grouped, now, interval)
    new: dict[str, ModelStatus] = {}
    transitions: list[Transition] = []
    for model in sorted(set(models)):
        old = statuses.get(model) or ModelStatus.initial(model, now)
        new[model] = _advance(old, grouped.get(model, ()), health, now, slo)
        if new[model].state != old.state:
            transitions.append(Transition(model, old.state, new[model].state, now))
    return new, transitions


def _percentile(values: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks, numpy's default, so the
    # status agrees with the published p95 computed on the same probes.
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# ---------------------------------------------------------------- incidents


@dataclass(frozen=True, slots=True)
class Incident:
    """A span during which at least one model was degraded or down."""

    id: int  # 1, 2, ... in opening order, per book
    start: datetime
    end: datetime | None  # None while open
    worst_state: State  # degraded or down
    models: frozenset[str]  # every model affected while it was open
    # True while every model's bad spell so far fell inside a maintenance
    # window covering it: kept for the record, but not alerted on or shown as
    # an outage. Once any model is bad outside maintenance it is False for good.
    suppressed: bool


@dataclass(slots=True)
class IncidentBook:
    """Opens, extends and closes incidents from state transitions.

    At most one incident is open: a model going degraded or down (from any
    state) opens one, or joins the one already open. It closes when all of its
    models are operational again; a model that went unknown keeps it open,
    since nobody knows that it recovered. A model that is no longer monitored
    (removed from the configuration, retired by its router) stops counting:
    nobody ever will know, and the incident would otherwise stay open for good.

    Maintenance does not hide anything: an incident whose models were all
    inside a window covering them is recorded with ``suppressed=True``. If a
    model is still bad after its window ends, the incident stops being
    suppressed at the first update after that.
    """

    incidents: list[Incident] = field(default_factory=list)  # oldest first; the last may be open
    states: dict[str, State] = field(default_factory=dict)  # each model's latest state seen
    monitored: frozenset[str] | None = None  # the models still probed, as of the last update; None: all

    @property
    def open(self) -> Incident | None:
        """The open incident, if any."""
        if self.incidents and self.incidents[-1].end is None:
            return self.incidents[-1]
        return None

    def update(
        self,
        transitions: Iterable[Transition],
        now: datetime,
        maintenance: Sequence[MaintenanceWindow],
        monitored: Iterable[str] | None = None,
    ) -> list[Incident]:
        """Apply ``transitions`` (in time order), then check maintenance at ``now``.

        ``monitored``: the models still probed; the open incident closes at
        ``now`` once those of its models are all operational, even when others
        are not monitored any more (None: every model is monitored).
        Returns the incidents opened, changed or closed, in their final form,
        for the caller to store.
        """
        _check_aware(now, "now")
        self.monitored = None if monitored is None else frozenset(monitored)
        touched: dict[int, Incident] = {}
        for t in sorted(transitions, key=lambda t: (t.at, t.model)):
            self.states[t.model] = t.new
            incident = self._apply(t, maintenance)
            if incident is not None:
                touched[incident.id] = incident
        # Maintenance over, model still bad: from now on it is a real outage.
        current = self.open
        still_bad = current is not None and any(
            self.states.get(m) in _BAD and not _covered(m, now, maintenance) for m in current.models
        )
        if current is not None and current.suppressed and still_bad:
            touched[current.id] = self._replace_open(suppressed=False)
        # The last model holding it open has left monitoring.
        current = self.open
        if current is not None and self._settled(current):
            touched[current.id] = self._replace_open(end=now)
        return sorted(touched.values(), key=lambda i: i.id)

    def _settled(self, incident: Incident) -> bool:
        """Every model of ``incident`` that is still monitored is operational."""
        return all(
            self.states.get(m) == State.OPERATIONAL
            for m in incident.models
            if self.monitored is None or m in self.monitored
        )

    def _apply(self, t: Transition, maintenance: Sequence[MaintenanceWindow]) -> Incident | None:
        current = self.open
        if t.new in _BAD and self.monitored is not None and t.model not in self.monitored:
            return None  # not monitored: its state is published, but it pages no one
        if t.new in _BAD:
            covered = _covered(t.model, t.at, maintenance)
            if current is None:
                next_id = self.incidents[-1].id + 1 if self.incidents else 1
                incident = Incident(next_id, t.at, None, t.new, frozenset({t.model}), covered)
                self.incidents.append(incident)
                return incident
            worst = t.new if _SEVERITY[t.new] > _SEVERITY[current.worst_state] else current.worst_state
            return self._replace_open(
                worst_state=worst,
                models=current.models | {t.model},
                suppressed=current.suppressed and covered,
            )
        if t.new == State.OPERATIONAL and current is not None and t.model in current.models and self._settled(current):
            return self._replace_open(end=t.at)
        return None

    def _replace_open(self, **changes: object) -> Incident:
        incident = replace(self.incidents[-1], **changes)  # type: ignore[arg-type]
        self.incidents[-1] = incident
        return incident


def _covered(model: str, at: datetime, maintenance: Sequence[MaintenanceWindow]) -> bool:
    return any(window.covers(model, at) for window in maintenance)


# ---------------------------------------------------------------- daily uptime


@dataclass(frozen=True, slots=True)
class DayUptime:
    """Seconds one model spent in each state during one UTC day."""

    operational: float = 0.0
    degraded: float = 0.0
    down: float = 0.0
    unknown: float = 0.0

    @property
    def known(self) -> float:
        """Seconds whose state is known: everything but unknown."""
        return self.operational + self.degraded + self.down

    @property
    def fraction_up(self) -> float | None:
        """operational / known time; None when nothing is known (draw it grey, not green)."""
        return self.operational / self.known if self.known > 0 else None


@dataclass(slots=True)
class DailyUptime:
    """Per model, per UTC day, seconds in each state, built from the state timeline."""

    days: dict[tuple[str, date], DayUptime] = field(default_factory=dict)

    def record(self, model: str, state: State, start: datetime, end: datetime) -> None:
        """Add ``[start, end)`` spent in ``state``, split at UTC midnights."""
        _check_aware(start, "start")
        _check_aware(end, "end")
        if end < start:
            raise ValueError(f"end ({end.isoformat()}) is before start ({start.isoformat()})")
        at = start.astimezone(UTC)
        stop = end.astimezone(UTC)
        while at < stop:
            midnight = datetime.combine(at.date() + timedelta(days=1), datetime.min.time(), UTC)
            upto = min(midnight, stop)
            key = (model, at.date())
            day = self.days.get(key, DayUptime())
            seconds = (upto - at).total_seconds()
            self.days[key] = replace(day, **{state.value: getattr(day, state.value) + seconds})
            at = upto

    def day(self, model: str, day: date) -> DayUptime:
        """Seconds per state for ``model`` on UTC ``day`` (all zero when nothing was recorded)."""
        return self.days.get((model, day), DayUptime())

    def fraction_up(self, model: str, day: date) -> float | None:
        """operational / (total - unknown) on that day; None when no time is known."""
        return self.day(model, day).fraction_up

    def prune(self, before: date) -> None:
        """Forget days before ``before``; keep 90 with ``today - timedelta(days=UPTIME_DAYS - 1)``."""
        self.days = {key: value for key, value in self.days.items() if key[1] >= before}


def _check_aware(value: datetime, name: str) -> None:
    # Naive datetimes would make day boundaries depend on the machine's zone.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")


def _fmt_span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
