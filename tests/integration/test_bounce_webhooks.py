"""Bounce webhooks through the real servers: the worker's real dispatcher sends a step through a real SMTP
server (the delivery ledger keeps its Message-ID), a provider-shaped callback is POSTed to the endpoint the
worker's `unsubscribe` role serves on 127.0.0.1, and the real decider and projector record what it
means. Callbacks that are unsigned, malformed, oversize or about another account's message are refused
with a coded 4xx, counted, and publish nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
from prometheus_client import REGISTRY

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.mail.bounce_webhooks import SIGNATURE_HEADER, body_signature
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition, parse_event
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.worker import Worker
from tests.integration.test_contact_directory import sending
from tests.integration.test_unsubscribe_endpoint import records_in
from tests.servers.smtp import RecordingSmtpServer
from tests.support import eventually, publish_enroll, read_until, running_worker

ROLES = ("decider", "projector", "scheduler", "dispatcher", "unsubscribe")
SECRET, OLD_SECRET = "smtp2go-secret-0123456789", "older-secret-0123456789"
GENERIC_SECRET = "generic-secret-0123456789"


def campaign(account_id: str) -> CampaignDefinition:
    """Step 1 at once, step 2 a day later: after step 1 the enrollment is running, waiting."""
    return CampaignDefinition.model_validate(
        {
            "campaign_id": "welcome",
            "account_id": account_id,
            "version": 1,
            "track_opens": False,
            "steps": [
                {"channel": "email", "delay": "PT0S", "content": {"subject": "Hi", "body": "Hello"}},
                {"channel": "email", "delay": "P1D", "content": {"subject": "Again", "body": "Hello?"}},
            ],
        }
    )


def webhook_settings(settings: Settings, smtp: RecordingSmtpServer, account: str, other: str) -> Settings:
    endpoints = [
        {"name": "acme-smtp2go", "account_id": account, "format": "smtp2go", "secrets": [SECRET, OLD_SECRET]},
        {"name": "acme-generic", "account_id": account, "format": "generic", "secrets": [GENERIC_SECRET]},
        {"name": "other-smtp2go", "account_id": other, "format": "smtp2go", "secrets": ["o" * 24]},
    ]
    return sending(settings, smtp).model_copy(
        update={"unsubscribe_port": 0, "bounce_webhooks": json.dumps(endpoints)}
    )


async def sent_message_id(smtp: RecordingSmtpServer, db: asyncpg.Connection, address: str) -> str:
    """The Message-ID of step 1 as the SMTP server received it, once the ledger says it was sent."""

    async def sent() -> bool:
        state = await db.fetchval("select state from delivery_ledger where recipient = $1", address)
        return bool(smtp.received_for(address)) and state == "sent"

    await eventually(sent, timeout=60, what=f"step 1 sent to {address}")
    [received] = smtp.received_for(address)
    return str(received.message["Message-ID"])


def smtp2go_bounce(address: str, message_id: str | None, bounce: str = "hard") -> dict[str, Any]:
    """Shaped like SMTP2GO's live bounce callbacks, with the Message-Id header asked for in the webhook's
    "Email headers" setting."""
    payload: dict[str, Any] = {
        "email_id": "1vomg2-abc123",
        "event": "bounce",
        "time": "2026-03-02T09:29:00Z",
        "sendtime": "2026-03-02T09:28:58.199324+00:00",
        "rcpt": address,
        "sender": "hello@acme.example",
        "bounce": bounce,
        "context": f"RCPT TO:<{address}>",
        "host": "mx.example.org [192.0.2.1]",
        "message": "550 5.1.1 <" + address + ">: Recipient address rejected: User unknown",
    }
    if message_id is not None:
        payload["Message-Id"] = message_id
    return payload


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def url(worker: Worker, endpoint: str) -> str:
    assert worker.unsubscribe is not None
    return f"{worker.unsubscribe.base_url}/webhooks/bounces/{endpoint}"


def counted(fmt: str, result: str) -> float:
    labels = {"format": fmt, "result": result}
    return REGISTRY.get_sample_value("enrollstream_bounce_webhooks_total", labels) or 0.0


async def results_for(bootstrap: str, topics: Topics, prefix: bytes, count: int) -> list[dict[str, Any]]:
    records = await read_until(
        bootstrap, topics.command_results, lambda rs: sum(prefix in r.value for r in rs) >= count
    )
    return [json.loads(r.value) for r in records if prefix in r.value]


async def test_an_smtp2go_hard_bounce_fails_the_enrollment_once_however_often_it_arrives(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer, db: asyncpg.Connection
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account, other = f"acct-{uuid.uuid4().hex[:6]}", f"acct-{uuid.uuid4().hex[:6]}"
    await publish_campaign(bootstrap, topics.campaigns, campaign(account))
    configured = webhook_settings(settings, smtp_server, account, other)
    async with running_worker(configured, roles=ROLES) as worker, aiohttp.ClientSession() as http:
        await publish_enroll(bootstrap, topics.commands, account, "ada", "ada@example.org")
        message_id = await sent_message_id(smtp_server, db, "ada@example.org")
        callback = smtp2go_bounce("ada@example.org", message_id)
        # SMTP2GO retries a callback it is not sure arrived; the older secret still works (rotation).
        for secret in (SECRET, SECRET, OLD_SECRET):
            async with http.post(
                url(worker, "acme-smtp2go"), json=callback, headers=bearer(secret)
            ) as answer:
                assert answer.status == 200, await answer.text()
                assert (await answer.json())["status"] == "accepted"

        async def failed() -> bool:
            row = await db.fetchrow("select status from enrollments where contact_id = 'ada'")
            return row is not None and row["status"] == "failed"

        await eventually(failed, what="the enrollment failed")
        results = await results_for(bootstrap, topics, b'"bounce:', 3)

    assert sorted(r["status"] for r in results) == ["accepted", "duplicate", "duplicate"]
    [command_id] = {r["command_id"] for r in results}  # one command id: the message's and the kind's
    assert command_id.startswith(f"bounce:{account}/ada:es-") and command_id.endswith(":hard_bounce")
    row = await db.fetchrow(
        "select status, stage, failure_reason, bounced_at, bounce_reason, next_execution_at"
        " from enrollments where contact_id = 'ada'"
    )
    assert row["status"] == "failed" and row["failure_reason"] == "bounced"
    assert row["stage"] == "bounced" and row["bounced_at"] is not None
    assert "User unknown" in row["bounce_reason"] and row["next_execution_at"] is None  # step 2 never goes
    events = await read_until(
        bootstrap, topics.events, lambda rs: any(b"EnrollmentFailed" in r.value for r in rs)
    )
    bounced = [e for e in map(parse_event, (r.value for r in events)) if e.type == "MessageBounced.v1"]
    assert len(bounced) == 1 and bounced[0].data.bounce_type == "hard"  # type: ignore[union-attr]


async def test_a_soft_bounce_is_recorded_and_the_sequence_carries_on(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer, db: asyncpg.Connection
) -> None:
    """Today's domain for a soft bounce learned later: MessageBounced (soft) is recorded, the stage and
    status do not change, the next step stays scheduled. Sent in the generic form, signed."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account, other = f"acct-{uuid.uuid4().hex[:6]}", f"acct-{uuid.uuid4().hex[:6]}"
    await publish_campaign(bootstrap, topics.campaigns, campaign(account))
    configured = webhook_settings(settings, smtp_server, account, other)
    async with running_worker(configured, roles=ROLES) as worker, aiohttp.ClientSession() as http:
        await publish_enroll(bootstrap, topics.commands, account, "ada", "ada@example.org")
        message_id = await sent_message_id(smtp_server, db, "ada@example.org")
        body = json.dumps(
            {
                "event_id": "evt-1",
                "type": "soft_bounce",
                "message_id": message_id,
                "detail": "452 mailbox full",
            }
        ).encode()
        t = int(time.time())
        signature = {SIGNATURE_HEADER: f"t={t},v1={body_signature(GENERIC_SECRET.encode(), t, body)}"}
        headers = {**signature, "Content-Type": "application/json"}
        async with http.post(url(worker, "acme-generic"), data=body, headers=headers) as answer:
            assert answer.status == 200, await answer.text()
        events = await read_until(
            bootstrap, topics.events, lambda rs: any(b"MessageBounced" in r.value for r in rs)
        )
        [result] = await results_for(bootstrap, topics, b'"bounce:', 1)

    assert result["status"] == "accepted"
    [bounced] = [e for e in map(parse_event, (r.value for r in events)) if e.type == "MessageBounced.v1"]
    assert bounced.data.bounce_type == "soft" and "452 mailbox full" in bounced.data.detail  # type: ignore[union-attr]
    assert not any(b"EnrollmentFailed" in r.value or b"EnrollmentStopped" in r.value for r in events)
    row = await db.fetchrow(
        "select status, stage, failure_reason, next_execution_at from enrollments where contact_id = 'ada'"
    )
    assert row["status"] == "active" and row["stage"] == "sent" and row["failure_reason"] is None
    assert row["next_execution_at"] is not None  # step 2 still due tomorrow


async def test_an_smtp2go_complaint_opts_the_contact_out(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer, db: asyncpg.Connection
) -> None:
    """Form-encoded, without the Message-Id header: matched by the recipient within the account."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account, other = f"acct-{uuid.uuid4().hex[:6]}", f"acct-{uuid.uuid4().hex[:6]}"
    await publish_campaign(bootstrap, topics.campaigns, campaign(account))
    configured = webhook_settings(settings, smtp_server, account, other)
    async with running_worker(configured, roles=ROLES) as worker, aiohttp.ClientSession() as http:
        await publish_enroll(bootstrap, topics.commands, account, "ada", "Ada@Example.org")
        await sent_message_id(smtp_server, db, "Ada@Example.org")
        form = {"event": "spam", "rcpt": "ada@example.org", "email_id": "1vomg2-x", "time": "1772443740"}
        basic = base64.b64encode(f"smtp2go:{SECRET}".encode()).decode()
        async with http.post(
            url(worker, "acme-smtp2go"), data=form, headers={"Authorization": f"Basic {basic}"}
        ) as answer:
            assert answer.status == 200, await answer.text()

        async def opted_out() -> bool:
            row = await db.fetchrow("select status, stop_reason from enrollments where contact_id = 'ada'")
            return row is not None and row["stop_reason"] == "opted_out"

        await eventually(opted_out, what="the contact opted out")
        events = await read_until(
            bootstrap, topics.events, lambda rs: any(b"ContactOptedOut" in r.value for r in rs)
        )

    opted = [e for e in map(parse_event, (r.value for r in events)) if e.type == "ContactOptedOut.v1"]
    assert len(opted) == 1 and opted[0].data.channel == "complaint"  # type: ignore[union-attr]
    row = await db.fetchrow("select status, next_execution_at from enrollments where contact_id = 'ada'")
    assert row["status"] == "stopped" and row["next_execution_at"] is None


async def test_a_callback_about_another_accounts_message_has_no_effect_on_it(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer, db: asyncpg.Connection
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account, other = f"acct-{uuid.uuid4().hex[:6]}", f"acct-{uuid.uuid4().hex[:6]}"
    await publish_campaign(bootstrap, topics.campaigns, campaign(account))
    await publish_campaign(bootstrap, topics.campaigns, campaign(other))
    configured = webhook_settings(settings, smtp_server, account, other)
    unmatched = counted("smtp2go", "unmatched")
    async with running_worker(configured, roles=ROLES) as worker, aiohttp.ClientSession() as http:
        await publish_enroll(bootstrap, topics.commands, other, "bob", "bob@example.org")
        theirs = await sent_message_id(smtp_server, db, "bob@example.org")
        commands_before = await records_in(bootstrap, topics.commands, settings.partitions)
        # Our endpoint, with our secret, naming their message: by Message-ID, then by recipient only.
        for message_id in (theirs, None):
            callback = smtp2go_bounce("bob@example.org", message_id)
            async with http.post(
                url(worker, "acme-smtp2go"), json=callback, headers=bearer(SECRET)
            ) as answer:
                assert answer.status == 422
                assert (await answer.json())["reason"] == "unmatched"
        # Their endpoint with our secret: refused before anything is read.
        callback = smtp2go_bounce("bob@example.org", theirs)
        async with http.post(url(worker, "other-smtp2go"), json=callback, headers=bearer(SECRET)) as answer:
            assert answer.status == 403
        assert await records_in(bootstrap, topics.commands, settings.partitions) == commands_before

    assert counted("smtp2go", "unmatched") == unmatched + 2
    row = await db.fetchrow("select status, stage, bounced_at from enrollments where contact_id = 'bob'")
    assert row["status"] == "active" and row["stage"] == "sent" and row["bounced_at"] is None


async def test_unsigned_malformed_and_oversize_callbacks_are_refused_counted_and_publish_nothing(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account, other = f"acct-{uuid.uuid4().hex[:6]}", f"acct-{uuid.uuid4().hex[:6]}"
    configured = webhook_settings(settings, smtp_server, account, other)
    cases: list[tuple[str, dict[str, str], bytes, int, str, str]] = [
        # endpoint, headers, body, status, format counted, reason
        ("acme-smtp2go", {}, b"{}", 401, "smtp2go", "unauthorized"),
        ("acme-smtp2go", bearer("not-" + SECRET), b"{}", 403, "smtp2go", "bad_credentials"),
        ("acme-generic", {SIGNATURE_HEADER: "t=1,v1=00"}, b"{}", 403, "generic", "bad_credentials"),
        ("nobody", bearer(SECRET), b"{}", 404, "unknown", "unknown_endpoint"),
        ("acme-smtp2go", bearer(SECRET), b'{"event": "bounce", ', 400, "smtp2go", "malformed"),
        ("acme-smtp2go", bearer(SECRET), b'{"event": "exploded"}', 422, "smtp2go", "unknown_event"),
        ("acme-generic", bearer(GENERIC_SECRET), b'{"type": "hard_bounce"}', 400, "generic", "malformed"),
        (
            "acme-smtp2go",
            bearer(SECRET),
            b'{"event": "bounce", "bounce": "hard", "time": "0"}',
            422,
            "smtp2go",
            "bad_timestamp",
        ),
        (
            "acme-smtp2go",
            bearer(SECRET),
            b'{"event":"bounce","rcpt":"' + b"a" * 60_000 + b'"}',
            413,
            "smtp2go",
            "body_too_large",
        ),
    ]
    before = {(fmt, reason): counted(fmt, reason) for _, _, _, _, fmt, reason in cases}
    async with running_worker(configured, roles=("unsubscribe",)) as worker, aiohttp.ClientSession() as http:
        for endpoint, headers, body, status, _fmt, reason in cases:
            sent = {"Content-Type": "application/json", **headers}
            async with http.post(url(worker, endpoint), data=body, headers=sent) as answer:
                assert answer.status == status, (endpoint, reason, await answer.text())
                assert (await answer.json())["reason"] == reason
        # A delivered event is not a bounce: answered 200 so SMTP2GO does not retry it, nothing published.
        delivered = {"event": "delivered", "rcpt": "ada@example.org", "email_id": "1vomg2-x"}
        async with http.post(url(worker, "acme-smtp2go"), json=delivered, headers=bearer(SECRET)) as answer:
            assert answer.status == 200 and (await answer.json())["status"] == "ignored"
        # The server is still there after all of that.
        assert worker.unsubscribe is not None and worker.unsubscribe.bounces is not None
        async with http.get(f"{worker.unsubscribe.base_url}/o/not-a-token.gif") as answer:
            assert answer.status == 404

    for (fmt, reason), value in before.items():
        expected = sum(1 for c in cases if (c[4], c[5]) == (fmt, reason))
        assert counted(fmt, reason) == value + expected, (fmt, reason)
    assert await records_in(bootstrap, topics.commands, settings.partitions) == 0


async def test_a_failed_publish_is_503_and_a_body_too_slow_is_408_and_the_server_goes_on(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer, db: asyncpg.Connection
) -> None:
    """The provider retries a 5xx (the command id keeps the retry at one effect); a trickled body is cut
    off at the body timeout. Neither stops the server."""
    account, other = f"acct-{uuid.uuid4().hex[:6]}", f"acct-{uuid.uuid4().hex[:6]}"
    configured = webhook_settings(settings, smtp_server, account, other).model_copy(
        update={"unsubscribe_body_timeout_s": 0.5, "unsubscribe_publish_timeout_s": 1.0}
    )
    await db.execute(
        "insert into delivery_ledger (enrollment_id, step_index, attempt, message_id, message_id_header,"
        " account_id, contact_id, channel, sender, recipient, state, started_at)"
        " values ('enr-1', 0, 1, 'es-1', '<es-1@acme.example>', $1, 'ada', 'email', 'hello@acme.example',"
        " 'ada@example.org', 'sent', now())",
        account,
    )
    callback = smtp2go_bounce("ada@example.org", "<es-1@acme.example>")
    failed, slow = counted("smtp2go", "publish_failed"), counted("smtp2go", "body_timeout")
    async with running_worker(configured, roles=("unsubscribe",)) as worker, aiohttp.ClientSession() as http:
        server = worker.unsubscribe
        assert server is not None and server.producer is not None
        # A body that never finishes: 408 once the body timeout has passed, the connection closed.
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"POST /webhooks/bounces/acme-smtp2go HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {SECRET}\r\nContent-Length: 1000\r\n\r\n".encode()
            + b'{"event": "bou'
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        writer.close()

        await server.producer.stop()  # the broker connection is gone
        async with http.post(url(worker, "acme-smtp2go"), json=callback, headers=bearer(SECRET)) as answer:
            assert answer.status == 503
            assert (await answer.json())["reason"] == "publish_failed"
        async with http.get(f"{server.base_url}/o/not-a-token.gif") as answer:
            assert answer.status == 404  # still answering
    assert counted("smtp2go", "publish_failed") == failed + 1
    assert counted("smtp2go", "body_timeout") == slow + 1
