"""Projector: events/s into PostgreSQL with checkpoints vs raw `COPY` of the same records.

The events are decided in process by the real domain from the seeded commands and produced once to an
events topic. Each repetition gets a fresh database with every migration applied. Both sides read the
topic with the same consumer (`read_committed`, all partitions assigned, batches of the projector's
`max_batch` up to the end) and write each batch in one transaction:

- the projector: its `Pipeline`, the code the worker runs (each batch parsed and folded while the one
  before it is written; per batch the checkpoint lock, COPY into staging and the guarded upsert with
  stats, timeline, skips, replies, checkpoint advance);
- the baseline: `COPY` of one row per event (partition, offset, key, value bytes) into an unindexed,
  logged table: the cost of getting the same bytes into PostgreSQL at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import workload
from bench.common import Result, Sizes, Stopwatch, median, migrated_database, produce, run_id
from enrollstream.adapters.kafka.reading import batches_to_end
from enrollstream.adapters.kafka.records import encode
from enrollstream.adapters.kafka.topics import Topics, ensure_topics
from enrollstream.adapters.postgres.databases import create_database, drop_database
from enrollstream.runtime.projector import ProjectorService

log = logging.getLogger(__name__)

TARGET = ">= 20,000 events/s and >= 0.2 of raw COPY (issue 15)"
MAX_BATCH = 2000  # ProjectorService's default


async def _events_topic(bootstrap: str, sizes: Sizes, n: int) -> str:
    topics = Topics(prefix=f"bench-{run_id()}.")
    await ensure_topics(bootstrap, topics, sizes.partitions)
    decided = workload.events(n)
    await produce(bootstrap, topics.events, [(d.key.encode(), encode(d.event)) for d in decided])
    return topics.events


async def _consume(
    bootstrap: str, topic: str, sizes: Sizes, apply: Any, finish: Any = None
) -> tuple[int, float]:
    partitions = [TopicPartition(topic, p) for p in range(sizes.partitions)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        clock = Stopwatch()
        applied = 0
        async for batch in batches_to_end(consumer, partitions, max_records=MAX_BATCH):
            applied += await apply(batch)
        if finish is not None:
            applied += await finish()
        return applied, clock.elapsed()
    finally:
        await consumer.stop()


async def run_projector(bootstrap: str, server_url: str, topic: str, sizes: Sizes) -> tuple[float, int]:
    name = f"bench_{run_id()}"
    url = await migrated_database(server_url, name)
    try:
        projector = ProjectorService(bootstrap, topic, url, "bench", max_batch=MAX_BATCH)
        await projector.open_pool()
        try:
            pipeline = projector.pipeline()

            async def push(batch: dict[TopicPartition, list[Any]]) -> int:
                return sum(applied for _, applied in await pipeline.push(batch))

            async def drain() -> int:
                return sum(applied for _, applied in await pipeline.drain())

            applied, seconds = await _consume(bootstrap, topic, sizes, push, drain)
        finally:
            await projector.stop()
        return applied / seconds, applied
    finally:
        await drop_database(server_url, name)


async def run_raw_copy(bootstrap: str, server_url: str, topic: str, sizes: Sizes) -> tuple[float, int]:
    name = f"bench_{run_id()}"
    url = await create_database(server_url, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                'create table raw_events (partition int not null, "offset" bigint not null,'
                " key bytea, value bytea)"
            )

            async def apply(batch: dict[TopicPartition, list[Any]]) -> int:
                rows = [(tp.partition, r.offset, r.key, r.value) for tp, rs in batch.items() for r in rs]
                async with conn.transaction():
                    await conn.copy_records_to_table("raw_events", records=rows)
                return len(rows)

            applied, seconds = await _consume(bootstrap, topic, sizes, apply)
        finally:
            await conn.close()
        return applied / seconds, applied
    finally:
        await drop_database(server_url, name)


async def scenario(
    bootstrap: str, server_url: str, sizes: Sizes, say: Callable[[str], None], profile: Any = None
) -> Result:
    n = sizes.projector_events
    say(f"projector: deciding and producing {n:,} events (plus {sizes.projector_warmup:,} for warm-up)")
    warm = await _events_topic(bootstrap, sizes, sizes.projector_warmup)
    topic = await _events_topic(bootstrap, sizes, n)
    await run_raw_copy(bootstrap, server_url, warm, sizes)
    await run_projector(bootstrap, server_url, warm, sizes)
    projected: list[float] = []
    raw: list[float] = []
    for rep in range(sizes.reps):
        raw.append((await run_raw_copy(bootstrap, server_url, topic, sizes))[0])
        rate, applied = await run_projector(bootstrap, server_url, topic, sizes)
        if applied != n:
            raise RuntimeError(f"the projector applied {applied} of {n} events")
        projected.append(rate)
        say(f"projector rep {rep + 1}/{sizes.reps}: {rate:,.0f} events/s, raw COPY {raw[-1]:,.0f} rows/s")
    if profile is not None:
        with profile("projector"):
            await run_projector(bootstrap, server_url, topic, sizes)
    value, baseline = median(projected), median(raw)
    sample = workload.events(min(n, 5_000))
    kinds: dict[str, int] = {}
    for d in sample:
        kinds[d.event.type] = kinds.get(d.event.type, 0) + 1
    return Result(
        status="measured",
        unit="events/s",
        target=TARGET,
        value=value,
        baseline=baseline,
        baseline_name="raw COPY of the same records into an unindexed table (partition, offset, key, value)",
        runs=projected,
        baseline_runs=raw,
        target_met=value >= 20_000 and value >= 0.2 * baseline,
        params={
            "events": n,
            "warmup_events": sizes.projector_warmup,
            "reps": sizes.reps,
            "partitions": sizes.partitions,
            "max_batch": MAX_BATCH,
            "mean_event_bytes": round(sum(len(encode(d.event)) for d in sample) / len(sample)),
            "event_mix": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "database": "fresh database per repetition, every migration applied (indexes included)",
        },
    )
