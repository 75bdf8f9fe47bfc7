"""Seed 004: unenrolling stops future outreach; a send already processing still completes."""

from __future__ import annotations

from enrollstream.domain import EnrollmentUnenrolled, Ignored, StepDelivered

from .scenario import DAY, T0, enroll, ev, given, reported, sent, step_due, unenroll


def test_future_outreach_stops_immediately() -> None:
    history = [enroll(), sent(0), unenroll()]
    given(*history).when(step_due(1, at=T0 + DAY)).then_ignored(Ignored.STALE)


def test_a_send_already_processing_still_completes_and_its_outcome_is_recorded() -> None:
    result = given(enroll(), step_due(0)).when(unenroll())
    result.then(ev(EnrollmentUnenrolled, step_in_flight=True))
    assert result.enrollment().in_flight is not None
    after = given(enroll(), step_due(0), unenroll()).when(reported("sent", 0))
    after.then(ev(StepDelivered, step_index=0))  # recorded, and nothing scheduled after it
    enrollment = after.enrollment()
    assert (enrollment.status, enrollment.stage, enrollment.in_flight) == ("unenrolled", "sent", None)
    assert enrollment.scheduled is None


def test_the_record_stays_in_the_database() -> None:
    state = given(enroll(), sent(0), unenroll()).state
    assert len(state.enrollments) == 1
    assert next(iter(state.enrollments.values())).delivered_steps == [0]
