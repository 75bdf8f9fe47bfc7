"""/healthz names every role that is stuck, not only the decider and the projector (issue 12, health).

Each test runs the role in a real worker and asks its /healthz (an ObservabilityServer on the worker's
probe, as `enrollstream worker` serves it). The PostgreSQL outages go through a TCP forwarder the test
owns (tests/integration/test_postgres_outage.py): cutting it is a real network outage for the role
behind it, while the shared server, and the decider and projector of the test, keep running. After each
outage the role is healthy again and its work is done exactly once.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from enrollstream.adapters.kafka.records import header
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain.inbound import InboundEmailReceived
from enrollstream.observability import ObservabilityServer, Probe
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.worker import Worker
from tests.dispatch_support import dispatch_steps, events, message_id_header
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll, send
from tests.integration.test_oversized_records import health, set_max_message_bytes
from tests.integration.test_postgres_outage import TcpForwarder
from tests.integration.test_webhook_relay import (
    SECRET_A,
    publish_events,
    receiver,  # noqa: F401  (a fixture)
    relay_settings,
    sent_event,
    subscribe,
)
from tests.servers.clock import ManualClock
from tests.servers.smtp import RecordingSmtpServer
from tests.servers.webhook import RecordingWebhookServer
from tests.support import eventually, publish, read_until, running_worker

STUCK_RETRIES = 3


@contextlib.asynccontextmanager
async def through_forwarder(
    settings: Settings, **update: Any
) -> AsyncIterator[tuple[Settings, TcpForwarder]]:
    """The settings with the database reached through a forwarder of this test's (listening), and it."""
    assert settings.database_url
    real = urlsplit(settings.database_url)
    assert real.hostname and real.port
    forwarder = TcpForwarder(real.hostname, real.port)
    await forwarder.restore()
    user = real.netloc.rsplit("@", 1)
    netloc = (user[0] + "@" if len(user) == 2 else "") + f"127.0.0.1:{forwarder.port}"
    proxied = settings.model_copy(
        update={
            "database_url": urlunsplit(real._replace(netloc=netloc)),
            "stuck_retries": STUCK_RETRIES,
            **update,
        }
    )
    try:
        yield proxied, forwarder
    finally:
        with contextlib.suppress(AssertionError):  # cut already
            await forwarder.cut()


@contextlib.asynccontextmanager
async def healthz(worker: Worker) -> AsyncIterator[Callable[[], Awaitable[tuple[int, dict[str, Any]]]]]:
    """The worker's /healthz on an ephemeral port, wired as `enrollstream worker` wires it."""
    server = ObservabilityServer(
        Probe(
            started=lambda: worker.ready,
            stopping=worker.stop_event.is_set,
            failed=lambda: worker.failure,
            stuck=worker.stuck,
        ),
        port=0,
    )
    await server.start()
    try:
        yield lambda: health(server.port)
    finally:
        await server.stop()


async def until_stuck(
    check: Callable[[], Awaitable[tuple[int, dict[str, Any]]]], role: str, timeout: float = 30
) -> str:
    """Waits for /healthz 503 "stuck" and returns the reason, which must name `role`."""

    async def stuck() -> bool:
        return (await check())[0] == 503

    await eventually(stuck, timeout=timeout, what=f"/healthz 503 with {role} stuck")
    status, body = await check()
    assert (status, body["status"]) == (503, "stuck"), body
    assert body["reason"].startswith(f"{role}: "), body
    return str(body["reason"])


async def until_healthy(
    check: Callable[[], Awaitable[tuple[int, dict[str, Any]]]], timeout: float = 30
) -> None:
    async def healthy() -> bool:
        return (await check())[0] == 200

    await eventually(healthy, timeout=timeout, what="/healthz 200 again")


def still_running(worker: Worker) -> None:
    assert worker.failure is None and not worker.stop_event.is_set(), "the worker did not exit"


async def rows(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


# --- scheduler ---------------------------------------------------------------------------------------


async def test_a_scheduler_that_cannot_reach_postgres_is_stuck_and_fires_each_due_step_once_after(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    before, during = ["sam"], ["sid", "sue"]

    async def fired() -> dict[str, int]:
        found = await rows(
            database_url,
            "select contact_id, count(*) as n from decisions"
            " where status = 'accepted' and command_type = 'StepDue.v1' group by contact_id",
        )
        return {r["contact_id"]: r["n"] for r in found}

    async with (
        through_forwarder(settings, scheduler_interval_ms=200) as (proxied, forwarder),
        running_worker(settings, roles=("decider", "projector")),
        running_worker(proxied, roles=("scheduler",)) as worker,
        healthz(worker) as check,
    ):
        for contact in before:  # overdue (enrolled 2026-11-22): fired at once
            await send(settings, topics, enroll(contact), key=f"{ACCOUNT}/{contact}")
        await eventually(lambda: _has(fired, before), what="the first step fired")
        assert (await check())[0] == 200 and forwarder.connections > 0

        await forwarder.cut()
        for contact in during:
            await send(settings, topics, enroll(contact), key=f"{ACCOUNT}/{contact}")
        reason = await until_stuck(check, "scheduler")
        assert "due timers: failed" in reason, reason
        still_running(worker)
        due = await rows(database_url, "select contact_id from timers where contact_id = any($1)", during)
        assert len(due) == len(during), "their timers are due (projected), and not fired"
        assert set(await fired()) == set(before)

        await forwarder.restore()
        await eventually(lambda: _has(fired, before + during), what="the due steps fired after the outage")
        await until_healthy(check)
        still_running(worker)
    assert await fired() == {contact: 1 for contact in before + during}  # each step once


async def _has(fired: Callable[[], Awaitable[dict[str, int]]], contacts: list[str]) -> bool:
    return set(contacts) <= set(await fired())


# --- dispatcher --------------------------------------------------------------------------------------


def sending(settings: Settings, smtp: RecordingSmtpServer) -> Settings:
    return settings.model_copy(
        update={
            "smtp_host": smtp.host,
            "smtp_port": smtp.port,
            "smtp_starttls": False,
            "smtp_timeout": 5.0,
            "sender_from": "Acme <hello@acme.example>",
            "unsubscribe_url": "https://u.acme.example/u",
            "unsubscribe_keys": "k" * 32,
        }
    )


async def test_a_dispatcher_that_cannot_reach_its_ledger_is_stuck_and_sends_each_step_once_after(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    account = f"acct-{uuid.uuid4().hex[:6]}"
    before = {"ann": "ann@example.org"}
    during = {"bo": "bo@example.org", "cy": "cy@example.org"}

    def delivered(es: list[Any], contacts: dict[str, str]) -> bool:
        return {e.contact_id for e in es if e.type == "StepDelivered.v1"} >= set(contacts)

    async with (
        through_forwarder(sending(settings, smtp_server)) as (proxied, forwarder),
        running_worker(settings, roles=("decider", "projector")),
        running_worker(proxied, roles=("dispatcher",), clock=manual_clock) as worker,
        healthz(worker) as check,
    ):
        await dispatch_steps(settings, manual_clock, account, before)
        await events(bootstrap, topics, lambda es: delivered(es, before))
        assert (await check())[0] == 200 and forwarder.connections > 0

        await forwarder.cut()
        enrollments = await dispatch_steps(settings, manual_clock, account, during)  # StepDispatched
        reason = await until_stuck(check, "dispatcher")
        assert "partition" in reason and "failed" in reason, reason
        still_running(worker)
        assert all(smtp_server.received_for(email) == [] for email in during.values()), "nothing sent"

        await forwarder.restore()
        await events(bootstrap, topics, lambda es: delivered(es, during))
        await until_healthy(check)
        still_running(worker)
        recorded = await events(bootstrap, topics, lambda es: delivered(es, before | during))
    for email in (before | during).values():
        assert len(smtp_server.received_for(email)) == 1, email  # sent once, not once per try
    for contact, enrollment_id in enrollments.items():
        [message] = smtp_server.received_for(during[contact])
        assert message.message["Message-ID"] == message_id_header(enrollment_id)
    assert sorted(e.contact_id for e in recorded if e.type == "StepDelivered.v1") == ["ann", "bo", "cy"]
    ledger = await rows(database_url, "select contact_id, state from delivery_ledger order by contact_id")
    assert [(r["contact_id"], r["state"]) for r in ledger] == [
        ("ann", "sent"),
        ("bo", "sent"),
        ("cy", "sent"),
    ]


# --- inbound -----------------------------------------------------------------------------------------


def reply(account: str, message_id: str, in_reply_to: str) -> bytes:
    record = InboundEmailReceived.model_validate(
        {
            "account_id": account,
            "from": "A Tester <tester@example.org>",
            "to": "hello@acme.example",
            "subject": "Re: Hi",
            "message_id": message_id,
            "in_reply_to": in_reply_to,
            "received_at": "2026-03-02T11:30:00+00:00",
        }
    )
    return record.model_dump_json(by_alias=True).encode()


async def test_inbound_that_cannot_reach_the_ledger_is_stuck_and_records_the_reply_once_after(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer, manual_clock: ManualClock
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    account = f"acct-{uuid.uuid4().hex[:6]}"
    contacts = {"ada": "ada@example.org", "bea": "bea@example.org"}

    async def replied() -> dict[str, int]:
        found = await rows(database_url, "select contact_id, count(*) as n from replies group by contact_id")
        return {r["contact_id"]: r["n"] for r in found}

    async with (
        through_forwarder(settings) as (proxied, forwarder),
        running_worker(sending(settings, smtp_server), roles=("decider", "projector", "dispatcher"),
                       clock=manual_clock),
        running_worker(proxied, roles=("inbound",)) as worker,
        healthz(worker) as check,
    ):  # fmt: skip
        enrollments = await dispatch_steps(settings, manual_clock, account, contacts)
        await events(
            bootstrap, topics, lambda es: sum(e.type == "StepDelivered.v1" for e in es) >= len(contacts)
        )
        ours = {contact: message_id_header(eid) for contact, eid in enrollments.items()}
        await publish(
            bootstrap, topics.inbound_email, reply(account, "<r-ada@example.org>", ours["ada"]), account
        )
        await eventually(lambda: _replied(replied, ["ada"]), what="the first reply recorded")
        assert (await check())[0] == 200 and forwarder.connections > 0

        await forwarder.cut()
        await publish(
            bootstrap, topics.inbound_email, reply(account, "<r-bea@example.org>", ours["bea"]), account
        )
        reason = await until_stuck(check, "inbound")
        assert "partition" in reason and "failed" in reason, reason
        still_running(worker)
        assert set(await replied()) == {"ada"}

        await forwarder.restore()
        await eventually(
            lambda: _replied(replied, ["ada", "bea"]), what="the reply recorded after the outage"
        )
        await until_healthy(check)
        still_running(worker)
    assert await replied() == {"ada": 1, "bea": 1}
    detected = await read_until(bootstrap, topics.commands, lambda rs: len(_replies_detected(rs)) >= 2)
    assert sorted(_replies_detected(detected)) == ["ada", "bea"]  # each published once
    assert await rows(database_url, "select 1 from unprojectable_events") == []


async def _replied(replied: Callable[[], Awaitable[dict[str, int]]], contacts: list[str]) -> bool:
    return set(contacts) <= set(await replied())


def _replies_detected(records: list[Any]) -> list[str]:
    commands = [json.loads(r.value) for r in records]
    return [c["data"]["contact_id"] for c in commands if c["type"] == "ReplyDetected.v1"]


# --- webhook relay -----------------------------------------------------------------------------------


async def test_a_relay_that_cannot_write_a_dead_letter_is_stuck_and_writes_it_once_after(
    settings: Settings, topics: Topics
) -> None:
    """The relay itself cannot advance its consumer: a record it must dead-letter (not an integration
    event) and a dead-letter topic that takes nothing that large (a misconfiguration)."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await set_max_message_bytes(bootstrap, topics.dead_letters, 200)
    configured = settings.model_copy(update={"stuck_retries": STUCK_RETRIES})
    async with running_worker(configured, roles=("relay",)) as worker, healthz(worker) as check:
        assert (await check())[0] == 200
        await publish(bootstrap, topics.integration_events, b"{not an event", "enr-x")
        reason = await until_stuck(check, "relay")
        assert "partition" in reason and "offset 0 failed" in reason, reason
        still_running(worker)

        await set_max_message_bytes(bootstrap, topics.dead_letters, 1048588)  # fixed
        await until_healthy(check)
        letters = await read_until(bootstrap, topics.dead_letters, lambda rs: len(rs) >= 1, timeout=10)
        still_running(worker)
    assert [r.value for r in letters] == [b"{not an event"]
    assert header(letters[0].headers, "error.role") == "relay"


async def test_a_relay_whose_every_subscriber_fails_is_not_stuck(
    settings: Settings,
    topics: Topics,
    receiver: RecordingWebhookServer,  # noqa: F811
) -> None:
    """Subscribers failing (all of them, every attempt) are their lanes' retries and breakers: the relay
    hands every record on and is healthy throughout, even with a limit of 2 failures in a row."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = f"acct-{uuid.uuid4().hex[:6]}"
    failing = [sent_event(account, f"enr-{i}", 0) for i in range(4)]
    receiver.respond = lambda path, event_id, attempt: 503
    await subscribe(bootstrap, topics, account, receiver.url("/a"), SECRET_A)
    configured = relay_settings(settings, max_attempts=3).model_copy(update={"stuck_retries": 2})
    async with running_worker(configured, roles=("relay",)) as worker, healthz(worker) as check:
        await publish_events(bootstrap, topics, failing)
        seen: list[tuple[int, dict[str, Any]]] = []

        async def all_dead_lettered() -> bool:
            seen.append(await check())
            return worker.relay is not None and worker.relay.dead_lettered == len(failing)

        await eventually(all_dead_lettered, timeout=60, what="every event dead-lettered after its attempts")
        assert len(receiver.at("/a")) == 3 * len(failing)
        assert {status for status, _ in seen} == {200}, seen
        assert (await check())[0] == 200
        still_running(worker)
