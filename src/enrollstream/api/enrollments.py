"""Seed 001's Enrollments endpoints: bulk enroll from a contact import, enroll one contact by id, the
enrollments of a campaign (keyset pages), its replies and its skips."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from enrollstream.adapters.postgres.read_side import (
    BulkEnrollSummary,
    EnrollmentFilter,
    PageCursor,
    bulk_enroll_summary,
    campaign_replies,
    campaign_skips,
    enrollments_page,
)
from enrollstream.api.commands import (
    CommandPending,
    Deadline,
    IdempotencyKey,
    command_id_for,
    envelope,
    poll_read_model,
    publish_all,
    rejection,
    resolve,
)
from enrollstream.api.context import Account, ApiContext, Context
from enrollstream.api.errors import ApiError, FieldError, error_responses
from enrollstream.domain.bounds import INT32_MAX, LINE_PATTERN, MAX_ID_LENGTH, Id, Int32
from enrollstream.domain.commands import MAX_CONTACT_NAME
from enrollstream.domain.statuses import SkipKind, Stage

router = APIRouter(tags=["enrollments"])


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422 naming it, not ignored


# --- POST /campaigns/{campaign_id}/enroll -------------------------------------------------------------


class BulkEnrollRequest(Body):
    contact_import_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=LINE_PATTERN)]
    batch_size: Annotated[Int32, Field(ge=1)] = 50


class SkippedContact(BaseModel):
    contact_id: str
    email: str | None
    reason: str
    kind: str  # the skip kind: already_enrolled, cross_campaign_duplicate, mx_invalid, ...


class BulkEnrollAnswer(BaseModel):
    enrolled: int
    batches: int
    batch_size: int
    skipped: list[SkippedContact]
    bulk_enroll_id: str  # the BulkEnroll's command id (GET /commands/{id})
    contacts: int


def bulk_answer(summary: BulkEnrollSummary) -> BulkEnrollAnswer:
    return BulkEnrollAnswer(
        enrolled=summary.enrolled,
        batches=summary.batches,
        batch_size=summary.batch_size,
        skipped=[
            SkippedContact(contact_id=s.contact_id, email=s.email, reason=s.reason, kind=s.kind)
            for s in summary.skipped
        ],
        bulk_enroll_id=summary.bulk_enroll_id,
        contacts=summary.contacts,
    )


async def complete_summary(
    context: ApiContext, account_id: str, bulk_enroll_id: str
) -> BulkEnrollSummary | None:
    async with context.pool.acquire() as conn:
        summary = await bulk_enroll_summary(conn, account_id, bulk_enroll_id)
    return summary if summary is not None and summary.complete else None


@router.post(
    "/campaigns/{campaign_id}/enroll",
    responses={**error_responses(401, 404, 422), 202: {"description": "not decided within the bound"}},
)
async def bulk_enroll(
    campaign_id: str,
    body: BulkEnrollRequest,
    context: Context,
    account: Account,
    idempotency_key: IdempotencyKey = None,
) -> BulkEnrollAnswer:
    """Enroll every contact of a published contact import, in batches of `batch_size`; the answer once
    every contact is decided (enrolled or skipped, with the reason)."""
    deadline = Deadline.after(context.result_timeout_s)
    await context.campaign(account, campaign_id)
    command_id = command_id_for(account, f"POST /campaigns/{campaign_id}/enroll", idempotency_key)
    data = {
        "campaign_id": campaign_id,
        "contact_import_id": body.contact_import_id,
        "batch_size": body.batch_size,
    }
    [result] = await publish_all(context, [envelope("BulkEnroll.v1", account, command_id, data)])
    decided = await resolve(context, account, result, deadline)
    if decided.status != "accepted":
        raise rejection(decided)

    async def read() -> BulkEnrollSummary | None:
        return await complete_summary(context, account, command_id)

    summary = await poll_read_model(deadline, read)
    if summary is None:
        raise CommandPending([command_id])
    return bulk_answer(summary)


# --- POST /campaigns/{campaign_id}/enroll_contact ---------------------------------------------------


class EnrollContactRequest(Body):
    contact_id: Id
    batch_number: Int32 = 0
    priority: bool = False  # first within its batch (seed 001: created_at 2000-01-01)


class EnrollmentCreated(BaseModel):
    id: str
    contact_id: str
    batch_number: int
    status: str  # seed 001's status (the stage): always pending for a new enrollment


@router.post(
    "/campaigns/{campaign_id}/enroll_contact",
    responses={**error_responses(401, 404, 422), 202: {"description": "not decided within the bound"}},
)
async def enroll_contact(
    campaign_id: str,
    body: EnrollContactRequest,
    context: Context,
    account: Account,
    idempotency_key: IdempotencyKey = None,
) -> EnrollmentCreated:
    """Enroll one contact of the account's directory (the facts come from its profile, never the body)."""
    deadline = Deadline.after(context.result_timeout_s)
    await context.campaign(account, campaign_id)
    command_id = command_id_for(account, f"POST /campaigns/{campaign_id}/enroll_contact", idempotency_key)
    data = {
        "contact_id": body.contact_id,
        "campaign_id": campaign_id,
        "batch_number": body.batch_number,
        "priority": body.priority,
    }
    [result] = await publish_all(context, [envelope("Enroll.v1", account, command_id, data)])
    decided = await resolve(context, account, result, deadline)
    if decided.status != "accepted" or not decided.enrollment_ids:
        raise rejection(decided)
    return EnrollmentCreated(
        id=decided.enrollment_ids[0],
        contact_id=body.contact_id,
        batch_number=body.batch_number,
        status="pending",
    )


# --- GET /campaigns/{campaign_id}/enrollments -------------------------------------------------------


class StatusGroup(StrEnum):
    """Seed 000's status filter (the stats cards' groups)."""

    ALL = "all"
    ACTIVE = "active"
    PROCESSING = "processing"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"


GROUP_STATUSES: dict[StatusGroup, tuple[str, ...] | None] = {
    StatusGroup.ALL: None,
    StatusGroup.ACTIVE: ("pending", "active"),  # as the Active card counts them
    StatusGroup.PROCESSING: ("processing",),
    StatusGroup.COMPLETED: ("completed", "delivered"),
    StatusGroup.STOPPED: ("stopped",),
    StatusGroup.FAILED: ("failed",),
}


class EnrollmentRow(BaseModel):
    id: str
    contact_id: str
    sender: str | None  # seed 001's smtp_credential_id: the From address of the latest attempt ('sms')
    status: str  # seed 001's status: the stage (pending, sent, opened, replied, bounced)
    batch_number: int
    sent_at: datetime | None
    opened_at: datetime | None
    replied_at: datetime | None
    bounce_reason: str | None
    # What the Enrollments page shows (seed 000, 003); docs/statuses.md maps each.
    lifecycle_status: str
    stop_reason: str | None
    failure_reason: str | None
    outcome: str | None
    sequence_status: str
    contact_name: str | None
    email: str | None
    mobile: str | None
    current_step: int | None
    total_steps: int | None
    step_label: str | None
    next_execution_at: datetime | None
    next_execution_indicator: str | None
    enrolled_at: datetime
    priority: bool
    bounced_at: datetime | None
    hours_to_reply: float | None


def enrollment_row(row: dict[str, Any]) -> EnrollmentRow:
    return EnrollmentRow(
        id=row["enrollment_id"],
        lifecycle_status=row["status"],
        status=row["stage"],
        hours_to_reply=None if row["hours_to_reply"] is None else float(row["hours_to_reply"]),
        **{
            k: row[k]
            for k in EnrollmentRow.model_fields
            if k not in ("id", "lifecycle_status", "status", "hours_to_reply")
        },
    )


def encode_cursor(cursor: PageCursor) -> str:
    raw = json.dumps({"at": cursor.enrolled_at.isoformat(), "id": cursor.enrollment_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def invalid_cursor() -> ApiError:
    return ApiError(
        422,
        "invalid_request",
        "the request is invalid",
        fields=[FieldError(field="query.cursor", message="not a cursor this API gave (use the next link)")],
    )


def decode_cursor(cursor: str) -> PageCursor:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at, enrollment_id = datetime.fromisoformat(raw["at"]), raw["id"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise invalid_cursor() from None
    if at.tzinfo is None or not isinstance(enrollment_id, str) or not 0 < len(enrollment_id) <= MAX_ID_LENGTH:
        raise invalid_cursor()
    return PageCursor(at, enrollment_id)


@router.get("/campaigns/{campaign_id}/enrollments", responses=error_responses(401, 404, 422))
async def list_enrollments(
    campaign_id: str,
    request: Request,
    response: Response,
    context: Context,
    account: Account,
    status: Annotated[Stage | None, Query(description="seed 001's status (the stage)")] = None,
    batch_number: Annotated[int | None, Query(ge=0, le=INT32_MAX)] = None,
    group: Annotated[StatusGroup, Query(description="seed 000's status filter")] = StatusGroup.ALL,
    step: Annotated[int | None, Query(ge=1, le=INT32_MAX, description="current step, 1-based")] = None,
    name: Annotated[
        str | None, Query(min_length=1, max_length=MAX_CONTACT_NAME, pattern=LINE_PATTERN)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=2048, description="the `next` link's cursor")] = None,
) -> list[EnrollmentRow]:
    """One page of the campaign's enrollments in enrollment order (enrolled_at, id); the next page is
    the `Link: <...>; rel="next"` header (absent on the last page)."""
    await context.campaign(account, campaign_id)
    after = None if cursor is None else decode_cursor(cursor)
    where = EnrollmentFilter(
        statuses=GROUP_STATUSES[group],
        batch_number=batch_number,
        current_step=step,
        name=name,
        stages=None if status is None else (status.value,),
    )
    async with context.pool.acquire() as conn:
        page = await enrollments_page(conn, account, campaign_id, where, after, limit)
    if page.next is not None:
        next_url = request.url.include_query_params(cursor=encode_cursor(page.next))
        response.headers["Link"] = f'<{next_url.path}?{next_url.query}>; rel="next"'
    return [enrollment_row(r) for r in page.rows]


# --- GET /campaigns/{campaign_id}/replies and /skips ------------------------------------------------


class Reply(BaseModel):
    enrollment_id: str
    contact_id: str
    contact_name: str | None
    email: str | None
    replied_at: datetime
    hours_to_reply: float | None
    first_reply: bool
    reply_action: str | None
    excerpt: str | None


@router.get("/campaigns/{campaign_id}/replies", responses=error_responses(401, 404, 422))
async def list_replies(
    campaign_id: str, context: Context, account: Account, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[Reply]:
    """The campaign's replies, newest first, each with hours_to_reply (from the first delivery)."""
    await context.campaign(account, campaign_id)
    async with context.pool.acquire() as conn:
        rows = await campaign_replies(conn, account, campaign_id, limit)
    return [
        Reply(
            **{k: r[k] for k in Reply.model_fields if k != "hours_to_reply"},
            hours_to_reply=None if r["hours_to_reply"] is None else float(r["hours_to_reply"]),
        )
        for r in rows
    ]


class Skip(BaseModel):
    contact_id: str
    contact_name: str | None
    email: str | None
    kind: str
    reason: str
    evidence: dict[str, Any]
    batch_number: int | None
    contact_import_id: str | None
    bulk_enroll_id: str | None
    skipped_at: datetime


@router.get("/campaigns/{campaign_id}/skips", responses=error_responses(401, 404, 422))
async def list_skips(
    campaign_id: str,
    context: Context,
    account: Account,
    kind: SkipKind | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Skip]:
    """The contacts the campaign skipped (no enrollment), oldest first; `kind` narrows to one kind."""
    await context.campaign(account, campaign_id)
    async with context.pool.acquire() as conn:
        rows = await campaign_skips(conn, account, campaign_id, None if kind is None else kind.value, limit)
    return [
        Skip(
            **{k: r[k] for k in Skip.model_fields},
        )
        for r in rows
    ]
