"""The default SMS channel publishes to the outbound-sms topic of a real Kafka broker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from enrollstream import stack
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.sms import OutboundSms, OutboundSmsTopicChannel, SmsChannel
from enrollstream.domain.delivery_policy import SendOutcome
from tests.servers.clock import ManualClock
from tests.support import read_until


async def total_records(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        assert partitions
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        await consumer.stop()


@pytest.fixture
async def producer(endpoints: stack.Endpoints) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=endpoints.kafka_bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def test_an_sms_is_published_for_the_relay_keyed_by_recipient(
    endpoints: stack.Endpoints, topics: Topics, producer: AIOKafkaProducer
) -> None:
    clock = ManualClock()
    channel: SmsChannel = OutboundSmsTopicChannel(producer, topics, clock)

    # Not a number anyone can text: the contact's number is the problem (the enrollment fails).
    refused = await channel.send("0800 not a number", "Hi", "es-bad")
    assert refused.outcome is SendOutcome.INVALID_RECIPIENT
    result = await channel.send("+44 7700 900123", "Hi Ada, your interview is at 10:00.", "es-abc123")
    assert result.outcome is SendOutcome.SENT
    assert result.provider_message_id is not None
    assert result.provider_message_id.startswith(f"{topics.outbound_sms}/")

    records = await read_until(
        endpoints.kafka_bootstrap_servers, topics.outbound_sms, lambda rs: len(rs) >= 1
    )
    [record] = records  # the refused one was never published
    assert record.key == b"+447700900123"
    assert dict(record.headers)["idempotency-key"] == b"es-abc123"
    sms = OutboundSms.model_validate(json.loads(record.value))
    assert sms == OutboundSms(
        idempotency_key="es-abc123",
        to="+447700900123",
        body="Hi Ada, your interview is at 10:00.",
        requested_at=clock.now,
    )
