"""The vocabulary of the source documents: statuses, engagement stages, stop reasons, skip kinds.

docs/statuses.md maps every status of the five documents onto these values.
"""

from __future__ import annotations

from enum import StrEnum


class EnrollmentStatus(StrEnum):
    PENDING = "pending"  # enrolled, first step scheduled, nothing sent yet
    QUEUED = "queued"  # behind another campaign in progress (seed 002)
    AWAITING_TRIGGER = "awaiting_trigger"  # seed 002 Auto-Match
    ACTIVE = "active"  # in progress: a step was sent, the next one is scheduled
    PROCESSING = "processing"  # a step is being sent (seed 000 Processing, seed 002 Sending)
    DELIVERED = "delivered"  # a blast was delivered: terminal (seed 002)
    COMPLETED = "completed"  # every step of a sequence was sent
    STOPPED = "stopped"  # see StopReason
    FAILED = "failed"  # a step could not be delivered
    EXPIRED = "expired"  # not finished within the expiry after delivery (seed 002)
    HANDED_OFF = "handed_off"  # seed 000 Chatbot Handoff
    UNENROLLED = "unenrolled"  # seed 004; the record stays

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def is_in_progress(self) -> bool:
        """Counts as "another campaign in progress" for the queue rule."""
        return self in IN_PROGRESS_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        EnrollmentStatus.DELIVERED,
        EnrollmentStatus.COMPLETED,
        EnrollmentStatus.STOPPED,
        EnrollmentStatus.FAILED,
        EnrollmentStatus.EXPIRED,
        EnrollmentStatus.HANDED_OFF,
        EnrollmentStatus.UNENROLLED,
    }
)
IN_PROGRESS_STATUSES = frozenset(
    {
        EnrollmentStatus.PENDING,
        EnrollmentStatus.AWAITING_TRIGGER,
        EnrollmentStatus.ACTIVE,
        EnrollmentStatus.PROCESSING,
    }
)


class Stage(StrEnum):
    """Seed 001 engagement: pending -> sent -> opened -> replied, any -> bounced."""

    PENDING = "pending"
    SENT = "sent"
    OPENED = "opened"
    REPLIED = "replied"
    BOUNCED = "bounced"

    def advanced_to(self, target: Stage) -> Stage:
        """Stages only move forward; bounced is final."""
        if self is Stage.BOUNCED or target is Stage.BOUNCED:
            return Stage.BOUNCED
        return target if _STAGE_ORDER[target] > _STAGE_ORDER[self] else self


_STAGE_ORDER = {Stage.PENDING: 0, Stage.SENT: 1, Stage.OPENED: 2, Stage.REPLIED: 3, Stage.BOUNCED: 4}


class StopReason(StrEnum):
    REPLIED = "replied"  # seed 000 "User replied" with reply action stop
    MANUAL = "manual"  # seed 000 "Manual"
    ERROR = "error"  # seed 000 "Error"
    TIMEOUT = "timeout"  # seed 000 "Timeout": a wait timeout was exceeded
    OPTED_OUT = "opted_out"  # seed 003 "Opted Out"
    # Before issue 11 a hard bounce stopped the enrollment with this reason; it now ends as failed
    # (FailureReason.BOUNCED). Kept so that older events still read.
    BOUNCED = "bounced"
    MARKED_FINISHED = "marked_finished"  # seed 003 "Finished, stopped"


class FailureReason(StrEnum):
    """Why an enrollment ended as failed: the contact's address or provider, never our side (that is
    stopped with reason error). Seed 002 "Failed ... most likely an invalid phone number"; seed 003
    "Failed: a message returned a failed response from the contact's service provider"."""

    INVALID_RECIPIENT = "invalid_recipient"  # the address or number cannot receive: nothing was sent
    BOUNCED = "bounced"  # the recipient's provider refused for good: 5xx on the recipient, a hard bounce
    UNDELIVERABLE = "undeliverable"  # temporary failures until the campaign's attempts ran out


class SkipKind(StrEnum):
    MX_INVALID = "mx_invalid"  # seed 001
    CROSS_CAMPAIGN_DUPLICATE = "cross_campaign_duplicate"  # seed 001 outreach unique_contacts
    ALREADY_ENROLLED = "already_enrolled"  # seed 001 bulk enroll
    OPTED_OUT = "opted_out"  # seed 003 "Omitted Opted Out"
    LANDLINE = "landline"  # seed 003 "Omitted Landline"
    MISSING_ADDRESS = "missing_address"  # no email for an email step / no mobile for an SMS step
    CONTACT_NOT_FOUND = "contact_not_found"  # a bulk import's contact without its facts


class Outcome(StrEnum):
    """Seed 003 "Finished, ...": how a finished enrollment ended for the contact."""

    RESPONDED = "responded"
    NO_RESPONSE = "no_response"
    STOPPED = "stopped"
