"""MX verification before decide (seed 001 `verify_email_mx`), against a real DNS server on 127.0.0.1.
Issue 11 item 12: DNS that does not answer enrolls the contact, recorded as mx_check unverified."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition
from enrollstream.runtime.campaigns import publish_campaign
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll, send
from tests.servers.dns import LocalDnsServer
from tests.support import eventually, read_until, running_worker


def verifying_campaign() -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": "verified",
            "account_id": ACCOUNT,
            "version": 1,
            "verify_email_mx": True,
            "steps": [{"channel": "email", "delay": "PT1H", "content": {"subject": "Hi", "body": "Hello"}}],
        }
    )


def with_email(command: dict[str, Any], email: str) -> dict[str, Any]:
    command["data"]["contact"]["email"] = email
    return command


async def test_no_mx_is_skipped_a_timeout_is_enrolled_unverified_and_answers_are_cached(
    settings: Settings, topics: Topics, dns_server: LocalDnsServer
) -> None:
    dns_server.add("good.test", "MX", "10 mx.good.test.")
    dns_server.add("nomx.test", "A", "192.0.2.1")
    dns_server.drop("slow.test")  # read and never answered
    settings = settings.model_copy(
        update={"dns_nameservers": f"127.0.0.1:{dns_server.port}", "dns_timeout_s": 0.5}
    )
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, verifying_campaign())
    emails = {
        "ann": "ann@good.test",
        "bob": "bob@good.test",
        "cyd": "cyd@nomx.test",
        "dee": "dee@slow.test",
    }
    async with running_worker(settings):
        for contact_id, email in emails.items():
            command = with_email(enroll(contact_id, "verified"), email)
            await send(settings, topics, command, f"{ACCOUNT}/{contact_id}")
        records = await read_until(
            bootstrap,
            topics.events,
            lambda rs: {json.loads(r.value)["contact_id"] for r in rs} >= set(emails),
        )
    first = {}
    for record in records:
        event = json.loads(record.value)
        first.setdefault(event["contact_id"], event)
    assert first["ann"]["type"] == first["bob"]["type"] == "ContactEnrolled.v1"
    assert first["ann"]["data"]["mx"]["has_mx"] is True
    assert first["cyd"]["type"] == "EnrollmentSkipped.v1"
    assert first["cyd"]["data"]["kind"] == "mx_invalid"
    assert first["dee"]["type"] == "ContactEnrolled.v1", "a DNS timeout is not mx_invalid"
    assert first["dee"]["data"]["mx"]["answered"] is False
    assert dns_server.query_count("good.test") == 1, "the second good.test contact came from the cache"


async def test_when_dns_does_not_answer_the_contact_is_enrolled_with_mx_check_unverified_in_postgres(
    settings: Settings, topics: Topics, dns_server: LocalDnsServer, database_url: str
) -> None:
    dns_server.add("good.test", "MX", "10 mx.good.test.")
    dns_server.drop("silent.test")  # read and never answered: a timeout
    dns_server.servfail("broken.test")  # SERVFAIL from the only nameserver
    settings = settings.model_copy(
        update={"dns_nameservers": f"127.0.0.1:{dns_server.port}", "dns_timeout_s": 0.5}
    )
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, verifying_campaign())
    await publish_campaign(bootstrap, topics.campaigns, campaign())  # does not verify MX
    commands = [
        with_email(enroll("tim", "verified"), "tim@silent.test"),
        with_email(enroll("sam", "verified"), "sam@broken.test"),
        with_email(enroll("val", "verified"), "val@good.test"),
        with_email(enroll("nia", "welcome"), "nia@silent.test"),
    ]
    conn = await asyncpg.connect(database_url)
    try:
        async with running_worker(settings):
            for command in commands:
                await send(settings, topics, command, f"{ACCOUNT}/{command['data']['contact_id']}")

            async def projected() -> bool:
                return bool(await conn.fetchval("select count(*) from enrollments") == len(commands))

            await eventually(projected, what="every contact enrolled in the read model")
        rows = await conn.fetch(
            "select contact_id, status, mx_check from enrollment_table order by contact_id"
        )
    finally:
        await conn.close()
    assert [(r["contact_id"], r["status"], r["mx_check"]) for r in rows] == [
        ("nia", "pending", "not_required"),
        ("sam", "pending", "unverified"),  # SERVFAIL: no answer, enrolled anyway
        ("tim", "pending", "unverified"),  # timeout: no answer, enrolled anyway
        ("val", "pending", "verified"),
    ]
