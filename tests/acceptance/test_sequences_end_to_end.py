"""A 3-step email sequence run end to end by every role, over a real SMTP server and a real DNS server.

Decider, projector, scheduler, dispatcher and inbound run together against the real broker and
database; the scheduler and the dispatcher read an injected clock the test moves, so every phase
happens when the test says, with no sleeps standing in for time. Fifty ordinary contacts each get
exactly three emails, in order, and:

- a contact who replies after step 1 (a real reply, matched by In-Reply-To) gets nothing more;
- a contact whose address bounces (550 at RCPT) fails (status failed, reason bounced, stage bounced);
- a contact unenrolled while step 2 is being sent gets that email and nothing after;
- a contact on a domain without MX is skipped as mx_invalid and gets nothing;
- while the campaign is paused nothing is sent; on resume the due steps go out.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg
from prometheus_client import REGISTRY

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition, parse_event
from enrollstream.domain.events import Event
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.worker import Worker
from tests.servers.clock import ManualClock
from tests.servers.dns import LocalDnsServer
from tests.servers.smtp import Behaviour, RecordingSmtpServer
from tests.support import publish, read_until, running_worker

ACCOUNT = "acct-e2e"
CAMPAIGN = "onboarding"
ORDINARY = [f"c{i:02d}" for i in range(50)]
REPLIER, BOUNCER, UNENROLLED, NO_MX = "replier", "bouncer", "leaver", "nomx"
ROLES = ("decider", "projector", "scheduler", "dispatcher", "inbound")


def onboarding(status: str = "active", version: int = 1) -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": CAMPAIGN,
            "account_id": ACCOUNT,
            "version": version,
            "status": status,
            "name": "Onboarding",
            "verify_email_mx": True,
            "reply_action": "stop",
            "steps": [
                {"channel": "email", "delay": f"PT{delay}S",
                 "content": {"subject": f"Step {n} for {{{{ first_name }}}}", "body": "Hello {{ name }}"}}
                for n, delay in ((1, 1), (2, 2), (3, 2))
            ],
        }
    )  # fmt: skip


def sends(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("enrollstream_sends_total", {"channel": "email", "outcome": outcome}) or 0.0
    )


def fired_timers() -> float:
    return REGISTRY.get_sample_value("enrollstream_timer_lateness_seconds_count") or 0.0


def email_of(contact: str) -> str:
    return f"{contact}@{'nomx.test' if contact == NO_MX else 'example.org'}"


def enroll(contact: str, clock: ManualClock) -> dict[str, Any]:
    return {
        "command_id": f"enroll-{contact}",
        "type": "Enroll.v1",
        "account_id": ACCOUNT,
        "issued_at": clock.now.isoformat(),
        "actor": "e2e",
        "data": {
            "contact_id": contact,
            "campaign_id": CAMPAIGN,
            "contact": {"name": f"{contact.title()} Tester", "email": email_of(contact)},
        },
    }


async def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.1)


def subjects(smtp: RecordingSmtpServer, contact: str) -> list[str]:
    return [str(m.message["Subject"]).split(" for ")[0] for m in smtp.received_for(email_of(contact))]


async def events_of(bootstrap: str, topics: Topics, done: Callable[[list[Event]], bool]) -> list[Event]:
    records = await read_until(
        bootstrap, topics.events, lambda rs: done([parse_event(r.value) for r in rs]), timeout=90
    )
    return [parse_event(r.value) for r in records]


def has(events: list[Event], contact: str, event_type: str, **data: Any) -> bool:
    return any(
        e.contact_id == contact
        and e.type == event_type
        and all(getattr(e.data, k, None) == v for k, v in data.items())
        for e in events
    )


async def wait_paused(worker: Worker, paused: bool) -> None:
    scheduler = worker.scheduler
    assert scheduler is not None

    async def seen() -> bool:
        await scheduler.catalog.catch_up()
        return ((ACCOUNT, CAMPAIGN) in scheduler.catalog.paused()) is paused

    await wait_for(f"the scheduler seeing the campaign {'paused' if paused else 'active'}", seen)


async def test_a_three_step_sequence_for_fifty_contacts_with_a_reply_a_bounce_an_unenroll_and_a_pause(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    dns_server: LocalDnsServer,
    manual_clock: ManualClock,
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    dns_server.add("example.org", "MX", "10 mx.example.org.")
    dns_server.add("nomx.test", "A", "192.0.2.7")
    smtp_server.behave(email_of(BOUNCER), Behaviour.REJECT_RCPT)
    configured = settings.model_copy(
        update={
            "dns_nameservers": f"127.0.0.1:{dns_server.port}",
            "smtp_host": smtp_server.host,
            "smtp_port": smtp_server.port,
            "smtp_starttls": False,
            "smtp_timeout": 30.0,
            "sender_from": "Acme Onboarding <hello@acme.example>",
            "unsubscribe_url": "https://u.acme.example/u",
            "unsubscribe_keys": "e2e-unsubscribe-key-0123456789",
            "scheduler_interval_ms": 100,
        }
    )
    await publish_campaign(bootstrap, topics.campaigns, onboarding())
    everyone = [*ORDINARY, REPLIER, BOUNCER, UNENROLLED, NO_MX]
    sent_before, bounced_before, fired_before = sends("sent"), sends("bounced"), fired_timers()
    unknown_before = sends("unknown")

    async with running_worker(configured, roles=ROLES, clock=manual_clock) as worker:
        for contact in everyone:
            await publish(bootstrap, topics.commands, json.dumps(enroll(contact, manual_clock)).encode(),
                          key=f"{ACCOUNT}/{contact}")  # fmt: skip
        events = await events_of(
            bootstrap, topics, lambda es: all(any(e.contact_id == c for e in es) for c in everyone)
        )
        assert has(events, NO_MX, "EnrollmentSkipped.v1", kind="mx_invalid")
        enrollment_of = {e.contact_id: e.enrollment_id for e in events if e.type == "ContactEnrolled.v1"}
        assert NO_MX not in enrollment_of and len(enrollment_of) == len(everyone) - 1

        # Step 1 falls due: every enrolled contact is sent it, except the bouncing address.
        manual_clock.advance(timedelta(seconds=5))
        step1 = [*ORDINARY, REPLIER, UNENROLLED]
        await wait_for(
            "step 1 for everyone", lambda: all(subjects(smtp_server, c) == ["Step 1"] for c in step1)
        )
        events = await events_of(bootstrap, topics, lambda es: has(es, BOUNCER, "EnrollmentFailed.v1"))
        assert has(events, BOUNCER, "EnrollmentFailed.v1", reason="bounced")

        # The replier answers step 1; the inbound role matches it by In-Reply-To.
        [sent] = smtp_server.received_for(email_of(REPLIER))
        reply = {
            "type": "InboundEmailReceived.v1",
            "account_id": ACCOUNT,
            "from": email_of(REPLIER),
            "to": "hello@acme.example",
            "subject": "Re: Step 1",
            "message_id": "<reply-1@example.org>",
            "in_reply_to": str(sent.message["Message-ID"]),
            "received_at": manual_clock.now.isoformat(),
        }
        await publish(bootstrap, topics.inbound_email, json.dumps(reply).encode(), key=ACCOUNT)
        await events_of(bootstrap, topics, lambda es: has(es, REPLIER, "EnrollmentStopped.v1"))

        # Step 2 falls due; the leaver's email is held at the server while the leaver unenrolls.
        smtp_server.behave(email_of(UNENROLLED), Behaviour.HOLD_AFTER_DATA)
        manual_clock.advance(timedelta(seconds=10))
        await wait_for(
            "the leaver's step 2 at the server", lambda: len(subjects(smtp_server, UNENROLLED)) == 2
        )
        unenroll = {
            "command_id": "unenroll-leaver",
            "type": "Unenroll.v1",
            "account_id": ACCOUNT,
            "issued_at": manual_clock.now.isoformat(),
            "actor": "e2e",
            "data": {"contact_id": UNENROLLED, "enrollment_id": enrollment_of[UNENROLLED]},
        }
        await publish(
            bootstrap, topics.commands, json.dumps(unenroll).encode(), key=f"{ACCOUNT}/{UNENROLLED}"
        )
        await events_of(bootstrap, topics, lambda es: has(es, UNENROLLED, "EnrollmentUnenrolled.v1"))
        smtp_server.release(email_of(UNENROLLED))
        await wait_for(
            "step 2 for the others", lambda: all(len(subjects(smtp_server, c)) == 2 for c in ORDINARY)
        )
        await events_of(bootstrap, topics, lambda es: has(es, UNENROLLED, "StepDelivered.v1", step_index=1))

        # Paused: step 3 falls due and nothing is sent; on resume it goes out.
        await publish_campaign(bootstrap, topics.campaigns, onboarding("paused", version=2))
        await wait_paused(worker, True)
        manual_clock.advance(timedelta(seconds=10))
        await asyncio.sleep(1.5)  # fifteen scheduler ticks on the moved clock
        assert all(len(subjects(smtp_server, c)) == 2 for c in ORDINARY), "nothing is sent while paused"
        await publish_campaign(bootstrap, topics.campaigns, onboarding("active", version=3))
        await wait_paused(worker, False)
        await wait_for(
            "step 3 after resume", lambda: all(len(subjects(smtp_server, c)) == 3 for c in ORDINARY)
        )
        await events_of(
            bootstrap, topics, lambda es: sum(e.type == "EnrollmentCompleted.v1" for e in es) == len(ORDINARY)
        )
        # A while later still nothing more goes out to anyone.
        manual_clock.advance(timedelta(minutes=5))
        await asyncio.sleep(1.0)

    for contact in ORDINARY:
        assert subjects(smtp_server, contact) == ["Step 1", "Step 2", "Step 3"], contact
    assert subjects(smtp_server, REPLIER) == ["Step 1"]
    assert subjects(smtp_server, UNENROLLED) == ["Step 1", "Step 2"]
    assert subjects(smtp_server, BOUNCER) == [] and subjects(smtp_server, NO_MX) == []
    # The operator sees the same on /metrics: sends by outcome, and every fired timer's lateness.
    assert sends("sent") - sent_before == len(smtp_server.messages) == 50 * 3 + 1 + 2
    assert sends("unknown") - unknown_before == 0
    assert sends("bounced") - bounced_before == 1
    assert fired_timers() - fired_before >= len(smtp_server.messages) + 1
    message_ids = Counter(str(m.message["Message-ID"]) for m in smtp_server.messages)
    assert max(message_ids.values()) == 1, "no message was sent twice"
    assert all(
        m.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" for m in smtp_server.messages
    )

    conn = await asyncpg.connect(database_url)
    try:
        statuses = dict(await conn.fetch("select contact_id, status from enrollments"))
        stop_reasons = dict(await conn.fetch("select contact_id, stop_reason from enrollments"))
        bouncer = await conn.fetchrow(
            "select stage, failure_reason, failure_detail from enrollments where contact_id = $1", BOUNCER
        )
        skips = await conn.fetch("select contact_id, kind from enrollment_skips")
    finally:
        await conn.close()
    assert all(statuses[c] == "completed" for c in ORDINARY)
    assert (statuses[REPLIER], stop_reasons[REPLIER]) == ("stopped", "replied")
    assert (statuses[BOUNCER], stop_reasons[BOUNCER]) == ("failed", None)
    assert (bouncer["stage"], bouncer["failure_reason"]) == ("bounced", "bounced")
    assert bouncer["failure_detail"].startswith("rcpt: 550")
    assert statuses[UNENROLLED] == "unenrolled"
    assert [(r["contact_id"], r["kind"]) for r in skips] == [(NO_MX, "mx_invalid")]
