"""The aggregate: one contact's enrollments across campaigns, and `evolve` to apply events to it.

The runtime snapshots `ContactState` on a compacted topic (`snapshot_bytes`) and restores it
(`state_from_snapshot`), so it must stay a plain pydantic model.

Compact snapshots: in memory an enrollment holds the definition it was enrolled under (`campaign`, a
frozen object the runtime shares between every enrollment of that version, so `decide` stays a pure
function of the command and the state); a snapshot keeps only the reference (account, `campaign_id`,
`campaign_version`) when the runtime says the catalog can resolve it, and the definition itself
otherwise (the fallback: a version the catalog never kept). Fields at their default are left out.
A snapshot written before (every definition embedded, every field written) still loads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from . import ids
from .campaign import CampaignDefinition, CampaignKind, ContactFacts, MxCheck
from .events import (
    BulkEnrollAccepted,
    ContactEnrolled,
    ContactOptedOut,
    ContactProfileSet,
    EnrollmentCompleted,
    EnrollmentExpired,
    EnrollmentFailed,
    EnrollmentHandedOff,
    EnrollmentQueued,
    EnrollmentReleased,
    EnrollmentSkipped,
    EnrollmentStopped,
    EnrollmentUnenrolled,
    Event,
    ExpiryCancelled,
    ExpiryScheduled,
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
    WaitTimeoutExtended,
)
from .statuses import EnrollmentStatus, FailureReason, Outcome, Stage, StopReason

# Idempotency: the aggregate remembers the id of every command that produced events, with the time it
# was decided, for COMMAND_ID_WINDOW of the contact's own time (the latest `occurred_at` among its
# events, so the rule is a pure function of the events). The window is longer than the commands
# topic's retention (7 days, adapters/kafka/topics.py), so a command redelivered from the topic, or
# re-published within it, is always recognised as a duplicate. PROCESSED_COMMAND_IDS_CAP is a safety
# bound on the snapshot (~60 bytes an id), far above what a contact decides in a window; it is the only
# thing that can forget an id sooner. Past the window a re-published command is decided again: see
# docs/client.md for what that does per command.
COMMAND_ID_WINDOW = timedelta(days=8)
PROCESSED_COMMAND_IDS_CAP = 4096
# Replies remembered per enrollment by their inbound message id (hashed): the same reply is never
# recorded twice, even past the window.
REPLY_MESSAGE_IDS_KEPT = 32
# A snapshot written before the window existed held a bare list of ids, without times: each gets this
# placeholder, replaced by the time of the contact's next decision (so it is kept a full window).
_UNKNOWN_TIME = -1
_COMMAND_ID_KEPT_AS_IS = 64


class StateModel(BaseModel):
    # Mutable on purpose: evolve works on a private deep copy and mutates it.
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class Attempt(StateModel):
    # Never mutated once built (evolve assigns a new one), so copies of the state may share it.

    step_index: int
    attempt: int
    message_id: str
    # Which dispatch of the attempt: 1, +1 after each deferral (StepScheduled / StepDispatched.dispatch).
    dispatch: int = 1
    dispatched_at: datetime | None = None  # in flight: when its StepDue was decided (at or after due)


class Enrollment(StateModel):
    enrollment_id: str
    campaign_id: str
    sequence: int
    # The version enrolled under: all a compact snapshot keeps of `campaign` (with the account and id).
    campaign_version: int = 0
    campaign: CampaignDefinition  # the version enrolled under, shared (the runtime resolves it)
    contact: ContactFacts
    time_zone: str
    batch_number: int = 0
    priority: bool = False
    enrolled_at: datetime
    enrolled_by: str = ""
    # The Enroll command that created it (`command_key`): that command never enrolls again, past any window.
    enroll_command_id: str | None = None
    bulk_enroll_id: str | None = None  # the BulkEnroll this enrollment came from
    # The stage entry (`StageEntry.entry_id`) that enrolled it (source stage_change): that entry never
    # enrols into this campaign again, past any window and under any command id.
    stage_entry_id: str | None = None
    application_id: str | None = None  # ... and the application that entered the stage
    mx_check: MxCheck = MxCheck.NOT_REQUIRED  # verified / unverified / not_required, at enrollment
    status: EnrollmentStatus = EnrollmentStatus.PENDING
    stage: Stage = Stage.PENDING
    stop_reason: StopReason | None = None
    outcome: Outcome | None = None
    queued_behind: str | None = None
    # The step the scheduler will fire next (None when nothing is scheduled).
    scheduled: Attempt | None = None
    due_at: datetime | None = None
    # The attempt handed to the dispatcher and not yet reported. Survives an ending: a send
    # already processing still completes and its report is still recorded (seed 004).
    in_flight: Attempt | None = None
    delivered_steps: list[int] = Field(default_factory=list)
    # Steps whose delivery is unknown (maybe sent; never resent): the sequence carried on past them.
    unknown_steps: list[int] = Field(default_factory=list)
    # The step the contact is on: the last one scheduled or handed to the dispatcher (0-based).
    step_index: int | None = None
    sent_at: datetime | None = None
    last_sent_at: datetime | None = None
    opened_at: datetime | None = None
    replied_at: datetime | None = None
    hours_to_reply: float | None = None
    # Replies recorded, by `reply_key` of their inbound message id (oldest first, bounded).
    reply_keys: list[str] = Field(default_factory=list)
    bounced_at: datetime | None = None
    bounce_reason: str | None = None
    failure_reason: FailureReason | None = None  # why it failed (status failed)
    failure_detail: str | None = None  # what the provider or the dispatcher said
    # Expiry: `expiry` after `expiry_counted_from` (the first delivery), not counting paused time; the
    # scheduler fires ExpiryDue at `expires_at`.
    expires_at: datetime | None = None
    expiry: timedelta | None = None
    expiry_counted_from: datetime | None = None
    # A wait for the trigger or in the queue: it began at `wait_started_at` and times out `wait_timeout`
    # later, not counting paused time; the scheduler fires WaitTimeout at `wait_timeout_at`.
    wait_timeout_at: datetime | None = None
    wait_timeout: timedelta | None = None
    wait_started_at: datetime | None = None
    finished_at: datetime | None = None
    # The aggregate version and time of the last event about this enrollment: what the read model's
    # `last_version` / `updated_at` show, so the row is a function of this state alone.
    version: int = 0
    updated_at: datetime | None = None

    @model_validator(mode="after")
    def _version_of_its_campaign(self) -> Enrollment:
        # One fact: the reference a snapshot keeps is always the version of the definition held.
        self.campaign_version = self.campaign.version
        return self

    @property
    def step_count(self) -> int:
        return len(self.campaign.steps)

    @property
    def current_step(self) -> int | None:
        """1-based step shown as "Step 2 of 5": the one in flight or scheduled, else the last one tried
        (a failed enrollment shows the step it failed on); None before the first is scheduled."""
        return None if self.step_index is None else self.step_index + 1

    @property
    def is_blast(self) -> bool:
        return self.campaign.kind is CampaignKind.BLAST


class ContactState(StateModel):
    account_id: str
    contact_id: str
    version: int = 0
    opted_out: bool = False
    opted_out_at: datetime | None = None
    # The contact's entry in its account's directory (PutContact); None: never put, so an Enroll that
    # names only the contact id is `contact_not_found`.
    profile: ContactFacts | None = None
    enrollments: dict[str, Enrollment] = Field(default_factory=dict)  # in enrollment order
    # Command id -> epoch seconds it was decided at (contact time), oldest first; see COMMAND_ID_WINDOW.
    processed_command_ids: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _resolve_campaigns(cls, value: Any, info: ValidationInfo) -> Any:
        """A snapshot's enrollment names its definition by version: resolved through the
        `campaigns` lookup of the validation context (`state_from_snapshot`)."""
        if not isinstance(value, dict) or not isinstance(value.get("enrollments"), dict):
            return value
        lookup: CampaignVersions | None = (info.context or {}).get("campaigns")
        enrollments: dict[str, Any] = {}
        for key, e in value["enrollments"].items():
            # Without `campaign`: a reference. With it: embedded (a fallback, or a snapshot written before
            # references), and `campaign_version` follows from it (`_version_of_its_campaign`).
            if isinstance(e, dict) and e.get("campaign") is None and "campaign_version" in e:
                if lookup is None:
                    raise ValueError("a compact snapshot is restored with a campaigns lookup")
                account, campaign_id = str(value.get("account_id", "")), str(e.get("campaign_id", ""))
                found = lookup(account, campaign_id, e["campaign_version"])
                if found is None:
                    raise ValueError(
                        f"campaign {campaign_id!r} version {e['campaign_version']} of enrollment {key!r} "
                        "is not in the catalog"
                    )
                e = {**e, "campaign": found}
            enrollments[key] = e
        return {**value, "enrollments": enrollments}

    @field_validator("processed_command_ids", mode="before")
    @classmethod
    def _from_legacy_list(cls, value: object) -> object:
        if isinstance(value, list):  # a snapshot from before the window: ids without times
            return dict.fromkeys(value, _UNKNOWN_TIME)
        return value

    def enrollments_in(self, campaign_id: str) -> list[Enrollment]:
        return [e for e in self.enrollments.values() if e.campaign_id == campaign_id]

    def latest_in(self, campaign_id: str) -> Enrollment | None:
        found = self.enrollments_in(campaign_id)
        return found[-1] if found else None

    def in_progress(self) -> list[Enrollment]:
        return [e for e in self.enrollments.values() if e.status.is_in_progress]

    def queued(self) -> list[Enrollment]:
        return [e for e in self.enrollments.values() if e.status is EnrollmentStatus.QUEUED]

    def has_processed(self, command_id: str) -> bool:
        return command_key(command_id) in self.processed_command_ids


# (account_id, campaign_id, version) -> that version's definition, or None if unknown.
CampaignVersions = Callable[[str, str, int], CampaignDefinition | None]


def snapshot_bytes(state: ContactState, referable: Callable[[str, CampaignDefinition], bool]) -> bytes:
    """The compact snapshot of `state`: fields at their default left out, and the definition of each
    enrollment left out when `referable(account_id, definition)` (the catalog resolves that version to
    this very definition), so it is restored by reference."""
    by_reference = {
        key: {"campaign"} for key, e in state.enrollments.items() if referable(state.account_id, e.campaign)
    }
    exclude = {"enrollments": by_reference} if by_reference else None
    return state.model_dump_json(exclude_defaults=True, exclude=exclude).encode()


def state_from_snapshot(raw: bytes | str, campaigns: CampaignVersions) -> ContactState:
    """A snapshot (compact, or from before references) as a state whose enrollments share the
    definitions `campaigns` resolves: an embedded definition equal to the catalog's version is replaced
    by the catalog's object, so a contact restored from an old snapshot costs no more memory."""
    state = ContactState.model_validate_json(raw, context={"campaigns": campaigns})
    for e in state.enrollments.values():
        known = campaigns(state.account_id, e.campaign_id, e.campaign_version)
        if known is not None and known is not e.campaign and known == e.campaign:
            e.campaign = known
    return state


def initial_state(account_id: str, contact_id: str) -> ContactState:
    return ContactState(account_id=account_id, contact_id=contact_id)


def owned_copy(state: ContactState) -> ContactState:
    """A copy whose mutable parts are its own; frozen parts (campaign, contact, attempts) are shared.

    Much cheaper than a deep copy, which would copy every campaign definition on every command.
    """
    new = state.model_copy()
    new.processed_command_ids = dict(state.processed_command_ids)
    new.enrollments = {key: _owned_enrollment(e) for key, e in state.enrollments.items()}
    return new


def _owned_enrollment(e: Enrollment) -> Enrollment:
    copy = e.model_copy()
    copy.delivered_steps = list(e.delivered_steps)
    copy.unknown_steps = list(e.unknown_steps)
    copy.reply_keys = list(e.reply_keys)
    return copy


def evolve(state: ContactState, event: Event) -> ContactState:
    """Pure: returns a new state; the given one is untouched."""
    new = owned_copy(state)
    apply_in_place(new, event)
    return new


def fold(state: ContactState, events: Iterable[Event]) -> ContactState:
    new = owned_copy(state)
    for event in events:
        apply_in_place(new, event)
    return new


def command_key(command_id: str) -> str:
    """How a command id is remembered: as is up to 64 characters, else by a fixed-size digest, so the
    snapshot stays bounded whatever ids upstream sends."""
    return command_id if len(command_id) <= _COMMAND_ID_KEPT_AS_IS else ids.stable_id("command", command_id)


def reply_key(inbound_message_id: str) -> str:
    """What an enrollment keeps of a reply's inbound message id: fixed size, whatever the id's length."""
    return ids.stable_id("reply", inbound_message_id)


def _remember(state: ContactState, command_id: str, at: datetime) -> None:
    """Record the command as decided at the contact's time and forget ids older than the window."""
    known = state.processed_command_ids
    if known and next(iter(known.values())) == _UNKNOWN_TIME:  # restored from a pre-window snapshot
        for key in known:
            known[key] = int(at.timestamp())
    # The contact's clock never goes back: an old `issued_at` (a re-report) is decided "now".
    now = max(int(at.timestamp()), next(reversed(known.values()))) if known else int(at.timestamp())
    command_id = command_key(command_id)
    if command_id not in known:  # several events of one command: the first one's time is the decision's
        known[command_id] = now
    # Oldest first, so forgetting stops at the first id still inside the window.
    horizon = now - int(COMMAND_ID_WINDOW.total_seconds())
    while known:
        oldest = next(iter(known))
        if known[oldest] >= horizon and len(known) <= PROCESSED_COMMAND_IDS_CAP:
            break
        del known[oldest]


def _finish(e: Enrollment, status: EnrollmentStatus, outcome: Outcome | None, at: datetime) -> None:
    e.status = status
    e.outcome = outcome
    e.scheduled = None
    e.due_at = None
    _end_wait(e)
    e.finished_at = at


def _start_wait(e: Enrollment, at: datetime, timeout_at: datetime | None) -> None:
    e.wait_started_at = at
    e.wait_timeout_at = timeout_at
    e.wait_timeout = timeout_at - at if timeout_at is not None else None


def _end_wait(e: Enrollment) -> None:
    e.wait_started_at = e.wait_timeout_at = e.wait_timeout = None


def _running_status(e: Enrollment) -> EnrollmentStatus:
    """Active once a step went out or maybe did (unknown: the sequence carried on); pending before."""
    went_out = e.delivered_steps or e.unknown_steps or e.sent_at
    return EnrollmentStatus.ACTIVE if went_out else EnrollmentStatus.PENDING


def _close_attempt(e: Enrollment) -> None:
    e.in_flight = None
    if e.status is EnrollmentStatus.PROCESSING:
        e.status = _running_status(e)


def apply_in_place(state: ContactState, event: Event) -> None:
    """Mutates `state`; only for copies owned by the caller (evolve, fold, the decider)."""
    if isinstance(event, BulkEnrollAccepted):
        return  # about a BulkEnroll, not this contact: no version, no command id to remember
    state.version = event.version
    at = event.occurred_at
    _remember(state, event.causation_id, at)
    if isinstance(event, ContactEnrolled):
        enrolled = event.data
        state.enrollments[event.enrollment_id or ""] = Enrollment(
            enrollment_id=event.enrollment_id or "",
            campaign_id=event.campaign_id or "",
            sequence=enrolled.sequence,
            campaign_version=enrolled.campaign.version,
            campaign=enrolled.campaign,
            contact=enrolled.contact,
            time_zone=enrolled.time_zone,
            batch_number=enrolled.batch_number,
            priority=enrolled.priority,
            enrolled_at=at,
            enrolled_by=enrolled.enrolled_by,
            enroll_command_id=command_key(event.causation_id),
            bulk_enroll_id=enrolled.bulk_enroll_id,
            stage_entry_id=enrolled.stage_entry.entry_id if enrolled.stage_entry else None,
            application_id=enrolled.stage_entry.application_id if enrolled.stage_entry else None,
            mx_check=enrolled.mx_check,
            version=event.version,
            updated_at=at,
        )
        return
    if isinstance(event, ContactOptedOut):
        state.opted_out = True
        state.opted_out_at = at
        if state.profile is not None and not state.profile.opted_out:
            state.profile = state.profile.model_copy(update={"opted_out": True})
        return
    if isinstance(event, ContactProfileSet):
        state.profile = event.data.profile
        return
    if isinstance(event, EnrollmentSkipped):
        return  # a skip creates no enrollment; the projector records it
    e = state.enrollments.get(event.enrollment_id or "")
    if e is None:
        return  # never produced by decide; ignoring keeps evolve total
    e.version = event.version
    e.updated_at = at
    if isinstance(event, EnrollmentQueued):
        e.status = EnrollmentStatus.QUEUED
        e.queued_behind = event.data.behind_enrollment_id
        _start_wait(e, at, event.data.timeout_at)
    elif isinstance(event, EnrollmentReleased):
        e.status = EnrollmentStatus.PENDING
        e.queued_behind = None
        _end_wait(e)
    elif isinstance(event, TriggerAwaited):
        e.status = EnrollmentStatus.AWAITING_TRIGGER
        _start_wait(e, at, event.data.timeout_at)
    elif isinstance(event, TriggerReceived):
        e.status = EnrollmentStatus.PENDING
        _end_wait(e)
    elif isinstance(event, WaitTimeoutExtended):
        e.wait_timeout_at = event.data.timeout_at
    elif isinstance(event, StepScheduled):
        scheduled = event.data
        e.scheduled = Attempt(
            step_index=scheduled.step_index,
            attempt=scheduled.attempt,
            message_id="",
            dispatch=scheduled.dispatch,
        )
        e.due_at = scheduled.due_at
        e.step_index = scheduled.step_index
    elif isinstance(event, StepDispatched):
        sent = event.data
        e.in_flight = Attempt(
            step_index=sent.step_index,
            attempt=sent.attempt,
            message_id=sent.message_id,
            dispatch=sent.dispatch,
            dispatched_at=at,
        )
        e.scheduled = None
        e.due_at = None
        e.step_index = sent.step_index
        if not e.status.is_terminal:
            e.status = EnrollmentStatus.PROCESSING
    elif isinstance(event, StepDelivered):
        _close_attempt(e)
        e.delivered_steps.append(event.data.step_index)
        e.sent_at = e.sent_at or at
        e.last_sent_at = at
        e.stage = e.stage.advanced_to(Stage.SENT)
        if e.status is EnrollmentStatus.PENDING:
            e.status = EnrollmentStatus.ACTIVE
    elif isinstance(event, StepDeliveryUnknown):
        e.unknown_steps.append(event.data.step_index)
        _close_attempt(e)
    elif isinstance(event, StepFailed | StepDeferred):
        # a deferral's StepScheduled (running enrollments only) follows it
        _close_attempt(e)
    elif isinstance(event, StepBounced):
        _close_attempt(e)
        if event.data.bounce_type == "hard":
            e.stage = Stage.BOUNCED
            e.bounced_at = e.bounced_at or at
            e.bounce_reason = event.data.detail
    elif isinstance(event, ExpiryScheduled):
        expiry = event.data
        e.expires_at = expiry.expires_at
        e.expiry = expiry.expiry
        e.expiry_counted_from = expiry.counted_from or (expiry.expires_at - expiry.expiry - expiry.paused)
    elif isinstance(event, ExpiryCancelled):
        e.expires_at = e.expiry = e.expiry_counted_from = None
    elif isinstance(event, MessageOpened):
        e.opened_at = e.opened_at or at
        e.stage = e.stage.advanced_to(Stage.OPENED)
    elif isinstance(event, ReplyReceived):
        if event.data.inbound_message_id:
            e.reply_keys.append(reply_key(event.data.inbound_message_id))
            del e.reply_keys[:-REPLY_MESSAGE_IDS_KEPT]
        if e.replied_at is None:
            e.replied_at = event.data.replied_at
            e.hours_to_reply = event.data.hours_to_reply
        e.stage = e.stage.advanced_to(Stage.REPLIED)
        if e.outcome is not None:  # a reply after the end still counts as responded (seed 003)
            e.outcome = Outcome.RESPONDED
    elif isinstance(event, MessageBounced):
        if event.data.bounce_type == "hard":
            e.stage = Stage.BOUNCED
            e.bounced_at = e.bounced_at or at
            e.bounce_reason = event.data.detail
    elif isinstance(event, EnrollmentStopped):
        _finish(e, EnrollmentStatus.STOPPED, event.data.outcome, at)
        e.stop_reason = event.data.reason
    elif isinstance(event, EnrollmentCompleted):
        _finish(e, EnrollmentStatus(event.data.status), event.data.outcome, at)
    elif isinstance(event, EnrollmentFailed):
        _finish(e, EnrollmentStatus.FAILED, None, at)
        e.failure_reason = event.data.reason
        e.failure_detail = event.data.detail
    elif isinstance(event, EnrollmentExpired):
        _finish(e, EnrollmentStatus.EXPIRED, event.data.outcome, at)
    elif isinstance(event, EnrollmentHandedOff):
        _finish(e, EnrollmentStatus.HANDED_OFF, event.data.outcome, at)
    elif isinstance(event, EnrollmentUnenrolled):
        _finish(e, EnrollmentStatus.UNENROLLED, event.data.outcome, at)
