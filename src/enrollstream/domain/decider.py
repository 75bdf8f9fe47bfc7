"""decide(command, state) -> Accepted(events) | Rejection: the business rules of the five documents.

Pure: the only inputs are the command (with its time and lookups) and the state. Events are built
one at a time and applied to a private working copy of the state, so each rule sees the effect of
the events before it (versions, the queue release) and `evolve` is exercised on every output.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from . import ids
from .campaign import (
    CampaignDefinition,
    CampaignStatus,
    Channel,
    LineType,
    Model,
    Pause,
    ReEnrollment,
    ReplyAction,
    mx_check_of,
    paused_between,
)
from .commands import (
    BounceDetected,
    BounceType,
    BulkEnroll,
    ContactCommand,
    DeliveryOutcome,
    DeliveryReported,
    Enroll,
    EnrollData,
    EnrollSource,
    ExpiryDue,
    ExternalTrigger,
    MarkFinished,
    OpenDetected,
    OptOut,
    PutContact,
    ReplyDetected,
    StageChanged,
    StageEntry,
    StepDue,
    Stop,
    Unenroll,
    WaitTimeout,
    batch_count,
)
from .events import (
    BulkEnrollAccepted,
    BulkEnrollAcceptedData,
    ContactEnrolled,
    ContactEnrolledData,
    ContactOptedOut,
    ContactOptedOutData,
    ContactProfileSet,
    ContactProfileSetData,
    EnrollmentCompleted,
    EnrollmentCompletedData,
    EnrollmentExpired,
    EnrollmentExpiredData,
    EnrollmentFailed,
    EnrollmentFailedData,
    EnrollmentHandedOff,
    EnrollmentHandedOffData,
    EnrollmentQueued,
    EnrollmentQueuedData,
    EnrollmentReleased,
    EnrollmentReleasedData,
    EnrollmentSkipped,
    EnrollmentSkippedData,
    EnrollmentStopped,
    EnrollmentStoppedData,
    EnrollmentUnenrolled,
    EnrollmentUnenrolledData,
    Event,
    EventEnvelope,
    ExpiryCancelled,
    ExpiryCancelledData,
    ExpiryScheduled,
    ExpiryScheduledData,
    MessageBounced,
    MessageBouncedData,
    MessageOpened,
    MessageOpenedData,
    ReplyReceived,
    ReplyReceivedData,
    RescheduleReason,
    StepBounced,
    StepBouncedData,
    StepDeferred,
    StepDeferredData,
    StepDelivered,
    StepDeliveredData,
    StepDeliveryUnknown,
    StepDeliveryUnknownData,
    StepDispatched,
    StepDispatchedData,
    StepFailed,
    StepFailedData,
    StepScheduled,
    StepScheduledData,
    TriggerAwaited,
    TriggerAwaitedData,
    TriggerReceived,
    TriggerReceivedData,
    WaitTimeoutExtended,
    WaitTimeoutExtendedData,
)
from .rejections import Accepted, Decision, Ignored, Rejection, RejectionCode
from .schedule import due_at, next_opening, resolve_time_zone
from .state import ContactState, Enrollment, apply_in_place, command_key, owned_copy, reply_key
from .statuses import EnrollmentStatus, FailureReason, Outcome, SkipKind, StopReason

E = TypeVar("E", bound=EventEnvelope)


class _Emitter:
    """Builds the events of one decision and keeps a working state up to date with them."""

    def __init__(self, command: ContactCommand, state: ContactState) -> None:
        self.command = command
        self.now: datetime = command.issued_at
        self.state = owned_copy(state)
        self.events: list[Event] = []

    def emit(self, cls: type[E], campaign_id: str | None, enrollment_id: str | None, data: Model) -> E:
        # Validated (in pydantic-core): cheaper than model_construct, whose field loop is Python.
        version = self.state.version + 1
        event = cls.model_validate(
            {
                "event_id": ids.event_id(
                    self.state.account_id, self.state.contact_id, self.command.command_id, version
                ),
                "account_id": self.state.account_id,
                "contact_id": self.state.contact_id,
                "campaign_id": campaign_id,
                "enrollment_id": enrollment_id,
                "version": version,
                "occurred_at": self.now,
                "causation_id": self.command.command_id,
                "data": data,
            }
        )
        self.events.append(cast(Event, event))
        apply_in_place(self.state, cast(Event, event))
        return event

    def on(self, e: Enrollment, cls: type[E], data: Model) -> E:
        return self.emit(cls, e.campaign_id, e.enrollment_id, data)

    def enrollment(self, enrollment_id: str) -> Enrollment:
        return self.state.enrollments[enrollment_id]


_Outcome = Rejection | Ignored | None


def decide(command: ContactCommand | BulkEnroll, state: ContactState) -> Decision:
    return decide_and_fold(command, state)[0]


def decide_and_fold(
    command: ContactCommand | BulkEnroll, state: ContactState
) -> tuple[Decision, ContactState]:
    """The decision and the state after it: `fold(state, events)` when accepted with events (the working
    state the events were applied to as they were emitted, so not folded a second time), else `state`."""
    if isinstance(command, BulkEnroll):
        unsupported = "fan BulkEnroll out with fan_out_bulk_enroll"
        return Rejection(RejectionCode.UNSUPPORTED_COMMAND, unsupported), state
    if command.account_id != state.account_id or command.data.contact_id != state.contact_id:
        return Rejection(RejectionCode.ACCOUNT_MISMATCH, "command is for another account/contact"), state
    if state.has_processed(command.command_id):
        return Accepted([], Ignored.DUPLICATE), state
    for_an_enrollment = not isinstance(command, Enroll | OptOut | PutContact | StageChanged)
    if for_an_enrollment and command.data.enrollment_id not in state.enrollments:  # type: ignore[union-attr]
        return _no_such_enrollment(), state  # as `_handle` would, without copying the state first
    em = _Emitter(command, state)
    outcome = _handle(command, em)
    if isinstance(outcome, Rejection):
        return outcome, state
    if outcome is not None:
        return Accepted([], outcome), state
    _release_queue(em)
    if not em.events:
        return Accepted([], Ignored.STALE), state
    return Accepted(em.events), em.state


def accept_bulk_enroll(command: BulkEnroll) -> Decision:
    """Check a BulkEnroll whose lookups the runtime filled in; accepted, it is one BulkEnrollAccepted
    event and the runtime fans it out with `fan_out_bulk_enroll`. Pure, like decide; it needs no state:
    each child is decided by its contact's aggregate, which drops a redelivered child as a duplicate."""
    d = command.data
    campaign = d.campaign
    if campaign is None or campaign.account_id != command.account_id or campaign.campaign_id != d.campaign_id:
        return Rejection(RejectionCode.CAMPAIGN_NOT_FOUND, f"campaign {d.campaign_id} not found")
    if campaign.status == "archived":
        return Rejection(RejectionCode.CAMPAIGN_ARCHIVED, "archived campaigns take no new enrollments")
    if d.contacts is None:
        return Rejection(
            RejectionCode.CONTACT_IMPORT_NOT_FOUND,
            f"contact import {d.contact_import_id} not found",
            {"contact_import_id": d.contact_import_id},
        )
    accepted = BulkEnrollAccepted(
        event_id=ids.stable_id("bulk-enroll-accepted", command.account_id, command.command_id),
        account_id=command.account_id,
        contact_id="",
        campaign_id=d.campaign_id,
        enrollment_id=None,
        version=1,
        occurred_at=command.issued_at,
        causation_id=command.command_id,
        data=BulkEnrollAcceptedData(
            contact_import_id=d.contact_import_id,
            campaign_version=campaign.version,
            batch_size=d.batch_size,
            batches=batch_count(command),
            contacts=len({c.contact_id for c in d.contacts}),
            requested_by=command.actor,
        ),
    )
    return Accepted([accepted])


def _no_such_enrollment() -> Rejection:
    return Rejection(RejectionCode.ENROLLMENT_NOT_FOUND, "no such enrollment for this contact")


def _handle(command: ContactCommand, em: _Emitter) -> _Outcome:
    if isinstance(command, Enroll):
        return _enroll(command, em)
    if isinstance(command, OptOut):
        return _opt_out(command, em)
    if isinstance(command, PutContact):
        return _put_contact(command, em)
    if isinstance(command, StageChanged):
        return _stage_changed(command, em)
    e = em.state.enrollments.get(command.data.enrollment_id)
    if e is None:
        return _no_such_enrollment()
    if isinstance(command, StepDue):
        return _step_due(command, e, em)
    if isinstance(command, DeliveryReported):
        return _delivery_reported(command, e, em)
    if isinstance(command, ReplyDetected):
        return _reply(command, e, em)
    if isinstance(command, OpenDetected):
        first_open = e.opened_at is None
        opened = MessageOpenedData(
            step_index=command.data.step_index, first_open=first_open, machine=command.data.machine
        )
        em.on(e, MessageOpened, opened)
        return None
    if isinstance(command, BounceDetected):
        return _bounce(command, e, em)
    if isinstance(command, ExternalTrigger):
        return _trigger(command, e, em)
    if isinstance(command, ExpiryDue):
        return _expiry(command, e, em)
    if isinstance(command, WaitTimeout):
        return _wait_timeout(command, e, em)
    return _operator(command, e, em)


# --- Enrollment ---------------------------------------------------------------------------------


def _enroll(cmd: Enroll, em: _Emitter, stage_entry: StageEntry | None = None) -> _Outcome:
    d, st = cmd.data, em.state
    if any(e.enroll_command_id == command_key(cmd.command_id) for e in st.enrollments.values()):
        return Ignored.DUPLICATE  # this Enroll created an enrollment: never again, however long ago
    campaign = d.campaign
    if campaign is None or campaign.account_id != cmd.account_id or campaign.campaign_id != d.campaign_id:
        return Rejection(RejectionCode.CAMPAIGN_NOT_FOUND, f"campaign {d.campaign_id} not found")
    # Inline facts (as before the directory), else the contact's profile in its account's directory.
    contact = d.contact if d.contact is not None else st.profile
    if contact is None and d.bulk_enroll_id is None:
        return Rejection(
            RejectionCode.CONTACT_NOT_FOUND,
            f"contact {d.contact_id} not found in account {cmd.account_id}",
            {"contact_id": d.contact_id},
        )
    if campaign.status == "archived":
        return Rejection(RejectionCode.CAMPAIGN_ARCHIVED, "archived campaigns take no new enrollments")
    latest = st.latest_in(campaign.campaign_id)
    sequence = latest.sequence + 1 if latest else 1
    enrollment_id = ids.enrollment_id(st.account_id, st.contact_id, campaign.campaign_id, sequence)

    def skip(kind: SkipKind, reason: str, **evidence: str) -> None:
        em.emit(
            EnrollmentSkipped,
            campaign.campaign_id,
            enrollment_id,
            EnrollmentSkippedData(
                kind=kind,
                reason=reason,
                evidence=evidence,
                contact=contact,
                campaign_version=campaign.version,
                batch_number=d.batch_number,
                source=d.source,
                contact_import_id=d.contact_import_id,
                bulk_enroll_id=d.bulk_enroll_id,
                stage_entry=stage_entry,
            ),
        )

    if contact is None:
        # A bulk child is reported in its BulkEnroll's summary, so it is skipped rather than refused:
        # a refusal leaves no event, and the summary would wait for it forever.
        skip(SkipKind.CONTACT_NOT_FOUND, "Contact not found", contact_id=d.contact_id)
        return None
    already = latest and (not latest.status.is_terminal or campaign.re_enrollment is ReEnrollment.NEVER)
    if already and not _another_application_waits(campaign, stage_entry, st):
        assert latest is not None
        if d.source is EnrollSource.API:
            return Rejection(
                RejectionCode.CONTACT_ALREADY_ENROLLED,
                "contact is already enrolled in this campaign",
                {"enrollment_id": latest.enrollment_id, "status": latest.status.value},
            )
        skip(
            SkipKind.ALREADY_ENROLLED,
            "Already enrolled in this campaign",
            enrollment_id=latest.enrollment_id,
            status=latest.status.value,
        )
        return None
    if st.opted_out or contact.opted_out:
        skip(SkipKind.OPTED_OUT, "Contact has opted out", source="account" if st.opted_out else "contact")
        return None
    if campaign.unique_contacts and campaign.outreach_id:
        sibling = next(
            (
                e
                for e in st.enrollments.values()
                if e.campaign.outreach_id == campaign.outreach_id and e.campaign_id != campaign.campaign_id
            ),
            None,
        )
        if sibling:
            skip(
                SkipKind.CROSS_CAMPAIGN_DUPLICATE,
                "Already enrolled in another campaign in this outreach",
                outreach_id=campaign.outreach_id,
                sibling_campaign_id=sibling.campaign_id,
                sibling_enrollment_id=sibling.enrollment_id,
            )
            return None
    if campaign.uses(Channel.SMS):
        if not contact.mobile:
            skip(SkipKind.MISSING_ADDRESS, "No mobile number for an SMS step", channel="sms")
            return None
        if contact.line_type is LineType.LANDLINE:
            skip(SkipKind.LANDLINE, "The number is a landline and cannot receive SMS", mobile=contact.mobile)
            return None
    if campaign.uses(Channel.EMAIL):
        if not contact.email:
            skip(SkipKind.MISSING_ADDRESS, "No email address for an email step", channel="email")
            return None
        if campaign.verify_email_mx:
            if d.mx is None:
                return Rejection(RejectionCode.MX_ANSWER_MISSING, "campaign verifies MX: send the MX answer")
            if d.mx.answered and not d.mx.has_mx:
                skip(
                    SkipKind.MX_INVALID,
                    "The email domain has no MX record",
                    domain=d.mx.domain,
                    checked_at=d.mx.checked_at.isoformat(),
                    detail=d.mx.detail,
                )
                return None

    em.emit(
        ContactEnrolled,
        campaign.campaign_id,
        enrollment_id,
        ContactEnrolledData(
            campaign=campaign,
            contact=contact,
            mx=d.mx,
            sequence=sequence,
            batch_number=d.batch_number,
            priority=d.priority,
            source=d.source,
            contact_import_id=d.contact_import_id,
            bulk_enroll_id=d.bulk_enroll_id,
            stage_entry=stage_entry,
            time_zone=resolve_time_zone(contact.time_zone, campaign.time_zone),
            enrolled_by=cmd.actor,
            mx_check=mx_check_of(campaign, d.mx),
        ),
    )
    e = em.enrollment(enrollment_id)
    # Seed 002 "queued due to another campaign currently in progress": only a campaign that queues too,
    # in the same queue group, holds it back; parallel campaigns neither wait nor are waited for.
    # An enrollment of the same campaign in progress holds it back too (only a stage change's enrollment
    # for another application can meet one: `_another_application_waits`).
    ahead = [
        o
        for o in st.in_progress()
        if o.enrollment_id != enrollment_id
        and (o.campaign_id == campaign.campaign_id or campaign.queues_with(o.campaign))
    ]
    if ahead:
        timeout = campaign.queue_timeout
        em.on(
            e,
            EnrollmentQueued,
            EnrollmentQueuedData(
                behind_enrollment_id=ahead[0].enrollment_id,
                behind_campaign_id=ahead[0].campaign_id,
                timeout_at=em.now + timeout if timeout else None,
            ),
        )
        return None
    _start(e, em)
    return None


def _another_application_waits(
    campaign: CampaignDefinition, entry: StageEntry | None, st: ContactState
) -> bool:
    """Seed 002: "a candidate submits a second application before completing the first ... Once the
    candidate completes the first application, the queued campaign from the second application is
    delivered." A stage change of another application into a stage linked to a campaign the candidate
    is still in enrols again, queued behind it, when the campaign may be sent again once finished
    (`after_finished`); the same application, or a campaign sent only once (`never`), is a skip."""
    if entry is None or campaign.re_enrollment is not ReEnrollment.AFTER_FINISHED:
        return False
    running = [e for e in st.enrollments_in(campaign.campaign_id) if not e.status.is_terminal]
    return bool(running) and all(e.application_id != entry.application_id for e in running)


def _stage_changed(cmd: StageChanged, em: _Emitter) -> _Outcome:
    """Seed 002: "When an application is created or moved into a job stage linked to a campaign, an
    enrolment is automatically created for that campaign." Each campaign of the account linked to the
    stage enrols the contact as an Enroll would (source stage_change: the queue rule, the re-enrollment
    policy, opt-out and the address checks are Enroll's; an already-enrolled contact is a skip), once
    per stage entry: an entry that enrolled into a campaign never does again, whatever the command id."""
    d, st = cmd.data, em.state
    # The runtime fills in the account's linked campaigns; checked again here, so another account's
    # campaign or one not linked to this very stage can never enrol anyone.
    linked = [
        c
        for c in d.campaigns or []
        if c.account_id == cmd.account_id and c.enrols_from(d.pipeline_id, d.stage_id)
    ]
    stage = {"pipeline_id": d.pipeline_id, "stage_id": d.stage_id}
    if not linked:
        return Rejection(
            RejectionCode.STAGE_NOT_LINKED,
            f"no campaign of account {cmd.account_id} enrols from stage {d.stage_id} "
            f"of pipeline {d.pipeline_id}",
            stage,
        )
    open_for_enrollment = [c for c in linked if c.status is not CampaignStatus.ARCHIVED]
    if not open_for_enrollment:
        return Rejection(RejectionCode.CAMPAIGN_ARCHIVED, "archived campaigns take no new enrollments", stage)
    if d.contact is None and st.profile is None:
        return Rejection(
            RejectionCode.CONTACT_NOT_FOUND,
            f"contact {d.contact_id} not found in account {cmd.account_id}",
            {"contact_id": d.contact_id},
        )
    entry = d.entry
    entry_id = entry.entry_id
    fresh = [
        c
        for c in sorted(open_for_enrollment, key=lambda c: c.campaign_id)
        if not any(e.stage_entry_id == entry_id for e in st.enrollments_in(c.campaign_id))
    ]
    if not fresh:
        return Ignored.DUPLICATE  # this entry enrolled into every linked campaign before
    for campaign in fresh:
        enroll = Enroll(
            command_id=f"stage-entry:{ids.stable_id(entry_id, campaign.campaign_id)}",
            account_id=cmd.account_id,
            issued_at=cmd.issued_at,
            actor=cmd.actor,
            data=EnrollData(
                contact_id=d.contact_id,
                campaign_id=campaign.campaign_id,
                campaign=campaign,
                contact=d.contact,
                mx=d.mx,
                source=EnrollSource.STAGE_CHANGE,
            ),
        )
        outcome = _enroll(enroll, em, stage_entry=entry)
        if outcome is not None:
            return outcome  # a refusal (e.g. mx_answer_missing) refuses the whole stage change
    return None


def _start(e: Enrollment, em: _Emitter) -> None:
    """First move of a running enrollment: wait for the trigger (Auto-Match) or schedule step 1."""
    if e.campaign.awaits_trigger:
        timeout = e.campaign.trigger_timeout
        em.on(e, TriggerAwaited, TriggerAwaitedData(timeout_at=em.now + timeout if timeout else None))
    else:
        _schedule(e, 0, 1, em.now + e.campaign.steps[0].delay, em)


def _holds_back(in_progress: Enrollment, queued: Enrollment) -> bool:
    return in_progress.campaign_id == queued.campaign_id or in_progress.campaign.queues_with(queued.campaign)


def _release_queue(em: _Emitter) -> None:
    """A queued enrollment waits while an enrollment of its queue group (or of its own campaign) is in
    progress; release the oldest of each group that has none (the released one is then in progress and
    holds the rest)."""
    st = em.state
    for e in st.queued():
        if e.status is not EnrollmentStatus.QUEUED:
            continue
        if any(
            o.campaign_id == e.campaign_id or o.campaign.queues_with(e.campaign) for o in st.in_progress()
        ):
            continue
        em.on(e, EnrollmentReleased, EnrollmentReleasedData(after_enrollment_id=e.queued_behind))
        _start(em.enrollment(e.enrollment_id), em)


# --- Steps --------------------------------------------------------------------------------------


def _ref(e: Enrollment, step_index: int, attempt: int) -> dict[str, Any]:
    return {"step_index": step_index, "attempt": attempt, "step_count": e.step_count}


def _schedule(
    e: Enrollment,
    step_index: int,
    attempt: int,
    requested: datetime,
    em: _Emitter,
    *,
    dispatch: int = 1,
    rescheduled: RescheduleReason | None = None,
) -> None:
    step = e.campaign.steps[step_index]
    em.on(
        e,
        StepScheduled,
        StepScheduledData(
            **_ref(e, step_index, attempt),
            due_at=due_at(requested, timedelta(0), step.window, e.time_zone),
            requested_at=requested,
            channel=step.channel,
            dispatch=dispatch,
            rescheduled=rescheduled,
        ),
    )


def _step_due(cmd: StepDue, e: Enrollment, em: _Emitter) -> _Outcome:
    d = cmd.data
    current = e.scheduled
    if (
        e.status.is_terminal
        or current is None
        or (current.step_index, current.attempt)
        != (
            d.step_index,
            d.attempt,
        )
    ):
        return Ignored.STALE
    # Paused: nothing is skipped; the scheduler fires the same StepDue again after resume.
    if d.campaign_status == "paused" or (e.due_at is not None and em.now < e.due_at):
        return Ignored.DEFERRED
    step = e.campaign.steps[d.step_index]
    # The window is checked again at fire time: a step that becomes sendable late (after a pause, a
    # backlog, a deferral, a scheduler outage) waits for the next opening instead of going out at night.
    if next_opening(em.now, step.window, e.time_zone) > em.now:
        _schedule(
            e,
            d.step_index,
            d.attempt,
            em.now,
            em,
            dispatch=current.dispatch,
            rescheduled=RescheduleReason.OUTSIDE_WINDOW,
        )
        return None
    to = (e.contact.email if step.channel is Channel.EMAIL else e.contact.mobile) or ""
    em.on(
        e,
        StepDispatched,
        StepDispatchedData(
            **_ref(e, d.step_index, d.attempt),
            message_id=ids.message_id(e.enrollment_id, d.step_index, d.attempt),
            channel=step.channel,
            to=to,
            content=step.content,
            contact_name=e.contact.name,
            dispatch=current.dispatch,
            track_opens=step.channel is Channel.EMAIL and e.campaign.track_opens,
        ),
    )
    return None


def _responded_or(e: Enrollment, otherwise: Outcome) -> Outcome:
    return Outcome.RESPONDED if e.replied_at is not None else otherwise


def _delivery_reported(cmd: DeliveryReported, e: Enrollment, em: _Emitter) -> _Outcome:
    d = cmd.data
    attempt = e.in_flight
    if attempt is None or (attempt.step_index, attempt.attempt, attempt.dispatch) != (
        d.step_index,
        d.attempt,
        d.dispatch,
    ):
        return Ignored.STALE  # a second report for the same dispatch, or for another one
    running = not e.status.is_terminal  # ended while processing: record the outcome, go no further
    ref = _ref(e, d.step_index, d.attempt)
    if d.outcome is DeliveryOutcome.DEFERRED:
        _deferred(cmd, e, running, em)
        return None
    can_retry = running and d.attempt < e.campaign.max_attempts
    eid = e.enrollment_id
    if d.outcome is DeliveryOutcome.SENT:
        em.on(
            e,
            StepDelivered,
            StepDeliveredData(
                **ref,
                message_id=attempt.message_id,
                provider_message_id=d.provider_message_id,
                detail=d.detail,
            ),
        )
        if running:
            _after_delivery(em.enrollment(eid), d.step_index, em)
    elif d.outcome is DeliveryOutcome.UNKNOWN:
        # Maybe sent: never resent automatically, so the sequence carries on as if it went out.
        em.on(e, StepDeliveryUnknown, StepDeliveryUnknownData(**ref, detail=d.detail))
        if running:
            _after_delivery(em.enrollment(eid), d.step_index, em)
    elif d.outcome is DeliveryOutcome.INVALID_RECIPIENT:
        # Nothing was sent and no attempt can succeed: the contact's address is the problem (seed 002
        # "Failed ... most likely an invalid phone number"), so the enrollment fails, reason kept.
        em.on(e, StepFailed, StepFailedData(**ref, retryable=False, will_retry=False, detail=d.detail))
        if running:
            _fail(em.enrollment(eid), d.step_index, FailureReason.INVALID_RECIPIENT, d.detail, em)
    elif d.outcome in (DeliveryOutcome.FAILED, DeliveryOutcome.ERROR):
        will_retry = can_retry and d.retryable
        em.on(
            e,
            StepFailed,
            StepFailedData(**ref, retryable=d.retryable, will_retry=will_retry, detail=d.detail),
        )
        e = em.enrollment(eid)
        if d.outcome is DeliveryOutcome.ERROR and running and not will_retry:
            # Our side failed, not the contact's provider: seed 000 shows Stopped, reason Error.
            _end_stopped(e, StopReason.ERROR, em, note=d.detail)
        else:
            _retry_or_fail(e, d.step_index, d.attempt, will_retry, running, d.detail, em)
    else:
        hard = (d.bounce_type or BounceType.HARD) is BounceType.HARD
        will_retry = can_retry and not hard
        em.on(
            e,
            StepBounced,
            StepBouncedData(
                **ref,
                bounce_type=BounceType.HARD if hard else BounceType.SOFT,
                will_retry=will_retry,
                detail=d.detail,
            ),
        )
        e = em.enrollment(eid)
        if hard and running:
            # A 5xx on the recipient (seed 001: the stage is bounced): the contact's provider refused
            # for good, so the enrollment failed (seeds 002, 003), not stopped.
            _fail(e, d.step_index, FailureReason.BOUNCED, d.detail, em)
        elif not hard:
            _retry_or_fail(e, d.step_index, d.attempt, will_retry, running, d.detail, em)
    return None


_TICK = timedelta(microseconds=1)  # the resolution of the due times in StepDue ids


def _deferred(cmd: DeliveryReported, e: Enrollment, running: bool, em: _Emitter) -> None:
    """Nothing was sent or started: the same attempt goes again once the sender may send (and its
    window is open), as a new dispatch; it is not an attempt. After an ending nothing goes again."""
    d = cmd.data
    retry_at = d.retry_at or em.now  # the model requires retry_at for a deferral
    # Never before the report, and strictly after the dispatch (itself at or after the due time it
    # fired for): the StepDue id names the due time, so the next firing must be a new command even
    # when the dispatcher's clock runs behind the scheduler's.
    again = max(retry_at, em.now)
    dispatched_at = e.in_flight.dispatched_at if e.in_flight else None
    if dispatched_at is not None and again <= dispatched_at:
        again = dispatched_at + _TICK
    em.on(
        e,
        StepDeferred,
        StepDeferredData(
            **_ref(e, d.step_index, d.attempt),
            dispatch=d.dispatch,
            retry_at=retry_at,
            detail=d.detail,
            will_retry=running,
        ),
    )
    if running:
        _schedule(
            em.enrollment(e.enrollment_id),
            d.step_index,
            d.attempt,
            again,
            em,
            dispatch=d.dispatch + 1,
            rescheduled=RescheduleReason.DEFERRED,
        )


def _retry_or_fail(
    e: Enrollment, step_index: int, attempt: int, will_retry: bool, running: bool, detail: str, em: _Emitter
) -> None:
    if will_retry:
        _schedule(e, step_index, attempt + 1, em.now + e.campaign.retry_delay * attempt, em)
    elif running:
        _fail(e, step_index, FailureReason.UNDELIVERABLE, detail, em)


def _fail(e: Enrollment, step_index: int | None, reason: FailureReason, detail: str, em: _Emitter) -> None:
    em.on(e, EnrollmentFailed, EnrollmentFailedData(step_index=step_index, detail=detail, reason=reason))


def _after_delivery(e: Enrollment, step_index: int, em: _Emitter) -> None:
    if e.is_blast:  # seed 002: for blasts, Delivered is a terminal status
        em.on(
            e,
            EnrollmentCompleted,
            EnrollmentCompletedData(
                status=EnrollmentStatus.DELIVERED, outcome=_responded_or(e, Outcome.NO_RESPONSE)
            ),
        )
        return
    expiry = e.campaign.expiry
    if e.expires_at is None and expiry is not None:  # seed 002: expires N days after delivery
        em.on(
            e,
            ExpiryScheduled,
            ExpiryScheduledData(expires_at=em.now + expiry, expiry=expiry, counted_from=em.now),
        )
    following = step_index + 1
    if following >= e.step_count:
        em.on(
            e,
            EnrollmentCompleted,
            EnrollmentCompletedData(
                status=EnrollmentStatus.COMPLETED, outcome=_responded_or(e, Outcome.NO_RESPONSE)
            ),
        )
        return
    _schedule(e, following, 1, em.now + e.campaign.steps[following].delay, em)


# --- Signals ------------------------------------------------------------------------------------


def _reply(cmd: ReplyDetected, e: Enrollment, em: _Emitter) -> _Outcome:
    message = cmd.data.inbound_message_id
    if message and reply_key(message) in e.reply_keys:
        return Ignored.DUPLICATE  # this very email was recorded as a reply, however long ago
    replied_at = cmd.data.replied_at or em.now
    # Seed 001 hours_to_reply: from the first delivery; never negative if clocks disagree.
    hours = round(max((replied_at - e.sent_at).total_seconds(), 0) / 3600, 2) if e.sent_at else None
    action = e.campaign.reply_action
    running = not e.status.is_terminal
    em.on(
        e,
        ReplyReceived,
        ReplyReceivedData(
            replied_at=replied_at,
            hours_to_reply=hours,
            reply_action=action,
            first_reply=e.replied_at is None,
            inbound_message_id=cmd.data.inbound_message_id,
            excerpt=cmd.data.excerpt,
        ),
    )
    e = em.enrollment(e.enrollment_id)
    if running and action is ReplyAction.STOP:
        _end_stopped(e, StopReason.REPLIED, em)
    elif running and action is ReplyAction.HANDOFF:
        em.on(
            e,
            EnrollmentHandedOff,
            EnrollmentHandedOffData(outcome=Outcome.RESPONDED, step_in_flight=e.in_flight is not None),
        )
    return None


def _bounce(cmd: BounceDetected, e: Enrollment, em: _Emitter) -> _Outcome:
    d = cmd.data
    em.on(
        e,
        MessageBounced,
        MessageBouncedData(bounce_type=d.bounce_type, step_index=d.step_index, detail=d.detail),
    )
    e = em.enrollment(e.enrollment_id)
    if d.bounce_type is BounceType.HARD and not e.status.is_terminal:
        # A hard bounce learned later (a provider webhook, an SMS gateway's "invalid number") is the
        # same permanent recipient failure as a 5xx at send time: failed, reason kept.
        _fail(e, d.step_index, FailureReason.BOUNCED, d.detail, em)
    return None


def _opt_out(cmd: OptOut, em: _Emitter) -> _Outcome:
    if em.state.opted_out and not _running(em):
        return Ignored.STALE
    _opt_out_contact(em, cmd.data.channel, cmd.data.detail)
    return None


def _running(em: _Emitter) -> list[Enrollment]:
    return [e for e in em.state.enrollments.values() if not e.status.is_terminal]


def _opt_out_contact(em: _Emitter, channel: str | None, detail: str) -> None:
    """Account-wide: the contact is opted out (once) and every enrollment that has not finished stops."""
    if not em.state.opted_out:
        em.emit(ContactOptedOut, None, None, ContactOptedOutData(channel=channel, detail=detail))
    for e in _running(em):
        _end_stopped(em.enrollment(e.enrollment_id), StopReason.OPTED_OUT, em, note=detail)


PROFILE_OPT_OUT_DETAIL = "opted out in the contact's profile (PutContact)"


def _put_contact(cmd: PutContact, em: _Emitter) -> _Outcome:
    """The profile replaces the one before. Opt-out agrees with OptOut: `opted_out: true` opts the contact
    out (its running enrollments stop, reason opted_out); `false` never re-subscribes a contact that opted
    out, whose profile keeps `opted_out: true`."""
    profile = cmd.data.facts()
    if em.state.opted_out and not profile.opted_out:
        profile = profile.model_copy(update={"opted_out": True})
    em.emit(ContactProfileSet, None, None, ContactProfileSetData(profile=profile))
    if cmd.data.opted_out:
        _opt_out_contact(em, "profile", PROFILE_OPT_OUT_DETAIL)
    return None


def _trigger(cmd: ExternalTrigger, e: Enrollment, em: _Emitter) -> _Outcome:
    if e.status is not EnrollmentStatus.AWAITING_TRIGGER:
        return Ignored.STALE
    em.on(e, TriggerReceived, TriggerReceivedData(trigger=cmd.data.trigger, detail=cmd.data.detail))
    e = em.enrollment(e.enrollment_id)
    _schedule(e, 0, 1, em.now + e.campaign.steps[0].delay, em)
    return None


def _expiry(cmd: ExpiryDue, e: Enrollment, em: _Emitter) -> _Outcome:
    if e.status.is_terminal or e.expires_at is None:
        return Ignored.STALE
    expiry = e.campaign.expiry
    if expiry is None:  # scheduled under the old 7-day default for every sequence; the definition has none
        em.on(
            e,
            ExpiryCancelled,
            ExpiryCancelledData(expires_at=e.expires_at, reason="the campaign's definition sets no expiry"),
        )
        return None
    expiry = e.expiry or expiry
    counted_from = e.expiry_counted_from or e.expires_at - expiry
    deadline, paused = _not_counting_pauses(counted_from, expiry, cmd.data.campaign_pauses, em.now)
    if em.now < deadline:
        if deadline <= e.expires_at:
            return Ignored.DEFERRED
        em.on(
            e,
            ExpiryScheduled,
            ExpiryScheduledData(expires_at=deadline, expiry=expiry, counted_from=counted_from, paused=paused),
        )
        return None
    em.on(
        e,
        EnrollmentExpired,
        EnrollmentExpiredData(
            expires_at=e.expires_at,
            outcome=_responded_or(e, Outcome.NO_RESPONSE),
            step_in_flight=e.in_flight is not None,
        ),
    )
    return None


def _not_counting_pauses(
    start: datetime, length: timedelta, pauses: list[Pause], now: datetime
) -> tuple[datetime, timedelta]:
    """When a clock of `length` started at `start` runs out if the campaign's paused time up to `now`
    does not count, and that paused time."""
    paused = paused_between(pauses, start, now)
    return start + length + paused, paused


_WAITS = {
    EnrollmentStatus.AWAITING_TRIGGER: "waited for the trigger longer than the campaign's trigger_timeout",
    EnrollmentStatus.QUEUED: "waited in the queue longer than the campaign's queue_timeout",
}


def _wait_timeout(cmd: WaitTimeout, e: Enrollment, em: _Emitter) -> _Outcome:
    if e.status not in _WAITS or e.wait_timeout_at is None:
        return Ignored.STALE
    deadline, paused = e.wait_timeout_at, timedelta(0)
    if e.wait_started_at is not None and e.wait_timeout is not None:
        deadline, paused = _not_counting_pauses(
            e.wait_started_at, e.wait_timeout, cmd.data.campaign_pauses, em.now
        )
    if em.now < deadline:
        if deadline <= e.wait_timeout_at:
            return Ignored.DEFERRED
        em.on(e, WaitTimeoutExtended, WaitTimeoutExtendedData(timeout_at=deadline, paused=paused))
        return None
    _end_stopped(e, StopReason.TIMEOUT, em, note=_WAITS[e.status])
    return None


# --- Operator actions ---------------------------------------------------------------------------


def _end_stopped(e: Enrollment, reason: StopReason, em: _Emitter, note: str = "") -> None:
    em.on(
        e,
        EnrollmentStopped,
        EnrollmentStoppedData(
            reason=reason,
            outcome=Outcome.RESPONDED if reason is StopReason.REPLIED else _responded_or(e, Outcome.STOPPED),
            note=note,
            step_in_flight=e.in_flight is not None,
        ),
    )


def _operator(cmd: Stop | Unenroll | MarkFinished, e: Enrollment, em: _Emitter) -> _Outcome:
    if e.status.is_terminal:  # seed 000: stopping or unenrolling is irreversible
        return Rejection(
            RejectionCode.INVALID_TRANSITION,
            f"enrollment is {e.status.value}; {cmd.type.split('.')[0]} needs one that has not finished",
            {"enrollment_id": e.enrollment_id, "status": e.status.value},
        )
    note = cmd.data.note
    if isinstance(cmd, Stop):
        _end_stopped(e, StopReason.MANUAL, em, note=note)
    elif isinstance(cmd, MarkFinished):
        _end_stopped(e, StopReason.MARKED_FINISHED, em, note=note)
    else:
        em.on(
            e,
            EnrollmentUnenrolled,
            EnrollmentUnenrolledData(
                outcome=_responded_or(e, Outcome.STOPPED), note=note, step_in_flight=e.in_flight is not None
            ),
        )
    return None
