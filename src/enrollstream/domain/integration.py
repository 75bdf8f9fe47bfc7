"""Public integration events for webhook relay consumers (seed 001: "Each transition emits an outbound
webhook"). A stable contract, separate from the internal events: internal events may be refactored,
these are versioned and only grow. `id` is derived from the source event, so consumers dedupe on it.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast

from pydantic import AwareDatetime, Field, TypeAdapter

from . import ids
from .campaign import Model, MxCheck, ReplyAction
from .commands import BounceType, MachineOpen
from .events import (
    ContactEnrolled,
    EnrollmentCompleted,
    EnrollmentExpired,
    EnrollmentFailed,
    EnrollmentHandedOff,
    EnrollmentSkipped,
    EnrollmentStopped,
    EnrollmentUnenrolled,
    Event,
    MessageBounced,
    MessageOpened,
    ReplyReceived,
    StepBounced,
    StepDelivered,
)
from .statuses import EnrollmentStatus, FailureReason, Outcome, SkipKind, StopReason


class IntegrationEvent(Model):
    id: str  # stable: the same source event always maps to the same id
    type: str  # "enrollment.sent", ...
    version: Literal[1] = 1
    occurred_at: AwareDatetime
    account_id: str
    contact_id: str
    campaign_id: str
    enrollment_id: str
    source_event_id: str


class EnrolledData(Model):
    campaign_version: int
    batch_number: int
    priority: bool
    # verified / unverified (DNS gave no answer; enrolled anyway) / not_required. Added in issue 11.
    mx_check: MxCheck = MxCheck.NOT_REQUIRED


class Enrolled(IntegrationEvent):
    type: Literal["enrollment.enrolled"] = "enrollment.enrolled"
    data: EnrolledData


class SkippedData(Model):
    kind: SkipKind
    reason: str
    evidence: dict[str, str]


class Skipped(IntegrationEvent):
    type: Literal["enrollment.skipped"] = "enrollment.skipped"
    data: SkippedData


class SentData(Model):
    step_index: int
    step_count: int
    message_id: str


class Sent(IntegrationEvent):
    type: Literal["enrollment.sent"] = "enrollment.sent"
    data: SentData


class OpenedData(Model):
    step_index: int | None
    machine: MachineOpen | None = None  # recognisably a machine's open (docs/delivery.md "Open tracking")


class Opened(IntegrationEvent):
    type: Literal["enrollment.opened"] = "enrollment.opened"
    data: OpenedData


class RepliedData(Model):
    replied_at: AwareDatetime
    hours_to_reply: float | None
    reply_action: ReplyAction


class Replied(IntegrationEvent):
    type: Literal["enrollment.replied"] = "enrollment.replied"
    data: RepliedData


class BouncedData(Model):
    bounce_type: BounceType
    step_index: int | None
    detail: str


class Bounced(IntegrationEvent):
    type: Literal["enrollment.bounced"] = "enrollment.bounced"
    data: BouncedData


class UnsubscribedData(Model):
    detail: str


class Unsubscribed(IntegrationEvent):
    type: Literal["enrollment.unsubscribed"] = "enrollment.unsubscribed"
    data: UnsubscribedData


class StoppedData(Model):
    reason: StopReason
    outcome: Outcome


class Stopped(IntegrationEvent):
    type: Literal["enrollment.stopped"] = "enrollment.stopped"
    data: StoppedData


class CompletedData(Model):
    status: Literal[EnrollmentStatus.COMPLETED, EnrollmentStatus.DELIVERED]
    outcome: Outcome


class Completed(IntegrationEvent):
    type: Literal["enrollment.completed"] = "enrollment.completed"
    data: CompletedData


class FailedData(Model):
    step_index: int | None
    detail: str
    reason: FailureReason = FailureReason.UNDELIVERABLE  # invalid_recipient, bounced, undeliverable


class Failed(IntegrationEvent):
    type: Literal["enrollment.failed"] = "enrollment.failed"
    data: FailedData


class OutcomeData(Model):
    outcome: Outcome


class Expired(IntegrationEvent):
    type: Literal["enrollment.expired"] = "enrollment.expired"
    data: OutcomeData


class HandedOff(IntegrationEvent):
    type: Literal["enrollment.handed_off"] = "enrollment.handed_off"
    data: OutcomeData


class Unenrolled(IntegrationEvent):
    type: Literal["enrollment.unenrolled"] = "enrollment.unenrolled"
    data: OutcomeData


AnyIntegrationEvent = (
    Enrolled
    | Skipped
    | Sent
    | Opened
    | Replied
    | Bounced
    | Unsubscribed
    | Stopped
    | Completed
    | Failed
    | Expired
    | HandedOff
    | Unenrolled
)
INTEGRATION_EVENT_TYPES: tuple[type[IntegrationEvent], ...] = (
    Enrolled,
    Skipped,
    Sent,
    Opened,
    Replied,
    Bounced,
    Unsubscribed,
    Stopped,
    Completed,
    Failed,
    Expired,
    HandedOff,
    Unenrolled,
)
integration_event_adapter: TypeAdapter[AnyIntegrationEvent] = TypeAdapter(
    Annotated[AnyIntegrationEvent, Field(discriminator="type")]
)


def _make(cls: type[IntegrationEvent], event: Event, data: Model) -> AnyIntegrationEvent:
    type_name = cls.model_fields["type"].default
    # Validated once, as its own class: already the union's member, so not through the union again.
    made = cls.model_validate(
        {
            "id": ids.stable_id("integration", event.event_id, type_name),
            "occurred_at": event.occurred_at,
            "account_id": event.account_id,
            "contact_id": event.contact_id,
            "campaign_id": event.campaign_id or "",
            "enrollment_id": event.enrollment_id or "",
            "source_event_id": event.event_id,
            "data": data,
        }
    )
    return cast(AnyIntegrationEvent, made)


def to_integration_events(event: Event) -> list[AnyIntegrationEvent]:
    """The public events one internal event stands for (none for bookkeeping events)."""
    if isinstance(event, ContactEnrolled):
        d = event.data
        data = EnrolledData(
            campaign_version=d.campaign.version,
            batch_number=d.batch_number,
            priority=d.priority,
            mx_check=d.mx_check,
        )
        return [_make(Enrolled, event, data)]
    if isinstance(event, EnrollmentSkipped):
        skipped = SkippedData(kind=event.data.kind, reason=event.data.reason, evidence=event.data.evidence)
        return [_make(Skipped, event, skipped)]
    if isinstance(event, StepDelivered):
        d2 = event.data
        sent = SentData(step_index=d2.step_index, step_count=d2.step_count, message_id=d2.message_id)
        return [_make(Sent, event, sent)]
    if isinstance(event, MessageOpened):
        first = event.data.first_open  # a transition happens once (seed 001)
        opened = OpenedData(step_index=event.data.step_index, machine=event.data.machine)
        return [_make(Opened, event, opened)] if first else []
    if isinstance(event, ReplyReceived):
        if not event.data.first_reply:
            return []
        r = event.data
        replied = RepliedData(
            replied_at=r.replied_at, hours_to_reply=r.hours_to_reply, reply_action=r.reply_action
        )
        return [_make(Replied, event, replied)]
    if isinstance(event, StepBounced | MessageBounced):
        b = event.data
        if b.bounce_type is not BounceType.HARD:
            return []  # soft bounces are retried or recorded; the stage does not change
        step = b.step_index
        return [
            _make(Bounced, event, BouncedData(bounce_type=b.bounce_type, step_index=step, detail=b.detail))
        ]
    if isinstance(event, EnrollmentStopped):
        stopped = _make(Stopped, event, StoppedData(reason=event.data.reason, outcome=event.data.outcome))
        if event.data.reason is StopReason.OPTED_OUT:
            return [_make(Unsubscribed, event, UnsubscribedData(detail=event.data.note)), stopped]
        return [stopped]
    if isinstance(event, EnrollmentCompleted):
        return [_make(Completed, event, CompletedData(status=event.data.status, outcome=event.data.outcome))]
    if isinstance(event, EnrollmentFailed):
        return [
            _make(
                Failed,
                event,
                FailedData(
                    step_index=event.data.step_index, detail=event.data.detail, reason=event.data.reason
                ),
            )
        ]
    if isinstance(event, EnrollmentExpired):
        return [_make(Expired, event, OutcomeData(outcome=event.data.outcome))]
    if isinstance(event, EnrollmentHandedOff):
        return [_make(HandedOff, event, OutcomeData(outcome=event.data.outcome))]
    if isinstance(event, EnrollmentUnenrolled):
        return [_make(Unenrolled, event, OutcomeData(outcome=event.data.outcome))]
    return []
