"""The dispatcher against the real broker, the real database, the real decider and a real SMTP server:
one send per attempt, outcomes reported as DeliveryReported, restarts that never send twice, and
per-sender rate limits on the injected clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain import ids
from enrollstream.domain.commands import (
    StepDue,
    StepDueData,
    delivery_deferral_command_id,
    delivery_report_command_id,
    step_due_command_id,
)
from enrollstream.domain.delivery_policy import SendLimits
from enrollstream.domain.events import Event, StepDeferred, StepDelivered, StepScheduled
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.dispatcher import DispatcherService
from tests.dispatch_support import (
    ONE_HOUR,
    campaign,
    commands_of_type,
    contacts_on_one_partition,
    dispatch_steps,
    events,
    message_id_header,
    new_dispatcher,
    running,
)
from tests.servers.clock import ManualClock
from tests.servers.smtp import Behaviour, RecordingSmtpServer
from tests.support import eventually, publish, read_until, running_worker


def _account() -> str:
    return f"acct-{uuid.uuid4().hex[:6]}"


async def _ledger(db: asyncpg.Connection, enrollment_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "select * from delivery_ledger where enrollment_id = $1 and step_index = 0 and attempt = 1",
        enrollment_id,
    )
    assert row is not None
    return row


async def test_a_step_is_sent_once_with_our_headers_and_a_second_dispatcher_only_reports_again(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    manual_clock: ManualClock,
    db: asyncpg.Connection,
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = _account()
    async with running_worker(settings):
        enrollments = await dispatch_steps(settings, manual_clock, account, {"ada": "ada@example.org"})
        eid = enrollments["ada"]
        async with running(new_dispatcher(settings, smtp_server, manual_clock)) as first:
            reports = await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 1)
            assert first.sends == 1
        # (a) exactly one email, with our Message-ID and one-click unsubscribe headers
        [received] = smtp_server.messages
        assert received.rcpt_tos == ("ada@example.org",)
        message = received.message
        assert message["Message-ID"] == message_id_header(eid)
        assert message["List-Unsubscribe"].startswith("<https://u.acme.example/u/")
        assert "mailto:unsubscribe@acme.example" in message["List-Unsubscribe"]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        # ... as bytes on the wire, not RFC 2047 encoded-words a mailbox provider would not read
        head = received.content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").split(b"\r\n")
        assert any(line.startswith(b"List-Unsubscribe: <https://u.acme.example/u/") for line in head)
        assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in head
        assert message["Subject"] == "Hi Ada (1)"
        [report] = reports
        message_id = ids.message_id(eid, 0, 1)
        assert report["command_id"] == delivery_report_command_id(message_id)
        assert report["data"]["outcome"] == "sent"
        assert report["data"]["provider_message_id"].startswith("2.0.0 Ok: queued as TEST")
        delivered = await events(bootstrap, topics, lambda es: any(e.type == "StepDelivered.v1" for e in es))
        assert [e.enrollment_id for e in delivered if e.type == "StepDelivered.v1"] == [eid]
        row = await _ledger(db, eid)
        assert (row["state"], row["reported"], row["message_id"]) == ("sent", True, message_id)
        assert row["message_id_header"] == message_id_header(eid)
        assert row["started_at"] == manual_clock() and row["finished_at"] == manual_clock()

        # (b) the same StepDispatched again, through a dispatcher that reads the topic from scratch
        again = new_dispatcher(settings, smtp_server, manual_clock, group_id=f"{settings.group_id}-again")
        async with running(again):
            reports = await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 2)
            assert again.sends == 0
        assert len(smtp_server.messages) == 1
        assert reports[1] == reports[0]  # the same command, byte for byte equal in meaning
        results = await _results_for(bootstrap, topics, report["command_id"], 2)
        assert [r["status"] for r in results] == ["accepted", "duplicate"]
        # The duplicate's result is committed with whatever it decided (nothing), so this is final.
        final = await events(bootstrap, topics, lambda es: any(e.type == "StepDelivered.v1" for e in es))
        assert sum(e.type == "StepDelivered.v1" for e in final) == 1


async def _results_for(bootstrap: str, topics: Topics, command_id: str, count: int) -> list[dict[str, Any]]:
    def matching(records: list[Any]) -> list[dict[str, Any]]:
        parsed = [json.loads(r.value) for r in records]
        return [p for p in parsed if p["command_id"] == command_id]

    records = await read_until(bootstrap, topics.command_results, lambda rs: len(matching(rs)) >= count)
    return matching(records)


async def test_a_5xx_on_the_recipient_fails_451_is_retryable_an_invalid_address_fails_and_our_error_stops(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    manual_clock: ManualClock,
    db: asyncpg.Connection,
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    smtp_server.behave("gone@example.org", Behaviour.REJECT_RCPT)
    smtp_server.behave("busy@example.org", Behaviour.DEFER_RCPT)
    account = _account()
    async with running_worker(settings):
        enrollments = await dispatch_steps(
            settings,
            manual_clock,
            account,
            {
                "gone": "gone@example.org",
                "busy": "busy@example.org",
                "eve": "eve@example.org",
                "nobody": "nobody at example.org",
            },
            # CR LF in a name is refused at the contract now (a dead letter, issue 12); a Unicode line
            # separator is not a control character and passes it, so the message builder refuses it.
            names={"eve": "Eve\u2028Bcc: everyone@example.org"},
        )
        async with running(new_dispatcher(settings, smtp_server, manual_clock)):
            reports = await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 4)
            by_contact = {r["data"]["contact_id"]: r["data"] for r in reports}
            # (c) 550 at RCPT: a hard bounce; the decider fails the enrollment, reason bounced
            assert by_contact["gone"]["outcome"] == "bounced"
            assert by_contact["gone"]["bounce_type"] == "hard"
            assert by_contact["gone"]["detail"].startswith("rcpt: 550")
            # (d) 451: failed, retryable; the decider schedules attempt 2
            assert by_contact["busy"]["outcome"] == "failed"
            assert by_contact["busy"]["retryable"] is True
            assert by_contact["busy"]["detail"].startswith("rcpt: 451")
            # A header injection through the contact's name: refused, reported as our error, not sent
            assert by_contact["eve"]["outcome"] == "error"
            assert "HeaderInjectionRefused" in by_contact["eve"]["detail"]
            # An address that cannot be a recipient: refused before connecting, the enrollment fails
            assert by_contact["nobody"]["outcome"] == "invalid_recipient"
            assert "InvalidAddress" in by_contact["nobody"]["detail"]

            def settled(es: list[object]) -> bool:
                types = {(e.contact_id, e.type) for e in es}  # type: ignore[attr-defined]
                wanted = {
                    ("gone", "EnrollmentFailed.v1"),
                    ("busy", "StepFailed.v1"),
                    ("eve", "EnrollmentStopped.v1"),
                    ("nobody", "EnrollmentFailed.v1"),
                }
                return wanted <= types

            decided = await events(bootstrap, topics, settled)
        stopped = [e for e in decided if e.type == "EnrollmentStopped.v1"]
        assert {(e.enrollment_id, e.data.reason.value) for e in stopped} == {  # type: ignore[union-attr]
            (enrollments["eve"], "error"),
        }
        failed_enrollments = [e for e in decided if e.type == "EnrollmentFailed.v1"]
        assert {(e.enrollment_id, e.data.reason.value) for e in failed_enrollments} == {  # type: ignore[union-attr]
            (enrollments["gone"], "bounced"),
            (enrollments["nobody"], "invalid_recipient"),
        }
        failed = next(e for e in decided if e.type == "StepFailed.v1" and e.contact_id == "busy")
        assert (failed.data.retryable, failed.data.will_retry) == (True, True)  # type: ignore[union-attr]
        retry = [e for e in decided if e.type == "StepScheduled.v1" and e.contact_id == "busy"]
        assert [e.data.attempt for e in retry] == [1, 2]  # type: ignore[union-attr]
        assert smtp_server.messages == []  # neither got as far as the content
        assert (await _ledger(db, enrollments["gone"]))["state"] == "bounced"
        assert (await _ledger(db, enrollments["busy"]))["state"] == "failed"
        assert (await _ledger(db, enrollments["eve"]))["state"] == "error"
        assert (await _ledger(db, enrollments["nobody"]))["state"] == "invalid_recipient"


async def test_a_drop_after_the_content_is_unknown_and_never_resent_even_after_a_restart(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    manual_clock: ManualClock,
    db: asyncpg.Connection,
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    smtp_server.behave("maybe@example.org", Behaviour.DROP_AFTER_DATA)
    account = _account()
    async with running_worker(settings):
        enrollments = await dispatch_steps(settings, manual_clock, account, {"maybe": "maybe@example.org"})
        async with running(new_dispatcher(settings, smtp_server, manual_clock)):
            [report] = await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 1)
        assert report["data"]["outcome"] == "unknown"
        assert "after the content was handed over" in report["data"]["detail"]
        assert len(smtp_server.received_for("maybe@example.org")) == 1
        # Restart from scratch (a new group reads every StepDispatched again): nothing is resent.
        again = new_dispatcher(settings, smtp_server, manual_clock, group_id=f"{settings.group_id}-restart")
        async with running(again):
            reports = await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 2)
            assert again.sends == 0
        assert reports[1]["command_id"] == reports[0]["command_id"]
        assert len(smtp_server.received_for("maybe@example.org")) == 1
        decided = await events(
            bootstrap, topics, lambda es: any(e.type == "StepDeliveryUnknown.v1" for e in es)
        )
        assert sum(e.type == "StepDeliveryUnknown.v1" for e in decided) == 1
        assert (await _ledger(db, enrollments["maybe"]))["state"] == "unknown"


async def test_an_attempt_started_before_a_crash_is_reported_unknown_and_not_sent(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    manual_clock: ManualClock,
    db: asyncpg.Connection,
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = _account()
    async with running_worker(settings):
        enrollments = await dispatch_steps(settings, manual_clock, account, {"cy": "cy@example.org"})
        eid = enrollments["cy"]
        # What a dispatcher that died inside the send leaves behind: `started`, no outcome.
        started_at = manual_clock() - ONE_HOUR
        await db.execute(
            """insert into delivery_ledger (enrollment_id, step_index, attempt, message_id, message_id_header,
                   account_id, contact_id, channel, sender, recipient, state, started_at)
               values ($1, 0, 1, $2, $3, $4, 'cy', 'email', 'jobs@acme.example', 'cy@example.org',
                       'started', $5)""",
            eid,
            ids.message_id(eid, 0, 1),
            message_id_header(eid),
            account,
            started_at,
        )
        async with running(new_dispatcher(settings, smtp_server, manual_clock)) as dispatcher:
            [report] = await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 1)
            assert dispatcher.sends == 0
        assert report["data"]["outcome"] == "unknown"
        assert "never recorded" in report["data"]["detail"]
        assert smtp_server.messages == []
        row = await _ledger(db, eid)
        assert (row["state"], row["reported"], row["started_at"]) == ("unknown", True, started_at)
        await events(bootstrap, topics, lambda es: any(e.type == "StepDeliveryUnknown.v1" for e in es))


async def test_a_sender_over_its_hourly_limit_is_deferred_through_the_log_and_holds_back_nothing(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    manual_clock: ManualClock,
    db: asyncpg.Connection,
) -> None:
    """per_hour=1 and three steps on one partition, in this order: an email that goes out, an email
    over the limit, an SMS. The second is reported deferred (nothing started, nothing waits) and the
    SMS behind it goes out at once; the decider reschedules the deferred step, and fired again once
    the sender may send, it goes out as the same attempt's second dispatch."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap and settings.partitions
    account = _account()
    first, held = contacts_on_one_partition(account, "mail", 2, settings.partitions)
    [texted] = contacts_on_one_partition(account, "text", 1, settings.partitions)
    t0 = manual_clock()
    limits = SendLimits(per_hour=1)
    async with running_worker(settings):
        await publish_campaign(bootstrap, topics.campaigns, campaign(account, steps=1))
        texts = campaign(account, steps=1, channel="sms", campaign_id="texts")
        await publish_campaign(bootstrap, topics.campaigns, texts)
        for contact, campaign_id in ((first, "outreach"), (held, "outreach"), (texted, "texts")):
            facts = {"name": contact.title(), "email": f"{contact}@example.org", "mobile": "+15550100777"}
            await _command(
                settings, topics, t0, "Enroll.v1", account, contact, campaign_id=campaign_id, contact=facts
            )
        scheduled = await events(bootstrap, topics, lambda es: _count(es, "StepScheduled.v1") == 3)
        enrollment_of = {
            e.contact_id: e.enrollment_id or "" for e in scheduled if e.type == "ContactEnrolled.v1"
        }
        due = {e.contact_id: e.data.due_at for e in scheduled if isinstance(e, StepScheduled)}
        for contact in (first, held, texted):  # dispatched in this order, on one partition
            await _step_due(settings, topics, account, contact, enrollment_of[contact], due[contact])
            await events(bootstrap, topics, lambda es, c=contact: _count(es, "StepDispatched.v1", c) == 1)

        dispatcher = new_dispatcher(settings, smtp_server, manual_clock, limits=limits)
        async with running(dispatcher):
            reports = await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 3)
            # The SMS behind the deferred email went out with the clock standing still: nothing waited.
            [sms] = await read_until(bootstrap, topics.outbound_sms, lambda rs: len(rs) >= 1)
        assert json.loads(sms.value)["idempotency_key"] == ids.message_id(enrollment_of[texted], 0, 1)
        assert [m.rcpt_tos for m in smtp_server.messages] == [(f"{first}@example.org",)]
        assert (dispatcher.sends, dispatcher.deferrals) == (2, 1)
        by_contact = {r["data"]["contact_id"]: r for r in reports}
        assert by_contact[first]["data"]["outcome"] == by_contact[texted]["data"]["outcome"] == "sent"
        deferral = by_contact[held]
        held_message = ids.message_id(enrollment_of[held], 0, 1)
        assert deferral["command_id"] == delivery_deferral_command_id(held_message, 1)
        assert (deferral["data"]["outcome"], deferral["data"]["dispatch"]) == ("deferred", 1)
        assert datetime.fromisoformat(deferral["data"]["retry_at"]) == t0 + ONE_HOUR

        # The decider put the step back in the log: deferred, and scheduled again for when it may go.
        decided = await events(bootstrap, topics, lambda es: _count(es, "StepScheduled.v1", held) == 2)
        [deferred] = [e for e in decided if isinstance(e, StepDeferred)]
        assert (deferred.contact_id, deferred.data.dispatch, deferred.data.retry_at) == (
            held,
            1,
            t0 + ONE_HOUR,
        )
        again = [e for e in decided if isinstance(e, StepScheduled) and e.contact_id == held][-1]
        assert (again.data.step_index, again.data.attempt, again.data.dispatch) == (0, 1, 2)
        assert (again.data.due_at, again.data.rescheduled) == (t0 + ONE_HOUR, "deferred")
        row = await _ledger(db, enrollment_of[held])
        assert (row["state"], row["dispatch"], row["retry_at"], row["reported"]) == (
            "deferred",
            1,
            t0 + ONE_HOUR,
            True,
        )

        async def timer_moved() -> bool:
            row = await db.fetchrow("select * from timers where enrollment_id = $1", enrollment_of[held])
            return row is not None and (row["step_index"], row["attempt"], row["due_at"]) == (
                0,
                1,
                t0 + ONE_HOUR,
            )

        await eventually(timer_moved, what="the step timer at the retry time")

        # A dispatcher reading everything again re-reports the same deferral and sends nothing.
        restarted = new_dispatcher(
            settings, smtp_server, manual_clock, group_id=f"{settings.group_id}-again", limits=limits
        )
        async with running(restarted):
            repeated = await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 6)
            assert restarted.sends == 0
        assert sorted(map(_canonical, repeated[3:])) == sorted(map(_canonical, repeated[:3]))

        # Once the sender may send, the rescheduled step fires (a new StepDue id: a new due time) and
        # goes out as the same attempt, dispatch 2.
        manual_clock.advance(ONE_HOUR)
        await _step_due(settings, topics, account, held, enrollment_of[held], t0 + ONE_HOUR)
        await events(bootstrap, topics, lambda es: _count(es, "StepDispatched.v1", held) == 2)
        async with running(new_dispatcher(settings, smtp_server, manual_clock, limits=limits)):
            delivered = await events(bootstrap, topics, lambda es: _count(es, "StepDelivered.v1", held) == 1)
        assert [
            e.data.attempt for e in delivered if isinstance(e, StepDelivered) and e.contact_id == held
        ] == [1]
        assert len(smtp_server.received_for(f"{held}@example.org")) == 1
        row = await _ledger(db, enrollment_of[held])
        assert (row["state"], row["dispatch"], row["started_at"]) == ("sent", 2, t0 + ONE_HOUR)


def _count(es: list[Event], kind: str, contact: str | None = None) -> int:
    return sum(e.type == kind and (contact is None or e.contact_id == contact) for e in es)


def _canonical(command: dict[str, Any]) -> str:
    return json.dumps(command, sort_keys=True)


async def _command(
    settings: Settings, topics: Topics, at: datetime, kind: str, account: str, contact_id: str, **data: Any
) -> None:
    assert settings.kafka_bootstrap_servers
    command = {
        "command_id": f"{kind}-{contact_id}-{uuid.uuid4().hex[:6]}",
        "type": kind,
        "account_id": account,
        "issued_at": at.isoformat(),
        "actor": "test",
        "data": {"contact_id": contact_id, **data},
    }
    key = f"{account}/{contact_id}"
    await publish(settings.kafka_bootstrap_servers, topics.commands, json.dumps(command).encode(), key=key)


async def _step_due(
    settings: Settings, topics: Topics, account: str, contact: str, enrollment_id: str, due_at: datetime
) -> None:
    """What the scheduler publishes for the step timer due at `due_at`, issued then."""
    assert settings.kafka_bootstrap_servers
    command = StepDue(
        command_id=step_due_command_id(enrollment_id, 0, 1, due_at),
        account_id=account,
        issued_at=due_at,
        actor="scheduler",
        data=StepDueData(contact_id=contact, enrollment_id=enrollment_id, step_index=0, attempt=1),
    )
    await publish(settings.kafka_bootstrap_servers, topics.commands, command, key=f"{account}/{contact}")


async def test_the_worker_runs_the_dispatcher_role_from_settings(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer, manual_clock: ManualClock
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    configured = settings.model_copy(
        update={
            "smtp_host": smtp_server.host,
            "smtp_port": smtp_server.port,
            "smtp_starttls": False,
            "smtp_timeout": 5.0,
            "sender_from": "Acme <hello@acme.example>",
            "unsubscribe_url": "https://u.acme.example/u",
            "unsubscribe_keys": "k" * 32,
        }
    )
    with pytest.raises(ValueError, match="ENROLLSTREAM_SMTP_HOST"):
        DispatcherService.from_settings(settings, bootstrap, "postgresql://unused")
    async with running_worker(configured, roles=("decider", "projector", "dispatcher", "inbound")) as worker:
        assert worker.dispatcher is not None and worker.inbound is not None
        enrollments = await dispatch_steps(settings, manual_clock, _account(), {"wu": "wu@example.org"})
        await events(bootstrap, topics, lambda es: any(e.type == "StepDelivered.v1" for e in es))
    [received] = smtp_server.messages
    assert received.message["From"] == "Acme <hello@acme.example>"
    assert received.message["Message-ID"] == message_id_header(enrollments["wu"])


async def test_an_sms_step_goes_to_the_outbound_sms_topic_once_keyed_by_its_message_id(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    manual_clock: ManualClock,
    db: asyncpg.Connection,
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = _account()
    async with running_worker(settings):
        enrollments = await dispatch_steps(
            settings, manual_clock, account, {"sam": ""}, mobiles={"sam": "+15550100123"}, channel="sms"
        )
        eid = enrollments["sam"]
        async with running(new_dispatcher(settings, smtp_server, manual_clock)):
            [report] = await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 1)
        again = new_dispatcher(settings, smtp_server, manual_clock, group_id=f"{settings.group_id}-again")
        async with running(again):
            await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 2)
            assert again.sends == 0
        [sms] = await read_until(bootstrap, topics.outbound_sms, lambda rs: len(rs) >= 1)
    body = json.loads(sms.value)
    assert body["idempotency_key"] == ids.message_id(eid, 0, 1)
    assert (body["to"], body["body"]) == ("+15550100123", "Hello Sam Tester")
    assert report["data"]["outcome"] == "sent"
    assert smtp_server.messages == []
    row = await _ledger(db, eid)
    assert (row["channel"], row["sender"], row["state"], row["message_id_header"]) == (
        "sms",
        "sms",
        "sent",
        None,
    )


async def test_an_invalid_phone_number_ends_the_enrollment_as_failed_in_the_table_and_the_failed_card(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    manual_clock: ManualClock,
    db: asyncpg.Connection,
) -> None:
    """Seed 002: "Failed ... the most likely scenario is an invalid phone number"; seed 000's Failed card."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = _account()
    async with running_worker(settings):
        enrollments = await dispatch_steps(
            settings, manual_clock, account, {"ivy": ""}, mobiles={"ivy": "0800 not a number"}, channel="sms"
        )
        async with running(new_dispatcher(settings, smtp_server, manual_clock)):
            [report] = await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 1)
        assert report["data"]["outcome"] == "invalid_recipient"

        async def projected() -> bool:
            status = await db.fetchval(
                "select status from enrollments where enrollment_id = $1", enrollments["ivy"]
            )
            return bool(status == "failed")

        await eventually(projected, what="the enrollment row failed")
    row = await db.fetchrow(
        "select status, stop_reason, failure_reason, failure_detail from enrollments"
        " where enrollment_id = $1",
        enrollments["ivy"],
    )
    assert (row["status"], row["stop_reason"], row["failure_reason"]) == ("failed", None, "invalid_recipient")
    assert "not an E.164 number" in row["failure_detail"]
    cards = await db.fetchrow(
        "select failed, stopped from campaign_stats_cards where account_id = $1 and campaign_id = 'outreach'",
        account,
    )
    assert (cards["failed"], cards["stopped"]) == (1, 0)
    label = await db.fetchval(
        "select sequence_status from enrollment_table where enrollment_id = $1", enrollments["ivy"]
    )
    assert label == "Failed"  # seed 003's label agrees with the Failed card
    assert (await _ledger(db, enrollments["ivy"]))["state"] == "invalid_recipient"


async def test_sends_share_pooled_connections_and_a_connection_the_server_dropped_is_replaced(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer, manual_clock: ManualClock
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = _account()
    first = {f"p{i}": f"p{i}@example.org" for i in range(6)}
    then = {f"q{i}": f"q{i}@example.org" for i in range(6)}
    async with running_worker(settings):
        await dispatch_steps(settings, manual_clock, account, first)
        async with running(new_dispatcher(settings, smtp_server, manual_clock)) as dispatcher:
            await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 6)
            assert smtp_server.connections < 6  # six messages, fewer connections (a pool of 4)
            # The relay closes its idle clients mid-run: the next sends open new connections.
            assert smtp_server.drop_connections() >= 1
            await dispatch_steps(settings, manual_clock, account, then)
            reports = await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 12)
            assert dispatcher.sends == 12
    assert sorted(r["data"]["contact_id"] for r in reports) == sorted([*first, *then])
    assert {r["data"]["outcome"] for r in reports} == {"sent"}
    for address in [*first.values(), *then.values()]:
        assert len(smtp_server.received_for(address)) == 1, address  # none lost, none twice
    assert smtp_server.connections < 12


async def test_a_kill_mid_batch_leaves_each_message_sent_once_or_unknown(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    manual_clock: ManualClock,
    db: asyncpg.Connection,
) -> None:
    """Four steps in one poll batch on one partition; the first one's 250 never comes. The sends of a
    batch overlap and their outcomes are recorded as they end, so the three behind it are `sent`
    while it is still `started`. The dispatcher dies there (its task cancelled: nothing more is
    written, no offset committed); the next one sends nothing, reports the held one `unknown` and
    the three `sent`, and the server has each message once."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap and settings.partitions
    account = _account()
    held, *others = contacts_on_one_partition(account, "k", 4, settings.partitions)
    smtp_server.behave(f"{held}@example.org", Behaviour.HOLD_AFTER_DATA)
    async with running_worker(settings):
        contacts = {c: f"{c}@example.org" for c in (held, *others)}  # dispatched in this order
        enrollments = await dispatch_steps(settings, manual_clock, account, contacts)
        first = new_dispatcher(settings, smtp_server, manual_clock)
        await first.start()
        task = asyncio.create_task(first.run(asyncio.Event()))

        async def others_sent_while_held() -> bool:
            rows = await db.fetch(
                "select enrollment_id, state from delivery_ledger where enrollment_id = any($1::text[])",
                list(enrollments.values()),
            )
            state = {r["enrollment_id"]: r["state"] for r in rows}
            return state.get(enrollments[held]) == "started" and all(
                state.get(enrollments[c]) == "sent" for c in others
            )

        try:
            await eventually(others_sent_while_held, what="three sent while the first is held")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await first.stop()
        smtp_server.release(f"{held}@example.org")
        async with running(new_dispatcher(settings, smtp_server, manual_clock)) as second:
            reports = await commands_of_type(bootstrap, topics, "DeliveryReported.v1", 4)
            assert second.sends == 0
    outcomes = {r["data"]["contact_id"]: r["data"]["outcome"] for r in reports}
    assert outcomes == {held: "unknown", **{c: "sent" for c in others}}
    for contact in contacts:
        assert len(smtp_server.received_for(f"{contact}@example.org")) == 1, contact
        row = await _ledger(db, enrollments[contact])
        assert (row["state"], row["reported"]) == ("unknown" if contact == held else "sent", True)
