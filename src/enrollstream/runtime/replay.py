"""`enrollstream replay`: rebuild the read models from the events topic into fresh tables and compare.

The events topic is the source of truth and the projections a pure fold of it, so a rebuild must equal
the live tables once the live projector has caught up. The rebuild goes into a schema of its own in the
same database, built by the same migrations and written by the same projector code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from enrollstream.adapters.kafka.reading import batches_to_end
from enrollstream.adapters.kafka.topics import partition_numbers
from enrollstream.adapters.postgres.migrations import migrate
from enrollstream.read_models import timers
from enrollstream.runtime.projector import ProjectorService

# Each table with the columns that identify a row; the comparison is over every column.
COMPARED_TABLES: dict[str, str] = {
    "enrollments": "enrollment_id",
    "enrollment_timeline": "event_id",
    "enrollment_skips": "event_id",
    "replies": "event_id",
    "campaign_stats": "account_id, campaign_id",
    "bulk_enrollments": "bulk_enroll_id",
    "timers": "enrollment_id, kind",
}
# Tables compared over some columns only: the timers' lease (`claimed_until`) is the scheduler's, not a
# fold of the log.
COMPARED_COLUMNS: dict[str, str] = {"timers": ", ".join(timers.COLUMNS)}


@dataclass(frozen=True)
class TableComparison:
    table: str
    live_rows: int
    replayed_rows: int
    only_live: int
    only_replayed: int

    @property
    def equal(self) -> bool:
        return self.only_live == 0 and self.only_replayed == 0


@dataclass(frozen=True)
class ReplayReport:
    schema: str
    events: int
    live_lag: int  # events the live projector has not applied yet (0: the comparison is meaningful)
    tables: list[TableComparison]

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


async def rebuild(
    bootstrap: str, events_topic: str, database_url: str, schema: str
) -> tuple[int, dict[int, list[int]]]:
    """Fold the whole events topic (up to its current end) into `schema`.

    Returns the number of events and, per partition, the offsets of the events replayed (offsets are not
    dense under transactions: commit markers take offsets too).
    """
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'create schema "{schema}"')
        await conn.execute(f'set search_path to "{schema}"')
        await migrate(conn)
    finally:
        await conn.close()
    projector = ProjectorService(bootstrap, events_topic, database_url, "replay", schema=schema)
    await projector.open_pool()
    partitions = [TopicPartition(events_topic, p) for p in await partition_numbers(bootstrap, events_topic)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        applied = 0
        offsets: dict[int, list[int]] = {tp.partition: [] for tp in partitions}
        async for batch in batches_to_end(consumer, partitions, max_records=projector.max_batch):
            applied += await projector.apply_batch(batch)
            for tp, records in batch.items():
                offsets[tp.partition].extend(r.offset for r in records)
        return applied, offsets
    finally:
        await consumer.stop()
        await projector.stop()


async def compare(database_url: str, schema: str) -> list[TableComparison]:
    conn = await asyncpg.connect(database_url)
    try:
        out: list[TableComparison] = []
        for table in COMPARED_TABLES:
            columns = COMPARED_COLUMNS.get(table, "*")
            live = f"public.{table}"
            replayed = f'"{schema}".{table}'
            out.append(
                TableComparison(
                    table=table,
                    live_rows=await conn.fetchval(f"select count(*) from {live}"),
                    replayed_rows=await conn.fetchval(f"select count(*) from {replayed}"),
                    only_live=await conn.fetchval(_difference(columns, live, replayed)),
                    only_replayed=await conn.fetchval(_difference(columns, replayed, live)),
                )
            )
        return out
    finally:
        await conn.close()


def _difference(columns: str, left: str, right: str) -> str:
    return f"select count(*) from (select {columns} from {left} except select {columns} from {right}) d"


async def live_lag(database_url: str, events_topic: str, offsets: dict[int, list[int]]) -> int:
    """How many of the replayed events the live projector has not applied yet."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "select partition, next_offset from public.projection_checkpoints where topic = $1", events_topic
        )
    finally:
        await conn.close()
    done = {row["partition"]: row["next_offset"] for row in rows}
    return sum(
        sum(1 for offset in replayed if offset >= done.get(partition, 0))
        for partition, replayed in offsets.items()
    )


async def replay(bootstrap: str, events_topic: str, database_url: str, keep: bool = False) -> ReplayReport:
    schema = "replay_" + datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
    try:
        events, offsets = await rebuild(bootstrap, events_topic, database_url, schema)
        lag = await live_lag(database_url, events_topic, offsets)
        tables = await compare(database_url, schema)
        return ReplayReport(schema, events, lag, tables)
    finally:
        if not keep:
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute(f'drop schema if exists "{schema}" cascade')
            finally:
                await conn.close()
