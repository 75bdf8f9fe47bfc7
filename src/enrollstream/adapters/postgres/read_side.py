"""Typed wrappers over the read side's named queries (`queries.sql`): what the pages and verifiers call."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from enrollstream.adapters.postgres.queries import query


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class StatsMismatch:
    account_id: str
    campaign_id: str
    stored: dict[str, int]  # the campaign_stats row ({} when there is none)
    counted: dict[str, int]  # counting enrollments ({} when the campaign has none)


async def campaign_stats_mismatches(conn: asyncpg.Connection) -> list[StatsMismatch]:
    """Every campaign whose counters disagree with counting `enrollments`; [] when the cards are right."""
    return [
        StatsMismatch(
            account_id=row["account_id"],
            campaign_id=row["campaign_id"],
            stored=_json(row["stored"]) or {},
            counted=_json(row["counted"]) or {},
        )
        for row in await conn.fetch(query("campaign_stats_mismatches"))
    ]


async def recount_campaign_stats(conn: asyncpg.Connection) -> int:
    """Rebuild every counter from `enrollments` under a lock; returns how many campaigns it counted."""
    async with conn.transaction():
        await conn.execute(query("lock_campaign_stats"))
        await conn.execute(query("clear_campaign_stats"))
        return int(await conn.fetchval(query("recount_campaign_stats")))


@dataclass(frozen=True)
class SkippedContact:
    contact_id: str
    email: str | None
    reason: str
    kind: str


@dataclass(frozen=True)
class BulkEnrollSummary:
    """Seed 001's `{enrolled, batches, batch_size, skipped: [...]}`, plus where the request stands."""

    bulk_enroll_id: str
    account_id: str
    campaign_id: str
    contact_import_id: str
    contacts: int
    batches: int
    batch_size: int
    requested_at: datetime
    enrolled: int
    skipped: list[SkippedContact]
    pending: int  # children not decided or not projected yet (or refused: see their command results)
    complete: bool


async def bulk_enroll_summary(
    conn: asyncpg.Connection, account_id: str, bulk_enroll_id: str
) -> BulkEnrollSummary | None:
    """None until the BulkEnroll's acceptance is projected (or when it was refused)."""
    row = await conn.fetchrow(query("bulk_enroll_summary"), account_id, bulk_enroll_id)
    if row is None:
        return None
    return BulkEnrollSummary(
        bulk_enroll_id=row["bulk_enroll_id"],
        account_id=row["account_id"],
        campaign_id=row["campaign_id"],
        contact_import_id=row["contact_import_id"],
        contacts=row["contacts"],
        batches=row["batches"],
        batch_size=row["batch_size"],
        requested_at=row["requested_at"],
        enrolled=row["enrolled"],
        skipped=[SkippedContact(**item) for item in _json(row["skipped_list"])],
        pending=row["pending"],
        complete=row["complete"],
    )


# --- the pages ----------------------------------------------------------------------------------------

PAGE_SIZE = 20  # seed 000: 20 contacts per page


@dataclass(frozen=True)
class EnrollmentFilter:
    """The Enrollments page's filters; None means "any"."""

    statuses: Sequence[str] | None = None  # e.g. ("pending", "active") for the Active card
    batch_number: int | None = None
    current_step: int | None = None  # 1-based, as "Step 2 of 5" shows it
    name: str | None = None  # case-insensitive substring of the contact name
    stages: Sequence[str] | None = None  # seed 001's status: pending, sent, opened, replied, bounced


@dataclass(frozen=True)
class PageCursor:
    """Where the next page starts: the last row's place in the page order."""

    enrolled_at: datetime
    enrollment_id: str


@dataclass(frozen=True)
class EnrollmentPage:
    rows: list[dict[str, Any]]
    next: PageCursor | None  # None: this was the last page


async def enrollments_page(
    conn: asyncpg.Connection,
    account_id: str,
    campaign_id: str,
    where: EnrollmentFilter | None = None,
    after: PageCursor | None = None,
    limit: int = PAGE_SIZE,
) -> EnrollmentPage:
    """One page of a campaign's enrollments in (enrolled_at, enrollment_id) order, after `after`."""
    where = where or EnrollmentFilter()
    async with conn.transaction():
        await conn.execute(query("force_custom_plans"))
        records = await conn.fetch(
            query("enrollments_page"),
            account_id,
            campaign_id,
            None if where.statuses is None else list(where.statuses),
            where.batch_number,
            where.current_step,
            where.name,
            after.enrolled_at if after else None,
            after.enrollment_id if after else None,
            limit + 1,  # one more than asked: is there a next page?
            None if where.stages is None else list(where.stages),
        )
    rows = [dict(r) for r in records[:limit]]
    more = len(records) > limit
    cursor = PageCursor(rows[-1]["enrolled_at"], rows[-1]["enrollment_id"]) if more and rows else None
    return EnrollmentPage(rows, cursor)


async def enrollments_of_campaign(
    conn: asyncpg.Connection, account_id: str, campaign_id: str, enrollment_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Those of `enrollment_ids` that are the account's in the campaign, by id (with contact_id, status)."""
    rows = await conn.fetch(query("enrollments_of_campaign"), account_id, campaign_id, list(enrollment_ids))
    return {r["enrollment_id"]: dict(r) for r in rows}


async def contact_profile(
    conn: asyncpg.Connection, account_id: str, contact_id: str
) -> dict[str, Any] | None:
    """One contact of the account's directory (None: never put, or another account's)."""
    row = await conn.fetchrow(query("contact_by_id"), account_id, contact_id)
    return None if row is None else dict(row)


async def command_decision(
    conn: asyncpg.Connection, account_id: str, command_id: str
) -> dict[str, Any] | None:
    """The first decision of the account's command (None: not decided or not projected yet, or not
    this account's)."""
    row = await conn.fetchrow(query("command_decision"), command_id, account_id)
    return None if row is None else {**dict(row), "details": _json(row["details"]) or {}}


async def campaign_replies(
    conn: asyncpg.Connection, account_id: str, campaign_id: str, limit: int = 100
) -> list[dict[str, Any]]:
    """Seed 001 `/replies`: newest first, each with hours_to_reply."""
    return [dict(r) for r in await conn.fetch(query("campaign_replies"), account_id, campaign_id, limit)]


async def campaign_skips(
    conn: asyncpg.Connection, account_id: str, campaign_id: str, kind: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Seed 001 `/skips?kind=...`: oldest first; every kind when `kind` is None."""
    async with conn.transaction():
        await conn.execute(query("force_custom_plans"))
        records = await conn.fetch(query("campaign_skips"), account_id, campaign_id, kind, limit)
    return [{**dict(r), "evidence": _json(r["evidence"])} for r in records]


async def latest_enrollment(
    conn: asyncpg.Connection, account_id: str, contact_id: str, campaign_id: str
) -> dict[str, Any] | None:
    row = await conn.fetchrow(query("latest_enrollment"), account_id, contact_id, campaign_id)
    return None if row is None else dict(row)


async def campaign_stats_card(conn: asyncpg.Connection, account_id: str, campaign_id: str) -> dict[str, int]:
    """The stats cards (seed 000) of one campaign; all zero when it has no enrollments yet."""
    row = await conn.fetchrow(query("campaign_stats_card"), account_id, campaign_id)
    if row is None:
        return {}
    return {k: v for k, v in dict(row).items() if k not in ("account_id", "campaign_id")}


async def contact_why(
    conn: asyncpg.Connection, account_id: str, contact_id: str, campaign_id: str | None = None
) -> list[dict[str, Any]]:
    """Every decision about the contact in the order it was made (the `contact_why` view): its events,
    each with the command that caused it, and the commands that changed nothing (rejected with a code,
    duplicate, stale, deferred) with their reason. Only this account's; optionally one campaign."""
    async with conn.transaction():
        await conn.execute(query("force_custom_plans"))
        rows = await conn.fetch(query("contact_why"), account_id, contact_id, campaign_id)
    return [{**dict(r), "data": _json(r["data"])} for r in rows]


async def contact_timeline(
    conn: asyncpg.Connection, account_id: str, contact_id: str
) -> list[dict[str, Any]]:
    """Every event about the contact, oldest first, each with the command that caused it."""
    rows = await conn.fetch(query("contact_timeline"), account_id, contact_id)
    return [{**dict(r), "data": _json(r["data"])} for r in rows]
