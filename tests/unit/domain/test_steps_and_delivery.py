"""Steps: StepDue -> processing -> DeliveryReported sent / failed / bounced / unknown (seed 000, 001)."""

from __future__ import annotations

from enrollstream.domain import (
    EnrollmentCompleted,
    EnrollmentFailed,
    EnrollmentStopped,
    Ignored,
    StepBounced,
    StepDelivered,
    StepDeliveryUnknown,
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
    eid,
    enroll,
    ev,
    given,
    reported,
    sent,
    step_due,
)

MINUTE = HOUR / 60


def test_a_due_step_is_processing_with_a_delivery_attempt_and_a_deterministic_message_id() -> None:
    result = given(enroll()).when(step_due(0))
    result.then(
        ev(
            StepDispatched,
            step_index=0,
            attempt=1,
            channel="email",
            to="ada@example.com",
            message_id=ids.message_id(eid(), 0, 1),
        )
    )
    assert result.enrollment().status == "processing"
    assert result.enrollment().in_flight.message_id == ids.message_id(eid(), 0, 1)


def test_step_1_sent_moves_pending_to_sent_and_schedules_step_2_after_its_delay() -> None:
    result = given(enroll(), step_due(0)).when(reported("sent", 0, at=T0 + MINUTE))
    result.then(
        ev(StepDelivered, step_index=0, attempt=1),
        ev(StepScheduled, step_index=1, attempt=1, due_at=T0 + MINUTE + DAY),
    )
    enrollment = result.enrollment()
    assert (enrollment.status, enrollment.stage) == ("active", "sent")
    assert enrollment.sent_at == T0 + MINUTE


def test_the_campaign_completes_after_the_last_step() -> None:
    result = given(enroll(), sent(0), sent(1, at=T0 + DAY), step_due(2, at=T0 + 3 * DAY)).when(
        reported("sent", 2, at=T0 + 3 * DAY)
    )
    result.then(
        ev(StepDelivered, step_index=2), ev(EnrollmentCompleted, status="completed", outcome="no_response")
    )
    assert result.enrollment().status == "completed"
    assert result.enrollment().delivered_steps == [0, 1, 2]


def test_a_step_that_is_not_the_current_one_changes_nothing() -> None:
    given(enroll()).when(step_due(1)).then_ignored(Ignored.STALE)
    given(enroll()).when(step_due(0, attempt=2)).then_ignored(Ignored.STALE)


def test_a_step_due_twice_is_dispatched_once() -> None:
    given(enroll(), step_due(0)).when(step_due(0)).then_ignored(Ignored.STALE)


def test_a_second_report_for_the_same_attempt_changes_nothing() -> None:
    given(enroll(), sent(0)).when(reported("sent", 0)).then_ignored(Ignored.STALE)
    given(enroll(), step_due(0), reported("failed", 0)).when(reported("sent", 0)).then_ignored(Ignored.STALE)


def test_a_step_due_before_its_time_is_deferred() -> None:
    given(enroll(), sent(0)).when(step_due(1, at=T0 + HOUR)).then_ignored(Ignored.DEFERRED)


def test_a_retryable_failure_schedules_the_next_attempt_with_backoff() -> None:
    result = given(enroll(), step_due(0)).when(reported("failed", 0, retryable=True, detail="421 try later"))
    result.then(
        ev(StepFailed, retryable=True, will_retry=True),
        ev(StepScheduled, step_index=0, attempt=2, due_at=T0 + 15 * MINUTE),
    )
    assert result.enrollment().status == "pending"


def test_the_campaign_fails_when_retries_are_exhausted() -> None:
    history = [enroll(campaign(max_attempts=2)), step_due(0), reported("failed", 0, retryable=True)]
    at = T0 + 15 * MINUTE
    result = given(*history, step_due(0, attempt=2, at=at)).when(
        reported("failed", 0, attempt=2, retryable=True)
    )
    result.then(ev(StepFailed, will_retry=False), ev(EnrollmentFailed, step_index=0))
    assert result.enrollment().status == "failed"


def test_a_non_retryable_failure_fails_the_campaign_for_this_contact() -> None:
    result = given(enroll(), step_due(0)).when(reported("failed", 0, detail="invalid phone number"))
    result.then(
        ev(StepFailed, retryable=False, will_retry=False), ev(EnrollmentFailed, detail="invalid phone number")
    )


def test_a_synchronous_hard_bounce_stops_the_enrollment_and_marks_it_bounced() -> None:
    result = given(enroll(), step_due(0)).when(
        reported("bounced", 0, bounce_type="hard", detail="550 no such user")
    )
    result.then(
        ev(StepBounced, bounce_type="hard", will_retry=False),
        ev(EnrollmentStopped, reason="bounced", outcome="stopped"),
    )
    enrollment = result.enrollment()
    assert (enrollment.status, enrollment.stage, enrollment.bounce_reason) == (
        "stopped",
        "bounced",
        "550 no such user",
    )


def test_a_soft_bounce_is_retried() -> None:
    result = given(enroll(), step_due(0)).when(reported("bounced", 0, bounce_type="soft"))
    result.then(ev(StepBounced, bounce_type="soft", will_retry=True), ev(StepScheduled, attempt=2))
    assert result.enrollment().stage == "pending"


def test_an_unknown_outcome_is_never_resent_and_the_sequence_carries_on() -> None:
    result = given(enroll(), step_due(0)).when(reported("unknown", 0, detail="connection lost after DATA"))
    result.then(ev(StepDeliveryUnknown), ev(StepScheduled, step_index=1, attempt=1))
    assert result.enrollment().delivered_steps == []
    given(enroll(), step_due(0), reported("unknown", 0)).when(step_due(0, attempt=2)).then_ignored(
        Ignored.STALE
    )


def test_a_blast_is_terminal_at_delivery() -> None:
    from .scenario import blast

    result = given(enroll(blast()), step_due(0)).when(reported("sent", 0))
    result.then(ev(StepDelivered), ev(EnrollmentCompleted, status="delivered", outcome="no_response"))
    assert result.enrollment().status == "delivered"
    assert result.enrollment().expires_at is None
