"""The decider service: commands in, events out, exactly once.

Per assigned partition of the commands topic there is one transactional producer whose transactional id
is derived from group, topic and partition. aiokafka has no KIP-447 (consumer-group-metadata) fencing, so
this is how a zombie owner of a partition is fenced: the new owner's `init_transactions` bumps the epoch
of the same transactional id and aborts whatever the old one left open.

Per poll batch and partition, one Kafka transaction carries: the events, the aggregates' new snapshots
(compacted changelog: one per contact the transaction changed, its last state), one result per command,
dead letters, fanned-out child commands, and the input offsets. In-memory state changes only after that
transaction commits; if the commit's fate is unknown the producer is re-created and the partition re-read
from its last committed offset. The partitions of one poll batch are decided concurrently, each in its
own transaction on its own producer.

An output that can never be written is not retried as if it might be: a command whose snapshot or events
would exceed what one record may hold is refused with `state_too_large` before anything is produced, and
if a record is still refused as too large (by the producer or the broker), the command that caused it
becomes a dead letter (by reference when its own bytes are too large to copy) instead of being retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    IllegalOperation,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

from enrollstream import observability as metrics
from enrollstream.adapters.dns.mx import MxLookupUnavailable, MxVerifier
from enrollstream.adapters.kafka.reading import group_consumer
from enrollstream.adapters.kafka.records import (
    MAX_COMMAND_BYTES,
    MAX_OUTPUT_BYTES,
    MAX_RECORD_BYTES,
    DeadLetter,
    encode,
    key_bytes,
    record_size,
)
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.domain import (
    BulkContact,
    BulkEnroll,
    BulkEnrollAccepted,
    Channel,
    CommandResult,
    ContactCommand,
    ContactState,
    Enroll,
    MxAnswer,
    PutContact,
    StageChanged,
    accept_bulk_enroll,
    aggregate_key,
    batch_count,
    command_result,
    decide_and_fold,
    fan_out_bulk_enroll,
    initial_state,
    parse_command,
    snapshot_bytes,
    state_from_snapshot,
    to_integration_events,
)
from enrollstream.domain.rejections import Accepted, Rejection, RejectionCode
from enrollstream.observability import Progress
from enrollstream.runtime.campaigns import CampaignCatalog
from enrollstream.runtime.contact_imports import ContactImportCatalog
from enrollstream.state import (
    MemoryStore,
    PartitionState,
    PartitionStore,
    RecoveryReport,
    StoreIdentity,
    StoreOptions,
    open_rocksdb_store,
    recover,
)
from enrollstream.state.partition import StateStoreError

log = logging.getLogger(__name__)

EnrollLike = TypeVar("EnrollLike", Enroll, BulkEnroll)

# An Enroll may not take a contact's snapshot past this: the rest of the record limit stays for the
# commands that move, stop or end the enrollments it has (a full contact can still be stopped).
MAX_ENROLL_STATE_BYTES = MAX_OUTPUT_BYTES * 3 // 4
# Too large, as a producer (client side) or a broker (server side) says it.
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
# What a decoded ContactState holds in memory per byte of its compact snapshot (tracemalloc over the bench
# workload's contacts: 8.7); the cache weighs its entries by it.
DECODED_BYTES_PER_SNAPSHOT_BYTE = 9


class OutputTooLarge(Exception):
    """Why an input became a dead letter: what it made could not be written (its `error.class`)."""


class _OutputTooLarge(Exception):
    """A record this batch produced for the input at `offset` was refused as too large."""

    def __init__(self, offset: int, dead_letter: bool, detail: str) -> None:
        super().__init__(detail)
        self.offset = offset
        self.dead_letter = dead_letter  # it was already the input's dead letter: nothing smaller to write
        self.detail = detail


@dataclass
class PartitionOwner:
    """What this process holds for one partition it owns."""

    partition: TopicPartition
    producer: AIOKafkaProducer
    state: PartitionState[ContactState]
    next_offset: int = 0
    # Inputs whose output was refused as too large: on the next attempt each becomes a dead letter.
    too_large: dict[int, str] = field(default_factory=dict)
    # After a too-large failure in a batch of several, one input per transaction up to this offset, so
    # the failure is pinned on the input that caused it.
    single_until: int = -1
    resume_at: float | None = None  # paused after repeated failures at one offset (backoff)


@dataclass(frozen=True)
class _Refused:
    """A valid command refused before deciding (e.g. its `issued_at` is out of the configured skew)."""

    command: ContactCommand | BulkEnroll
    rejection: Rejection


# A record made ready for its transaction: the command with its lookups, the rejection it gets before
# deciding, or the dead letter it becomes.
_Prepared = ContactCommand | BulkEnroll | _Refused | DeadLetter


@dataclass(frozen=True)
class _Send:
    topic: str
    value: bytes
    key: bytes
    partition: int | None = None


def _without_lookups(command: ContactCommand | BulkEnroll) -> ContactCommand | BulkEnroll:
    """The command with whatever upstream put where the runtime's lookups go (the campaign definition,
    MX answers) removed: only the runtime's catalog and MX verifier fill them in, so a command cannot
    bring its own campaign (bypassing the catalog and its archived status) or its own MX answer."""
    if isinstance(command, Enroll):
        if command.data.campaign is None and command.data.mx is None:
            return command
        return command.model_copy(
            update={"data": command.data.model_copy(update={"campaign": None, "mx": None})}
        )
    if isinstance(command, StageChanged):
        if command.data.campaigns is None and command.data.mx is None:
            return command
        return command.model_copy(
            update={"data": command.data.model_copy(update={"campaigns": None, "mx": None})}
        )
    if isinstance(command, BulkEnroll):
        contacts = command.data.contacts
        data = command.data.model_copy(
            update={"campaign": None, "contacts": None if contacts is None else _without_mx(contacts)}
        )
        return command.model_copy(update={"data": data})
    return command


def _without_mx(contacts: list[BulkContact]) -> list[BulkContact]:
    """Contacts with no MX answer of their own: the children's answers are looked up when decided."""
    if all(c.mx is None for c in contacts):
        return contacts
    return [c.model_copy(update={"mx": None}) if c.mx is not None else c for c in contacts]


def issued_at_refusal(
    issued_at: datetime,
    broker_timestamp_ms: int | None,
    max_future_skew: timedelta | None,
    max_age: timedelta | None,
) -> Rejection | None:
    """`issued_at_out_of_range` when a command's "now" is further ahead of its record's broker timestamp
    than `max_future_skew`, or further behind it than `max_age` (None: that side unchecked; a record
    without a timestamp, -1, is not checked)."""
    if broker_timestamp_ms is None or broker_timestamp_ms < 0:
        return None
    broker = datetime.fromtimestamp(broker_timestamp_ms / 1000, UTC)
    ahead = issued_at - broker
    if max_future_skew is not None and ahead > max_future_skew:
        bound = f"more than {max_future_skew} ahead of"
    elif max_age is not None and -ahead > max_age:
        bound = f"more than {max_age} behind"
    else:
        return None
    return Rejection(
        RejectionCode.ISSUED_AT_OUT_OF_RANGE,
        f"issued_at {issued_at.isoformat()} is {bound} the record's broker timestamp {broker.isoformat()}",
        {"issued_at": issued_at.isoformat(), "broker_timestamp": broker.isoformat()},
    )


def _needs_mx(command: Enroll | StageChanged, email: str | None) -> bool:
    d = command.data
    campaigns = [command.data.campaign] if isinstance(command, Enroll) else command.data.campaigns
    return (
        d.mx is None
        and any(c is not None and c.verify_email_mx and c.uses(Channel.EMAIL) for c in campaigns or [])
        and bool(email)
    )


def _emails_to_verify(
    prepared: list[tuple[object, _Prepared]], states: Callable[[str], ContactState | None]
) -> dict[int, str]:
    """The email each Enroll will be decided with, by its index in the batch: its inline facts', else the
    contact's profile as it will be when the Enroll is decided (a PutContact earlier in the same batch
    included), so an Enroll naming only the contact id is verified against the address it is sent to."""
    profiles: dict[str, str | None] = {}  # set by a PutContact earlier in the batch
    emails: dict[int, str] = {}
    for i, (_, item) in enumerate(prepared):
        if isinstance(item, PutContact):
            profiles[aggregate_key(item.account_id, item.contact_id)] = item.data.email or None
        elif isinstance(item, Enroll | StageChanged):
            contact = item.data.contact
            key = aggregate_key(item.account_id, item.contact_id)
            if contact is not None:
                email = contact.email
            elif key in profiles:
                email = profiles[key]
            else:
                email = _profile_email(states, key)
            if _needs_mx(item, email):
                emails[i] = email or ""
    return emails


def _profile_email(states: Callable[[str], ContactState | None], key: str) -> str | None:
    try:
        state = states(key)
    except StateStoreError:
        raise
    except Exception:
        return None  # an undecodable snapshot: deciding the command makes it that command's dead letter
    return state.profile.email if state is not None and state.profile else None


@dataclass
class _OpenBatch:
    """Records of one transaction for one topic on the owned partition, built here and handed to the
    producer whole (one enqueue and one delivery future per batch instead of per record)."""

    builder: Any  # aiokafka's BatchBuilder
    records: int = 0
    offset: int = -1  # the input of its last record (a refusal is pinned on it, one input at a time)
    dead_letter: bool = False


@dataclass
class _Staged:
    """One batch's output for one partition, sent inside its transaction, applied after commit."""

    states: dict[str, ContactState] = field(default_factory=dict)
    # The encoded form of each of `states`, sent once per contact at the end of the transaction (a
    # contact's earlier states in the same transaction would be compacted away unread), and the input
    # offset of the command that made it (a snapshot refused as too large is pinned on that input).
    snapshots: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    commands: int = 0
    events: int = 0
    dead_letters: int = 0
    results: Counter[tuple[str, str]] = field(default_factory=Counter)  # (command type, status)
    # Every send's delivery, with the offset of the input it was for; awaited before the commit, since
    # aiokafka commits a transaction even when one of its batches was refused by the broker.
    deliveries: list[tuple[int, bool, asyncio.Future[Any]]] = field(default_factory=list)
    # The snapshots' deliveries, with how many records each is for (a batch's reports its first offset).
    changelog: list[tuple[asyncio.Future[Any], int]] = field(default_factory=list)
    batches: dict[str, _OpenBatch] = field(default_factory=dict)  # by topic, on the owned partition
    offset: int = -1  # the input being processed
    dead_letter: bool = False  # ... and whether it is being dead-lettered


class DeciderService:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        group_id: str,
        catalog: CampaignCatalog,
        *,
        imports: ContactImportCatalog | None = None,
        mx: MxVerifier | None = None,
        max_batch: int = 500,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        stuck_after_s: float = 300.0,
        stuck_retries: int = 5,
        max_retry_backoff_s: float = 30.0,
        max_future_skew: timedelta | None = None,
        max_age: timedelta | None = None,
        batch_wait_ms: int = 0,
        state_dir: Path | None = None,
        state_cache_bytes: int = 96 * 2**20,
        store_options: StoreOptions | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.group_id = f"{group_id}.decider"
        self.catalog = catalog
        self.mx = mx  # MX answers for campaigns that verify them (None: such Enrolls are refused)
        self.imports = imports  # None: BulkEnroll must carry its contacts inline
        self.max_batch = max_batch
        self.batch_wait_ms = batch_wait_ms
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        # How far a command's issued_at may be ahead of / behind its broker timestamp (None: unchecked).
        self.max_future_skew = max_future_skew
        self.max_age = max_age
        self.owners: dict[TopicPartition, PartitionOwner] = {}
        # Where each owned partition's store lives (None: in memory, rebuilt from the changelog on every
        # assignment), and how many bytes of decoded aggregates all partitions may keep hot together.
        self.state_dir = state_dir
        self.state_cache_bytes = state_cache_bytes
        self.store_options = store_options or StoreOptions()
        self.restores: list[RecoveryReport] = []  # every restore of a partition's state, in order
        self._lock = asyncio.Lock()  # a rebalance waits for the batch in flight to commit
        self._consumer: AIOKafkaConsumer | None = None
        self.processed_commands = 0
        self.emitted_events = 0
        self.failure: BaseException | None = None  # from a rebalance callback
        self.progress = Progress("decider", stuck_after_s=stuck_after_s, max_retries=stuck_retries)
        self.max_retry_backoff_s = max_retry_backoff_s

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        _expect_fencing_leftovers(asyncio.get_running_loop())
        self._consumer = group_consumer(
            self.bootstrap,
            self.group_id,
            max_poll_records=self.max_batch,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            gather_ms=self.batch_wait_ms,
            gather_bytes=self.max_batch * 1024,
        )
        await self._consumer.start()
        self._consumer.subscribe([self.topics.commands], listener=_Rebalance(self))

    async def stop(self) -> None:
        async with self._lock:
            await asyncio.gather(*(_close(owner.producer) for owner in self.owners.values()))
            for owner in self.owners.values():
                owner.state.close()
            self.owners.clear()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        assert consumer is not None, "start() the decider first"
        while not stop.is_set():
            self._resume_due(consumer)
            # Up to max_batch per owned partition: the partitions' transactions run side by side, so a
            # backlog spread over six partitions is not decided 83 records per commit round trip.
            polled = self.max_batch * max(1, len(self.owners))
            batch = await consumer.getmany(timeout_ms=200, max_records=polled)
            if self.failure is not None:
                raise RuntimeError("the decider could not take over its partitions") from self.failure
            if not batch:
                for idle in list(self.owners.values()):
                    await metrics.record_consumer_lag("decider", consumer, idle.partition, idle.next_offset)
                continue
            # Both catalogs brought to their ends together (each is a round trip for its end offsets).
            if self.imports is not None:
                await asyncio.gather(self.catalog.catch_up(), self.imports.catch_up())
            else:
                await self.catalog.catch_up()
            # A revoke waits on this lock, so it waits for every partition's batch in flight.
            async with self._lock:
                work = []
                for tp, records in batch.items():
                    owner = self.owners.get(tp)
                    if owner is None:
                        continue  # revoked while we waited for the lock; its new owner redoes it
                    records = [r for r in records if r.offset >= owner.next_offset]
                    if not records:
                        continue
                    self.progress.working(tp.partition)
                    work.append(self._process_partition(owner, records))
                # Each partition has its own producer and transaction: one partition's commit round
                # trips and deliveries overlap another's deciding.
                outcomes = await asyncio.gather(*work, return_exceptions=True)
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        raise outcome

    async def _process_partition(self, owner: PartitionOwner, records: list[Any]) -> None:
        if records[0].offset > owner.single_until:
            # One transaction per max_batch records (bounds how long one holds its outputs back).
            for start in range(0, len(records), self.max_batch):
                chunk = records[start : start + self.max_batch]
                if self.owners.get(owner.partition) is not owner or not await self._process(owner, chunk):
                    return
            return
        for record in records:  # one per transaction, to pin a too-large output on its input
            if self.owners.get(owner.partition) is not owner or not await self._process(owner, [record]):
                return

    def _resume_due(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        for owner in self.owners.values():
            if owner.resume_at is not None and owner.resume_at <= now:
                owner.resume_at = None
                if owner.partition in consumer.assignment():
                    consumer.resume(owner.partition)

    # --- assignment -----------------------------------------------------------------------------

    async def _assigned(self, partitions: set[TopicPartition]) -> None:
        async with self._lock:
            # Taken side by side, each with its own producer, store and restore: taking six partitions
            # costs about what the slowest of them does, not the sum.
            new = sorted((tp for tp in partitions if tp not in self.owners), key=lambda tp: tp.partition)
            taken = await asyncio.gather(*(self._take(tp) for tp in new), return_exceptions=True)
            failure: BaseException | None = None
            for tp, owner in zip(new, taken, strict=True):
                if isinstance(owner, BaseException):
                    failure = failure or owner
                    continue
                self.owners[tp] = owner
                log.info(
                    "decider owns %s: about %d contacts in its state store",
                    tp, owner.state.store.approximate_count(),
                )  # fmt: skip
            self._share_cache()
            if failure is not None:
                raise failure

    async def _take(self, tp: TopicPartition) -> PartitionOwner:
        # The new producer fences the previous owner first: its open transaction is aborted, so the
        # changelog's end is stable before the store catches up to it.
        producer = await self._new_producer(tp)
        try:
            owner = PartitionOwner(tp, producer, await self._open_state(tp.partition))
            consumer = self._consumer
            assert consumer is not None
            owner.next_offset = (await consumer.committed(tp)) or 0
        except BaseException:
            await _close(producer)
            raise
        return owner

    async def _revoked(self, partitions: set[TopicPartition]) -> None:
        async with self._lock:
            gone = [owner for tp in partitions if (owner := self.owners.pop(tp, None)) is not None]
            for tp in partitions:
                self.progress.forget(tp.partition)
            await asyncio.gather(*(_close(owner.producer) for owner in gone))
            for owner in gone:
                owner.state.close()  # its next owner may be a process on this machine
            self._share_cache()

    def _share_cache(self) -> None:
        """The cache budget split evenly between the partitions owned now."""
        for owner in self.owners.values():
            owner.state.cache.resize(self.state_cache_bytes // max(1, len(self.owners)))

    def _transactional_id(self, tp: TopicPartition) -> str:
        return f"{self.group_id}.{tp.topic}.{tp.partition}"

    async def _new_producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            transactional_id=self._transactional_id(tp),
            enable_idempotence=True,
            acks="all",
            max_request_size=MAX_RECORD_BYTES,
            linger_ms=5,
            # A batch of commands writes events, ~3 KiB snapshots, results and public events: with the
            # default 16 KiB batches every few sends would wait for a batch to drain.
            max_batch_size=512 * 1024,
        )
        await producer.start()  # init_transactions: bumps the epoch, aborts a zombie's open transaction
        return producer

    def _store_path(self, partition: int) -> Path:
        assert self.state_dir is not None
        return self.state_dir / self.group_id / f"{self.topics.aggregates}-{partition}"

    async def _open_state(self, partition: int) -> PartitionState[ContactState]:
        """The partition's store, brought up to the end of its changelog partition: only the tail after
        the offset it has applied when the store is on disk, everything when it is new or unusable.

        A snapshot refers to the campaign versions of its enrollments: the catalog is brought up to the
        end of the campaigns topic first, and a decoded enrollment gets the catalog's one definition."""
        await self.catalog.catch_up()
        identity = StoreIdentity(self.topics.aggregates, partition)
        store: PartitionStore
        if self.state_dir is None:
            store, found = MemoryStore(), "memory"
            store.reset(identity)
        else:
            store, found = await asyncio.to_thread(
                open_rocksdb_store, self._store_path(partition), identity, self.store_options
            )
        try:
            await self._catch_up(store, partition, found)
        except KafkaError:
            store.close()
            raise
        except Exception as exc:
            # The disk failed under the store: the decider goes on with one in memory (loudly), since
            # the store is only a cache of the changelog.
            log.error(
                "state store of partition %d failed while restoring (%r); keeping it in memory instead",
                partition, exc,
            )  # fmt: skip
            store.close()
            store = MemoryStore()
            store.reset(identity)
            await self._catch_up(store, partition, "memory")
        return PartitionState(
            store,
            lambda raw: state_from_snapshot(raw, self.catalog.get_version),
            cache_bytes=self.state_cache_bytes // max(1, len(self.owners) + 1),
            weigh=lambda raw: DECODED_BYTES_PER_SNAPSHOT_BYTE * len(raw),
        )

    async def _catch_up(self, store: PartitionStore, partition: int, found: str) -> None:
        """The store brought up to its changelog partition's end (`recover`), logged and counted."""
        identity = StoreIdentity(self.topics.aggregates, partition)
        changelog = TopicPartition(identity.topic, partition)
        report = await recover(store, self.bootstrap, changelog, identity)
        log.info("decider state %s (store %s)", report.describe(), found)
        self.restores.append(report)
        metrics.STATE_RESTORED_RECORDS.labels("cold" if report.cold else "tail").inc(report.records)

    # --- one batch of one partition -------------------------------------------------------------

    async def _process(self, owner: PartitionOwner, records: list[object]) -> bool:
        """One transaction for these records; False if it did not commit (the partition was re-read)."""
        tp = owner.partition
        staged = _Staged()
        producer = owner.producer
        # Parsing and lookups (the campaign, MX answers over DNS) happen before the transaction opens,
        # so a slow DNS server never holds a transaction open.
        try:
            prepared = self._too_large_to_dead_letters(owner, await self._prepare(records, owner.state.get))
        except StateStoreError as exc:
            await self._store_failed(owner, exc)
            return False
        try:
            await producer.begin_transaction()
            for record, item in prepared:
                staged.offset = record.offset  # type: ignore[attr-defined]
                staged.dead_letter = isinstance(item, DeadLetter)
                await self._process_record(owner, staged, record, item)
            for key, (offset, raw) in staged.snapshots.items():
                staged.offset, staged.dead_letter = offset, False
                await self._send(
                    owner, staged, self.topics.aggregates, raw, key_bytes(key), owner.partition.partition
                )
            for topic in list(staged.batches):
                await self._flush(owner, staged, topic)
            await self._delivered(staged)
            await producer.send_offsets_to_transaction(
                {tp: records[-1].offset + 1},  # type: ignore[attr-defined]
                self.group_id,
            )
            await producer.commit_transaction()
        except _OutputTooLarge as exc:
            # Deterministic: the same input would produce the same record again. Never retried as is.
            metrics.TRANSACTIONS.labels("decider", "aborted").inc()
            if len(records) > 1:
                owner.single_until = records[-1].offset  # type: ignore[attr-defined]
                log.warning("decider on %s: an output too large (%s); retrying one input at a time", tp, exc)
            elif not exc.dead_letter:
                owner.too_large[exc.offset] = exc.detail
                log.warning(
                    "decider on %s: offset %d's output too large (%s); dead-lettering it",
                    tp,
                    exc.offset,
                    exc.detail,
                )
            else:
                # Even its bounded dead letter is refused: the dead-letter topic's max.message.bytes is
                # below what it must take. Infrastructure: retried with backoff, and /healthz says stuck.
                log.error(
                    "decider on %s: the dead letter for offset %d is refused as too large (%s); "
                    "raise the dead-letter topic's max.message.bytes",
                    tp,
                    exc.offset,
                    exc.detail,
                )
            await self._recover(owner)
            return False
        except StateStoreError as exc:
            metrics.TRANSACTIONS.labels("decider", "aborted").inc()
            await self._store_failed(owner, exc)  # its new producer aborts the open transaction
            return False
        except (KafkaError, IllegalOperation) as exc:
            metrics.TRANSACTIONS.labels("decider", "aborted").inc()
            # Fenced (ProducerFenced, or IllegalOperation once the fencing reached the producer in the
            # background), or a failure that leaves the transaction's fate unknown: never retry blindly.
            if not self._still_assigned(tp):
                # A zombie: the group gave the partition to another process, whose producer fenced ours.
                log.warning("decider lost %s (%s); giving it up", tp, type(exc).__name__)
                self.owners.pop(tp, None)
                self.progress.forget(tp.partition)
                await _close(producer)
                owner.state.close()  # its new owner may be on this machine, and needs the store
                return False
            # Still ours by the group's say. A new producer with the same transactional id aborts what
            # is open (a zombie's, if one re-created our id); state and position are re-read from the
            # last commit. A zombie learns at its next heartbeat that it lost the partition.
            log.warning("decider transaction on %s failed (%r); re-creating its producer", tp, exc)
            await self._recover(owner)
            return False
        owner.next_offset = records[-1].offset + 1  # type: ignore[attr-defined]
        if staged.snapshots:
            # Only now, after the commit: the store never holds what the changelog might not.
            applied = max(delivery.result().offset + records for delivery, records in staged.changelog)
            changes = {key: (raw, staged.states[key]) for key, (_, raw) in staged.snapshots.items()}
            try:
                owner.state.commit(changes, applied)
            except StateStoreError as exc:
                await self._store_failed(owner, exc)
                return False
        for offset in [o for o in owner.too_large if o < owner.next_offset]:
            del owner.too_large[offset]
        self.progress.advanced(tp.partition)
        self.processed_commands += staged.commands
        self.emitted_events += staged.events
        # Counted once committed, so an aborted and redone batch is not counted twice.
        metrics.TRANSACTIONS.labels("decider", "committed").inc()
        metrics.BATCH_RECORDS.labels("decider").observe(len(records))
        metrics.DEAD_LETTERS.labels("decider").inc(staged.dead_letters)
        for (command_type, status), n in staged.results.items():
            metrics.COMMANDS.labels(command_type, status).inc(n)
        if self._consumer is not None:
            await metrics.record_consumer_lag("decider", self._consumer, tp, owner.next_offset)
        return True

    def _too_large_to_dead_letters(
        self, owner: PartitionOwner, prepared: list[tuple[object, _Prepared]]
    ) -> list[tuple[object, _Prepared]]:
        """Inputs whose output was refused as too large before become their dead letters now."""
        if not owner.too_large:
            return prepared
        out: list[tuple[object, _Prepared]] = []
        for record, item in prepared:
            detail = owner.too_large.get(record.offset)  # type: ignore[attr-defined]
            if detail is not None and not isinstance(item, DeadLetter):
                item = DeadLetter.of(record, "its output is too large to write", OutputTooLarge(detail))
            out.append((record, item))
        return out

    async def _delivered(self, staged: _Staged) -> None:
        """Wait for every send of the transaction: a refused batch must fail it, not vanish from it."""
        if not staged.deliveries:
            return
        await asyncio.wait([delivery for _, _, delivery in staged.deliveries])
        for offset, dead_letter, delivery in staged.deliveries:
            exc = delivery.exception()
            if isinstance(exc, _TOO_LARGE):
                raise _OutputTooLarge(offset, dead_letter, f"{type(exc).__name__}: {exc}") from exc
            if exc is not None:
                raise exc

    async def _send(
        self,
        owner: PartitionOwner,
        staged: _Staged,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if partition is None or partition != owner.partition.partition:
            # Keyed (public events, fanned-out children): the producer's partitioner places it.
            try:
                delivery = await owner.producer.send(
                    topic, value, key=key, partition=partition, headers=headers
                )
            except _TOO_LARGE as exc:  # the producer's own check: nothing of this record was sent
                raise _OutputTooLarge(
                    staged.offset, staged.dead_letter, f"{type(exc).__name__}: {exc}"
                ) from exc
            staged.deliveries.append((staged.offset, staged.dead_letter, delivery))
            if topic == self.topics.aggregates:
                staged.changelog.append((delivery, 1))
            return
        # The producer's own check (`max_request_size`), made here since a built batch skips it.
        size = record_size(key, value, headers)
        if size > MAX_RECORD_BYTES:
            raise _OutputTooLarge(
                staged.offset,
                staged.dead_letter,
                f"MessageSizeTooLargeError: the record is {size} bytes, over max_request_size "
                f"{MAX_RECORD_BYTES}",
            )
        batch = staged.batches.get(topic)
        if batch is None:
            batch = staged.batches[topic] = _OpenBatch(owner.producer.create_batch())
        if batch.builder.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
            await self._flush(owner, staged, topic)  # full: handed over, and a new one started
            batch = staged.batches[topic] = _OpenBatch(owner.producer.create_batch())
            batch.builder.append(key=key, value=value, timestamp=None, headers=headers or [])  # 1st fits
        batch.records += 1
        batch.offset, batch.dead_letter = staged.offset, staged.dead_letter

    async def _flush(self, owner: PartitionOwner, staged: _Staged, topic: str) -> None:
        """Hand the topic's open batch to the producer, in this transaction."""
        batch = staged.batches.pop(topic)
        delivery = await owner.producer.send_batch(batch.builder, topic, partition=owner.partition.partition)
        staged.deliveries.append((batch.offset, batch.dead_letter, delivery))
        if topic == self.topics.aggregates:
            staged.changelog.append((delivery, batch.records))

    def _still_assigned(self, tp: TopicPartition) -> bool:
        return self._consumer is not None and tp in self._consumer.assignment()

    async def _store_failed(self, owner: PartitionOwner, exc: StateStoreError) -> None:
        """The store could not be read or written: not the input's fault. It is opened again (rebuilt
        from the changelog if it cannot be), and the batch is decided again."""
        log.error("decider state store of %s failed (%s); opening it again", owner.partition, exc)
        owner.state.close()
        await self._recover(owner, reopen=True)

    async def _recover(self, owner: PartitionOwner, *, reopen: bool = False) -> None:
        """New producer (fences the old one, aborts its open transaction), the store brought up to the
        changelog's end (a commit whose fate was unknown may have happened), position re-read.

        Failing again at the same offset pauses the partition a little longer each time (up to
        `max_retry_backoff_s`), and often enough makes /healthz report the decider stuck."""
        tp = owner.partition
        failures = self.progress.retried(tp.partition, owner.next_offset)
        await _close(owner.producer)
        owner.producer = await self._new_producer(tp)
        if not reopen:
            owner.state.cache.clear()
            try:
                await self._catch_up(owner.state.store, tp.partition, "kept")
            except KafkaError:
                raise
            except Exception as exc:
                log.error("decider state store of %s failed (%r); opening it again", tp, exc)
                owner.state.close()
                reopen = True
        if reopen:
            owner.state = await self._open_state(tp.partition)
            self._share_cache()
        consumer = self._consumer
        assert consumer is not None
        owner.next_offset = (await consumer.committed(tp)) or 0
        consumer.seek(tp, owner.next_offset)
        if failures > 1:
            consumer.pause(tp)
            owner.resume_at = time.monotonic() + min(0.25 * 2 ** (failures - 2), self.max_retry_backoff_s)

    async def _prepare(
        self, records: list[object], states: Callable[[str], ContactState | None]
    ) -> list[tuple[object, _Prepared]]:
        """Each record parsed (or its dead letter, or its refusal) with the lookups its command needs
        filled in by the runtime, never taken from the command."""
        prepared: list[tuple[object, _Prepared]] = []
        for record in records:
            prepared.append((record, self._prepare_one(record)))
        return await self._with_mx_answers(prepared, states)

    def _prepare_one(self, record: Any) -> _Prepared:
        value: bytes | None = record.value
        if value is None or len(value) > MAX_COMMAND_BYTES:
            reason = (
                "empty record"
                if value is None
                else f"record of {len(value)} bytes exceeds {MAX_COMMAND_BYTES}"
            )
            return DeadLetter.of(record, reason)
        if record.key is not None:
            try:
                record.key.decode()
            except UnicodeDecodeError as exc:
                return DeadLetter.of(record, "record key is not UTF-8", exc)
        try:
            # Anything a record can make parsing raise (a ValidationError, an OverflowError at the edge
            # of the calendar, ...) is this record's failure alone: it becomes its dead letter.
            command = _without_lookups(parse_command(value))
        except Exception as exc:
            return DeadLetter.of(record, "not a valid command", exc)
        refusal = issued_at_refusal(command.issued_at, record.timestamp, self.max_future_skew, self.max_age)
        if refusal is not None:
            return _Refused(command, refusal)
        if isinstance(command, StageChanged):
            return self._with_stage_campaigns(command)
        return self._with_campaign(command) if isinstance(command, Enroll) else command

    async def _with_mx_answers(
        self, prepared: list[tuple[object, _Prepared]], states: Callable[[str], ContactState | None]
    ) -> list[tuple[object, _Prepared]]:
        """Enrolls in campaigns that verify MX get the answer for the contact's email domain, looked up
        concurrently (the verifier caches and shares lookups). No verifier: the domain refuses them
        with `mx_answer_missing`, explicitly."""
        verifier = self.mx
        emails = _emails_to_verify(prepared, states)
        wanted = list(emails)
        if verifier is None or not wanted:
            return prepared
        limit = asyncio.Semaphore(50)

        async def answer(email: str) -> MxAnswer:
            async with limit:
                try:
                    return await verifier.verify(email or "")
                except MxLookupUnavailable as exc:
                    # No answer is not "no MX": recorded as unanswered, and the contact is enrolled.
                    return MxAnswer(
                        domain=exc.domain, has_mx=False, checked_at=datetime.now(UTC), detail=str(exc),
                        answered=False,
                    )  # fmt: skip

        answers = await asyncio.gather(*(answer(emails[i]) for i in wanted))
        out = list(prepared)
        for i, mx in zip(wanted, answers, strict=True):
            record, command = out[i]
            assert isinstance(command, Enroll | StageChanged)
            out[i] = (record, command.model_copy(update={"data": command.data.model_copy(update={"mx": mx})}))
        return out

    async def _process_record(
        self, owner: PartitionOwner, staged: _Staged, record: object, item: _Prepared
    ) -> None:
        if isinstance(item, DeadLetter):
            await self._dead_letter(owner, staged, item)
            return
        # Deciding is computed in full before anything is sent, so a record that makes it raise (a bug,
        # an overflow the bounds missed) leaves nothing half-sent: it becomes its dead letter, and the
        # partition goes on. Only the sends below (Kafka's own errors) fail the transaction.
        sends: list[_Send] = []
        after: ContactState | None = None
        try:
            if isinstance(item, _Refused):
                key = aggregate_key(item.command.account_id, item.command.contact_id)
                result = command_result(item.command, item.rejection)
            elif isinstance(item, BulkEnroll):
                key, sends, result = self._fan_out(owner, item)
            else:
                key, sends, result, after = self._decide(owner, staged, record, item)
        except StateStoreError:
            raise  # the store's failure, not the record's
        except Exception as exc:
            log.warning("decider could not decide a record: %r", exc, exc_info=True)
            staged.dead_letter = True
            await self._dead_letter(owner, staged, DeadLetter.of(record, "could not be decided", exc))
            return
        staged.commands += 1
        if after is not None:
            snapshot = sends.pop()  # the last send is the snapshot: sent once per contact, at the end
            staged.states[key] = after
            staged.snapshots[key] = (staged.offset, snapshot.value)
        staged.events += sum(1 for send in sends if send.topic == self.topics.events)
        for send in sends:
            await self._send(owner, staged, send.topic, send.value, send.key, send.partition)
        await self._send_result(owner, staged, key, result)

    def _decide(
        self, owner: PartitionOwner, staged: _Staged, record: Any, command: ContactCommand
    ) -> tuple[str, list[_Send], CommandResult, ContactState | None]:
        """The sends, the result and the new state (None: unchanged) of one contact's command."""
        partition = owner.partition.partition
        key = aggregate_key(command.account_id, command.contact_id)
        record_key = record.key.decode() if record.key is not None else None
        if record_key != key:
            # Routed by another key, it may sit in a partition another decider owns: deciding it here
            # could give one contact two writers.
            rejection = Rejection(
                RejectionCode.ACCOUNT_MISMATCH,
                f"record key {record_key!r} is not the command's aggregate key {key!r}",
            )
            return key, [], command_result(command, rejection), None

        state = (
            staged.states.get(key)
            or owner.state.get(key)
            or initial_state(command.account_id, command.contact_id)
        )
        started = time.perf_counter()
        decision, after = decide_and_fold(command, state)
        changed = isinstance(decision, Accepted) and bool(decision.events)
        result = command_result(command, decision, after.version)
        if isinstance(decision, Accepted) and changed:
            metrics.DECIDE_SECONDS.observe(time.perf_counter() - started)
            # Every record this command writes, encoded first: one that could never be written refuses
            # the command (`state_too_large`) before anything is produced, and the state stays.
            sends: list[_Send] = []
            for event in decision.events:
                sends.append(_Send(self.topics.events, encode(event), key_bytes(key), partition))
                # Public events for webhook relays, in the same transaction: published iff the fact is.
                public_key = key_bytes(event.enrollment_id or key)
                sends.extend(
                    _Send(self.topics.integration_events, encode(public), public_key)
                    for public in to_integration_events(event)
                )
            # Compact: an enrollment's definition is kept by reference when the catalog keeps that version.
            snapshot = snapshot_bytes(after, self.catalog.resolves)
            sends.append(_Send(self.topics.aggregates, snapshot, key_bytes(key), partition))
            too_large = self._too_large(command, sends)
            if too_large is not None:
                log.warning(
                    "command refused: its output would be too large",
                    extra={"command_id": command.command_id, "type": command.type, **too_large.details},
                )
                return key, [], command_result(command, too_large, state.version), None
            log.debug(
                "command accepted",
                extra={"command_id": command.command_id, "event_ids": [e.event_id for e in decision.events]},
            )
            return key, sends, result, after
        if isinstance(decision, Rejection):
            log.info(
                "command rejected",
                extra={"command_id": command.command_id, "type": command.type, "code": decision.code.value},
            )
        return key, [], result, None

    def _too_large(self, command: ContactCommand, outputs: list[_Send]) -> Rejection | None:
        """`state_too_large` if one of the records would exceed what one record may hold, or if an Enroll
        would take the contact's snapshot (the last output) past the share Enrolls may fill."""
        snapshot = outputs[-1]
        limit, what, size = MAX_OUTPUT_BYTES, "", 0
        for output in outputs:
            size = record_size(output.key, output.value)
            if size > MAX_OUTPUT_BYTES:
                what = "the contact's snapshot" if output is snapshot else f"a record for {output.topic}"
                break
        else:
            size = record_size(snapshot.key, snapshot.value)
            if not isinstance(command, Enroll | StageChanged) or size <= MAX_ENROLL_STATE_BYTES:
                return None
            limit, what = MAX_ENROLL_STATE_BYTES, "the contact's snapshot"
        return Rejection(
            RejectionCode.STATE_TOO_LARGE,
            f"{what} would be {size} bytes, over the {limit} bytes "
            f"{'an Enroll may take it to' if limit == MAX_ENROLL_STATE_BYTES else 'one record may hold'}; "
            "nothing was changed",
            {"bytes": str(size), "limit": str(limit)},
        )

    def _with_campaign(self, command: EnrollLike) -> EnrollLike:
        """Fill in the campaign definition from the catalog (upstream's was removed before); not in the
        catalog: None (`campaign_not_found`)."""
        campaign = self.catalog.get(command.account_id, command.data.campaign_id)
        if campaign is None:
            return command
        return command.model_copy(update={"data": command.data.model_copy(update={"campaign": campaign})})

    def _with_stage_campaigns(self, command: StageChanged) -> StageChanged:
        """Fill in the account's campaigns that enrol from the command's stage (seed 002), from the catalog
        (upstream's were removed before); none: an empty list (`stage_not_linked`)."""
        d = command.data
        linked = self.catalog.linked_to(command.account_id, d.pipeline_id, d.stage_id)
        return command.model_copy(update={"data": d.model_copy(update={"campaigns": linked})})

    def _with_contacts(self, command: BulkEnroll) -> BulkEnroll:
        """Fill in the import's contacts upstream left out; None stays None (`contact_import_not_found`)."""
        if command.data.contacts is not None or self.imports is None:
            return command
        found = self.imports.get(command.account_id, command.data.contact_import_id)
        if found is None:
            return command
        data = command.data.model_copy(update={"contacts": _without_mx(found.contacts)})  # nor an import's
        return command.model_copy(update={"data": data})

    def _fan_out(self, owner: PartitionOwner, command: BulkEnroll) -> tuple[str, list[_Send], CommandResult]:
        """A BulkEnroll, checked, becomes one BulkEnrollAccepted event and one Enroll per contact, in this
        transaction, so exactly once. A redelivered one yields the same event id and the same child ids:
        the projector keeps the first parent row and the aggregates drop the children as duplicates."""
        command = self._with_contacts(self._with_campaign(command))
        decision = accept_bulk_enroll(command)
        key = aggregate_key(command.account_id, "")
        result = command_result(command, decision)
        if isinstance(decision, Rejection):
            log.info(
                "bulk enroll rejected",
                extra={"command_id": command.command_id, "type": command.type, "code": decision.code.value},
            )
            return key, [], result
        children = fan_out_bulk_enroll(command)
        sends = [
            _Send(
                self.topics.commands,
                encode(child),
                key_bytes(aggregate_key(child.account_id, child.contact_id)),
            )
            for child in children
        ]
        sends += [
            _Send(self.topics.events, encode(event), key_bytes(key), owner.partition.partition)
            for event in decision.events
        ]
        contacts = sum(e.data.contacts for e in decision.events if isinstance(e, BulkEnrollAccepted))
        result = result.model_copy(
            update={
                "message": f"fanned out to {len(children)} Enroll commands",
                "details": {
                    "contact_import_id": command.data.contact_import_id,
                    "contacts": str(contacts),
                    "batches": str(batch_count(command)),
                    "batch_size": str(command.data.batch_size),
                },
            }
        )
        return key, sends, result

    async def _send_result(
        self, owner: PartitionOwner, staged: _Staged, key: str, result: CommandResult
    ) -> None:
        staged.results[(result.command_type, result.status)] += 1
        partition = owner.partition.partition
        value = encode(result)
        await self._send(owner, staged, self.topics.command_results, value, key_bytes(key), partition)

    async def _dead_letter(self, owner: PartitionOwner, staged: _Staged, letter: DeadLetter) -> None:
        staged.dead_letters += 1
        await self._send(
            owner,
            staged,
            self.topics.dead_letters,
            letter.value,
            letter.key,
            owner.partition.partition,
            letter.headers,
        )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: DeciderService) -> None:
        self.service = service

    # aiokafka logs a listener's exception and carries on without the partitions' owners, which would
    # stall them silently; the run loop re-raises it instead, so the worker fails loudly.
    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self.service._revoked(set(revoked))
        except Exception as exc:
            self.service.failure = exc
            raise

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            await self.service._assigned(set(assigned))
        except Exception as exc:
            self.service.failure = exc
            raise


def _expect_fencing_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Keep the loop quiet about the futures a failed transaction leaves behind.

    When a producer is fenced or its transaction fails, aiokafka fails its internal batch and waiter
    futures, which nobody awaits: we handle the failure through the transaction. The default handler
    would report each at garbage collection with a traceback (whose formatting, on Python 3.11, can
    even break an `ast.parse` it interrupts). Anything else goes to the previous handler.
    """
    previous = loop.get_exception_handler()
    if getattr(previous, "enrollstream_fencing", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), KafkaError) and "never retrieved" in context.get(
            "message", ""
        ):
            log.debug("ignored a failed transaction's leftover future: %r", context["exception"])
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.enrollstream_fencing = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


async def _close(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(Exception):
        await producer.stop()
