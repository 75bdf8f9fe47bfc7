"""Typed wrappers over the read side's named queries (`queries.sql`): what the pages and verifiers call."""

from __future__ import annotations

import json
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
