"""A campaign is (account, campaign): two accounts using the same campaign id have two campaigns, each
with its own definition, status, pauses, timers and read models. Through the real broker, the real
decider and projector, PostgreSQL and the scheduler driven by a manual clock."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.postgres.read_side import campaign_stats_card, enrollments_page
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition, StepDue
from enrollstream.operations import apply_campaign, known_campaign
from enrollstream.runtime.campaigns import (
    CampaignCatalog,
    campaign_key,
    campaign_version_key,
    publish_campaign,
)
from tests.integration.test_scheduler import events_of, results, scheduler, timers, wait_for_timers
from tests.servers.clock import ManualClock
from tests.support import eventually, publish, running_worker

A, B = "acct-a", "acct-b"
CAMPAIGN = "drip"  # the same id in both accounts
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def campaign(account_id: str, version: int = 1, status: str = "active") -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": CAMPAIGN,
            "account_id": account_id,
            "version": version,
            "status": status,
            "steps": [
                {
                    "channel": "email",
                    "delay": "PT1H",
                    "content": {"subject": f"Hello from {account_id}", "body": f"{account_id} body"},
                }
            ],
        }
    )


def enroll(account_id: str, contact_id: str, at: datetime = T0) -> dict[str, Any]:
    return {
        "command_id": f"cmd-{uuid.uuid4()}",
        "type": "Enroll.v1",
        "account_id": account_id,
        "issued_at": at.isoformat(),
        "actor": "test",
        "data": {
            "contact_id": contact_id,
            "campaign_id": CAMPAIGN,
            "contact": {"name": contact_id.title(), "email": f"{contact_id}@{account_id}.example.org"},
        },
    }


async def send(bootstrap: str, topics: Topics, cmd: dict[str, Any]) -> str:
    key = f"{cmd['account_id']}/{cmd['data']['contact_id']}"
    await publish(bootstrap, topics.commands, json.dumps(cmd).encode(), key=key)
    return str(cmd["command_id"])


async def publish_raw(bootstrap: str, topic: str, key: bytes, value: bytes | None) -> None:
    """A record on the campaigns topic as an older publisher wrote it (or a tombstone)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, partition=0)
    finally:
        await producer.stop()


async def result_of(bootstrap: str, topics: Topics, command_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def there() -> bool:
        found.update(next((r for r in await results(bootstrap, topics) if r["command_id"] == command_id), {}))
        return bool(found)

    await eventually(there, what=f"the result of {command_id}")
    return found


async def test_two_accounts_with_the_same_campaign_id_each_run_their_own_definition_pause_and_archive(
    settings: Settings, topics: Topics, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign(A))
    await publish_campaign(bootstrap, topics.campaigns, campaign(B))  # the same id, after A's
    async with running_worker(settings), scheduler(settings, topics, manual_clock) as sched:
        # The same contact id in both accounts, too: each Enroll runs under its own account's definition.
        enrolled_a = await send(bootstrap, topics, enroll(A, "pat"))
        enrolled_b = await send(bootstrap, topics, enroll(B, "pat"))
        assert (await result_of(bootstrap, topics, enrolled_a))["status"] == "accepted"
        assert (await result_of(bootstrap, topics, enrolled_b))["status"] == "accepted"
        enrolled = {e.account_id: e for e in await events_of(bootstrap, topics, "ContactEnrolled.v1")}
        assert {a: e.data.campaign.steps[0].content.subject for a, e in enrolled.items()} == {
            A: f"Hello from {A}",
            B: f"Hello from {B}",
        }
        rows = await wait_for_timers(database_url, 2, "step_due")
        timer_of = {r["account_id"]: r for r in rows}

        # B pauses its campaign: B's due step is held, A's goes out.
        await publish_campaign(bootstrap, topics.campaigns, campaign(B, version=2, status="paused"))
        fired = await sched.tick(T0 + HOUR)
        assert [(c.account_id, c.type) for c in fired] == [(A, "StepDue.v1")]
        assert isinstance(fired[0], StepDue) and fired[0].data.campaign_status == "active"

        async def a_dispatched() -> bool:
            return len(await events_of(bootstrap, topics, "StepDispatched.v1")) == 1

        await eventually(a_dispatched, what="A's step dispatched")
        [dispatched] = await events_of(bootstrap, topics, "StepDispatched.v1")
        assert (dispatched.account_id, dispatched.data.content.subject) == (A, f"Hello from {A}")
        [held] = await wait_for_timers(database_url, 1, "step_due")
        assert held["enrollment_id"] == timer_of[B]["enrollment_id"] and held["claimed_until"] is None
        assert await sched.tick(T0 + 2 * HOUR) == []

        # B archives its campaign: B's Enrolls are refused, A's are not.
        await publish_campaign(bootstrap, topics.campaigns, campaign(B, version=3, status="archived"))
        refused_b = await send(bootstrap, topics, enroll(B, "rex", T0 + 2 * HOUR))
        accepted_a = await send(bootstrap, topics, enroll(A, "quinn", T0 + 2 * HOUR))
        assert (await result_of(bootstrap, topics, refused_b))["code"] == "campaign_archived"
        assert (await result_of(bootstrap, topics, accepted_a))["status"] == "accepted"
        await wait_for_timers(database_url, 2, "step_due")  # quinn's (A) and pat's (B, held)

    # The read models per campaign keep the accounts apart.
    conn = await asyncpg.connect(database_url)
    try:
        page_a = await enrollments_page(conn, A, CAMPAIGN)
        page_b = await enrollments_page(conn, B, CAMPAIGN)
        assert sorted((r["contact_id"], r["email"]) for r in page_a.rows) == [
            ("pat", f"pat@{A}.example.org"),
            ("quinn", f"quinn@{A}.example.org"),
        ]
        assert [(r["contact_id"], r["email"]) for r in page_b.rows] == [("pat", f"pat@{B}.example.org")]
        card_a = await campaign_stats_card(conn, A, CAMPAIGN)
        card_b = await campaign_stats_card(conn, B, CAMPAIGN)
        assert (card_a["total"], card_b["total"]) == (2, 1)
        versions = await conn.fetch(
            "select account_id, campaign_version from enrollments where campaign_id = $1", CAMPAIGN
        )
        assert sorted((r["account_id"], r["campaign_version"]) for r in versions) == [(A, 1), (A, 1), (B, 1)]
    finally:
        await conn.close()
    assert {r["account_id"] for r in await timers(database_url)} == {A, B}


async def test_campaign_apply_of_the_same_id_by_another_account_is_its_own_campaign_and_old_keys_load(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    # A record from before campaigns were keyed by account: the campaign id alone as its key.
    legacy = campaign(A).model_dump_json().encode()
    await publish_raw(bootstrap, topics.campaigns, CAMPAIGN.encode(), legacy)

    # `campaign apply` by B with the same id: published as B's, A's definition stays.
    applied = await apply_campaign(bootstrap, topics, campaign(B), T0)
    assert (applied.account_id, applied.campaign_id) == (B, CAMPAIGN)
    paused = await apply_campaign(bootstrap, topics, campaign(B, version=2, status="paused"), T0 + HOUR)
    assert [(p.started_at, p.ended_at) for p in paused.pauses] == [(T0 + HOUR, None)]

    assert (await known_campaign(bootstrap, topics, A, CAMPAIGN)).status == "active"
    catalog = CampaignCatalog(bootstrap, topics.campaigns)
    await catalog.start()
    try:
        a, b = catalog.get(A, CAMPAIGN), catalog.get(B, CAMPAIGN)
        assert a is not None and (a.version, a.status, a.steps[0].content.subject) == (
            1,
            "active",
            f"Hello from {A}",
        )
        assert b is not None and (b.version, b.status, b.steps[0].content.subject) == (
            2,
            "paused",
            f"Hello from {B}",
        )
        assert catalog.paused() == [(B, CAMPAIGN)]
        assert catalog.get("acct-c", CAMPAIGN) is None
        # A tombstone under the legacy key deletes what that key wrote (A's), not B's campaign.
        await publish_raw(bootstrap, topics.campaigns, CAMPAIGN.encode(), None)
        await catalog.catch_up()
        assert catalog.get(A, CAMPAIGN) is None and catalog.get(B, CAMPAIGN) is not None
    finally:
        await catalog.stop()


async def test_every_published_version_stays_resolvable_per_account_and_only_kept_ones_are_referable(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    # A's v1 from before versions were kept: only under the latest key, which an edit supersedes.
    await publish_raw(
        bootstrap, topics.campaigns, campaign_key(A, CAMPAIGN), campaign(A).model_dump_json().encode()
    )
    await publish_campaign(bootstrap, topics.campaigns, campaign(A, version=2))
    await publish_campaign(bootstrap, topics.campaigns, campaign(B))  # the same id and version, B's
    catalog = CampaignCatalog(bootstrap, topics.campaigns)
    await catalog.start()
    try:
        v1, v2, theirs = (
            catalog.get_version(A, CAMPAIGN, 1),
            catalog.get_version(A, CAMPAIGN, 2),
            catalog.get_version(B, CAMPAIGN, 1),
        )
        assert v1 is not None and v2 is not None and theirs is not None
        assert (theirs.account_id, theirs.steps[0].content.subject) == (B, f"Hello from {B}")
        assert catalog.get(A, CAMPAIGN) is v2  # one object per version, latest and versioned alike
        # Compaction may drop v1 (it was only ever the latest record): a snapshot must embed it.
        assert not catalog.resolves(A, v1)
        assert catalog.resolves(A, v2) and catalog.resolves(B, theirs)
        assert not catalog.resolves(A, theirs)  # another account's definition is never A's version
        # Deleting A's campaign stops new enrollments; the version its enrollments use stays.
        await publish_raw(bootstrap, topics.campaigns, campaign_key(A, CAMPAIGN), None)
        await catalog.catch_up()
        assert catalog.get(A, CAMPAIGN) is None
        assert catalog.get_version(A, CAMPAIGN, 2) is v2 and catalog.resolves(A, v2)
        # A versioned key whose value names another campaign or version is ignored.
        await publish_raw(
            bootstrap,
            topics.campaigns,
            campaign_version_key(A, CAMPAIGN, 7),
            campaign(A, version=3).model_dump_json().encode(),
        )
        await catalog.catch_up()
        assert catalog.get_version(A, CAMPAIGN, 7) is None and catalog.get_version(A, CAMPAIGN, 3) is None
    finally:
        await catalog.stop()
