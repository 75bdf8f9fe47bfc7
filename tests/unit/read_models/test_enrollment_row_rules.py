"""What the enrollment row says in the cases where the projector and the domain used to disagree.

Each test runs commands through `decide`, folds the events both ways (the domain's evolve, the
projector's `apply`) and checks the row against the rule and against `row_of` (issue 11, item 5).
"""

from __future__ import annotations

from enrollstream.domain import Accepted, Channel, ContactCommand, ContactState, decide, evolve, initial_state
from enrollstream.read_models.enrollments import EnrollmentRow, apply, row_of
from tests.unit.domain.scenario import (
    ACCOUNT,
    CONTACT,
    DAY,
    HOUR,
    T0,
    bounce,
    campaign,
    eid,
    enroll,
    reply,
    reported,
    sent,
    step,
    step_due,
    stop,
)


def project(*history: ContactCommand | list[ContactCommand]) -> tuple[ContactState, EnrollmentRow]:
    """The domain's state and the projected row of the one enrollment after the commands."""
    state = initial_state(ACCOUNT, CONTACT)
    row: EnrollmentRow | None = None
    commands = [c for item in history for c in (item if isinstance(item, list) else [item])]
    for command in commands:
        decision = decide(command, state)
        assert isinstance(decision, Accepted), decision
        for event in decision.events:
            state = evolve(state, event)
            row = apply(row, event) if event.enrollment_id == eid() else row
    assert row is not None
    assert row == row_of(state, state.enrollments[eid()]), "the projected row is not what the domain says"
    return state, row


def test_a_soft_bounce_leaves_the_row_stage_and_bounce_reason_alone() -> None:
    _, row = project(enroll(), sent(0), bounce(bounce_type="soft", detail="452 mailbox full"))
    assert (row.stage, row.bounced_at, row.bounce_reason, row.status) == ("sent", None, None, "active")


def test_a_synchronous_soft_bounce_retried_leaves_the_row_pending_and_not_bounced() -> None:
    _, row = project(enroll(), step_due(0), reported("bounced", 0, bounce_type="soft", detail="452 full"))
    assert (row.stage, row.bounce_reason, row.status) == ("pending", None, "pending")


def test_a_reply_after_the_end_makes_the_row_finished_responded() -> None:
    # Seed 003 "Finished, responded": the contact replied and the sequence is finished.
    one_step = campaign(steps=[step()])
    _, row = project(enroll(one_step), sent(0), reply(at=T0 + DAY))
    assert (row.status, row.outcome, row.stage) == ("completed", "responded", "replied")


def test_a_reply_after_a_manual_stop_makes_the_row_outcome_responded() -> None:
    _, row = project(enroll(), sent(0), stop(at=T0 + HOUR), reply(at=T0 + DAY))
    assert (row.status, row.stop_reason, row.outcome) == ("stopped", "manual", "responded")


def test_a_retried_first_step_leaves_the_row_pending_until_something_went_out() -> None:
    _, row = project(enroll(), step_due(0), reported("failed", 0, retryable=True, detail="451 later"))
    assert (row.status, row.current_step, row.sent_at) == ("pending", 1, None)


def test_after_an_unknown_outcome_the_enrollment_is_active_in_the_domain_and_the_row() -> None:
    state, row = project(enroll(), step_due(0), reported("unknown", 0, detail="dropped after DATA"))
    assert state.enrollments[eid()].status == "active"
    assert (row.status, row.current_step, row.stage) == ("active", 2, "pending")


def test_a_retry_after_an_unknown_step_stays_active() -> None:
    _, row = project(
        enroll(),
        step_due(0),
        reported("unknown", 0),
        step_due(1, at=T0 + DAY),
        reported("failed", 1, retryable=True, at=T0 + DAY),
    )
    assert (row.status, row.current_step) == ("active", 2)


def test_a_failed_enrollment_shows_the_step_it_failed_on() -> None:
    sms = campaign(steps=[step(Channel.SMS), step(Channel.SMS, delay=DAY)])
    state, row = project(
        enroll(sms), sent(0), step_due(1, at=T0 + DAY), reported("invalid_recipient", 1, at=T0 + DAY)
    )
    assert state.enrollments[eid()].current_step == 2
    assert (row.status, row.current_step, row.total_steps) == ("failed", 2, 2)
    assert row.failure_reason == "invalid_recipient"
