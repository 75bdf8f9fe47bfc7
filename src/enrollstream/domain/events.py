"""Events: past-tense business facts about one contact's enrollments, the source of truth.

Every event records what the decision needed (campaign definition, contact facts, MX answer, due
times), so `evolve` and the projectors never look anything up.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, TypeAdapter, model_validator

from .campaign import (
    CampaignDefinition,
    Channel,
    ContactFacts,
    Model,
    MxAnswer,
    MxCheck,
    ReplyAction,
    StepContent,
    mx_check_of,
)
from .commands import BounceType, EnrollSource, MachineOpen, StageEntry
from .statuses import EnrollmentStatus, FailureReason, Outcome, SkipKind, StopReason


class EventEnvelope(Model):
    event_id: str
    type: str
    account_id: str
    contact_id: str
    campaign_id: str | None  # None only for contact-wide facts (ContactOptedOut, ContactProfileSet)
    enrollment_id: str | None
    version: int = Field(ge=1)  # per aggregate, +1 per event
    occurred_at: AwareDatetime
    causation_id: str  # the command id


# --- Enrollment ---------------------------------------------------------------------------------


class ContactEnrolledData(Model):
    campaign: CampaignDefinition  # the definition this enrollment runs under, forever
    contact: ContactFacts
    mx: MxAnswer | None = None
    sequence: int = Field(ge=1)  # nth enrollment of this contact in this campaign
    batch_number: int = 0
    priority: bool = False
    source: EnrollSource = EnrollSource.API
    contact_import_id: str | None = None
    bulk_enroll_id: str | None = None  # the BulkEnroll (command id) this enrollment came from
    stage_entry: StageEntry | None = None  # source stage_change: the application's entry into the stage
    time_zone: str  # the resolved send-window zone: contact's, else campaign's, else UTC
    enrolled_by: str = ""  # the command's actor (seed 003: filter by enrolling user)
    # verified / unverified (DNS gave no answer: enrolled anyway) / not_required. Events recorded before
    # it existed get what the decider did then, from `campaign` and `mx` (mx_check_of).
    mx_check: MxCheck = MxCheck.NOT_REQUIRED

    # After, not before, validation: a "before" validator makes pydantic hand it the input as Python
    # objects, so every ContactEnrolled (campaign definition included) was built twice when parsed from
    # JSON, about a third of the projector's parse time (docs/benchmarks.md). Same result: the field
    # counts as set, as it did when the validator put it into the input.
    @model_validator(mode="after")
    def _mx_check_of_older_events(self) -> ContactEnrolledData:
        if "mx_check" in self.model_fields_set or self.mx is None:
            return self
        object.__setattr__(self, "mx_check", mx_check_of(self.campaign, self.mx))
        self.model_fields_set.add("mx_check")
        return self


class ContactEnrolled(EventEnvelope):
    type: Literal["ContactEnrolled.v1"] = "ContactEnrolled.v1"
    data: ContactEnrolledData


class EnrollmentSkippedData(Model):
    """No enrollment exists; enrollment_id is the one it would have had."""

    kind: SkipKind
    reason: str  # human readable, e.g. seed 001 "Already enrolled in another campaign in this outreach"
    evidence: dict[str, str] = Field(default_factory=dict)
    contact: ContactFacts | None = None
    campaign_version: int | None = None
    batch_number: int = 0
    source: EnrollSource = EnrollSource.API
    contact_import_id: str | None = None
    bulk_enroll_id: str | None = None  # the BulkEnroll (command id) this skip came from
    stage_entry: StageEntry | None = None  # source stage_change: the application's entry into the stage


class EnrollmentSkipped(EventEnvelope):
    type: Literal["EnrollmentSkipped.v1"] = "EnrollmentSkipped.v1"
    data: EnrollmentSkippedData


class EnrollmentQueuedData(Model):
    behind_enrollment_id: str
    behind_campaign_id: str
    # The campaign's queue_timeout from now: the scheduler fires WaitTimeout then. None: no timeout.
    timeout_at: AwareDatetime | None = None


class EnrollmentQueued(EventEnvelope):
    type: Literal["EnrollmentQueued.v1"] = "EnrollmentQueued.v1"
    data: EnrollmentQueuedData


class EnrollmentReleasedData(Model):
    after_enrollment_id: str | None = None  # the enrollment whose end released this one


class EnrollmentReleased(EventEnvelope):
    type: Literal["EnrollmentReleased.v1"] = "EnrollmentReleased.v1"
    data: EnrollmentReleasedData


class TriggerAwaitedData(Model):
    timeout_at: AwareDatetime | None = None  # the scheduler fires WaitTimeout then


class TriggerAwaited(EventEnvelope):
    type: Literal["TriggerAwaited.v1"] = "TriggerAwaited.v1"
    data: TriggerAwaitedData


class TriggerReceivedData(Model):
    trigger: str
    detail: str = ""


class TriggerReceived(EventEnvelope):
    type: Literal["TriggerReceived.v1"] = "TriggerReceived.v1"
    data: TriggerReceivedData


class WaitTimeoutExtendedData(Model):
    """The wait (for the trigger, or in the queue) timed out only counting time the campaign was paused:
    it now times out at `timeout_at`, `paused` later than it would have without the pauses."""

    timeout_at: AwareDatetime  # the scheduler fires WaitTimeout then
    paused: timedelta


class WaitTimeoutExtended(EventEnvelope):
    type: Literal["WaitTimeoutExtended.v1"] = "WaitTimeoutExtended.v1"
    data: WaitTimeoutExtendedData


# --- Steps --------------------------------------------------------------------------------------


class StepRef(Model):
    step_index: int = Field(ge=0)
    attempt: int = Field(ge=1)
    step_count: int = Field(ge=1)  # "Step 2 of 5" is step_index + 1 of step_count


class RescheduleReason(StrEnum):
    """Why a step already scheduled was scheduled again for the same attempt."""

    OUTSIDE_WINDOW = "outside_window"  # it fell due outside its send window: the next opening
    DEFERRED = "deferred"  # the dispatcher deferred it (the sender's rate limit): see StepDeferred


class StepScheduledData(StepRef):
    due_at: AwareDatetime  # the scheduler fires StepDue(enrollment, step_index, attempt) then
    requested_at: AwareDatetime  # before the send window moved it
    channel: Channel
    # The `dispatch` number its StepDispatched will carry: 1, and +1 after each deferral of the attempt.
    dispatch: int = Field(default=1, ge=1)
    rescheduled: RescheduleReason | None = None  # None: the first schedule of this attempt


class StepScheduled(EventEnvelope):
    type: Literal["StepScheduled.v1"] = "StepScheduled.v1"
    data: StepScheduledData


class StepDispatchedData(StepRef):
    """The dispatcher sends on this: everything it needs is here."""

    message_id: str  # deterministic; the dispatcher makes it <message_id@its-domain>
    channel: Channel
    to: str
    content: StepContent
    contact_name: str = ""
    # 1, then +1 each time the same attempt is dispatched again after a deferral; the report echoes it.
    dispatch: int = Field(default=1, ge=1)
    # The campaign's `track_opens` for email steps: the dispatcher adds the open-tracking pixel (when it
    # has a pixel URL). False for events recorded before tracking existed: nothing is tracked unasked.
    track_opens: bool = False


class StepDispatched(EventEnvelope):
    type: Literal["StepDispatched.v1"] = "StepDispatched.v1"
    data: StepDispatchedData


class StepDeferredData(StepRef):
    """The dispatcher did not send this dispatch of the attempt and started nothing: the sender is
    over its rate limit until `retry_at`. Not an attempt (max_attempts does not count it)."""

    dispatch: int = Field(ge=1)
    retry_at: AwareDatetime
    detail: str = ""
    # A running enrollment schedules the same attempt again (the StepScheduled that follows); an
    # ended one only closes the dispatch: nothing is sent after an ending.
    will_retry: bool


class StepDeferred(EventEnvelope):
    type: Literal["StepDeferred.v1"] = "StepDeferred.v1"
    data: StepDeferredData


class StepDeliveredData(StepRef):
    message_id: str
    provider_message_id: str | None = None
    detail: str = ""


class StepDelivered(EventEnvelope):
    type: Literal["StepDelivered.v1"] = "StepDelivered.v1"
    data: StepDeliveredData


class StepFailedData(StepRef):
    retryable: bool
    will_retry: bool
    detail: str = ""


class StepFailed(EventEnvelope):
    type: Literal["StepFailed.v1"] = "StepFailed.v1"
    data: StepFailedData


class StepBouncedData(StepRef):
    """A synchronous bounce reported by the dispatcher for this attempt."""

    bounce_type: BounceType
    will_retry: bool
    detail: str = ""


class StepBounced(EventEnvelope):
    type: Literal["StepBounced.v1"] = "StepBounced.v1"
    data: StepBouncedData


class StepDeliveryUnknownData(StepRef):
    """Maybe sent, maybe not: by policy never resent; the sequence carries on."""

    detail: str = ""


class StepDeliveryUnknown(EventEnvelope):
    type: Literal["StepDeliveryUnknown.v1"] = "StepDeliveryUnknown.v1"
    data: StepDeliveryUnknownData


class ExpiryScheduledData(Model):
    """At the first delivery; again, later, when time the campaign spent paused pushed the expiry back."""

    expires_at: AwareDatetime  # the scheduler fires ExpiryDue then
    expiry: timedelta  # the campaign's expiry after delivery
    counted_from: AwareDatetime | None = None  # the first delivery; None (older events): expires_at - expiry
    paused: timedelta = timedelta(0)  # paused time not counted: expires_at = counted_from + expiry + paused


class ExpiryScheduled(EventEnvelope):
    type: Literal["ExpiryScheduled.v1"] = "ExpiryScheduled.v1"
    data: ExpiryScheduledData


class ExpiryCancelledData(Model):
    """The expiry scheduled at delivery no longer applies: the definition the enrollment runs under sets
    none (a `sequence` enrolled before expiry became per kind). Nothing else changes."""

    expires_at: AwareDatetime  # the expiry that was scheduled
    reason: str


class ExpiryCancelled(EventEnvelope):
    type: Literal["ExpiryCancelled.v1"] = "ExpiryCancelled.v1"
    data: ExpiryCancelledData


# --- Engagement ---------------------------------------------------------------------------------


class MessageOpenedData(Model):
    step_index: int | None = None
    first_open: bool
    machine: MachineOpen | None = None  # the open looked like a machine's (OpenDetected.data.machine)


class MessageOpened(EventEnvelope):
    type: Literal["MessageOpened.v1"] = "MessageOpened.v1"
    data: MessageOpenedData


class ReplyReceivedData(Model):
    replied_at: AwareDatetime
    hours_to_reply: float | None  # from the first delivery (seed 001); None if nothing was sent
    reply_action: ReplyAction  # the campaign's action; applied only if the enrollment was running
    first_reply: bool
    inbound_message_id: str | None = None
    excerpt: str = ""


class ReplyReceived(EventEnvelope):
    type: Literal["ReplyReceived.v1"] = "ReplyReceived.v1"
    data: ReplyReceivedData


class MessageBouncedData(Model):
    """A bounce learned later (provider webhook)."""

    bounce_type: BounceType
    step_index: int | None = None
    detail: str = ""


class MessageBounced(EventEnvelope):
    type: Literal["MessageBounced.v1"] = "MessageBounced.v1"
    data: MessageBouncedData


class ContactOptedOutData(Model):
    channel: str | None = None
    detail: str = ""


class ContactOptedOut(EventEnvelope):
    """Contact-wide: campaign_id and enrollment_id are None."""

    type: Literal["ContactOptedOut.v1"] = "ContactOptedOut.v1"
    data: ContactOptedOutData


class ContactProfileSetData(Model):
    """The contact's profile in its account's directory from now on (the whole profile: upsert).
    `profile.opted_out` is true when the contact has opted out, whatever the PutContact said."""

    profile: ContactFacts


class ContactProfileSet(EventEnvelope):
    """Contact-wide: campaign_id and enrollment_id are None. Enrollments keep the facts they were
    enrolled with; the profile is what later Enrolls that name only the contact id take."""

    type: Literal["ContactProfileSet.v1"] = "ContactProfileSet.v1"
    data: ContactProfileSetData


# --- Endings ------------------------------------------------------------------------------------


class EnrollmentStoppedData(Model):
    reason: StopReason
    outcome: Outcome
    note: str = ""
    step_in_flight: bool = False  # a send already processing still completes (seed 004)


class EnrollmentStopped(EventEnvelope):
    type: Literal["EnrollmentStopped.v1"] = "EnrollmentStopped.v1"
    data: EnrollmentStoppedData


class EnrollmentCompletedData(Model):
    status: Literal[EnrollmentStatus.COMPLETED, EnrollmentStatus.DELIVERED]  # delivered: blasts
    outcome: Outcome


class EnrollmentCompleted(EventEnvelope):
    type: Literal["EnrollmentCompleted.v1"] = "EnrollmentCompleted.v1"
    data: EnrollmentCompletedData


class EnrollmentFailedData(Model):
    step_index: int | None = None
    detail: str = ""  # what the provider or the dispatcher said, e.g. "rcpt: 550 5.1.1 no such user"
    reason: FailureReason = FailureReason.UNDELIVERABLE  # the default is what older events meant


class EnrollmentFailed(EventEnvelope):
    type: Literal["EnrollmentFailed.v1"] = "EnrollmentFailed.v1"
    data: EnrollmentFailedData


class EnrollmentExpiredData(Model):
    expires_at: AwareDatetime
    outcome: Outcome
    step_in_flight: bool = False


class EnrollmentExpired(EventEnvelope):
    type: Literal["EnrollmentExpired.v1"] = "EnrollmentExpired.v1"
    data: EnrollmentExpiredData


class EnrollmentHandedOffData(Model):
    outcome: Outcome
    step_in_flight: bool = False


class EnrollmentHandedOff(EventEnvelope):
    type: Literal["EnrollmentHandedOff.v1"] = "EnrollmentHandedOff.v1"
    data: EnrollmentHandedOffData


class EnrollmentUnenrolledData(Model):
    outcome: Outcome
    note: str = ""
    step_in_flight: bool = False


class EnrollmentUnenrolled(EventEnvelope):
    type: Literal["EnrollmentUnenrolled.v1"] = "EnrollmentUnenrolled.v1"
    data: EnrollmentUnenrolledData


# --- Bulk enrollment ------------------------------------------------------------------------------


class BulkEnrollAcceptedData(Model):
    contact_import_id: str
    campaign_version: int
    batch_size: int = Field(ge=1)
    batches: int = Field(ge=0)
    contacts: int = Field(ge=0)  # distinct contacts fanned out (a contact listed twice is enrolled once)
    requested_by: str = ""  # the command's actor


class BulkEnrollAccepted(EventEnvelope):
    """A BulkEnroll was accepted and fanned out to one Enroll per contact (its children carry
    `bulk_enroll_id`). Not about one contact: `contact_id` is empty, `enrollment_id` None, `version` 1;
    evolve ignores it. A redelivered BulkEnroll yields the same event again (same `event_id`):
    consumers keep the first."""

    type: Literal["BulkEnrollAccepted.v1"] = "BulkEnrollAccepted.v1"
    data: BulkEnrollAcceptedData


Event = (
    ContactEnrolled
    | EnrollmentSkipped
    | EnrollmentQueued
    | EnrollmentReleased
    | TriggerAwaited
    | TriggerReceived
    | WaitTimeoutExtended
    | StepScheduled
    | StepDispatched
    | StepDeferred
    | StepDelivered
    | StepFailed
    | StepBounced
    | StepDeliveryUnknown
    | ExpiryScheduled
    | ExpiryCancelled
    | MessageOpened
    | ReplyReceived
    | MessageBounced
    | ContactOptedOut
    | ContactProfileSet
    | EnrollmentStopped
    | EnrollmentCompleted
    | EnrollmentFailed
    | EnrollmentExpired
    | EnrollmentHandedOff
    | EnrollmentUnenrolled
    | BulkEnrollAccepted
)
EVENT_TYPES: tuple[type[EventEnvelope], ...] = (
    ContactEnrolled,
    EnrollmentSkipped,
    EnrollmentQueued,
    EnrollmentReleased,
    TriggerAwaited,
    TriggerReceived,
    WaitTimeoutExtended,
    StepScheduled,
    StepDispatched,
    StepDeferred,
    StepDelivered,
    StepFailed,
    StepBounced,
    StepDeliveryUnknown,
    ExpiryScheduled,
    ExpiryCancelled,
    MessageOpened,
    ReplyReceived,
    MessageBounced,
    ContactOptedOut,
    ContactProfileSet,
    EnrollmentStopped,
    EnrollmentCompleted,
    EnrollmentFailed,
    EnrollmentExpired,
    EnrollmentHandedOff,
    EnrollmentUnenrolled,
    BulkEnrollAccepted,
)
event_adapter: TypeAdapter[Event] = TypeAdapter(Annotated[Event, Field(discriminator="type")])


def parse_event(raw: bytes | str | dict[str, Any]) -> Event:
    if isinstance(raw, dict):
        return event_adapter.validate_python(raw)
    return event_adapter.validate_json(raw)
