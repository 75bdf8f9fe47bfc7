"""Decider: commands/s with exactly-once transactions vs a raw aiokafka transactional passthrough.

Both read the same pre-produced commands topic (`read_committed`, `max_poll_records` = the decider's
batch), both hold one transactional producer per input partition and commit one transaction per poll
batch and partition with the input offsets in it. The passthrough copies each record's bytes to an
output topic; the decider parses, decides and writes events, snapshots, results and integration events.
The clock starts once every partition is assigned (group join and the changelog restore are not
throughput) and stops when every input offset is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import workload
from bench.common import Result, Sizes, Stopwatch, median, produce, run_id
from enrollstream.adapters.kafka.topics import Topics, ensure_topics
from enrollstream.domain import CampaignDefinition
from enrollstream.runtime.campaigns import CampaignCatalog, publish_campaign
from enrollstream.runtime.contact_imports import ContactImportCatalog
from enrollstream.runtime.decider import DeciderService

log = logging.getLogger(__name__)

TARGET = ">= 5,000 commands/s per process and >= 50% of the passthrough"


@dataclass
class Run:
    rate: float  # input records/s
    records: int
    seconds: float
    outputs: int = 0  # records written (events, snapshots, results, ... or copies)


async def fresh_topics(bootstrap: str, partitions: int, campaigns: list[CampaignDefinition]) -> Topics:
    """A new set of topics (and the passthrough's output topic), the campaigns published."""
    topics = Topics(prefix=f"bench-{run_id()}.")
    await ensure_topics(bootstrap, topics, partitions)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(passthrough_topic(topics), partitions, 1)])
    finally:
        await admin.close()
    for campaign in campaigns:
        await publish_campaign(bootstrap, topics.campaigns, campaign)
    return topics


async def _prepared_topics(bootstrap: str, sizes: Sizes, n: int) -> Topics:
    topics = await fresh_topics(bootstrap, sizes.partitions, workload.campaigns())
    records = workload.commands(n)
    keyed: list[tuple[bytes | None, bytes]] = [
        (r.key if isinstance(r.key, bytes) else r.key.encode(), r.value) for r in records
    ]
    await produce(bootstrap, topics.commands, keyed)
    return topics


def passthrough_topic(topics: Topics) -> str:
    return f"{topics.prefix}passthrough"


async def _until_done(
    n: int, progress: Callable[[], int], assigned: Callable[[], bool], failed: Callable[[], None]
) -> tuple[float, int]:
    """Wait for assignment, then time until `progress()` reaches `n`; returns (seconds, records timed)."""
    deadline = Stopwatch()
    while not assigned():
        failed()
        if deadline.elapsed() > 60:
            raise TimeoutError("partitions not assigned within 60 s")
        await asyncio.sleep(0.005)
    base = progress()
    clock = Stopwatch()
    limit = 120 + n / 100
    while progress() < n:
        failed()
        if clock.elapsed() > limit:
            raise TimeoutError(f"only {progress()} of {n} records done after {limit:.0f} s")
        await asyncio.sleep(0.005)
    return clock.elapsed(), n - base


async def run_decider(
    bootstrap: str, topics: Topics, sizes: Sizes, n: int, state_dir: Path | None = None
) -> Run:
    """The decider as the worker runs it, its stores on disk (in `state_dir`, else a temporary directory
    of its own). The clock starts once it owns every partition, its state restored."""
    if state_dir is None:
        with tempfile.TemporaryDirectory(prefix="enrollstream-bench-decider-") as tmp:
            return await run_decider(bootstrap, topics, sizes, n, Path(tmp))
    catalog = CampaignCatalog(bootstrap, topics.campaigns)
    imports = ContactImportCatalog(bootstrap, topics.contact_imports)
    await catalog.start()
    await imports.start()
    service = DeciderService(
        bootstrap,
        topics,
        f"{topics.prefix}group",
        catalog,
        imports=imports,
        max_batch=sizes.decider_max_batch,
        state_dir=state_dir,
    )
    stop = asyncio.Event()
    await service.start()
    task = asyncio.create_task(service.run(stop))

    def failed() -> None:
        if task.done():
            task.result()
            raise RuntimeError("the decider stopped")

    try:
        seconds, timed = await _until_done(
            n,
            lambda: sum(o.next_offset for o in service.owners.values()),
            lambda: len(service.owners) == sizes.partitions,
            failed,
        )
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task
        await service.stop()
        await catalog.stop()
        await imports.stop()
    return Run(timed / seconds, timed, seconds, outputs=service.emitted_events)


class Passthrough:
    """The raw bound: consume, copy the bytes to the output topic, offsets in the transaction, commit."""

    def __init__(self, bootstrap: str, topics: Topics, max_batch: int) -> None:
        self.bootstrap = bootstrap
        self.source = topics.commands
        self.target = passthrough_topic(topics)
        self.group_id = f"{topics.prefix}passthrough"
        self.max_batch = max_batch
        self.producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self.next_offsets: dict[TopicPartition, int] = {}
        self.copied = 0
        self.lock = asyncio.Lock()  # like the decider's: a batch waits for an assignment in progress
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=self.group_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max_batch,
        )

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        async with self.lock:
            await self._assigned(partitions)

    async def _assigned(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            if tp not in self.producers:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    transactional_id=f"{self.group_id}.{tp.partition}",
                    enable_idempotence=True,
                    acks="all",
                    linger_ms=5,
                )
                await producer.start()
                self.producers[tp] = producer
                self.next_offsets[tp] = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batch = await self.consumer.getmany(timeout_ms=200, max_records=self.max_batch)
            async with self.lock:
                await self._copy(batch)

    async def _copy(self, batch: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in batch.items():
            producer = self.producers[tp]
            await producer.begin_transaction()
            for record in records:
                await producer.send(self.target, record.value, key=record.key, partition=tp.partition)
            await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, self.group_id)
            await producer.commit_transaction()
            self.next_offsets[tp] = records[-1].offset + 1
            self.copied += len(records)

    async def stop(self) -> None:
        for producer in self.producers.values():
            with contextlib.suppress(Exception):
                await producer.stop()
        await self.consumer.stop()


class _Assign(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, on_assigned: Callable[[set[TopicPartition]], Awaitable[None]]) -> None:
        self.on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.on_assigned(set(assigned))


async def run_passthrough(bootstrap: str, topics: Topics, sizes: Sizes, n: int) -> Run:
    passthrough = Passthrough(bootstrap, topics, sizes.decider_max_batch)
    await passthrough.consumer.start()
    passthrough.consumer.subscribe([topics.commands], listener=_Assign(passthrough.assigned))
    stop = asyncio.Event()
    task = asyncio.create_task(passthrough.run(stop))

    def failed() -> None:
        if task.done():
            task.result()
            raise RuntimeError("the passthrough stopped")

    try:
        seconds, timed = await _until_done(
            n,
            lambda: sum(passthrough.next_offsets.values()),
            lambda: len(passthrough.producers) == sizes.partitions,
            failed,
        )
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task
        await passthrough.stop()
    return Run(timed / seconds, timed, seconds, outputs=passthrough.copied)


async def scenario(bootstrap: str, sizes: Sizes, say: Callable[[str], None], profile: Any = None) -> Result:
    """Warm-up, then `reps` pairs (passthrough, decider) on fresh topics; medians of each."""
    say(f"decider: warm-up with {sizes.decider_warmup} commands")
    warm = await _prepared_topics(bootstrap, sizes, sizes.decider_warmup)
    await run_passthrough(bootstrap, warm, sizes, sizes.decider_warmup)
    await run_decider(bootstrap, warm, sizes, sizes.decider_warmup)
    n = sizes.decider_commands
    deciders: list[Run] = []
    passthroughs: list[Run] = []
    for rep in range(sizes.reps):
        topics = await _prepared_topics(bootstrap, sizes, n)
        passthroughs.append(await run_passthrough(bootstrap, topics, sizes, n))
        deciders.append(await run_decider(bootstrap, topics, sizes, n))
        say(
            f"decider rep {rep + 1}/{sizes.reps}: {deciders[-1].rate:,.0f} commands/s, "
            f"passthrough {passthroughs[-1].rate:,.0f} records/s"
        )
    if profile is not None:
        topics = await _prepared_topics(bootstrap, sizes, n)
        with profile("decider"):
            await run_decider(bootstrap, topics, sizes, n)
    value = median([r.rate for r in deciders])
    baseline = median([r.rate for r in passthroughs])
    sample = workload.commands(n)
    return Result(
        status="measured",
        unit="commands/s",
        target=TARGET,
        value=value,
        baseline=baseline,
        baseline_name="aiokafka transactional passthrough (consume, copy bytes, offsets in the transaction)",
        runs=[r.rate for r in deciders],
        baseline_runs=[r.rate for r in passthroughs],
        target_met=value >= 5_000 and value >= 0.5 * baseline,
        params={
            "commands": n,
            "warmup_commands": sizes.decider_warmup,
            "reps": sizes.reps,
            "partitions": sizes.partitions,
            "max_batch": sizes.decider_max_batch,
            "processes": 1,
            "workload": "enrollstream.chaos.workload mix without BulkEnroll, ~5 commands per contact, seeded",
            "mean_command_bytes": round(sum(len(r.value) for r in sample) / len(sample)),
            "events_per_command": round(median([r.outputs / n for r in deciders]), 3),
            "mx_verification": "off (no campaign verifies MX)",
        },
    )
