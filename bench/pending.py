"""The scheduler and end-to-end scenarios (issue 5's roles).

- scheduler: (1) 100,000 timers due at once: seconds until every StepDue is on the commands topic;
  (2) timers falling due at a steady rate: lateness = the StepDue record's broker timestamp - due_at.
- end_to_end: Enrolls published at a fixed rate into a campaign whose first step is due at once, with
  decider, projector, scheduler and dispatcher running against a local SMTP sink; latency = the sink's
  accept time - the Enroll's publish time, p50/p99.

Neither has a raw baseline that bounds it the way a passthrough bounds the decider: each reports its
figure against its target, with the parts in `params`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import Result, Sizes, median, migrated_database, run_id
from enrollstream.adapters.kafka.topics import Topics, ensure_topics
from enrollstream.adapters.postgres.databases import drop_database
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition
from enrollstream.runtime.campaigns import CampaignCatalog, publish_campaign
from enrollstream.runtime.scheduler import SchedulerService
from enrollstream.runtime.worker import Worker
from enrollstream.smtp_sink import SmtpSink

SCHEDULER_TARGET = "100,000 timers due at once all emitted within 30 s; at 2,000 due/s lateness p99 < 1 s"
END_TO_END_TARGET = "Enroll to first email accepted by a local SMTP sink: p99 < 1 s at 200 enrollments/s"
ACCOUNT = "bench"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _insert_timers(url: str, due: list[datetime], prefix: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        now = datetime.now(UTC)
        columns = ["enrollment_id", "kind", "account_id", "contact_id", "campaign_id", "step_index"]
        columns += ["attempt", "due_at", "batch_number", "priority", "enrolled_at"]
        rows = [
            (f"{prefix}-{i}", "step_due", ACCOUNT, f"{prefix}-c{i}", "bench", 0, 1, at, 0, False, now)
            for i, at in enumerate(due)
        ]
        await conn.copy_records_to_table("timers", columns=columns, records=rows)
    finally:
        await conn.close()


async def _step_due_times(bootstrap: str, topic: str, expected: int, timeout: float) -> dict[str, float]:
    """enrollment id -> broker timestamp (s) of its StepDue, once `expected` have arrived."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500, max_records=20_000)).values():
                for record in records:
                    command = json.loads(record.value)
                    seen.setdefault(command["data"]["enrollment_id"], record.timestamp / 1000)
    finally:
        await consumer.stop()
    return seen


async def _run_scheduler(
    bootstrap: str, topics: Topics, url: str, stop: asyncio.Event
) -> tuple[SchedulerService, asyncio.Task[None]]:
    catalog = CampaignCatalog(bootstrap, topics.campaigns)
    await catalog.start()
    service = SchedulerService(bootstrap, topics, url, catalog, interval_ms=100, batch=2_000)
    await service.start()
    return service, asyncio.create_task(service.run(stop))


async def scheduler(bootstrap: str, server_url: str, sizes: Sizes, say: Callable[[str], None]) -> Result:
    burst = sizes.scheduler_burst
    rate, seconds = 2_000, sizes.scheduler_steady_seconds
    burst_runs: list[float] = []
    lateness: list[float] = []
    for rep in range(sizes.reps):
        name = f"bench_sched_{run_id()}"
        topics = Topics(prefix=f"bench-sched-{run_id()}.")
        await ensure_topics(bootstrap, topics, sizes.partitions)
        url = await migrated_database(server_url, name)
        try:
            # (1) a burst: everything due a second ago.
            await _insert_timers(url, [datetime.now(UTC) - timedelta(seconds=1)] * burst, "burst")
            stop = asyncio.Event()
            started = time.time()
            service, running = await _run_scheduler(bootstrap, topics, url, stop)
            times = await _step_due_times(bootstrap, topics.commands, burst, timeout=120)
            burst_runs.append(max(times.values()) - started if len(times) == burst else float("inf"))
            # (2) steady: `rate` timers falling due per second, from a second from now.
            first = datetime.now(UTC) + timedelta(seconds=1)
            due = [first + timedelta(seconds=i / rate) for i in range(rate * seconds)]
            await _insert_timers(url, due, "steady")
            all_times = await _step_due_times(bootstrap, topics.commands, burst + len(due), timeout=60)
            stop.set()
            await running
            await service.stop()
            await service.catalog.stop()
            for i, at in enumerate(due):
                fired = all_times.get(f"steady-{i}")
                if fired is not None:
                    lateness.append(fired - at.timestamp())
            say(f"scheduler rep {rep + 1}: {burst:,} due at once emitted in {burst_runs[-1]:.2f} s")
        finally:
            await drop_database(server_url, name)
    value = median(burst_runs)
    p50, p99 = _percentile(lateness, 0.5), _percentile(lateness, 0.99)
    return Result(
        status="measured",
        unit="s",
        target=SCHEDULER_TARGET,
        value=value,
        runs=burst_runs,
        target_met=value < 30 and p99 < 1.0 and burst == 100_000,
        params={"timers_at_once": burst, "steady_rate_per_s": rate, "steady_seconds": seconds,
                "lateness_p50_s": round(p50, 4), "lateness_p99_s": round(p99, 4), "tick_interval_ms": 100,
                "claim_batch": 2_000},
    )  # fmt: skip


def _campaign() -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": "bench-e2e",
            "account_id": ACCOUNT,
            "version": 1,
            "steps": [{"channel": "email", "delay": "PT0S", "content": {"subject": "Hi", "body": "Hello"}}],
        }
    )


async def end_to_end(bootstrap: str, server_url: str, sizes: Sizes, say: Callable[[str], None]) -> Result:
    rate, seconds = sizes.end_to_end_rate, sizes.end_to_end_seconds
    p99_runs: list[float] = []
    latencies: list[float] = []
    for rep in range(sizes.reps):
        name = f"bench_e2e_{run_id()}"
        topics = Topics(prefix=f"bench-e2e-{run_id()}.")
        await ensure_topics(bootstrap, topics, sizes.partitions)
        url = await migrated_database(server_url, name)
        await publish_campaign(bootstrap, topics.campaigns, _campaign())
        settings = Settings(
            kafka_bootstrap_servers=bootstrap, database_url=url, topic_prefix=topics.prefix,
            partitions=sizes.partitions, group_id=f"bench-e2e-{run_id()}", scheduler_interval_ms=50,
            smtp_starttls=False, sender_from="Bench <bench@bench.example>",
            unsubscribe_url="https://u.bench.example/u", unsubscribe_keys="bench-unsubscribe-key-0123456789",
        )  # fmt: skip
        try:
            with SmtpSink() as sink:
                settings = settings.model_copy(update={"smtp_host": sink.host, "smtp_port": sink.port})
                worker = Worker(settings, bootstrap, url, ("decider", "projector", "scheduler", "dispatcher"))
                ready = asyncio.Event()
                task = asyncio.create_task(worker.run(ready))
                await asyncio.wait_for(ready.wait(), 60)
                await asyncio.sleep(2)  # partitions assigned before the clock starts
                published = await _publish_enrolls(bootstrap, topics, rate, seconds)
                deadline = time.monotonic() + 120
                while len(sink.messages) < len(published) and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)  # the sink records from its own thread: poll it
                worker.stop()
                await asyncio.wait_for(task, 60)
                run = [
                    m.received_at - published[m.recipient] for m in sink.messages if m.recipient in published
                ]
            latencies.extend(run)
            p99_runs.append(_percentile(run, 0.99) if len(run) == len(published) else float("inf"))
            say(f"end to end rep {rep + 1}: {len(run):,}/{len(published):,} emails, p99 {p99_runs[-1]:.3f} s")
        finally:
            await drop_database(server_url, name)
    value = median(p99_runs)
    return Result(
        status="measured",
        unit="s (p99)",
        target=END_TO_END_TARGET,
        value=value,
        runs=p99_runs,
        target_met=value < 1.0,
        params={
            "enrollments_per_s": rate,
            "seconds": seconds,
            "p50_s": round(_percentile(latencies, 0.5), 4),
            "scheduler_interval_ms": 50,
            "roles": "decider, projector, scheduler and dispatcher in one process",
        },
    )


async def _publish_enrolls(bootstrap: str, topics: Topics, rate: int, seconds: int) -> dict[str, float]:
    """Enrolls at a fixed rate; recipient -> wall-clock time its Enroll was acknowledged by the broker."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=1)
    await producer.start()
    published: dict[str, float] = {}
    try:
        started = time.monotonic()
        for i in range(rate * seconds):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            contact = f"e2e{i:06d}"
            command: dict[str, Any] = {
                "command_id": f"bench-enroll-{i}", "type": "Enroll.v1", "account_id": ACCOUNT,
                "issued_at": datetime.now(UTC).isoformat(), "actor": "bench",
                "data": {"contact_id": contact, "campaign_id": "bench-e2e",
                         "contact": {"name": contact, "email": f"{contact}@bench.example"}},
            }  # fmt: skip
            sent_at = time.time()
            await producer.send(
                topics.commands, json.dumps(command).encode(), key=f"{ACCOUNT}/{contact}".encode()
            )
            published[f"{contact}@bench.example"] = sent_at
        await producer.flush()
    finally:
        await producer.stop()
    return published
