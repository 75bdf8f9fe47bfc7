"""Issue 11 item 7: a skipped Enroll's result says `skipped`, with the skip kind and its reason and no
enrollment id, read from the real results topic; a BulkEnroll's children say it per contact, and the
`decisions` table and the "why" view keep it."""

from __future__ import annotations

from typing import Any

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.postgres.read_side import contact_why
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition
from enrollstream.domain.commands import child_command_id
from enrollstream.runtime.campaigns import publish_campaign
from tests.integration.test_bulk_enroll import bulk_enroll
from tests.integration.test_decider_runtime import ACCOUNT, enroll, results_by_id, send
from tests.support import eventually, read_until, running_worker


def sms_campaign() -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": "texts",
            "account_id": ACCOUNT,
            "version": 1,
            "steps": [{"channel": "sms", "delay": "PT1H", "content": {"body": "Hello"}}],
        }
    )


def contact(name: str, line_type: str = "mobile", opted_out: bool = False) -> dict[str, Any]:
    return {"name": name, "mobile": "+15550100", "line_type": line_type, "opted_out": opted_out}


async def test_a_skipped_enroll_comes_back_skipped_with_its_kind_and_reason_and_no_enrollment_id(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, sms_campaign())
    landline = enroll("lara", "texts", contact=contact("Lara", line_type="landline"))
    opted_out = enroll("otto", "texts", contact=contact("Otto", opted_out=True))
    enrolled = enroll("mia", "texts", contact=contact("Mia"))
    commands = (landline, opted_out, enrolled)
    async with running_worker(settings, roles=("decider", "projector")):
        for command in commands:
            await send(settings, topics, command, f"{ACCOUNT}/{command['data']['contact_id']}")
        records = await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: {c["command_id"] for c in commands} <= set(results_by_id(rs)),
        )
        conn = await asyncpg.connect(database_url)
        try:

            async def skip_decided() -> bool:
                found = await conn.fetchval(
                    "select count(*) from decisions where command_id = any($1::text[])",
                    [landline["command_id"], opted_out["command_id"]],
                )
                return bool(found == 2)

            await eventually(skip_decided, what="the skipped decisions projected")
            decided = await conn.fetch(
                "select command_id, status, code, enrollment_ids from decisions where command_id = any($1)",
                [landline["command_id"], opted_out["command_id"]],
            )
            why = await contact_why(conn, ACCOUNT, "lara")
            enrollments = await conn.fetchval(
                "select count(*) from enrollments where account_id = $1 and contact_id in ('lara', 'otto')",
                ACCOUNT,
            )
        finally:
            await conn.close()
    results = results_by_id(records)

    lara = results[landline["command_id"]]
    assert (lara["status"], lara["code"]) == ("skipped", "landline")
    assert lara["message"] == "The number is a landline and cannot receive SMS"
    assert lara["enrollment_ids"] == [] and lara["details"] == {"mobile": "+15550100"}
    assert len(lara["event_ids"]) == 1  # the EnrollmentSkipped event: the skip is a recorded fact
    otto = results[opted_out["command_id"]]
    assert (otto["status"], otto["code"], otto["enrollment_ids"]) == ("skipped", "opted_out", [])
    assert otto["message"] == "Contact has opted out"
    mia = results[enrolled["command_id"]]
    assert (mia["status"], len(mia["enrollment_ids"])) == ("accepted", 1)

    assert enrollments == 0, "a skipped contact has no enrollment row"
    assert {(r["status"], r["code"], tuple(r["enrollment_ids"])) for r in decided} == {
        ("skipped", "landline", ()),
        ("skipped", "opted_out", ()),
    }
    [skip] = [r for r in why if r["what"] == "EnrollmentSkipped.v1"]
    assert (skip["status"], skip["command_id"]) == ("skipped", landline["command_id"])


async def test_each_contact_a_bulk_enroll_skips_gets_a_skipped_result_of_its_own(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, sms_campaign())
    bulk = bulk_enroll(
        "texts",
        "inline-texts",
        10,
        contacts=[
            {"contact_id": "b-mobile", "contact": contact("Mobile")},
            {"contact_id": "b-landline", "contact": contact("Landline", line_type="landline")},
            {"contact_id": "b-opted-out", "contact": contact("Opted", opted_out=True)},
        ],
    )
    children = {c: child_command_id(bulk["command_id"], c) for c in ("b-mobile", "b-landline", "b-opted-out")}
    async with running_worker(settings, roles=("decider",)):
        await send(settings, topics, bulk, f"{ACCOUNT}/bulk")
        records = await read_until(
            bootstrap, topics.command_results, lambda rs: set(children.values()) <= set(results_by_id(rs))
        )
    results = results_by_id(records)
    assert results[bulk["command_id"]]["status"] == "accepted"  # fanned out
    by_contact = {c: results[command_id] for c, command_id in children.items()}
    assert [(c, r["status"], r["code"]) for c, r in sorted(by_contact.items())] == [
        ("b-landline", "skipped", "landline"),
        ("b-mobile", "accepted", None),
        ("b-opted-out", "skipped", "opted_out"),
    ]
    assert by_contact["b-landline"]["enrollment_ids"] == by_contact["b-opted-out"]["enrollment_ids"] == []
    assert len(by_contact["b-mobile"]["enrollment_ids"]) == 1
