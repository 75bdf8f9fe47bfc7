"""Rate-limit deferrals and send windows end to end (issue 11, items 1 and 3): every role a sequence
needs runs against the real broker, database and SMTP server, the scheduler and the dispatcher on the
injected clock the test moves.

- A sender over its hourly limit defers two contacts' steps through the log; a Stop arriving during
  the deferral means nothing is ever sent to that contact, even once the clock passes the retry time,
  and its timeline shows the deferral; the other deferred contact's step goes out once it may.
- A campaign paused past a step's due time and resumed at night does not send at night: the step
  waits for the window's opening and goes out once the clock passes it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.worker import Worker
from tests.acceptance.test_sequences_end_to_end import events_of, has, wait_for
from tests.servers.clock import ManualClock
from tests.servers.smtp import RecordingSmtpServer
from tests.support import publish, running_worker

ACCOUNT = "acct-defer"
ROLES = ("decider", "projector", "scheduler", "dispatcher")
HOUR = timedelta(hours=1)


def configured(settings: Settings, smtp: RecordingSmtpServer, **extra: Any) -> Settings:
    return settings.model_copy(
        update={
            "smtp_host": smtp.host,
            "smtp_port": smtp.port,
            "smtp_starttls": False,
            "smtp_timeout": 30.0,
            "sender_from": "Acme <hello@acme.example>",
            "unsubscribe_url": "https://u.acme.example/u",
            "unsubscribe_keys": "e2e-unsubscribe-key-0123456789",
            "scheduler_interval_ms": 100,
            **extra,
        }
    )


def definition(
    campaign_id: str,
    steps: list[tuple[int, str]],
    status: str = "active",
    version: int = 1,
    window: dict[str, int] | None = None,
) -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": campaign_id,
            "account_id": ACCOUNT,
            "version": version,
            "status": status,
            "name": campaign_id.title(),
            "time_zone": "Europe/Paris",
            "steps": [
                {"channel": "email", "delay": f"PT{delay}S", "window": window,
                 "content": {"subject": subject, "body": "Hello {{ name }}"}}
                for delay, subject in steps
            ],
        }
    )  # fmt: skip


async def command(
    settings: Settings, topics: Topics, kind: str, contact_id: str, at: datetime, **data: Any
) -> None:
    assert settings.kafka_bootstrap_servers
    body = {
        "command_id": f"{kind}-{contact_id}",
        "type": kind,
        "account_id": ACCOUNT,
        "issued_at": at.isoformat(),
        "actor": "e2e",
        "data": {"contact_id": contact_id, **data},
    }
    await publish(
        settings.kafka_bootstrap_servers,
        topics.commands,
        json.dumps(body).encode(),
        key=f"{ACCOUNT}/{contact_id}",
    )


async def enroll(settings: Settings, topics: Topics, contact: str, campaign_id: str, at: datetime) -> None:
    facts = {"name": f"{contact.title()} Tester", "email": f"{contact}@example.org"}
    await command(settings, topics, "Enroll.v1", contact, at, campaign_id=campaign_id, contact=facts)


def received(smtp: RecordingSmtpServer, contact: str) -> list[str]:
    return [str(m.message["Subject"]) for m in smtp.received_for(f"{contact}@example.org")]


async def query_rows(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_a_send_deferred_by_the_rate_limit_is_never_sent_after_a_stop(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    first, held, patient = "first", "held", "patient"
    await publish_campaign(bootstrap, topics.campaigns, definition("limited", [(1, "Hello")]))
    async with running_worker(configured(settings, smtp_server, sender_per_hour=1), ROLES, manual_clock):
        await enroll(settings, topics, first, "limited", manual_clock.now)
        await events_of(bootstrap, topics, lambda es: has(es, first, "StepScheduled.v1"))
        manual_clock.advance(timedelta(seconds=5))
        sent_first_at = manual_clock.now
        await wait_for("the first contact's email", lambda: received(smtp_server, first) == ["Hello"])

        # The sender's hour is used up: the next two contacts' steps are deferred through the log.
        for contact in (held, patient):
            await enroll(settings, topics, contact, "limited", manual_clock.now)
        await events_of(
            bootstrap,
            topics,
            lambda es: has(es, held, "StepScheduled.v1") and has(es, patient, "StepScheduled.v1"),
        )
        manual_clock.advance(timedelta(seconds=5))
        events = await events_of(
            bootstrap,
            topics,
            lambda es: all(has(es, c, "StepScheduled.v1", dispatch=2) for c in (held, patient)),
        )
        retry_at = sent_first_at + HOUR
        for contact in (held, patient):
            assert has(events, contact, "StepDeferred.v1", dispatch=1, retry_at=retry_at, will_retry=True)
        [enrollment_id] = {e.enrollment_id for e in events if e.contact_id == held}
        assert enrollment_id is not None

        # A Stop arrives during the deferral; then the clock passes the retry time.
        await command(settings, topics, "Stop.v1", held, manual_clock.now, enrollment_id=enrollment_id)
        await events_of(bootstrap, topics, lambda es: has(es, held, "EnrollmentStopped.v1"))

        async def timer_gone() -> bool:
            rows = await query_rows(
                database_url, "select 1 from timers where enrollment_id = $1", enrollment_id
            )
            return rows == []

        await wait_for("the stopped enrollment's timers to go", timer_gone)
        manual_clock.advance(HOUR + timedelta(seconds=5))
        # The other deferred contact goes out once the sender may send: the scheduler fired its
        # rescheduled step (a new StepDue: a new due time) and the dispatcher sent it as dispatch 2.
        # The stopped one is not sent.
        await wait_for("the patient contact's email", lambda: received(smtp_server, patient) == ["Hello"])
        await events_of(bootstrap, topics, lambda es: has(es, patient, "StepDelivered.v1", attempt=1))

    assert received(smtp_server, held) == [], "nothing is sent after the Stop"
    assert received(smtp_server, first) == ["Hello"]
    [patient_row] = await query_rows(
        database_url, "select state, dispatch, started_at from delivery_ledger where contact_id = $1", patient
    )
    assert (patient_row["state"], patient_row["dispatch"]) == ("sent", 2)
    assert patient_row["started_at"] >= sent_first_at + HOUR
    ledger = await query_rows(
        database_url,
        "select state, dispatch, retry_at from delivery_ledger where enrollment_id = $1",
        enrollment_id,
    )
    assert [tuple(r) for r in ledger] == [("deferred", 1, sent_first_at + HOUR)]  # never started
    timeline = await query_rows(
        database_url,
        "select type, data from enrollment_timeline where enrollment_id = $1 order by version",
        enrollment_id,
    )
    types = [r["type"] for r in timeline]
    assert types == [
        "ContactEnrolled.v1",
        "StepScheduled.v1",
        "StepDispatched.v1",
        "StepDeferred.v1",
        "StepScheduled.v1",
        "EnrollmentStopped.v1",
    ]
    rescheduled = json.loads(timeline[4]["data"])
    assert (rescheduled["rescheduled"], rescheduled["dispatch"]) == ("deferred", 2)
    assert datetime.fromisoformat(rescheduled["due_at"]) == sent_first_at + HOUR
    [row] = await query_rows(
        database_url,
        "select status, stop_reason, next_execution_at from enrollments where enrollment_id = $1",
        enrollment_id,
    )
    assert tuple(row) == ("stopped", "manual", None)


async def wait_paused(worker: Worker, campaign_id: str, paused: bool) -> None:
    scheduler = worker.scheduler
    assert scheduler is not None

    async def seen() -> bool:
        await scheduler.catalog.catch_up()
        return ((ACCOUNT, campaign_id) in scheduler.catalog.paused()) is paused

    await wait_for(f"the scheduler seeing {campaign_id} {'paused' if paused else 'active'}", seen)


async def test_a_paused_campaign_resumed_at_night_waits_for_the_window_opening(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    owl = "owl"
    office = {"start_hour": 9, "end_hour": 18}  # Paris, UTC+1 in March: 08:00-17:00 UTC
    steps = [(1, "Step 1"), (2 * 3600, "Step 2")]

    def campaign(status: str, version: int) -> CampaignDefinition:
        return definition("windowed", steps, status=status, version=version, window=office)

    assert manual_clock.now == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # Monday, 10:00 in Paris
    await publish_campaign(bootstrap, topics.campaigns, campaign("active", 1))
    async with running_worker(configured(settings, smtp_server), ROLES, manual_clock) as worker:
        await enroll(settings, topics, owl, "windowed", manual_clock.now)
        await events_of(bootstrap, topics, lambda es: has(es, owl, "StepScheduled.v1"))
        manual_clock.advance(timedelta(seconds=5))
        await wait_for("step 1", lambda: received(smtp_server, owl) == ["Step 1"])
        await events_of(bootstrap, topics, lambda es: has(es, owl, "StepScheduled.v1", step_index=1))

        # Paused before step 2 falls due (11:00 UTC); resumed at 21:00 UTC (22:00 in Paris).
        await publish_campaign(bootstrap, topics.campaigns, campaign("paused", 2))
        await wait_paused(worker, "windowed", True)
        night = datetime(2026, 3, 2, 21, 0, tzinfo=UTC)
        manual_clock.now = night
        await publish_campaign(bootstrap, topics.campaigns, campaign("active", 3))
        await wait_paused(worker, "windowed", False)
        opening = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)  # Tuesday 09:00 in Paris
        events = await events_of(
            bootstrap,
            topics,
            lambda es: has(es, owl, "StepScheduled.v1", step_index=1, rescheduled="outside_window"),
        )
        assert has(events, owl, "StepScheduled.v1", step_index=1, due_at=opening, requested_at=night)
        assert not has(events, owl, "StepDispatched.v1", step_index=1)
        assert received(smtp_server, owl) == ["Step 1"], "nothing at night"

        async def waiting_for_the_opening() -> bool:
            rows = await query_rows(
                database_url,
                "select e.status, e.next_execution_at, t.due_at from enrollments e"
                " join timers t using (enrollment_id) where e.contact_id = $1 and t.kind = 'step_due'",
                owl,
            )
            return [tuple(r) for r in rows] == [("active", opening, opening)]

        await wait_for("the row and the timer at the opening", waiting_for_the_opening)

        manual_clock.now = opening + timedelta(seconds=1)
        await wait_for("step 2 after the opening", lambda: received(smtp_server, owl) == ["Step 1", "Step 2"])

    started = await query_rows(
        database_url, "select started_at from delivery_ledger where step_index = 1 and contact_id = $1", owl
    )
    assert [r["started_at"] for r in started] == [opening + timedelta(seconds=1)]
