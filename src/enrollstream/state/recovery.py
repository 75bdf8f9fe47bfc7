"""Bringing a store up to the end of its changelog partition: only the tail after the offset it has
applied, or everything from the beginning when it is new. Raw bytes are copied, nothing is decoded."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from enrollstream.adapters.kafka.reading import batches_to_end
from enrollstream.state.store import META_PREFIX, PartitionStore, StoreIdentity

log = logging.getLogger(__name__)

# Larger fetches than the consumer's default 1 MiB per partition: a rebuild reads one partition only.
RESTORE_FETCH_BYTES = 16 * 2**20
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class RecoveryReport:
    partition: TopicPartition
    cold: bool  # read from the beginning (a new, deleted, foreign or corrupt store)
    start_offset: int
    end_offset: int
    records: int
    seconds: float

    def describe(self) -> str:
        how = "rebuilt from the beginning" if self.cold else "tail replayed"
        return (
            f"{self.partition.topic}[{self.partition.partition}]: {how}, offsets {self.start_offset}.."
            f"{self.end_offset}, {self.records} records in {self.seconds:.2f} s"
        )


def restore_consumer(bootstrap: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        max_partition_fetch_bytes=RESTORE_FETCH_BYTES,
        fetch_max_bytes=RESTORE_FETCH_BYTES,
    )


async def recover(
    store: PartitionStore, bootstrap: str, tp: TopicPartition, identity: StoreIdentity
) -> RecoveryReport:
    """Apply the changelog after the store's applied offset, up to the partition's end (its last stable
    offset, so no open transaction's records). A store whose offset the partition cannot have (past its
    end, before its start: the topic was recreated or truncated) is emptied and rebuilt."""
    started = time.perf_counter()
    consumer = restore_consumer(bootstrap)
    await consumer.start()
    try:
        consumer.assign([tp])
        begin = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        applied = store.applied_offset()
        if applied is not None and not begin <= applied <= end:
            log.warning(
                "state store of %s applied offset %d, outside the changelog's %d..%d: rebuilding it",
                tp, applied, begin, end,
            )  # fmt: skip
            store.reset(identity)
            applied = None
        start = begin if applied is None else applied
        records = 0
        last_log = time.monotonic()
        if start < end:
            consumer.seek(tp, start)
            async for batch in batches_to_end(consumer, [tp], max_records=10_000):
                kept = batch[tp]
                # A key the decider cannot have written (none, or in the metadata's range) is not kept.
                changes = [(r.key, r.value) for r in kept if r.key and not r.key.startswith(META_PREFIX)]
                # In a thread: the next fetch is already under way while RocksDB writes this batch.
                await asyncio.to_thread(store.write, changes, kept[-1].offset + 1, logged=False)
                records += len(kept)
                if time.monotonic() - last_log >= PROGRESS_EVERY_S:
                    last_log = time.monotonic()
                    log.info(
                        "restoring %s: %d records, at offset %d of %d", tp, records, kept[-1].offset, end
                    )
        if applied is None or store.applied_offset() != end:
            # Past the trailing commit markers too: the next restore starts at the end. Without the WAL
            # like the records it follows: a logged offset would survive a crash that loses them.
            store.write([], end, logged=False)
        store.flush()  # only now is any of it durable, the offset together with the records it covers
    finally:
        await consumer.stop()
    return RecoveryReport(tp, applied is None, start, end, records, time.perf_counter() - started)
