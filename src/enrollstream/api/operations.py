"""What the Enrollments page needs beyond seed 001, as JSON: the stats cards, the operator actions on
one or a selection of enrollments (Stop, Unenroll, MarkFinished: one command each), and a contact's
"why" (every decision about it, in order)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from enrollstream.adapters.postgres.read_side import campaign_stats_card, contact_why, enrollments_of_campaign
from enrollstream.api.commands import (
    Deadline,
    IdempotencyKey,
    command_id_for,
    envelope,
    publish_all,
    resolve,
)
from enrollstream.api.context import Account, Context
from enrollstream.api.enrollments import Body
from enrollstream.api.errors import ApiError, error_responses
from enrollstream.domain.bounds import ID_PATTERN, MAX_ID_LENGTH, Id, Text
from enrollstream.read_models.why import explain

router = APIRouter(tags=["enrollment page"])

# --- GET /campaigns/{campaign_id}/stats -------------------------------------------------------------


class StatsCards(BaseModel):
    """Seed 000's cards (docs/statuses.md): Active = pending + active, Completed = completed + delivered."""

    total: int = 0
    active: int = 0
    processing: int = 0
    completed: int = 0
    stopped: int = 0
    failed: int = 0
    queued: int = 0
    awaiting_trigger: int = 0
    expired: int = 0
    handed_off: int = 0
    unenrolled: int = 0


@router.get("/campaigns/{campaign_id}/stats", responses=error_responses(401, 404))
async def get_stats(campaign_id: str, context: Context, account: Account) -> StatsCards:
    await context.campaign(account, campaign_id)
    async with context.pool.acquire() as conn:
        return StatsCards(**await campaign_stats_card(conn, account, campaign_id))


# --- POST /campaigns/{campaign_id}/enrollments/{action} ---------------------------------------------


class Action(StrEnum):
    STOP = "stop"  # seed 000 Stop: Stop -> stopped, reason manual
    UNENROLL = "unenroll"  # seed 004: Unenroll -> unenrolled (irreversible)
    MARK_FINISHED = "mark_finished"  # seed 003: MarkFinished -> stopped, reason marked_finished


COMMAND_OF: dict[Action, str] = {
    Action.STOP: "Stop.v1",
    Action.UNENROLL: "Unenroll.v1",
    Action.MARK_FINISHED: "MarkFinished.v1",
}

MAX_SELECTION = 100


class ActionRequest(Body):
    enrollment_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_SELECTION)]
    note: Annotated[Text, Field(max_length=1000)] = ""


class ActionResult(BaseModel):
    enrollment_id: str
    command_id: str
    status: str  # accepted, or rejected with a code (invalid_transition: already finished)
    code: str | None
    message: str


class ActionAnswer(BaseModel):
    results: list[ActionResult]


def enrollment_not_found(enrollment_ids: list[str]) -> ApiError:
    return ApiError(
        404, "enrollment_not_found", f"no enrollment {enrollment_ids!r} in this campaign and account"
    )


@router.post(
    "/campaigns/{campaign_id}/enrollments/{action}",
    responses={**error_responses(401, 404, 422), 202: {"description": "not decided within the bound"}},
)
async def act_on_enrollments(
    campaign_id: str,
    action: Action,
    body: ActionRequest,
    context: Context,
    account: Account,
    idempotency_key: IdempotencyKey = None,
) -> ActionAnswer:
    """Stop, unenroll or mark finished one or a selection of the campaign's enrollments: one command each,
    each answered with its decision. An id that is not the campaign's (or the account's) is 404
    `enrollment_not_found` for the whole request, and nothing is published."""
    deadline = Deadline.after(context.result_timeout_s)
    await context.campaign(account, campaign_id)
    wanted = list(dict.fromkeys(body.enrollment_ids))
    async with context.pool.acquire() as conn:
        found = await enrollments_of_campaign(conn, account, campaign_id, wanted)
    missing = [e for e in wanted if e not in found]
    if missing:
        raise enrollment_not_found(missing)
    route = f"POST /campaigns/{campaign_id}/enrollments/{action.value}"
    commands = [
        envelope(
            COMMAND_OF[action],
            account,
            command_id_for(account, route, idempotency_key, enrollment_id),
            {
                "contact_id": found[enrollment_id]["contact_id"],
                "enrollment_id": enrollment_id,
                "note": body.note,
            },
        )
        for enrollment_id in wanted
    ]
    results = await publish_all(context, commands)
    answers = []
    for enrollment_id, result in zip(wanted, results, strict=True):
        decided = await resolve(context, account, result, deadline)
        answers.append(
            ActionResult(
                enrollment_id=enrollment_id,
                command_id=decided.command_id,
                status=decided.status,
                code=decided.code,
                message=decided.message,
            )
        )
    return ActionAnswer(results=answers)


# --- GET /campaigns/{campaign_id}/contacts/{contact_id}/why -----------------------------------------


class WhyEntry(BaseModel):
    at: datetime | None
    kind: str  # event (something changed) or decision (a command that changed nothing, with its reason)
    what: str  # the event type, or the decision's status
    enrollment_id: str | None
    command_id: str | None
    command_type: str | None
    actor: str | None
    status: str
    code: str | None
    reason: str
    data: dict[str, Any]
    sentence: str  # the same in plain words, with its cause and what it meant for a waiting step


class Why(BaseModel):
    contact_id: str
    campaign_id: str
    entries: list[WhyEntry]


@router.get("/campaigns/{campaign_id}/contacts/{contact_id}/why", responses=error_responses(401, 404, 422))
async def get_why(
    campaign_id: str,
    contact_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)],
    context: Context,
    account: Account,
) -> Why:
    """The contact's timeline in this campaign: every decision about it, in the order it was made."""
    await context.campaign(account, campaign_id)
    async with context.pool.acquire() as conn:
        rows = await contact_why(conn, account, contact_id, campaign_id)
    if not rows:
        raise ApiError(404, "contact_not_found", f"no contact {contact_id!r} in this campaign and account")
    fields = set(WhyEntry.model_fields) - {"data", "sentence"}
    entries = [
        WhyEntry(**{k: r[k] for k in fields}, data=r["data"] or {}, sentence=words)
        for r, words in zip(rows, explain(rows), strict=True)
    ]
    return Why(contact_id=contact_id, campaign_id=campaign_id, entries=entries)
