"""The timers fold without a database: which timer rows a history of real decisions leaves."""

from __future__ import annotations

from datetime import timedelta

from enrollstream.domain import Accepted, ContactCommand, ContactState, Event, decide, fold, initial_state
from enrollstream.read_models.timers import EnrollmentInfo, TimerFold, TimerRow
from tests.unit.domain.scenario import (
    ACCOUNT,
    CONTACT,
    DAY,
    HOUR,
    T0,
    campaign,
    eid,
    enroll,
    expiry_due,
    reported,
    step_due,
    stop,
    trigger,
)


def decided(*commands: ContactCommand) -> list[Event]:
    state: ContactState = initial_state(ACCOUNT, CONTACT)
    events: list[Event] = []
    for command in commands:
        decision = decide(command, state)
        assert isinstance(decision, Accepted), decision
        state = fold(state, decision.events)
        events.extend(decision.events)
    return events


def table(
    events: list[Event], known: dict[str, EnrollmentInfo] | None = None
) -> dict[tuple[str, str], TimerRow]:
    """Fold `events` in one batch and return what the table would hold (starting empty)."""
    f = TimerFold(known or {})
    for event in events:
        f.apply(event)
    return {(row.enrollment_id, row.kind): row for row in f.upserts()}


def test_an_enrollment_has_a_step_timer_until_the_step_is_dispatched() -> None:
    events = decided(enroll(batch_number=3, priority=True))
    rows = table(events)
    assert list(rows) == [(eid(), "step_due")]
    row = rows[(eid(), "step_due")]
    assert (row.step_index, row.attempt, row.due_at) == (0, 1, T0)
    assert (row.batch_number, row.priority, row.enrolled_at) == (3, True, T0)

    f = TimerFold({})
    for event in decided(enroll(), step_due()):
        f.apply(event)
    assert f.upserts() == [] and f.deletes() == [(eid(), "step_due")]


def test_a_delivery_schedules_the_next_step_and_the_expiry() -> None:
    events = decided(enroll(campaign(kind="multi_module")), step_due(), reported("sent", at=T0 + HOUR))
    rows = table(events)
    assert rows[(eid(), "step_due")].step_index == 1
    assert rows[(eid(), "step_due")].due_at == T0 + HOUR + DAY
    assert rows[(eid(), "expiry")].due_at == T0 + HOUR + timedelta(days=7)
    assert rows[(eid(), "expiry")].step_index is None


def test_an_ending_removes_every_timer_and_nothing_brings_one_back() -> None:
    history = decided(enroll(), step_due(), reported("sent"), stop())
    f = TimerFold({})
    for event in history:
        f.apply(event)
    assert f.upserts() == []
    assert f.deletes() == [(eid(), "expiry"), (eid(), "step_due"), (eid(), "wait_timeout")]


def test_a_wait_timeout_timer_lives_while_the_trigger_is_awaited() -> None:
    auto_match = campaign(awaits_trigger=True, trigger_timeout=timedelta(hours=48))
    rows = table(decided(enroll(auto_match)))
    assert rows[(eid(), "wait_timeout")].due_at == T0 + timedelta(hours=48)
    rows = table(decided(enroll(auto_match), trigger(at=T0 + HOUR)))
    assert set(rows) == {(eid(), "step_due")}


def test_events_already_folded_change_nothing() -> None:
    events = decided(
        enroll(campaign(kind="multi_module")),
        step_due(),
        reported("sent"),
        expiry_due(T0 + timedelta(days=8)),
    )
    last = events[-1].version
    known = {eid(): EnrollmentInfo(ACCOUNT, CONTACT, "cmp-1", 0, False, T0, last_version=last, ended=True)}
    f = TimerFold(known)
    for event in events:  # the whole history again, e.g. a batch redelivered
        f.apply(event)
    assert f.changes == {}
