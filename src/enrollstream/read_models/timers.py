"""The `timers` rows: one per pending timer of an enrollment, what the scheduler claims and fires.

`TimerFold` folds a batch of events into the final change per `(enrollment_id, kind)`: a row to upsert or
None to delete. It is pure (the projector hands it what the `enrollments` rows said before the batch), so
the same fold serves the live projector and `replay`, and it is tested without a database.

Idempotence: an event whose version is not above the enrollment's `last_version` (from `enrollments`,
read before the batch writes it) was folded before and changes nothing; an ended enrollment never gets
a timer again.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum

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
    ExpiryCancelled,
    ExpiryScheduled,
    StepDispatched,
    StepScheduled,
    TriggerAwaited,
    TriggerReceived,
    WaitTimeoutExtended,
)
from enrollstream.domain.statuses import TERMINAL_STATUSES, EnrollmentStatus


class TimerKind(StrEnum):
    STEP_DUE = "step_due"  # fires StepDue(enrollment, step_index, attempt)
    EXPIRY = "expiry"  # fires ExpiryDue
    WAIT_TIMEOUT = "wait_timeout"  # fires WaitTimeout: the trigger's or the queue's timeout


# The kinds as stored (str): reading an enum member's `.value` is a Python property call, per event.
_STEP_DUE, _EXPIRY, _WAIT_TIMEOUT = (kind.value for kind in TimerKind)
_KINDS = (_STEP_DUE, _EXPIRY, _WAIT_TIMEOUT)

ENDINGS = (
    EnrollmentStopped,
    EnrollmentCompleted,
    EnrollmentFailed,
    EnrollmentExpired,
    EnrollmentHandedOff,
    EnrollmentUnenrolled,
)
# Every event type the fold looks at (the projector skips the timers' work for a batch with none).
TIMER_EVENTS = (
    ContactEnrolled,
    StepScheduled,
    StepDispatched,
    ExpiryScheduled,
    ExpiryCancelled,
    TriggerAwaited,
    TriggerReceived,
    WaitTimeoutExtended,
    EnrollmentQueued,
    EnrollmentReleased,
)


@dataclass(frozen=True)
class TimerRow:
    enrollment_id: str
    kind: str
    account_id: str
    contact_id: str
    campaign_id: str
    step_index: int | None
    attempt: int | None
    due_at: datetime
    batch_number: int
    priority: bool
    enrolled_at: datetime


# The columns the fold owns, in table order; `claimed_until` is the scheduler's and not among them.
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(TimerRow))


@dataclass
class EnrollmentInfo:
    """What the fold needs of an enrollment: its dispatch order, whether it ended, how far it is folded."""

    account_id: str
    contact_id: str
    campaign_id: str
    batch_number: int
    priority: bool
    enrolled_at: datetime
    last_version: int
    ended: bool

    @classmethod
    def from_row(cls, row: dict[str, object]) -> EnrollmentInfo:
        return cls(
            account_id=str(row["account_id"]),
            contact_id=str(row["contact_id"]),
            campaign_id=str(row["campaign_id"]),
            batch_number=int(row["batch_number"]),  # type: ignore[call-overload]
            priority=bool(row["priority"]),
            enrolled_at=row["enrolled_at"],  # type: ignore[arg-type]
            last_version=int(row["last_version"]),  # type: ignore[call-overload]
            ended=EnrollmentStatus(str(row["status"])) in TERMINAL_STATUSES,
        )


# Exact types: every event type is a leaf class, and `isinstance` against a pydantic model class goes
# through ABCMeta's Python-level check on every miss (docs/benchmarks.md, "Projector after the light parse").
_CONCERNING = frozenset(TIMER_EVENTS + ENDINGS)
_ENDING_TYPES = frozenset(ENDINGS)


def concerns_timers(event: Event) -> bool:
    return type(event) in _CONCERNING and bool(event.enrollment_id)


class TimerFold:
    def __init__(self, known: dict[str, EnrollmentInfo]) -> None:
        self.infos = dict(known)
        # (enrollment_id, kind) -> the row to upsert, or None to delete
        self.changes: dict[tuple[str, str], TimerRow | None] = {}

    def apply(self, event: Event) -> None:
        if not concerns_timers(event):
            return
        eid = event.enrollment_id or ""
        info = self.infos.get(eid)
        if type(event) is ContactEnrolled:
            if info is None:
                data = event.data
                self.infos[eid] = EnrollmentInfo(
                    account_id=event.account_id,
                    contact_id=event.contact_id,
                    campaign_id=event.campaign_id or data.campaign.campaign_id,
                    batch_number=data.batch_number,
                    priority=data.priority,
                    enrolled_at=event.occurred_at,
                    last_version=event.version,
                    ended=False,
                )
            return
        if info is None or event.version <= info.last_version:
            return  # not an enrollment we know, or folded before
        info.last_version = event.version
        if type(event) in _ENDING_TYPES:
            info.ended = True
            for kind in _KINDS:
                self.changes[(eid, kind)] = None
            return
        if info.ended:
            return
        match event:
            case StepScheduled():
                self._set(
                    eid,
                    info,
                    TimerKind.STEP_DUE,
                    event.data.due_at,
                    event.data.step_index,
                    event.data.attempt,
                )
            case StepDispatched():
                self.changes[(eid, _STEP_DUE)] = None
            case ExpiryScheduled():  # at the first delivery, and again when a pause pushed it back
                self._set(eid, info, TimerKind.EXPIRY, event.data.expires_at)
            case ExpiryCancelled():
                self.changes[(eid, _EXPIRY)] = None
            case TriggerAwaited() | EnrollmentQueued():  # a wait begins, with or without a timeout
                if event.data.timeout_at is None:
                    self.changes[(eid, _WAIT_TIMEOUT)] = None
                else:
                    self._set(eid, info, TimerKind.WAIT_TIMEOUT, event.data.timeout_at)
            case WaitTimeoutExtended():  # a pause pushed the wait's timeout back
                self._set(eid, info, TimerKind.WAIT_TIMEOUT, event.data.timeout_at)
            case TriggerReceived() | EnrollmentReleased():  # the wait is over
                self.changes[(eid, _WAIT_TIMEOUT)] = None

    def _set(
        self,
        eid: str,
        info: EnrollmentInfo,
        kind: TimerKind,
        due_at: datetime,
        step_index: int | None = None,
        attempt: int | None = None,
    ) -> None:
        value = str(kind)  # StrEnum: its value, without the `.value` property
        # TimerRow(...) without the frozen `__init__`'s per-field `object.__setattr__` (one per step).
        row = object.__new__(TimerRow)
        row.__dict__.update(
            enrollment_id=eid,
            kind=value,
            account_id=info.account_id,
            contact_id=info.contact_id,
            campaign_id=info.campaign_id,
            step_index=step_index,
            attempt=attempt,
            due_at=due_at,
            batch_number=info.batch_number,
            priority=info.priority,
            enrolled_at=info.enrolled_at,
        )
        self.changes[(eid, value)] = row

    def upserts(self) -> list[TimerRow]:
        return [row for _, row in sorted(self.changes.items()) if row is not None]

    def deletes(self) -> list[tuple[str, str]]:
        return [key for key, row in sorted(self.changes.items()) if row is None]
