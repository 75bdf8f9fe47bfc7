"""A deferral in the read models without a database: the enrollment row and the timers table after a
sender's rate limit sent a step back through the log (issue 11, item 1)."""

from __future__ import annotations

from enrollstream.domain import Event
from enrollstream.read_models import enrollments
from enrollstream.read_models.timers import TimerFold
from tests.unit.domain.scenario import HOUR, T0, eid, enroll, reported, step_due, stop
from tests.unit.read_models.test_timers_fold import decided, table

RETRY_AT = T0 + HOUR


def deferral(at_minutes: int = 1) -> object:
    return reported("deferred", at=T0 + HOUR / 60 * at_minutes, retry_at=RETRY_AT, detail="rate limit")


def row_after(events: list[Event]) -> enrollments.EnrollmentRow:
    row: enrollments.EnrollmentRow | None = None
    for event in events:
        row = enrollments.apply(row, event)
    assert row is not None
    return row


def test_a_deferral_puts_the_row_back_to_its_running_status_due_when_the_sender_may_send() -> None:
    dispatched = row_after(decided(enroll(), step_due()))
    assert (dispatched.status, dispatched.next_execution_at) == ("processing", None)
    row = row_after(decided(enroll(), step_due(), deferral()))  # type: ignore[arg-type]
    assert (row.status, row.current_step, row.next_execution_at) == ("pending", 1, RETRY_AT)


def test_a_deferral_puts_the_step_timer_back_at_the_retry_time() -> None:
    rows = table(decided(enroll(), step_due(), deferral()))  # type: ignore[arg-type]
    timer = rows[(eid(), "step_due")]
    assert (timer.step_index, timer.attempt, timer.due_at) == (0, 1, RETRY_AT)


def test_a_deferral_after_a_stop_leaves_no_timer_and_a_stopped_row() -> None:
    events = decided(enroll(), step_due(), stop(at=T0), deferral(2))  # type: ignore[arg-type]
    fold = TimerFold({})
    for event in events:
        fold.apply(event)
    assert fold.upserts() == []
    row = row_after(events)
    assert (row.status, row.next_execution_at) == ("stopped", None)
