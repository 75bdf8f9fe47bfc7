"""The projector's pipeline stays exactly once (issue 15): batch N+1 is parsed and folded while batch N's
transaction runs, from the rows N leaves; when that is not what the database ends up holding, the
prepared batch is folded again, and the read models say what applying the events one at a time says.

The events are decided by the real domain from the bench's seeded command mix and read back from the
real broker; the reference is the same records applied one at a time into `public`, the pipelined run
goes into a schema of its own, and `replay.compare` finds no row of any read model that differs. The
cut is placed where it matters: a StepScheduled of an enrollment ends batch N, the event that ends the
enrollment (and deletes its timer) is in batch N+1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import TopicPartition
from bench import workload
from bench.common import produce

from enrollstream.adapters.kafka.records import encode
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.postgres.migrations import migrate
from enrollstream.config import Settings
from enrollstream.domain.events import parse_event
from enrollstream.runtime.projector import ProjectorService
from enrollstream.runtime.replay import compare
from tests.support import eventually, read_until

SCHEMA = "pipelined"
ENDINGS = {
    "EnrollmentStopped.v1",
    "EnrollmentUnenrolled.v1",
    "EnrollmentCompleted.v1",
    "EnrollmentExpired.v1",
    "EnrollmentFailed.v1",
    "EnrollmentHandedOff.v1",
}


async def _records(settings: Settings, topics: Topics) -> dict[int, list[Any]]:
    """The bench mix's events, produced to the events topic and read back: per partition, in order."""
    decided = workload.events(400)
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await produce(bootstrap, topics.events, [(d.key.encode(), encode(d.event)) for d in decided])
    records = await read_until(bootstrap, topics.events, lambda rs: len(rs) >= len(decided))
    parts: dict[int, list[Any]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        parts.setdefault(record.partition, []).append(record)
    return parts


def _cut(parts: dict[int, list[Any]]) -> tuple[int, list[Any], int, int]:
    """A partition, its records, the index of a StepScheduled whose enrollment's next event in the
    partition ends it, and the index of that ending (at least one other record before it)."""
    for partition, records in parts.items():
        events = [parse_event(r.value) for r in records]
        for x, scheduled in enumerate(events):
            if scheduled.type != "StepScheduled.v1" or x == 0:
                continue
            after = [
                y for y in range(x + 1, len(events)) if events[y].enrollment_id == scheduled.enrollment_id
            ]
            if after and events[after[0]].type in ENDINGS and after[0] > x + 1:
                return partition, records, x, after[0]
    raise AssertionError("the workload has no StepScheduled followed by its enrollment's ending")


async def _projector(database_url: str, topic: str, schema: str | None) -> ProjectorService:
    if schema is not None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'create schema if not exists "{schema}"')
            await conn.execute(f'set search_path to "{schema}"')
            if await conn.fetchval("select to_regclass('enrollments')") is None:
                await migrate(conn)
        finally:
            await conn.close()
    projector = ProjectorService("unused:9092", topic, database_url, "test", schema=schema)
    await projector.open_pool()
    return projector


async def _one_at_a_time(database_url: str, topic: str, partition: int, records: Sequence[Any]) -> None:
    projector = await _projector(database_url, topic, None)
    try:
        for record in records:
            await projector.apply({TopicPartition(topic, partition): [record]})
    finally:
        await projector.stop()


async def _same_as_one_at_a_time(database_url: str) -> None:
    tables = await compare(database_url, SCHEMA)
    filled = {t.table for t in tables if t.live_rows > 0}
    assert {"enrollments", "enrollment_timeline", "timers"} <= filled
    assert all(t.only_live == 0 and t.only_replayed == 0 for t in tables), tables


async def test_a_batch_written_otherwise_than_prepared_makes_the_next_batch_fold_again(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    """Batch N's write fails (PostgreSQL refuses the StepScheduled's timeline row: a CHECK added here,
    as a later constraint would refuse an event already in the log), so N is applied one record at a
    time and the StepScheduled quarantined. Batch N+1 was prepared meanwhile from the rows N would have
    left, the step included; it is dropped and folded again from what N committed."""
    parts = await _records(settings, topics)
    partition, records, x, y = _cut(parts)
    refused = parse_event(records[x].value).event_id
    tp = TopicPartition(topics.events, partition)
    await _projector(database_url, topics.events, SCHEMA)
    conn = await asyncpg.connect(database_url)
    try:
        for schema in ("public", SCHEMA):
            await conn.execute(
                f'alter table "{schema}".enrollment_timeline add constraint refuse_one'
                f" check (event_id <> '{refused}')"
            )
    finally:
        await conn.close()
    await _one_at_a_time(database_url, topics.events, partition, records)

    projector = await _projector(database_url, topics.events, SCHEMA)
    try:
        pipeline = projector.pipeline()
        for batch in (records[:1], records[1 : x + 1], records[x + 1 : y + 1], records[y + 1 :]):
            if batch:
                await pipeline.push({tp: batch})
        await pipeline.drain()
    finally:
        await projector.stop()
    await _same_as_one_at_a_time(database_url)
    assert projector.quarantined == 1
    assert projector.discarded == 1, "the batch after the refused one was prepared from its rows"


async def test_a_batch_prepared_while_another_instance_applies_its_partition_is_folded_again(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    """A rebalance moves the partition while this instance prepares batch N: the new owner applies N and
    N+1 (which ends an enrollment and deletes its timer). This instance's write of N then finds the
    checkpoints moved and folds N again, from what its transaction reads: it applies nothing, and
    brings back no timer N+1 deleted."""
    parts = await _records(settings, topics)
    partition, records, x, y = _cut(parts)
    tp = TopicPartition(topics.events, partition)
    await _one_at_a_time(database_url, topics.events, partition, records)

    this = await _projector(database_url, topics.events, SCHEMA)
    other = await _projector(database_url, topics.events, SCHEMA)
    try:
        await this.apply_batch({tp: records[:1]})
        prepared = await this.prepare({tp: records[1 : x + 1]}, None)
        assert prepared.events, "the batch has events to fold"
        await other.apply_batch({tp: records[1 : x + 1]})
        await other.apply_batch({tp: records[x + 1 : y + 1]})
        applied, as_prepared = await this.write_prepared(prepared)
        await this.apply_batch({tp: records[y + 1 :]})
    finally:
        await this.stop()
        await other.stop()
    await _same_as_one_at_a_time(database_url)
    assert (applied, as_prepared) == (0, False)
    assert this.refolded == 1


async def test_a_batch_after_one_stopped_while_waiting_out_the_database_is_not_written(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    """Batch N's write meets an error of the database itself (a trigger answers the StepScheduled's
    timeline row with `cannot_connect_now`, as a server starting up does), so it waits and tries again,
    while batch N+1 is prepared and waits behind it. The worker stops meanwhile: N is not written, and
    N+1, already prepared, is not written either: its checkpoint would move past N's records, which no
    one would apply then. The checkpoint stays where N starts."""
    parts = await _records(settings, topics)
    partition, records, x, y = _cut(parts)
    refused = parse_event(records[x].value).event_id
    tp = TopicPartition(topics.events, partition)
    projector = await _projector(database_url, topics.events, SCHEMA)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            f"""create function "{SCHEMA}".away() returns trigger language plpgsql as $$
                begin
                    if new.event_id = '{refused}' then
                        raise exception 'the database system is starting up' using errcode = '57P03';
                    end if;
                    return new;
                end $$"""
        )
        await conn.execute(
            f'create trigger away before insert on "{SCHEMA}".enrollment_timeline'
            f' for each row execute function "{SCHEMA}".away()'
        )
    finally:
        await conn.close()
    stop = asyncio.Event()
    projector._stop = stop  # what `run` waits on between tries
    try:
        pipeline = projector.pipeline()
        await pipeline.push({tp: records[:1]})
        await pipeline.push({tp: records[1 : x + 1]})  # N: its write waits out the "database"
        after = asyncio.create_task(pipeline.push({tp: records[x + 1 : y + 1]}))  # N+1
        await eventually(lambda: _true(projector.retries >= 2), what="batch N tried again")
        stop.set()
        await asyncio.wait_for(after, timeout=30)
        await pipeline.drain()
        checkpoints = await projector.checkpoints()
    finally:
        await projector.stop()
    assert checkpoints == {partition: 1}, "nothing after batch N's start is applied"


async def _true(value: bool) -> bool:
    return value
