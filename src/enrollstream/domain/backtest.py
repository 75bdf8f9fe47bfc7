"""The backtest's simulation: one contact's recorded inputs re-decided under a campaign definition, with
the scheduler and the dispatcher simulated around the pure decider (docs/time-travel.md "Backtest").

Pure like the decider (no I/O, no clock): the runtime reads the commands topic and hands each contact's
inputs here. Why not replay the recorded commands as they are: the recorded StepDue (and ExpiryDue,
WaitTimeout) were fired at the due times the OLD definition scheduled, so under a changed definition they
would be stale or early. They are dropped, and timers are fired at the due times the simulated decider's
own events schedule, as the scheduler would (`StepScheduled.due_at`, `ExpiryScheduled.expires_at`,
`TriggerAwaited` / `EnrollmentQueued` / `WaitTimeoutExtended` `.timeout_at`). A dispatched step is
reported at once with the outcome recorded for the same step and attempt of the same enrollment (the
dispatcher's `DeliveryReported`), else `sent`. The external inputs (Enroll, PutContact, OptOut,
ReplyDetected, OpenDetected, BounceDetected, ExternalTrigger, Stop, Unenroll, MarkFinished) are decided at
their recorded `issued_at`. Both definitions go through this same function, so the comparison is the
simulation against itself, apples to apples, not the simulation against what was recorded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .campaign import CampaignDefinition, MxAnswer
from .commands import (
    BounceDetected,
    ContactCommand,
    DeliveryOutcome,
    DeliveryReported,
    DeliveryReportedData,
    Enroll,
    ExpiryDue,
    ExternalTrigger,
    MarkFinished,
    OpenDetected,
    OptOut,
    PutContact,
    ReplyDetected,
    StepDue,
    StepDueData,
    Stop,
    TimerData,
    Unenroll,
    WaitTimeout,
    delivery_report_command_id,
    step_due_command_id,
    timer_command_id,
)
from .decider import decide
from .events import (
    ContactEnrolled,
    ContactOptedOut,
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
    ReplyReceived,
    StepBounced,
    StepDeliveryUnknown,
    StepDispatched,
    StepFailed,
    StepScheduled,
    TriggerAwaited,
    TriggerReceived,
    WaitTimeoutExtended,
)
from .rejections import Accepted, Ignored, Rejection
from .state import fold, initial_state

# The recorded inputs a backtest re-decides. The timers (StepDue, ExpiryDue, WaitTimeout) and the
# dispatcher's reports (DeliveryReported) are the simulation's own; BulkEnroll is fanned out by the caller.
EXTERNAL_INPUTS: tuple[type[ContactCommand], ...] = (
    Enroll,
    PutContact,
    OptOut,
    ReplyDetected,
    OpenDetected,
    BounceDetected,
    ExternalTrigger,
    Stop,
    Unenroll,
    MarkFinished,
)
# A bound on one contact's decisions: every loop consumes an input or a timer and a timer is only set
# again by a later due time or a bounded retry, so this is never reached by a sane definition; reached,
# the contact is reported `truncated` instead of spinning.
MAX_DECISIONS_PER_CONTACT = 10_000
# What a report counts, in this order: "sent" is a step handed to the dispatcher (StepDispatched), whatever
# its outcome; "delivered", "bounced", "step_failures", "unknown" are the outcomes; "failed", "stopped",
# "completed", "expired", "unenrolled", "handed_off" are endings; "still_due": a step due after the range.
METRICS = ("enrolled", "skipped", "refused", "queued", "sent", "delivered", "bounced", "step_failures",
           "unknown", "replied", "opted_out", "stopped", "completed", "expired", "failed", "unenrolled",
           "handed_off", "still_due")  # fmt: skip

Outcomes = Mapping[tuple[str, int, int], DeliveryReportedData]


@dataclass(frozen=True, order=True)
class Happening:
    """One line of a simulated timeline: what happened to the contact in the campaign, and when."""

    at: datetime
    what: str


@dataclass
class ContactRun:
    """One contact's simulated timeline under one definition, and its counts (`METRICS`)."""

    contact_id: str
    timeline: list[Happening] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    truncated: bool = False


def recorded_outcomes(
    reports: Iterable[DeliveryReported],
) -> dict[tuple[str, int, int], DeliveryReportedData]:
    """The first final outcome recorded per (enrollment, step, attempt); deferrals are left out (a rate
    limit of the past says nothing about a send at another time)."""
    found: dict[tuple[str, int, int], DeliveryReportedData] = {}
    for report in reports:
        d = report.data
        if d.outcome is not DeliveryOutcome.DEFERRED:
            found.setdefault((d.enrollment_id, d.step_index, d.attempt), d)
    return found


@dataclass(order=True)
class _Timer:
    due: datetime
    order: int  # a step before an expiry before a wait timeout due at the same time, as the scheduler
    enrollment_id: str = field(compare=False)
    kind: str = field(compare=False)
    step_index: int = field(default=0, compare=False)
    attempt: int = field(default=1, compare=False)


_ORDER = {"step": 0, "expiry": 1, "wait": 2}
_ENDINGS = (EnrollmentStopped, EnrollmentCompleted, EnrollmentFailed, EnrollmentExpired, EnrollmentHandedOff,
            EnrollmentUnenrolled)  # fmt: skip


def simulate_contact(
    account_id: str,
    contact_id: str,
    campaign: CampaignDefinition,
    inputs: Sequence[ContactCommand],
    outcomes: Outcomes,
    until: datetime,
    max_decisions: int = MAX_DECISIONS_PER_CONTACT,
) -> ContactRun:
    """Decide `inputs` (one contact's recorded external inputs, in any order; sorted here by `issued_at`,
    stably) under `campaign`, firing timers and reporting dispatches as the scheduler and dispatcher
    would, up to `until`. Only enrollments into `campaign` are simulated: an Enroll into another
    campaign is left out (so cross-campaign rules, the queue and `unique_contacts`, see none). Timers
    due after `until` end the run as `still_due`. An input and a timer at the same instant: the input
    first (it was recorded before the scheduler could fire)."""
    run = ContactRun(contact_id)
    state = initial_state(account_id, contact_id)
    pending = sorted(
        (c for c in inputs if isinstance(c, EXTERNAL_INPUTS) and _in_campaign(c, campaign)),
        key=lambda c: c.issued_at,
    )
    timers: dict[tuple[str, str], _Timer] = {}
    reports: list[DeliveryReported] = []
    held: list[_Timer] = []
    next_input = 0
    for _ in range(max_decisions):
        timer = min(timers.values(), default=None)
        command: ContactCommand
        if reports:
            command = reports.pop(0)
        elif (
            next_input < len(pending)
            and pending[next_input].issued_at <= until
            and (timer is None or pending[next_input].issued_at <= timer.due)
        ):
            command = _with_lookups(pending[next_input], campaign)
            next_input += 1
        elif timer is not None and timer.due <= until:
            del timers[(timer.enrollment_id, timer.kind)]
            command = _fire(account_id, contact_id, campaign, timer)
        else:
            break
        decision = decide(command, state)
        if isinstance(decision, Rejection):
            if isinstance(command, Enroll):
                run.timeline.append(Happening(command.issued_at, f"refused: {decision.code}"))
                run.counts["refused"] += 1
            continue
        assert isinstance(decision, Accepted)
        if decision.ignored is Ignored.DEFERRED and isinstance(command, StepDue):
            # A paused definition: the scheduler would fire it again after a resume the backtest cannot
            # know of; it stays due, as the Enrollments page would show it (Overdue).
            assert timer is not None  # a StepDue is only ever a fired timer here
            held.append(timer)
        if not decision.events:
            continue
        state = fold(state, decision.events)
        for event in decision.events:
            _record(run, event)
            _track(event, timers, reports, outcomes, account_id, contact_id, command.issued_at)
    else:
        run.truncated = True
    for timer in held:
        run.timeline.append(Happening(timer.due, f"step {timer.step_index + 1} held: campaign paused"))
        run.counts["still_due"] += 1
    for timer in sorted(timers.values()):
        if timer.kind == "step":
            run.timeline.append(Happening(timer.due, f"step {timer.step_index + 1} due after the range"))
            run.counts["still_due"] += 1
    return run


def _in_campaign(command: ContactCommand, campaign: CampaignDefinition) -> bool:
    return not isinstance(command, Enroll) or command.data.campaign_id == campaign.campaign_id


def _with_lookups(command: ContactCommand, campaign: CampaignDefinition) -> ContactCommand:
    """An Enroll with the runtime's lookups as the backtest makes them: the definition under test, and for
    a campaign that verifies MX an answer that DNS did not give (enrolled unverified): DNS is not asked
    again, so the MX skip is not part of a backtest."""
    if not isinstance(command, Enroll):
        return command
    mx = None
    if campaign.verify_email_mx:
        contact = command.data.contact
        email = contact.email if contact is not None else None
        domain = email.rpartition("@")[2] if email else ""
        mx = MxAnswer(domain=domain, has_mx=False, checked_at=command.issued_at, answered=False,
                      detail="backtest: not looked up")  # fmt: skip
    data = command.data.model_copy(update={"campaign": campaign, "mx": mx})
    return command.model_copy(update={"data": data})


def _fire(account_id: str, contact_id: str, campaign: CampaignDefinition, timer: _Timer) -> ContactCommand:
    eid = timer.enrollment_id
    if timer.kind == "step":
        return StepDue(
            command_id=step_due_command_id(eid, timer.step_index, timer.attempt, timer.due),
            account_id=account_id,
            issued_at=timer.due,
            actor="scheduler",
            data=StepDueData(
                contact_id=contact_id,
                enrollment_id=eid,
                step_index=timer.step_index,
                attempt=timer.attempt,
                campaign_status=campaign.status,
            ),
        )
    data = TimerData(contact_id=contact_id, enrollment_id=eid, campaign_pauses=campaign.pauses)
    if timer.kind == "expiry":
        return ExpiryDue(command_id=timer_command_id("expiry", eid, timer.due), account_id=account_id,
                         issued_at=timer.due, actor="scheduler", data=data)  # fmt: skip
    return WaitTimeout(command_id=timer_command_id("wait-timeout", eid, timer.due), account_id=account_id,
                       issued_at=timer.due, actor="scheduler", data=data)  # fmt: skip


def _set(timers: dict[tuple[str, str], _Timer], eid: str, kind: str, due: datetime, **step: int) -> None:
    timers[(eid, kind)] = _Timer(due, _ORDER[kind], eid, kind, **step)


def _track(
    event: Event,
    timers: dict[tuple[str, str], _Timer],
    reports: list[DeliveryReported],
    outcomes: Outcomes,
    account_id: str,
    contact_id: str,
    now: datetime,
) -> None:
    """What the scheduler and the dispatcher do with an event: set or clear timers, send a step."""
    eid = event.enrollment_id or ""
    if isinstance(event, StepScheduled):
        due = event.data
        _set(timers, eid, "step", due.due_at, step_index=due.step_index, attempt=due.attempt)
    elif isinstance(event, StepDispatched):
        timers.pop((eid, "step"), None)
        d = event.data
        recorded = outcomes.get((eid, d.step_index, d.attempt))
        outcome = (
            recorded.model_copy(update={"dispatch": d.dispatch})
            if recorded is not None
            else DeliveryReportedData(contact_id=contact_id, enrollment_id=eid, step_index=d.step_index,
                                      attempt=d.attempt, dispatch=d.dispatch, outcome=DeliveryOutcome.SENT)
        )  # fmt: skip
        reports.append(
            DeliveryReported(
                command_id=delivery_report_command_id(d.message_id),
                account_id=account_id,
                issued_at=now,
                actor="dispatcher",
                data=outcome,
            )
        )
    elif isinstance(event, ExpiryScheduled):
        _set(timers, eid, "expiry", event.data.expires_at)
    elif isinstance(event, ExpiryCancelled):
        timers.pop((eid, "expiry"), None)
    elif isinstance(event, TriggerAwaited | EnrollmentQueued | WaitTimeoutExtended):
        if event.data.timeout_at is not None:
            _set(timers, eid, "wait", event.data.timeout_at)
    elif isinstance(event, TriggerReceived | EnrollmentReleased):
        timers.pop((eid, "wait"), None)
    elif isinstance(event, _ENDINGS):
        for kind in _ORDER:
            timers.pop((eid, kind), None)


def _record(run: ContactRun, event: Event) -> None:
    """The event as a line of the timeline (steps numbered from 1, as the console shows them)."""
    at, counts = event.occurred_at, run.counts
    line: str | None = None
    if isinstance(event, ContactEnrolled):
        line, metric = "enrolled", "enrolled"
    elif isinstance(event, EnrollmentSkipped):
        line, metric = f"skipped: {event.data.kind}", "skipped"
    elif isinstance(event, StepDispatched):
        attempt = f" (attempt {event.data.attempt})" if event.data.attempt > 1 else ""
        line, metric = f"sent step {event.data.step_index + 1}{attempt}", "sent"
    elif isinstance(event, StepBounced):
        line, metric = f"bounced step {event.data.step_index + 1}", "bounced"
    elif isinstance(event, StepFailed):
        line, metric = f"failed step {event.data.step_index + 1}", "step_failures"
    elif isinstance(event, StepDeliveryUnknown):
        line, metric = f"unknown delivery of step {event.data.step_index + 1}", "unknown"
    elif isinstance(event, ReplyReceived):
        line, metric = "replied", "replied"
    elif isinstance(event, EnrollmentStopped):
        line, metric = f"stopped: {event.data.reason}", "stopped"
    elif isinstance(event, EnrollmentCompleted):
        line, metric = str(event.data.status), "completed"
    elif isinstance(event, EnrollmentFailed):
        line, metric = f"failed: {event.data.reason}", "failed"
    elif isinstance(event, EnrollmentExpired):
        line, metric = "expired", "expired"
    elif isinstance(event, EnrollmentHandedOff):
        line, metric = "handed off", "handed_off"
    elif isinstance(event, EnrollmentUnenrolled):
        line, metric = "unenrolled", "unenrolled"
    elif isinstance(event, ContactOptedOut):
        line, metric = "opted out", "opted_out"
    elif isinstance(event, EnrollmentQueued):
        line, metric = "queued", "queued"
    else:
        if event.type.startswith("StepDelivered"):
            counts["delivered"] += 1
        return
    run.timeline.append(Happening(at, line))
    counts[metric] += 1


@dataclass
class Comparison:
    """Both simulations of every contact, side by side."""

    baseline: dict[str, ContactRun]
    changed: dict[str, ContactRun]

    def totals(self, which: str) -> Counter[str]:
        runs = self.baseline if which == "baseline" else self.changed
        total: Counter[str] = Counter()
        for run in runs.values():
            total.update(run.counts)
        return total

    def differing(self) -> list[str]:
        """The contacts whose two timelines differ, by contact id."""
        return sorted(c for c in self.baseline if self.baseline[c].timeline != self.changed[c].timeline)


def compare(
    account_id: str,
    baseline: CampaignDefinition,
    changed: CampaignDefinition,
    inputs: Mapping[str, Sequence[ContactCommand]],
    outcomes: Outcomes,
    until: datetime,
) -> Comparison:
    """Each contact's inputs through the same simulation under both definitions."""
    return Comparison(
        baseline={
            c: simulate_contact(account_id, c, baseline, cmds, outcomes, until) for c, cmds in inputs.items()
        },
        changed={
            c: simulate_contact(account_id, c, changed, cmds, outcomes, until) for c, cmds in inputs.items()
        },
    )
