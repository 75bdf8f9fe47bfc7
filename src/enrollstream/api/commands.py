"""Writes are commands: how a route publishes one and answers with its result, and `GET /commands/{id}`.

A write's command id comes from its `Idempotency-Key` header when given: a hash of the account, the
route and the key, so a retried POST publishes the same command, which the decider decides once (the
retry's result is `duplicate`, answered from the first decision in the `decisions` read model, so the
retry answers what the first request answered). Without the header every request is a new command.

The API waits `result_timeout_s` for the result on the results topic; past it, it answers 202 with
`Location: /commands/{command_id}`, which answers 404 `command_not_found` until the decision is projected.
The API never writes a read model: it reads `decisions`, which the projector fills from the results topic.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from enrollstream.adapters.postgres.read_side import command_decision
from enrollstream.api.context import Account, ApiContext, Context
from enrollstream.api.errors import ApiError, FieldError, error_responses
from enrollstream.client import CommandTimeout, new_command_id
from enrollstream.domain import CommandResult, parse_command
from enrollstream.domain.bounds import ID_PATTERN, MAX_ID_LENGTH

router = APIRouter(tags=["commands"])

T = TypeVar("T")

ACTOR = "api"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=ID_PATTERN,
        description="the same key on a retried write: one effect, the same answer",
    ),
]


def command_id_for(account_id: str, route: str, idempotency_key: str | None, part: str = "") -> str:
    """Deterministic from (account, route, key[, part]) when a key is given; else a new id. `part`
    tells apart the commands of one request (one per enrollment of a selection)."""
    if idempotency_key is None:
        return new_command_id()
    digest = hashlib.sha256("\x00".join((account_id, route, idempotency_key, part)).encode()).hexdigest()
    return f"api-{digest[:40]}"


class CommandPending(Exception):
    """Past the result bound: 202, `Location: /commands/{id}` (the first one still pending)."""

    def __init__(self, command_ids: list[str]) -> None:
        super().__init__(f"commands not decided yet: {command_ids}")
        self.command_ids = command_ids


class PendingBody(BaseModel):
    status: str = "pending"
    command_ids: list[str]
    location: str


def install_pending_handler(app: FastAPI) -> None:
    async def pending(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CommandPending)
        location = f"/commands/{exc.command_ids[0]}"
        body = PendingBody(command_ids=exc.command_ids, location=location)
        return JSONResponse(body.model_dump(), status_code=202, headers={"Location": location})

    app.add_exception_handler(CommandPending, pending)


@dataclass
class Decided:
    """A command's decision: from its result, or (for a duplicate) from the first decision projected."""

    command_id: str
    status: str  # accepted, skipped, rejected, stale, deferred (never duplicate: that is resolved)
    code: str | None = None
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    enrollment_ids: list[str] = field(default_factory=list)


@dataclass
class Deadline:
    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @property
    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())


async def poll_read_model(deadline: Deadline, read: Callable[[], Awaitable[T | None]]) -> T | None:
    """`read()` until it answers something other than None, or the deadline passes (then None).
    The projector writes a decision within milliseconds of its result; this bounds the wait."""
    while True:
        found = await read()
        if found is not None or deadline.left <= 0:
            return found
        await asyncio.sleep(min(0.05, deadline.left))


async def first_decision(context: ApiContext, account_id: str, command_id: str) -> dict[str, Any] | None:
    async with context.pool.acquire() as conn:
        found: dict[str, Any] | None = await command_decision(conn, account_id, command_id)
    if found is not None and found["status"] == "duplicate":
        return None  # the first decision is not projected yet
    return found


def decided_from_row(row: dict[str, Any]) -> Decided:
    return Decided(
        command_id=row["command_id"],
        status=row["status"],
        code=row["code"],
        message=row["message"],
        details=dict(row["details"] or {}),
        enrollment_ids=list(row["enrollment_ids"] or []),
    )


async def resolve(context: ApiContext, account_id: str, result: CommandResult, deadline: Deadline) -> Decided:
    """The decision a result stands for; a duplicate's is the first decision (CommandPending if it is
    not projected before the deadline)."""
    if result.status != "duplicate":
        return Decided(
            command_id=result.command_id,
            status=result.status,
            code=result.code,
            message=result.message,
            details=dict(result.details),
            enrollment_ids=list(result.enrollment_ids),
        )

    async def read() -> dict[str, Any] | None:
        return await first_decision(context, account_id, result.command_id)

    row = await poll_read_model(deadline, read)
    if row is None:
        raise CommandPending([result.command_id])
    return decided_from_row(row)


def envelope(command_type: str, account_id: str, command_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "command_id": command_id,
        "type": command_type,
        "account_id": account_id,
        "issued_at": datetime.now(UTC).isoformat(),
        "actor": ACTOR,
        "data": data,
    }


async def publish_all(context: ApiContext, commands: list[dict[str, Any]]) -> list[CommandResult]:
    """Publish the commands (validated by the domain's models) and wait for every result within the
    bound; CommandPending names those still undecided."""
    try:
        parsed = [parse_command(c) for c in commands]
    except ValidationError as invalid:  # a bound the request model did not repeat: the domain's word
        fields = [
            FieldError(field=".".join(["body", *map(str, error["loc"][1:])]), message=error["msg"])
            for error in invalid.errors()
        ]
        raise ApiError(422, "invalid_request", "the request is invalid", fields=fields) from None
    sends = [
        asyncio.create_task(context.client.send(command, timeout=context.result_timeout_s))
        for command in parsed
    ]
    await asyncio.wait(sends)
    pending = [
        c.command_id for c, s in zip(parsed, sends, strict=True) if isinstance(s.exception(), CommandTimeout)
    ]
    if pending:
        raise CommandPending(pending)
    return [s.result() for s in sends]


def rejection(decided: Decided) -> ApiError:
    """A refused (or skipped) command as its HTTP answer: 404 for what does not exist in the account,
    422 for the rest (seed 001: contact_already_enrolled); the code is the decider's."""
    code = decided.code or decided.status
    status = 404 if code.endswith("_not_found") else 422
    return ApiError(status, code, decided.message or code)


# --- GET /commands/{command_id} ---------------------------------------------------------------------


class CommandStatus(BaseModel):
    command_id: str
    command_type: str
    status: str  # accepted, skipped, rejected, stale, deferred
    code: str | None
    message: str
    details: dict[str, Any]
    enrollment_ids: list[str]
    campaign_id: str | None
    enrollment_id: str | None
    contact_id: str = Field(description="empty for a BulkEnroll")
    issued_at: datetime | None


@router.get("/commands/{command_id}", responses=error_responses(401, 404))
async def get_command(command_id: str, context: Context, account: Account) -> CommandStatus:
    """A write's command, once decided (the Location of a 202). 404 `command_not_found` until its decision
    is projected, and for another account's command."""
    if len(command_id) > 512:
        raise command_not_found(command_id[:64])
    row = await first_decision(context, account, command_id)
    if row is None:
        raise command_not_found(command_id)
    return CommandStatus.model_validate(row)


def command_not_found(command_id: str) -> ApiError:
    return ApiError(
        404, "command_not_found", f"no decision for command {command_id!r} in this account (yet: poll again)"
    )
