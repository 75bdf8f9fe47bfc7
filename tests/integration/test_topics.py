"""Topic bootstrap is idempotent and creates what the contract names, configured as documented."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import InvalidTopicError

from enrollstream import stack
from enrollstream.adapters.kafka.topics import TopicMismatchError, Topics, ensure_topics


async def test_bootstrap_creates_every_topic_once_and_then_changes_nothing(
    endpoints: stack.Endpoints,
) -> None:
    topics = Topics(prefix=f"boot-{uuid.uuid4().hex[:8]}.")
    first = await ensure_topics(endpoints.kafka_bootstrap_servers, topics, partitions=4)
    second = await ensure_topics(endpoints.kafka_bootstrap_servers, topics, partitions=4)
    names = {spec.name for spec in topics.specs(4)}
    assert set(first) == names
    assert second == []
    assert names == {
        f"{topics.prefix}{suffix}"
        for suffix in (
            "commands",
            "events",
            "aggregates-changelog",
            "campaigns",
            "contact-imports",
            "command-results",
            "integration-events",
            "dead-letters",
            "outbound-sms",
            "webhook-subscriptions",
            "inbound-email",
            "operator-requests",
        )
    }

    admin = AIOKafkaAdminClient(bootstrap_servers=endpoints.kafka_bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics(sorted(names))
        partitions = {entry["topic"]: len(entry["partitions"]) for entry in described}
        assert partitions[topics.commands] == 4
        assert partitions[topics.events] == 4
        assert partitions[topics.campaigns] == 1
        assert partitions[topics.contact_imports] == 1
        assert partitions[topics.webhook_subscriptions] == 1
        configs = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, topics.events),
                ConfigResource(ConfigResourceType.TOPIC, topics.aggregates),
                ConfigResource(ConfigResourceType.TOPIC, topics.contact_imports),
            ]
        )
    finally:
        await admin.close()
    by_topic = {}
    for response in configs:
        for resource in response.resources:
            by_topic[resource[3]] = {entry[0]: entry[1] for entry in resource[4]}
    assert by_topic[topics.events]["retention.ms"] == "-1"
    assert by_topic[topics.aggregates]["cleanup.policy"] == "compact"
    assert by_topic[topics.contact_imports]["cleanup.policy"] == "compact"
    assert by_topic[topics.contact_imports]["max.message.bytes"] == str(8 * 1024 * 1024)


async def test_a_partition_count_that_disagrees_with_the_deployment_is_a_clear_error(
    endpoints: stack.Endpoints,
) -> None:
    topics = Topics(prefix=f"boot-{uuid.uuid4().hex[:8]}.")
    await ensure_topics(endpoints.kafka_bootstrap_servers, topics, partitions=2)
    with pytest.raises(TopicMismatchError, match="partition count is fixed per deployment"):
        await ensure_topics(endpoints.kafka_bootstrap_servers, topics, partitions=3)


async def test_a_topic_the_broker_refuses_to_create_is_an_error_naming_it(
    endpoints: stack.Endpoints,
) -> None:
    # A space is not allowed in a topic name: the broker refuses every topic of the request.
    topics = Topics(prefix=f"bad prefix {uuid.uuid4().hex[:8]}.")
    with pytest.raises(InvalidTopicError, match=f"creating topic {topics.prefix}"):
        await ensure_topics(endpoints.kafka_bootstrap_servers, topics, partitions=2)
