"""The local stack serves a real broker and a real database, and `up` twice reuses what runs."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from enrollstream import stack
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.stack import readiness
from enrollstream.stack.processes import pid_alive


async def test_a_record_goes_through_the_real_broker_transactionally(
    endpoints: stack.Endpoints, topics: Topics
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=endpoints.kafka_bootstrap_servers, transactional_id=f"{topics.prefix}probe"
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send(topics.dead_letters, b"committed", key=b"k", partition=0)
        await producer.begin_transaction()
        await producer.send(topics.dead_letters, b"aborted", key=b"k", partition=0)
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topics.dead_letters, b"committed again", key=b"k", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=endpoints.kafka_bootstrap_servers, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        partition = TopicPartition(topics.dead_letters, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        values: list[bytes] = []
        while len(values) < 2:
            batch = await consumer.getmany(partition, timeout_ms=5000)
            assert batch, "the committed records never arrived"
            values += [record.value for record in batch[partition]]
    finally:
        await consumer.stop()
    assert values == [b"committed", b"committed again"]


async def test_a_row_goes_through_the_real_database(endpoints: stack.Endpoints) -> None:
    conn = await asyncpg.connect(endpoints.database_url)
    try:
        version = await conn.fetchval("show server_version_num")
        assert int(version) >= 150000
        assert await conn.fetchval("select $1::int + 1", 41) == 42
    finally:
        await conn.close()


def test_a_second_up_reuses_the_running_stack(endpoints: stack.Endpoints) -> None:
    again = stack.up(Settings())
    assert again.started == []
    assert again.endpoints == endpoints
    reported = stack.status(Settings())
    assert reported["kafka"]["ready"] and reported["postgres"]["ready"]


def test_down_stops_what_up_started_and_leaves_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):  # both spellings Settings reads
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"ENROLLSTREAM_{name}", raising=False)
    settings = Settings(stack_dir=tmp_path / "stack")
    state = stack.up(settings)
    try:
        assert sorted(state.started) == ["kafka", "postgres"]
        assert readiness.kafka_ready(state.kafka.address)
        assert readiness.postgres_ready(state.postgres.address)
        local_pids = [s.pid for s in (state.kafka, state.postgres) if s.source == "local"]
        assert all(pid_alive(pid) for pid in local_pids)
    finally:
        stopped = stack.down(settings)
    assert sorted(stopped) == ["kafka", "postgres"]
    assert not any(pid_alive(pid) for pid in local_pids)
    assert not readiness.postgres_ready(state.postgres.address)
    assert stack.status(settings) == {}


def test_servers_from_the_environment_do_not_overwrite_the_record_of_the_running_stack(
    endpoints: stack.Endpoints,
) -> None:
    before = stack.status(Settings())
    from_env = Settings(
        kafka_bootstrap_servers=endpoints.kafka_bootstrap_servers, database_url=endpoints.database_url
    )
    state = stack.up(from_env)
    assert state.started == [] and state.kafka.source == state.postgres.source == "env"
    assert stack.status(Settings()) == before, "`stack down` must still find what the stack runs"
