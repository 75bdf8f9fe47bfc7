"""The reference webhook relay against the real broker and a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from enrollstream.adapters.kafka.records import header
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.webhooks.signing import EVENT_ID_HEADER, EVENT_TYPE_HEADER, sign, verify_signature
from enrollstream.adapters.webhooks.subscriptions import (
    WebhookSubscription,
    delete_subscription,
    publish_subscription,
)
from enrollstream.config import Settings
from enrollstream.domain import ids
from enrollstream.domain.integration import Sent, SentData
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.webhook_relay import InvalidSignature, RetryPolicy, WebhookRelayService
from tests.integration.test_walking_skeleton import welcome_campaign
from tests.servers.webhook import ReceivedRequest, RecordingWebhookServer
from tests.support import eventually, publish, read_until, running_worker

SECRET_A = "whsec-a-0123456789abcdef"
SECRET_B = "whsec-b-0123456789abcdef"


def relay_settings(settings: Settings, max_attempts: int = 3) -> Settings:
    return settings.model_copy(
        update={
            "relay_max_attempts": max_attempts,
            "relay_retry_base_s": 0.05,
            "relay_retry_factor": 2.0,
            "relay_retry_max_s": 1.0,
            "relay_request_timeout_s": 5.0,
        }
    )


def sent_event(account_id: str, enrollment_id: str, step_index: int) -> Sent:
    source = ids.stable_id("test-source", account_id, enrollment_id, step_index)
    return Sent(
        id=ids.stable_id("integration", source, "enrollment.sent"),
        occurred_at=datetime(2026, 11, 22, 9, step_index, tzinfo=UTC),
        account_id=account_id,
        contact_id="ada",
        campaign_id="welcome",
        enrollment_id=enrollment_id,
        source_event_id=source,
        data=SentData(step_index=step_index, step_count=5, message_id=f"es-{step_index}"),
    )


async def publish_events(bootstrap: str, topics: Topics, events: list[Sent]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for event in events:  # keyed by enrollment, like the decider does
            await producer.send_and_wait(
                topics.integration_events, event.model_dump_json().encode(), key=event.enrollment_id.encode()
            )
    finally:
        await producer.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[RecordingWebhookServer]:
    server = RecordingWebhookServer(secrets={"/a": SECRET_A, "/b": SECRET_B})
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def subscribe(bootstrap: str, topics: Topics, account_id: str, url: str, secret: str) -> None:
    await publish_subscription(
        bootstrap,
        topics.webhook_subscriptions,
        WebhookSubscription(account_id=account_id, url=url, secret=secret),
    )


@contextlib.asynccontextmanager
async def running_relay(settings: Settings) -> AsyncIterator[WebhookRelayService]:
    assert settings.kafka_bootstrap_servers
    relay = WebhookRelayService.from_settings(settings, settings.kafka_bootstrap_servers)
    stop = asyncio.Event()
    await relay.start()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await task
        await relay.stop()


def ids_of(requests: list[ReceivedRequest]) -> list[str]:
    return [r.event_id for r in requests]


async def test_an_enrolled_contact_reaches_the_subscriber_signed_with_the_event_as_body(
    settings: Settings, topics: Topics, receiver: RecordingWebhookServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = f"acct-{uuid.uuid4().hex[:6]}"
    await subscribe(bootstrap, topics, account, receiver.url("/a"), SECRET_A)
    await publish_campaign(bootstrap, topics.campaigns, welcome_campaign(account))
    enroll = {
        "command_id": f"cmd-{uuid.uuid4()}",
        "type": "Enroll.v1",
        "account_id": account,
        "issued_at": datetime(2026, 11, 22, 9, 0, tzinfo=UTC).isoformat(),
        "actor": "crm",
        "data": {"contact_id": "ada", "campaign_id": "welcome", "contact": {"email": "ada@example.org"}},
    }
    started = time.monotonic()
    async with running_worker(relay_settings(settings), roles=("decider", "relay")):
        await publish(bootstrap, topics.commands, json.dumps(enroll).encode(), key=f"{account}/ada")
        await receiver.wait_for(lambda rs: len(rs) >= 1, timeout=60)
        published = await read_until(bootstrap, topics.integration_events, lambda rs: len(rs) >= 1)
    print(f"first webhook after {time.monotonic() - started:.1f}s")
    (request,) = receiver.at("/a")
    assert request.body == published[0].value  # the body is the integration event's JSON, byte for byte
    assert request.signature_ok, request.signature_error
    assert request.event["type"] == "enrollment.enrolled" == request.headers[EVENT_TYPE_HEADER]
    assert request.headers[EVENT_ID_HEADER] == request.event["id"]
    assert request.headers["Content-Type"] == "application/json"
    # The same signature fails under another secret, another body or long after.
    signature = request.headers["Enrollstream-Signature"]
    timestamp = verify_signature(SECRET_A, signature, request.body, now=time.time())
    for secret, body, now in (
        (SECRET_B, request.body, time.time()),
        (SECRET_A, request.body + b" ", time.time()),
        (SECRET_A, request.body, timestamp + 301),
    ):
        with pytest.raises(InvalidSignature):
            verify_signature(secret, signature, body, now=now)


@pytest.mark.parametrize("consumers", [1, 3], ids=["one-consumer", "three-consumers"])
async def test_a_failing_endpoint_holds_back_the_enrollments_later_events_until_it_succeeds(
    settings: Settings, topics: Topics, receiver: RecordingWebhookServer, consumers: int
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = f"acct-{uuid.uuid4().hex[:6]}"
    events = [sent_event(account, "enr-1", step) for step in range(4)]
    first = events[0].id
    # 500 twice for the first event, then 200; everything else 200 at once.
    receiver.respond = lambda path, event_id, attempt: 500 if event_id == first and attempt <= 2 else 200
    await subscribe(bootstrap, topics, account, receiver.url("/a"), SECRET_A)
    await publish_events(bootstrap, topics, events)
    # Another enrollment (maybe another partition) is delivered too, in its own order.
    others = [sent_event(account, "enr-2", step) for step in range(2)]
    await publish_events(bootstrap, topics, others)
    config = relay_settings(settings, max_attempts=5).model_copy(update={"relay_consumers": consumers})
    async with running_relay(config) as relay:
        await receiver.wait_for(lambda rs: sum(r.status == 200 for r in rs) >= len(events) + len(others))
        await _until(lambda: relay.delivered >= len(events) + len(others))
    assert [r.event_id for r in receiver.at("/a") if r.event["enrollment_id"] == "enr-2"] == [
        e.id for e in others
    ]
    got = [r for r in receiver.at("/a") if r.event["enrollment_id"] == "enr-1"]
    assert [(r.event_id, r.status) for r in got] == [
        (first, 500),
        (first, 500),
        (first, 200),
        *[(e.id, 200) for e in events[1:]],
    ]
    assert [r.headers["Enrollstream-Delivery-Attempt"] for r in got[:3]] == ["1", "2", "3"]
    assert all(r.signature_ok for r in got)
    assert [r.event["data"]["step_index"] for r in got if r.status == 200] == [0, 1, 2, 3]


async def test_an_endpoint_that_always_fails_ends_in_the_dead_letter_topic_and_the_relay_moves_on(
    settings: Settings, topics: Topics, receiver: RecordingWebhookServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = f"acct-{uuid.uuid4().hex[:6]}"
    doomed, after = sent_event(account, "enr-1", 0), sent_event(account, "enr-1", 1)
    receiver.respond = lambda path, event_id, attempt: 503 if event_id == doomed.id else 200
    await subscribe(bootstrap, topics, account, receiver.url("/a"), SECRET_A)
    await publish_events(bootstrap, topics, [doomed, after])
    async with running_relay(relay_settings(settings, max_attempts=3)) as relay:
        await receiver.wait_for(lambda rs: any(r.event_id == after.id for r in rs))
        letters = await read_until(bootstrap, topics.dead_letters, lambda rs: len(rs) >= 1)
        assert relay.dead_lettered == 1
    assert [(r.event_id, r.status) for r in receiver.at("/a")] == [
        (doomed.id, 503),
        (doomed.id, 503),
        (doomed.id, 503),
        (after.id, 200),
    ]
    # The circuit stays open across events: the next one waits as long as a 4th attempt would have.
    requests = receiver.at("/a")
    policy = RetryPolicy.from_settings(relay_settings(settings, max_attempts=3))
    assert requests[3].received_at - requests[2].received_at >= 0.9 * policy.delay_after(3)
    (letter,) = letters
    assert letter.value == doomed.model_dump_json().encode()
    assert letter.key == b"enr-1"
    assert header(letter.headers, "error.role") == "relay"
    assert header(letter.headers, "webhook.url") == receiver.url("/a")
    assert header(letter.headers, "webhook.attempts") == "3"
    assert header(letter.headers, "webhook.last_status") == "503"
    assert header(letter.headers, "webhook.last_error") == "HTTP 503"
    assert header(letter.headers, "original.topic") == topics.integration_events


async def test_each_account_receives_only_its_own_events(
    settings: Settings, topics: Topics, receiver: RecordingWebhookServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    acct_a, acct_b, acct_c = (f"acct-{x}-{uuid.uuid4().hex[:6]}" for x in "abc")
    await subscribe(bootstrap, topics, acct_a, receiver.url("/a"), SECRET_A)
    await subscribe(bootstrap, topics, acct_b, receiver.url("/b"), SECRET_B)
    # A subscription removed again gets nothing.
    await subscribe(bootstrap, topics, acct_c, receiver.url("/c"), "whsec-c-0123456789abcdef")
    await delete_subscription(bootstrap, topics.webhook_subscriptions, acct_c, receiver.url("/c"))
    events_a = [sent_event(acct_a, f"enr-a{n}", n) for n in range(3)]
    events_b = [sent_event(acct_b, f"enr-b{n}", n) for n in range(2)]
    events_c = [sent_event(acct_c, "enr-c", 0)]
    await publish_events(bootstrap, topics, [*events_a, *events_c, *events_b])
    async with running_relay(relay_settings(settings)) as relay:
        await receiver.wait_for(lambda rs: len(rs) >= len(events_a) + len(events_b))
        # Everything published was handled (the account without subscribers too) before looking.
        await _until(lambda: relay.delivered >= len(events_a) + len(events_b) + len(events_c))
    assert sorted(ids_of(receiver.at("/a"))) == sorted(e.id for e in events_a)
    assert sorted(ids_of(receiver.at("/b"))) == sorted(e.id for e in events_b)
    assert receiver.at("/c") == []
    assert {r.event["account_id"] for r in receiver.at("/a")} == {acct_a}
    assert all(r.signature_ok for r in receiver.requests)


async def test_offsets_are_committed_after_delivery_so_a_restart_does_not_repeat(
    settings: Settings, topics: Topics, receiver: RecordingWebhookServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = f"acct-{uuid.uuid4().hex[:6]}"
    await subscribe(bootstrap, topics, account, receiver.url("/a"), SECRET_A)
    first = [sent_event(account, f"enr-{n}", 0) for n in range(3)]
    await publish_events(bootstrap, topics, first)
    config = relay_settings(settings)
    async with running_relay(config) as relay:
        await receiver.wait_for(lambda rs: len(rs) >= len(first))
        await _until(lambda: relay.delivered >= len(first))
        group = relay.group_id
    assert await _committed_total(bootstrap, topics, group, settings.partitions) == len(first)
    later = sent_event(account, "enr-9", 1)
    await publish_events(bootstrap, topics, [later])
    async with running_relay(config):
        await receiver.wait_for(lambda rs: any(r.event_id == later.id for r in rs), timeout=60)
    assert sorted(ids_of(receiver.requests)) == sorted([*(e.id for e in first), later.id])  # no repeats


async def test_a_relay_stopped_mid_retry_commits_nothing_and_the_next_one_delivers_the_event(
    settings: Settings, topics: Topics, receiver: RecordingWebhookServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = f"acct-{uuid.uuid4().hex[:6]}"
    await subscribe(bootstrap, topics, account, receiver.url("/a"), SECRET_A)
    event = sent_event(account, "enr-1", 0)
    receiver.respond = lambda path, event_id, attempt: 500
    await publish_events(bootstrap, topics, [event])
    config = relay_settings(settings, max_attempts=50)
    async with running_relay(config) as relay:
        await receiver.wait_for(lambda rs: len(rs) >= 2)
        group = relay.group_id
    assert await _committed_total(bootstrap, topics, group, settings.partitions) == 0
    receiver.respond = lambda path, event_id, attempt: 200
    async with running_relay(config):
        await receiver.wait_for(lambda rs: any(r.status == 200 for r in rs), timeout=60)
    assert {r.event_id for r in receiver.requests} == {event.id}
    assert await _committed_total(bootstrap, topics, group, settings.partitions) == 1


async def test_a_redirect_is_a_failed_attempt_and_is_never_followed(
    settings: Settings, topics: Topics, receiver: RecordingWebhookServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    elsewhere = RecordingWebhookServer(secrets={"/elsewhere": SECRET_A})  # another origin: another port
    await elsewhere.start()
    account = f"acct-{uuid.uuid4().hex[:6]}"
    moved, found = sent_event(account, "enr-1", 0), sent_event(account, "enr-2", 0)
    receiver.redirect_to = elsewhere.url("/elsewhere")
    receiver.respond = lambda path, event_id, attempt: 307 if event_id == moved.id else 302
    await subscribe(bootstrap, topics, account, receiver.url("/a"), SECRET_A)
    await publish_events(bootstrap, topics, [moved, found])
    try:
        async with running_relay(relay_settings(settings, max_attempts=2)) as relay:
            await _until(lambda: relay.delivered >= 2)
            dead_lettered = relay.dead_lettered
    finally:
        await elsewhere.stop()
    assert elsewhere.requests == []  # neither the signed body nor a GET went to the Location
    assert sorted((r.event_id, r.status, r.method) for r in receiver.at("/a")) == sorted(
        [(moved.id, 307, "POST")] * 2 + [(found.id, 302, "POST")] * 2
    )
    assert dead_lettered == 2  # neither counts as delivered: both used their attempts and were dead-lettered
    letters = await read_until(bootstrap, topics.dead_letters, lambda rs: len(rs) >= 2, timeout=10)
    by_event = {json.loads(letter.value)["id"]: letter for letter in letters}
    for event, status in ((moved, "307"), (found, "302")):
        headers = by_event[event.id].headers
        assert header(headers, "webhook.attempts") == "2"
        assert header(headers, "webhook.last_status") == status
        assert header(headers, "webhook.last_error") == f"HTTP {status} (redirect not followed)"


async def test_a_failing_subscriber_is_retried_in_its_own_lane_while_another_accounts_events_flow(
    settings: Settings, topics: Topics, receiver: RecordingWebhookServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    failing, healthy = f"acct-f-{uuid.uuid4().hex[:6]}", f"acct-h-{uuid.uuid4().hex[:6]}"
    receiver.respond = lambda path, event_id, attempt: 500 if path == "/bad" else 200
    await subscribe(bootstrap, topics, failing, receiver.url("/bad"), SECRET_A)
    await subscribe(bootstrap, topics, healthy, receiver.url("/b"), SECRET_B)
    doomed = [sent_event(failing, "enr-f", step) for step in range(3)]
    flowing = [sent_event(healthy, f"enr-h{n}", step) for step in range(5) for n in range(2)]
    await publish_events(bootstrap, topics, doomed)  # the failing account's events come first
    await publish_events(bootstrap, topics, flowing)
    # One failing event takes 0.5 + 1 + 2 + 4 = 7.5 s of waits before its dead letter; three of them,
    # retried on the main path, would hold the healthy account back for 22.5 s.
    config = relay_settings(settings, max_attempts=5).model_copy(
        update={"relay_retry_base_s": 0.5, "relay_retry_max_s": 4.0}
    )
    policy = RetryPolicy.from_settings(config)
    async with running_relay(config):
        await receiver.wait_for(lambda rs: sum(r.path == "/b" for r in rs) >= len(flowing), timeout=15)
        await receiver.wait_for(lambda rs: sum(r.path == "/bad" for r in rs) >= 3, timeout=15)
    first = min(r.received_at for r in receiver.requests)
    healthy_done = max(r.received_at for r in receiver.at("/b"))
    print(f"healthy subscriber done {healthy_done - first:.2f}s after the first request")
    # Before the failing URL's first event has used its attempts (3.5 s), let alone all three (22.5 s).
    assert healthy_done - first < sum(policy.delay_after(n) for n in range(1, 4))
    for enrollment in ("enr-h0", "enr-h1"):  # each enrollment's events in order
        got = [r.event for r in receiver.at("/b") if r.event["enrollment_id"] == enrollment]
        assert [e["data"]["step_index"] for e in got] == [0, 1, 2, 3, 4]
    assert all(r.status == 200 and r.signature_ok for r in receiver.at("/b"))
    # The failing URL: its first event again and again, with growing waits; the later ones wait behind it.
    bad = receiver.at("/bad")
    assert {r.event_id for r in bad} == {doomed[0].id}
    assert [r.headers["Enrollstream-Delivery-Attempt"] for r in bad] == [
        str(n) for n in range(1, len(bad) + 1)
    ]
    gaps = [later.received_at - earlier.received_at for earlier, later in itertools.pairwise(bad)]
    assert all(gap >= 0.9 * policy.delay_after(n) for n, gap in enumerate(gaps, start=1)), gaps
    # Nothing past the parked event was committed in its partition: a restart delivers the failing
    # account's events again, in order, now that its URL answers.
    receiver.respond = lambda path, event_id, attempt: 200
    async with running_relay(config):
        await receiver.wait_for(
            lambda rs: (
                [r.event_id for r in rs if r.path == "/bad" and r.status == 200] == [e.id for e in doomed]
            ),
            timeout=15,
        )


async def test_a_subscriber_with_a_full_backlog_has_further_events_dead_lettered_at_once(
    settings: Settings, topics: Topics, receiver: RecordingWebhookServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = f"acct-{uuid.uuid4().hex[:6]}"
    receiver.respond = lambda path, event_id, attempt: 500
    await subscribe(bootstrap, topics, account, receiver.url("/a"), SECRET_A)
    events = [sent_event(account, "enr-1", step) for step in range(5)]
    await publish_events(bootstrap, topics, events)
    config = relay_settings(settings, max_attempts=50).model_copy(
        update={"relay_subscriber_backlog": 2, "relay_retry_base_s": 1.0}
    )
    async with running_relay(config) as relay:
        letters = await read_until(bootstrap, topics.dead_letters, lambda rs: len(rs) >= 3, timeout=15)
        # The relay counts a dead letter once its write is acknowledged, which a reader may see first.
        await _until(lambda: relay.dead_lettered >= 3, timeout=5)
        assert relay.dead_lettered == 3
        assert relay.delivered == 3  # the two held ones are neither delivered nor dead-lettered
    assert [json.loads(letter.value)["id"] for letter in letters] == [e.id for e in events[2:]]
    for letter in letters:
        assert header(letter.headers, "webhook.attempts") == "0"
        assert header(letter.headers, "webhook.last_error") == (
            "not attempted: 2 earlier events wait for this URL (backlog full)"
        )
    assert {r.event_id for r in receiver.at("/a")} == {events[0].id}


async def test_a_url_the_http_client_cannot_use_is_dead_lettered_and_the_accounts_other_url_served(
    settings: Settings, topics: Topics, receiver: RecordingWebhookServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = f"acct-{uuid.uuid4().hex[:6]}"
    unusable = "http://a..b/hook"  # passes the subscription's pattern; the client raises UnicodeError
    await subscribe(bootstrap, topics, account, unusable, SECRET_A)
    await subscribe(bootstrap, topics, account, receiver.url("/a"), SECRET_A)
    events = [sent_event(account, "enr-1", step) for step in range(2)]
    await publish_events(bootstrap, topics, events)
    async with running_relay(relay_settings(settings, max_attempts=2)) as relay:
        await _until(lambda: relay.delivered >= len(events), timeout=15)
        group = relay.group_id
    assert ids_of(receiver.at("/a")) == [e.id for e in events]
    letters = await read_until(bootstrap, topics.dead_letters, lambda rs: len(rs) >= 2, timeout=10)
    assert [header(letter.headers, "webhook.url") for letter in letters] == [unusable, unusable]
    assert all(header(letter.headers, "webhook.last_error").startswith("UnicodeError") for letter in letters)
    assert await _committed_total(bootstrap, topics, group, settings.partitions) == len(events)


def test_retry_delays_grow_by_the_factor_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=6, base_s=0.5, factor=3.0, max_delay_s=10.0)
    assert [policy.delay_after(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]
    assert policy.delay_after(100_000) == 10.0  # a URL's breaker counts failures for as long as it fails


def test_a_signature_with_several_v1_entries_verifies_with_either_secret() -> None:
    body = b'{"id":"x"}'
    rotated = sign(SECRET_A, body, 1_700_000_000) + "," + sign(SECRET_B, body, 1_700_000_000).split(",")[1]
    for secret in (SECRET_A, SECRET_B):
        assert verify_signature(secret, rotated, body, now=1_700_000_010, tolerance=60) == 1_700_000_000
    for bad in (None, "", "v1=abc", "t=1700000000", "t=abc,v1=00", "garbage"):
        with pytest.raises(InvalidSignature):
            verify_signature(SECRET_A, bad, body, now=1_700_000_010)


async def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    async def holds() -> bool:
        return check()

    await eventually(holds, timeout=timeout)


async def _committed_total(bootstrap: str, topics: Topics, group: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        total = 0
        for p in range(partitions):
            total += await consumer.committed(TopicPartition(topics.integration_events, p)) or 0
        return total
    finally:
        await consumer.stop()
