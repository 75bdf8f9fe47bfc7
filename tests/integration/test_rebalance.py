"""Partitions moving between deciders: a second worker joining and leaving, zombies, stolen ids.

Each test runs real workers in this process against the real broker and database; what is checked
afterwards is the log itself (the chaos verifier: one result per command, versions 1..n once each,
snapshots equal to folds, projections equal to a rebuild).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.chaos import (
    CAMPAIGNS,
    ChaosPlan,
    ChaosReport,
    chaos_campaign,
    drive,
    settle,
    verify,
    workload,
)
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition
from enrollstream.runtime.campaigns import CampaignCatalog, publish_campaign
from enrollstream.runtime.decider import DeciderService, PartitionOwner
from enrollstream.runtime.worker import Worker
from tests.conftest import TEST_PARTITIONS
from tests.support import eventually, read_until, running_worker

ACCOUNT = "acct-r"


def _quick_groups(settings: Settings) -> Settings:
    # A join waits for every member's next heartbeat: keep heartbeats frequent so the test is quick.
    return settings.model_copy(update={"session_timeout_ms": 6_000, "heartbeat_interval_ms": 500})


def _owned(worker: Worker) -> set[int]:
    assert worker.decider is not None
    return {tp.partition for tp in worker.decider.owners}


async def test_a_second_worker_takes_partitions_and_gives_them_back_losing_and_repeating_nothing(
    settings: Settings, topics: Topics
) -> None:
    settings = _quick_groups(settings)
    bootstrap, database_url, group = (
        settings.kafka_bootstrap_servers,
        settings.database_url,
        settings.group_id,
    )
    assert bootstrap and database_url
    for campaign_id in CAMPAIGNS:
        await publish_campaign(bootstrap, topics.campaigns, chaos_campaign(campaign_id))
    # decider and projector only (running_worker's roles): no step is sent, so settling skips sends
    records = workload(ChaosPlan(commands=360, contacts=40, seed=3), run="rebalance")
    thirds = [records[:120], records[120:240], records[240:]]
    everything = set(range(TEST_PARTITIONS))

    async with running_worker(settings) as first:
        await drive(bootstrap, topics.commands, thirds[0], seconds=0.5)
        assert await settle(
            bootstrap, topics, database_url, thirds[0], timeout=60, group_id=group, sends=False
        )
        assert _owned(first) == everything

        async with running_worker(settings) as second:

            async def split() -> bool:
                mine, theirs = _owned(first), _owned(second)
                return bool(mine) and bool(theirs) and not mine & theirs and mine | theirs == everything

            await eventually(split, timeout=60, what="the partitions split between the two workers")
            await drive(bootstrap, topics.commands, thirds[1], seconds=0.5)
            assert await settle(
                bootstrap,
                topics,
                database_url,
                thirds[0] + thirds[1],
                timeout=60,
                group_id=group,
                sends=False,
            )
            assert second.decider is not None and second.decider.processed_commands > 0

        async def first_owns_all() -> bool:
            return _owned(first) == everything

        await eventually(first_owns_all, timeout=60, what="the first worker taking every partition back")
        await drive(bootstrap, topics.commands, thirds[2], seconds=0.5)
        assert await settle(bootstrap, topics, database_url, records, timeout=60, group_id=group, sends=False)

    report = ChaosReport(commands=len(records))
    await verify(bootstrap, topics, database_url, records, report)
    assert report.clean, "\n".join(report.details)


def _campaign() -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": "welcome",
            "account_id": ACCOUNT,
            "version": 1,
            "steps": [{"channel": "email", "delay": "PT1H", "content": {"subject": "Hi", "body": "Hello"}}],
        }
    )


def _enroll(contact_id: str) -> dict[str, Any]:
    return {
        "command_id": f"cmd-{uuid.uuid4()}",
        "type": "Enroll.v1",
        "account_id": ACCOUNT,
        "issued_at": datetime(2026, 11, 22, 9, 0, tzinfo=UTC).isoformat(),
        "actor": "test",
        "data": {"contact_id": contact_id, "campaign_id": "welcome", "contact": {"name": contact_id}},
    }


async def _publish_to_partition(bootstrap: str, topic: str, command: dict[str, Any], partition: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        key = f"{command['account_id']}/{command['data']['contact_id']}".encode()
        await producer.send_and_wait(topic, json.dumps(command).encode(), key=key, partition=partition)
    finally:
        await producer.stop()


async def _results_for(bootstrap: str, topic: str, command_id: str) -> int:
    """How many results the command has, once it has at least one."""
    records = await read_until(
        bootstrap, topic, lambda rs: any(json.loads(r.value)["command_id"] == command_id for r in rs)
    )
    return sum(1 for r in records if json.loads(r.value)["command_id"] == command_id)


async def _command_record(bootstrap: str, tp: TopicPartition) -> Any:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        batch = await consumer.getmany(tp, timeout_ms=10_000)
        return batch[tp][-1]
    finally:
        await consumer.stop()


async def test_a_zombie_that_lost_its_partition_is_fenced_and_its_batch_leaves_no_trace(
    settings: Settings, topics: Topics
) -> None:
    settings = _quick_groups(settings)
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, _campaign())
    tp0 = TopicPartition(topics.commands, 0)
    # The zombie held partition 0 and still thinks it does: its consumer has long left the group.
    catalog = CampaignCatalog(bootstrap, topics.campaigns)
    await catalog.start()
    zombie = DeciderService(bootstrap, topics, settings.group_id, catalog)
    zombie_owner = PartitionOwner(tp0, await zombie._new_producer(tp0), await zombie._open_state(0))
    zombie.owners[tp0] = zombie_owner
    try:
        async with running_worker(settings) as live:

            async def live_owns_partition_0() -> bool:
                return live.decider is not None and tp0 in live.decider.owners

            await eventually(live_owns_partition_0, what="the live worker owning partition 0")
            command = _enroll("zed")
            await _publish_to_partition(bootstrap, topics.commands, command, 0)
            record = await _command_record(bootstrap, tp0)
            await catalog.catch_up()
            await zombie._process(zombie_owner, [record])  # the zombie decides the same command too
            assert tp0 not in zombie.owners, "the fenced zombie gives the partition up"
            assert await _results_for(bootstrap, topics.command_results, command["command_id"]) == 1
            assert live_owns_partition_0
            assert tp0 in live.decider.owners  # type: ignore[union-attr]
    finally:
        await catalog.stop()


async def test_an_owner_whose_transactional_id_was_taken_takes_its_partition_back(
    settings: Settings, topics: Topics
) -> None:
    settings = _quick_groups(settings)
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, _campaign())
    tp0 = TopicPartition(topics.commands, 0)
    async with running_worker(settings) as live:
        decider = live.decider
        assert decider is not None

        async def live_owns_partition_0() -> bool:
            return tp0 in decider.owners

        await eventually(live_owns_partition_0, what="the live worker owning partition 0")
        # A zombie re-creates the same transactional id: the live owner's producer is fenced.
        thief = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=decider._transactional_id(tp0))
        await thief.start()
        try:
            command = _enroll("ada")
            await _publish_to_partition(bootstrap, topics.commands, command, 0)
            assert await _results_for(bootstrap, topics.command_results, command["command_id"]) == 1
            assert tp0 in decider.owners, "still assigned by the group, so it kept the partition"
            second = _enroll("bob")
            await _publish_to_partition(bootstrap, topics.commands, second, 0)
            assert await _results_for(bootstrap, topics.command_results, second["command_id"]) == 1
        finally:
            await thief.stop()
