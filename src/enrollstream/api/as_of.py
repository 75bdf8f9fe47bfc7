"""GET /as-of: the enrollment rows and stats cards as they were at a time, rebuilt from the events topic
(docs/time-travel.md "As of T"; the CLI's `enrollstream as-of`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from enrollstream.api.context import Account, Context
from enrollstream.api.errors import ApiError, FieldError, error_responses
from enrollstream.api.operations import StatsCards
from enrollstream.domain.bounds import ID_PATTERN, MAX_ID_LENGTH
from enrollstream.read_models.enrollments import EnrollmentRow
from enrollstream.runtime.as_of import MAX_ROWS, AsOfInputError, bounded_time, campaign_as_of, contact_as_of

router = APIRouter(tags=["time travel"])

IdQuery = Annotated[str | None, Query(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]


@dataclass(frozen=True)
class AsOfRow(EnrollmentRow):
    """An `enrollments` row as it was at T (a name of its own: the API's `EnrollmentRow` is seed 001's)."""


class AsOfAnswer(BaseModel):
    at: datetime  # T, in UTC
    campaign_id: str | None
    contact_id: str | None
    rows: list[AsOfRow]  # the enrollments table's columns, as they were at T
    cards: StatsCards | None  # a campaign's stats cards at T; null for a contact
    method: str  # timeline index, partition scan (one contact) or rebuild (a campaign)
    records_read: int  # event records read from the events topic to answer
    notes: list[str]


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422, "invalid_request", "the request is invalid", fields=[FieldError(field=field, message=message)]
    )


@router.get("/as-of", responses=error_responses(401, 404, 422))
async def get_as_of(
    context: Context,
    account: Account,
    at: Annotated[datetime, Query(description="T, ISO 8601; UTC when it has no zone")],
    campaign_id: IdQuery = None,
    contact_id: IdQuery = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 100,
) -> AsOfAnswer:
    """The enrollment rows (and a campaign's stats cards) as they were at `at`, rebuilt from the events
    topic: for `contact_id`, from that contact's own events (of `campaign_id` when given); for
    `campaign_id` alone, from a rebuild of the whole topic up to `at` (slow: docs/time-travel.md)."""
    try:
        when = bounded_time(at)
    except AsOfInputError as exc:
        raise _invalid("query.at", str(exc)) from None
    if campaign_id is None and contact_id is None:
        raise _invalid("query.campaign_id", "name a campaign_id, a contact_id or both")
    if campaign_id is not None:
        await context.campaign(account, campaign_id)  # 404 for another account's, as for none
    bootstrap, events_topic = context.client.bootstrap, context.client.topics.events
    if contact_id is not None:
        found = await contact_as_of(
            bootstrap, events_topic, context.pool, account, contact_id, when, campaign_id
        )
    else:
        assert campaign_id is not None and context.database_url is not None
        found = await campaign_as_of(
            bootstrap, events_topic, context.database_url, account, campaign_id, when, limit
        )
    return AsOfAnswer(
        at=found.at,
        campaign_id=found.campaign_id,
        contact_id=found.contact_id,
        rows=[AsOfRow(**row.__dict__) for row in found.rows],
        cards=None if found.cards is None else StatsCards(**found.cards),
        method=found.method,
        records_read=found.records_read,
        notes=found.notes,
    )
