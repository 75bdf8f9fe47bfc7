"""`replay` rebuilds the read models from the events (and results) topics and finds any difference from
the live ones."""

from __future__ import annotations

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from enrollstream.adapters.kafka.topics import Topics, partition_numbers
from enrollstream.config import Settings
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.replay import replay
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll, results_by_id, send
from tests.support import eventually, read_until, running_worker


async def test_a_rebuild_equals_the_live_projection_and_a_tampered_row_is_found(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    commands = [enroll(f"r{i}") for i in range(6)] + [enroll("r0")]  # the last one: already enrolled
    async with running_worker(settings) as worker:
        for command in commands:
            await send(settings, topics, command, f"{ACCOUNT}/{command['data']['contact_id']}")
        await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: {c["command_id"] for c in commands} <= set(results_by_id(rs)),
        )
        assert worker.decider is not None
        emitted = worker.decider.emitted_events

        async def caught_up() -> bool:
            assert worker.projector is not None
            p = worker.projector
            return p.applied_events >= emitted and p.applied_results >= len(commands)

        await eventually(caught_up, what="the live projector caught up")

    report = await replay(bootstrap, topics.events, database_url, results_topic=topics.command_results)
    assert report.live_lag == 0
    assert report.events == emitted
    assert report.equal, report.tables
    live_rows = {t.table: t.live_rows for t in report.tables}
    assert live_rows["enrollments"] == 6
    assert live_rows["decisions"] == len(commands)  # the refused one too

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("update enrollments set status = 'completed' where contact_id = 'r3'")
        await conn.execute("update decisions set message = 'edited' where status = 'rejected'")
    finally:
        await conn.close()
    tampered = await replay(bootstrap, topics.events, database_url, results_topic=topics.command_results)
    assert not tampered.equal
    by_table = {t.table: t for t in tampered.tables}
    assert (by_table["enrollments"].only_live, by_table["enrollments"].only_replayed) == (1, 1)
    assert (by_table["decisions"].only_live, by_table["decisions"].only_replayed) == (1, 1)

    # Retention: results the topic no longer holds are history only PostgreSQL keeps, not a difference.
    await expire_everything(bootstrap, topics.command_results)
    expired = await replay(bootstrap, topics.events, database_url, results_topic=topics.command_results)
    decisions = next(t for t in expired.tables if t.table == "decisions")
    assert (decisions.live_rows, decisions.replayed_rows) == (len(commands), 0)
    assert decisions.equal


async def expire_everything(bootstrap: str, topic: str) -> None:
    """What retention does to a topic's old records: delete them up to its current end."""
    partitions = [TopicPartition(topic, p) for p in await partition_numbers(bootstrap, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(end) for tp, end in ends.items()})
    finally:
        await admin.close()
