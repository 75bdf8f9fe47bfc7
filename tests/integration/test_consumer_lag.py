"""The consumer-lag gauge reads 0 once a role has drained its partitions, also when their last records
were written in a transaction (the commit marker takes an offset no consumer ever hands over)."""

from __future__ import annotations

import json

from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.runtime.campaigns import publish_campaign
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll
from tests.support import eventually, fetch_one, running_worker


def lag(role: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value("enrollstream_consumer_lag", {"role": role, "partition": str(partition)})


async def test_the_lag_of_drained_partitions_is_zero_after_transactional_records(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap and settings.database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    contacts = [f"lag{i}" for i in range(12)]
    async with running_worker(settings, roles=("decider", "projector")):
        # Upstream publishes in a transaction, as the decider writes its events: markers in both topics.
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topics.prefix}upstream")
        await producer.start()
        try:
            async with producer.transaction():
                for contact in contacts:
                    key = f"{ACCOUNT}/{contact}".encode()
                    await producer.send(topics.commands, json.dumps(enroll(contact)).encode(), key=key)
        finally:
            await producer.stop()

        async def all_projected() -> bool:
            row = await fetch_one(settings.database_url or "", "select count(*) as n from enrollments")
            return row is not None and row["n"] == len(contacts)

        await eventually(all_projected, what="every enrollment projected")

        async def drained() -> bool:
            return all(
                lag(role, p) == 0 for role in ("decider", "projector") for p in range(settings.partitions)
            )

        await eventually(drained, timeout=15, what="every partition's lag back to 0")
