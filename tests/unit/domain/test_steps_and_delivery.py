"""Steps: StepDue -> processing -> DeliveryReported sent / failed / bounced / unknown (seed 000, 001)."""

from __future__ import annotations

from enrollstream.domain import (
    Channel,
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
    step,
    step_due,
    stop,
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


def test_a_5xx_on_the_recipient_ends_as_failed_with_its_reason() -> None:
    # Seed 001: a synchronous SMTP error marks the stage bounced; seeds 002/003: the enrollment failed.
    detail = "rcpt: 550 5.1.1 no such user"
    result = given(enroll(), step_due(0)).when(reported("bounced", 0, bounce_type="hard", detail=detail))
    result.then(
        ev(StepBounced, bounce_type="hard", will_retry=False),
        ev(EnrollmentFailed, reason="bounced", detail=detail, step_index=0),
    )
    e = result.enrollment()
    assert (e.status, e.stage, e.bounce_reason) == ("failed", "bounced", detail)
    assert (e.failure_reason, e.failure_detail, e.stop_reason) == ("bounced", detail, None)


def test_an_invalid_phone_number_ends_the_enrollment_as_failed() -> None:
    sms = campaign(steps=[step(Channel.SMS), step(Channel.SMS, delay=DAY)])
    detail = "not an E.164 number: '0800 123'"
    result = given(enroll(sms), step_due(0)).when(reported("invalid_recipient", 0, detail=detail))
    result.then(
        ev(StepFailed, retryable=False, will_retry=False),
        ev(EnrollmentFailed, reason="invalid_recipient", detail=detail, step_index=0),
    )
    e = result.enrollment()
    assert (e.status, e.stage, e.failure_reason, e.failure_detail) == (
        "failed",
        "pending",
        "invalid_recipient",
        detail,
    )
    assert (e.scheduled, e.due_at) == (None, None)  # nothing more is tried


def test_an_invalid_recipient_reported_after_the_end_is_recorded_only() -> None:
    result = given(enroll(), step_due(0), stop()).when(reported("invalid_recipient", 0, detail="To: 'x'"))
    result.then(ev(StepFailed, will_retry=False))
    assert (result.enrollment().status, result.enrollment().failure_reason) == ("stopped", None)


def test_a_failure_on_our_side_stops_with_reason_error() -> None:
    # Credentials, TLS, template, configuration: the contact is not to blame, so not failed.
    result = given(enroll(), step_due(0)).when(reported("error", 0, detail="auth: 535 bad credentials"))
    result.then(ev(StepFailed, will_retry=False), ev(EnrollmentStopped, reason="error"))
    e = result.enrollment()
    assert (e.status, e.stop_reason, e.failure_reason, e.stage) == ("stopped", "error", None, "pending")


def test_temporary_failures_until_the_attempts_run_out_fail_as_undeliverable() -> None:
    result = given(enroll(campaign(max_attempts=1)), step_due(0)).when(
        reported("failed", 0, retryable=True, detail="rcpt: 451 try later")
    )
    result.then(ev(StepFailed, will_retry=False), ev(EnrollmentFailed, reason="undeliverable"))


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
