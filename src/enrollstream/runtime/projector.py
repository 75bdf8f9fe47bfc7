"""The projector: events and command results in, Postgres read models out, each batch and its
checkpoints in one transaction.

Kafka's committed offsets are not what the projector trusts: the checkpoints in Postgres are. On
assignment it seeks to them; per batch it locks them, skips what they say is already applied, writes the
rows and moves them forward, all in one transaction. A crash anywhere redoes at most the uncommitted
batch, and the guarded upsert makes a replayed event a no-op.

Besides the events topic it reads the command-results topic (when given) into `decisions`: every
decision, also those that changed nothing (refusals, duplicates, stale and deferred commands), so "why"
is answerable from Postgres. Both topics have checkpoints of their own, in the same transaction.

No record stops it. A batch PostgreSQL refuses for a value one event carries (a NUL character, an
integer out of its column's range: `DataError`), or holding a record the models cannot parse, is applied
again one record at a time: each good one as before, each bad one quarantined in `unprojectable_events`
(migration 0014) in the same transaction that moves its checkpoint past it, so the events topic, kept
forever, never holds the projector back. A lost connection (or any other error of the database itself)
is waited out with backoff and the same batch applied again; the checkpoints make that exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from operator import attrgetter

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from pydantic import ValidationError

from enrollstream import observability as metrics
from enrollstream.adapters.kafka.reading import group_consumer
from enrollstream.adapters.postgres.errors import Backoff, is_data_error
from enrollstream.adapters.postgres.queries import query
from enrollstream.domain import CommandResult
from enrollstream.domain.events import (
    BulkEnrollAccepted,
    ContactOptedOut,
    ContactProfileSet,
    EnrollmentSkipped,
    Event,
    ReplyReceived,
)
from enrollstream.observability import Progress
from enrollstream.read_models import enrollments, timers
from enrollstream.read_models.event_reader import EventReader

log = logging.getLogger(__name__)

PROJECTION = "read_models"
# A row's column values in column order. Not dataclasses.astuple: that deep-copies every field and was a
# third of the projector's time (docs/benchmarks.md); the values are scalars, a shallow read suffices.
_ENROLLMENT_VALUES = attrgetter(*enrollments.COLUMNS)
_TIMER_VALUES = attrgetter(*timers.COLUMNS)
_TIMELINE_COLUMNS = (
    "event_id",
    "account_id",
    "contact_id",
    "campaign_id",
    "enrollment_id",
    "version",
    "type",
    "occurred_at",
    "causation_id",
    "data",
    "event_partition",  # where the event sits in the events topic: as-of's index (migration 0017)
    "event_offset",
    "campaign_definition",  # a ContactEnrolled's definition, by digest (migration 0020)
)
# How much of an unprojectable record's value `unprojectable_events` keeps (its size and hash: all of it).
QUARANTINE_VALUE_PREFIX = 64 * 1024
# Records parsed between two chances for the write in flight to go on (`ProjectorService.prepare`).
_YIELD_EVERY = 16
_FOLD_YIELD_EVERY = 64
_INFRASTRUCTURE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def is_record_error(exc: BaseException) -> bool:
    """Whether `exc`, raised while writing one record, is that record's (quarantine it) rather than the
    database's (wait and retry): PostgreSQL refused a value it carries, or it could not be parsed or
    folded (any error that is not PostgreSQL's or the network's)."""
    return is_data_error(exc) or not isinstance(exc, _INFRASTRUCTURE_ERRORS)


class ProjectorService:
    def __init__(
        self,
        bootstrap: str,
        events_topic: str,
        database_url: str,
        group_id: str,
        *,
        results_topic: str | None = None,
        max_batch: int = 2000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        schema: str | None = None,
        stuck_after_s: float = 300.0,
        stuck_retries: int = 5,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = events_topic
        self.results_topic = results_topic  # None: events only (no `decisions`)
        self.database_url = database_url
        self.group_id = f"{group_id}.projector"
        self.max_batch = max_batch
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.schema = schema  # None: the live read models; a name: a replay's fresh copy
        self._consumer: AIOKafkaConsumer | None = None
        self._pool: asyncpg.Pool | None = None
        self.applied_events = 0
        # What /healthz says of this role: per topic, since the events and results partitions share numbers.
        self.progress = {
            topic: Progress(role, stuck_after_s=stuck_after_s, max_retries=stuck_retries)
            for topic, role in ((events_topic, "projector"), (results_topic, "projector (results)"))
            if topic is not None
        }
        self.applied_results = 0
        self.quarantined = 0
        self.retries = 0  # batches tried again after an error of the database
        self._stop = asyncio.Event()
        self._reader = EventReader()  # the events' parse, with the campaign definitions it validated
        self.refolded = 0  # prepared batches folded again at their write (the checkpoints had moved)
        self.discarded = (
            0  # prepared batches dropped because the batch before them was not written as prepared
        )

    @property
    def topics(self) -> list[str]:
        return [self.topic] + ([self.results_topic] if self.results_topic else [])

    async def open_pool(self) -> None:
        settings = {"search_path": f'"{self.schema}"'} if self.schema else None
        self._pool = await asyncpg.create_pool(
            self.database_url, min_size=1, max_size=2, server_settings=settings
        )

    async def start(self) -> None:
        await self.open_pool()
        self._consumer = group_consumer(
            self.bootstrap,
            self.group_id,
            max_poll_records=self.max_batch,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
        )
        await self._consumer.start()
        self._consumer.subscribe(self.topics, listener=_SeekToCheckpoints(self))

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        assert consumer is not None, "start() the projector first"
        self._stop = stop
        pipeline = self.pipeline()
        try:
            while not stop.is_set():
                # With a write in flight, only what is fetched already: none means the write is
                # awaited (the pipeline idles empty).
                batch = await consumer.getmany(
                    timeout_ms=0 if pipeline.busy else 200, max_records=self.max_batch
                )
                if not batch:
                    if pipeline.busy:
                        for written, _ in await pipeline.drain():
                            await self._written(consumer, written)
                        continue
                    for tp in consumer.assignment():
                        if tp.topic == self.topic:
                            await metrics.record_consumer_lag("projector", consumer, tp)
                    continue
                for tp in batch:
                    self._progress_of(tp).working(tp.partition)
                for written, _ in await pipeline.push(batch):
                    await self._written(consumer, written)
        finally:
            with contextlib.suppress(Exception):
                await pipeline.drain()

    async def apply_retrying(self, batch: Mapping[TopicPartition, Sequence[object]]) -> int | None:
        """`apply`, and after an error of the database, the same batch again with backoff until it is
        written. Returns the events applied; None if stopped first."""
        backoff = Backoff()
        while True:
            try:
                return await self.apply(batch)
            except Exception as exc:
                # The database's, not a record's (those are quarantined by apply): a lost
                # connection, a server restarting. Wait and apply the same batch again; the
                # checkpoints skip what a try before committed.
                metrics.TRANSACTIONS.labels("projector", "aborted").inc()
                metrics.POSTGRES_RETRIES.labels("projector").inc()
                self.retries += 1
                for tp, records in batch.items():
                    self._progress_of(tp).retried(tp.partition, records[0].offset)  # type: ignore[attr-defined]
                delay = backoff.next_delay()
                log.warning(
                    "projector: the batch could not be written (%s: %s); trying again in %.1fs",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                if self._stop.is_set():
                    return None

    async def _written(
        self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, Sequence[object]]
    ) -> None:
        """After a batch's transaction committed: progress, metrics, lag, Kafka's offsets."""
        for tp in batch:
            self._progress_of(tp).advanced(tp.partition)
        metrics.TRANSACTIONS.labels("projector", "committed").inc()
        metrics.BATCH_RECORDS.labels("projector").observe(sum(len(r) for r in batch.values()))
        for tp, records in batch.items():
            if tp.topic != self.topic:
                continue  # the lag gauge is per partition of the events topic
            if tp not in consumer.assignment():
                continue  # revoked by a rebalance while the batch was written (another process joined)
            await metrics.record_consumer_lag("projector", consumer, tp, records[-1].offset + 1)  # type: ignore[attr-defined]
        # Only for lag monitoring; the checkpoints in Postgres are the truth.
        with contextlib.suppress(Exception):
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})  # type: ignore[attr-defined]

    def _progress_of(self, tp: TopicPartition) -> Progress:
        return self.progress.get(tp.topic) or self.progress[self.topic]

    def stuck(self) -> str | None:
        """Why the projector makes no progress on records it has (e.g. PostgreSQL away), for /healthz."""
        return "; ".join(r for p in self.progress.values() if (r := p.stuck()) is not None) or None

    async def apply(self, batch: Mapping[TopicPartition, Sequence[object]]) -> int:
        """`apply_batch`, and when a record of the batch cannot be written, the batch again one record
        at a time, quarantining each record that cannot be written. Raises only what is the database's
        (the caller retries). Returns how many events were applied."""
        try:
            return await self.apply_batch(batch)
        except Exception as exc:
            if not is_record_error(exc):
                raise
            log.warning(
                "projector: a batch of %d records failed (%s: %s); applying it one record at a time",
                sum(len(r) for r in batch.values()),
                type(exc).__name__,
                _clean(str(exc), 500),
            )
        applied = 0
        for tp, records in batch.items():
            for record in records:
                try:
                    applied += await self.apply_batch({tp: [record]})
                except Exception as exc:
                    if not is_record_error(exc):
                        raise
                    await self.quarantine(tp, record, exc)
        return applied

    async def quarantine(self, tp: TopicPartition, record: object, error: BaseException) -> bool:
        """Keep `record` in `unprojectable_events` with why, and move its partition's checkpoint past
        it, in one transaction. False if the checkpoint was past it already."""
        assert self._pool is not None
        offset: int = record.offset  # type: ignore[attr-defined]
        value: bytes = record.value or b""  # type: ignore[attr-defined]
        event_id, type_, account_id = _identify(value, events=tp.topic == self.topic)
        reason = _clean(f"{type(error).__name__}: {error}", 2000)
        async with self._pool.acquire() as conn, conn.transaction():
            stored = {
                row["partition"]: row["next_offset"]
                for row in await conn.fetch(query("lock_checkpoints"), PROJECTION, tp.topic, [tp.partition])
            }
            if stored.get(tp.partition, 0) > offset:
                return False
            await conn.execute(
                query("quarantine_event"),
                PROJECTION,
                tp.topic,
                tp.partition,
                offset,
                event_id,
                type_,
                account_id,
                reason,
                value[:QUARANTINE_VALUE_PREFIX],
                len(value),
                hashlib.sha256(value).hexdigest(),
            )
            await conn.execute(
                query("advance_checkpoints"), PROJECTION, tp.topic, [tp.partition], [offset + 1]
            )
        self.quarantined += 1
        metrics.QUARANTINED.labels(tp.topic).inc()
        log.error(
            "projector: quarantined %s:%d offset %d (%s %s of account %s): %s",
            tp.topic,
            tp.partition,
            offset,
            type_,
            event_id,
            account_id,
            reason,
        )
        return True

    async def checkpoints(self, topic: str | None = None) -> dict[int, int]:
        """Per partition of `topic` (default: the events topic), the next offset to apply."""
        assert self._pool is not None
        rows = await self._pool.fetch(query("read_checkpoints"), PROJECTION, topic or self.topic)
        return {row["partition"]: row["next_offset"] for row in rows}

    async def apply_batch(self, batch: Mapping[TopicPartition, Sequence[object]]) -> int:
        """Fold one poll's records into the read models; returns how many events were applied."""
        with _gc_paused():
            # The batch's objects are freed (by reference counting) when this returns, before the
            # collector is back on, so it never traverses them.
            return await self._apply_batch(batch)

    async def _apply_batch(self, batch: Mapping[TopicPartition, Sequence[object]]) -> int:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            return await self._fold_and_write(conn, batch, await self._lock_checkpoints(conn, batch))

    async def _lock_checkpoints(
        self, conn: asyncpg.Connection, batch: Mapping[TopicPartition, Sequence[object]]
    ) -> dict[str, dict[int, int]]:
        """Per topic of the batch, its partitions' checkpoints, locked until the transaction ends."""
        stored: dict[str, dict[int, int]] = {}
        for topic in sorted({tp.topic for tp in batch}):
            if topic not in self.topics:
                raise ValueError(f"the projector does not read {topic!r}")
            partitions = sorted(tp.partition for tp in batch if tp.topic == topic)
            rows = await conn.fetch(query("lock_checkpoints"), PROJECTION, topic, partitions)
            stored[topic] = {row["partition"]: row["next_offset"] for row in rows}
        return stored

    async def _fold_and_write(
        self,
        conn: asyncpg.Connection,
        batch: Mapping[TopicPartition, Sequence[object]],
        stored: Mapping[str, Mapping[int, int]],
    ) -> int:
        """The batch from the checkpoints `stored` (locked by this transaction) on, folded over the rows
        as this transaction reads them, and written."""
        prepared = _Prepared(batch, stored)
        for _ in self._parse(prepared):
            pass
        if not prepared.advanced:
            return 0
        if prepared.events:
            before = await _enrollments_before(conn, prepared.events, {})
            for _ in _fold(prepared, before):
                pass
        return await self._write(conn, prepared)

    def _parse(self, prepared: _Prepared) -> Iterator[None]:
        """Each record past its partition's checkpoint parsed into `prepared` (its event and timeline
        row); yields now and then, so a caller overlapping another batch's write can let it go on."""
        parsed = 0
        for tp, records in sorted(
            prepared.batch.items(), key=lambda item: (item[0].topic, item[0].partition)
        ):
            topic, partition = tp.topic, tp.partition
            start = prepared.starts[topic].get(partition, 0)
            for record in records:
                offset: int = record.offset  # type: ignore[attr-defined]
                if offset < start:
                    continue  # applied by an earlier batch (or another instance)
                value: bytes | None = record.value  # type: ignore[attr-defined]
                try:
                    if topic == self.topic:
                        event, dump, definition = self._reader.read_referenced(value or b"")
                        digest = None
                        if definition is not None:
                            # The row names its campaign definition, stored once (migration 0020).
                            digest = definition.digest
                            prepared.definitions[(event.account_id, digest)] = definition.json
                        prepared.events.append(event)
                        prepared.timeline.append(
                            (
                                event.event_id,
                                event.account_id,
                                event.contact_id,
                                event.campaign_id,
                                event.enrollment_id,
                                event.version,
                                event.type,
                                event.occurred_at,
                                event.causation_id,
                                event.data.model_dump_json() if dump is None else dump,
                                partition,  # where the event sits in the events topic: as-of's index (0017)
                                offset,
                                digest,
                            )
                        )
                    else:
                        prepared.results.append(
                            (partition, offset, CommandResult.model_validate_json(value or b""))
                        )
                except ValidationError:
                    # Only the decider writes here, through the same models; an undecodable
                    # record is a bug to surface (apply quarantines it), not to skip silently.
                    log.error("undecodable record at %s:%d offset %d", topic, partition, offset)
                    raise
                prepared.advance.setdefault(topic, {})[partition] = offset + 1
                parsed += 1
                if parsed % _YIELD_EVERY == 0:
                    yield

    async def _write(self, conn: asyncpg.Connection, prepared: _Prepared) -> int:
        """A parsed and folded batch into the read models, its checkpoints moved past it."""
        for topic, advance in sorted(prepared.advance.items()):
            await conn.execute(
                query("advance_checkpoints"), PROJECTION, topic, list(advance.keys()), list(advance.values())
            )
        events = prepared.events
        if events:
            await self._write_timers(conn, prepared)
            await self._write_enrollments(conn, prepared)
            if prepared.definitions:
                accounts, digests = zip(*prepared.definitions, strict=True)
                await conn.execute(
                    query("insert_campaign_definitions"),
                    list(accounts),
                    list(digests),
                    list(prepared.definitions.values()),
                )
            await self._write_timeline(conn, prepared.timeline)
            await self._write_skips_and_replies(conn, events)
            await self._write_bulk_enrollments(conn, events)
            await self._write_contacts(conn, events)
        await self._write_decisions(conn, prepared.results)
        self.applied_events += len(events)
        self.applied_results += len(prepared.results)
        return len(events)

    # The pipeline (docs/architecture.md, Projector, "The pipeline"): batch N+1 parsed and folded while
    # batch N's transaction runs in PostgreSQL.

    async def prepare(
        self, batch: Mapping[TopicPartition, Sequence[object]], previous: _Prepared | None
    ) -> _Prepared:
        """`batch` parsed and folded ahead of its transaction, while `previous` (if given) is being
        written: from `previous`'s checkpoints and rows where it has them (as they will be once it
        commits), the database's for the rest (which `previous` does not write). `write_prepared` checks
        that the checkpoints it locks are the ones this started from; the caller must not use the result
        if `previous` was not committed as prepared. Raises what the parse or the read raises."""
        pool = self._pool
        assert pool is not None
        with _gc_paused():
            starts: dict[str, dict[int, int]] = {}
            for topic in sorted({tp.topic for tp in batch}):
                if topic not in self.topics:
                    raise ValueError(f"the projector does not read {topic!r}")
                known = previous.offsets_after.get(topic, {}) if previous is not None else {}
                partitions = [tp.partition for tp in batch if tp.topic == topic]
                stored: dict[int, int] = {}
                if any(p not in known for p in partitions):
                    rows = await pool.fetch(query("read_checkpoints"), PROJECTION, topic)
                    stored = {row["partition"]: row["next_offset"] for row in rows}
                starts[topic] = {p: known[p] if p in known else stored.get(p, 0) for p in partitions}
            prepared = _Prepared(batch, starts, previous)
            for _ in self._parse(prepared):
                await asyncio.sleep(0)
            if prepared.events:
                before = await _enrollments_before(
                    pool, prepared.events, previous.rows if previous is not None else {}
                )
                for _ in _fold(prepared, before):
                    await asyncio.sleep(0)
        return prepared

    async def write_prepared(self, prepared: _Prepared) -> tuple[int, bool]:
        """Write a batch `prepare`d ahead, in one transaction with its checkpoints. A contact's events
        share one key (`aggregate_key`), so each enrollment's rows are folded from one partition and
        change only in a transaction that moves that partition's checkpoint: checkpoints equal to the
        ones the preparation started from mean the rows it folded over are the rows now. Otherwise
        (another instance applied these partitions meanwhile, after a rebalance) the prepared fold is
        dropped and the batch folded again here, from what this transaction reads. Returns the events
        applied and whether the batch was written as prepared."""
        assert self._pool is not None
        with _gc_paused():
            async with self._pool.acquire() as conn, conn.transaction():
                stored = await self._lock_checkpoints(conn, prepared.batch)
                if all(
                    stored[topic].get(partition, 0) == start
                    for topic, starts in prepared.starts.items()
                    for partition, start in starts.items()
                ):
                    return (await self._write(conn, prepared) if prepared.advanced else 0), True
                self.refolded += 1
                log.info("projector: the checkpoints moved while a batch was prepared; folding it again")
                return await self._fold_and_write(conn, prepared.batch, stored), False

    def pipeline(self) -> Pipeline:
        return Pipeline(self)

    async def _write_decisions(
        self, conn: asyncpg.Connection, results: list[tuple[int, int, CommandResult]]
    ) -> None:
        if not results:
            return
        rows = [
            (
                partition,
                offset,
                r.command_id,
                r.command_type,
                r.account_id,
                r.contact_id,
                r.campaign_id,
                r.enrollment_id,
                r.actor,
                r.status,
                r.code,
                r.message,
                json.dumps(r.details),
                json.dumps(r.event_ids),
                json.dumps(r.enrollment_ids),
                r.contact_version,
                r.issued_at,
            )
            for partition, offset, r in results
        ]
        await conn.execute(query("insert_decisions"), *map(list, zip(*rows, strict=True)))

    async def _write_enrollments(self, conn: asyncpg.Connection, prepared: _Prepared) -> None:
        """The final row of each enrollment the batch changed (`_fold`), in one COPY and one guarded
        upsert, which also moves the campaign_stats counters."""
        if not prepared.changed:
            return
        await conn.execute(query("create_enrollments_stage"))
        await conn.copy_records_to_table(
            "enrollments_stage",
            records=prepared.changed,
            columns=list(enrollments.COLUMNS),
        )
        await conn.execute(query("merge_enrollments_stage"))

    async def _write_timers(self, conn: asyncpg.Connection, prepared: _Prepared) -> None:
        if prepared.timer_deletes:
            await conn.execute(query("delete_timers"), *map(list, zip(*prepared.timer_deletes, strict=True)))
        if prepared.timer_upserts:
            await conn.execute(query("create_timers_stage"))
            await conn.copy_records_to_table(
                "timers_stage",
                records=prepared.timer_upserts,
                columns=list(timers.COLUMNS),
            )
            await conn.execute(query("merge_timers_stage"))

    async def _write_timeline(self, conn: asyncpg.Connection, records: list[tuple[object, ...]]) -> None:
        """The batch's events (`_timeline_records`) in one COPY straight into the timeline. An event id
        already there (a redelivered BulkEnroll repeats its events, ids included) keeps its first row:
        then, and only then, the COPY goes into a staging table and on into the timeline where the id is
        new."""
        try:
            async with conn.transaction():  # a savepoint: a refused COPY leaves the batch's work standing
                await conn.copy_records_to_table(
                    "enrollment_timeline", records=records, columns=list(_TIMELINE_COLUMNS)
                )
            return
        except asyncpg.UniqueViolationError:
            pass
        await conn.execute(query("create_timeline_stage"))
        await conn.copy_records_to_table(
            "enrollment_timeline_stage", records=records, columns=list(_TIMELINE_COLUMNS)
        )
        await conn.execute(query("merge_timeline_stage"))

    async def _write_skips_and_replies(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        skips = [e for e in events if type(e) is EnrollmentSkipped]
        if skips:
            rows = [
                (
                    e.event_id,
                    e.account_id,
                    e.contact_id,
                    e.campaign_id or "",
                    e.data.kind.value,
                    e.data.reason,
                    e.data.contact.name if e.data.contact else None,
                    e.data.contact.email if e.data.contact else None,
                    e.data.batch_number,
                    e.data.contact_import_id,
                    json.dumps(e.data.evidence),
                    e.occurred_at,
                    e.data.bulk_enroll_id,
                )
                for e in skips
            ]
            await conn.execute(query("insert_skips"), *map(list, zip(*rows, strict=True)))
        replies = [e for e in events if type(e) is ReplyReceived]
        if replies:
            reply_rows = [
                (
                    e.event_id,
                    e.account_id,
                    e.contact_id,
                    e.campaign_id or "",
                    e.enrollment_id or "",
                    e.data.replied_at,
                    None if e.data.hours_to_reply is None else Decimal(str(round(e.data.hours_to_reply, 2))),
                    e.data.first_reply,
                    e.data.reply_action.value,
                    e.data.inbound_message_id,
                    e.data.excerpt,
                )
                for e in replies
            ]
            await conn.execute(query("insert_replies"), *map(list, zip(*reply_rows, strict=True)))

    async def _write_bulk_enrollments(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        accepted = [e for e in events if type(e) is BulkEnrollAccepted]
        if not accepted:
            return
        rows = [
            (
                e.causation_id,
                e.event_id,
                e.account_id,
                e.campaign_id or "",
                e.data.campaign_version,
                e.data.contact_import_id,
                e.data.contacts,
                e.data.batches,
                e.data.batch_size,
                e.data.requested_by,
                e.occurred_at,
            )
            for e in accepted
        ]
        await conn.execute(query("insert_bulk_enrollments"), *map(list, zip(*rows, strict=True)))

    async def _write_contacts(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """The contact directory (migration 0016): the last profile per contact of the batch, then the
        opt-outs (each guarded by the aggregate version, so order across batches does not matter)."""
        profiles: dict[tuple[str, str], ContactProfileSet] = {}
        opt_outs: dict[tuple[str, str], ContactOptedOut] = {}
        for e in events:
            if type(e) is ContactProfileSet:
                profiles[(e.account_id, e.contact_id)] = e
            elif type(e) is ContactOptedOut:
                opt_outs[(e.account_id, e.contact_id)] = e
        if profiles:
            rows = [
                (
                    e.account_id,
                    e.contact_id,
                    e.data.profile.name,
                    e.data.profile.email,
                    e.data.profile.mobile,
                    e.data.profile.line_type.value,
                    e.data.profile.time_zone,
                    e.data.profile.opted_out,
                    e.version,
                    e.occurred_at,
                )
                for e in profiles.values()
            ]
            await conn.execute(query("upsert_contacts"), *map(list, zip(*rows, strict=True)))
        if opt_outs:
            outs = [(e.account_id, e.contact_id, e.version, e.occurred_at) for e in opt_outs.values()]
            await conn.execute(query("opt_out_contacts"), *map(list, zip(*outs, strict=True)))


async def _enrollments_before(
    conn: asyncpg.Connection | asyncpg.Pool,
    events: list[Event],
    known: Mapping[str, enrollments.EnrollmentRow | None],
) -> dict[str, enrollments.EnrollmentRow | None]:
    """The `enrollments` row (None: none yet) of each enrollment `events` name, before the batch: from
    `known` (the rows as the batch before this one leaves them) where it has it, else as `conn` reads it
    (for a batch prepared ahead: the rows the batch being written does not touch)."""
    ids = {e.enrollment_id for e in events if e.enrollment_id}
    rows = {key: known[key] for key in ids if key in known}
    missing = sorted(ids.difference(rows))
    if missing:
        read = {
            record["enrollment_id"]: enrollments.from_record(record)
            for record in await conn.fetch(query("enrollments_by_id"), missing)
        }
        for key in missing:
            rows[key] = read.get(key)
    return rows


def _fold(prepared: _Prepared, before: dict[str, enrollments.EnrollmentRow | None]) -> Iterator[None]:
    """Every event of the batch folded in memory, from the rows `before` it: the final row per
    enrollment (`enrollments.apply`, the same fold one event at a time would run) and the final change
    per timer (`timers.TimerFold`). Fills `prepared`'s rows, changed rows and timer changes; yields now
    and then."""
    events = prepared.events
    rows = dict(before)  # every enrollment the batch names: the row after it
    changed: set[str] = set()
    for n, event in enumerate(events, 1):
        key = event.enrollment_id
        if n % _FOLD_YIELD_EVERY == 0:
            yield
        if not key:
            continue
        previous = rows.get(key)
        after = enrollments.apply(previous, event)
        # `apply` returns the row itself when the event changes nothing, and a new row with a higher
        # `last_version` otherwise: identity says "changed" without comparing 31 fields.
        if after is not None and after is not previous:
            rows[key] = after
            changed.add(key)
    prepared.changed = [_ENROLLMENT_VALUES(row) for key in sorted(changed) if (row := rows[key]) is not None]
    yield
    relevant = [e for e in events if timers.concerns_timers(e)]
    if relevant:
        fold = timers.TimerFold(
            {
                e.enrollment_id: timers.EnrollmentInfo.from_row(row.__dict__)
                for e in relevant
                if e.enrollment_id and (row := before.get(e.enrollment_id)) is not None
            }
        )
        for event in relevant:
            fold.apply(event)
        prepared.timer_deletes = fold.deletes()
        prepared.timer_upserts = [_TIMER_VALUES(row) for row in fold.upserts()]
    prepared.rows = rows


class _Prepared:
    """One batch parsed and folded, ready for its transaction."""

    def __init__(
        self,
        batch: Mapping[TopicPartition, Sequence[object]],
        starts: Mapping[str, Mapping[int, int]],
        previous: _Prepared | None = None,
    ) -> None:
        self.batch = batch
        self.starts = starts  # per topic: each partition's checkpoint the batch was parsed from
        self.events: list[Event] = []
        self.results: list[tuple[int, int, CommandResult]] = []
        self.advance: dict[str, dict[int, int]] = {}  # per topic: each partition's checkpoint after it
        self.rows: dict[str, enrollments.EnrollmentRow | None] = {}  # each enrollment it names, after it
        # What the transaction writes, as the COPYs take it (built before it, off the write's path):
        self.changed: list[tuple[object, ...]] = []  # the enrollment rows it changed, by enrollment id
        self.timer_deletes: list[tuple[str, str]] = []
        self.timer_upserts: list[tuple[object, ...]] = []
        self.timeline: list[tuple[object, ...]] = []  # one row per event, in step with `events`
        self.definitions: dict[tuple[str, str], str] = {}  # (account, digest) -> a definition's JSON
        # What the batches prepared before it leave the checkpoints at (their rows are not kept: only
        # the previous batch's, which holds the ones it changed).
        self._offsets_before = previous.offsets_after if previous is not None else {}
        self._offsets_after: dict[str, dict[int, int]] | None = None

    @property
    def advanced(self) -> bool:
        return bool(self.advance)

    @property
    def offsets_after(self) -> dict[str, dict[int, int]]:
        """Per topic, each partition's checkpoint once this batch (and the chain of prepared batches
        before it) is written, for every partition the chain touched."""
        if self._offsets_after is None:
            after = {topic: dict(offsets) for topic, offsets in self._offsets_before.items()}
            for source in (self.starts, self.advance):
                for topic, offsets in source.items():
                    after.setdefault(topic, {}).update(offsets)
            self._offsets_after = after
        return self._offsets_after


class Pipeline:
    """At most one batch in its transaction while the next is parsed and folded (`push`).

    Exactly once, as without it: each batch is written in one transaction with its checkpoints, in the
    order pushed. The next batch is prepared from the rows the batch in flight leaves, and used only if
    that batch was committed as prepared: if its write failed (retried, or applied one record at a time
    with a quarantine), the prepared next batch is dropped and written from what the database then says.
    Its own write checks the checkpoints it started from (`ProjectorService.write_prepared`)."""

    def __init__(self, service: ProjectorService) -> None:
        self.service = service
        self._writing: asyncio.Task[tuple[int, bool] | None] | None = None
        self._batch: Mapping[TopicPartition, Sequence[object]] | None = None
        self._prepared: _Prepared | None = None  # the batch in flight, if it was prepared
        self._collect_in = _COLLECT_EVERY
        self._last_as_prepared = False  # whether the last write finished committed what was prepared
        self._stopped = False  # whether the last write finished without writing (stopped while retrying)
        self._gc_pause: contextlib.AbstractContextManager[None] | None = None

    @property
    def busy(self) -> bool:
        return self._writing is not None

    async def push(
        self, batch: Mapping[TopicPartition, Sequence[object]]
    ) -> list[tuple[Mapping[TopicPartition, Sequence[object]], int]]:
        """Prepare `batch`, wait for the write in flight, start `batch`'s. Returns the batches whose
        writes finished, each with the events it applied. When the write in flight stopped unwritten (the
        service stopped while it waited out the database), `batch` is not started either."""
        done = []
        prepared: _Prepared | None = None
        tried = False
        if self._writing is None or self._prepared is not None:
            prepared, tried = await self._prepare(batch, self._prepared), True
        if self._writing is not None:
            done = await self._finish()
            if self._stopped:
                # The batch before was not written (stopped while it waited out the database): this one
                # must not be either, or its checkpoints would move past the batch before. A new start
                # seeks to the checkpoints and reads both again.
                return done
            if prepared is not None and not self._last_as_prepared:
                prepared, tried = None, False  # folded over rows the batch before did not commit
                self.service.discarded += 1
        if not tried:  # nothing prepared ahead: prepare it now, from the database alone
            prepared = await self._prepare(batch, None)
        self._batch, self._prepared = batch, prepared
        if self._gc_pause is None:
            # Paused while batches follow each other: each batch's objects live from its preparation
            # through its write, across the awaits between them (see `_gc_paused`).
            self._gc_pause = _gc_paused()
            self._gc_pause.__enter__()
        self._writing = asyncio.ensure_future(self._commit(batch, prepared))
        return done

    async def _prepare(
        self, batch: Mapping[TopicPartition, Sequence[object]], previous: _Prepared | None
    ) -> _Prepared | None:
        try:
            return await self.service.prepare(batch, previous)
        except Exception as exc:
            # A record it cannot parse (the write quarantines it) or the database away (the write
            # retries): the batch goes through `ProjectorService.apply`.
            log.info(
                "projector: a batch could not be prepared (%s: %s)", type(exc).__name__, _clean(str(exc), 500)
            )
            return None

    async def drain(self) -> list[tuple[Mapping[TopicPartition, Sequence[object]], int]]:
        """Wait for the write in flight, leaving the pipeline empty. Returns its batch and the events it
        applied (nothing when it was stopped while retrying)."""
        try:
            return await self._finish()
        finally:
            if self._gc_pause is not None:
                pause, self._gc_pause = self._gc_pause, None
                pause.__exit__(None, None, None)

    async def _finish(self) -> list[tuple[Mapping[TopicPartition, Sequence[object]], int]]:
        if self._writing is None or self._batch is None:
            return []
        try:
            outcome = await self._writing
        finally:
            batch = self._batch
            self._writing, self._batch = None, None
        self._stopped = outcome is None
        self._last_as_prepared = outcome is not None and outcome[1]
        if not self._last_as_prepared:
            self._prepared = None
        self._collect_in -= 1
        if self._collect_in <= 0:
            # The batches keep the collector paused while they follow each other without a gap; cyclic
            # garbage of other tasks waits for this (the batches' own objects are freed by reference).
            self._collect_in = _COLLECT_EVERY
            gc.collect()
        return [] if outcome is None else [(batch, outcome[0])]

    async def _commit(
        self, batch: Mapping[TopicPartition, Sequence[object]], prepared: _Prepared | None
    ) -> tuple[int, bool] | None:
        service = self.service
        if prepared is not None:
            try:
                return await service.write_prepared(prepared)
            except Exception as exc:
                log.info(
                    "projector: a prepared batch could not be written (%s: %s); applying it again",
                    type(exc).__name__,
                    _clean(str(exc), 500),
                )
        applied = await service.apply_retrying(batch)
        return None if applied is None else (applied, False)


# Batches between two full collections while a pipeline runs without a gap (`Pipeline.drain`).
_COLLECT_EVERY = 100


class _SeekToCheckpoints(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: ProjectorService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self.service._consumer
        assert consumer is not None
        stored: dict[str, dict[int, int]] = {}
        backoff = Backoff()
        for topic in {tp.topic for tp in assigned}:
            while True:  # the database away: wait for it (the partitions stay where they are meanwhile)
                try:
                    stored[topic] = await self.service.checkpoints(topic)
                    break
                except Exception as exc:
                    if is_record_error(exc):
                        raise
                    metrics.POSTGRES_RETRIES.labels("projector").inc()
                    log.warning("projector: cannot read the checkpoints (%s); trying again", exc)
                    await backoff.wait(self.service._stop)
                    if self.service._stop.is_set():
                        return
        fresh = []
        for tp in assigned:
            if tp.partition in stored[tp.topic]:
                consumer.seek(tp, stored[tp.topic][tp.partition])
            else:
                fresh.append(tp)
        if fresh:
            # One reset for them all: each call waits for the fetcher's next round (up to its fetch
            # wait, 0.5 s), so one per partition held every start and rebalance up for seconds.
            await consumer.seek_to_beginning(*fresh)


_gc_pauses = 0  # batches in progress that paused the collector (several projectors may share a process)
_gc_was_enabled = True


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a batch is applied. A batch allocates tens of thousands of
    objects (the events, the rows) that all live until it is written: with the collector on, every 700
    allocations traversed them again and moved them on to older generations, and the full collections
    that followed traversed the whole heap, a fifth to a third of the projector's CPU (docs/benchmarks.md,
    "Projector after the light parse"). They hold no cycles: reference counting frees them when the batch
    returns, so with the collector off they never cost a traversal. Other tasks of the process run while
    the batch awaits PostgreSQL; their cyclic garbage waits for the next collection after it (a batch
    takes well under a second). Nested or concurrent pauses are counted: the last one out turns the
    collector back on, if it was on before the first."""
    global _gc_pauses, _gc_was_enabled
    if _gc_pauses == 0:
        _gc_was_enabled = gc.isenabled()
        gc.disable()
    _gc_pauses += 1
    try:
        yield
    finally:
        _gc_pauses -= 1
        if _gc_pauses == 0 and _gc_was_enabled:
            gc.enable()


def _clean(text: str, limit: int) -> str:
    """`text` as PostgreSQL's text stores it: no NUL, no lone surrogates, at most `limit` characters."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")[:limit]


def _identify(value: bytes, *, events: bool) -> tuple[str | None, str | None, str | None]:
    """An unprojectable record's id, type and account, as far as they can be read from it."""
    try:
        doc = json.loads(value)
    except ValueError:
        return None, None, None
    if not isinstance(doc, dict):
        return None, None, None
    names = ("event_id", "type") if events else ("command_id", "command_type")

    def field(name: str) -> str | None:
        item = doc.get(name)
        return _clean(item, 200) if isinstance(item, str) else None

    return field(names[0]), field(names[1]), field("account_id")
