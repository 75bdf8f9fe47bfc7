"""Campaign definitions and contact facts: the lookups the runtime makes before deciding.

They arrive inside commands and are copied into events, so a replay never has to look anything up
again. An enrollment keeps the definition it was enrolled under: editing a campaign (a new
`version`) affects new enrollments only.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .bounds import Duration, Id, Instant, Int32, Line, Text

# Seed 002: "By default, multi-message campaigns expire 7 days after delivery." That is the default of
# seed 002's kind of campaign (CampaignKind.MULTI_MODULE) only; a drip never expires unless it says so.
DEFAULT_MULTI_MODULE_EXPIRY = timedelta(days=7)
NEVER: Literal["never"] = "never"
# Retries of one step (each waits retry_delay x attempt): bounded so the last wait stays a sane time.
MAX_ATTEMPTS = 100


class Model(BaseModel):
    """Base for every domain model: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"


class CampaignKind(StrEnum):
    BLAST = "blast"  # a single message; terminal at delivery (seed 002); never expires
    # A drip: several steps, completes after the last one. Never expires between steps unless its
    # definition sets `expiry_after_delivery`.
    SEQUENCE = "sequence"
    # Seed 002's "multi-module campaign": delivered, and the candidate must complete it. Expires 7 days
    # after the first delivery unless its definition sets another `expiry_after_delivery` (or "never").
    MULTI_MODULE = "multi_module"


class ReplyAction(StrEnum):
    STOP = "stop"  # seed 000 stop reason "User replied"
    CONTINUE = "continue"
    HANDOFF = "handoff"  # seed 000 status "Chatbot Handoff"


class WhenInOtherCampaign(StrEnum):
    # Seed 002 "Queued": at most one enrollment of the queueing campaigns (of one `queue_group`) is in
    # progress per contact; the others wait for it to end, oldest first.
    QUEUE = "queue"
    PARALLEL = "parallel"  # neither waits nor is waited for


class ReEnrollment(StrEnum):
    NEVER = "never"
    AFTER_FINISHED = "after_finished"


# Job stages one campaign may enrol from (seed 002): bounded where the definition enters, like every list.
MAX_ENROLLING_STAGES = 100


class JobStage(Model):
    """A stage of an upstream pipeline (e.g. a job's hiring pipeline in an ATS): seed 002 "a job stage
    linked to a campaign". Ids are upstream's, scoped by the account like every id."""

    pipeline_id: Id
    stage_id: Id


class CampaignStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"  # due steps wait and run after resume; nothing is skipped
    ARCHIVED = "archived"  # no new enrollments; existing ones run to their end


class Pause(Model):
    """A time the campaign was paused (`ended_at` None: paused now). Kept on the definition by whoever
    pauses and resumes (`with_pause_history`) so that expiry and wait timeouts can leave it out."""

    started_at: Instant
    ended_at: Instant | None = None


def paused_between(pauses: Iterable[Pause], start: datetime, end: datetime) -> timedelta:
    """How much of [start, end) the campaign spent paused (an open pause counts up to `end`)."""
    total = timedelta(0)
    for pause in pauses:
        overlap = min(end, pause.ended_at or end) - max(start, pause.started_at)
        if overlap > timedelta(0):
            total += overlap
    return total


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
    subject: Line | None = None  # email only
    body: Text


class Step(Model):
    channel: Channel
    delay: Duration = timedelta(0)  # after enrollment (first step) or after the previous delivery
    content: StepContent
    window: SendWindow | None = None


class CampaignDefinition(Model):
    campaign_id: Id
    account_id: Id
    version: Annotated[Int32, Field(ge=1)]
    name: Line = ""
    status: CampaignStatus = CampaignStatus.ACTIVE
    kind: CampaignKind = CampaignKind.SEQUENCE
    steps: list[Step] = Field(min_length=1)
    outreach_id: Line | None = None  # group of sibling campaigns (seed 001)
    unique_contacts: bool = False  # with outreach_id: skip contacts enrolled in a sibling
    reply_action: ReplyAction = ReplyAction.STOP
    verify_email_mx: bool = False
    # Email steps carry a signed open-tracking pixel in an HTML part (docs/delivery.md "Open tracking").
    track_opens: bool = True
    # Measured from the first delivery, not counting time the campaign was paused. A duration, "never",
    # or None: the kind's default (7 days for multi_module, never for sequence; blasts never expire).
    expiry_after_delivery: Duration | Literal["never"] | None = None
    when_in_other_campaign: WhenInOtherCampaign = WhenInOtherCampaign.PARALLEL
    # With when_in_other_campaign=queue: which queueing campaigns exclude each other (None: the default
    # group). A queued enrollment waits only behind in-progress enrollments of its group.
    queue_group: Line | None = None
    # With when_in_other_campaign=queue: stop a queued enrollment with reason "timeout" once it has waited
    # this long (paused time not counted). None: wait for as long as it takes.
    queue_timeout: Duration | None = None
    re_enrollment: ReEnrollment = ReEnrollment.NEVER
    time_zone: Line | None = None  # fallback when the contact has none; then UTC
    # Seed 002 Auto-Match: wait for an external trigger before the first step.
    awaits_trigger: bool = False
    trigger_timeout: Duration | None = None  # stop with reason "timeout" when exceeded
    max_attempts: int = Field(default=3, ge=1, le=MAX_ATTEMPTS)  # per step, for retryable failures
    retry_delay: Duration = timedelta(minutes=15)  # multiplied by the attempt number
    # When the campaign was paused, oldest first; maintained by `with_pause_history`, not by hand.
    pauses: list[Pause] = Field(default_factory=list)
    # Seed 002: an application created in, or moved into, one of these stages (StageChanged) enrols the
    # candidate into this campaign. Empty: no stage enrols into it.
    enrolling_stages: list[JobStage] = Field(default_factory=list, max_length=MAX_ENROLLING_STAGES)

    @model_validator(mode="after")
    def _blast_has_one_step(self) -> CampaignDefinition:
        if self.kind is CampaignKind.BLAST and len(self.steps) != 1:
            raise ValueError("a blast has exactly one step")
        return self

    @model_validator(mode="after")
    def _durations_positive(self) -> CampaignDefinition:
        for name in ("expiry_after_delivery", "queue_timeout", "trigger_timeout"):
            value = getattr(self, name)
            if isinstance(value, timedelta) and value <= timedelta(0):
                raise ValueError(f"{name} must be positive (say never for no expiry)")
        return self

    @model_validator(mode="after")
    def _queue_settings_need_the_queue(self) -> CampaignDefinition:
        if not self.queues and (self.queue_group is not None or self.queue_timeout is not None):
            raise ValueError("queue_group and queue_timeout need when_in_other_campaign: queue")
        return self

    @property
    def expiry(self) -> timedelta | None:
        """How long after the first delivery an enrollment expires; None: never."""
        if self.kind is CampaignKind.BLAST or self.expiry_after_delivery == NEVER:
            return None
        if isinstance(self.expiry_after_delivery, timedelta):
            return self.expiry_after_delivery
        return DEFAULT_MULTI_MODULE_EXPIRY if self.kind is CampaignKind.MULTI_MODULE else None

    @property
    def queues(self) -> bool:
        return self.when_in_other_campaign == WhenInOtherCampaign.QUEUE

    def queues_with(self, other: CampaignDefinition) -> bool:
        """Seed 002 "another campaign currently in progress": both queue, in the same queue group."""
        return self.queues and other.queues and self.queue_group == other.queue_group

    def enrols_from(self, pipeline_id: str, stage_id: str) -> bool:
        """Seed 002: an application entering this pipeline's stage is enrolled into this campaign."""
        return any(s.pipeline_id == pipeline_id and s.stage_id == stage_id for s in self.enrolling_stages)

    def uses(self, channel: Channel) -> bool:
        return any(step.channel is channel for step in self.steps)


def with_pause_history(
    previous: CampaignDefinition | None, new: CampaignDefinition, at: datetime
) -> CampaignDefinition:
    """`new` as it is to be published at `at`: the pause history of the definition it replaces carried
    over, a pause opened if it pauses the campaign, the open one closed if it resumes it."""
    pauses = list(previous.pauses if previous is not None else new.pauses)
    paused_now = bool(pauses) and pauses[-1].ended_at is None
    if new.status is CampaignStatus.PAUSED and not paused_now:
        pauses.append(Pause(started_at=at))
    elif new.status is not CampaignStatus.PAUSED and paused_now:
        pauses[-1] = Pause(started_at=pauses[-1].started_at, ended_at=max(at, pauses[-1].started_at))
    return new.model_copy(update={"pauses": pauses})


class LineType(StrEnum):
    MOBILE = "mobile"
    LANDLINE = "landline"  # seed 003 "Omitted Landline": cannot receive SMS
    VOIP = "voip"
    UNKNOWN = "unknown"


class ContactFacts(Model):
    """What the runtime knows about the contact when the command is decided."""

    name: Line = ""
    email: Line | None = None
    mobile: Line | None = None
    line_type: LineType = LineType.UNKNOWN
    time_zone: Line | None = None
    opted_out: bool = False  # already opted out upstream (seed 003 "Omitted Opted Out")


MX_DETAIL_MAX = 300  # characters of an MX answer's detail kept (a resolver's error can be long)


def _bounded_detail(value: object) -> object:
    return value[:MX_DETAIL_MAX] if isinstance(value, str) else value


class MxAnswer(Model):
    """The runtime's MX lookup for the contact's email domain, recorded for replay."""

    domain: str
    has_mx: bool
    checked_at: datetime
    # What DNS said ("mx: 10 mx1...", "nxdomain: ...", "timeout: ..."), cut to MX_DETAIL_MAX.
    detail: Annotated[str, BeforeValidator(_bounded_detail), Field(max_length=MX_DETAIL_MAX)] = ""
    # False when DNS gave no answer (timeout, SERVFAIL): that is no evidence the domain lacks MX, so
    # the contact is enrolled unverified (never skipped as mx_invalid) and the answer is recorded.
    answered: bool = True


class MxCheck(StrEnum):
    """What an enrollment's MX check was (docs/delivery.md "MX verification"). A domain that answered
    without MX is never enrolled: it is the skip `mx_invalid`."""

    VERIFIED = "verified"  # the campaign verifies MX and the domain has MX records
    UNVERIFIED = "unverified"  # the campaign verifies MX, DNS gave no answer (timeout, SERVFAIL): enrolled
    NOT_REQUIRED = "not_required"  # the campaign does not verify MX (or has no email step)


def mx_check_of(campaign: CampaignDefinition, mx: MxAnswer | None) -> MxCheck:
    """The MX check of a contact enrolled under `campaign` with `mx` (what the decider records)."""
    if not (campaign.verify_email_mx and campaign.uses(Channel.EMAIL)) or mx is None:
        return MxCheck.NOT_REQUIRED
    if not mx.answered:
        return MxCheck.UNVERIFIED
    if not mx.has_mx:
        raise ValueError(f"{mx.domain} has no MX: skipped as mx_invalid, never enrolled")
    return MxCheck.VERIFIED
