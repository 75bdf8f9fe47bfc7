"""A contact's "why" in plain words (the CLI's `why --words`, the API's `why`, the console's contact view):
one sentence per row of `read_side.contact_why`, saying what was decided and, for a command that
changed nothing, why not; `explain` adds the chain of causes (which command, from whom, when) and what
an ending meant for the step that was waiting."""

from __future__ import annotations

from datetime import datetime
from typing import Any

STOP_REASONS = {
    "replied": "the contact replied and the campaign stops on a reply",
    "manual": "someone stopped it by hand",
    "error": "a technical error on our side prevented the campaign from continuing",
    "timeout": "a wait timeout was exceeded",
    "opted_out": "the contact opted out",
    "marked_finished": "someone marked the contact as finished",
    "bounced": "a message bounced",
}
FAILURE_REASONS = {
    "invalid_recipient": "the address or number cannot receive messages",
    "bounced": "the recipient's server refused the message or it bounced later",
    "undeliverable": "temporary failures went on until the attempts ran out",
}
SKIP_KINDS = {
    "mx_invalid": "the email domain has no mail server (no MX record)",
    "cross_campaign_duplicate": "already enrolled in another campaign of this outreach",
    "already_enrolled": "already enrolled in this campaign",
    "opted_out": "the contact had opted out",
    "landline": "the number is a landline, which cannot receive SMS",
    "missing_address": "the contact has no address for this campaign's channel",
    "contact_not_found": "the contact is not in the directory",
}
DECISIONS = {
    "rejected": "refused",
    "duplicate": "ignored: the same command was already decided",
    "stale": "ignored: it no longer applied",
    "deferred": "put off",
}


def _step(data: dict[str, Any]) -> str:
    index, count = data.get("step_index"), data.get("step_count")
    if index is None:
        return "a step"
    return f"step {int(index) + 1}" + (f" of {count}" if count else "")


def _when(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return str(value)


def _by(row: dict[str, Any]) -> str:
    return f" by {row['actor']}" if row.get("actor") else ""


def _stage_entry(data: dict[str, Any]) -> str:
    """Seed 002: an enrollment a stage change made says which application entered which stage."""
    entry = data.get("stage_entry")
    if not isinstance(entry, dict):
        return ""
    return (
        f" when application {entry.get('application_id')} entered stage {entry.get('stage_id')} of "
        f"pipeline {entry.get('pipeline_id')}"
    )


def _event(row: dict[str, Any]) -> str:
    kind = str(row.get("what") or "").removesuffix(".v1")
    data: dict[str, Any] = row.get("data") or {}
    step = _step(data).capitalize()
    in_flight = " A send already in progress still completes." if data.get("step_in_flight") else ""
    match kind:
        case "ContactEnrolled":
            return f"Enrolled{_by(row)} in the campaign{_stage_entry(data)}."
        case "EnrollmentSkipped":
            why = SKIP_KINDS.get(str(data.get("kind")), str(data.get("reason") or data.get("kind")))
            return f"Not enrolled: {why}."
        case "StepScheduled":
            again = " again (outside its send window)" if data.get("rescheduled") == "outside_window" else ""
            again = (
                " again (the sender was over its rate limit)"
                if data.get("rescheduled") == "deferred"
                else again
            )
            return f"{step} scheduled{again} for {_when(data.get('due_at'))}."
        case "StepDispatched":
            return f"{step} handed to the {data.get('channel', '')} sender.".replace("  ", " ")
        case "StepDeferred":
            return f"{step} put off until {_when(data.get('retry_at'))}: the sender was busy."
        case "StepDelivered":
            return f"{step} was sent."
        case "StepFailed":
            retry = " It will be tried again." if data.get("will_retry") else ""
            return f"{step} could not be sent: {data.get('detail') or 'an error'}.{retry}"
        case "StepBounced":
            return f"{step} bounced ({data.get('bounce_type')}): {data.get('detail') or '-'}."
        case "StepDeliveryUnknown":
            return f"{step} may or may not have gone out; it is never sent twice."
        case "MessageOpened":
            return "The contact opened a message."
        case "ReplyReceived":
            return f"The contact replied (the campaign's reply action: {data.get('reply_action')})."
        case "MessageBounced":
            return f"A message bounced later ({data.get('bounce_type')}): {data.get('detail') or '-'}."
        case "EnrollmentStopped":
            why = STOP_REASONS.get(str(data.get("reason")), str(data.get("reason")))
            return f"Stopped{_by(row)}: {why}. No more messages will be sent.{in_flight}"
        case "EnrollmentCompleted":
            return "Finished every step of the campaign."
        case "EnrollmentFailed":
            why = FAILURE_REASONS.get(str(data.get("reason")), str(data.get("reason")))
            detail = f" ({data['detail']})" if data.get("detail") else ""
            return f"Failed: {why}{detail}."
        case "EnrollmentExpired":
            return "Expired: the time after delivery ran out."
        case "EnrollmentHandedOff":
            return f"Handed off to a chatbot flow after a reply.{in_flight}"
        case "EnrollmentUnenrolled":
            return f"Unenrolled{_by(row)}: no further messages from this campaign.{in_flight}"
        case "ContactOptedOut":
            return "The contact opted out of all messages from this account."
        case "EnrollmentQueued":
            return "Queued: the contact is in another campaign that has to finish first."
        case "EnrollmentReleased":
            return "Released from the queue: the other campaign finished."
        case "TriggerAwaited":
            return "Waiting for an outside trigger before the first step."
        case "TriggerReceived":
            return "The outside trigger arrived."
        case _:
            return f"{kind}."


def sentence(row: dict[str, Any]) -> str:
    """What happened (or was refused) and why, in plain words."""
    if row.get("kind") == "event":
        return _event(row)
    command = str(row.get("command_type") or "a command").removesuffix(".v1")
    verdict = DECISIONS.get(str(row.get("status")), str(row.get("status")))
    reason = f": {row['reason']}" if row.get("reason") else ""
    code = f" ({row['code']})" if row.get("code") and row.get("code") != row.get("status") else ""
    return f"{command}{_by(row)} was {verdict}{code}{reason}."


# Events that end an enrollment (or every enrollment of the contact): the step waiting is not sent.
ENDINGS = {
    "EnrollmentStopped",
    "EnrollmentUnenrolled",
    "EnrollmentExpired",
    "EnrollmentFailed",
    "EnrollmentHandedOff",
    "ContactOptedOut",
}
# A step that is no longer waiting once one of these is recorded for it.
STEP_OUTCOMES = {"StepDispatched", "StepDelivered", "StepFailed", "StepBounced", "StepDeliveryUnknown"}


def _cause(row: dict[str, Any]) -> str:
    """The command that caused a row: its type and id, who sent it, when."""
    command = str(row.get("command_type") or "").removesuffix(".v1")
    if not command and not row.get("command_id"):
        return ""
    by = f" from {row['actor']}" if row.get("actor") else ""
    return f"{command} {row.get('command_id') or ''}".strip() + f"{by} at {_when(row.get('at'))}"


def explain(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per row (in the rows' order), each ending that stopped a waiting step saying which
    step, when it was due, and which command caused it; each refusal or deferral naming its command.

    e.g. "Stopped: the contact replied and the campaign stops on a reply. No more messages will be sent.
    Caused by ReplyDetected c-123 from inbound at 2026-12-03 10:14:00 UTC; step 2 of 3, due
    2026-12-04 09:00:00 UTC, will not be sent."
    """
    waiting: dict[str, dict[str, Any]] = {}  # enrollment id -> its scheduled step not yet handed over
    out: list[str] = []
    for row in rows:
        text = sentence(row)
        kind = str(row.get("what") or "").removesuffix(".v1")
        data: dict[str, Any] = row.get("data") or {}
        enrollment = str(row.get("enrollment_id") or "")
        if row.get("kind") != "event":
            cause = _cause(row)
            out.append(f"{text} ({cause})" if cause else text)
            continue
        if kind == "StepScheduled":
            waiting[enrollment] = data
        elif kind in STEP_OUTCOMES and waiting.get(enrollment, {}).get("step_index") == data.get(
            "step_index"
        ):
            waiting.pop(enrollment, None)
        elif kind in ENDINGS:
            ended = [waiting.pop(e) for e in list(waiting)] if kind == "ContactOptedOut" else []
            if kind != "ContactOptedOut" and enrollment in waiting:
                ended.append(waiting.pop(enrollment))
            cause = _cause(row)
            if cause or ended:
                steps = "; ".join(
                    f"{_step(step)}, due {_when(step.get('due_at'))}, will not be sent" for step in ended
                )
                text += " " + "; ".join(
                    part for part in (f"Caused by {cause}" if cause else "", steps) if part
                )
                text += "."
        out.append(text)
    return out
