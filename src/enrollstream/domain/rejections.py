"""Decisions and command results: what `decide` answers and what the runtime publishes per command."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from .campaign import Model
from .commands import CommandEnvelope
from .events import ContactEnrolled, EnrollmentSkipped, Event


class RejectionCode(StrEnum):
    """Stable codes (seed 001's error table and the lifecycle rules); never rename one."""

    CAMPAIGN_NOT_FOUND = "campaign_not_found"  # unknown campaign or another account's
    CONTACT_NOT_FOUND = "contact_not_found"
    CONTACT_IMPORT_NOT_FOUND = "contact_import_not_found"  # the runtime's BulkEnroll lookup
    CONTACT_ALREADY_ENROLLED = "contact_already_enrolled"
    ENROLLMENT_NOT_FOUND = "enrollment_not_found"
    INVALID_TRANSITION = "invalid_transition"  # e.g. stopping a finished enrollment
    CAMPAIGN_ARCHIVED = "campaign_archived"  # archived campaigns take no new enrollments
    MX_ANSWER_MISSING = "mx_answer_missing"  # the campaign verifies MX but no answer came along
    ACCOUNT_MISMATCH = "account_mismatch"  # the command is for another aggregate
    UNSUPPORTED_COMMAND = "unsupported_command"  # BulkEnroll must be fanned out first
    # The runtime's: what the command would write (the contact's snapshot, an event) can never fit in
    # one record, or an Enroll would take the snapshot past the share Enrolls may fill.
    STATE_TOO_LARGE = "state_too_large"
    # The runtime's check: issued_at too far from the record's broker timestamp (docs/client.md "Time").
    ISSUED_AT_OUT_OF_RANGE = "issued_at_out_of_range"
    # StageChanged into a stage no campaign of the account enrols from (seed 002): nothing to do, said
    # with a code so upstream sees it; not remembered, so re-sent after a campaign is linked it enrols.
    STAGE_NOT_LINKED = "stage_not_linked"


class Ignored(StrEnum):
    """Why an accepted command produced no events."""

    DUPLICATE = "duplicate"  # the command id was processed before
    STALE = "stale"  # StepDue/report for a step or attempt that is not the current one
    DEFERRED = "deferred"  # StepDue while the campaign is paused or before due: fire again later


# The reason a result gives for an ignored command (the decider's outcome carries only the kind).
IGNORED_REASONS: dict[Ignored, str] = {
    Ignored.DUPLICATE: (
        "this command id (or the reply or stage entry it reports) was decided before; nothing was done again"
    ),
    Ignored.STALE: "it names a step, attempt or enrollment that is no longer current; nothing was done",
    Ignored.DEFERRED: "the campaign is paused or the step is not due yet; it fires again later",
}


@dataclass(frozen=True)
class Accepted:
    events: list[Event]
    ignored: Ignored | None = None  # set only when events is empty


@dataclass(frozen=True)
class Rejection:
    code: RejectionCode
    message: str
    details: dict[str, str] = field(default_factory=dict)


Decision = Accepted | Rejection


class CommandResult(Model):
    """Published by the runtime for every command it decided; the projector keeps each one in the
    `decisions` table, so refusals and ignored commands are answerable like events ("why")."""

    command_id: str
    command_type: str
    account_id: str
    contact_id: str
    # `skipped`: an Enroll decided without enrolling (an EnrollmentSkipped event): `code` is the skip
    # kind (`landline`, `opted_out`, `mx_invalid`, ...), `message` the reason, `details` the evidence,
    # and `enrollment_ids` is empty: no enrollment exists.
    status: Literal["accepted", "skipped", "rejected", "duplicate", "stale", "deferred"]
    code: str | None = None
    message: str = ""
    details: dict[str, str] = Field(default_factory=dict)  # e.g. the existing enrollment_id
    event_ids: list[str] = Field(default_factory=list)
    versions: list[int] = Field(default_factory=list)
    enrollment_ids: list[str] = Field(default_factory=list)  # the enrollments that exist after it
    # The command's own facts, so a result explains itself without the command at hand.
    actor: str = "system"
    issued_at: datetime | None = None  # the command's "now" (what the decision was made at)
    campaign_id: str | None = None  # the campaign the command names (Enroll, BulkEnroll)
    enrollment_id: str | None = None  # the enrollment the command names (Stop, StepDue, reports, ...)
    # The contact aggregate's version once decided: the last event's version if any, else the version
    # the command found. Orders decisions that changed nothing among the contact's events.
    contact_version: int | None = None


def command_result(
    command: CommandEnvelope, decision: Decision, contact_version: int | None = None
) -> CommandResult:
    """The result the runtime publishes for a decided command (keyed like the command)."""
    data = getattr(command, "data", None)
    # Read from the fields, not with getattr(..., None): a model without the field raises inside pydantic
    # first, which cost more than the rest of building the result.
    named = data.__dict__ if data is not None else {}
    base = {
        "command_id": command.command_id,
        "command_type": command.type,
        "account_id": command.account_id,
        "contact_id": command.contact_id,
        "actor": command.actor,
        "issued_at": command.issued_at,
        "campaign_id": named.get("campaign_id"),
        "enrollment_id": named.get("enrollment_id"),
        "contact_version": contact_version,
    }
    if isinstance(decision, Rejection):
        return CommandResult(
            **base,
            status="rejected",
            code=decision.code.value,
            message=decision.message,
            details=decision.details,
        )
    if decision.ignored is not None:
        return CommandResult(
            **base,
            status=decision.ignored.value,
            code=decision.ignored.value,
            message=IGNORED_REASONS[decision.ignored],
        )
    event_ids = [e.event_id for e in decision.events]
    versions = [e.version for e in decision.events]
    skip = next((e for e in decision.events if isinstance(e, EnrollmentSkipped)), None)
    # A StageChanged may enrol into one linked campaign and skip another: enrolled, it is accepted.
    if skip is not None and not any(isinstance(e, ContactEnrolled) for e in decision.events):
        # A skip's enrollment_id is the one it would have had: it never exists, so it is not reported.
        return CommandResult(
            **base,
            status="skipped",
            code=skip.data.kind.value,
            message=skip.data.reason,
            details=dict(skip.data.evidence),
            event_ids=event_ids,
            versions=versions,
        )
    return CommandResult(
        **base,
        status="accepted",
        event_ids=event_ids,
        versions=versions,
        # A skip's enrollment id never exists (a StageChanged may skip one campaign and enrol another).
        enrollment_ids=sorted(
            {
                e.enrollment_id
                for e in decision.events
                if e.enrollment_id and not isinstance(e, EnrollmentSkipped)
            }
        ),
    )
