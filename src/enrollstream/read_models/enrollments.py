"""The enrollments row: what the Enrollments page (seed 000) and the enrollment API (seed 001) show.

`apply(row, event)` folds one event into the row of its enrollment. It is pure, so the same fold serves
the live projector and `replay`, and it is tested without a database.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from decimal import Decimal

from enrollstream.domain.events import (
    ContactEnrolled,
    EnrollmentCompleted,
    EnrollmentExpired,
    EnrollmentFailed,
    EnrollmentHandedOff,
    EnrollmentQueued,
    EnrollmentReleased,
    EnrollmentStopped,
    EnrollmentUnenrolled,
    Event,
    MessageBounced,
    MessageOpened,
    ReplyReceived,
    StepBounced,
    StepDeferred,
    StepDelivered,
    StepDeliveryUnknown,
    StepDispatched,
    StepFailed,
    StepScheduled,
    TriggerAwaited,
    TriggerReceived,
)
from enrollstream.domain.statuses import TERMINAL_STATUSES, EnrollmentStatus, Stage


@dataclass(frozen=True)
class EnrollmentRow:
    enrollment_id: str
    account_id: str
    contact_id: str
    campaign_id: str
    campaign_version: int | None
    contact_name: str | None
    email: str | None
    mobile: str | None
    status: str
    stage: str
    stop_reason: str | None
    outcome: str | None
    current_step: int | None
    total_steps: int | None
    next_execution_at: datetime | None
    enrolled_at: datetime
    batch_number: int
    priority: bool
    sent_at: datetime | None
    opened_at: datetime | None
    replied_at: datetime | None
    bounced_at: datetime | None
    bounce_reason: str | None
    hours_to_reply: Decimal | None
    completed_at: datetime | None
    last_version: int
    updated_at: datetime
    bulk_enroll_id: str | None = None  # the BulkEnroll this enrollment came from (migration 0005)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(EnrollmentRow))


def _status(row: EnrollmentRow, status: EnrollmentStatus) -> EnrollmentRow:
    # A finished enrollment stays finished: a send that was already processing when the contact was
    # unenrolled still reports its delivery (seed 004), which must not bring the row back to life.
    if EnrollmentStatus(row.status) in TERMINAL_STATUSES:
        return row
    return replace(row, status=status.value)


def _stage(row: EnrollmentRow, target: Stage) -> EnrollmentRow:
    return replace(row, stage=Stage(row.stage).advanced_to(target).value)


def _finish(row: EnrollmentRow, status: EnrollmentStatus, at: datetime, **changes: object) -> EnrollmentRow:
    if EnrollmentStatus(row.status) in TERMINAL_STATUSES:
        return row
    return replace(row, status=status.value, next_execution_at=None, completed_at=at, **changes)  # type: ignore[arg-type]


def apply(row: EnrollmentRow | None, event: Event) -> EnrollmentRow | None:
    """The row after `event`; None when the event concerns no enrollment row (yet)."""
    if isinstance(event, ContactEnrolled):
        if row is not None:
            return row
        data = event.data
        return EnrollmentRow(
            enrollment_id=event.enrollment_id or "",
            account_id=event.account_id,
            contact_id=event.contact_id,
            campaign_id=event.campaign_id or data.campaign.campaign_id,
            campaign_version=data.campaign.version,
            contact_name=data.contact.name or None,
            email=data.contact.email,
            mobile=data.contact.mobile,
            status=EnrollmentStatus.PENDING.value,
            stage=Stage.PENDING.value,
            stop_reason=None,
            outcome=None,
            current_step=None,
            total_steps=len(data.campaign.steps),
            next_execution_at=None,
            enrolled_at=event.occurred_at,
            batch_number=data.batch_number,
            priority=data.priority,
            sent_at=None,
            opened_at=None,
            replied_at=None,
            bounced_at=None,
            bounce_reason=None,
            hours_to_reply=None,
            completed_at=None,
            last_version=event.version,
            updated_at=event.occurred_at,
            bulk_enroll_id=data.bulk_enroll_id,
        )
    if row is None or event.version <= row.last_version:
        return row  # not ours, or already folded (a replay of an older event)
    row = _apply_change(row, event)
    return replace(row, last_version=event.version, updated_at=event.occurred_at)


def _apply_change(row: EnrollmentRow, event: Event) -> EnrollmentRow:
    at = event.occurred_at
    match event:
        case EnrollmentQueued():
            return _status(row, EnrollmentStatus.QUEUED)
        case EnrollmentReleased() | TriggerReceived():
            return _status(row, EnrollmentStatus.PENDING)
        case TriggerAwaited():
            return _status(row, EnrollmentStatus.AWAITING_TRIGGER)
        case StepScheduled():
            if EnrollmentStatus(row.status) in TERMINAL_STATUSES:
                return row
            return replace(
                row,
                current_step=event.data.step_index + 1,
                total_steps=event.data.step_count,
                next_execution_at=event.data.due_at,
            )
        case StepDispatched():
            row = replace(row, current_step=event.data.step_index + 1, total_steps=event.data.step_count)
            if EnrollmentStatus(row.status) in TERMINAL_STATUSES:
                return row
            return replace(_status(row, EnrollmentStatus.PROCESSING), next_execution_at=None)
        case StepDeferred():
            # Nothing was sent: back to the running status the domain folds to (active once a step
            # was delivered); the StepScheduled that follows for a running enrollment sets the next
            # execution. After an ending the row stays as the ending left it.
            if EnrollmentStatus(row.status) in TERMINAL_STATUSES:
                return row
            running = EnrollmentStatus.ACTIVE if row.sent_at is not None else EnrollmentStatus.PENDING
            return replace(_status(row, running), next_execution_at=None)
        case StepDelivered():
            row = _stage(row, Stage.SENT)
            row = replace(row, sent_at=row.sent_at or at)
            return _status(row, EnrollmentStatus.ACTIVE)
        case StepDeliveryUnknown():
            return _status(row, EnrollmentStatus.ACTIVE)
        case StepFailed():
            return _status(row, EnrollmentStatus.ACTIVE) if event.data.will_retry else row
        case StepBounced():
            row = replace(
                _stage(row, Stage.BOUNCED), bounced_at=row.bounced_at or at, bounce_reason=event.data.detail
            )
            return _status(row, EnrollmentStatus.ACTIVE) if event.data.will_retry else row
        case MessageBounced():
            return replace(
                _stage(row, Stage.BOUNCED), bounced_at=row.bounced_at or at, bounce_reason=event.data.detail
            )
        case MessageOpened():
            return replace(_stage(row, Stage.OPENED), opened_at=row.opened_at or at)
        case ReplyReceived():
            if row.replied_at is not None:
                return row
            hours = (
                None
                if event.data.hours_to_reply is None
                else Decimal(str(round(event.data.hours_to_reply, 2)))
            )
            return replace(_stage(row, Stage.REPLIED), replied_at=event.data.replied_at, hours_to_reply=hours)
        case EnrollmentStopped():
            return _finish(
                row,
                EnrollmentStatus.STOPPED,
                at,
                stop_reason=event.data.reason.value,
                outcome=event.data.outcome.value,
            )
        case EnrollmentCompleted():
            return _finish(row, EnrollmentStatus(event.data.status), at, outcome=event.data.outcome.value)
        case EnrollmentFailed():
            return _finish(row, EnrollmentStatus.FAILED, at)
        case EnrollmentExpired():
            return _finish(row, EnrollmentStatus.EXPIRED, at, outcome=event.data.outcome.value)
        case EnrollmentHandedOff():
            return _finish(row, EnrollmentStatus.HANDED_OFF, at, outcome=event.data.outcome.value)
        case EnrollmentUnenrolled():
            return _finish(row, EnrollmentStatus.UNENROLLED, at, outcome=event.data.outcome.value)
    return row
