"""Reply detection: received email on the inbound-email topic, matched against the Message-IDs the
dispatcher sent (the delivery ledger), becomes ReplyDetected for the right enrollment; auto-replies
do not; what matches nothing is kept for inspection (inbound_unmatched) with the reason, not
dead-lettered; only a record that is not an InboundEmailReceived at all is a dead letter."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from enrollstream.adapters.kafka.records import header
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain.inbound import InboundEmailReceived, reply_command_id
from enrollstream.runtime.inbound import InboundService
from tests.dispatch_support import (
    commands_of_type,
    dispatch_steps,
    events,
    message_id_header,
    new_dispatcher,
    running,
)
from tests.servers.clock import ManualClock
from tests.servers.smtp import RecordingSmtpServer
from tests.support import publish, read_until, running_worker


def _inbound(account: str, message_id: str, **fields: Any) -> InboundEmailReceived:
    return InboundEmailReceived.model_validate(
        {
            "account_id": account,
            "from": "Ada Tester <ada@example.org>",
            "to": "jobs@acme.example",
            "subject": "Re: Hi Ada (1)",
            "message_id": message_id,
            "received_at": "2026-03-02T11:30:00+00:00",
            **fields,
        }
    )


async def test_a_reply_to_our_message_id_stops_the_enrollment_an_auto_reply_does_not_and_strays_are_kept(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    manual_clock: ManualClock,
    db: asyncpg.Connection,
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap and settings.database_url
    account = f"acct-{uuid.uuid4().hex[:6]}"
    async with running_worker(settings):
        enrollments = await dispatch_steps(settings, manual_clock, account, {"ada": "ada@example.org"})
        eid = enrollments["ada"]
        ours = message_id_header(eid)
        async with running(new_dispatcher(settings, smtp_server, manual_clock)):
            await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 1)
        await events(bootstrap, topics, lambda es: any(e.type == "StepDelivered.v1" for e in es))

        vacation = _inbound(
            account,
            "<ooo-1@example.org>",
            in_reply_to=ours,
            auto_submitted="auto-replied",
            subject="Out of office",
        )
        stray = _inbound(account, "<stray-1@example.org>", in_reply_to="<someone-else@elsewhere.example>")
        # The reply names our message only in References (a client that dropped In-Reply-To).
        reply = _inbound(
            account,
            "<reply-1@example.org>",
            references=["<older@example.org>", ours],
            auto_submitted="no",
        )
        key = account
        for record in (vacation, stray, reply):
            await publish(
                bootstrap, topics.inbound_email, record.model_dump_json(by_alias=True).encode(), key
            )
        await publish(bootstrap, topics.inbound_email, b'{"account_id": "x"}', key)  # not a valid record

        inbound = InboundService(bootstrap, topics, settings.database_url, settings.group_id)
        async with running(inbound):
            [detected] = await commands_of_type(bootstrap, topics, "ReplyDetected.v1", 1)
            [letter] = await read_until(bootstrap, topics.dead_letters, lambda rs: len(rs) >= 1)
            decided = await events(
                bootstrap, topics, lambda es: any(e.type == "EnrollmentStopped.v1" for e in es)
            )

        assert detected["command_id"] == reply_command_id("<reply-1@example.org>")
        assert detected["data"]["enrollment_id"] == eid
        assert detected["data"]["contact_id"] == "ada"
        assert detected["data"]["inbound_message_id"] == "<reply-1@example.org>"
        assert inbound.auto_replies == 1 and inbound.replies == 1 and inbound.unmatched == 1
        assert header(letter.headers, "error.reason") == "not a valid InboundEmailReceived"
        assert header(letter.headers, "error.role") == "inbound"
        assert header(letter.headers, "original.topic") == topics.inbound_email
        assert inbound.dead_letters == 1  # the invalid record only: the stray is kept, not dead-lettered
        [kept] = await db.fetch(
            "select account_id, inbound_message_id, reason, record from inbound_unmatched"
        )
        assert (kept["account_id"], kept["inbound_message_id"]) == (account, "<stray-1@example.org>")
        assert kept["reason"].startswith("none of <someone-else@elsewhere.example>")
        assert json.loads(kept["record"])["in_reply_to"] == "<someone-else@elsewhere.example>"

        received = [e for e in decided if e.type == "ReplyReceived.v1"]
        assert [e.data.inbound_message_id for e in received] == ["<reply-1@example.org>"]  # type: ignore[union-attr]
        [stopped] = [e for e in decided if e.type == "EnrollmentStopped.v1"]
        assert stopped.enrollment_id == eid
        assert stopped.data.reason.value == "replied"  # type: ignore[union-attr]
        assert received[0].data.hours_to_reply == 2.5  # type: ignore[union-attr]  # sent 09:00, replied 11:30
