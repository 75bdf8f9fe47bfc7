"""Seed 003: SMS sequence contacts (Finished responded / no response / stopped, Opted Out, Omitted)."""

from __future__ import annotations

from enrollstream.domain import (
    Channel,
    ContactOptedOut,
    EnrollmentSkipped,
    EnrollmentStopped,
    Ignored,
    ReplyReceived,
    StepDispatched,
)

from .scenario import (
    DAY,
    HOUR,
    T0,
    campaign,
    contact,
    enroll,
    ev,
    given,
    mark_finished,
    opt_out,
    reply,
    reported,
    sent,
    step,
    step_due,
)

SMS = campaign(steps=[step(Channel.SMS), step(Channel.SMS, delay=DAY)], reply_action="continue")


def test_finished_responded_the_contact_replied_and_completed_the_sequence() -> None:
    history = [enroll(SMS), sent(0), reply(at=T0 + HOUR), step_due(1, at=T0 + DAY)]
    result = given(*history).when(reported("sent", 1, at=T0 + DAY))
    assert result.enrollment().status == "completed"
    assert result.enrollment().outcome == "responded"


def test_finished_no_response_the_contact_completed_the_sequence_without_replying() -> None:
    result = given(enroll(SMS), sent(0), step_due(1, at=T0 + DAY)).when(reported("sent", 1, at=T0 + DAY))
    assert (result.enrollment().status, result.enrollment().outcome) == ("completed", "no_response")


def test_finished_stopped_mark_contacts_as_finished_before_completing() -> None:
    result = given(enroll(SMS), sent(0)).when(mark_finished())
    result.then(ev(EnrollmentStopped, reason="marked_finished", outcome="stopped"))
    assert result.enrollment().scheduled is None


def test_a_reply_after_the_end_still_counts_as_responded() -> None:
    result = given(enroll(SMS), sent(0), mark_finished()).when(reply(at=T0 + 2 * HOUR))
    result.then(ev(ReplyReceived, first_reply=True))
    assert (result.enrollment().status, result.enrollment().outcome) == ("stopped", "responded")


def test_pending_the_contact_is_receiving_messages_but_has_not_completed() -> None:
    enrollment = given(enroll(SMS), sent(0)).state.enrollments
    assert [e.status for e in enrollment.values()] == ["active"]


def test_failed_a_message_returned_a_failed_response_from_the_service_provider() -> None:
    result = given(enroll(SMS), step_due(0)).when(reported("failed", 0, detail="30003 unreachable handset"))
    assert result.enrollment().status == "failed"


def test_opted_out_the_contact_requested_to_opt_out() -> None:
    result = given(enroll(SMS), sent(0)).when(opt_out(at=T0 + HOUR))
    result.then(
        ev(ContactOptedOut, campaign_id=None, enrollment_id=None), ev(EnrollmentStopped, reason="opted_out")
    )
    assert result.state.opted_out


def test_opt_out_is_account_wide_and_stops_every_active_enrollment() -> None:
    other = campaign(campaign_id="cmp-other", steps=SMS.steps)
    result = given(enroll(SMS), enroll(other), sent(0)).when(opt_out())
    assert [(e.campaign_id, e.type) for e in result.events] == [
        (None, "ContactOptedOut.v1"),
        ("cmp-1", "EnrollmentStopped.v1"),
        ("cmp-other", "EnrollmentStopped.v1"),
    ]


def test_a_second_opt_out_changes_nothing() -> None:
    given(enroll(SMS), opt_out()).when(opt_out()).then_ignored(Ignored.STALE)


def test_omitted_opted_out_added_to_the_sequence_but_already_opted_out() -> None:
    given(opt_out()).when(enroll(SMS)).then(ev(EnrollmentSkipped, kind="opted_out"))
    given().when(enroll(SMS, contact=contact(opted_out=True))).then(ev(EnrollmentSkipped, kind="opted_out"))


def test_omitted_landline_the_destination_is_a_landline_incapable_of_receiving_sms() -> None:
    result = given().when(enroll(SMS, contact=contact(line_type="landline")))
    result.then(ev(EnrollmentSkipped, kind="landline"))
    assert result.state.enrollments == {}


def test_landlines_can_still_be_enrolled_in_email_only_campaigns() -> None:
    assert given(enroll(contact=contact(line_type="landline"))).state.enrollments


def test_no_mobile_number_for_an_sms_step_is_skipped_as_missing_address() -> None:
    given().when(enroll(SMS, contact=contact(mobile=None))).then(
        ev(EnrollmentSkipped, kind="missing_address")
    )


def test_sms_steps_are_sent_to_the_mobile_number() -> None:
    given(enroll(SMS)).when(step_due(0)).then(ev(StepDispatched, channel="sms", to="+15550100"))
