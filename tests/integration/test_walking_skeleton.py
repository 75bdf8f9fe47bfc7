"""The walking skeleton: an Enroll command on the commands topic comes out as an event on the events
topic and as an `enrollments` row in Postgres, through the real broker and the real database."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition, parse_event
from enrollstream.runtime.campaigns import publish_campaign
from tests.support import eventually, fetch_one, publish, read_until, running_worker


def welcome_campaign(account_id: str) -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": "welcome",
            "account_id": account_id,
            "version": 1,
            "name": "Welcome sequence",
            "steps": [
                {"channel": "email", "delay": "PT0S", "content": {"subject": "Hi", "body": "Welcome"}},
                {"channel": "email", "delay": "P1D", "content": {"subject": "Tips", "body": "Day two"}},
            ],
        }
    )


async def test_an_enroll_command_becomes_an_event_and_an_enrollments_row(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap and settings.database_url
    account_id = f"acct-{uuid.uuid4().hex[:6]}"
    await publish_campaign(bootstrap, topics.campaigns, welcome_campaign(account_id))
    command_id = f"cmd-{uuid.uuid4()}"
    # Exactly what an upstream system publishes: JSON, keyed by account/contact.
    enroll = {
        "command_id": command_id,
        "type": "Enroll.v1",
        "account_id": account_id,
        "issued_at": datetime(2026, 11, 22, 9, 0, tzinfo=UTC).isoformat(),
        "actor": "crm",
        "data": {
            "contact_id": "ada",
            "campaign_id": "welcome",
            "contact": {"name": "Ada Lovelace", "email": "ada@example.org", "mobile": "+15550100"},
            "batch_number": 2,
            "priority": True,
        },
    }

    async with running_worker(settings):
        await publish(bootstrap, topics.commands, json.dumps(enroll).encode(), key=f"{account_id}/ada")

        records = await read_until(
            bootstrap,
            topics.events,
            lambda rs: any(json.loads(r.value)["type"].startswith("ContactEnrolled") for r in rs),
        )
        events = [parse_event(r.value) for r in records]
        enrolled = next(e for e in events if e.type == "ContactEnrolled.v1")
        assert enrolled.causation_id == command_id
        assert (enrolled.account_id, enrolled.contact_id, enrolled.campaign_id) == (
            account_id,
            "ada",
            "welcome",
        )
        assert records[0].key == f"{account_id}/ada".encode()
        assert [e.version for e in events] == list(range(1, len(events) + 1))

        async def row_is_there() -> bool:
            return await fetch_one(settings.database_url, "select 1 from enrollments") is not None

        await eventually(row_is_there, what="the enrollments row")
        row = await fetch_one(settings.database_url, "select * from enrollments")
        assert row is not None
        assert row["enrollment_id"] == enrolled.enrollment_id
        assert (row["contact_name"], row["email"], row["mobile"]) == (
            "Ada Lovelace",
            "ada@example.org",
            "+15550100",
        )
        assert (row["batch_number"], row["priority"], row["total_steps"]) == (2, True, 2)
        assert row["status"] == "pending" and row["stage"] == "pending"

        # The public integration event for webhook relays, keyed by enrollment, committed with the event.
        public = await read_until(bootstrap, topics.integration_events, lambda rs: len(rs) >= 1)
        enrolled_public = json.loads(public[0].value)
        assert enrolled_public["type"] == "enrollment.enrolled"
        assert enrolled_public["source_event_id"] == enrolled.event_id
        assert public[0].key == enrolled.enrollment_id.encode()

        results = await read_until(bootstrap, topics.command_results, lambda rs: len(rs) >= 1)
        result = json.loads(results[0].value)
        assert (result["command_id"], result["status"]) == (command_id, "accepted")
        assert enrolled.event_id in result["event_ids"]
