"""Shared fixtures: one real Kafka broker and one real PostgreSQL server for the whole run.

Per test, isolation comes from a fresh topic prefix and a fresh database, so tests never see each
other's records and the same servers serve the whole suite (and a developer's running stack).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from enrollstream import stack
from enrollstream.adapters.kafka.topics import Topics, ensure_topics
from enrollstream.adapters.postgres.migrations import migrate
from enrollstream.config import Settings

TEST_PARTITIONS = 3

# Real SMTP and DNS servers on 127.0.0.1 (tests/servers): smtp_server, dns_server, manual_clock.
pytest_plugins = ["tests.servers.fixtures"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "acceptance" in parts:
            item.add_marker(pytest.mark.acceptance)


@pytest.fixture(scope="session")
def endpoints() -> Iterator[stack.Endpoints]:
    """The real servers: from the environment, else the local stack (started here, stopped at the end)."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    settings = Settings()
    state = stack.up(settings)
    try:
        yield state.endpoints
    finally:
        if state.started:
            stack.down(settings)


@pytest.fixture
def settings(
    endpoints: stack.Endpoints, topics: Topics, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return Settings(
        kafka_bootstrap_servers=endpoints.kafka_bootstrap_servers,
        database_url=database_url,
        topic_prefix=topics.prefix,
        partitions=TEST_PARTITIONS,
        group_id=f"{topics.prefix}group",
        # The suite's commands and ManualClocks use fixed days (2026-03-02, 2026-11-22, days ahead), not
        # the broker's clock: the issued_at skew check is off here and on, with its defaults, in
        # tests/integration/test_poison_inputs.py.
        command_max_future_skew_s=0,
        command_max_age_s=0,
        # The decider's stores under the session's temporary directory (each group has its own path).
        state_dir=tmp_path_factory.getbasetemp() / "decider-state",
    )


@pytest.fixture
def topics(endpoints: stack.Endpoints) -> Iterator[Topics]:
    """A fresh, bootstrapped set of topics under a prefix of this test's own, deleted afterwards: a
    suite's thousands of partitions would otherwise keep the broker's files open until it runs out of
    descriptors (and fails every test after that)."""
    topics = Topics(prefix=f"test-{uuid.uuid4().hex[:10]}.")
    asyncio.run(ensure_topics(endpoints.kafka_bootstrap_servers, topics, TEST_PARTITIONS))
    yield topics
    asyncio.run(_delete_topics(endpoints.kafka_bootstrap_servers, topics.prefix))


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture
def empty_database_url(endpoints: stack.Endpoints) -> Iterator[str]:
    """A fresh, empty database on the real server, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(endpoints.database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'create database "{name}"'))
    try:
        yield _with_database(endpoints.database_url, name)
    finally:
        asyncio.run(admin(f'drop database if exists "{name}" with (force)'))


@pytest.fixture
def database_url(empty_database_url: str) -> str:
    """A fresh database with every migration applied."""

    async def run() -> None:
        conn = await asyncpg.connect(empty_database_url)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(run())
    return empty_database_url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()
