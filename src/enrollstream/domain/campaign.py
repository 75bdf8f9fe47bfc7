"""Campaign definitions and contact facts: the lookups the runtime makes before deciding.

They arrive inside commands and are copied into events, so a replay never has to look anything up
again. An enrollment keeps the definition it was enrolled under: editing a campaign (a new
`version`) affects new enrollments only.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Seed 002: "By default, multi-message campaigns expire 7 days after delivery."
DEFAULT_SEQUENCE_EXPIRY = timedelta(days=7)


class Model(BaseModel):
    """Base for every domain model: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"


class CampaignKind(StrEnum):
    BLAST = "blast"  # a single message; terminal at delivery (seed 002)
    SEQUENCE = "sequence"  # several steps; completes after the last one


class ReplyAction(StrEnum):
    STOP = "stop"  # seed 000 stop reason "User replied"
    CONTINUE = "continue"
    HANDOFF = "handoff"  # seed 000 status "Chatbot Handoff"


class WhenInOtherCampaign(StrEnum):
    QUEUE = "queue"  # seed 002 "Queued": wait until the other campaign finishes
    PARALLEL = "parallel"


class ReEnrollment(StrEnum):
    NEVER = "never"
    AFTER_FINISHED = "after_finished"


class CampaignStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"  # due steps wait and run after resume; nothing is skipped
    ARCHIVED = "archived"  # no new enrollments; existing ones run to their end


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


WEEKDAYS: tuple[Weekday, ...] = tuple(Weekday)  # index == date.weekday()


class SendWindow(Model):
    """Days and hours (in the contact's time zone) in which a step may be sent. end_hour exclusive."""

    days: list[Weekday] = Field(default_factory=lambda: list(Weekday), min_length=1)
    start_hour: int = Field(default=0, ge=0, le=23)
    end_hour: int = Field(default=24, ge=1, le=24)

    @model_validator(mode="after")
    def _hours_ordered(self) -> SendWindow:
        if self.end_hour <= self.start_hour:
            raise ValueError("end_hour must be after start_hour")
        return self


class StepContent(Model):
    subject: str | None = None  # email only
    body: str


class Step(Model):
    channel: Channel
    delay: timedelta = timedelta(0)  # after enrollment (first step) or after the previous delivery
    content: StepContent
    window: SendWindow | None = None


class CampaignDefinition(Model):
    campaign_id: str
    account_id: str
    version: int = Field(ge=1)
    name: str = ""
    status: CampaignStatus = CampaignStatus.ACTIVE
    kind: CampaignKind = CampaignKind.SEQUENCE
    steps: list[Step] = Field(min_length=1)
    outreach_id: str | None = None  # group of sibling campaigns (seed 001)
    unique_contacts: bool = False  # with outreach_id: skip contacts enrolled in a sibling
    reply_action: ReplyAction = ReplyAction.STOP
    verify_email_mx: bool = False
    # None: 7 days for sequences, never for blasts. Measured from the first delivery.
    expiry_after_delivery: timedelta | None = None
    when_in_other_campaign: WhenInOtherCampaign = WhenInOtherCampaign.PARALLEL
    re_enrollment: ReEnrollment = ReEnrollment.NEVER
    time_zone: str | None = None  # fallback when the contact has none; then UTC
    # Seed 002 Auto-Match: wait for an external trigger before the first step.
    awaits_trigger: bool = False
    trigger_timeout: timedelta | None = None  # stop with reason "timeout" when exceeded
    max_attempts: int = Field(default=3, ge=1)  # per step, for retryable failures
    retry_delay: timedelta = timedelta(minutes=15)  # multiplied by the attempt number

    @model_validator(mode="after")
    def _blast_has_one_step(self) -> CampaignDefinition:
        if self.kind is CampaignKind.BLAST and len(self.steps) != 1:
            raise ValueError("a blast has exactly one step")
        return self

    @property
    def expiry(self) -> timedelta | None:
        if self.kind is CampaignKind.BLAST:
            return None
        return self.expiry_after_delivery or DEFAULT_SEQUENCE_EXPIRY

    def uses(self, channel: Channel) -> bool:
        return any(step.channel is channel for step in self.steps)


class LineType(StrEnum):
    MOBILE = "mobile"
    LANDLINE = "landline"  # seed 003 "Omitted Landline": cannot receive SMS
    VOIP = "voip"
    UNKNOWN = "unknown"


class ContactFacts(Model):
    """What the runtime knows about the contact when the command is decided."""

    name: str = ""
    email: str | None = None
    mobile: str | None = None
    line_type: LineType = LineType.UNKNOWN
    time_zone: str | None = None
    opted_out: bool = False  # already opted out upstream (seed 003 "Omitted Opted Out")


class MxAnswer(Model):
    """The runtime's MX lookup for the contact's email domain, recorded for replay."""

    domain: str
    has_mx: bool
    checked_at: datetime
    detail: str = ""
    # False when DNS gave no answer (timeout, SERVFAIL): that is no evidence the domain lacks MX, so
    # the contact is enrolled unverified (never skipped as mx_invalid) and the answer is recorded.
    answered: bool = True
