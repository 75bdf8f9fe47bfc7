"""`enrollstream replay`: rebuild the read models from the events topic into fresh tables and compare.

The events topic is the source of truth and the projections a pure fold of it, so a rebuild must equal
the live tables once the live projector has caught up. The rebuild goes into a schema of its own in the
same database, built by the same migrations and written by the same projector code.

`decisions` comes from the command-results topic, whose records expire after its retention (a week):
the rebuild compares the rows the topic still holds, and older live rows are history only Postgres has.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
    "bulk_enrollments": "account_id, bulk_enroll_id",
    "contacts": "account_id, contact_id",
    "timers": "enrollment_id, kind",
    "decisions": "result_partition, result_offset",
}
# Tables compared over some columns only: the timers' lease (`claimed_until`) is the scheduler's, not a
# fold of the log.
# The timeline's record positions (migration 0017) are where an event sits, not a fold of it: rows written
# before that migration have none, and the rebuild's would always differ from them.
COMPARED_COLUMNS: dict[str, str] = {
    "timers": ", ".join(timers.COLUMNS),
    "enrollment_timeline": "event_id, account_id, contact_id, campaign_id, enrollment_id, version, type, "
    "occurred_at, causation_id, data",
}

# Tables compared through a view: the timeline's events whole, a ContactEnrolled's campaign definition put
# back (migration 0020), so rows that carry it and rows that refer to it compare equal.
COMPARED_RELATIONS: dict[str, str] = {"enrollment_timeline": "enrollment_timeline_events"}


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
    live_lag: int  # records (events, results) the live projector has not applied yet (0: comparable)
    tables: list[TableComparison]

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


@dataclass
class Rebuilt:
    events: int
    # Per topic and partition, the offsets of the records replayed (offsets are not dense under
    # transactions: commit markers take offsets too).
    offsets: dict[str, dict[int, list[int]]]
    # Per partition of the results topic, the first offset it still holds (older results expired).
    results_start: dict[int, int]


@dataclass(frozen=True)
class Cut:
    """Which events a rebuild applies (`enrollstream as-of`, docs/time-travel.md): those that occurred at
    or before `until`, of one account's campaign when given. Per record key (one contact), the history
    stops at its first event after `until`: occurred_at is the decision's time (its command's issued_at),
    not monotone across commands within the skew the decider accepts, and a contact's state is a fold of
    a prefix of its events, never of a gapped subset."""

    until: datetime
    account_id: str | None = None
    campaign_id: str | None = None

    def keeper(self) -> Callable[[Any], bool]:
        """A predicate on event records, in partition order (it remembers the keys already cut)."""
        cut_keys: set[bytes | None] = set()

        def keep(record: Any) -> bool:
            key = record.key
            if key in cut_keys:
                return False
            try:
                doc = json.loads(record.value or b"")
                occurred = datetime.fromisoformat(doc["occurred_at"])
                account, campaign = doc.get("account_id"), doc.get("campaign_id")
            except (ValueError, KeyError, TypeError, AttributeError):
                # Not an event this can read: kept, so the projector quarantines it as the live one did.
                return self.account_id is None
            if occurred.tzinfo is None or occurred > self.until:
                cut_keys.add(key)
                return False
            if self.account_id is not None and account != self.account_id:
                return False
            return self.campaign_id is None or campaign == self.campaign_id

        return keep


def _kept(
    batch: dict[Any, list[Any]], keep: Callable[[Any], bool], events_topic: str
) -> dict[Any, Sequence[Any]]:
    """The batch less the events `keep` refuses (other topics' records pass as they are)."""
    out: dict[Any, Sequence[Any]] = {}
    for tp, records in batch.items():
        kept = [r for r in records if keep(r)] if tp.topic == events_topic else records
        if kept:
            out[tp] = kept
    return out


async def rebuild(
    bootstrap: str,
    events_topic: str,
    database_url: str,
    schema: str,
    results_topic: str | None = None,
    *,
    cut: Cut | None = None,
) -> Rebuilt:
    """Fold the whole events topic (and the results topic, if given) up to its current end into `schema`.
    With `cut`, only the events it keeps (the events topic is still read to its end: the cut is decided
    per record, by what the record says)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'create schema "{schema}"')
        await conn.execute(f'set search_path to "{schema}"')
        await migrate(conn)
    finally:
        await conn.close()
    projector = ProjectorService(
        bootstrap, events_topic, database_url, "replay", results_topic=results_topic, schema=schema
    )
    await projector.open_pool()
    partitions = [
        TopicPartition(topic, p)
        for topic in projector.topics
        for p in await partition_numbers(bootstrap, topic)
    ]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        starts = await consumer.beginning_offsets([tp for tp in partitions if tp.topic == results_topic])
        applied = 0
        offsets: dict[str, dict[int, list[int]]] = {topic: {} for topic in projector.topics}
        for tp in partitions:
            offsets[tp.topic][tp.partition] = []
        keep = None if cut is None else cut.keeper()
        async for batch in batches_to_end(consumer, partitions, max_records=projector.max_batch):
            kept = batch if keep is None else _kept(batch, keep, events_topic)
            if kept:
                applied += await projector.apply(kept)  # quarantines what it cannot write, as live
            for tp, records in batch.items():
                offsets[tp.topic][tp.partition].extend(r.offset for r in records)
        return Rebuilt(applied, offsets, {tp.partition: offset for tp, offset in starts.items()})
    finally:
        await consumer.stop()
        await projector.stop()


async def compare(
    database_url: str, schema: str, results_start: dict[int, int] | None = None
) -> list[TableComparison]:
    """Each table, live against rebuilt. `decisions` only when the results topic was replayed
    (`results_start`), and only over the results the topic still holds."""
    conn = await asyncpg.connect(database_url)
    try:
        out: list[TableComparison] = []
        for table in COMPARED_TABLES:
            columns = COMPARED_COLUMNS.get(table, "*")
            relation = COMPARED_RELATIONS.get(table, table)
            live = compared = f"public.{relation}"
            replayed = f'"{schema}".{relation}'
            if table == "decisions":
                if results_start is None:
                    continue
                compared = f"(select * from {live} where {_still_in_topic(results_start)}) held"
            out.append(
                TableComparison(
                    table=table,
                    live_rows=await conn.fetchval(f"select count(*) from {live}"),
                    replayed_rows=await conn.fetchval(f"select count(*) from {replayed}"),
                    only_live=await conn.fetchval(_difference(columns, compared, replayed)),
                    only_replayed=await conn.fetchval(_difference(columns, replayed, compared)),
                )
            )
        return out
    finally:
        await conn.close()


def _still_in_topic(starts: dict[int, int]) -> str:
    """A condition on `decisions` rows: the result is at or after its partition's log start."""
    held = " or ".join(
        f"(result_partition = {int(p)} and result_offset >= {int(o)})" for p, o in sorted(starts.items())
    )
    return held or "false"


def _difference(columns: str, left: str, right: str) -> str:
    return f"select count(*) from (select {columns} from {left} except select {columns} from {right}) d"


async def live_lag(database_url: str, offsets: dict[str, dict[int, list[int]]]) -> int:
    """How many of the replayed records (events, results) the live projector has not applied yet."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "select topic, partition, next_offset from public.projection_checkpoints where topic = any($1)",
            list(offsets),
        )
    finally:
        await conn.close()
    done = {(row["topic"], row["partition"]): row["next_offset"] for row in rows}
    return sum(
        sum(1 for offset in replayed if offset >= done.get((topic, partition), 0))
        for topic, partitions in offsets.items()
        for partition, replayed in partitions.items()
    )


async def replay(
    bootstrap: str,
    events_topic: str,
    database_url: str,
    keep: bool = False,
    *,
    results_topic: str | None = None,
) -> ReplayReport:
    """Rebuild and compare. With `results_topic`, `decisions` is rebuilt and compared too."""
    schema = "replay_" + datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
    try:
        rebuilt = await rebuild(bootstrap, events_topic, database_url, schema, results_topic)
        lag = await live_lag(database_url, rebuilt.offsets)
        starts = rebuilt.results_start if results_topic else None
        tables = await compare(database_url, schema, starts)
        return ReplayReport(schema, rebuilt.events, lag, tables)
    finally:
        if not keep:
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute(f'drop schema if exists "{schema}" cascade')
            finally:
                await conn.close()
