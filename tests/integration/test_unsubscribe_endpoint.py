"""The one-click unsubscribe endpoint (RFC 8058) on 127.0.0.1, publishing to the real broker, and the
real decider turning its OptOut into a stopped enrollment."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.mail.unsubscribe import UnsubscribeClaims, sign_unsubscribe_token
from enrollstream.config import Settings
from enrollstream.domain import parse_event
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.unsubscribe_server import UnsubscribeServer
from tests.integration.test_walking_skeleton import welcome_campaign
from tests.support import eventually, fetch_one, publish, read_until, running_worker

KEY = b"unsubscribe-key-0123456789"
OTHER_KEY = b"someone-elses-key-0123456789"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.fixture
async def server(settings: Settings, topics: Topics) -> AsyncIterator[UnsubscribeServer]:
    assert settings.kafka_bootstrap_servers
    # The old key still verifies (rotation): tokens in messages already sent keep working.
    server = UnsubscribeServer(
        settings.kafka_bootstrap_servers, topics, [KEY, b"older-key-0123456789ab"], port=0, now=lambda: NOW
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def opt_outs(records: list[object]) -> list[dict[str, object]]:
    decoded = [json.loads(r.value) for r in records]  # type: ignore[attr-defined]
    return [c for c in decoded if c["type"] == "OptOut.v1"]


async def test_a_one_click_post_opts_the_contact_out_and_a_get_does_not(
    settings: Settings, topics: Topics, server: UnsubscribeServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap and settings.database_url
    account = f"acct-{uuid.uuid4().hex[:6]}"
    await publish_campaign(bootstrap, topics.campaigns, welcome_campaign(account))
    enroll = {
        "command_id": f"cmd-{uuid.uuid4()}",
        "type": "Enroll.v1",
        "account_id": account,
        "issued_at": datetime(2026, 11, 22, 9, 0, tzinfo=UTC).isoformat(),
        "actor": "crm",
        "data": {"contact_id": "ada", "campaign_id": "welcome", "contact": {"email": "ada@example.org"}},
    }
    async with running_worker(settings), aiohttp.ClientSession() as http:
        await publish(bootstrap, topics.commands, json.dumps(enroll).encode(), key=f"{account}/ada")
        records = await read_until(
            bootstrap, topics.events, lambda rs: any(b"ContactEnrolled.v1" in r.value for r in rs)
        )
        enrollment_id = next(e.enrollment_id for e in map(parse_event, (r.value for r in records)))
        assert enrollment_id
        token = sign_unsubscribe_token(UnsubscribeClaims(account, "ada", enrollment_id), KEY)
        url = f"{server.base_url}/unsubscribe/{token}"

        # A mail scanner prefetching the link: a page with a form, nothing published.
        async with http.get(url) as page:
            assert page.status == 200
            text = await page.text()
            assert '<form method="post">' in text
            assert 'name="List-Unsubscribe" value="One-Click"' in text

        async with http.post(url, data=ONE_CLICK) as done:
            assert done.status == 200, await done.text()
            assert "Unsubscribed" in await done.text()

        commands = await read_until(bootstrap, topics.commands, lambda rs: len(opt_outs(rs)) >= 1)
        (opt_out,) = opt_outs(commands)  # exactly one: the GET before it published nothing
        record = next(r for r in commands if b"OptOut.v1" in r.value)
        assert record.key == f"{account}/ada".encode()
        assert opt_out["command_id"] == f"unsubscribe:{account}/ada:{enrollment_id}"
        assert opt_out["actor"] == "unsubscribe"
        assert opt_out["issued_at"].startswith("2026-11-22T10:00:00")

        # The real decider stops the enrollment (opted out); the projector shows it.
        stopped = await read_until(
            bootstrap, topics.events, lambda rs: any(b"EnrollmentStopped.v1" in r.value for r in rs)
        )
        stop = next(
            e for e in map(parse_event, (r.value for r in stopped)) if e.type == "EnrollmentStopped.v1"
        )
        assert stop.data.reason == "opted_out"  # type: ignore[union-attr]

        async def row_stopped() -> bool:
            row = await fetch_one(
                settings.database_url,
                "select status from enrollments where enrollment_id = $1",
                enrollment_id,
            )
            return row is not None and row["status"] == "stopped"

        await eventually(row_stopped, what="the enrollment row stopped")


async def test_forged_malformed_and_foreign_tokens_are_400_and_publish_nothing(
    settings: Settings, topics: Topics, server: UnsubscribeServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    claims = UnsubscribeClaims("acct", "ada", "enr-1")
    good = sign_unsubscribe_token(claims, KEY)
    payload, _, mac = good.partition(".")
    forged_claims = sign_unsubscribe_token(UnsubscribeClaims("acct", "bob", "enr-1"), KEY).partition(".")[0]
    bad_tokens = [
        f"{forged_claims}.{mac}",  # someone else's contact under ada's signature
        sign_unsubscribe_token(claims, OTHER_KEY),  # not our key
        payload,  # no signature
        "not-a-token",
    ]
    async with aiohttp.ClientSession() as http:
        for token in bad_tokens:
            for method in ("GET", "POST"):
                async with http.request(
                    method, f"{server.base_url}/unsubscribe/{token}", data=ONE_CLICK
                ) as response:
                    assert response.status == 400, (method, token)
                    assert "invalid" in (await response.text()).lower()
        # A valid token without the RFC 8058 body is refused too.
        async with http.post(f"{server.base_url}/unsubscribe/{good}", data={"x": "y"}) as response:
            assert response.status == 400
        # The older rotated key still verifies; publish a valid one as the marker that ends the read.
        older = sign_unsubscribe_token(UnsubscribeClaims("acct", "ada", "enr-2"), b"older-key-0123456789ab")
        async with http.post(f"{server.base_url}/unsubscribe/{older}", data=ONE_CLICK) as response:
            assert response.status == 200
    commands = await read_until(bootstrap, topics.commands, lambda rs: len(rs) >= 1)
    assert [c["command_id"] for c in opt_outs(commands)] == ["unsubscribe:acct/ada:enr-2"]
    assert (
        await records_in(bootstrap, topics.commands, settings.partitions) == 1
    )  # every partition, not just the first read


async def records_in(bootstrap: str, topic: str, count: int) -> int:
    """How many records a topic holds (its producers are not transactional: no control records)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(count)]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


async def test_a_publishing_failure_is_503(server: UnsubscribeServer) -> None:
    token = sign_unsubscribe_token(UnsubscribeClaims("acct", "ada", "enr-1"), KEY)
    assert server.producer is not None
    await server.producer.stop()  # the broker connection is gone
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.base_url}/unsubscribe/{token}", data=ONE_CLICK) as response,
    ):
        assert response.status == 503
        assert "try again" in (await response.text()).lower()


async def test_the_worker_runs_the_unsubscribe_role_from_settings(settings: Settings) -> None:
    configured = settings.model_copy(
        update={"unsubscribe_port": 0, "unsubscribe_keys": f"{KEY.decode()}, older-key-0123456789ab"}
    )
    token = sign_unsubscribe_token(UnsubscribeClaims("acct", "ada", "enr-1"), b"older-key-0123456789ab")
    async with running_worker(configured, roles=("unsubscribe",)) as worker:
        assert worker.unsubscribe is not None and worker.unsubscribe.host == "127.0.0.1"
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{worker.unsubscribe.base_url}/unsubscribe/{token}") as response,
        ):
            assert response.status == 200


@contextlib.asynccontextmanager
async def slow_client_server(
    settings: Settings, topics: Topics, **limits: Any
) -> AsyncIterator[UnsubscribeServer]:
    assert settings.kafka_bootstrap_servers
    server = UnsubscribeServer(settings.kafka_bootstrap_servers, topics, [KEY], port=0, **limits)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _connect(
    server: UnsubscribeServer, first_bytes: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(first_bytes)
    await writer.drain()
    return reader, writer


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it still holds the connection after `seconds`."""
    try:
        return await asyncio.wait_for(reader.read(), seconds)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


async def test_a_client_that_never_finishes_its_request_is_disconnected_within_the_idle_timeout(
    settings: Settings, topics: Topics
) -> None:
    async with slow_client_server(settings, topics, idle_timeout_s=1.0) as server:
        started = time.monotonic()
        reader, writer = await _connect(server, b"GET /unsubscribe/abc HT")  # and then nothing
        trickle_reader, trickle = await _connect(server, b"G")

        async def dribble() -> None:  # a byte every 0.2 s never completes the request line
            with contextlib.suppress(ConnectionError):
                for byte in b"ET /unsubscribe/abc HTTP/1.1\r\n":
                    await asyncio.sleep(0.2)
                    trickle.write(bytes([byte]))
                    await trickle.drain()

        dribbling = asyncio.create_task(dribble())
        try:
            assert await _closed_within(reader, 5.0) is not None, "the silent client is still connected"
            assert await _closed_within(trickle_reader, 5.0) is not None, (
                "the trickling client is still connected"
            )
            assert time.monotonic() - started < 3.0
        finally:
            dribbling.cancel()
            writer.close()
            trickle.close()
        # A well-behaved client is still served.
        async with aiohttp.ClientSession() as http, http.get(f"{server.base_url}/unsubscribe/nope") as page:
            assert page.status == 400


async def test_idle_connections_past_the_limit_do_not_block_a_request(
    settings: Settings, topics: Topics
) -> None:
    token = sign_unsubscribe_token(UnsubscribeClaims("acct", "ada", "enr-1"), KEY)
    # Idle connections: the oldest make room for newer ones, long before the (long) idle timeout.
    async with slow_client_server(settings, topics, idle_timeout_s=30.0, max_connections=3) as server:
        idle = [await _connect(server, b"GET /unsubscribe/" + str(n).encode()) for n in range(6)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{server.base_url}/unsubscribe/{token}") as page,
        ):
            assert page.status == 200
        assert time.monotonic() - started < 2.0
        still_open = [await _closed_within(reader, 0.3) is None for reader, _ in idle]
        assert sum(still_open) <= 2, still_open  # at most the limit, the request's connection included
        assert still_open[-1], "the newest idle connection was closed instead of the oldest"
        assert server.evicted >= 4
        for _, writer in idle:
            writer.close()

    # Busy connections (bodies that never finish): a new one is answered 503 at once, and each slow
    # body is 408 after the body timeout.
    async with slow_client_server(
        settings, topics, idle_timeout_s=30.0, body_timeout_s=1.0, max_connections=2
    ) as server:
        head = (
            f"POST /unsubscribe/{token} HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nList-"
        ).encode()
        slow = [await _connect(server, head) for _ in range(2)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        reader, writer = await _connect(
            server, f"GET /unsubscribe/{token} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        refused = await _closed_within(reader, 2.0)
        assert refused is not None and refused.startswith(b"HTTP/1.1 503"), refused
        assert b"Retry-After: 5" in refused and time.monotonic() - started < 2.0
        assert server.refused == 1
        for slow_reader, _ in slow:
            answer = await _closed_within(slow_reader, 3.0)
            assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer
        writer.close()
        for _, slow_writer in slow:
            slow_writer.close()
