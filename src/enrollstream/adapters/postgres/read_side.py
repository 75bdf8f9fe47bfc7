"""Typed wrappers over the read side's named queries (`queries.sql`): what the pages and verifiers call."""

from __future__ import annotations

import json
from dataclasses import dataclass
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
