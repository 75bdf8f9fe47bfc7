"""The projector against the real broker and database: batches and checkpoints move together."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.projector import PROJECTION, ProjectorService
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll, results_by_id, send
from tests.support import eventually, publish, read_until, running_worker


async def count(database_url: str, sql: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def test_bulk_enroll_fans_out_once_in_numbered_batches_and_every_enrollment_is_projected(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    contacts = [f"contact-{i}" for i in range(7)]
    bulk = {
        "command_id": f"bulk-{uuid.uuid4()}",
        "type": "BulkEnroll.v1",
        "account_id": ACCOUNT,
        "issued_at": datetime(2026, 11, 22, 9, 0, tzinfo=UTC).isoformat(),
        "actor": "import",
        "data": {
            "campaign_id": "welcome",
            "contact_import_id": "import-1",
            "batch_size": 3,
            "contacts": [
                {"contact_id": c, "contact": {"name": c, "email": f"{c}@example.org"}} for c in contacts
            ],
        },
    }
    async with running_worker(settings):
        await publish(bootstrap, topics.commands, json.dumps(bulk).encode(), key=f"{ACCOUNT}/import-1")
        # The same BulkEnroll delivered twice (an upstream retry) enrolls nobody twice.
        await publish(bootstrap, topics.commands, json.dumps(bulk).encode(), key=f"{ACCOUNT}/import-1")

        async def all_projected() -> bool:
            return await count(database_url, "select count(*) from enrollments") >= len(contacts)

        await eventually(all_projected, what="seven enrollments rows")
        results = await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: sum(json.loads(r.value)["command_type"] == "Enroll.v1" for r in rs) >= 14,
        )
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("select contact_id, batch_number from enrollments order by contact_id")
    finally:
        await conn.close()
    assert [(r["contact_id"], r["batch_number"]) for r in rows] == [
        (c, 1 + i // 3) for i, c in enumerate(contacts)
    ]
    child_statuses = sorted(
        json.loads(r.value)["status"] for r in results if json.loads(r.value)["command_type"] == "Enroll.v1"
    )
    assert child_statuses == ["accepted"] * 7 + ["duplicate"] * 7
    assert results_by_id(results)[bulk["command_id"]]["status"] == "accepted"


async def test_a_batch_applied_twice_changes_nothing_and_checkpoints_only_move_forward(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    commands = [enroll(f"p{i}") for i in range(5)]
    async with running_worker(settings, roles=("decider",)):
        for command in commands:
            await send(settings, topics, command, f"{ACCOUNT}/{command['data']['contact_id']}")
        await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: {c["command_id"] for c in commands} <= set(results_by_id(rs)),
        )
    events = await read_until(bootstrap, topics.events, lambda rs: len(rs) >= 5)

    projector = ProjectorService(bootstrap, topics.events, database_url, settings.group_id)
    await projector.start()
    try:
        from aiokafka import TopicPartition

        batch: dict[TopicPartition, list[object]] = {}
        for record in events:
            batch.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
        first = await projector.apply_batch(batch)
        snapshot = await count(database_url, "select count(*) from enrollments")
        checkpoints = await projector.checkpoints()
        again = await projector.apply_batch(batch)  # a redelivery after a crash before the Kafka commit
        assert again == 0
        assert await projector.checkpoints() == checkpoints
        assert await count(database_url, "select count(*) from enrollments") == snapshot == 5
        assert first == len(events)
        assert checkpoints == {tp.partition: records[-1].offset + 1 for tp, records in batch.items()}
    finally:
        await projector.stop()
    assert await count(
        database_url, f"select count(*) from projection_checkpoints where projection = '{PROJECTION}'"
    ) == len(batch)


async def test_skips_and_the_timeline_answer_why(settings: Settings, topics: Topics) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    first = enroll("hedy")
    bulk = {
        "command_id": f"bulk-{uuid.uuid4()}",
        "type": "BulkEnroll.v1",
        "account_id": ACCOUNT,
        "issued_at": datetime(2026, 11, 22, 10, 0, tzinfo=UTC).isoformat(),
        "actor": "import",
        "data": {
            "campaign_id": "welcome",
            "contact_import_id": "import-2",
            "batch_size": 50,
            "contacts": [
                {"contact_id": "hedy", "contact": {"name": "Hedy", "email": "hedy@example.org"}},
                {"contact_id": "ida", "contact": {"name": "Ida", "email": "ida@example.org"}},
            ],
        },
    }
    async with running_worker(settings):
        await send(settings, topics, first, f"{ACCOUNT}/hedy")
        await read_until(
            bootstrap, topics.command_results, lambda rs: first["command_id"] in results_by_id(rs)
        )
        await publish(bootstrap, topics.commands, json.dumps(bulk).encode(), key=f"{ACCOUNT}/import-2")
        events = await read_until(
            bootstrap,
            topics.events,
            lambda rs: (
                any(b'"EnrollmentSkipped.v1"' in r.value for r in rs) and any(b'"ida"' in r.value for r in rs)
            ),
        )

        async def timeline_complete() -> bool:
            return await count(database_url, "select count(*) from enrollment_timeline") >= len(events)

        await eventually(timeline_complete, what="every event in the timeline")
    conn = await asyncpg.connect(database_url)
    try:
        skip = await conn.fetchrow("select * from enrollment_skips")
        why = await conn.fetch(
            "select type, causation_id from enrollment_timeline where contact_id = 'hedy' order by version"
        )
    finally:
        await conn.close()
    assert (skip["contact_id"], skip["kind"], skip["email"]) == (
        "hedy",
        "already_enrolled",
        "hedy@example.org",
    )
    assert skip["contact_import_id"] == "import-2"
    assert why[0]["causation_id"] == first["command_id"] and why[0]["type"] == "ContactEnrolled.v1"
    assert why[-1]["type"] == "EnrollmentSkipped.v1" and why[-1]["causation_id"].startswith(
        bulk["command_id"]
    )
