"""A send deferred by the sender's rate limit goes back through the log, and a step's send window is
checked again when it fires (issue 11, items 1 and 3; seed 004: nothing after an ending)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from pydantic import ValidationError

from enrollstream.domain import (
    EnrollmentFailed,
    Ignored,
    SendWindow,
    StepDeferred,
    StepDelivered,
    StepDispatched,
    StepFailed,
    StepScheduled,
    ids,
)

from .scenario import (
    DAY,
    HOUR,
    T0,
    campaign,
    contact,
    eid,
    enroll,
    ev,
    given,
    reported,
    step,
    step_due,
    stop,
    unenroll,
)

MINUTE = HOUR / 60
RETRY_AT = T0 + HOUR


def deferred(
    dispatch: int = 1, retry_at: datetime = RETRY_AT, at: datetime = T0 + MINUTE, **kw: object
) -> object:
    return reported("deferred", 0, at=at, dispatch=dispatch, retry_at=retry_at, detail="rate limit", **kw)


def test_a_deferred_send_is_rescheduled_for_when_the_sender_may_send() -> None:
    result = given(enroll(), step_due(0)).when(deferred())  # type: ignore[arg-type]
    result.then(
        ev(StepDeferred, step_index=0, attempt=1, dispatch=1, retry_at=RETRY_AT, will_retry=True),
        ev(
            StepScheduled,
            step_index=0,
            attempt=1,
            due_at=RETRY_AT,
            dispatch=2,
            rescheduled="deferred",
        ),
    )
    enrollment = result.enrollment()
    # Back to its running status, nothing in flight, the step due again when the sender may send.
    assert (enrollment.status, enrollment.in_flight, enrollment.due_at) == ("pending", None, RETRY_AT)
    assert (enrollment.scheduled.step_index, enrollment.scheduled.dispatch) == (0, 2)


def test_a_deferred_step_dispatched_again_is_the_same_attempt_with_the_next_dispatch_number() -> None:
    result = given(enroll(), step_due(0), deferred()).when(step_due(0, at=RETRY_AT))  # type: ignore[arg-type]
    result.then(
        ev(StepDispatched, step_index=0, attempt=1, dispatch=2, message_id=ids.message_id(eid(), 0, 1))
    )


def test_a_deferral_is_not_an_attempt() -> None:
    # max_attempts=1: a temporary failure is final, yet three deferrals leave the attempt intact.
    history: list[object] = [enroll(campaign(max_attempts=1)), step_due(0)]
    for dispatch in (1, 2, 3):
        at = T0 + dispatch * HOUR
        history += [deferred(dispatch, retry_at=at, at=at - MINUTE), step_due(0, at=at)]
    result = given(*history).when(reported("sent", 0, at=T0 + 3 * HOUR, dispatch=4))  # type: ignore[arg-type]
    assert isinstance(result.events[0], StepDelivered)
    assert result.events[0].data.attempt == 1
    failed = given(*history).when(reported("failed", 0, retryable=True, dispatch=4))  # type: ignore[arg-type]
    failed.then(ev(StepFailed, attempt=1, will_retry=False), ev(EnrollmentFailed, step_index=0))


def test_a_deferred_step_fired_after_a_stop_sends_nothing() -> None:
    # The deferral was decided first; the Stop removes the rescheduled step; its timer fires anyway.
    given(enroll(), step_due(0), deferred(), stop(at=T0 + 2 * MINUTE)).when(  # type: ignore[arg-type]
        step_due(0, at=RETRY_AT)
    ).then_ignored(Ignored.STALE)


def test_a_deferral_reported_after_an_ending_closes_the_dispatch_and_schedules_nothing() -> None:
    result = given(enroll(), step_due(0), unenroll(at=T0 + MINUTE)).when(deferred(at=T0 + 2 * MINUTE))  # type: ignore[arg-type]
    result.then(ev(StepDeferred, dispatch=1, retry_at=RETRY_AT, will_retry=False))
    enrollment = result.enrollment()
    assert (enrollment.status, enrollment.in_flight, enrollment.scheduled) == ("unenrolled", None, None)
    # Whatever fires later for that step is stale: nothing is sent after the ending.
    given(enroll(), step_due(0), unenroll(at=T0 + MINUTE), deferred(at=T0 + 2 * MINUTE)).when(  # type: ignore[arg-type]
        step_due(0, at=RETRY_AT)
    ).then_ignored(Ignored.STALE)


def test_a_stale_deferral_report_cannot_defer_a_newer_dispatch() -> None:
    # Dispatch 1 was deferred and the step dispatched again (dispatch 2); a deferral of dispatch 1
    # arriving now (re-published under another id) must not touch dispatch 2.
    history = [enroll(), step_due(0), deferred(), step_due(0, at=RETRY_AT)]
    given(*history).when(deferred(1, retry_at=RETRY_AT + HOUR, at=RETRY_AT)).then_ignored(  # type: ignore[arg-type]
        Ignored.STALE
    )
    # A final report for dispatch 1 is stale too; dispatch 2's own outcome is recorded.
    given(*history).when(reported("sent", 0, at=RETRY_AT, dispatch=1)).then_ignored(Ignored.STALE)  # type: ignore[arg-type]
    delivered = given(*history).when(reported("sent", 0, at=RETRY_AT, dispatch=2))  # type: ignore[arg-type]
    assert isinstance(delivered.events[0], StepDelivered)


def test_a_deferral_without_a_retry_time_is_refused_by_the_contract() -> None:
    with pytest.raises(ValidationError, match="retry_at"):
        reported("deferred", 0)
    with pytest.raises(ValidationError, match="retry_at"):
        reported("sent", 0, retry_at=RETRY_AT)


# --- Send windows at fire time --------------------------------------------------------------------

OFFICE_HOURS = SendWindow(start_hour=9, end_hour=17)  # in the contact's zone
PARIS = "Europe/Paris"  # UTC+1 in March 2026


def windowed() -> object:
    return campaign(steps=[step(window=OFFICE_HOURS), step(delay=DAY, window=OFFICE_HOURS)])


def test_a_step_that_fires_outside_its_window_waits_for_the_next_opening() -> None:
    # Due Monday 10:00 Paris; the scheduler only gets to it at 18:00 Paris (a backlog, an outage, a
    # pause): it waits for Tuesday 09:00 Paris (08:00 UTC) instead of going out in the evening.
    history = [enroll(windowed(), contact=contact(time_zone=PARIS))]  # type: ignore[arg-type]
    evening = T0 + 8 * HOUR
    tuesday_opening = T0 + DAY - HOUR
    result = given(*history).when(step_due(0, at=evening))
    result.then(
        ev(
            StepScheduled,
            step_index=0,
            attempt=1,
            dispatch=1,
            due_at=tuesday_opening,
            requested_at=evening,
            rescheduled="outside_window",
        )
    )
    assert result.enrollment().status == "pending" and result.enrollment().due_at == tuesday_opening
    # At the opening it goes out; the next step counts its delay from that delivery, so it shifts too.
    later = given(*history, step_due(0, at=evening), step_due(0, at=tuesday_opening))
    delivered = later.when(reported("sent", 0, at=tuesday_opening)).events
    assert [(e.data.step_index, e.data.due_at) for e in delivered if isinstance(e, StepScheduled)] == [
        (1, tuesday_opening + DAY)
    ]


def test_a_step_that_fires_inside_its_window_is_dispatched() -> None:
    history = [enroll(windowed(), contact=contact(time_zone=PARIS))]  # type: ignore[arg-type]
    given(*history).when(step_due(0, at=T0 + HOUR)).then(ev(StepDispatched, step_index=0, dispatch=1))


def test_a_deferral_into_the_night_waits_for_the_window_opening() -> None:
    history = [enroll(windowed(), contact=contact(time_zone=PARIS)), step_due(0, at=T0)]  # type: ignore[arg-type]
    night = T0 + 12 * HOUR  # 22:00 Paris
    result = given(*history).when(deferred(retry_at=night, at=T0 + MINUTE))  # type: ignore[arg-type]
    result.then(
        ev(StepDeferred, retry_at=night, will_retry=True),
        ev(StepScheduled, step_index=0, dispatch=2, requested_at=night, due_at=T0 + DAY - HOUR),
    )


def test_a_deferral_is_rescheduled_no_earlier_than_its_report() -> None:
    # A retry time already past when the report is decided (clocks, a backlog): due at once, not before.
    late = T0 + 2 * HOUR
    result = given(enroll(), step_due(0)).when(deferred(retry_at=T0 + HOUR, at=late))  # type: ignore[arg-type]
    assert [e.data.due_at for e in result.events if isinstance(e, StepScheduled)] == [late]


@pytest.mark.parametrize("offset", [timedelta(0), 3 * HOUR])
def test_a_rescheduled_step_fired_early_is_deferred_not_dispatched(offset: timedelta) -> None:
    # A claim of the old timer published after the reschedule: not yet due, nothing happens.
    history = [enroll(), step_due(0), deferred(retry_at=T0 + 4 * HOUR)]
    given(*history).when(step_due(0, at=T0 + offset)).then_ignored(Ignored.DEFERRED)  # type: ignore[arg-type]


def test_a_deferral_is_due_strictly_after_the_step_was_dispatched_so_it_fires_as_a_new_command() -> None:
    # The dispatcher's clock runs behind the scheduler's: its retry time is before the dispatch. The
    # StepDue id names the due time, so due again at the same instant would be taken for a duplicate.
    dispatched = T0 + HOUR
    history = [enroll(), step_due(0, at=dispatched)]
    result = given(*history).when(deferred(retry_at=dispatched - MINUTE, at=dispatched - 2 * MINUTE))  # type: ignore[arg-type]
    [rescheduled] = [e for e in result.events if isinstance(e, StepScheduled)]
    assert rescheduled.data.due_at == dispatched + timedelta(microseconds=1)
