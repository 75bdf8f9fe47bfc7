"""Issue 11 items 4 and 10 end to end: time a campaign spends paused does not count toward its expiry,
and a queued enrollment waits only behind queueing campaigns, with its timeout fired as a timer row.

Every role a sequence needs runs against the real broker, database and SMTP server; the scheduler and
the dispatcher read the test's ManualClock, so the campaign is paused for nineteen days in no time.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain import (
    CampaignDefinition,
    CampaignStatus,
    ExpiryDue,
    StepDue,
    parse_event,
    with_pause_history,
)
from enrollstream.domain.events import Event
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.worker import Worker
from tests.integration.test_scheduler import scheduler, send, timers, wait_for_timers
from tests.servers.clock import ManualClock
from tests.servers.smtp import RecordingSmtpServer
from tests.support import eventually, publish, read_until, running_worker

ACCOUNT = "acct-pause"
CAMPAIGN = "application"
DAY = timedelta(days=1)
T0 = datetime.fromisoformat("2026-03-02T09:00:00+00:00")
ROLES = ("decider", "projector", "scheduler", "dispatcher")


def modules(version: int = 1, **extra: Any) -> CampaignDefinition:
    """Seed 002's kind: expires 7 days after the first delivery by default; steps five days apart."""
    fields: dict[str, Any] = {
        "campaign_id": CAMPAIGN,
        "account_id": ACCOUNT,
        "version": version,
        "kind": "multi_module",
        "steps": [
            {"channel": "email", "delay": delay, "content": {"subject": f"Module {n}", "body": "Hello"}}
            for n, delay in ((1, "PT0S"), (2, "P5D"), (3, "P5D"))
        ],
    }
    fields.update(extra)
    return CampaignDefinition.model_validate(fields)


def enroll(contact: str, at: datetime) -> dict[str, Any]:
    return {
        "command_id": f"enroll-{contact}",
        "type": "Enroll.v1",
        "account_id": ACCOUNT,
        "issued_at": at.isoformat(),
        "actor": "test",
        "data": {
            "contact_id": contact,
            "campaign_id": CAMPAIGN,
            "contact": {"name": contact.title(), "email": f"{contact}@example.org"},
        },
    }


async def events(bootstrap: str, topics: Topics, done: Any) -> list[Event]:
    records = await read_until(
        bootstrap, topics.events, lambda rs: done([parse_event(r.value) for r in rs]), timeout=60
    )
    return [parse_event(r.value) for r in records]


def count(es: list[Event], type_: str, **data: Any) -> int:
    return sum(e.type == type_ and all(getattr(e.data, k) == v for k, v in data.items()) for e in es)


def subjects(smtp: RecordingSmtpServer, contact: str) -> list[str]:
    return [str(m.message["Subject"]) for m in smtp.received_for(f"{contact}@example.org")]


async def until_sent(smtp: RecordingSmtpServer, contact: str, expected: list[str]) -> None:
    async def there() -> bool:
        return subjects(smtp, contact) == expected

    await eventually(there, what=f"{expected[-1]} sent to {contact}")


async def scheduler_sees(worker: Worker, paused: bool) -> None:
    sched = worker.scheduler
    assert sched is not None

    async def seen() -> bool:
        await sched.catalog.catch_up()
        return ((ACCOUNT, CAMPAIGN) in sched.catalog.paused()) is paused

    await eventually(seen, what=f"the scheduler seeing the campaign {'paused' if paused else 'active'}")


async def test_a_campaign_paused_longer_than_its_expiry_sends_the_due_step_once_on_resume_and_does_not_expire(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    configured = settings.model_copy(
        update={
            "smtp_host": smtp_server.host,
            "smtp_port": smtp_server.port,
            "smtp_starttls": False,
            "sender_from": "Acme Careers <careers@acme.example>",
            "unsubscribe_url": "https://u.acme.example/u",
            "unsubscribe_keys": "pause-unsubscribe-key-0123456789",
            "scheduler_interval_ms": 100,
        }
    )
    manual_clock.now = T0
    active = modules()
    await publish_campaign(bootstrap, topics.campaigns, active)
    async with running_worker(configured, roles=ROLES, clock=manual_clock) as worker:
        await send(configured, topics, enroll("pia", T0))
        await until_sent(smtp_server, "pia", ["Module 1"])
        [delivered] = [
            e for e in await events(bootstrap, topics, lambda es: count(es, "StepDelivered.v1")) if
            e.type == "StepDelivered.v1"
        ]  # fmt: skip
        [expiry] = await wait_for_timers(database_url, 1, kind="expiry")
        assert expiry["due_at"] == delivered.occurred_at + 7 * DAY
        [step_two] = await wait_for_timers(database_url, 1, kind="step_due")
        assert step_two["due_at"] == delivered.occurred_at + 5 * DAY

        # Paused a day later, for nineteen days: module 2 falls due, then the expiry; nothing fires.
        manual_clock.now = T0 + DAY
        paused = with_pause_history(
            active,
            active.model_copy(update={"version": 2, "status": CampaignStatus.PAUSED}),
            manual_clock.now,
        )
        await publish_campaign(bootstrap, topics.campaigns, paused)
        await scheduler_sees(worker, paused=True)
        manual_clock.now = T0 + 20 * DAY
        assert worker.scheduler is not None
        assert await worker.scheduler.tick(manual_clock.now) == []  # nothing is claimed while paused
        assert subjects(smtp_server, "pia") == ["Module 1"]

        # Resumed: module 2 goes out once, the expiry moves by the nineteen paused days.
        resumed = with_pause_history(
            paused,
            paused.model_copy(update={"version": 3, "status": CampaignStatus.ACTIVE}),
            manual_clock.now,
        )
        await publish_campaign(bootstrap, topics.campaigns, resumed)
        await until_sent(smtp_server, "pia", ["Module 1", "Module 2"])
        history = await events(
            bootstrap,
            topics,
            lambda es: count(es, "ExpiryScheduled.v1") == 2 and count(es, "StepDelivered.v1") == 2,
        )
        moved = [e for e in history if e.type == "ExpiryScheduled.v1"][-1]
        assert moved.data.expires_at == expiry["due_at"] + 19 * DAY  # type: ignore[union-attr]
        assert moved.data.paused == 19 * DAY  # type: ignore[union-attr]

        async def expiry_row_moved() -> bool:
            rows = [r for r in await timers(database_url) if r["kind"] == "expiry"]
            return [r["due_at"] for r in rows] == [expiry["due_at"] + 19 * DAY]

        await eventually(expiry_row_moved, what="the expiry timer moved by the paused time")

        # Module 3 falls due five days after module 2, before the moved expiry: the candidate completes.
        manual_clock.now = T0 + 25 * DAY + timedelta(hours=1)
        await until_sent(smtp_server, "pia", ["Module 1", "Module 2", "Module 3"])
        history = await events(bootstrap, topics, lambda es: count(es, "EnrollmentCompleted.v1") == 1)
        await wait_for_timers(database_url, 0)

    assert count(history, "EnrollmentExpired.v1") == 0
    assert [count(history, "StepDispatched.v1", step_index=i) for i in range(3)] == [1, 1, 1]
    conn = await asyncpg.connect(database_url)
    try:
        status = await conn.fetchval("select status from enrollments where contact_id = 'pia'")
    finally:
        await conn.close()
    assert status == "completed"


async def test_an_expiry_never_overtakes_a_step_that_was_due_before_it(
    settings: Settings, topics: Topics, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, modules())
    async with running_worker(settings, roles=("decider", "projector")):
        await send(settings, topics, enroll("oli", T0))
        [first] = await wait_for_timers(database_url, 1, kind="step_due")
        report = {
            "command_id": "delivery-oli-0",
            "type": "DeliveryReported.v1",
            "account_id": ACCOUNT,
            "issued_at": T0.isoformat(),
            "actor": "test",
            "data": {
                "contact_id": "oli",
                "enrollment_id": first["enrollment_id"],
                "step_index": 0,
                "attempt": 1,
                "outcome": "sent",
            },
        }
        due = dict(report, command_id="due-oli-0", type="StepDue.v1")
        due["data"] = {k: v for k, v in report["data"].items() if k != "outcome"}  # type: ignore[union-attr]
        for cmd in (due, report):
            await publish(bootstrap, topics.commands, json.dumps(cmd).encode(), key=f"{ACCOUNT}/oli")
        await wait_for_timers(database_url, 1, kind="expiry")
    # The scheduler was down from before module 2 was due (T0+5d) until after the expiry (T0+7d): on its
    # first tick module 2 is fired before the expiry, so it goes out before the enrollment expires.
    async with scheduler(settings, topics, manual_clock) as sched:
        fired = await sched.tick(T0 + 8 * DAY)
    assert [type(c) for c in fired] == [StepDue, ExpiryDue]


async def test_a_queued_enrollment_times_out_through_its_timer_row_and_never_waits_behind_a_drip(
    settings: Settings, topics: Topics, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    drip = modules(campaign_id="drip", kind="sequence")
    first = modules(campaign_id="first", when_in_other_campaign="queue")
    second = modules(campaign_id="second", when_in_other_campaign="queue", queue_timeout="P1D")
    for definition in (drip, first, second):
        await publish_campaign(bootstrap, topics.campaigns, definition)
    async with running_worker(settings, roles=("decider", "projector")):
        for campaign_id in ("drip", "first", "second"):
            cmd = dict(enroll("quinn", T0), command_id=f"enroll-quinn-{campaign_id}")
            cmd["data"] = dict(cmd["data"], campaign_id=campaign_id)
            await send(settings, topics, cmd)
        [wait] = await wait_for_timers(database_url, 1, kind="wait_timeout")
        assert wait["campaign_id"] == "second" and wait["due_at"] == T0 + DAY
        async with scheduler(settings, topics, manual_clock) as sched:
            early = await sched.tick(T0 + DAY - timedelta(seconds=1))  # the steps of the drip and the first
            assert sorted(c.type for c in early) == ["StepDue.v1", "StepDue.v1"]
            fired = [c for c in await sched.tick(T0 + DAY) if c.type == "WaitTimeout.v1"]
        assert [c.data.enrollment_id for c in fired] == [wait["enrollment_id"]]
        history = await events(bootstrap, topics, lambda es: count(es, "EnrollmentStopped.v1") == 1)
        await wait_for_timers(database_url, 0, kind="wait_timeout")
    [stopped] = [e for e in history if e.type == "EnrollmentStopped.v1"]
    assert (stopped.campaign_id, stopped.data.reason) == ("second", "timeout")  # type: ignore[union-attr]
    assert count(history, "EnrollmentQueued.v1") == 1  # the second waited behind the first, not the drip
    [queued] = [e for e in history if e.type == "EnrollmentQueued.v1"]
    assert queued.data.behind_campaign_id == "first"  # type: ignore[union-attr]
