"""BulkEnroll from a published contact import, and its queryable summary (seed 001 `POST .../enroll`)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.postgres.read_side import (
    BulkEnrollSummary,
    bulk_enroll_summary,
    campaign_stats_mismatches,
)
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition, ContactImport
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.contact_imports import publish_contact_import
from tests.integration.test_decider_runtime import ACCOUNT, enroll, results_by_id, send
from tests.support import eventually, read_until, running_worker


def outreach_campaign(campaign_id: str) -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": campaign_id,
            "account_id": ACCOUNT,
            "version": 1,
            "outreach_id": "outreach-1",
            "unique_contacts": True,
            "steps": [{"channel": "email", "delay": "PT1H", "content": {"subject": "Hi", "body": "Hello"}}],
        }
    )


def bulk_enroll(campaign_id: str, contact_import_id: str, batch_size: int, **data: Any) -> dict[str, Any]:
    return {
        "command_id": f"bulk-{uuid.uuid4()}",
        "type": "BulkEnroll.v1",
        "account_id": ACCOUNT,
        "issued_at": datetime(2026, 11, 22, 10, 0, tzinfo=UTC).isoformat(),
        "actor": "importer",
        "data": {
            "campaign_id": campaign_id,
            "contact_import_id": contact_import_id,
            "batch_size": batch_size,
            **data,
        },
    }


def contact_import(contact_import_id: str, n: int, account_id: str = ACCOUNT) -> ContactImport:
    contacts: list[dict[str, Any]] = [
        {"contact_id": f"c{i:03d}", "contact": {"name": f"Contact {i}", "email": f"c{i:03d}@example.org"}}
        for i in range(n)
    ]
    contacts[7]["contact"].pop("email")  # nothing to send an email step to: skipped, missing_address
    return ContactImport.model_validate(
        {"contact_import_id": contact_import_id, "account_id": account_id, "contacts": contacts}
    )


async def summary_of(database_url: str, bulk_enroll_id: str) -> BulkEnrollSummary | None:
    conn = await asyncpg.connect(database_url)
    try:
        return await bulk_enroll_summary(conn, ACCOUNT, bulk_enroll_id)
    finally:
        await conn.close()


async def test_a_bulk_enroll_of_a_published_import_is_summarised_with_its_batches_and_skips(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, outreach_campaign("spring"))
    await publish_campaign(bootstrap, topics.campaigns, outreach_campaign("spring-sibling"))
    await publish_contact_import(bootstrap, topics.contact_imports, contact_import("import-120", 120))
    already = enroll("c003", campaign_id="spring")  # already enrolled in this campaign: skipped
    sibling = enroll("c042", campaign_id="spring-sibling")  # in a sibling of a unique-contacts outreach
    bulk = bulk_enroll("spring", "import-120", 50)
    async with running_worker(settings):
        for command in (already, sibling):
            await send(settings, topics, command, f"{ACCOUNT}/{command['data']['contact_id']}")
        await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: {already["command_id"], sibling["command_id"]} <= set(results_by_id(rs)),
        )
        await send(settings, topics, bulk, f"{ACCOUNT}/import-120")
        await send(settings, topics, bulk, f"{ACCOUNT}/import-120")  # an upstream retry: counted once

        async def complete() -> bool:
            found = await summary_of(database_url, bulk["command_id"])
            return found is not None and found.complete

        await eventually(complete, timeout=90, what="the bulk enroll summary complete")
        results = await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: sum(json.loads(r.value)["command_id"] == bulk["command_id"] for r in rs) >= 2,
        )
    summary = await summary_of(database_url, bulk["command_id"])
    assert summary is not None
    assert (summary.contacts, summary.batches, summary.batch_size) == (120, 3, 50)
    assert (summary.enrolled, len(summary.skipped), summary.pending) == (117, 3, 0)
    assert summary.enrolled + len(summary.skipped) == 120
    assert summary.contact_import_id == "import-120" and summary.campaign_id == "spring"
    skips = {s.contact_id: (s.kind, s.reason, s.email) for s in summary.skipped}
    assert skips == {
        "c003": ("already_enrolled", "Already enrolled in this campaign", "c003@example.org"),
        "c007": ("missing_address", "No email address for an email step", None),
        "c042": (
            "cross_campaign_duplicate",
            "Already enrolled in another campaign in this outreach",
            "c042@example.org",
        ),
    }
    assert [s.contact_id for s in summary.skipped] == ["c003", "c007", "c042"]  # in batch order

    parent = [json.loads(r.value) for r in results if json.loads(r.value)["command_id"] == bulk["command_id"]]
    assert [p["status"] for p in parent] == ["accepted", "accepted"]
    assert parent[0]["details"] == {
        "contact_import_id": "import-120",
        "contacts": "120",
        "batches": "3",
        "batch_size": "50",
    }
    conn = await asyncpg.connect(database_url)
    try:
        per_batch = await conn.fetch(
            "select batch_number, count(*) as n from enrollments where bulk_enroll_id = $1"
            " group by 1 order by 1",
            bulk["command_id"],
        )
        parents = await conn.fetchval("select count(*) from bulk_enrollments")
        mismatches = await campaign_stats_mismatches(conn)
    finally:
        await conn.close()
    # batch 1 lost c003 and c007 to skips, batch 1 of 50 / 2 of 50 / 3 of 20, c042 in batch 1 too
    assert [(r["batch_number"], r["n"]) for r in per_batch] == [(1, 47), (2, 50), (3, 20)]
    assert parents == 1
    assert mismatches == []


async def test_an_unknown_import_is_contact_import_not_found_and_inline_contacts_still_work(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, outreach_campaign("spring"))
    # Another account's import of the same id is not this account's.
    await publish_contact_import(
        bootstrap, topics.contact_imports, contact_import("theirs", 10, account_id="acct-other")
    )
    unknown = bulk_enroll("spring", "no-such-import", 50)
    other_account = bulk_enroll("spring", "theirs", 50)
    no_campaign = bulk_enroll("nope", "theirs", 50)
    inline = bulk_enroll(
        "spring",
        "inline-import",
        2,
        contacts=[
            *(
                {"contact_id": f"i{i}", "contact": {"name": f"I {i}", "email": f"i{i}@example.org"}}
                for i in range(3)
            ),
            {"contact_id": "no-facts"},  # upstream knows nothing about this one: skipped, not pending
        ],
    )
    commands = (unknown, other_account, no_campaign, inline)
    async with running_worker(settings):
        for command in commands:
            await send(settings, topics, command, f"{ACCOUNT}/bulk")
        records = await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: {c["command_id"] for c in commands} <= set(results_by_id(rs)),
        )

        async def inline_complete() -> bool:
            found = await summary_of(database_url, inline["command_id"])
            return found is not None and found.complete

        await eventually(inline_complete, what="the inline bulk enroll summarised")
    results = results_by_id(records)
    for refused in (unknown, other_account):
        result = results[refused["command_id"]]
        assert (result["status"], result["code"]) == ("rejected", "contact_import_not_found")
        assert result["details"] == {"contact_import_id": refused["data"]["contact_import_id"]}
    assert results[no_campaign["command_id"]]["code"] == "campaign_not_found"
    assert results[inline["command_id"]]["status"] == "accepted"
    inline_summary = await summary_of(database_url, inline["command_id"])
    assert inline_summary is not None
    assert (inline_summary.enrolled, inline_summary.batches, inline_summary.pending) == (3, 2, 0)
    assert [(s.contact_id, s.kind) for s in inline_summary.skipped] == [("no-facts", "contact_not_found")]
    for refused in (unknown, other_account, no_campaign):
        assert await summary_of(database_url, refused["command_id"]) is None
