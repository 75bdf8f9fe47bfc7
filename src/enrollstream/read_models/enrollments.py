"""The enrollments row: what the Enrollments page (seed 000) and the enrollment API (seed 001) show.

One source of truth: `row_of(state, enrollment)` says what the row of a domain enrollment is, column by
column, from the domain's own fold (`domain.state.evolve`). The projector cannot hold the domain state,
so it folds events into rows with `apply(row, event)`; that fold is proven equal to `row_of` after every
command of random command sequences (tests/unit/read_models/test_enrollment_row_property.py), and the
chaos verifier checks the same on the live tables against the changelog snapshots.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

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
from enrollstream.domain.state import ContactState, Enrollment
from enrollstream.domain.statuses import TERMINAL_STATUSES, EnrollmentStatus, Outcome, Stage


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
    failure_reason: str | None = None  # status failed: invalid_recipient, bounced, undeliverable (0011)
    failure_detail: str | None = None  # what the provider or the dispatcher said (0011)
    mx_check: str = "not_required"  # verified, unverified (DNS gave no answer), not_required (0012)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(EnrollmentRow))
# Status values as stored (str), so the fold's "is it finished" needs no enum construction per event.
_TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)
_PENDING, _STAGE_PENDING = EnrollmentStatus.PENDING.value, Stage.PENDING.value


def replace(row: EnrollmentRow, **changes: object) -> EnrollmentRow:
    """`dataclasses.replace` for this row, without its per-call field walk and `__init__` (the fold's
    main cost in the projector, docs/benchmarks.md): the row has no `__post_init__` and no validation,
    so copying its attributes and setting the changed ones is the same new row."""
    new = object.__new__(EnrollmentRow)
    attributes = new.__dict__
    attributes.update(row.__dict__)
    attributes.update(changes)
    return new


def from_record(record: Mapping[str, object]) -> EnrollmentRow:
    """The row as `enrollments` stores it (a record of `select *`): `EnrollmentRow(**dict(record))`
    without the frozen `__init__`'s per-field `object.__setattr__` (the projector reads thousands)."""
    new = object.__new__(EnrollmentRow)
    new.__dict__.update(zip(COLUMNS, map(record.__getitem__, COLUMNS), strict=True))
    return new


def hours_column(hours: float | None) -> Decimal | None:
    """numeric(10,2) in Postgres: two decimals, exact."""
    return None if hours is None else Decimal(str(round(hours, 2)))


def row_of(state: ContactState, e: Enrollment) -> EnrollmentRow:
    """What the row of `e` says, from the domain's state alone (the specification of `apply`)."""
    return EnrollmentRow(
        enrollment_id=e.enrollment_id,
        account_id=state.account_id,
        contact_id=state.contact_id,
        campaign_id=e.campaign_id,
        campaign_version=e.campaign.version,
        contact_name=e.contact.name or None,
        email=e.contact.email,
        mobile=e.contact.mobile,
        status=e.status.value,
        stage=e.stage.value,
        stop_reason=None if e.stop_reason is None else e.stop_reason.value,
        outcome=None if e.outcome is None else e.outcome.value,
        current_step=e.current_step,
        total_steps=e.step_count,
        next_execution_at=e.due_at,
        enrolled_at=e.enrolled_at,
        batch_number=e.batch_number,
        priority=e.priority,
        sent_at=e.sent_at,
        opened_at=e.opened_at,
        replied_at=e.replied_at,
        bounced_at=e.bounced_at,
        bounce_reason=e.bounce_reason,
        hours_to_reply=hours_column(e.hours_to_reply),
        completed_at=e.finished_at,
        last_version=e.version,
        updated_at=e.updated_at or e.enrolled_at,
        bulk_enroll_id=e.bulk_enroll_id,
        failure_reason=None if e.failure_reason is None else e.failure_reason.value,
        failure_detail=e.failure_detail,
        mx_check=e.mx_check.value,
    )


def differences(row: EnrollmentRow | None, expected: EnrollmentRow) -> dict[str, tuple[object, object]]:
    """Column -> (row's value, expected value) where they differ; every column when there is no row."""
    if row is None:
        return {name: (None, getattr(expected, name)) for name in COLUMNS}
    return {
        name: (getattr(row, name), getattr(expected, name))
        for name in COLUMNS
        if getattr(row, name) != getattr(expected, name)
    }


def _status(row: EnrollmentRow, status: EnrollmentStatus) -> EnrollmentRow:
    # A finished enrollment stays finished: a send that was already processing when the contact was
    # unenrolled still reports its delivery (seed 004), which must not bring the row back to life.
    if row.status in _TERMINAL:
        return row
    return replace(row, status=status.value)


def _close_attempt(row: EnrollmentRow) -> EnrollmentRow:
    """The attempt in flight got its outcome: processing -> active if a step went out (or maybe did:
    the sequence only moves past a step that was delivered or unknown), else pending."""
    if row.status != EnrollmentStatus.PROCESSING.value:
        return row
    went_out = row.sent_at is not None or (row.current_step or 1) > 1
    return replace(row, status=(EnrollmentStatus.ACTIVE if went_out else EnrollmentStatus.PENDING).value)


def _hard_bounce(row: EnrollmentRow, at: datetime, detail: str) -> EnrollmentRow:
    # Seed 001: any -> bounced is a permanent failure; a soft bounce is temporary and leaves the stage.
    return replace(_stage(row, Stage.BOUNCED), bounced_at=row.bounced_at or at, bounce_reason=detail)


def _stage(row: EnrollmentRow, target: Stage) -> EnrollmentRow:
    return replace(row, stage=Stage(row.stage).advanced_to(target).value)


def _finish(row: EnrollmentRow, status: EnrollmentStatus, at: datetime, **changes: object) -> EnrollmentRow:
    if row.status in _TERMINAL:
        return row
    return replace(row, status=status.value, next_execution_at=None, completed_at=at, **changes)


def apply(row: EnrollmentRow | None, event: Event) -> EnrollmentRow | None:
    """The row after `event`; None when the event concerns no enrollment row (yet)."""
    if type(event) is ContactEnrolled:
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
            status=_PENDING,
            stage=_STAGE_PENDING,
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
            mx_check=data.mx_check.value,
        )
    if row is None or event.version <= row.last_version:
        return row  # not ours, or already folded (a replay of an older event)
    row = _apply_change(row, event)
    return replace(row, last_version=event.version, updated_at=event.occurred_at)


def _queued(row: EnrollmentRow, event: Any) -> EnrollmentRow:
    return _status(row, EnrollmentStatus.QUEUED)


def _pending(row: EnrollmentRow, event: Any) -> EnrollmentRow:
    return _status(row, EnrollmentStatus.PENDING)


def _awaiting_trigger(row: EnrollmentRow, event: Any) -> EnrollmentRow:
    return _status(row, EnrollmentStatus.AWAITING_TRIGGER)


def _step_scheduled(row: EnrollmentRow, event: StepScheduled) -> EnrollmentRow:
    if row.status in _TERMINAL:
        return row
    return replace(
        row,
        current_step=event.data.step_index + 1,
        total_steps=event.data.step_count,
        next_execution_at=event.data.due_at,
    )


def _step_dispatched(row: EnrollmentRow, event: StepDispatched) -> EnrollmentRow:
    row = replace(row, current_step=event.data.step_index + 1, total_steps=event.data.step_count)
    if row.status in _TERMINAL:
        return row
    return replace(_status(row, EnrollmentStatus.PROCESSING), next_execution_at=None)


def _step_delivered(row: EnrollmentRow, event: StepDelivered) -> EnrollmentRow:
    row = _stage(row, Stage.SENT)
    row = replace(row, sent_at=row.sent_at or event.occurred_at)
    return _status(row, EnrollmentStatus.ACTIVE)


def _step_delivery_unknown(row: EnrollmentRow, event: Any) -> EnrollmentRow:
    return _status(row, EnrollmentStatus.ACTIVE)


def _nothing_went_out(row: EnrollmentRow, event: Any) -> EnrollmentRow:
    # StepFailed, StepDeferred: nothing went out; a deferral's StepScheduled (running enrollments
    # only) follows it.
    return _close_attempt(row)


def _step_bounced(row: EnrollmentRow, event: StepBounced) -> EnrollmentRow:
    row = _close_attempt(row)
    if event.data.bounce_type == "hard":
        return _hard_bounce(row, event.occurred_at, event.data.detail)
    return row


def _message_bounced(row: EnrollmentRow, event: MessageBounced) -> EnrollmentRow:
    if event.data.bounce_type == "hard":
        return _hard_bounce(row, event.occurred_at, event.data.detail)
    return row


def _message_opened(row: EnrollmentRow, event: MessageOpened) -> EnrollmentRow:
    return replace(_stage(row, Stage.OPENED), opened_at=row.opened_at or event.occurred_at)


def _reply_received(row: EnrollmentRow, event: ReplyReceived) -> EnrollmentRow:
    if row.replied_at is None:
        row = replace(
            row,
            replied_at=event.data.replied_at,
            hours_to_reply=hours_column(event.data.hours_to_reply),
        )
    # Seed 003 "Finished, responded": a reply after the end still makes the outcome responded.
    outcome = row.outcome if row.outcome is None else Outcome.RESPONDED.value
    return replace(_stage(row, Stage.REPLIED), outcome=outcome)


def _stopped(row: EnrollmentRow, event: EnrollmentStopped) -> EnrollmentRow:
    return _finish(
        row,
        EnrollmentStatus.STOPPED,
        event.occurred_at,
        stop_reason=event.data.reason.value,
        outcome=event.data.outcome.value,
    )


def _completed(row: EnrollmentRow, event: EnrollmentCompleted) -> EnrollmentRow:
    return _finish(
        row, EnrollmentStatus(event.data.status), event.occurred_at, outcome=event.data.outcome.value
    )


def _failed(row: EnrollmentRow, event: EnrollmentFailed) -> EnrollmentRow:
    return _finish(
        row,
        EnrollmentStatus.FAILED,
        event.occurred_at,
        failure_reason=event.data.reason.value,
        failure_detail=event.data.detail,
    )


def _ended_as(status: EnrollmentStatus) -> Callable[[EnrollmentRow, Any], EnrollmentRow]:
    """Expired, handed off, unenrolled: finished with the event's outcome."""

    def ended(row: EnrollmentRow, event: Any) -> EnrollmentRow:
        return _finish(row, status, event.occurred_at, outcome=event.data.outcome.value)

    return ended


# What each event type changes in a row it concerns (types not here change only the version columns).
# Keyed by the exact type: every event type is a leaf class, and `isinstance` against a pydantic model
# class goes through ABCMeta's Python-level check on every miss, which a `match` over twenty classes
# paid for most events (docs/benchmarks.md, "Projector after the light parse").
_CHANGES: dict[type, Callable[[EnrollmentRow, Any], EnrollmentRow]] = {
    EnrollmentQueued: _queued,
    EnrollmentReleased: _pending,
    TriggerReceived: _pending,
    TriggerAwaited: _awaiting_trigger,
    StepScheduled: _step_scheduled,
    StepDispatched: _step_dispatched,
    StepDelivered: _step_delivered,
    StepDeliveryUnknown: _step_delivery_unknown,
    StepFailed: _nothing_went_out,
    StepDeferred: _nothing_went_out,
    StepBounced: _step_bounced,
    MessageBounced: _message_bounced,
    MessageOpened: _message_opened,
    ReplyReceived: _reply_received,
    EnrollmentStopped: _stopped,
    EnrollmentCompleted: _completed,
    EnrollmentFailed: _failed,
    EnrollmentExpired: _ended_as(EnrollmentStatus.EXPIRED),
    EnrollmentHandedOff: _ended_as(EnrollmentStatus.HANDED_OFF),
    EnrollmentUnenrolled: _ended_as(EnrollmentStatus.UNENROLLED),
}


def _unchanged(row: EnrollmentRow, event: Any) -> EnrollmentRow:
    return row


def _apply_change(row: EnrollmentRow, event: Event) -> EnrollmentRow:
    return _CHANGES.get(type(event), _unchanged)(row, event)
