"""The scheduler scenario (issue 5's role; end to end is bench/end_to_end.py).

- scheduler: (1) 100,000 timers due at once: seconds until every StepDue is on the commands topic;
  (2) timers falling due at a steady rate: lateness = the StepDue record's broker timestamp - due_at.

It has no raw baseline that bounds it the way a passthrough bounds the decider: it reports its figure
against its target, with the parts in `params`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from aiokafka import AIOKafkaConsumer

from bench.common import Result, Sizes, median, migrated_database, run_id
from enrollstream.adapters.kafka.topics import Topics, ensure_topics
from enrollstream.adapters.postgres.databases import drop_database
from enrollstream.runtime.campaigns import CampaignCatalog
from enrollstream.runtime.scheduler import SchedulerService

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
