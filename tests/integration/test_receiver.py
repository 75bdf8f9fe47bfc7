"""The inbound mail receiver (issue 17, docs/delivery.md "Receiving replies"), through the real servers:
mail delivered to its SMTP listener, or found by its IMAP poller in a real dovecot mailbox, reaches the
inbound role through Kafka and ends as a reply, an ignored auto-reply, a bounce, or a row kept for
inspection; never as a dead letter."""

from __future__ import annotations

import asyncio
import email.utils
import json
import smtplib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from enrollstream import observability as metrics
from enrollstream.adapters.kafka.topics import Topics, partition_numbers
from enrollstream.adapters.mail.inbound_message import AccountResolver
from enrollstream.config import Settings
from enrollstream.runtime.inbound import InboundService
from enrollstream.runtime.receiver import ImapConfig, ReceiverService
from tests.dispatch_support import (
    IDENTITY,
    commands_of_type,
    dispatch_steps,
    events,
    message_id_header,
    new_dispatcher,
    running,
)
from tests.servers.clock import ManualClock
from tests.servers.imap import DovecotImapServer
from tests.servers.smtp import RecordingSmtpServer
from tests.support import eventually, fetch_one, read_until, running_worker

REPLY_DOMAIN = "reply.acme.example"


def _receiver(settings: Settings, clock: ManualClock, **kw: Any) -> ReceiverService:
    assert settings.kafka_bootstrap_servers and settings.database_url
    return ReceiverService(
        settings.kafka_bootstrap_servers,
        Topics(settings.topic_prefix),
        settings.database_url,
        AccountResolver(domain=REPLY_DOMAIN),
        smtp_port=0,
        clock=clock,
        **kw,
    )


def _inbound(settings: Settings) -> InboundService:
    assert settings.kafka_bootstrap_servers and settings.database_url
    return InboundService(
        settings.kafka_bootstrap_servers,
        Topics(settings.topic_prefix),
        settings.database_url,
        settings.group_id,
    )


@asynccontextmanager
async def _sent(
    settings: Settings, clock: ManualClock, smtp_server: RecordingSmtpServer, account: str
) -> AsyncIterator[str]:
    """A worker (decider, projector) and one enrollment whose first email went out: its Message-ID."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    topics = Topics(settings.topic_prefix)
    async with running_worker(settings):
        enrollments = await dispatch_steps(settings, clock, account, {"ada": "ada@example.org"})
        async with running(new_dispatcher(settings, smtp_server, clock)):
            await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 1)
        await events(bootstrap, topics, lambda es: any(e.type == "StepDelivered.v1" for e in es))
        clock.advance(timedelta(hours=2))
        yield enrollments["ada"]


def _mail(
    rcpt: str, message_id: str, in_reply_to: str | None, subject: str = "Re: Hi Ada (1)", **headers: str
) -> bytes:
    lines = [
        "From: Ada Tester <ada@example.org>",
        f"To: {rcpt}",
        f"Subject: {subject}",
        f"Message-ID: {message_id}",
        "Date: Mon, 02 Mar 2026 11:00:00 +0000",
    ]
    if in_reply_to is not None:
        lines.append(f"In-Reply-To: {in_reply_to}")
    lines.extend(f"{name.replace('_', '-')}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\nThanks, interested!\r\n").encode()


def _send(
    port: int, rcpts: list[str], content: bytes, mail_from: str = "ada@example.org"
) -> dict[str, tuple[int, bytes]]:
    """One SMTP session to the listener (on a thread: smtplib blocks): the refused recipients, or the
    error the DATA got; {} when everything was accepted."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        try:
            return client.sendmail(mail_from, rcpts, content)
        except smtplib.SMTPRecipientsRefused as exc:
            return dict(exc.recipients)
        except smtplib.SMTPDataError as exc:
            return {"DATA": (exc.smtp_code, exc.smtp_error)}
        except smtplib.SMTPSenderRefused as exc:
            return {"MAIL": (exc.smtp_code, exc.smtp_error)}


async def _all_records(bootstrap: str, topic: str) -> list[Any]:
    """Every record on the topic now (up to its end offsets when asked), read from the beginning."""
    partitions = [TopicPartition(topic, p) for p in await partition_numbers(bootstrap, topic)]
    assert partitions, f"{topic} has no partitions"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            for partition_records in batch.values():
                records.extend(partition_records)
        return records
    finally:
        await consumer.stop()


async def _enrollment(database_url: str, enrollment_id: str) -> asyncpg.Record | None:
    return await fetch_one(
        database_url,
        "select status, stop_reason, replied_at, bounced_at, bounce_reason, failure_reason"
        " from enrollments where enrollment_id = $1",
        enrollment_id,
    )


async def _replied(database_url: str, enrollment_id: str) -> None:
    """Until the read model says the enrollment was replied to."""

    async def replied() -> bool:
        row = await _enrollment(database_url, enrollment_id)
        return row is not None and row["replied_at"] is not None

    await eventually(replied, what="the enrollment replied in the read model")


async def test_a_reply_delivered_to_the_smtp_listener_marks_the_enrollment_replied(
    settings: Settings, smtp_server: RecordingSmtpServer, manual_clock: ManualClock
) -> None:
    assert settings.database_url
    account = f"acct-{uuid.uuid4().hex[:6]}"
    rcpt = f"reply+{account}@{REPLY_DOMAIN}"
    async with (
        _sent(settings, manual_clock, smtp_server, account) as eid,
        running(_receiver(settings, manual_clock)) as receiver,
        running(_inbound(settings)),
    ):
        mail = _mail(rcpt, "<r-1@example.org>", message_id_header(eid))
        assert await asyncio.to_thread(_send, receiver.smtp.port, [rcpt], mail) == {}

        await _replied(settings.database_url, eid)
    row = await _enrollment(settings.database_url, eid)
    assert row is not None and (row["status"], row["stop_reason"]) == ("stopped", "replied")


async def test_a_reply_to_the_per_account_reply_to_of_a_sent_step_reaches_its_enrollment(
    settings: Settings, smtp_server: RecordingSmtpServer, manual_clock: ManualClock
) -> None:
    """The sender's Reply-To names the account (`reply+{account}@...`): a person replying to the email
    as sent reaches the receiver, which reads the account from the address, and the enrollment is
    replied. Two accounts' emails carry their own tags."""
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    topics = Topics(settings.topic_prefix)
    identity = replace(IDENTITY, reply_to=f"Acme replies <reply+{{account}}@{REPLY_DOMAIN}>")
    accounts = [f"acct-{uuid.uuid4().hex[:6]}", f"Acct.{uuid.uuid4().hex[:6]}"]
    contacts = dict(zip(accounts, ["ada", "bob"], strict=True))  # dispatch_steps tells them apart by id
    async with running_worker(settings):
        enrollments = {}
        for account, contact in contacts.items():
            steps = await dispatch_steps(
                settings, manual_clock, account, {contact: f"{contact}@{account}.example"}
            )
            enrollments[account] = steps[contact]
        async with running(new_dispatcher(settings, smtp_server, manual_clock, identity=identity)):
            await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 2)
        sent = {a: smtp_server.received_for(f"{c}@{a}.example")[0].message for a, c in contacts.items()}
        assert {a: str(m["Reply-To"]) for a, m in sent.items()} == {
            a: f"Acme replies <reply+{a}@{REPLY_DOMAIN}>" for a in accounts
        }
        first = accounts[0]
        reply_to = email.utils.parseaddr(str(sent[first]["Reply-To"]))[1]
        async with running(_receiver(settings, manual_clock)) as receiver, running(_inbound(settings)):
            mail = _mail(reply_to, "<r-tag@example.org>", str(sent[first]["Message-ID"]))
            assert await asyncio.to_thread(_send, receiver.smtp.port, [reply_to], mail) == {}
            await _replied(database_url, enrollments[first])
        other = await _enrollment(database_url, enrollments[accounts[1]])
        assert other is not None and other["replied_at"] is None


async def test_a_vacation_auto_reply_without_auto_submitted_is_ignored_and_counted(
    settings: Settings, smtp_server: RecordingSmtpServer, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    topics = Topics(settings.topic_prefix)
    account = f"acct-{uuid.uuid4().hex[:6]}"
    rcpt = f"reply+{account}@{REPLY_DOMAIN}"
    before = metrics.INBOUND_AUTO_REPLIES.labels("X-Autoreply")._value.get()
    async with _sent(settings, manual_clock, smtp_server, account) as eid:
        ours = message_id_header(eid)
        inbound = _inbound(settings)
        async with running(_receiver(settings, manual_clock)) as receiver, running(inbound):
            for mail in (
                _mail(rcpt, "<ooo-1@example.org>", ours, "Out of Office: back on Monday", X_Autoreply="yes"),
                _mail(rcpt, "<ooo-2@example.org>", ours, "Abwesenheitsnotiz", Precedence="auto_reply"),
                # Two weak signals together: a vacation subject and an empty Return-Path.
                _mail(rcpt, "<ooo-3@example.org>", ours, "Automatic reply: Hi Ada", Return_Path="<>"),
            ):
                assert await asyncio.to_thread(_send, receiver.smtp.port, [rcpt], mail) == {}
            await eventually(lambda: _true(inbound.auto_replies >= 3), what="three auto-replies handled")
        commands = await _all_records(bootstrap, topics.commands)
    assert inbound.auto_replies == 3 and inbound.replies == 0
    assert not [c for c in commands if json.loads(c.value)["type"] == "ReplyDetected.v1"]
    assert metrics.INBOUND_AUTO_REPLIES.labels("X-Autoreply")._value.get() == before + 1
    row = await _enrollment(database_url, eid)
    assert row is not None and row["replied_at"] is None and row["status"] != "stopped"


async def _true(value: bool) -> bool:
    return value


def _dsn(rcpt: str, reported: str, status: str, action: str) -> bytes:
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        f"To: {rcpt}\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn-{uuid.uuid4().hex[:8]}@mx.example.org>\r\n"
        f"MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="BOUND"\r\n'
        f"\r\n"
        f"--BOUND\r\n"
        f"Content-Type: text/plain\r\n\r\n"
        f"Your message could not be delivered.\r\n"
        f"--BOUND\r\n"
        f"Content-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; ada@example.org\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        f"--BOUND\r\n"
        f"Content-Type: text/rfc822-headers\r\n\r\n"
        f"From: Acme Recruiting <jobs@acme.example>\r\n"
        f"To: ada@example.org\r\n"
        f"Message-ID: {reported}\r\n"
        f"Subject: Hi Ada (1)\r\n\r\n"
        f"--BOUND--\r\n"
    ).encode()


async def test_a_delivery_status_notification_for_our_message_bounces_the_enrollment(
    settings: Settings, smtp_server: RecordingSmtpServer, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    topics = Topics(settings.topic_prefix)
    account = f"acct-{uuid.uuid4().hex[:6]}"
    rcpt = f"bounces+{account}@{REPLY_DOMAIN}"
    async with _sent(settings, manual_clock, smtp_server, account) as eid:
        inbound = _inbound(settings)
        async with running(_receiver(settings, manual_clock)) as receiver, running(inbound):
            dsn = _dsn(rcpt, message_id_header(eid), "5.1.1", "failed")
            assert await asyncio.to_thread(_send, receiver.smtp.port, [rcpt], dsn, "") == {}
            [bounce] = await commands_of_type(bootstrap, topics, "BounceDetected.v1", 1)

            async def bounced() -> bool:
                row = await _enrollment(database_url, eid)
                return row is not None and row["bounced_at"] is not None

            await eventually(bounced, what="the enrollment bounced in the read model")
    assert bounce["data"]["enrollment_id"] == eid and bounce["data"]["bounce_type"] == "hard"
    assert bounce["command_id"].startswith("dsn:<dsn-")
    assert inbound.replies == 0 and inbound.bounces == 1
    row = await _enrollment(database_url, eid)
    assert row is not None and row["status"] == "failed" and row["replied_at"] is None


async def test_unmatched_mail_is_kept_for_inspection_not_dead_lettered(
    settings: Settings, manual_clock: ManualClock, db: asyncpg.Connection
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    topics = Topics(settings.topic_prefix)
    account = f"acct-{uuid.uuid4().hex[:6]}"
    rcpt = f"reply+{account}@{REPLY_DOMAIN}"
    inbound = _inbound(settings)
    async with running(_receiver(settings, manual_clock)) as receiver, running(inbound):
        stray = _mail(rcpt, "<stray-1@example.org>", "<someone-else@elsewhere.example>", "Hello?")
        assert await asyncio.to_thread(_send, receiver.smtp.port, [rcpt], stray) == {}
        # The same message again (a retrying sender): still one row.
        assert await asyncio.to_thread(_send, receiver.smtp.port, [rcpt], stray) == {}
        fresh = _mail(rcpt, "<fresh-1@example.org>", None, "A question")
        assert await asyncio.to_thread(_send, receiver.smtp.port, [rcpt], fresh) == {}
        await eventually(lambda: _true(inbound.unmatched >= 3), what="three unmatched messages handled")
    rows = await db.fetch(
        "select account_id, inbound_message_id, reason, subject from inbound_unmatched"
        " order by inbound_message_id"
    )
    assert [(r["account_id"], r["inbound_message_id"]) for r in rows] == [
        (account, "<fresh-1@example.org>"),
        (account, "<stray-1@example.org>"),
    ]
    assert rows[0]["reason"] == "no In-Reply-To or References"
    assert rows[1]["reason"].startswith("none of <someone-else@elsewhere.example>")
    assert inbound.dead_letters == 0
    assert await _all_records(bootstrap, topics.dead_letters) == []


LONG_SUBJECT = "\r\n ".join(["x" * 900] * 6)  # folded: 5,400 characters of subject


async def test_the_unmatched_table_is_bounded(
    settings: Settings, manual_clock: ManualClock, db: asyncpg.Connection
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap and settings.database_url
    topics = Topics(settings.topic_prefix)
    account = f"acct-{uuid.uuid4().hex[:6]}"
    rcpt = f"reply+{account}@{REPLY_DOMAIN}"
    inbound = InboundService(
        bootstrap, topics, settings.database_url, settings.group_id, unmatched_max_rows=2
    )
    async with running(_receiver(settings, manual_clock)) as receiver, running(inbound):
        for i in range(4):
            mail = _mail(rcpt, f"<stray-{i}@example.org>", "<unknown@elsewhere.example>", LONG_SUBJECT)
            assert await asyncio.to_thread(_send, receiver.smtp.port, [rcpt], mail) == {}
        await eventually(lambda: _true(inbound.unmatched >= 4), what="four unmatched messages handled")
    rows = await db.fetch(
        "select inbound_message_id, length(subject) as n from inbound_unmatched order by id"
    )
    # Four kept, the oldest two pruned (records of different Message-IDs may be handled in any order).
    assert inbound.unmatched == 4 and len(rows) == 2
    assert all(r["n"] <= 1000 for r in rows)


async def test_rcpt_outside_the_reply_domain_is_550_and_an_oversized_message_552(
    settings: Settings, manual_clock: ManualClock
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    topics = Topics(settings.topic_prefix)
    account = f"acct-{uuid.uuid4().hex[:6]}"
    rcpt = f"reply+{account}@{REPLY_DOMAIN}"
    async with running(_receiver(settings, manual_clock, max_message_bytes=4096)) as receiver:
        port = receiver.smtp.port
        refused = await asyncio.to_thread(_send, port, ["someone@gmail.example"], _mail("x", "<f@x>", None))
        assert refused["someone@gmail.example"][0] == 550
        # In the domain but naming no account (no +tag, no mailbox mapping, no default account).
        refused = await asyncio.to_thread(_send, port, [f"reply@{REPLY_DOMAIN}"], _mail("x", "<g@x>", None))
        assert refused[f"reply@{REPLY_DOMAIN}"][0] == 550
        big = _mail(rcpt, "<big@example.org>", None) + b"x" * 10_000 + b"\r\n"
        refused = await asyncio.to_thread(_send, port, [rcpt], big)
        assert next(iter(refused.values()))[0] == 552
        assert receiver.smtp.published == 0
    assert await _all_records(bootstrap, topics.inbound_email) == []


async def test_past_the_connection_limit_a_new_smtp_connection_is_told_421(
    settings: Settings, manual_clock: ManualClock
) -> None:
    receiver = _receiver(settings, manual_clock, max_connections=2)
    async with running(receiver):
        assert receiver.smtp is not None
        port = receiver.smtp.port
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, _ in held:
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"220 ")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"421 ")
        writer.close()
        for _, held_writer in held:  # once they go, a new connection is served again
            held_writer.close()
            await held_writer.wait_closed()
        await eventually(lambda: _true(receiver.smtp is not None and receiver.smtp.connections == 0))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"220 ")
        writer.close()


async def test_a_publish_kafka_did_not_acknowledge_is_answered_451(
    settings: Settings, manual_clock: ManualClock
) -> None:
    account = f"acct-{uuid.uuid4().hex[:6]}"
    rcpt = f"reply+{account}@{REPLY_DOMAIN}"
    receiver = _receiver(settings, manual_clock, publish_timeout_s=0.001)
    async with running(receiver):
        refused = await asyncio.to_thread(_send, receiver.smtp.port, [rcpt], _mail(rcpt, "<t@x>", None))
    assert refused["DATA"][0] == 451


async def test_another_accounts_message_id_cannot_affect_this_account(
    settings: Settings, smtp_server: RecordingSmtpServer, manual_clock: ManualClock, db: asyncpg.Connection
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    topics = Topics(settings.topic_prefix)
    victim = f"acct-{uuid.uuid4().hex[:6]}"
    intruder = f"other-{uuid.uuid4().hex[:6]}"
    async with _sent(settings, manual_clock, smtp_server, victim) as eid:
        ours = message_id_header(eid)
        inbound = _inbound(settings)
        async with running(_receiver(settings, manual_clock)) as receiver, running(inbound):
            rcpt = f"reply+{intruder}@{REPLY_DOMAIN}"
            forged_reply = _mail(rcpt, "<forged-1@example.org>", ours)
            forged_dsn = _dsn(rcpt, ours, "5.1.1", "failed")
            for mail in (forged_reply, forged_dsn):
                assert await asyncio.to_thread(_send, receiver.smtp.port, [rcpt], mail) == {}
            await eventually(lambda: _true(inbound.unmatched >= 2), what="both forged messages handled")
        commands = await _all_records(bootstrap, topics.commands)
    kinds = {json.loads(c.value)["type"] for c in commands}
    assert "ReplyDetected.v1" not in kinds and "BounceDetected.v1" not in kinds
    rows = await db.fetch("select account_id, reason from inbound_unmatched order by id")
    assert [r["account_id"] for r in rows] == [intruder, intruder]
    assert all(r["reason"] == f"{ours} was sent by another account" for r in rows)
    row = await _enrollment(database_url, eid)
    assert row is not None and row["replied_at"] is None and row["bounced_at"] is None


@pytest.fixture
def imap_server() -> Any:
    with DovecotImapServer() as server:
        yield server


async def test_an_imap_poller_restarted_mid_mailbox_publishes_each_message_once(
    settings: Settings, manual_clock: ManualClock, imap_server: DovecotImapServer, db: asyncpg.Connection
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    topics = Topics(settings.topic_prefix)
    account = f"acct-{uuid.uuid4().hex[:6]}"
    rcpt = f"reply+{account}@{REPLY_DOMAIN}"
    for i in range(6):
        imap_server.append(_mail(rcpt, f"<imap-{i}@example.org>", f"<parent-{i}@acme.example>"))
    imap_server.append(_mail("someone@elsewhere.example", "<no-account@example.org>", None))
    config = ImapConfig(
        host=imap_server.host,
        port=imap_server.port,
        username=imap_server.user,
        password=imap_server.password,
        tls=False,
        batch=2,
        poll_interval_s=0.2,
    )

    def published(records: list[Any]) -> Counter[str]:
        return Counter(json.loads(r.value)["message_id"] for r in records)

    first = _receiver(settings, manual_clock, smtp_host=None, imap=config)
    async with running(first):
        await read_until(bootstrap, topics.inbound_email, lambda rs: len(rs) >= 3)
    # Stopped mid-mailbox: the first poller read some of the 7 messages, not all.
    assert 3 <= first.pollers[0].published < 6
    imap_server.append(_mail(rcpt, "<imap-late@example.org>", "<parent-late@acme.example>"))
    second = _receiver(settings, manual_clock, smtp_host=None, imap=config)
    async with running(second):
        records = await read_until(bootstrap, topics.inbound_email, lambda rs: len(published(rs)) >= 7)
        # Mail arriving while the poller waits (IDLE on dovecot) is read too.
        imap_server.append(_mail(rcpt, "<imap-idle@example.org>", "<parent-idle@acme.example>"))
        records = await read_until(bootstrap, topics.inbound_email, lambda rs: len(published(rs)) >= 8)
        await eventually(lambda: _true(second.pollers[0].kept == 1), what="the account-less message kept")
        assert second.pollers[0].idle_waits >= 1  # dovecot announces IDLE: the poller waited with it
    counts = published(records)
    assert counts == Counter(
        {f"<imap-{i}@example.org>": 1 for i in range(6)}
        | {"<imap-late@example.org>": 1, "<imap-idle@example.org>": 1}
    )
    assert all(r.key.decode() == f"{account}/{json.loads(r.value)['message_id']}" for r in records)
    checkpoint = await db.fetchrow("select uidvalidity, last_uid from inbound_imap_checkpoints")
    assert checkpoint is not None and checkpoint["last_uid"] == 9
    [kept] = await db.fetch("select account_id, inbound_message_id from inbound_unmatched")
    assert (kept["account_id"], kept["inbound_message_id"]) == (None, "<no-account@example.org>")


async def test_the_worker_runs_the_receiver_role_from_its_settings(settings: Settings) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    topics = Topics(settings.topic_prefix)
    configured = settings.model_copy(
        update={"receiver_domain": REPLY_DOMAIN, "receiver_account": "solo", "receiver_smtp_port": 0}
    )
    async with running_worker(configured, roles=("receiver",)) as worker:
        assert worker.receiver is not None and worker.receiver.smtp is not None
        rcpt = f"anything@{REPLY_DOMAIN}"
        mail = _mail(rcpt, "<w-1@example.org>", "<ours@acme.example>")
        assert await asyncio.to_thread(_send, worker.receiver.smtp.port, [rcpt], mail) == {}
        [record] = await read_until(bootstrap, topics.inbound_email, lambda rs: len(rs) >= 1)
    assert record.key == b"solo/<w-1@example.org>"
    assert json.loads(record.value)["in_reply_to"] == "<ours@acme.example>"


async def test_a_changed_uidvalidity_reads_the_mailbox_again_and_a_server_without_idle_is_polled(
    settings: Settings, manual_clock: ManualClock, db: asyncpg.Connection
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    topics = Topics(settings.topic_prefix)
    account = f"acct-{uuid.uuid4().hex[:6]}"
    rcpt = f"reply+{account}@{REPLY_DOMAIN}"

    def published(records: list[Any]) -> Counter[str]:
        return Counter(json.loads(r.value)["message_id"] for r in records)

    with DovecotImapServer(idle=False) as imap:
        config = ImapConfig(
            host=imap.host,
            port=imap.port,
            username=imap.user,
            password=imap.password,
            tls=False,
            poll_interval_s=0.2,
        )
        kept = _mail(rcpt, "<u-1@example.org>", "<p-1@acme.example>")
        imap.append(kept, "Replies")
        imap.append(_mail(rcpt, "<u-2@example.org>", "<p-2@acme.example>"), "Replies")
        old_uidvalidity = imap.uidvalidity("Replies")
        first = _receiver(settings, manual_clock, smtp_host=None, imap=config, imap_mailboxes=("Replies",))
        async with running(first):
            await read_until(bootstrap, topics.inbound_email, lambda rs: len(published(rs)) >= 2)
        # The mailbox is renumbered: one old message in it again, one new one.
        imap.recreate("Replies")
        imap.append(kept, "Replies")
        imap.append(_mail(rcpt, "<u-3@example.org>", "<p-3@acme.example>"), "Replies")
        new_uidvalidity = imap.uidvalidity("Replies")
        assert new_uidvalidity != old_uidvalidity
        second = _receiver(settings, manual_clock, smtp_host=None, imap=config, imap_mailboxes=("Replies",))
        async with running(second) as receiver:
            # Polled, not IDLE: the server does not announce it. Mail arriving while it waits is read too.
            await read_until(bootstrap, topics.inbound_email, lambda rs: "<u-3@example.org>" in published(rs))
            imap.append(_mail(rcpt, "<u-4@example.org>", "<p-4@acme.example>"), "Replies")
            records = await read_until(
                bootstrap, topics.inbound_email, lambda rs: "<u-4@example.org>" in published(rs)
            )
        assert receiver.pollers[0].uidvalidity_changes == 1
        assert receiver.pollers[0].poll_waits >= 1 and receiver.pollers[0].idle_waits == 0
    # Read again from the start under the new UIDVALIDITY: the old message once more, with the same key.
    assert published(records) == Counter(
        {"<u-1@example.org>": 2, "<u-2@example.org>": 1, "<u-3@example.org>": 1, "<u-4@example.org>": 1}
    )
    assert len({r.key for r in records if json.loads(r.value)["message_id"] == "<u-1@example.org>"}) == 1
    checkpoint = await db.fetchrow("select uidvalidity, last_uid from inbound_imap_checkpoints")
    assert checkpoint is not None and (checkpoint["uidvalidity"], checkpoint["last_uid"]) == (
        new_uidvalidity,
        3,
    )
