"""A poll batch's reports and offset commit run while the next batch sends (docs/delivery.md,
"Batches"): the next batch's offsets are never committed before the previous batch's, and a batch
whose reports could not be marked (PostgreSQL) is read again, with the one sent beside it: every
attempt reported, none sent twice."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from enrollstream.adapters.kafka.records import encode
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain import ids
from enrollstream.domain.campaign import Channel, StepContent
from enrollstream.domain.events import StepDispatched, StepDispatchedData
from tests.dispatch_support import commands_of_type, contacts_on_one_partition, new_dispatcher, running
from tests.servers.clock import ManualClock
from tests.servers.smtp import RecordingSmtpServer
from tests.support import eventually, publish

HOLD = 4242  # the advisory lock the test holds while the first `mark_reported` waits for it

# The first time any row is marked reported, the statement waits for the test's advisory lock; the
# sequence (not rolled back with the statement) makes it the first time only.
HOLD_THE_FIRST_MARK_REPORTED = f"""
create sequence first_mark_reported;
create function hold_first_mark_reported() returns trigger language plpgsql as $$
begin
  if nextval('first_mark_reported') = 1 then
    perform pg_advisory_xact_lock({HOLD});
  end if;
  return new;
end $$;
create trigger hold_first_mark_reported before update on delivery_ledger for each row
  when (new.reported and not old.reported) execute function hold_first_mark_reported();
"""


def _step_dispatched(account: str, contact: str) -> StepDispatched:
    enrollment = ids.enrollment_id(account, contact, "outreach", 1)
    return StepDispatched(
        event_id=f"ev-{contact}",
        account_id=account,
        contact_id=contact,
        campaign_id="outreach",
        enrollment_id=enrollment,
        version=3,
        occurred_at=datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
        causation_id=f"step-due-{contact}",
        data=StepDispatchedData(
            step_index=0,
            attempt=1,
            step_count=1,
            message_id=ids.message_id(enrollment, 0, 1),
            channel=Channel.EMAIL,
            to=f"{contact}@example.org",
            content=StepContent(subject="Hello {{ first_name }}", body="Hi {{ first_name }}"),
            contact_name=f"{contact.title()} Tester",
        ),
    )


async def _committed(bootstrap: str, group_id: str, tp: TopicPartition) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    found = offsets.get(tp)
    return found.offset if found is not None and found.offset >= 0 else None


async def test_a_batch_sends_while_the_last_one_reports_and_a_failed_report_is_read_again_in_order(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    manual_clock: ManualClock,
    db: asyncpg.Connection,
) -> None:
    """Six email steps on one partition, polled two at a time. The first batch's `mark_reported`
    waits (a trigger, behind the test's lock): the second batch is sent meanwhile, and no offset is
    committed, the second batch's included. The waiting statement is then cancelled (PostgreSQL
    unavailable, for the dispatcher): both batches are read again (final rows: reported, not sent
    again), then the third. Every message once at the server, every row reported, every offset
    committed."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap and settings.partitions
    account = f"acct-{uuid.uuid4().hex[:8]}"
    contacts = contacts_on_one_partition(account, "s", 6, settings.partitions)
    events = [_step_dispatched(account, c) for c in contacts]
    for event in events:  # in this order on partition 0: batches (s0, s1), (s2, s3), (s4, s5)
        await publish(bootstrap, topics.events, encode(event), key=f"{account}/{event.contact_id}")
    await db.execute(HOLD_THE_FIRST_MARK_REPORTED)
    await db.execute("select pg_advisory_lock($1)", HOLD)
    partition = TopicPartition(topics.events, 0)
    group = f"{settings.group_id}.dispatcher"
    dispatcher = new_dispatcher(settings, smtp_server, manual_clock, max_batch=2)
    async with running(dispatcher):
        try:

            async def held() -> bool:
                return bool(
                    await db.fetchval(
                        "select count(*) from pg_stat_activity where datname = current_database() "
                        "and wait_event_type = 'Lock' and wait_event = 'advisory'"
                    )
                )

            await eventually(held, what="the first batch's mark_reported waiting")

            async def second_batch_sent() -> bool:
                return len(smtp_server.messages) >= 4

            await eventually(second_batch_sent, what="the second batch sent while the first one reports")
            assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(
                f"{c}@example.org" for c in contacts[:4]
            )

            # The second batch is sent and its reports wait behind the first batch's: nothing committed.
            # The server holds a message before the dispatcher has written its outcome: wait for both rows.
            async def second_batch_recorded() -> bool:
                return await db.fetchval("select count(*) from delivery_ledger where state = 'sent'") == 4

            await eventually(second_batch_recorded, what="the second batch's outcomes recorded as sent")
            assert await _committed(bootstrap, group, partition) is None
            cancelled = await db.fetchval(
                "select count(*) from (select pg_cancel_backend(pid) from pg_stat_activity "
                "where datname = current_database() and wait_event_type = 'Lock' "
                "and wait_event = 'advisory') c"
            )
            assert cancelled == 1
            await db.execute("select pg_advisory_unlock($1)", HOLD)

            async def all_reported_and_committed() -> bool:
                reported = await db.fetchval("select count(*) from delivery_ledger where reported")
                return reported == 6 and await _committed(bootstrap, group, partition) == 6

            await eventually(all_reported_and_committed, what="every row reported, every offset committed")
            reports = await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 6)
            assert dispatcher.sends == 6
        finally:  # a failed check must not leave the dispatcher's statement waiting for the lock
            await db.execute("select pg_advisory_unlock_all()")
    assert {r["data"]["contact_id"] for r in reports} == set(contacts)
    assert {r["data"]["outcome"] for r in reports} == {"sent"}
    for contact in contacts:
        assert len(smtp_server.received_for(f"{contact}@example.org")) == 1, contact  # none twice
    rows = await db.fetch("select state, reported from delivery_ledger")
    assert [(r["state"], r["reported"]) for r in rows] == [("sent", True)] * 6
