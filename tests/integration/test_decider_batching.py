"""The decider's batch wait (ENROLLSTREAM_DECIDER_BATCH_WAIT_MS), through the real broker: commands that
trickle in are gathered into a few transactions instead of one each, and every one is still decided."""

from __future__ import annotations

import asyncio
import json

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from enrollstream import observability as metrics
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.runtime.campaigns import publish_campaign
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll, results_by_id
from tests.support import read_until, running_worker


def contacts_on_one_partition(count: int, partitions: int) -> list[str]:
    """Contact ids whose keys the producer's default partitioner puts on the same partition."""

    def partition(contact: str) -> int:
        return (murmur2(f"{ACCOUNT}/{contact}".encode()) & 0x7FFFFFFF) % partitions

    candidates = (f"trickle-{i:03d}" for i in range(100_000))
    first = next(candidates)
    return [first, *(c for c in candidates if partition(c) == partition(first))][:count]


def committed_transactions() -> float:
    return metrics.TRANSACTIONS.labels("decider", "committed")._value.get()  # type: ignore[no-any-return]


async def test_commands_trickling_in_within_the_batch_wait_are_decided_in_a_few_transactions(
    settings: Settings, topics: Topics
) -> None:
    """40 Enrolls on one partition, one every 25 ms (a second in all), with a 300 ms wait: the broker
    holds the decider's fetch until the wait is over, so they take a handful of transactions. Without the
    wait each is fetched and decided as it arrives, about one transaction each."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    # One partition, so one producer and its transactions.
    enrolls = [enroll(c) for c in contacts_on_one_partition(40, settings.partitions)]
    configured = settings.model_copy(update={"decider_batch_wait_ms": 300})
    async with running_worker(configured, roles=("decider",)):
        before = committed_transactions()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for command in enrolls:
                await producer.send_and_wait(
                    topics.commands,
                    json.dumps(command).encode(),
                    key=f"{ACCOUNT}/{command['data']['contact_id']}".encode(),
                )
                await asyncio.sleep(0.025)
        finally:
            await producer.stop()
        records = await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: {c["command_id"] for c in enrolls} <= set(results_by_id(rs)),
        )
        transactions = committed_transactions() - before
    assert all(results_by_id(records)[c["command_id"]]["status"] == "accepted" for c in enrolls)
    # About a second of arrivals over 300 ms windows: 4 or 5; 10 leaves room for a slow machine.
    assert transactions <= 10, f"{transactions:.0f} transactions for 40 commands"
