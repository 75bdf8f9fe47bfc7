"""A sender's rate limit with a history in the ledger, held by two dispatchers sending side by side."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain.delivery_policy import SendLimits
from tests.dispatch_support import commands_of_type, dispatch_steps, new_dispatcher, running
from tests.servers.clock import ManualClock
from tests.servers.smtp import RecordingSmtpServer
from tests.support import eventually, running_worker

SENDER = "jobs@acme.example"  # tests/dispatch_support.py IDENTITY's address: the rate-limit key


async def _history(db: asyncpg.Connection, account: str, times: list[tuple[str, datetime]]) -> None:
    """Sends of earlier campaigns of this sender, as the ledger holds them."""
    await db.executemany(
        """insert into delivery_ledger (enrollment_id, step_index, attempt, message_id, message_id_header,
               account_id, contact_id, channel, sender, recipient, state, started_at, finished_at)
           values ($1, 0, 1, $1, '<' || $1 || '@acme.example>', $2, $1, 'email', $3, 'old@example.org',
                   $4, $5, $5)""",
        [(f"old-{i}", account, SENDER, state, at) for i, (state, at) in enumerate(times)],
    )


async def test_two_dispatchers_side_by_side_send_no_more_than_the_hourly_limit_leaves(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    manual_clock: ManualClock,
    db: asyncpg.Connection,
) -> None:
    """per_hour=45 with 40 sends (sent, unknown, started) in the last hour, plus sends that no longer
    count (older than the hour; bounced or failed within it): of 12 new steps spread over the
    partitions of two dispatchers of one group, each owning some, exactly 5 go out, each once; the
    other 7 are deferred to the instant the oldest counted send leaves the hour."""
    account = f"acct-{uuid.uuid4().hex[:8]}"
    now = manual_clock()
    counted = [("sent", now - timedelta(minutes=50) + timedelta(seconds=i)) for i in range(30)]
    counted += [("unknown", now - timedelta(minutes=20))] * 5 + [("started", now - timedelta(minutes=1))] * 5
    not_counted = [("sent", now - timedelta(hours=2))] * 50
    not_counted += [("bounced", now - timedelta(minutes=5)), ("failed", now - timedelta(minutes=5))]
    await _history(db, account, counted + not_counted)
    contacts = {f"c{i}": f"c{i}@example.org" for i in range(12)}
    limits = SendLimits(per_hour=45)
    first = new_dispatcher(settings, smtp_server, manual_clock, limits=limits)
    second = new_dispatcher(settings, smtp_server, manual_clock, limits=limits)
    async with running_worker(settings), running(first), running(second):

        async def sharing() -> bool:
            mine, theirs = first.assignment(), second.assignment()
            return bool(mine) and bool(theirs) and not mine & theirs

        await eventually(sharing, timeout=60, what="both dispatchers owning partitions")
        await dispatch_steps(settings, manual_clock, account, contacts)
        assert settings.kafka_bootstrap_servers
        await commands_of_type(settings.kafka_bootstrap_servers, topics, "DeliveryReported.v1", 12)
    rows = await db.fetch(
        "select state, retry_at from delivery_ledger where sender = $1 and account_id = $2 and "
        "enrollment_id not like 'old-%'",
        SENDER,
        account,
    )
    states = sorted(r["state"] for r in rows)
    assert states == ["deferred"] * 7 + ["sent"] * 5
    assert len(smtp_server.messages) == 5
    assert len({m.rcpt_tos for m in smtp_server.messages}) == 5  # none twice
    assert first.sends + second.sends == 5
    assert first.sends + first.deferrals > 0 and second.sends + second.deferrals > 0  # both had a share
    # With 5 more, the hour holds 45: a 46th waits until the oldest counted send (50 minutes ago) leaves.
    assert {r["retry_at"] for r in rows if r["state"] == "deferred"} == {now + timedelta(minutes=10)}
