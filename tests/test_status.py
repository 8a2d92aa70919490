"""Status engine: hysteresis, SLO checks, prober health, incidents, maintenance, daily uptime."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from routewatch.aggregator.model_state import (
    UPTIME_DAYS,
    DailyUptime,
    IncidentBook,
    ModelStatus,
    Observation,
    State,
    Transition,
    advance,
    evaluate_all,
)
from routewatch.config import MaintenanceWindow, SLOConfig

pytestmark = pytest.mark.unit

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
INTERVAL = 30.0
MODEL = "openai/gpt-4.1-nano"
OTHER = "anthropic/claude-haiku-4.5"
# error_rate 1.0 never trips, so these tests see only the hysteresis.
HYSTERESIS_ONLY = SLOConfig(error_rate=1.0, down_after=3, up_after=2)


def at(k: float) -> datetime:
    """The start of probe round ``k``."""
    return T0 + timedelta(seconds=k * INTERVAL)


def probe(
    k: float,
    ok: bool = True,
    ttft: float | None = 800.0,
    model: str = MODEL,
    overloaded: bool = False,
) -> Observation:
    return Observation(model, at(k), ok, ttft if ok else None, overloaded)


def replay(outcomes: Sequence[bool], slo: SLOConfig, first_ok: int = 0) -> list[State]:
    """Probe once per round, ``first_ok`` ok rounds then ``outcomes``; the state after each outcome."""
    history = [probe(k) for k in range(first_ok)]
    status = ModelStatus.initial(MODEL, at(0))
    if history:
        status = advance(status, history, at(first_ok - 1), slo, INTERVAL)
    states = []
    for i, ok in enumerate(outcomes):
        k = first_ok + i
        history.append(probe(k, ok))
        status = advance(status, history, at(k), slo, INTERVAL)
        states.append(status.state)
    return states


# ---------------------------------------------------------------- hysteresis

OP, DEG, DOWN, UNK = State.OPERATIONAL, State.DEGRADED, State.DOWN, State.UNKNOWN


def test_one_failure_does_not_flap() -> None:
    # Default SLO: one failure among 30 probes is 3% errors, under 5%, and far from down.
    assert replay([False, True, True], SLOConfig(), first_ok=29) == [OP, OP, OP]


def test_down_after_n_consecutive_failures() -> None:
    assert replay([False, False], HYSTERESIS_ONLY, first_ok=5) == [OP, OP]  # N - 1
    assert replay([False, False, False], HYSTERESIS_ONLY, first_ok=5) == [
        OP,
        OP,
        DOWN,
    ]  # N


def test_failures_must_be_consecutive() -> None:
    pattern = [False, False, True] * 4
    assert DOWN not in replay(pattern, HYSTERESIS_ONLY, first_ok=5)


def test_back_after_m_consecutive_successes() -> None:
    states = replay([False] * 3 + [True], HYSTERESIS_ONLY, first_ok=5)
    assert states[-1] == DOWN  # M - 1
    states = replay([False] * 3 + [True, True], HYSTERESIS_ONLY, first_ok=5)
    assert states[-2:] == [DOWN, OP]  # M
    states = replay([False] * 3 + [True, False, True, True], HYSTERESIS_ONLY, first_ok=5)
    assert states[-4:] == [DOWN, DOWN, DOWN, OP]  # a failure restarts the count


def test_down_counters_and_reason() -> None:
    history = [probe(k, ok=False) for k in range(4)]
    status = advance(ModelStatus.initial(MODEL, T0), history, at(3), HYSTERESIS_ONLY, INTERVAL)
    assert (
        status.state,
        status.consecutive_failures,
        status.consecutive_successes,
    ) == (DOWN, 4, 0)
    assert status.reason == "4 consecutive failed probes"
    assert status.since == at(3)


def test_advance_is_pure_and_idempotent() -> None:
    history = [probe(0), probe(1, ok=False), probe(2, ok=False)]
    start = ModelStatus.initial(MODEL, T0)
    once = advance(start, history, at(2), HYSTERESIS_ONLY, INTERVAL)
    assert advance(start, history, at(2), HYSTERESIS_ONLY, INTERVAL) == once
    # Probes already counted are not counted again.
    assert advance(once, history, at(2), HYSTERESIS_ONLY, INTERVAL) == once
    # Probes after `now` are not seen yet.
    assert advance(start, [*history, probe(3, ok=False)], at(2), HYSTERESIS_ONLY, INTERVAL) == once


def test_a_probe_that_arrives_after_the_evaluation_it_started_before_still_counts() -> None:
    """A probe is stored when it ends, seconds after it started: one that started before an
    evaluation but was stored after it is counted by the next one, and only once."""

    def with_id(k: float, ok: bool) -> Observation:
        return replace(probe(k, ok), id=f"p{k}")

    seen = [with_id(0, True), with_id(1, False), with_id(2, False)]
    status = advance(ModelStatus.initial(MODEL, T0), seen, at(2.5), HYSTERESIS_ONLY, INTERVAL)
    assert status.consecutive_failures == 2 and status.state is not DOWN
    # Started at round 2.4, before the evaluation at 2.5; stored (visible) only now.
    late = with_id(2.4, False)
    status = advance(status, [*seen, late], at(3), HYSTERESIS_ONLY, INTERVAL)
    assert (status.state, status.consecutive_failures) == (DOWN, 3)
    assert advance(status, [*seen, late], at(3.5), HYSTERESIS_ONLY, INTERVAL).consecutive_failures == 3
    # Read back from the tables (ids unknown), probes started before as_of count as counted.
    loaded = replace(status, counted=None)
    assert advance(loaded, [*seen, late], at(4), HYSTERESIS_ONLY, INTERVAL).consecutive_failures == 3


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        advance(
            ModelStatus.initial(MODEL, T0),
            [],
            datetime(2025, 6, 1),  # noqa: DTZ001 -- the naive datetime is what the test refuses
            SLOConfig(),
            INTERVAL,
        )


# ---------------------------------------------------------------- SLOs over the window


def test_degraded_by_error_rate() -> None:
    history = [probe(k, ok=k % 10 != 5) for k in range(20)]  # 2 of 20 failed, never consecutive
    status = advance(ModelStatus.initial(MODEL, T0), history, at(19), SLOConfig(), INTERVAL)
    assert status.state == DEG
    assert status.reason == "error rate 10% > 5% over 15m (2/20)"


def test_error_rate_only_counts_the_window() -> None:
    # The two failures are 20 rounds (10 min) before the 15-minute window.
    history = [probe(k, ok=k not in (0, 5)) for k in range(50)]
    status = advance(ModelStatus.initial(MODEL, T0), history, at(49), SLOConfig(), INTERVAL)
    assert status.state == OP


@pytest.mark.parametrize(("samples", "state"), [(4, OP), (5, DEG)])
def test_degraded_by_p95_ttft_needs_min_samples(samples: int, state: State) -> None:
    history = [probe(k, ttft=6000.0) for k in range(samples)]
    status = advance(ModelStatus.initial(MODEL, T0), history, at(samples - 1), SLOConfig(), INTERVAL)
    assert status.state == state
    if state == DEG:
        assert status.reason == "p95 TTFT 6000 ms > 5000 ms over 15m"


def retried_probe(k: float, attempts: int | None, ttft: float = 800.0) -> Observation:
    return Observation(MODEL, at(k), True, ttft, attempts=attempts)


def test_degraded_when_the_router_quietly_retries() -> None:
    # Every answer succeeded, but the router needed a second upstream call for 3 of 20.
    history = [retried_probe(k, 2 if k % 7 == 3 else 1) for k in range(20)]
    status = advance(ModelStatus.initial(MODEL, T0), history, at(19), SLOConfig(), INTERVAL)
    assert status.state == DEG
    assert status.reason == (
        "router retried 15% of answers > 10% over 15m (3/20): upstream failures clients do not see"
    )


def test_retries_under_the_share_or_unreported_are_no_reason() -> None:
    one_in_twenty = [retried_probe(k, 2 if k == 3 else 1) for k in range(20)]
    status = advance(ModelStatus.initial(MODEL, T0), one_in_twenty, at(19), SLOConfig(), INTERVAL)
    assert status.state == OP
    silent = [retried_probe(k, None) for k in range(20)]  # a router that reports no attempts
    status = advance(ModelStatus.initial(MODEL, T0), silent, at(19), SLOConfig(retried_share=0.0), INTERVAL)
    assert status.state == OP


def test_retries_need_min_samples_of_reported_answers() -> None:
    history = [retried_probe(k, 2 if k < 4 else None) for k in range(20)]
    status = advance(ModelStatus.initial(MODEL, T0), history, at(19), SLOConfig(), INTERVAL)
    assert status.state == OP  # 4 reported answers, all retried: fewer than min_samples (5)


def test_p95_not_mean() -> None:
    # 19 fast and 1 very slow probe: p95 (linear) = 800 + 0.05 * 59200 = 3760 ms, under 5000.
    history = [probe(k, ttft=60000.0 if k == 0 else 800.0) for k in range(20)]
    status = advance(ModelStatus.initial(MODEL, T0), history, at(19), SLOConfig(), INTERVAL)
    assert status.state == OP


def test_recovered_model_can_be_degraded() -> None:
    # Back from down after up_after successes, but the window still holds the failures.
    states = replay([False] * 3 + [True, True], SLOConfig(), first_ok=10)
    assert states[-2:] == [DOWN, DEG]


# ---------------------------------------------------------------- prober health


def test_prober_gap_is_unknown_not_up_or_down() -> None:
    history = [probe(k) for k in range(10)]
    status = advance(ModelStatus.initial(MODEL, T0), history, at(9), SLOConfig(), INTERVAL)
    assert status.state == OP
    # Within 2 x interval of the last probe: still healthy.
    assert advance(status, history, at(9) + timedelta(seconds=60), SLOConfig(), INTERVAL).state == OP
    gap = advance(status, history, at(9) + timedelta(seconds=61), SLOConfig(), INTERVAL)
    assert gap.state == UNK
    assert gap.reason == f"prober silent for over 1m (last at {at(9).isoformat()})"


def test_prober_gap_keeps_a_down_model_down_afterwards() -> None:
    history = [probe(k, ok=False) for k in range(3)]
    status = advance(ModelStatus.initial(MODEL, T0), history, at(2), HYSTERESIS_ONLY, INTERVAL)
    assert status.state == DOWN
    status = advance(status, history, at(20), HYSTERESIS_ONLY, INTERVAL)
    assert status.state == UNK  # not down: nobody looked
    history.append(probe(21))
    status = advance(status, history, at(21), HYSTERESIS_ONLY, INTERVAL)
    assert status.state == DOWN  # one ok probe is not enough to come back
    assert status.reason == "recovering: waiting for 2 consecutive ok probes"


def test_other_models_are_the_heartbeat() -> None:
    # The prober is alive (it probes OTHER) but has no probe of MODEL in the window.
    history = [probe(0), *(probe(k, model=OTHER) for k in range(40))]
    status = advance(ModelStatus.initial(MODEL, T0), history, at(39), SLOConfig(), INTERVAL)
    assert (status.state, status.reason) == (UNK, "no probe in the last 15m")


def test_overloaded_prober_is_unknown() -> None:
    history = [probe(k) for k in range(9)] + [probe(9, model=OTHER, overloaded=True)]
    status = advance(ModelStatus.initial(MODEL, T0), history, at(9), SLOConfig(), INTERVAL)
    assert (status.state, status.reason) == (UNK, "prober overloaded")


def test_overloaded_failures_do_not_count() -> None:
    history = [probe(k, ok=False, overloaded=True) for k in range(5)] + [probe(5)]
    status = advance(ModelStatus.initial(MODEL, T0), history, at(5), HYSTERESIS_ONLY, INTERVAL)
    assert (
        status.state,
        status.consecutive_failures,
        status.consecutive_successes,
    ) == (OP, 0, 1)


def test_evaluate_all_reports_transitions() -> None:
    history = [probe(k, ok=False) for k in range(3)] + [probe(k, model=OTHER) for k in range(3)]
    statuses, transitions = evaluate_all({}, [OTHER, MODEL], history, at(2), HYSTERESIS_ONLY, INTERVAL)
    assert {m: s.state for m, s in statuses.items()} == {MODEL: DOWN, OTHER: OP}
    assert transitions == [
        Transition(OTHER, UNK, OP, at(2)),
        Transition(MODEL, UNK, DOWN, at(2)),
    ]
    again, none = evaluate_all(statuses, [OTHER, MODEL], history, at(2), HYSTERESIS_ONLY, INTERVAL)
    assert (again, none) == (statuses, [])


# ---------------------------------------------------------------- incidents


def t(model: str, old: State, new: State, minute: int) -> Transition:
    return Transition(model, old, new, T0 + timedelta(minutes=minute))


def test_incident_opens_extends_tracks_worst_and_closes() -> None:
    book = IncidentBook()
    (opened,) = book.update([t(MODEL, OP, DEG, 1)], T0 + timedelta(minutes=1), [])
    assert (opened.id, opened.start, opened.end, opened.worst_state) == (
        1,
        T0 + timedelta(minutes=1),
        None,
        DEG,
    )
    assert opened.models == {MODEL} and not opened.suppressed

    (extended,) = book.update([t(OTHER, OP, DOWN, 2)], T0 + timedelta(minutes=2), [])
    assert (extended.id, extended.worst_state, extended.models) == (
        1,
        DOWN,
        {MODEL, OTHER},
    )

    assert (
        book.update(
            [t(MODEL, DEG, OP, 3), t(OTHER, DOWN, UNK, 4)],
            T0 + timedelta(minutes=4),
            [],
        )
        == []
    )
    assert book.open is not None  # OTHER is unknown, not known to be back

    (closed,) = book.update([t(OTHER, UNK, OP, 5)], T0 + timedelta(minutes=5), [])
    assert (closed.id, closed.end, closed.worst_state) == (
        1,
        T0 + timedelta(minutes=5),
        DOWN,
    )
    assert book.open is None


def test_a_model_no_longer_monitored_neither_holds_an_incident_open_nor_opens_one() -> None:
    book = IncidentBook()
    book.update([t(MODEL, OP, DOWN, 1), t(OTHER, OP, DEG, 1)], T0 + timedelta(minutes=1), [], {MODEL, OTHER})
    assert (
        book.update([t(OTHER, DEG, OP, 2), t(MODEL, DOWN, UNK, 2)], T0 + timedelta(minutes=2), [], {MODEL, OTHER}) == []
    )
    (closed,) = book.update([], T0 + timedelta(minutes=3), [], {OTHER})  # MODEL left the configuration
    assert closed.end == T0 + timedelta(minutes=3) and closed.models == {MODEL, OTHER}
    assert book.update([t(MODEL, UNK, DOWN, 4)], T0 + timedelta(minutes=4), [], {OTHER}) == []
    assert book.open is None
    (reopened,) = book.update([t(OTHER, OP, DOWN, 5)], T0 + timedelta(minutes=5), [], {OTHER})
    assert reopened.models == {OTHER}


def test_unknown_opens_no_incident() -> None:
    book = IncidentBook()
    assert book.update([t(MODEL, OP, UNK, 1)], T0 + timedelta(minutes=1), []) == []
    assert book.incidents == []
    (second,) = book.update([t(MODEL, UNK, DOWN, 2)], T0 + timedelta(minutes=2), [])
    assert second.id == 1  # a bad state seen after unknown does open one


def test_a_new_incident_after_one_closes() -> None:
    book = IncidentBook()
    book.update([t(MODEL, OP, DEG, 1), t(MODEL, DEG, OP, 2)], T0 + timedelta(minutes=2), [])
    (second,) = book.update([t(MODEL, OP, DEG, 3)], T0 + timedelta(minutes=3), [])
    assert second.id == 2 and second.start == T0 + timedelta(minutes=3)
    assert [i.end is None for i in book.incidents] == [False, True]


def window(models: list[str] | None = None) -> MaintenanceWindow:
    return MaintenanceWindow(start=T0, end=T0 + timedelta(minutes=30), models=models, reason="upgrade")


def test_maintenance_suppresses() -> None:
    book = IncidentBook()
    (inc,) = book.update([t(MODEL, OP, DOWN, 5)], T0 + timedelta(minutes=5), [window([MODEL])])
    assert inc.suppressed
    (inc,) = book.update([t(MODEL, DOWN, OP, 20)], T0 + timedelta(minutes=20), [window([MODEL])])
    assert inc.suppressed and inc.end == T0 + timedelta(minutes=20)


def test_uncovered_model_unsuppresses() -> None:
    book = IncidentBook()
    book.update([t(MODEL, OP, DOWN, 5)], T0 + timedelta(minutes=5), [window([MODEL])])
    (inc,) = book.update([t(OTHER, OP, DEG, 6)], T0 + timedelta(minutes=6), [window([MODEL])])
    assert not inc.suppressed and inc.models == {MODEL, OTHER}


def test_still_down_after_maintenance_unsuppresses() -> None:
    book = IncidentBook()
    book.update([t(MODEL, OP, DOWN, 5)], T0 + timedelta(minutes=5), [window()])
    assert book.update([], T0 + timedelta(minutes=29), [window()]) == []
    (inc,) = book.update([], T0 + timedelta(minutes=30), [window()])  # the window's end is exclusive
    assert not inc.suppressed and inc.end is None


# ---------------------------------------------------------------- daily uptime


def test_uptime_splits_at_utc_midnight() -> None:
    uptime = DailyUptime()
    cest = timezone(timedelta(hours=2))
    # 01:00-03:00 CEST on 2 June is 23:00 on 1 June to 01:00 on 2 June, UTC.
    uptime.record(
        MODEL,
        OP,
        datetime(2025, 6, 2, 1, tzinfo=cest),
        datetime(2025, 6, 2, 3, tzinfo=cest),
    )
    assert uptime.day(MODEL, date(2025, 6, 1)).operational == 3600
    assert uptime.day(MODEL, date(2025, 6, 2)).operational == 3600
    uptime.record(
        MODEL,
        DOWN,
        datetime(2025, 6, 1, 22, tzinfo=UTC),
        datetime(2025, 6, 4, 1, tzinfo=UTC),
    )
    assert uptime.day(MODEL, date(2025, 6, 3)).down == 86400
    assert uptime.day(MODEL, date(2025, 6, 4)).down == 3600


def test_unknown_is_excluded_not_up() -> None:
    uptime = DailyUptime()
    day = datetime(2025, 6, 1, tzinfo=UTC)
    uptime.record(MODEL, OP, day, day + timedelta(hours=6))
    uptime.record(MODEL, DEG, day + timedelta(hours=6), day + timedelta(hours=7))
    uptime.record(MODEL, DOWN, day + timedelta(hours=7), day + timedelta(hours=8))
    uptime.record(MODEL, UNK, day + timedelta(hours=8), day + timedelta(hours=24))
    assert uptime.fraction_up(MODEL, day.date()) == pytest.approx(0.75)
    assert uptime.day(MODEL, day.date()).unknown == 16 * 3600
    uptime.record(OTHER, UNK, day, day + timedelta(hours=24))
    assert uptime.fraction_up(OTHER, day.date()) is None  # no data is not 100%
    assert uptime.fraction_up(OTHER, date(2025, 5, 1)) is None


def test_uptime_prune_keeps_90_days() -> None:
    uptime = DailyUptime()
    today = date(2025, 9, 1)
    for back in range(100):
        start = datetime.combine(today - timedelta(days=back), datetime.min.time(), UTC)
        uptime.record(MODEL, OP, start, start + timedelta(hours=1))
    uptime.prune(today - timedelta(days=UPTIME_DAYS - 1))
    assert len(uptime.days) == UPTIME_DAYS
    assert min(d for _, d in uptime.days) == today - timedelta(days=89)


def test_uptime_rejects_reversed_span() -> None:
    with pytest.raises(ValueError, match="before start"):
        DailyUptime().record(MODEL, OP, T0, T0 - timedelta(seconds=1))


def test_one_early_failure_does_not_degrade_a_model_with_few_probes() -> None:
    """Below min_samples probes in the window, the error rate is not judged."""
    slo = SLOConfig(min_samples=5)
    now = T0 + timedelta(minutes=3)
    obs = [
        Observation("m", T0 + timedelta(minutes=1), False, None, False),
        Observation("m", T0 + timedelta(minutes=2), True, 100.0, False),
    ]
    status = advance(ModelStatus.initial("m", T0), obs, now, slo, 60.0)
    assert status.state is State.OPERATIONAL
