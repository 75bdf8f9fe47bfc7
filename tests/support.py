"""Helpers for tests that talk to the real broker and database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from pydantic import BaseModel

from enrollstream.config import Settings
from enrollstream.runtime.worker import Worker


async def publish(bootstrap: str, topic: str, value: bytes | BaseModel, key: str | None = None) -> None:
    payload = value.model_dump_json().encode() if isinstance(value, BaseModel) else value
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, payload, key=key.encode() if key is not None else None)
    finally:
        await producer.stop()


async def publish_enroll(
    bootstrap: str, topic: str, account: str, contact: str, email: str, campaign_id: str = "welcome"
) -> None:
    """An upstream's Enroll of `contact` (with this email) into `campaign_id`, on the commands topic."""
    command = {
        "command_id": f"cmd-{uuid.uuid4()}",
        "type": "Enroll.v1",
        "account_id": account,
        "issued_at": datetime.now(UTC).isoformat(),
        "actor": "crm",
        "data": {"contact_id": contact, "campaign_id": campaign_id, "contact": {"email": email}},
    }
    await publish(bootstrap, topic, json.dumps(command).encode(), key=f"{account}/{contact}")


async def read_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Any]], bool],
    timeout: float = 30.0,
) -> list[Any]:
    """Read the topic from the beginning (committed records only) until `done(records)` holds."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(records):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic}: condition not met within {timeout}s; read {len(records)} records"
                )
            batch = await consumer.getmany(timeout_ms=250)
            for partition_records in batch.values():
                records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


async def set_topic_config(bootstrap: str, topic: str, config: dict[str, str], timeout: float = 30.0) -> None:
    """Alter the topic's config and return once the broker describes it so. The broker applies a change
    asynchronously (from its metadata log): a test acting right after the alter, with the broker busy
    deleting other tests' topics, could otherwise run against the old value."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for response in await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, config)]):
            for error_code, error_message, *_ in response.resources:
                assert error_code == 0, f"altering {topic}: {error_code} {error_message}"
        wanted = dict.fromkeys(config)
        deadline = time.monotonic() + timeout
        while True:
            described = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, wanted)]
            )
            entries = {name: value for r in described for *_, es in r.resources for name, value, *_ in es}
            if all(entries.get(name) == value for name, value in config.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: {config} not applied within {timeout}s (described {entries})")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings,
    roles: tuple[str, ...] = ("decider", "projector"),
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[Worker]:
    assert settings.kafka_bootstrap_servers and settings.database_url
    worker = Worker(settings, settings.kafka_bootstrap_servers, settings.database_url, roles)
    if clock is not None:
        worker.clock = clock
    started = asyncio.Event()
    task = asyncio.create_task(worker.run(started))
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what went wrong
    assert started.is_set(), "the worker did not start within 60s"
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=30)


async def fetch_one(database_url: str, sql: str, *args: Any) -> asyncpg.Record | None:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchrow(sql, *args)
    finally:
        await conn.close()
