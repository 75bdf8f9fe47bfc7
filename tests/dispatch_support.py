"""Helpers for the dispatcher and inbound tests: real StepDispatched events from the real decider,
and a dispatcher on the test's SMTP server and manual clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

from aiokafka.partitioner import murmur2

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.mail.message import SenderIdentity
from enrollstream.adapters.mail.smtp import SmtpConfig, SmtpSender
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition, parse_event
from enrollstream.domain.commands import StepDue, StepDueData, step_due_command_id
from enrollstream.domain.delivery_policy import SendLimits
from enrollstream.domain.events import Event, StepScheduled
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.dispatcher import DispatcherService
from tests.servers.clock import ManualClock
from tests.servers.smtp import RecordingSmtpServer
from tests.support import publish, read_until

IDENTITY = SenderIdentity(
    from_address="Acme Recruiting <jobs@acme.example>",
    signing_key=b"unsubscribe-key-for-tests-0123456789",
    unsubscribe_url="https://u.acme.example/u",
    unsubscribe_mailto="unsubscribe@acme.example",
)
DOMAIN = "acme.example"


def campaign(
    account_id: str,
    *,
    steps: int = 2,
    reply_action: str = "stop",
    channel: str = "email",
    campaign_id: str = "outreach",
) -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": campaign_id,
            "account_id": account_id,
            "version": 1,
            "name": "Outreach",
            "reply_action": reply_action,
            "steps": [
                {
                    "channel": channel,
                    "delay": "PT0S" if i == 0 else "P1D",
                    "content": {"subject": f"Hi {{{{ first_name }}}} ({i + 1})", "body": "Hello {{ name }}"},
                }
                for i in range(steps)
            ],
        }
    )


async def events(bootstrap: str, topics: Topics, done: Callable[[list[Event]], bool]) -> list[Event]:
    records = await read_until(bootstrap, topics.events, lambda rs: done([parse_event(r.value) for r in rs]))
    return [parse_event(r.value) for r in records]


async def commands_of_type(bootstrap: str, topics: Topics, kind: str, count: int) -> list[dict[str, Any]]:
    def matching(records: list[Any]) -> list[dict[str, Any]]:
        parsed = [json.loads(r.value) for r in records]
        return [c for c in parsed if c["type"] == kind]

    records = await read_until(bootstrap, topics.commands, lambda rs: len(matching(rs)) >= count)
    return matching(records)


async def dispatch_steps(
    settings: Settings,
    clock: ManualClock,
    account_id: str,
    contacts: dict[str, str],
    names: dict[str, str] | None = None,
    mobiles: dict[str, str] | None = None,
    **campaign_kw: Any,
) -> dict[str, str]:
    """Enroll each contact (id -> email) now and fire its first StepDue: contact id -> enrollment id,
    once every StepDispatched is on the events topic (the decider+projector worker must be running)."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    topics = Topics(settings.topic_prefix)
    await publish_campaign(bootstrap, topics.campaigns, campaign(account_id, **campaign_kw))
    for contact_id, email in contacts.items():
        enroll = {
            "command_id": f"enroll-{contact_id}",
            "type": "Enroll.v1",
            "account_id": account_id,
            "issued_at": clock().isoformat(),
            "data": {
                "contact_id": contact_id,
                "campaign_id": "outreach",
                "contact": {
                    "name": (names or {}).get(contact_id, f"{contact_id.title()} Tester"),
                    "email": email,
                    "mobile": (mobiles or {}).get(contact_id),
                },
            },
        }
        await publish(
            bootstrap, topics.commands, json.dumps(enroll).encode(), key=f"{account_id}/{contact_id}"
        )

    # Only these contacts' events count: a test may call this again for more contacts.
    def of_these(es: list[Event], kind: str) -> int:
        return sum(e.type == kind and e.contact_id in contacts for e in es)

    enrolled = await events(bootstrap, topics, lambda es: of_these(es, "StepScheduled.v1") >= len(contacts))
    ids = {
        e.contact_id: e.enrollment_id
        for e in enrolled
        if e.type == "ContactEnrolled.v1" and e.contact_id in contacts
    }
    due_at = {e.enrollment_id: e.data.due_at for e in enrolled if isinstance(e, StepScheduled)}
    for contact_id, enrollment_id in ids.items():
        assert enrollment_id is not None
        due = StepDue(
            command_id=step_due_command_id(enrollment_id, 0, 1, due_at[enrollment_id]),
            account_id=account_id,
            issued_at=clock(),
            actor="scheduler",
            data=StepDueData(contact_id=contact_id, enrollment_id=enrollment_id, step_index=0, attempt=1),
        )
        await publish(bootstrap, topics.commands, due, key=f"{account_id}/{contact_id}")
    await events(bootstrap, topics, lambda es: of_these(es, "StepDispatched.v1") >= len(contacts))
    return {contact_id: eid for contact_id, eid in ids.items() if eid is not None}


def partition_of(account_id: str, contact_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the contact's key (murmur2, like the clients)."""
    return (murmur2(f"{account_id}/{contact_id}".encode()) & 0x7FFFFFFF) % partitions


def contacts_on_one_partition(account_id: str, prefix: str, count: int, partitions: int) -> list[str]:
    """`count` contact ids of the account whose commands and events share partition 0."""
    found = (f"{prefix}{i}" for i in range(1000))
    return [c for c in found if partition_of(account_id, c, partitions) == 0][:count]


def new_dispatcher(
    settings: Settings,
    smtp: RecordingSmtpServer,
    clock: ManualClock,
    *,
    group_id: str | None = None,
    limits: SendLimits | None = None,
    identity: SenderIdentity = IDENTITY,
    **service_kw: Any,
) -> DispatcherService:
    assert settings.kafka_bootstrap_servers and settings.database_url
    sender = SmtpSender(SmtpConfig(host=smtp.host, port=smtp.port, starttls=False, timeout=5.0), pool_size=4)
    return DispatcherService(
        settings.kafka_bootstrap_servers,
        Topics(settings.topic_prefix),
        settings.database_url,
        group_id or settings.group_id,
        email=sender,
        identity=identity,
        limits=limits,
        clock=clock,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        **service_kw,
    )


@contextlib.asynccontextmanager
async def running(service: Any) -> AsyncIterator[Any]:
    """start() / run() until the block ends / stop(); a failure of run() is raised."""
    stop = asyncio.Event()
    await service.start()
    task = asyncio.create_task(service.run(stop))
    try:
        yield service
        if task.done():
            task.result()
    finally:
        stop.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout=10)
        if not task.done():
            task.cancel()
        await service.stop()
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def message_id_header(enrollment_id: str, step_index: int = 0, attempt: int = 1) -> str:
    from enrollstream.domain import ids

    return f"<{ids.message_id(enrollment_id, step_index, attempt)}@{DOMAIN}>"


ONE_HOUR = timedelta(hours=1)
