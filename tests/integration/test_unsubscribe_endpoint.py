"""The one-click unsubscribe endpoint (RFC 8058) on 127.0.0.1, publishing to the real broker, and the
real decider turning its OptOut into a stopped enrollment."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

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
