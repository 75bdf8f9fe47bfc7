"""Readiness probes: a server is ready when it does real work, not when its port opens."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

READINESS_TOPIC = "__enrollstream_readiness"


async def kafka_round_trip(bootstrap: str) -> None:
    """Metadata, then a produce/consume round trip through a one-partition topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(READINESS_TOPIC, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    token = uuid.uuid4().bytes
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=5000)
    await producer.start()
    try:
        meta = await producer.send_and_wait(READINESS_TOPIC, token, partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(READINESS_TOPIC, 0)
        consumer.assign([partition])
        consumer.seek(partition, meta.offset)
        record = await asyncio.wait_for(consumer.getone(), timeout=10)
        if record.value != token:
            raise RuntimeError("readiness round trip read back a different record")
    finally:
        await consumer.stop()


async def postgres_select_one(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        if await conn.fetchval("select 1") != 1:
            raise RuntimeError("select 1 did not return 1")
    finally:
        await conn.close()


def wait_kafka_ready(bootstrap: str, timeout: float = 90.0) -> None:
    _retry(lambda: kafka_round_trip(bootstrap), timeout, f"Kafka at {bootstrap}")


def wait_postgres_ready(url: str, timeout: float = 60.0) -> None:
    _retry(lambda: postgres_select_one(url), timeout, "PostgreSQL")


def kafka_ready(bootstrap: str) -> bool:
    try:
        asyncio.run(asyncio.wait_for(kafka_round_trip(bootstrap), timeout=20))
    except (KafkaError, OSError, RuntimeError, TimeoutError):
        return False
    return True


def postgres_ready(url: str) -> bool:
    try:
        asyncio.run(asyncio.wait_for(postgres_select_one(url), timeout=10))
    except (OSError, asyncpg.PostgresError, RuntimeError, TimeoutError):
        return False
    return True


def _retry(make: Callable[[], Coroutine[Any, Any, None]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            asyncio.run(asyncio.wait_for(make(), timeout=max(1.0, deadline - time.monotonic())))
            return
        except Exception as exc:  # any failure means "not yet"; the last one is reported
            last = exc
            time.sleep(0.5)
    raise TimeoutError(f"{what} was not ready within {timeout:.0f}s: {last!r}")
