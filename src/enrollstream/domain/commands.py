"""Commands: what upstream systems, the scheduler and the dispatcher ask of one contact's enrollments.

Every command is an envelope with a versioned `type` and typed `data`. All of them except BulkEnroll
name one contact, so they are keyed `account_id/contact_id` and decided by one single writer.
Time arrives with the command (`issued_at`); lookups (campaign, contact, MX) arrive in `data`.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, TypeAdapter, model_validator

from . import ids
from .bounds import KEY_SEPARATOR, MAX_ID_LENGTH, Id, Instant, Int32, Line, Text
from .campaign import CampaignDefinition, CampaignStatus, ContactFacts, LineType, Model, MxAnswer, Pause
from .schedule import valid_zone


def aggregate_key(account_id: str, contact_id: str) -> str:
    """The Kafka message key of every command and event of one contact. Unambiguous because neither
    id may contain the separator (`bounds.Id`): `a/crm`+`88` and `a`+`crm/88` are refused."""
    return f"{account_id}{KEY_SEPARATOR}{contact_id}"


class CommandEnvelope(Model):
    command_id: Line = Field(min_length=1, max_length=512)  # the idempotency key
    type: str
    account_id: Id
    # The command's "now"; normalised to UTC, within bounds.EARLIEST..LATEST (and, checked by the
    # runtime, within the configured skew of the record's broker timestamp).
    issued_at: Instant
    actor: Line = Field(default="system", max_length=256)

    @property
    def contact_id(self) -> str:
        data = getattr(self, "data", None)
        return str(getattr(data, "contact_id", ""))


class ContactData(Model):
    contact_id: Id


class EnrollmentData(ContactData):
    enrollment_id: Line = Field(min_length=1, max_length=MAX_ID_LENGTH)


# --- Enrollment --------------------------------------------------------------------------------


class EnrollSource(StrEnum):
    API = "api"  # seed 001 enroll_contact: an already-enrolled contact is a 422 rejection
    BULK_IMPORT = "bulk_import"  # seed 001 bulk enroll: an already-enrolled contact is a skip
    # Seed 002: an application entered a job stage linked to the campaign (StageChanged); an
    # already-enrolled contact is a skip, as for an import.
    STAGE_CHANGE = "stage_change"


class EnrollData(ContactData):
    campaign_id: Id
    # The runtime fills the campaign in from the campaigns topic before deciding (None: not found).
    campaign: CampaignDefinition | None = None
    # The contact's facts for this enrollment, inline (as before the directory existed), or None: the
    # decider takes the profile of the contact's directory entry (`PutContact`); a contact never put is
    # `contact_not_found`. Inline facts do not change the directory (docs/architecture.md "Contacts").
    contact: ContactFacts | None = None
    mx: MxAnswer | None = None  # required when the campaign verifies MX and sends email
    batch_number: Int32 = 0
    priority: bool = False  # first within its batch (seed 001 created_at 2000-01-01)
    source: EnrollSource = EnrollSource.API
    contact_import_id: Line | None = None
    bulk_enroll_id: Line | None = None  # the BulkEnroll (command id) this child was fanned out from


class Enroll(CommandEnvelope):
    type: Literal["Enroll.v1"] = "Enroll.v1"
    data: EnrollData


class BulkContact(ContactData):
    contact: ContactFacts | None = None
    mx: MxAnswer | None = None


class BulkEnrollData(Model):
    campaign_id: Id
    campaign: CampaignDefinition | None = None  # filled in by the runtime, like Enroll's
    contact_import_id: Line = Field(min_length=1)
    batch_size: Annotated[Int32, Field(ge=1)] = 50
    # The import's contacts inline, or None: the runtime fills them in from the contact-imports catalog
    # (unknown for the account: `contact_import_not_found`), like the campaign.
    contacts: list[BulkContact] | None = None


class BulkEnroll(CommandEnvelope):
    """Not decided itself: `accept_bulk_enroll` checks it, `fan_out_bulk_enroll` fans it out."""

    type: Literal["BulkEnroll.v1"] = "BulkEnroll.v1"
    data: BulkEnrollData


class ContactImport(Model):
    """A contact import as upstream publishes it on the contact-imports topic (seed 001
    `contact_import_id`): the contacts with their facts, in import order."""

    contact_import_id: Line = Field(min_length=1)
    account_id: Id
    contacts: list[BulkContact] = Field(default_factory=list)


def child_command_id(parent_command_id: str, contact_id: str) -> str:
    digest = hashlib.sha256(f"{parent_command_id}|{contact_id}".encode()).hexdigest()[:24]
    return f"{parent_command_id}:{digest}"


def fan_out_bulk_enroll(cmd: BulkEnroll) -> list[Enroll]:
    """One Enroll per contact, in import order, in batches of `batch_size` numbered from 1.

    Child ids derive from the parent id and the contact, so re-fanning a redelivered BulkEnroll
    yields the same children and the aggregates drop them as duplicates. A contact listed twice
    gets the same child id and is therefore enrolled once.
    """
    data = cmd.data
    return [
        Enroll(
            command_id=child_command_id(cmd.command_id, c.contact_id),
            account_id=cmd.account_id,
            issued_at=cmd.issued_at,
            actor=cmd.actor,
            data=EnrollData(
                contact_id=c.contact_id,
                campaign_id=data.campaign_id,
                campaign=data.campaign,
                contact=c.contact,
                mx=c.mx,
                batch_number=i // data.batch_size + 1,
                source=EnrollSource.BULK_IMPORT,
                contact_import_id=data.contact_import_id,
                bulk_enroll_id=cmd.command_id,
            ),
        )
        for i, c in enumerate(data.contacts or [])
    ]


def batch_count(cmd: BulkEnroll) -> int:
    return -(-len(cmd.data.contacts or []) // cmd.data.batch_size)


# --- Job stages (seed 002) ----------------------------------------------------------------------


class StageEntry(Model):
    """One entry of an application into a job stage: seed 002 "an application is created or moved into
    a job stage". `entered_at` is upstream's time of that move, so the same move published twice (a
    redelivery, a retry under a new command id) is one entry, and the application leaving the stage and
    entering it again later is a new one."""

    application_id: Id
    pipeline_id: Id
    stage_id: Id
    entered_at: Instant

    @property
    def entry_id(self) -> str:
        """Deterministic id of this entry (per contact aggregate): what an enrollment it made records."""
        return ids.stable_id(
            "stage-entry", self.application_id, self.pipeline_id, self.stage_id, self.entered_at.isoformat()
        )


class StageChangedData(ContactData, StageEntry):
    # The contact's facts inline, or None: the directory's profile (`PutContact`), as for Enroll.
    contact: ContactFacts | None = None
    # The account's campaigns that enrol from (pipeline_id, stage_id), filled in by the runtime from its
    # catalog (whatever upstream put here is discarded first), like Enroll's `campaign`.
    campaigns: list[CampaignDefinition] | None = None
    mx: MxAnswer | None = None  # the runtime's, when a linked campaign verifies MX and sends email

    @property
    def entry(self) -> StageEntry:
        return StageEntry(
            application_id=self.application_id,
            pipeline_id=self.pipeline_id,
            stage_id=self.stage_id,
            entered_at=self.entered_at,
        )


class StageChanged(CommandEnvelope):
    """Seed 002: an application of the contact was created in, or moved into, a job stage. Enrols the
    contact into every campaign of the account linked to that stage (`enrolling_stages`), once per
    stage entry; a stage linked to none is refused `stage_not_linked`."""

    type: Literal["StageChanged.v1"] = "StageChanged.v1"
    data: StageChangedData


# --- The contact directory ---------------------------------------------------------------------

# Bounds of a contact profile (docs/client.md "Bounds"): the profile lives in the contact's snapshot and
# is copied into every enrollment of the contact, so each field is bounded where it enters.
MAX_CONTACT_NAME = 256
MAX_EMAIL = 320  # RFC 3696: 64 for the local part, @, 255 for the domain
MAX_MOBILE = 64
MAX_TIME_ZONE = 64


def _known_time_zone(value: str | None) -> str | None:
    if value is not None and not valid_zone(value):
        raise ValueError(f"unknown time zone {value!r}: use an IANA name such as Europe/Berlin")
    return value


class PutContactData(ContactData):
    """A contact's whole profile in the account's directory (seed 001 "contact must be in the same
    account"). Upsert: the profile given replaces the one before."""

    name: Annotated[Line, Field(max_length=MAX_CONTACT_NAME)] = ""
    email: Annotated[Line, Field(max_length=MAX_EMAIL)] | None = None
    mobile: Annotated[Line, Field(max_length=MAX_MOBILE)] | None = None
    line_type: LineType = LineType.UNKNOWN
    time_zone: Annotated[Line, Field(max_length=MAX_TIME_ZONE), AfterValidator(_known_time_zone)] | None = (
        None
    )
    # True opts the contact out (as OptOut does: running enrollments stop). False never re-subscribes a
    # contact that opted out: the directory keeps `opted_out: true`.
    opted_out: bool = False

    def facts(self) -> ContactFacts:
        return ContactFacts(
            name=self.name,
            email=self.email or None,
            mobile=self.mobile or None,
            line_type=self.line_type,
            time_zone=self.time_zone or None,
            opted_out=self.opted_out,
        )


class PutContact(CommandEnvelope):
    """Create or replace a contact's profile in its account's directory; an Enroll that names only the
    contact id takes its facts from there."""

    type: Literal["PutContact.v1"] = "PutContact.v1"
    data: PutContactData


# --- Scheduler and dispatcher --------------------------------------------------------------------


def step_due_command_id(enrollment_id: str, step_index: int, attempt: int, due_at: datetime) -> str:
    """The scheduler's id for StepDue fired for the step timer due at `due_at`. Firing the same timer
    again (e.g. after a pause) is safe: a deferred StepDue records nothing, and a processed one is
    dropped as a duplicate. A step rescheduled (outside its send window, or deferred by a sender's
    rate limit) has a new due time, so its next firing is a new command."""
    return f"step-due:{enrollment_id}:{step_index}:{attempt}:{due_at.astimezone(UTC).isoformat()}"


def timer_command_id(kind: Literal["expiry", "wait-timeout"], enrollment_id: str, due_at: datetime) -> str:
    """The scheduler's id for ExpiryDue / WaitTimeout fired for a timer due at `due_at`."""
    return f"{kind}:{enrollment_id}:{due_at.astimezone(UTC).isoformat()}"


def delivery_report_command_id(message_id: str) -> str:
    """The dispatcher's id for a final DeliveryReported: one outcome per attempt (message id)."""
    return f"delivery:{message_id}"


def delivery_deferral_command_id(message_id: str, dispatch: int) -> str:
    """The dispatcher's id for a `deferred` DeliveryReported: one per dispatch of an attempt, so a
    later dispatch's deferral or final outcome is never taken for a duplicate of this one."""
    return f"delivery-deferred:{message_id}:{dispatch}"


class StepDueData(EnrollmentData):
    step_index: Int32
    attempt: Annotated[Int32, Field(ge=1)]
    # The campaign's status now, as the runtime knows it: a paused campaign defers the step.
    campaign_status: CampaignStatus = CampaignStatus.ACTIVE


class StepDue(CommandEnvelope):
    type: Literal["StepDue.v1"] = "StepDue.v1"
    data: StepDueData


class DeliveryOutcome(StrEnum):
    SENT = "sent"
    FAILED = "failed"
    BOUNCED = "bounced"
    UNKNOWN = "unknown"  # the ambiguous SMTP window: maybe sent; never resent automatically
    ERROR = "error"  # a technical error on our side (template, configuration): seed 000 stop reason Error
    # Not sent, nothing started: the sender is over its rate limit until `retry_at`. Not an attempt:
    # the decider schedules the same attempt again (a new dispatch of it).
    DEFERRED = "deferred"
    # The recipient address or number cannot be a recipient (not a valid address, not a valid E.164
    # number): nothing was sent, and no attempt can succeed. The enrollment fails (seed 002, 003).
    INVALID_RECIPIENT = "invalid_recipient"


class BounceType(StrEnum):
    HARD = "hard"
    SOFT = "soft"


class DeliveryReportedData(EnrollmentData):
    step_index: Int32
    attempt: Annotated[Int32, Field(ge=1)]
    # The StepDispatched this reports (its `dispatch`): a report for an older dispatch of the same
    # attempt, e.g. a deferral re-published after the step was dispatched again, is stale.
    dispatch: Annotated[Int32, Field(ge=1)] = 1
    outcome: DeliveryOutcome
    retryable: bool = False  # for failed
    bounce_type: BounceType | None = None  # for bounced; hard when omitted
    detail: Text = ""
    provider_message_id: Line | None = None
    retry_at: Instant | None = None  # for deferred (required): when the sender may send again

    @model_validator(mode="after")
    def _deferral_has_a_time(self) -> DeliveryReportedData:
        if (self.outcome is DeliveryOutcome.DEFERRED) != (self.retry_at is not None):
            raise ValueError("retry_at is required for outcome deferred and only for it")
        return self


class DeliveryReported(CommandEnvelope):
    type: Literal["DeliveryReported.v1"] = "DeliveryReported.v1"
    data: DeliveryReportedData


class TimerData(EnrollmentData):
    # The campaign's pause history as the scheduler knows it when it fires the timer: paused time does
    # not count toward expiry or a wait timeout, so a timer that ran out only because of a pause is
    # extended instead. Recorded in the command, so deciding it again decides the same.
    campaign_pauses: list[Pause] = Field(default_factory=list)


class ExpiryDue(CommandEnvelope):
    type: Literal["ExpiryDue.v1"] = "ExpiryDue.v1"
    data: TimerData


class WaitTimeout(CommandEnvelope):
    """A wait ran out: for the external trigger (Auto-Match) or in the queue (`queue_timeout`)."""

    type: Literal["WaitTimeout.v1"] = "WaitTimeout.v1"
    data: TimerData


# --- Signals from the contact and the outside world ---------------------------------------------


class ReplyDetectedData(EnrollmentData):
    replied_at: Instant | None = None  # defaults to issued_at
    inbound_message_id: Line | None = None
    excerpt: Text = ""


class ReplyDetected(CommandEnvelope):
    type: Literal["ReplyDetected.v1"] = "ReplyDetected.v1"
    data: ReplyDetectedData


class MachineOpen(StrEnum):
    """Why a load of the tracking pixel looks like a machine rather than a person reading."""

    PRIVACY_PREFETCH = "privacy_prefetch"  # Apple Mail Privacy Protection's proxy fetches on delivery
    SCANNER = "scanner"  # a security scanner or link previewer (its user agent says so)
    SOON_AFTER_SENDING = "soon_after_sending"  # loaded within seconds of sending: nobody read it yet


class OpenDetectedData(EnrollmentData):
    step_index: Int32 | None = None
    # Set when the open is recognisably a machine's (counted anyway, but flagged; docs/delivery.md).
    machine: MachineOpen | None = None


class OpenDetected(CommandEnvelope):
    type: Literal["OpenDetected.v1"] = "OpenDetected.v1"
    data: OpenDetectedData


class BounceDetectedData(EnrollmentData):
    """A bounce learned after the send, e.g. from a provider webhook (seed 001)."""

    bounce_type: BounceType = BounceType.HARD
    step_index: Int32 | None = None
    detail: Text = ""


class BounceDetected(CommandEnvelope):
    type: Literal["BounceDetected.v1"] = "BounceDetected.v1"
    data: BounceDetectedData


class OptOutData(ContactData):
    channel: Line | None = None  # informational: where the opt-out came from
    detail: Text = ""


class OptOut(CommandEnvelope):
    """Account-wide: stops every enrollment of the contact that has not finished."""

    type: Literal["OptOut.v1"] = "OptOut.v1"
    data: OptOutData


class ExternalTriggerData(EnrollmentData):
    trigger: Line = "external"  # e.g. "interviewer_availability" (seed 002 Auto-Match)
    detail: Text = ""


class ExternalTrigger(CommandEnvelope):
    type: Literal["ExternalTrigger.v1"] = "ExternalTrigger.v1"
    data: ExternalTriggerData


# --- Operator actions --------------------------------------------------------------------------


class OperatorData(EnrollmentData):
    note: Text = ""


class Stop(CommandEnvelope):
    type: Literal["Stop.v1"] = "Stop.v1"
    data: OperatorData


class Unenroll(CommandEnvelope):
    type: Literal["Unenroll.v1"] = "Unenroll.v1"
    data: OperatorData


class MarkFinished(CommandEnvelope):
    type: Literal["MarkFinished.v1"] = "MarkFinished.v1"
    data: OperatorData


# Commands decided by one aggregate (BulkEnroll is fanned out first).
ContactCommand = (
    Enroll
    | PutContact
    | StepDue
    | DeliveryReported
    | ExpiryDue
    | WaitTimeout
    | ReplyDetected
    | OpenDetected
    | BounceDetected
    | OptOut
    | ExternalTrigger
    | Stop
    | Unenroll
    | MarkFinished
    | StageChanged
)
Command = Annotated[ContactCommand | BulkEnroll, Field(discriminator="type")]
COMMAND_TYPES: tuple[type[CommandEnvelope], ...] = (
    Enroll,
    PutContact,
    BulkEnroll,
    StepDue,
    DeliveryReported,
    ExpiryDue,
    WaitTimeout,
    ReplyDetected,
    OpenDetected,
    BounceDetected,
    OptOut,
    ExternalTrigger,
    Stop,
    Unenroll,
    MarkFinished,
    StageChanged,
)

command_adapter: TypeAdapter[ContactCommand | BulkEnroll] = TypeAdapter(Command)


def parse_command(raw: bytes | str | dict[str, Any]) -> ContactCommand | BulkEnroll:
    """Decode and validate; raises pydantic.ValidationError on schema-invalid input."""
    if isinstance(raw, dict):
        return command_adapter.validate_python(raw)
    return command_adapter.validate_json(raw)
