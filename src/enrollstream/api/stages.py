"""Seed 002's job stages over HTTP: "When an application is created or moved into a job stage linked to a
campaign, an enrolment is automatically created for that campaign." An applicant tracking system posts
each move of an application as a StageChanged command; the decider enrols the contact into the account's
campaigns linked to that stage (docs/domain.md "StageChanged")."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from enrollstream.api.commands import (
    Deadline,
    IdempotencyKey,
    command_id_for,
    envelope,
    publish_all,
    rejection,
    resolve,
)
from enrollstream.api.contacts import ContactId
from enrollstream.api.context import Account, Context
from enrollstream.api.enrollments import Body
from enrollstream.api.errors import error_responses
from enrollstream.domain.bounds import Id, Instant

router = APIRouter(tags=["stages"])


class StageChangeRequest(Body):
    application_id: Id
    pipeline_id: Id
    stage_id: Id
    entered_at: Instant  # when the application entered the stage (the ATS's time of the move)


class StageChangeAnswer(BaseModel):
    contact_id: str
    status: str  # accepted
    command_id: str
    enrollment_ids: list[str]  # the enrollments this stage entry made (queued ones included)


@router.post(
    "/contacts/{contact_id}/stage_changes",
    responses={**error_responses(401, 404, 422), 202: {"description": "not decided within the bound"}},
)
async def stage_changed(
    contact_id: ContactId,
    body: StageChangeRequest,
    context: Context,
    account: Account,
    idempotency_key: IdempotencyKey = None,
) -> StageChangeAnswer:
    """The contact's application entered a job stage: enrolled into each of the account's campaigns
    linked to it (422 `stage_not_linked` when none is). Without an `Idempotency-Key` the stage entry
    itself is the key (application, pipeline, stage, `entered_at`), so posting the same move again
    answers what the first post made."""
    deadline = Deadline.after(context.result_timeout_s)
    data = {**body.model_dump(mode="json"), "contact_id": contact_id}
    entry = "\x00".join(("stage-entry", contact_id, body.application_id, body.pipeline_id, body.stage_id,
                         body.entered_at.isoformat()))  # fmt: skip
    route = f"POST /contacts/{contact_id}/stage_changes"
    command_id = command_id_for(account, route, idempotency_key or entry)
    [result] = await publish_all(context, [envelope("StageChanged.v1", account, command_id, data)])
    decided = await resolve(context, account, result, deadline)
    if decided.status != "accepted":
        raise rejection(decided)
    return StageChangeAnswer(
        contact_id=contact_id,
        status=decided.status,
        command_id=command_id,
        enrollment_ids=decided.enrollment_ids,
    )
