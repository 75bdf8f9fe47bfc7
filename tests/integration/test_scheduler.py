"""The scheduler against the real broker and database: timers kept by the projector, claimed with
SKIP LOCKED and a lease, fired as commands the real decider acts on. Time moves only by the test's hand
(ManualClock for the scheduler, `issued_at` for the commands that set due times)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from enrollstream.adapters.kafka.reading import batches_to_end
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.postgres.queries import query
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition, StepDue, parse_command, parse_event, step_due_command_id
from enrollstream.domain.commands import timer_command_id
from enrollstream.runtime.campaigns import CampaignCatalog, publish_campaign
from enrollstream.runtime.replay import partition_numbers, replay
from enrollstream.runtime.scheduler import SchedulerService
from tests.servers.clock import ManualClock
from tests.support import eventually, publish, running_worker

ACCOUNT = "acct-s"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)


def campaign(version: int = 1, status: str = "active", **extra: Any) -> CampaignDefinition:
    fields: dict[str, Any] = {
        "campaign_id": "drip",
        "account_id": ACCOUNT,
        "version": version,
        "status": status,
        "steps": [
            {"channel": "email", "delay": "PT1H", "content": {"subject": "One", "body": "First"}},
            {"channel": "email", "delay": "P10D", "content": {"subject": "Two", "body": "Second"}},
        ],
    }
    fields.update(extra)
    return CampaignDefinition.model_validate(fields)


def command(type_: str, contact_id: str, at: datetime, **data: Any) -> dict[str, Any]:
    return {
        "command_id": f"cmd-{uuid.uuid4()}",
        "type": type_,
        "account_id": ACCOUNT,
        "issued_at": at.isoformat(),
        "actor": "test",
        "data": {"contact_id": contact_id, **data},
    }


def enroll(contact_id: str, at: datetime = T0, campaign_id: str = "drip", **data: Any) -> dict[str, Any]:
    contact = {"name": contact_id.title(), "email": f"{contact_id}@example.org"}
    return command("Enroll.v1", contact_id, at, campaign_id=campaign_id, contact=contact, **data)


async def send(settings: Settings, topics: Topics, cmd: dict[str, Any]) -> None:
    assert settings.kafka_bootstrap_servers
    key = f"{cmd['account_id']}/{cmd['data']['contact_id']}"
    await publish(settings.kafka_bootstrap_servers, topics.commands, json.dumps(cmd).encode(), key=key)


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every committed record of the topic, up to its end now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await partition_numbers(bootstrap, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        async for batch in batches_to_end(consumer, partitions):
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


async def events_of(bootstrap: str, topics: Topics, type_: str) -> list[Any]:
    return [e for r in await read_all(bootstrap, topics.events) if (e := parse_event(r.value)).type == type_]


async def step_dues_on_topic(bootstrap: str, topics: Topics) -> list[StepDue]:
    commands = [parse_command(r.value) for r in await read_all(bootstrap, topics.commands)]
    return [c for c in commands if isinstance(c, StepDue)]


async def results(bootstrap: str, topics: Topics) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in await read_all(bootstrap, topics.command_results)]


async def timers(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch("select * from timers order by enrollment_id, kind"))
    finally:
        await conn.close()


async def wait_for_timers(database_url: str, count: int, kind: str | None = None) -> list[asyncpg.Record]:
    async def there() -> bool:
        rows = [r for r in await timers(database_url) if kind is None or r["kind"] == kind]
        return len(rows) == count

    await eventually(there, what=f"{count} timers rows")
    return [r for r in await timers(database_url) if kind is None or r["kind"] == kind]


@contextlib.asynccontextmanager
async def scheduler(
    settings: Settings, topics: Topics, clock: ManualClock, batch: int = 500, lease_ms: int = 30_000
) -> AsyncIterator[SchedulerService]:
    assert settings.kafka_bootstrap_servers and settings.database_url
    catalog = CampaignCatalog(settings.kafka_bootstrap_servers, topics.campaigns)
    await catalog.start()
    service = SchedulerService(
        settings.kafka_bootstrap_servers,
        topics,
        settings.database_url,
        catalog,
        clock=clock,
        batch=batch,
        lease_ms=lease_ms,
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await catalog.stop()


async def test_a_step_fires_when_due_once_per_enrollment_and_the_decider_dispatches_it(
    settings: Settings, topics: Topics, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    contacts = ["ann", "bob", "cyd"]
    async with running_worker(settings), scheduler(settings, topics, manual_clock) as sched:
        for c in contacts:
            await send(settings, topics, enroll(c, at=T0))
        rows = await wait_for_timers(database_url, 3)
        assert {(r["kind"], r["step_index"], r["attempt"], r["due_at"]) for r in rows} == {
            ("step_due", 0, 1, T0 + HOUR)
        }
        assert all(r["claimed_until"] is None for r in rows)

        assert await sched.tick(T0 + HOUR - SECOND) == []
        fired = await sched.tick(T0 + HOUR)
        assert sorted(c.command_id for c in fired) == sorted(
            step_due_command_id(r["enrollment_id"], 0, 1, r["due_at"]) for r in rows
        )
        assert all(c.issued_at == T0 + HOUR and c.actor == "scheduler" for c in fired)
        assert await sched.tick(T0 + HOUR) == []  # leased, or already gone

        async def dispatched() -> bool:
            return len(await events_of(bootstrap, topics, "StepDispatched.v1")) == 3

        await eventually(dispatched, what="three StepDispatched events")
        await wait_for_timers(database_url, 0)  # the projector removed the fired timers
    assert len(await step_dues_on_topic(bootstrap, topics)) == 3
    assert sorted(e.contact_id for e in await events_of(bootstrap, topics, "StepDispatched.v1")) == contacts


async def test_two_schedulers_on_the_same_due_rows_fire_each_once_and_again_only_after_the_lease(
    settings: Settings, topics: Topics, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    contacts = [f"c{i:02d}" for i in range(30)]
    async with running_worker(settings, roles=("decider", "projector")):
        for c in contacts:
            await send(settings, topics, enroll(c, at=T0))
        await wait_for_timers(database_url, len(contacts))
    # The decider is gone: nothing removes the fired rows, so only the lease keeps them from firing twice.
    now = T0 + HOUR
    async with (
        scheduler(settings, topics, manual_clock, batch=4, lease_ms=60_000) as a,
        scheduler(settings, topics, manual_clock, batch=4, lease_ms=60_000) as b,
    ):
        # A claim in flight elsewhere holds three rows: this claim passes over them instead of waiting.
        holder = await asyncpg.connect(database_url)
        try:
            async with holder.transaction():
                held = await holder.fetch(
                    "select enrollment_id from timers order by enrollment_id limit 3 for update"
                )
                first = await asyncio.wait_for(a.tick(now), timeout=10)
        finally:
            await holder.close()
        assert len(first) == 4
        assert not {c.data.enrollment_id for c in first if isinstance(c, StepDue)} & {
            r["enrollment_id"] for r in held
        }
        fired: list[str] = [c.command_id for c in first]
        while True:
            got = await asyncio.gather(a.tick(now), b.tick(now), a.tick(now), b.tick(now))
            fired.extend(c.command_id for claim in got for c in claim)
            if not any(got):
                break
        assert a.published > 0 and b.published > 0
        assert len(fired) == len(set(fired)) == len(contacts)
        assert len(await step_dues_on_topic(bootstrap, topics)) == len(contacts)
        leased = await timers(database_url)
        assert {r["claimed_until"] for r in leased} == {now + timedelta(seconds=60)}

        assert await a.tick(now + timedelta(seconds=60)) == []  # the lease still holds at its last instant
        again = await a.tick(now + timedelta(seconds=61))
        assert len(again) == 4 and {c.command_id for c in again} <= set(fired)

    # Leases are the scheduler's, not the log's: a rebuild from the events still equals the live table.
    report = await replay(bootstrap, topics.events, database_url)
    assert report.equal and report.live_lag == 0, report.tables
    assert {t.table: t.live_rows for t in report.tables}["timers"] == len(contacts)


async def test_claims_come_in_batch_then_priority_then_enrollment_order(
    settings: Settings, topics: Topics, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    minute = timedelta(minutes=1)
    enrollments = [
        ("late-batch", 2, False, T0),
        ("b1-third", 1, False, T0 + 2 * minute),
        ("b1-priority", 1, True, T0 + 5 * minute),
        ("b1-second", 1, False, T0 + minute),
        ("b2-priority", 2, True, T0 + 3 * minute),
    ]
    async with running_worker(settings, roles=("decider", "projector")):
        for contact_id, batch_number, priority, at in enrollments:
            await send(
                settings, topics, enroll(contact_id, at=at, batch_number=batch_number, priority=priority)
            )
        await wait_for_timers(database_url, len(enrollments))
    async with scheduler(settings, topics, manual_clock, batch=2) as sched:
        now = T0 + 2 * HOUR
        claims = [[c.contact_id for c in await sched.tick(now)] for _ in range(4)]
    assert claims == [["b1-priority", "b1-second"], ["b1-third", "b2-priority"], ["late-batch"], []]


async def test_a_paused_campaign_fires_nothing_and_its_steps_go_out_after_resume(
    settings: Settings, topics: Topics, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign(version=1))
    async with running_worker(settings), scheduler(settings, topics, manual_clock) as sched:
        await send(settings, topics, enroll("pat", at=T0))
        [row] = await wait_for_timers(database_url, 1)
        step_id = step_due_command_id(row["enrollment_id"], 0, 1, row["due_at"])
        await publish_campaign(bootstrap, topics.campaigns, campaign(version=2, status="paused"))

        assert await sched.tick(T0 + HOUR) == []
        assert await sched.tick(T0 + 30 * HOUR) == []
        [still] = await timers(database_url)
        assert still["claimed_until"] is None  # not even claimed

        # A scheduler that saw the pause could have fired it: the decider defers it and records nothing.
        paused_fire = StepDue.model_validate(
            {
                "command_id": step_id,
                "account_id": ACCOUNT,
                "issued_at": (T0 + 30 * HOUR).isoformat(),
                "data": {
                    "contact_id": "pat",
                    "enrollment_id": row["enrollment_id"],
                    "step_index": 0,
                    "attempt": 1,
                    "campaign_status": "paused",
                },
            }
        )
        await send(settings, topics, json.loads(paused_fire.model_dump_json()))

        async def deferred() -> bool:
            return any(r["command_id"] == step_id for r in await results(bootstrap, topics))

        await eventually(deferred, what="the paused StepDue's result")
        assert [r["status"] for r in await results(bootstrap, topics) if r["command_id"] == step_id] == [
            "deferred"
        ]

        await publish_campaign(bootstrap, topics.campaigns, campaign(version=3, status="active"))
        [resumed] = await sched.tick(T0 + 31 * HOUR)
        assert isinstance(resumed, StepDue)
        assert resumed.command_id == step_id and resumed.data.campaign_status == "active"

        async def dispatched() -> bool:
            return len(await events_of(bootstrap, topics, "StepDispatched.v1")) == 1

        await eventually(dispatched, what="the step dispatched after resume")
        await wait_for_timers(database_url, 0)
    statuses = [r["status"] for r in await results(bootstrap, topics) if r["command_id"] == step_id]
    assert statuses == ["deferred", "accepted"]  # the same id, refired after resume, is not a duplicate


async def test_wait_timeout_and_expiry_timers_fire_their_commands(
    settings: Settings, topics: Topics, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    auto_match = campaign(campaign_id="auto", awaits_trigger=True, trigger_timeout="PT48H")
    await publish_campaign(bootstrap, topics.campaigns, auto_match)
    await publish_campaign(bootstrap, topics.campaigns, campaign(expiry_after_delivery="P3D"))
    async with running_worker(settings), scheduler(settings, topics, manual_clock) as sched:
        await send(settings, topics, enroll("wes", at=T0, campaign_id="auto"))
        await send(settings, topics, enroll("eve", at=T0))
        await wait_for_timers(database_url, 2)
        [wait] = [r for r in await timers(database_url) if r["kind"] == "wait_timeout"]
        assert wait["due_at"] == T0 + timedelta(hours=48)

        # Eve's first step goes out and is reported sent at T0+2h: expiry in 3 days, step two in 10.
        [step] = await sched.tick(T0 + HOUR)
        assert step.contact_id == "eve"
        await eventually(
            lambda: _has_events(bootstrap, topics, "StepDispatched.v1", 1), what="eve's step dispatched"
        )
        report = command(
            "DeliveryReported.v1",
            "eve",
            T0 + 2 * HOUR,
            enrollment_id=step.data.enrollment_id,
            step_index=0,
            attempt=1,
            outcome="sent",
        )
        await send(settings, topics, report)
        [expiry] = await wait_for_timers(database_url, 1, kind="expiry")
        assert expiry["due_at"] == T0 + 2 * HOUR + timedelta(days=3)

        fired = await sched.tick(T0 + timedelta(hours=48))
        assert [(c.type, c.command_id) for c in fired] == [
            ("WaitTimeout.v1", timer_command_id("wait-timeout", wait["enrollment_id"], wait["due_at"]))
        ]
        await eventually(
            lambda: _has_events(bootstrap, topics, "EnrollmentStopped.v1", 1), what="wes timed out"
        )
        await wait_for_timers(database_url, 0, kind="wait_timeout")
        fired = await sched.tick(T0 + 2 * HOUR + timedelta(days=3))
        assert [(c.type, c.command_id) for c in fired] == [
            ("ExpiryDue.v1", timer_command_id("expiry", expiry["enrollment_id"], expiry["due_at"]))
        ]
        await eventually(
            lambda: _has_events(bootstrap, topics, "EnrollmentExpired.v1", 1), what="eve expired"
        )
        await wait_for_timers(database_url, 0)  # expired and stopped: every timer is gone
    [stopped] = await events_of(bootstrap, topics, "EnrollmentStopped.v1")
    assert (stopped.contact_id, stopped.data.reason) == ("wes", "timeout")


async def _has_events(bootstrap: str, topics: Topics, type_: str, count: int) -> bool:
    return len(await events_of(bootstrap, topics, type_)) >= count


async def test_a_stopped_or_unenrolled_enrollment_leaves_no_timers(
    settings: Settings, topics: Topics, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    async with running_worker(settings), scheduler(settings, topics, manual_clock) as sched:
        await send(settings, topics, enroll("sam", at=T0))
        await send(settings, topics, enroll("una", at=T0))
        await send(settings, topics, enroll("kit", at=T0))
        rows = {r["contact_id"]: r for r in await wait_for_timers(database_url, 3)}
        at = T0 + 10 * timedelta(minutes=1)
        await send(
            settings, topics, command("Stop.v1", "sam", at, enrollment_id=rows["sam"]["enrollment_id"])
        )
        await send(
            settings, topics, command("Unenroll.v1", "una", at, enrollment_id=rows["una"]["enrollment_id"])
        )
        [left] = await wait_for_timers(database_url, 1)
        assert left["contact_id"] == "kit"
        assert [c.contact_id for c in await sched.tick(T0 + HOUR)] == ["kit"]


async def test_the_worker_runs_the_scheduler_on_its_interval_with_the_injected_clock(
    settings: Settings, topics: Topics, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    manual_clock.now = T0
    fast = settings.model_copy(update={"scheduler_interval_ms": 50})
    async with running_worker(
        fast, roles=("decider", "projector", "scheduler"), clock=manual_clock
    ) as worker:
        await send(settings, topics, enroll("ivy", at=T0))
        await wait_for_timers(database_url, 1)
        assert worker.scheduler is not None and worker.scheduler.published == 0
        manual_clock.now = T0 + HOUR
        await eventually(
            lambda: _has_events(bootstrap, topics, "StepDispatched.v1", 1), what="the interval job fired"
        )
        assert worker.scheduler.published == 1


async def test_the_claim_reads_the_partial_indexes_not_the_whole_table(db: asyncpg.Connection) -> None:
    await db.execute(
        """
        insert into timers (enrollment_id, kind, account_id, contact_id, campaign_id, step_index, attempt,
                            due_at, batch_number, priority, enrolled_at, claimed_until)
        select 'e' || i, 'step_due', 'a', 'c' || i, 'camp' || (i % 50), 0, 1,
               $1::timestamptz + make_interval(secs => i), i % 7, i % 13 = 0, $1::timestamptz,
               case when i % 10 = 0 then $1::timestamptz + interval '1 day' end
          from generate_series(1, 50000) i
        """,
        T0,
    )
    await db.execute("analyze timers")
    now = T0 + timedelta(seconds=500)
    plan = "\n".join(
        r[0]
        for r in await db.fetch(
            "explain " + query("claim_due_timers"), now, now + HOUR, ["a"], ["camp1"], 500
        )
    )
    assert "timers_due_unclaimed" in plan and "timers_lease" in plan, plan
    assert "Seq Scan on timers" not in plan, plan
