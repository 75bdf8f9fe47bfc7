"""Seed 001 engagement (opened, bounced), campaign pause/resume, idempotency."""

from __future__ import annotations

from enrollstream.domain import (
    ContactEnrolled,
    EnrollmentFailed,
    Ignored,
    MessageBounced,
    MessageOpened,
    StepDispatched,
    StepScheduled,
)

from .scenario import (
    ACCOUNT,
    HOUR,
    T0,
    bounce,
    campaign,
    enroll,
    ev,
    given,
    opened,
    reply,
    sent,
    step_due,
    stop,
)


def test_sent_to_opened_when_the_tracking_pixel_was_loaded() -> None:
    result = given(enroll(), sent(0)).when(opened(at=T0 + HOUR))
    result.then(ev(MessageOpened, first_open=True))
    assert (result.enrollment().stage, result.enrollment().opened_at) == ("opened", T0 + HOUR)
    again = given(enroll(), sent(0), opened(at=T0 + HOUR)).when(opened(at=T0 + 2 * HOUR))
    again.then(ev(MessageOpened, first_open=False))
    assert again.enrollment().opened_at == T0 + HOUR


def test_an_open_recognised_as_a_machines_is_recorded_flagged() -> None:
    given(enroll(), sent(0)).when(opened(step_index=0, machine="privacy_prefetch")).then(
        ev(MessageOpened, first_open=True, step_index=0, machine="privacy_prefetch")
    )


def test_email_steps_are_dispatched_with_tracking_unless_the_campaign_turns_it_off() -> None:
    given(enroll()).when(step_due(0)).then(ev(StepDispatched, track_opens=True))
    given(enroll(campaign(track_opens=False))).when(step_due(0)).then(ev(StepDispatched, track_opens=False))


def test_stages_only_move_forward() -> None:
    result = given(enroll(campaign(reply_action="continue")), sent(0), reply(at=T0 + HOUR)).when(opened())
    assert result.enrollment().stage == "replied"


def test_a_hard_bounce_webhook_marks_any_stage_bounced_and_ends_as_failed_with_its_reason() -> None:
    # Also an SMS gateway's "invalid number" receipt: a permanent recipient failure, learned later.
    result = given(enroll(), sent(0), opened()).when(bounce(detail="invalid number", bounce_type="hard"))
    result.then(
        ev(MessageBounced, bounce_type="hard"),
        ev(EnrollmentFailed, reason="bounced", detail="invalid number"),
    )
    e = result.enrollment()
    assert (e.stage, e.status, e.failure_reason, e.failure_detail) == (
        "bounced",
        "failed",
        "bounced",
        "invalid number",
    )


def test_a_soft_bounce_webhook_is_recorded_without_stopping() -> None:
    result = given(enroll(), sent(0)).when(bounce(bounce_type="soft"))
    result.then(ev(MessageBounced, bounce_type="soft"))
    assert (result.enrollment().status, result.enrollment().stage) == ("active", "sent")


def test_a_bounce_after_the_end_is_recorded_only() -> None:
    result = given(enroll(), sent(0), stop()).when(bounce())
    result.then(ev(MessageBounced))
    assert (result.enrollment().stop_reason, result.enrollment().stage) == ("manual", "bounced")


def test_paused_campaign_due_steps_wait_and_run_after_resume() -> None:
    paused = step_due(0, campaign_status="paused", command_id="due-0-1")
    deferred = given(enroll()).when(paused).then_ignored(Ignored.DEFERRED)
    # Nothing was recorded, so the scheduler fires the same command id again after resume.
    assert not deferred.state.has_processed("due-0-1")
    assert deferred.enrollment().due_at == T0  # still due: shown as Overdue meanwhile
    resumed = step_due(0, campaign_status="active", command_id="due-0-1")
    given(enroll()).when(resumed).then(ev(StepDispatched, step_index=0))


def test_enrolling_into_a_paused_campaign_schedules_as_usual() -> None:
    given().when(enroll(campaign(status="paused"))).then(ev(ContactEnrolled), ev(StepScheduled))


def test_archived_campaigns_keep_running_existing_enrollments() -> None:
    given(enroll()).when(step_due(0, campaign_status="archived")).then(ev(StepDispatched))


def test_a_command_id_seen_before_yields_no_new_events() -> None:
    given(enroll(command_id="enroll-1")).when(enroll(command_id="enroll-1")).then_ignored(Ignored.DUPLICATE)
    given(enroll(), stop(command_id="stop-1")).when(stop(command_id="stop-1")).then_ignored(Ignored.DUPLICATE)


def test_a_command_for_another_contact_is_refused() -> None:
    from enrollstream.domain import decide, initial_state

    decision = decide(enroll(), initial_state(ACCOUNT, "someone-else"))
    assert getattr(decision, "code", None) == "account_mismatch"
