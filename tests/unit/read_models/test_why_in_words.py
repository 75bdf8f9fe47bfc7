"""Seed 001's "why" in plain words: the chain of decisions about a contact, each with its cause, and what
an ending meant for the step that was waiting."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from enrollstream.read_models.why import explain

T = datetime(2026, 12, 3, 10, 14, tzinfo=UTC)


def event(what: str, command: str, command_id: str, actor: str, at: datetime, **data: Any) -> dict[str, Any]:
    return {
        "kind": "event",
        "what": f"{what}.v1",
        "enrollment_id": "enr-1",
        "command_type": f"{command}.v1",
        "command_id": command_id,
        "actor": actor,
        "status": "accepted",
        "at": at,
        "data": data,
    }


def test_a_reply_that_stops_the_campaign_says_which_step_was_not_sent_and_why() -> None:
    due = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
    rows = [
        event("ContactEnrolled", "Enroll", "c-1", "api", T.replace(hour=9)),
        event(
            "StepScheduled",
            "Enroll",
            "c-1",
            "api",
            T.replace(hour=9),
            step_index=0,
            step_count=3,
            due_at=T.replace(hour=9).isoformat(),
        ),
        event(
            "StepDispatched", "StepDue", "c-2", "scheduler", T.replace(hour=9), step_index=0, channel="email"
        ),
        event(
            "StepScheduled",
            "DeliveryReported",
            "c-3",
            "dispatcher",
            T.replace(hour=9, minute=1),
            step_index=1,
            step_count=3,
            due_at=due.isoformat(),
        ),
        event("EnrollmentStopped", "ReplyDetected", "c-123", "inbound", T, reason="replied"),
        {
            "kind": "decision",
            "command_type": "StepDue.v1",
            "command_id": "c-4",
            "actor": "scheduler",
            "status": "stale",
            "code": None,
            "reason": "the enrollment has ended",
            "at": due,
            "data": {},
        },
    ]
    words = explain(rows)
    assert words[4] == (
        "Stopped by inbound: the contact replied and the campaign stops on a reply. "
        "No more messages will be sent. "
        "Caused by ReplyDetected c-123 from inbound at 2026-12-03 10:14:00 UTC; "
        "step 2 of 3, due 2026-12-04 09:00:00 UTC, will not be sent."
    )
    assert words[5] == (
        "StepDue by scheduler was ignored: it no longer applied: the enrollment has ended. "
        "(StepDue c-4 from scheduler at 2026-12-04 09:00:00 UTC)"
    )


def test_a_step_already_handed_over_is_not_said_to_be_unsent_and_an_opt_out_ends_every_waiting_step() -> None:
    rows = [
        event("StepScheduled", "Enroll", "c-1", "api", T, step_index=0, step_count=1, due_at=T.isoformat()),
        event("StepDispatched", "StepDue", "c-2", "scheduler", T, step_index=0),
        event("EnrollmentUnenrolled", "Unenroll", "c-3", "alice", T, step_in_flight=True),
    ]
    assert explain(rows)[2] == (
        "Unenrolled by alice: no further messages from this campaign. A send already in progress still "
        "completes. Caused by Unenroll c-3 from alice at 2026-12-03 10:14:00 UTC."
    )
    waiting = event(
        "StepScheduled", "Enroll", "c-5", "api", T, step_index=1, step_count=2, due_at=T.isoformat()
    )
    other = {**waiting, "enrollment_id": "enr-2"}
    opted_out = {**event("ContactOptedOut", "OptOut", "c-6", "unsubscribe", T), "enrollment_id": None}
    assert explain([rows[0], other, opted_out])[2].endswith(
        "Caused by OptOut c-6 from unsubscribe at 2026-12-03 10:14:00 UTC; step 1 of 1, due 2026-12-03 "
        "10:14:00 UTC, will not be sent; step 2 of 2, due 2026-12-03 10:14:00 UTC, will not be sent."
    )


def test_an_enrollment_made_by_a_stage_change_says_which_application_entered_which_stage() -> None:
    entry = {
        "application_id": "app-7",
        "pipeline_id": "job-a",
        "stage_id": "screening",
        "entered_at": T.isoformat(),
    }
    rows = [
        event("ContactEnrolled", "StageChanged", "c-1", "ats", T, source="stage_change", stage_entry=entry)
    ]
    assert explain(rows)[0] == (
        "Enrolled by ats in the campaign when application app-7 entered stage screening of pipeline job-a."
    )
