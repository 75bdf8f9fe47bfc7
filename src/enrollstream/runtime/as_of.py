"""`enrollstream as-of T`: the enrollment rows and stats cards as they were at T, rebuilt from the events
topic (kept forever), never from the live tables (docs/time-travel.md "As of T").

Time is the events' `occurred_at`: the time the decision was made (its command's `issued_at`), the time
every column of a row is written in (enrolled_at, sent_at, replied_at). The record's broker timestamp is
when Kafka appended it, which a replay, a backlog or a restore moves; occurred_at does not move. A
contact's history at T is the prefix of its events, in the order they were decided, up to its first event
after T: occurred_at may step back a little from one command to the next (the decider accepts a skew), and a
state is the fold of a prefix, never of a gapped subset.

Two costs, by what is asked:
- one contact (`contact_as_of`): its own events only. The timeline (migration 0017) says at which
  partition and offset each sits; those records are fetched from Kafka and folded in memory with the
  projector's own fold (`read_models.enrollments.apply`). The events the live projector has not applied
  yet (after its checkpoint in that partition) are read from the partition's tail. Timeline rows written
  before migration 0017 have no positions: the contact's one partition is scanned for its key instead.
- one campaign (`campaign_as_of`): the replay machinery (`replay.rebuild`) into a fresh schema with a
  cut at T and the campaign's events only, the rows and cards read from it, the schema dropped. It reads
  the whole events topic to its end (a record says its time and campaign only once read).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from pydantic import TypeAdapter, ValidationError

from enrollstream.adapters.kafka.reading import batches_to_end
from enrollstream.adapters.kafka.topics import partition_numbers
from enrollstream.adapters.postgres.queries import query
from enrollstream.domain import parse_event
from enrollstream.domain.bounds import Id, Instant
from enrollstream.domain.commands import aggregate_key
from enrollstream.domain.events import Event
from enrollstream.read_models import enrollments
from enrollstream.read_models.enrollments import EnrollmentRow
from enrollstream.runtime.replay import Cut, rebuild

QUERIES = "as_of.sql"
MAX_ROWS = 1000  # rows of one campaign an answer lists (its cards count them all)
FETCH_TIMEOUT_S = 30.0  # bound on waiting for one record the index names
CARDS = ("total", "active", "processing", "completed", "stopped", "failed", "queued", "awaiting_trigger",
         "expired", "handed_off", "unenrolled")  # fmt: skip

_instant: TypeAdapter[datetime] = TypeAdapter(Instant)
_id: TypeAdapter[str] = TypeAdapter(Id)
# One campaign rebuild at a time per process: each reads the whole events topic and writes a schema.
_rebuilds = asyncio.Semaphore(1)


class AsOfInputError(ValueError):
    """A time or id out of its bounds (docs/client.md "Bounds")."""


def bounded_time(value: datetime) -> datetime:
    """T in UTC: a time without zone is UTC; within the bounds of every time (2000-01-01..2200-01-01)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return _instant.validate_python(value)
    except ValidationError as exc:
        raise AsOfInputError(f"time {value.isoformat()}: {exc.errors()[0]['msg']}") from None


def bounded_id(name: str, value: str) -> str:
    try:
        return _id.validate_python(value)
    except ValidationError as exc:
        raise AsOfInputError(f"{name}: {exc.errors()[0]['msg']}") from None


@dataclass
class AsOf:
    at: datetime
    account_id: str
    campaign_id: str | None
    contact_id: str | None
    rows: list[EnrollmentRow]
    cards: dict[str, int] | None  # a campaign's stats cards; None for one contact
    method: str  # "timeline index", "partition scan" or "rebuild"
    records_read: int  # event records fetched from Kafka and read
    notes: list[str] = field(default_factory=list)


async def contact_as_of(
    bootstrap: str,
    events_topic: str,
    db: asyncpg.Connection | asyncpg.Pool,
    account_id: str,
    contact_id: str,
    at: datetime,
    campaign_id: str | None = None,
) -> AsOf:
    """One contact's enrollment rows at `at` (of one campaign when given), from its own events. `db`: a
    pool is held only for its two queries, not while Kafka is read."""
    at = bounded_time(at)
    account_id = bounded_id("account", account_id)
    contact_id = bounded_id("contact", contact_id)
    if campaign_id is not None:
        campaign_id = bounded_id("campaign", campaign_id)
    key = aggregate_key(account_id, contact_id).encode()
    count = len(await partition_numbers(bootstrap, events_topic))
    if count == 0:
        raise AsOfInputError(f"no topic {events_topic!r}")
    partition = int(DefaultPartitioner()(key, list(range(count)), list(range(count))))
    tp = TopicPartition(events_topic, partition)
    # The checkpoint before the index: what the projector applies in between is then in both (read
    # twice, kept once), never in neither.
    checkpoint = await db.fetchval(query("events_checkpoint", QUERIES), events_topic, partition) or 0
    positions = await db.fetch(query("contact_event_positions", QUERIES), account_id, contact_id, at)
    notes: list[str] = []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        if any(p["event_partition"] is None for p in positions):
            method = "partition scan"
            notes.append(
                f"the timeline has no record positions for some of this contact's events (written before "
                f"migration 0017): scanned partition {partition} for its key"
            )
            await consumer.seek_to_beginning(tp)
            records, read = await _scan_for_key(consumer, tp, key)
        else:
            method = "timeline index"
            offsets = sorted(p["event_offset"] for p in positions if p["event_partition"] == partition)
            if len(offsets) < len(positions):
                notes.append("some indexed events are not in the key's partition: partitions changed?")
            records = await _fetch_offsets(consumer, tp, offsets)
            read = len(records)
            # What the live projector has not applied yet is not in the timeline: read that tail.
            consumer.seek(tp, checkpoint)
            tail, scanned = await _scan_for_key(consumer, tp, key)
            if scanned:
                notes.append(f"read {scanned} records of partition {partition} past the projector")
            records += tail
            read += scanned
    finally:
        await consumer.stop()
    events = [e for e in map(_event, records) if e is not None]
    rows = fold_rows(_prefix(_own(events, account_id, contact_id), at), campaign_id)
    return AsOf(at, account_id, campaign_id, contact_id, rows, None, method, read, notes)


def fold_rows(events: list[Event], campaign_id: str | None = None) -> list[EnrollmentRow]:
    """The rows these events (one contact's, in the order decided) make, with the projector's fold."""
    rows: dict[str, EnrollmentRow | None] = {}
    for event in events:
        if event.enrollment_id and (campaign_id is None or event.campaign_id == campaign_id):
            rows[event.enrollment_id] = enrollments.apply(rows.get(event.enrollment_id), event)
    return sorted((r for r in rows.values() if r is not None), key=lambda r: (r.enrolled_at, r.enrollment_id))


def _own(events: list[Event], account_id: str, contact_id: str) -> list[Event]:
    """The contact's events only (the key and the index say so; the event itself is the last word),
    in the order they were decided, each once."""
    seen: set[str] = set()
    own = []
    for e in sorted(events, key=lambda e: e.version):
        if e.account_id == account_id and e.contact_id == contact_id and e.event_id not in seen:
            seen.add(e.event_id)
            own.append(e)
    return own


def _prefix(events: list[Event], at: datetime) -> list[Event]:
    """The history as of `at`: up to the first event after it (module docstring)."""
    for i, e in enumerate(events):
        if e.occurred_at > at:
            return events[:i]
    return events


def _event(record: Any) -> Event | None:
    try:
        return parse_event(record.value or b"")
    except ValidationError:
        return None  # a record the live projector quarantined too: not part of any row


async def _fetch_offsets(consumer: AIOKafkaConsumer, tp: TopicPartition, offsets: list[int]) -> list[Any]:
    """The records at these offsets (sorted), seeking only where they are not consecutive."""
    records: list[Any] = []
    position = -1
    for offset in offsets:
        if offset != position:
            consumer.seek(tp, offset)
        deadline = time.monotonic() + FETCH_TIMEOUT_S
        while True:
            fetched = await consumer.getmany(tp, timeout_ms=500, max_records=1)
            got = fetched.get(tp, [])
            if got:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tp.topic}:{tp.partition} offset {offset}: not fetched in time")
        record = got[0]
        position = record.offset + 1
        if record.offset == offset:
            records.append(record)
    return records


async def _scan_for_key(consumer: AIOKafkaConsumer, tp: TopicPartition, key: bytes) -> tuple[list[Any], int]:
    """From the consumer's position to the partition's end: the records of `key`, and how many were read."""
    found: list[Any] = []
    read = 0
    async for batch in batches_to_end(consumer, [tp]):
        for record in batch.get(tp, []):
            read += 1
            if record.key == key:
                found.append(record)
    return found, read


async def campaign_as_of(
    bootstrap: str,
    events_topic: str,
    database_url: str,
    account_id: str,
    campaign_id: str,
    at: datetime,
    limit: int = MAX_ROWS,
) -> AsOf:
    """One campaign's rows (the first `limit`, oldest first) and stats cards at `at`, from a rebuild."""
    at = bounded_time(at)
    account_id = bounded_id("account", account_id)
    campaign_id = bounded_id("campaign", campaign_id)
    limit = max(1, min(limit, MAX_ROWS))
    schema = "asof_" + uuid.uuid4().hex
    async with _rebuilds:
        try:
            rebuilt = await rebuild(
                bootstrap, events_topic, database_url, schema, cut=Cut(at, account_id, campaign_id)
            )
            conn = await asyncpg.connect(database_url, server_settings={"search_path": f'"{schema}"'})
            try:
                rows = await conn.fetch(query("rows_of_campaign", QUERIES), account_id, campaign_id, limit)
                card = await conn.fetchrow(query("cards_of_campaign", QUERIES), account_id, campaign_id)
            finally:
                await conn.close()
        finally:
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute(f'drop schema if exists "{schema}" cascade')
            finally:
                await conn.close()
    cards = {name: 0 for name in CARDS} | ({k: card[k] for k in CARDS} if card is not None else {})
    read = sum(len(offsets) for offsets in rebuilt.offsets.get(events_topic, {}).values())
    notes = [f"rebuilt from all {read} records of the events topic up to its end"]
    if cards["total"] > len(rows):
        notes.append(f"the first {len(rows)} of {cards['total']} rows")
    return AsOf(
        at,
        account_id,
        campaign_id,
        None,
        [EnrollmentRow(**dict(r)) for r in rows],
        cards,
        "rebuild",
        read,
        notes,
    )
