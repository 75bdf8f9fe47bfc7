"""A poll batch larger than what the dispatcher starts ahead: the ledger never holds more `started`
attempts than it may lose to a crash (2 x start_ahead), and every message still goes out once."""

from __future__ import annotations

import uuid

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from tests.dispatch_support import (
    commands_of_type,
    contacts_on_one_partition,
    dispatch_steps,
    new_dispatcher,
    running,
)
from tests.servers.clock import ManualClock
from tests.servers.smtp import Behaviour, RecordingSmtpServer
from tests.support import eventually, running_worker


async def test_sends_that_hang_hold_back_the_started_rows_of_the_rest_of_the_batch(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    manual_clock: ManualClock,
    db: asyncpg.Connection,
) -> None:
    """Ten steps on one partition, start_ahead=2, every message held by the server after its content:
    two rows are started and sent, then two more (two sends in flight is within start_ahead), then
    nothing: four `started` rows, no row for the other six, until the held ones end. Released, all
    ten go out, each once."""
    assert settings.kafka_bootstrap_servers and settings.partitions
    account = f"acct-{uuid.uuid4().hex[:8]}"
    contacts = contacts_on_one_partition(account, "h", 10, settings.partitions)
    for contact in contacts:
        smtp_server.behave(f"{contact}@example.org", Behaviour.HOLD_AFTER_DATA)

    async def ledger() -> dict[str, int]:
        rows = await db.fetch("select state, count(*) from delivery_ledger group by state")
        return {r["state"]: r["count"] for r in rows}

    async with running_worker(settings):
        await dispatch_steps(settings, manual_clock, account, {c: f"{c}@example.org" for c in contacts})
        dispatcher = new_dispatcher(settings, smtp_server, manual_clock, start_ahead=2)
        async with running(dispatcher):

            async def four_held() -> bool:
                return len(smtp_server.messages) == 4

            await eventually(four_held, what="four messages held at the server")
            # Four sends hang: more than start_ahead in flight, so no further row was started.
            assert await ledger() == {"started": 4}
            for contact in contacts:
                smtp_server.release(f"{contact}@example.org")
            reports = await commands_of_type(
                settings.kafka_bootstrap_servers, topics, "DeliveryReported.v1", 10
            )
    assert {r["data"]["outcome"] for r in reports} == {"sent"}
    assert await ledger() == {"sent": 10}
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(f"{c}@example.org" for c in contacts)
