"""One fold per fact: whatever batches the events come in, the read models say what applying them one
event at a time says (issue 15, the projector's per-batch coalescing).

The projector folds a whole batch in memory into the final row per enrollment and writes it with one
COPY and one guarded upsert, the timers from the final change per (enrollment, kind), the timeline in one
COPY. Here the same events, decided by the real domain from the seeded command mix, are applied one
event per transaction into `public` (the reference) and in hypothesis-drawn batches, some of them
delivered twice (a redelivery after a crash), into a schema of its own; `replay.compare` then finds no
row of any read model that differs.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass

import asyncpg
from aiokafka import TopicPartition
from bench import workload
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from enrollstream.adapters.kafka.records import encode
from enrollstream.adapters.postgres.migrations import migrate
from enrollstream.runtime.projector import ProjectorService
from enrollstream.runtime.replay import compare

TOPIC = "events"
PARTITIONS = 3
REDELIVERED = 5  # per partition
EVENTS = workload.events(400)


@dataclass(frozen=True)
class Record:
    """What the projector reads of a consumed record: its offset and value."""

    offset: int
    value: bytes


def _partitioned() -> dict[int, list[Record]]:
    """The events as the events topic holds them: by aggregate key, in decision order per partition,
    each partition ending with its first events again at new offsets, as a redelivered command's
    events are (same event ids): the timeline keeps their first rows, the folds skip them."""
    parts: dict[int, list[Record]] = {p: [] for p in range(PARTITIONS)}
    for decided in EVENTS:
        records = parts[zlib.crc32(decided.key.encode()) % PARTITIONS]
        records.append(Record(len(records), encode(decided.event)))
    for records in parts.values():
        records.extend(Record(len(records) + i, r.value) for i, r in enumerate(records[:REDELIVERED]))
    return parts


PARTS = _partitioned()


async def _projector(database_url: str, schema: str | None) -> ProjectorService:
    if schema is not None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'create schema "{schema}"')
            await conn.execute(f'set search_path to "{schema}"')
            await migrate(conn)
        finally:
            await conn.close()
    projector = ProjectorService("unused:9092", TOPIC, database_url, "test", schema=schema)
    await projector.open_pool()
    return projector


async def _one_event_at_a_time(database_url: str) -> None:
    projector = await _projector(database_url, None)
    try:
        for partition, records in PARTS.items():
            for record in records:
                assert await projector.apply_batch({TopicPartition(TOPIC, partition): [record]}) == 1
    finally:
        await projector.stop()


async def _in_batches(database_url: str, schema: str, cuts: list[int], redelivered: list[bool]) -> None:
    """Each partition cut at the drawn sizes (as a poll returns), polls taking one slice of every
    partition; a redelivered poll is applied again (the checkpoints make it a no-op)."""
    projector = await _projector(database_url, schema)
    try:
        position = dict.fromkeys(PARTS, 0)
        step = 0
        while any(position[p] < len(records) for p, records in PARTS.items()):
            size = cuts[step % len(cuts)]
            batch = {}
            for partition, records in PARTS.items():
                start = position[partition]
                if start < len(records):
                    batch[TopicPartition(TOPIC, partition)] = records[start : start + size]
                    position[partition] = start + size
            applied = await projector.apply_batch(batch)
            assert applied == sum(len(r) for r in batch.values())
            if redelivered[step % len(redelivered)]:
                assert await projector.apply_batch(batch) == 0
            step += 1
    finally:
        await projector.stop()


def test_the_workload_covers_what_the_batch_fold_coalesces() -> None:
    types = {d.event.type for d in EVENTS}
    assert {"ContactEnrolled.v1", "StepScheduled.v1", "EnrollmentStopped.v1", "ReplyReceived.v1"} <= types
    assert {"EnrollmentSkipped.v1", "ContactOptedOut.v1", "MessageBounced.v1"} <= types
    # Several events of one enrollment fall in one batch of any size above one: the case coalescing changes.
    per_enrollment: dict[str, int] = {}
    for d in EVENTS:
        if d.event.enrollment_id:
            per_enrollment[d.event.enrollment_id] = per_enrollment.get(d.event.enrollment_id, 0) + 1
    assert max(per_enrollment.values()) >= 3


@settings(
    max_examples=6,
    deadline=None,
    # No shrinking: each example is a few seconds against the real server; a failure's drawn cuts are
    # small enough to read as they are.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=6),
    redelivered=st.lists(st.booleans(), min_size=1, max_size=4),
)
def test_any_batching_says_what_one_event_at_a_time_says(
    database_url: str, cuts: list[int], redelivered: list[bool]
) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            reference_written = await conn.fetchval("select count(*) from enrollment_timeline") > 0
        finally:
            await conn.close()
        if not reference_written:
            await _one_event_at_a_time(database_url)
        schema = f"batched_{'_'.join(map(str, cuts))}_{''.join('r' if r else 'n' for r in redelivered)}"
        await _in_batches(database_url, schema, cuts, redelivered)
        try:
            tables = await compare(database_url, schema)
        finally:
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute(f'drop schema "{schema}" cascade')
            finally:
                await conn.close()
        filled = {t.table for t in tables if t.live_rows > 0}
        assert {"enrollments", "enrollment_timeline", "enrollment_skips", "replies", "timers"} <= filled
        assert "campaign_stats" in filled
        assert all(t.only_live == 0 and t.only_replayed == 0 for t in tables), tables

    asyncio.run(run())
