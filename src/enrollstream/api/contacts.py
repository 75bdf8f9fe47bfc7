"""The account's contact directory (seed 001: `enroll_contact`'s contact "must be in the same account"):
put a contact's profile (a PutContact command) and read it back (the `contacts` read model)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import AfterValidator, BaseModel, Field

from enrollstream.adapters.postgres.read_side import contact_profile
from enrollstream.api.commands import (
    Deadline,
    IdempotencyKey,
    command_id_for,
    envelope,
    publish_all,
    rejection,
    resolve,
)
from enrollstream.api.context import Account, Context
from enrollstream.api.enrollments import Body
from enrollstream.api.errors import ApiError, error_responses
from enrollstream.domain.bounds import ID_PATTERN, MAX_ID_LENGTH, Line
from enrollstream.domain.campaign import LineType
from enrollstream.domain.commands import MAX_CONTACT_NAME, MAX_EMAIL, MAX_MOBILE, MAX_TIME_ZONE
from enrollstream.domain.schedule import valid_zone

router = APIRouter(tags=["contacts"])


def known_time_zone(value: str | None) -> str | None:
    if value is not None and not valid_zone(value):
        raise ValueError(f"unknown time zone {value!r}: use an IANA name such as Europe/Berlin")
    return value


ContactId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]


class ContactProfile(Body):
    """The whole profile (an upsert: what is not given is cleared), within the domain's bounds."""

    name: Annotated[Line, Field(max_length=MAX_CONTACT_NAME)] = ""
    email: Annotated[Line, Field(max_length=MAX_EMAIL)] | None = None
    mobile: Annotated[Line, Field(max_length=MAX_MOBILE)] | None = None
    line_type: LineType = LineType.UNKNOWN
    time_zone: Annotated[Line, Field(max_length=MAX_TIME_ZONE), AfterValidator(known_time_zone)] | None = None
    opted_out: bool = False


class ContactPut(BaseModel):
    contact_id: str
    status: str  # accepted
    command_id: str


class Contact(BaseModel):
    contact_id: str
    name: str
    email: str | None
    mobile: str | None
    line_type: str
    time_zone: str | None
    opted_out: bool
    updated_at: datetime


@router.put(
    "/contacts/{contact_id}",
    responses={**error_responses(401, 422), 202: {"description": "not decided within the bound"}},
)
async def put_contact(
    contact_id: ContactId,
    body: ContactProfile,
    context: Context,
    account: Account,
    idempotency_key: IdempotencyKey = None,
) -> ContactPut:
    """Create or replace the contact's profile in the account's directory; `opted_out: true` opts it out
    (running enrollments stop), and nothing opts it back in."""
    deadline = Deadline.after(context.result_timeout_s)
    command_id = command_id_for(account, f"PUT /contacts/{contact_id}", idempotency_key)
    data = {**body.model_dump(mode="json"), "contact_id": contact_id}
    [result] = await publish_all(context, [envelope("PutContact.v1", account, command_id, data)])
    decided = await resolve(context, account, result, deadline)
    if decided.status != "accepted":
        raise rejection(decided)
    return ContactPut(contact_id=contact_id, status=decided.status, command_id=command_id)


@router.get("/contacts/{contact_id}", responses=error_responses(401, 404, 422))
async def get_contact(contact_id: ContactId, context: Context, account: Account) -> Contact:
    """The contact's profile as the directory's read model has it (after a PUT: once projected)."""
    async with context.pool.acquire() as conn:
        row = await contact_profile(conn, account, contact_id)
    if row is None:
        raise ApiError(404, "contact_not_found", f"no contact {contact_id!r} in this account")
    return Contact.model_validate(row)
