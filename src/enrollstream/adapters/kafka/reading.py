"""Reading assigned partitions up to where they end now (restores, the campaign table, replays)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


async def batches_to_end(
    consumer: AIOKafkaConsumer,
    partitions: Sequence[TopicPartition],
    *,
    max_records: int = 5000,
    timeout_ms: int = 500,
    ends_from: AIOKafkaConsumer | None = None,
) -> AsyncIterator[dict[TopicPartition, list[Any]]]:
    """Yield batches from the consumer's positions up to the end offsets taken when called.

    With `read_committed` the end is the last stable offset, and control records take offsets too,
    so the loop follows positions rather than counting records. A record fetched beyond the end is not
    yielded, and its partition is sought back to the end, so a later read still sees it.
    """
    # `ends_from`: another consumer (same isolation level) to ask, so the question does not wait behind
    # this consumer's own fetch in flight.
    ends = await (ends_from or consumer).end_offsets(list(partitions))
    while True:
        behind = [tp for tp in partitions if await consumer.position(tp) < ends[tp]]
        if not behind:
            return
        fetched = await consumer.getmany(*behind, timeout_ms=timeout_ms, max_records=max_records)
        batch: dict[TopicPartition, list[Any]] = {}
        for tp, records in fetched.items():
            kept = [record for record in records if record.offset < ends[tp]]
            if len(kept) < len(records):
                consumer.seek(tp, ends[tp])
            if kept:
                batch[tp] = kept
        if batch:
            yield batch


def group_consumer(
    bootstrap: str,
    group_id: str,
    *topics: str,
    max_poll_records: int,
    session_timeout_ms: int,
    heartbeat_interval_ms: int,
    gather_ms: int = 0,
    gather_bytes: int = 1,
) -> AIOKafkaConsumer:
    """A worker role's consumer: committed records only, offsets committed by the role itself
    (in a transaction, in Postgres, or after its side effect), from the start when the group is new."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
        # gather_ms > 0: the broker answers a fetch once it has gather_bytes or after gather_ms.
        **({"fetch_min_bytes": gather_bytes, "fetch_max_wait_ms": gather_ms} if gather_ms > 0 else {}),
    )
