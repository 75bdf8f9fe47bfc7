"""The decider service against the real broker: bad input, refusals, restarts."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import PolicyViolationError

from enrollstream.adapters.kafka.records import MAX_COMMAND_BYTES, encode, header
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain import (
    Accepted,
    CampaignDefinition,
    Channel,
    ContactState,
    Step,
    StepContent,
    decide,
    fold,
    ids,
    initial_state,
    parse_command,
)
from enrollstream.runtime.campaigns import campaign_key, campaign_version_key, publish_campaign
from tests.support import publish, read_until, running_worker

ACCOUNT = "acct-a"


def campaign(account_id: str = ACCOUNT, campaign_id: str = "welcome") -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": campaign_id,
            "account_id": account_id,
            "version": 1,
            "steps": [{"channel": "email", "delay": "PT1H", "content": {"subject": "Hi", "body": "Hello"}}],
        }
    )


def enroll(
    contact_id: str, campaign_id: str = "welcome", account_id: str = ACCOUNT, **extra: Any
) -> dict[str, Any]:
    return {
        "command_id": extra.pop("command_id", f"cmd-{uuid.uuid4()}"),
        "type": "Enroll.v1",
        "account_id": account_id,
        "issued_at": datetime(2026, 11, 22, 9, 0, tzinfo=UTC).isoformat(),
        "actor": "test",
        "data": {
            "contact_id": contact_id,
            "campaign_id": campaign_id,
            "contact": {"name": contact_id.title(), "email": f"{contact_id}@example.org"},
            **extra,
        },
    }


async def send(settings: Settings, topics: Topics, command: dict[str, Any] | bytes, key: str) -> None:
    assert settings.kafka_bootstrap_servers
    value = command if isinstance(command, bytes) else json.dumps(command).encode()
    await publish(settings.kafka_bootstrap_servers, topics.commands, value, key=key)


def results_by_id(records: list[Any]) -> dict[str, dict[str, Any]]:
    return {json.loads(r.value)["command_id"]: json.loads(r.value) for r in records}


async def test_poison_pills_go_to_the_dead_letter_topic_and_the_partition_keeps_flowing(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    key = f"{ACCOUNT}/ada"  # every record on one key, so on one partition, in this order
    wrong_types = enroll("ada")
    wrong_types["data"]["batch_number"] = "first"
    unknown_type = {**enroll("ada"), "type": "Teleport.v1"}
    oversized = json.dumps(enroll("ada", padding="x" * MAX_COMMAND_BYTES)).encode()
    good = enroll("ada")
    async with running_worker(settings, roles=("decider",)):
        for bad in (b"{not json", wrong_types, unknown_type, oversized):
            await send(settings, topics, bad, key)
        await send(settings, topics, good, key)
        letters = await read_until(bootstrap, topics.dead_letters, lambda rs: len(rs) >= 4)
        results = await read_until(
            bootstrap, topics.command_results, lambda rs: good["command_id"] in results_by_id(rs)
        )
    reasons = [header(r.headers, "error.reason") for r in letters]
    assert reasons[:3] == ["not a valid command"] * 3
    assert reasons[3] is not None and "exceeds" in reasons[3]
    assert letters[0].value == b"{not json"  # the original bytes, kept
    assert header(letters[1].headers, "error.class") == "ValidationError"
    assert "batch_number" in (header(letters[1].headers, "error.message") or "")
    assert {header(r.headers, "original.topic") for r in letters} == {topics.commands}
    assert results_by_id(results)[good["command_id"]]["status"] == "accepted"


async def test_refusals_get_a_result_with_a_stable_code(settings: Settings, topics: Topics) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    await publish_campaign(bootstrap, topics.campaigns, campaign(account_id="acct-b", campaign_id="theirs"))
    first = enroll("bob")
    twice = enroll("bob")
    unknown_campaign = enroll("carol", campaign_id="nope")
    other_account = enroll("dave", campaign_id="theirs")  # acct-a must not touch acct-b's campaign
    no_contact = enroll("erin")
    no_contact["data"].pop("contact")
    misrouted = enroll("frank")
    async with running_worker(settings, roles=("decider",)):
        for command in (first, twice, unknown_campaign, other_account, no_contact):
            await send(settings, topics, command, f"{ACCOUNT}/{command['data']['contact_id']}")
        await send(settings, topics, misrouted, f"{ACCOUNT}/someone-else")
        wanted = {
            c["command_id"] for c in (first, twice, unknown_campaign, other_account, no_contact, misrouted)
        }
        records = await read_until(
            bootstrap, topics.command_results, lambda rs: wanted <= set(results_by_id(rs))
        )
    results = results_by_id(records)
    assert results[first["command_id"]]["status"] == "accepted"
    assert (results[twice["command_id"]]["status"], results[twice["command_id"]]["code"]) == (
        "rejected",
        "contact_already_enrolled",
    )
    assert results[unknown_campaign["command_id"]]["code"] == "campaign_not_found"
    assert results[other_account["command_id"]]["code"] == "campaign_not_found"
    assert results[no_contact["command_id"]]["code"] == "contact_not_found"
    assert results[misrouted["command_id"]]["code"] == "account_mismatch"


async def test_a_restarted_decider_restores_its_contacts_from_the_changelog(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    first = enroll("grace")
    async with running_worker(settings, roles=("decider",)):
        await send(settings, topics, first, f"{ACCOUNT}/grace")
        await read_until(
            bootstrap, topics.command_results, lambda rs: first["command_id"] in results_by_id(rs)
        )

    # A new process knows nothing but what Kafka holds: the redelivered command is a duplicate, and a new
    # enrollment of the same contact is refused because the aggregate was restored.
    again = enroll("grace")
    async with running_worker(settings, roles=("decider",)) as worker:
        await send(settings, topics, first, f"{ACCOUNT}/grace")
        await send(settings, topics, again, f"{ACCOUNT}/grace")
        records = await read_until(
            bootstrap, topics.command_results, lambda rs: again["command_id"] in results_by_id(rs)
        )
        restored = decider_state(worker, f"{ACCOUNT}/grace")
    statuses = [
        json.loads(r.value)["status"]
        for r in records
        if json.loads(r.value)["command_id"] == first["command_id"]
    ]
    assert statuses == ["accepted", "duplicate"]
    assert results_by_id(records)[again["command_id"]]["code"] == "contact_already_enrolled"
    assert restored is not None and restored.has_processed(first["command_id"])
    events = await read_until(bootstrap, topics.events, lambda rs: len(rs) >= 1)
    assert all(json.loads(e.value)["causation_id"] == first["command_id"] for e in events)


async def compact_campaigns_topic(bootstrap: str, topic: str, kept: list[tuple[bytes, bytes]]) -> None:
    """What log compaction leaves of the campaigns topic: every record deleted, then only the ones
    compaction keeps (the latest per key) written again, in order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        end = (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # A compacted topic refuses DeleteRecords: allowed for the time of the call. The broker applies
        # a changed topic config asynchronously, so the deletion is retried until it sees it.
        for policy in ("compact,delete", "compact"):
            resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"cleanup.policy": policy})
            await admin.alter_configs([resource])
            if policy != "compact":
                deadline = time.monotonic() + 30
                while True:
                    try:
                        await admin.delete_records({tp: RecordsToDelete(end)})
                        break
                    except PolicyViolationError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.1)
    finally:
        await admin.close()
    for key, value in kept:
        await publish(bootstrap, topic, value, key=key.decode())


async def test_an_enrollment_keeps_its_versions_steps_after_an_edit_compaction_and_a_restart(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    v1 = campaign().model_copy(update={"steps": [_step("v1 first step")]})
    v2 = v1.model_copy(update={"version": 2, "steps": [_step("v2 first step")]})
    await publish_campaign(bootstrap, topics.campaigns, v1)
    first = enroll("heidi")
    key = f"{ACCOUNT}/heidi"
    async with running_worker(settings, roles=("decider",)):
        await send(settings, topics, first, key)
        await read_until(
            bootstrap, topics.command_results, lambda rs: first["command_id"] in results_by_id(rs)
        )
    # The snapshot names the version; the definition lives once, on the campaigns topic.
    snapshots = await read_until(bootstrap, topics.aggregates, lambda rs: len(rs) >= 1)
    assert b'"steps"' not in snapshots[-1].value and b'"campaign_version":1' in snapshots[-1].value

    # The campaign is edited, then the campaigns topic compacted: v1 is left only under its versioned key.
    await publish_campaign(bootstrap, topics.campaigns, v2)
    await compact_campaigns_topic(
        bootstrap,
        topics.campaigns,
        [
            (campaign_version_key(ACCOUNT, "welcome", 1), encode(v1)),
            (campaign_version_key(ACCOUNT, "welcome", 2), encode(v2)),
            (campaign_key(ACCOUNT, "welcome"), encode(v2)),
        ],
    )
    enrollment = ids.enrollment_id(ACCOUNT, "heidi", "welcome", 1)
    due = {
        "command_id": f"cmd-{uuid.uuid4()}",
        "type": "StepDue.v1",
        "account_id": ACCOUNT,
        "issued_at": datetime(2026, 11, 22, 10, 0, tzinfo=UTC).isoformat(),
        "actor": "scheduler",
        "data": {"contact_id": "heidi", "enrollment_id": enrollment, "step_index": 0, "attempt": 1},
    }
    newcomer = enroll("ivan")
    # A new process: it restores heidi from the changelog and resolves v1 from the compacted topic.
    async with running_worker(settings, roles=("decider",)) as worker:
        await send(settings, topics, due, key)
        await send(settings, topics, newcomer, f"{ACCOUNT}/ivan")
        wanted = {due["command_id"], newcomer["command_id"]}
        results = await read_until(
            bootstrap, topics.command_results, lambda rs: wanted <= set(results_by_id(rs))
        )
        assert worker.decider is not None
        restored = decider_state(worker, key)
    assert restored is not None
    assert results_by_id(results)[due["command_id"]]["status"] == "accepted"
    types = ["StepDispatched.v1", "ContactEnrolled.v1", "ContactEnrolled.v1"]
    records = await read_until(
        bootstrap, topics.events, lambda rs: sorted(types) <= sorted(t for t in map(_type, rs) if t in types)
    )
    events = [json.loads(e.value) for e in records]
    dispatched = [e for e in events if e["type"] == "StepDispatched.v1"]
    assert [e["data"]["content"]["body"] for e in dispatched] == ["v1 first step"]
    enrolled = {
        e["contact_id"]: e["data"]["campaign"]["version"] for e in events if e["type"] == "ContactEnrolled.v1"
    }
    assert enrolled == {"heidi": 1, "ivan": 2}  # the edit affects new enrollments only
    # One definition object per version, shared by the catalog and every enrollment of it.
    assert restored.enrollments[enrollment].campaign is worker.decider.catalog.get_version(
        ACCOUNT, "welcome", 1
    )


def decider_state(worker: Any, key: str) -> ContactState | None:
    """The contact's aggregate as the running decider holds it (from its cache or its store)."""
    assert worker.decider is not None
    for owner in worker.decider.owners.values():
        state = owner.state.get(key)
        if state is not None:
            return state  # type: ignore[no-any-return]
    return None


def _type(record: Any) -> str:
    return str(json.loads(record.value)["type"])


def _step(body: str) -> Step:
    return Step(channel=Channel.EMAIL, content=StepContent(subject="Hi", body=body))


async def test_a_changelog_snapshot_written_before_references_still_restores(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    v1 = campaign().model_copy(update={"steps": [_step("v1 first step")]})
    await publish_campaign(bootstrap, topics.campaigns, v1)
    # The snapshot as the decider wrote it before compact snapshots: the definition embedded in it.
    enrolled = decide(
        parse_command(json.dumps(enroll("judy", campaign=json.loads(encode(v1)))).encode()),
        initial_state(ACCOUNT, "judy"),
    )
    assert isinstance(enrolled, Accepted)
    state = fold(initial_state(ACCOUNT, "judy"), enrolled.events)
    legacy = state.model_dump_json().replace('"campaign_version":1,', "")
    assert '"steps"' in legacy and "campaign_version" not in legacy
    key = f"{ACCOUNT}/judy"
    await publish(bootstrap, topics.aggregates, legacy.encode(), key=key)
    enrollment = ids.enrollment_id(ACCOUNT, "judy", "welcome", 1)
    due = {
        "command_id": f"cmd-{uuid.uuid4()}",
        "type": "StepDue.v1",
        "account_id": ACCOUNT,
        "issued_at": datetime(2026, 11, 22, 10, 0, tzinfo=UTC).isoformat(),
        "actor": "scheduler",
        "data": {"contact_id": "judy", "enrollment_id": enrollment, "step_index": 0, "attempt": 1},
    }
    async with running_worker(settings, roles=("decider",)) as worker:
        await send(settings, topics, due, key)
        results = await read_until(
            bootstrap, topics.command_results, lambda rs: due["command_id"] in results_by_id(rs)
        )
        assert worker.decider is not None
        restored = decider_state(worker, key)
        assert restored is not None
        # Migrated on read: the embedded definition became the catalog's one object for that version.
        definition = restored.enrollments[enrollment].campaign
        assert definition is worker.decider.catalog.get_version(ACCOUNT, "welcome", 1)
    assert results_by_id(results)[due["command_id"]]["status"] == "accepted"
    dispatched = await read_until(bootstrap, topics.events, lambda rs: "StepDispatched.v1" in map(_type, rs))
    assert json.loads(dispatched[-1].value)["data"]["content"]["body"] == "v1 first step"
    snapshots = await read_until(bootstrap, topics.aggregates, lambda rs: len(rs) >= 2)
    assert b'"steps"' not in snapshots[-1].value  # written back compact
