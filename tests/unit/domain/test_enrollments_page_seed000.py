"""Seed 000: the Enrollments page (statuses, stop reasons, Stop and Unenroll actions)."""

from __future__ import annotations

from enrollstream.domain import (
    ContactEnrolled,
    EnrollmentHandedOff,
    EnrollmentStopped,
    EnrollmentUnenrolled,
    Ignored,
    ReplyReceived,
    StepScheduled,
    TriggerAwaited,
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
    reply,
    reported,
    sent,
    step_due,
    stop,
    unenroll,
    wait_timeout,
)


def test_click_stop_on_any_active_enrollment_to_immediately_stop_the_campaign_for_that_contact() -> None:
    result = given(enroll(), sent(0)).when(stop())
    result.then(ev(EnrollmentStopped, reason="manual", outcome="stopped"))
    enrollment = result.enrollment()
    assert enrollment.status == "stopped" and enrollment.scheduled is None and enrollment.due_at is None


def test_no_more_messages_will_be_sent_after_stop() -> None:
    given(enroll(), sent(0), stop()).when(step_due(1, at=T0 + DAY)).then_ignored(Ignored.STALE)


def test_stopping_is_irreversible() -> None:
    given(enroll(), stop()).when(stop()).then_rejected("invalid_transition")
    given(enroll(), stop()).when(unenroll()).then_rejected("invalid_transition")


def test_stop_or_unenroll_an_unknown_enrollment_is_enrollment_not_found() -> None:
    given().when(stop()).then_rejected("enrollment_not_found")


def test_unenroll_is_permanent_and_the_record_stays() -> None:
    result = given(enroll(), sent(0)).when(unenroll())
    result.then(ev(EnrollmentUnenrolled, outcome="stopped", step_in_flight=False))
    assert result.enrollment().status == "unenrolled"


def test_user_replied_stops_when_the_reply_action_is_stop() -> None:
    result = given(enroll(), sent(0, at=T0)).when(reply(at=T0 + 3 * HOUR))
    result.then(
        ev(ReplyReceived, hours_to_reply=3.0, reply_action="stop", first_reply=True),
        ev(EnrollmentStopped, reason="replied", outcome="responded"),
    )
    assert result.enrollment().stage == "replied"
    assert result.enrollment().hours_to_reply == 3.0


def test_reply_with_continue_keeps_the_sequence_going() -> None:
    result = given(enroll(campaign(reply_action="continue")), sent(0)).when(reply(at=T0 + HOUR))
    result.then(ev(ReplyReceived, reply_action="continue"))
    assert result.enrollment().status == "active"
    assert result.enrollment().scheduled is not None


def test_chatbot_handoff_when_the_reply_action_is_handoff() -> None:
    result = given(enroll(campaign(reply_action="handoff")), sent(0)).when(reply(at=T0 + HOUR))
    result.then(ev(ReplyReceived, reply_action="handoff"), ev(EnrollmentHandedOff, outcome="responded"))
    assert result.enrollment().status == "handed_off"


def test_timeout_a_wait_timeout_was_exceeded() -> None:
    waiting = campaign(awaits_trigger=True, trigger_timeout=2 * DAY)
    given().when(enroll(waiting)).then(ev(ContactEnrolled), ev(TriggerAwaited, timeout_at=T0 + 2 * DAY))
    given(enroll(waiting)).when(wait_timeout(T0 + DAY)).then_ignored(Ignored.DEFERRED)
    result = given(enroll(waiting)).when(wait_timeout(T0 + 2 * DAY))
    result.then(ev(EnrollmentStopped, reason="timeout", outcome="stopped"))


def test_processing_is_shown_while_the_current_step_is_being_sent() -> None:
    enrollment = given(enroll()).when(step_due(0)).enrollment()
    assert enrollment.status == "processing" and enrollment.scheduled is None


def test_next_execution_is_the_due_time_of_the_scheduled_step() -> None:
    result = given(enroll()).when(sent(0)[0])
    assert result.enrollment().due_at is None
    result = given(enroll(), sent(0)[0]).when(sent(0)[1])
    assert result.events[-1].type == StepScheduled.model_fields["type"].default
    assert result.enrollment().due_at == T0 + DAY


def test_error_a_technical_error_prevented_the_campaign_from_continuing() -> None:
    from enrollstream.domain import StepFailed

    result = given(enroll(), step_due(0)).when(reported("error", 0, detail="template variable missing"))
    result.then(
        ev(StepFailed, will_retry=False),
        ev(EnrollmentStopped, reason="error", outcome="stopped", note="template variable missing"),
    )


def test_current_step_reads_step_n_of_m() -> None:
    enrollment = given(enroll(), sent(0)).state.enrollments[eid()]
    assert (enrollment.current_step, enrollment.step_count) == (2, 3)


def test_next_execution_time_indicators() -> None:
    from enrollstream.domain.schedule import next_execution_indicator

    assert next_execution_indicator(T0 - HOUR, T0) == "Overdue"
    assert next_execution_indicator(T0 + HOUR / 2, T0) == "Coming soon"
    assert next_execution_indicator(T0 + DAY, T0) == "Waiting"
    assert next_execution_indicator(None, T0) == "—"


def test_the_enrolling_user_is_recorded() -> None:
    assert given(enroll()).state.enrollments[eid()].enrolled_by == "test"
