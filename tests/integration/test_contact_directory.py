"""The contact directory per account (issue 13, seed 001 `enroll_contact {contact_id}`), through the real
broker, the real worker (decider, projector, scheduler, dispatcher) and a real SMTP server: a contact put
with `EnrollstreamClient.put_contact` is enrolled by its id alone and its step goes to the profile's
email; an unknown id, or another account's, is a coded rejection on the results topic; an import that
lists contacts by id reports the one without a profile as skipped in the bulk summary."""

from __future__ import annotations

import asyncio

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.client import EnrollstreamClient
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition, ContactImport
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.contact_imports import publish_contact_import
from tests.integration.test_bulk_enroll import bulk_enroll, summary_of
from tests.integration.test_cli_operations import Ran, cli, cli_env
from tests.integration.test_decider_runtime import ACCOUNT, send
from tests.servers.dns import LocalDnsServer
from tests.servers.smtp import RecordingSmtpServer
from tests.support import eventually, running_worker

OTHER_ACCOUNT = "acct-b"


def right_away(account_id: str = ACCOUNT) -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": "welcome",
            "account_id": account_id,
            "version": 1,
            "steps": [{"channel": "email", "delay": "PT0S", "content": {"subject": "Hi", "body": "Hello"}}],
        }
    )


def sending(settings: Settings, smtp: RecordingSmtpServer) -> Settings:
    return settings.model_copy(
        update={
            "smtp_host": smtp.host,
            "smtp_port": smtp.port,
            "smtp_starttls": False,
            "smtp_timeout": 5.0,
            "sender_from": "Acme <hello@acme.example>",
            "unsubscribe_url": "https://u.acme.example/u",
            "unsubscribe_keys": "k" * 32,
            "scheduler_interval_ms": 100,
        }
    )


async def test_a_put_contact_is_enrolled_by_id_and_its_step_goes_to_the_profiles_email(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer, db: asyncpg.Connection
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, right_away())
    await publish_campaign(bootstrap, topics.campaigns, right_away(OTHER_ACCOUNT))
    roles = ("decider", "projector", "scheduler", "dispatcher")
    async with (
        running_worker(sending(settings, smtp_server), roles=roles),
        EnrollstreamClient(bootstrap, topics.prefix) as client,
    ):
        put = await client.put_contact_and_wait(
            ACCOUNT, "grace", name="Grace Hopper", email="grace@navy.example", mobile="+15550199",
            line_type="mobile", time_zone="America/New_York",
        )  # fmt: skip
        assert put.status == "accepted"
        # The same contact id in another account is another contact.
        command_id = await client.put_contact(OTHER_ACCOUNT, "ada", name="Ada", email="ada@b.example")
        assert (await client.result(command_id)).status == "accepted"

        enrolled = await client.enroll_contact(ACCOUNT, "grace", "welcome", batch_number=1, priority=True)
        unknown = await client.enroll_contact(ACCOUNT, "nobody", "welcome")
        theirs = await client.enroll_contact(ACCOUNT, "ada", "welcome")  # acct-b's contact, not ours

        async def sent() -> bool:
            return bool(smtp_server.received_for("grace@navy.example"))

        await eventually(sent, timeout=60, what="the first step sent to the profile's email")

        async def projected() -> bool:
            row = await db.fetchrow("select status from enrollments where contact_id = 'grace'")
            return row is not None and row["status"] == "completed"

        await eventually(projected, timeout=60, what="grace's enrollment completed in the read model")

    assert enrolled.status == "accepted"
    for refused in (unknown, theirs):
        assert (refused.status, refused.code) == ("rejected", "contact_not_found")
        assert refused.details == {"contact_id": refused.contact_id}
    [received] = smtp_server.messages
    assert received.rcpt_tos == ("grace@navy.example",)
    row = await db.fetchrow(
        "select account_id, contact_name, email, mobile, batch_number, priority from enrollments"
        " where contact_id = 'grace'"
    )
    assert dict(row) == {
        "account_id": ACCOUNT,
        "contact_name": "Grace Hopper",
        "email": "grace@navy.example",
        "mobile": "+15550199",
        "batch_number": 1,
        "priority": True,
    }
    assert await db.fetchval("select count(*) from enrollments") == 1
    directory = await db.fetch(
        "select account_id, contact_id, name, email, mobile, line_type, time_zone, opted_out"
        " from contacts order by account_id"
    )
    assert [tuple(r) for r in directory] == [
        (
            ACCOUNT,
            "grace",
            "Grace Hopper",
            "grace@navy.example",
            "+15550199",
            "mobile",
            "America/New_York",
            False,
        ),
        (OTHER_ACCOUNT, "ada", "Ada", "ada@b.example", None, "unknown", None, False),
    ]


async def test_an_import_by_ids_reports_the_contact_without_a_profile_as_skipped(
    settings: Settings, topics: Topics, database_url: str, db: asyncpg.Connection
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, right_away())
    by_ids = ContactImport.model_validate(
        {
            "contact_import_id": "by-ids",
            "account_id": ACCOUNT,
            "contacts": [{"contact_id": "ann"}, {"contact_id": "ghost"}, {"contact_id": "bob"}],
        }
    )
    await publish_contact_import(bootstrap, topics.contact_imports, by_ids)
    bulk = bulk_enroll("welcome", "by-ids", 2)
    async with running_worker(settings), EnrollstreamClient(bootstrap, topics.prefix) as client:
        for contact_id in ("ann", "bob"):
            put = await client.put_contact_and_wait(ACCOUNT, contact_id, email=f"{contact_id}@example.org")
            assert put.status == "accepted"
        # acct-b's ghost has a profile; ours does not.
        assert (await client.put_contact_and_wait(OTHER_ACCOUNT, "ghost", email="g@b.example")).status == (
            "accepted"
        )
        await send(settings, topics, bulk, f"{ACCOUNT}/")

        async def complete() -> bool:
            found = await summary_of(database_url, bulk["command_id"])
            return found is not None and found.complete

        await eventually(complete, timeout=60, what="the bulk enroll summary complete")
    summary = await summary_of(database_url, bulk["command_id"])
    assert summary is not None
    assert (summary.contacts, summary.enrolled, summary.batches, summary.pending) == (3, 2, 2, 0)
    assert [(s.contact_id, s.email, s.kind, s.reason) for s in summary.skipped] == [
        ("ghost", None, "contact_not_found", "Contact not found")
    ]
    emails = await db.fetch("select contact_id, email from enrollments order by contact_id")
    assert [tuple(r) for r in emails] == [("ann", "ann@example.org"), ("bob", "bob@example.org")]


async def test_an_enroll_by_id_is_mx_verified_against_the_profiles_email(
    settings: Settings, topics: Topics, dns_server: LocalDnsServer
) -> None:
    """The decider's runtime looks the MX up for the email the contact will be enrolled with: the profile's,
    also when the PutContact is in the same batch as the Enroll (published back to back, not awaited)."""
    dns_server.add("good.test", "MX", "10 mx.good.test.")
    dns_server.add("nomx.test", "A", "192.0.2.1")
    settings = settings.model_copy(
        update={"dns_nameservers": f"127.0.0.1:{dns_server.port}", "dns_timeout_s": 0.5}
    )
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    verifying = right_away().model_copy(update={"verify_email_mx": True})
    await publish_campaign(bootstrap, topics.campaigns, verifying)
    async with running_worker(settings), EnrollstreamClient(bootstrap, topics.prefix) as client:
        enrolls = {}
        for contact_id, email in (("val", "val@good.test"), ("cyd", "cyd@nomx.test")):
            await client.put_contact(ACCOUNT, contact_id, email=email)
            enrolls[contact_id] = client.envelope(
                "Enroll.v1", ACCOUNT, {"contact_id": contact_id, "campaign_id": "welcome"}
            )
            await client.publish(enrolls[contact_id])
        results = {c: await client.result(e["command_id"]) for c, e in enrolls.items()}
    assert results["val"].status == "accepted"
    assert (results["cyd"].status, results["cyd"].code) == ("skipped", "mx_invalid")
    assert dns_server.query_count("good.test") == 1


async def test_the_cli_puts_and_shows_a_contact_and_refuses_an_unknown_time_zone(
    settings: Settings, topics: Topics
) -> None:
    env = cli_env(settings)
    async with running_worker(settings):
        put = await cli(
            "contacts", "put", "lin", "--name", "Lin <script>", "--email", "lin@example.org",
            "--time-zone", "Asia/Tokyo", env=env,
        )  # fmt: skip
        refused = await cli("contacts", "put", "bad", "--time-zone", "Mars/Base", env=env)

        async def shown() -> Ran:
            for _ in range(50):
                show = await cli("contacts", "show", "lin", env=env)
                if show.code == 0:
                    return show
                await asyncio.sleep(0.2)
            return show

        show = await shown()
        theirs = await cli("contacts", "show", "lin", env={**env, "ENROLLSTREAM_ACCOUNT": "acct-other"})
    assert put.code == 0 and "accepted: PutContact.v1" in put.out, (put.out, put.err)
    assert refused.code == 1 and refused.one_error_line and "time_zone" in refused.err, refused.err
    assert show.code == 0, show.err
    assert "Lin <script>" in show.out and "lin@example.org" in show.out and "Asia/Tokyo" in show.out
    assert theirs.code == 1 and "contact_not_found" in theirs.err
