"""Seed 002 through the real decider, Kafka and the projector: "When an application is created or moved into a
job stage linked to a campaign, an enrolment is automatically created for that campaign", and a second
application before the first is completed is Queued."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.client import EnrollstreamClient
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition
from enrollstream.runtime.campaigns import publish_campaign
from tests.api_support import client_for, new_key, running_api
from tests.servers.dns import LocalDnsServer
from tests.support import eventually, running_worker

ENTERED = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def recruiting_campaign(account_id: str, campaign_id: str, pipeline_id: str) -> CampaignDefinition:
    """A multi-module campaign linked to the "screening" stage of one job's pipeline; campaigns of a
    candidate's applications queue behind each other (seed 002 "Queued")."""
    return CampaignDefinition.model_validate(
        {
            "campaign_id": campaign_id,
            "account_id": account_id,
            "version": 1,
            "kind": "multi_module",
            "when_in_other_campaign": "queue",
            "enrolling_stages": [{"pipeline_id": pipeline_id, "stage_id": "screening"}],
            "steps": [
                {"channel": "email", "delay": "P1D", "content": {"subject": "Hi", "body": "Book a call"}},
                {"channel": "email", "delay": "P1D", "content": {"subject": "Still", "body": "Reminder"}},
            ],
        }
    )


async def _rows(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_a_stage_change_into_a_linked_stage_enrols_and_a_second_application_queues(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    account, other = f"acct-{uuid.uuid4().hex[:6]}", f"acct-{uuid.uuid4().hex[:6]}"
    await publish_campaign(bootstrap, topics.campaigns, recruiting_campaign(account, "job-a-screen", "job-a"))
    await publish_campaign(bootstrap, topics.campaigns, recruiting_campaign(account, "job-b-screen", "job-b"))
    # Another account links a campaign to a stage of the same names: never used for `account`.
    await publish_campaign(bootstrap, topics.campaigns, recruiting_campaign(other, "theirs", "job-c"))

    async with running_worker(settings), EnrollstreamClient(bootstrap, topics.prefix, actor="ats") as client:
        put = await client.put_contact_and_wait(
            account, "cand-1", name="Ada Lovelace", email="ada@example.org"
        )
        assert put.status == "accepted"

        first = await client.stage_changed(
            account, "cand-1", application_id="app-1", pipeline_id="job-a", stage_id="screening",
            entered_at=ENTERED, command_id="ats-move-1",
        )  # fmt: skip
        assert first.status == "accepted", first
        [first_enrollment] = first.enrollment_ids

        # The same move published again under another command id (an upstream retry): one enrollment.
        retried = await client.stage_changed(
            account, "cand-1", application_id="app-1", pipeline_id="job-a", stage_id="screening",
            entered_at=ENTERED, command_id="ats-move-1-retry",
        )  # fmt: skip
        assert retried.status == "duplicate", retried

        # "A candidate submits a second application before completing the first": queued.
        second = await client.stage_changed(
            account, "cand-1", application_id="app-2", pipeline_id="job-b", stage_id="screening",
            entered_at=ENTERED + timedelta(hours=2),
        )  # fmt: skip
        assert second.status == "accepted", second
        [second_enrollment] = second.enrollment_ids

        # A stage no campaign of this account is linked to (the other account's stage names included).
        for pipeline in ("job-c", "job-z"):
            unlinked = await client.stage_changed(
                account, "cand-1", application_id="app-3", pipeline_id=pipeline, stage_id="screening",
                entered_at=ENTERED,
            )  # fmt: skip
            assert (unlinked.status, unlinked.code) == ("rejected", "stage_not_linked"), unlinked

        # Campaigns upstream puts into the command are discarded: only the catalog's are used.
        smuggled = recruiting_campaign(account, "smuggled", "job-z").model_dump(mode="json")
        data = {
            "contact_id": "cand-1", "application_id": "app-4", "pipeline_id": "job-z",
            "stage_id": "screening", "entered_at": ENTERED.isoformat(), "campaigns": [smuggled],
        }  # fmt: skip
        refused = await client.send(client.envelope("StageChanged.v1", account, data))
        assert (refused.status, refused.code) == ("rejected", "stage_not_linked"), refused

        async def both_rows_projected() -> bool:
            rows = await _rows(database_url, "select 1 from enrollments where account_id = $1", account)
            return len(rows) == 2

        await eventually(both_rows_projected, what="the two enrollment rows")
        rows = {
            r["enrollment_id"]: r
            for r in await _rows(database_url, "select * from enrollments where account_id = $1", account)
        }
        assert rows[first_enrollment]["campaign_id"] == "job-a-screen"
        assert rows[first_enrollment]["status"] == "pending"
        assert rows[first_enrollment]["contact_name"] == "Ada Lovelace"
        assert rows[second_enrollment]["campaign_id"] == "job-b-screen"
        assert rows[second_enrollment]["status"] == "queued"
        assert await _rows(database_url, "select 1 from enrollments where account_id = $1", other) == []

        # The enrollment's record says it came from the stage change, and which application and stage.
        [enrolled] = await _rows(
            database_url,
            "select data, causation_id from enrollment_timeline where enrollment_id = $1 and type = $2",
            first_enrollment,
            "ContactEnrolled.v1",
        )
        data = json.loads(enrolled["data"]) if isinstance(enrolled["data"], str) else enrolled["data"]
        assert enrolled["causation_id"] == "ats-move-1"
        assert data["source"] == "stage_change"
        assert data["stage_entry"] == {
            "application_id": "app-1",
            "pipeline_id": "job-a",
            "stage_id": "screening",
            "entered_at": "2026-11-23T09:00:00Z",
        }


async def test_a_linked_campaign_that_verifies_mx_gets_the_runtimes_answer_for_the_profiles_address(
    settings: Settings, topics: Topics, dns_server: LocalDnsServer
) -> None:
    dns_server.add("good.test", "MX", "10 mx.good.test.")
    dns_server.add("nomx.test", "A", "192.0.2.1")
    settings = settings.model_copy(
        update={"dns_nameservers": f"127.0.0.1:{dns_server.port}", "dns_timeout_s": 0.5}
    )
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = f"acct-{uuid.uuid4().hex[:6]}"
    verifying = recruiting_campaign(account, "job-a-screen", "job-a").model_copy(
        update={"verify_email_mx": True}
    )
    await publish_campaign(bootstrap, topics.campaigns, verifying)
    async with running_worker(settings), EnrollstreamClient(bootstrap, topics.prefix, actor="ats") as client:
        for contact_id, email in (("good", "ann@good.test"), ("nomx", "cyd@nomx.test")):
            put = await client.put_contact_and_wait(account, contact_id, name=contact_id, email=email)
            assert put.status == "accepted"
        good = await client.stage_changed(
            account,
            "good",
            application_id="app-1",
            pipeline_id="job-a",
            stage_id="screening",
            entered_at=ENTERED,
        )
        assert good.status == "accepted", good
        nomx = await client.stage_changed(
            account,
            "nomx",
            application_id="app-2",
            pipeline_id="job-a",
            stage_id="screening",
            entered_at=ENTERED,
        )
        assert (nomx.status, nomx.code) == ("skipped", "mx_invalid"), nomx


async def test_an_ats_posts_a_stage_change_over_http_and_a_second_post_of_the_same_move_answers_the_same(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account, other = f"acct-{uuid.uuid4().hex[:6]}", f"acct-{uuid.uuid4().hex[:6]}"
    await publish_campaign(bootstrap, topics.campaigns, recruiting_campaign(account, "job-a-screen", "job-a"))
    key, other_key = await new_key(database_url, account), await new_key(database_url, other)
    move = {"application_id": "app-1", "pipeline_id": "job-a", "stage_id": "screening"}
    move["entered_at"] = ENTERED.isoformat()
    async with running_worker(settings):
        async with EnrollstreamClient(bootstrap, topics.prefix) as client:
            for account_id in (account, other):
                put = await client.put_contact_and_wait(
                    account_id, "cand-1", name="Ada", email="ada@example.org"
                )
                assert put.status == "accepted"
        async with (
            running_api(settings) as server,
            client_for(server, key) as ats,
            client_for(server, other_key) as other_ats,
        ):
            posted = await ats.post("/contacts/cand-1/stage_changes", json=move)
            assert posted.status_code == 200, posted.text
            [enrollment_id] = posted.json()["enrollment_ids"]
            assert posted.json()["status"] == "accepted"
            again = await ats.post("/contacts/cand-1/stage_changes", json=move)
            assert again.status_code == 200 and again.json() == posted.json(), again.text
            # The other account has no campaign linked to a stage of these names.
            theirs = await other_ats.post("/contacts/cand-1/stage_changes", json=move)
            assert theirs.status_code == 422 and theirs.json()["error"]["code"] == "stage_not_linked"
            bad = await ats.post("/contacts/cand-1/stage_changes", json={**move, "stage_id": "a/b"})
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"

        async def projected() -> bool:
            found = await _rows(
                database_url, "select 1 from enrollments where enrollment_id = $1", enrollment_id
            )
            return bool(found)

        await eventually(projected, what="the enrollment row")
        rows = await _rows(
            database_url, "select enrollment_id from enrollments where account_id = $1", account
        )
        assert [r["enrollment_id"] for r in rows] == [enrollment_id]


async def test_a_new_version_of_a_campaign_linked_to_another_stage_enrols_from_that_stage_only(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = f"acct-{uuid.uuid4().hex[:6]}"
    first = recruiting_campaign(account, "job-a-screen", "job-a")
    interview = [{"pipeline_id": "job-a", "stage_id": "interview"}]
    moved = CampaignDefinition.model_validate(
        {**first.model_dump(), "version": 2, "enrolling_stages": interview}
    )
    await publish_campaign(bootstrap, topics.campaigns, first)
    await publish_campaign(bootstrap, topics.campaigns, moved)
    async with running_worker(settings), EnrollstreamClient(bootstrap, topics.prefix, actor="ats") as client:
        assert (
            await client.put_contact_and_wait(account, "cand-1", name="Ada", email="a@example.org")
        ).status == ("accepted")
        old = await client.stage_changed(
            account,
            "cand-1",
            application_id="app-1",
            pipeline_id="job-a",
            stage_id="screening",
            entered_at=ENTERED,
        )
        assert (old.status, old.code) == ("rejected", "stage_not_linked"), old
        new = await client.stage_changed(
            account,
            "cand-1",
            application_id="app-1",
            pipeline_id="job-a",
            stage_id="interview",
            entered_at=ENTERED,
        )
        assert new.status == "accepted" and len(new.enrollment_ids) == 1, new
