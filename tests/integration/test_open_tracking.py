"""Open tracking through the real servers: the real dispatcher puts a signed pixel in the message it hands
to a real SMTP server, the pixel endpoint (the unsubscribe role's HTTP server, on 127.0.0.1) answers
every load with a GIF and publishes one OpenDetected to the real broker, and the real decider and
projector record one open however often the pixel is loaded."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.mail.open_tracking import PIXEL_GIF, OpenClaims, sign_open_token
from enrollstream.adapters.mail.unsubscribe import UnsubscribeClaims, sign_unsubscribe_token
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition, parse_event
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.unsubscribe_server import UnsubscribeServer
from tests.integration.test_contact_directory import sending
from tests.integration.test_unsubscribe_endpoint import records_in
from tests.servers.smtp import RecordingSmtpServer
from tests.support import eventually, publish_enroll, read_until, running_worker

KEY = "k" * 32  # what `sending()` signs with
OLDER_KEY = b"older-key-0123456789ab"
ROLES = ("decider", "projector", "scheduler", "dispatcher")
PIXEL = re.compile(r'<img src="([^"]+)"')


@pytest.fixture
async def pixel_server(settings: Settings, topics: Topics) -> AsyncIterator[UnsubscribeServer]:
    assert settings.kafka_bootstrap_servers
    server = UnsubscribeServer(settings.kafka_bootstrap_servers, topics, [KEY.encode(), OLDER_KEY], port=0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def campaign(account_id: str, track_opens: bool) -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": "welcome",
            "account_id": account_id,
            "version": 1,
            "track_opens": track_opens,
            "steps": [{"channel": "email", "delay": "PT0S", "content": {"subject": "Hi", "body": "Hello"}}],
        }
    )


def opens_in(records: list[object]) -> list[dict[str, object]]:
    decoded = [json.loads(r.value) for r in records]  # type: ignore[attr-defined]
    return [c for c in decoded if c["type"] == "OpenDetected.v1"]


async def test_a_pixel_loaded_five_times_is_one_open(
    settings: Settings,
    topics: Topics,
    smtp_server: RecordingSmtpServer,
    pixel_server: UnsubscribeServer,
    db: asyncpg.Connection,
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = f"acct-{uuid.uuid4().hex[:6]}"
    await publish_campaign(bootstrap, topics.campaigns, campaign(account, track_opens=True))
    tracking = sending(settings, smtp_server).model_copy(
        update={"open_tracking_url": f"{pixel_server.base_url}/o"}
    )
    async with running_worker(tracking, roles=ROLES), aiohttp.ClientSession() as http:
        await publish_enroll(bootstrap, topics.commands, account, "ada", "ada@example.org")

        async def sent() -> bool:
            return bool(smtp_server.received_for("ada@example.org"))

        await eventually(sent, timeout=60, what="the step sent")
        [received] = smtp_server.received_for("ada@example.org")
        html = received.message.get_body(("html",))
        assert html is not None, "a tracked campaign's email has an HTML part"
        [url] = PIXEL.findall(html.get_content())
        assert url.startswith(f"{pixel_server.base_url}/o/") and url.endswith(".gif")

        # A prefetching proxy, then the person, then some more: every load is the image, at once.
        for agent in ["Mozilla/5.0", "Thunderbird/128.0", "Thunderbird/128.0", "Mozilla/5.0", "x"]:
            async with http.get(url, headers={"User-Agent": agent}) as pixel:
                assert pixel.status == 200
                assert pixel.content_type == "image/gif"
                assert await pixel.read() == PIXEL_GIF
                assert "no-store" in pixel.headers["Cache-Control"]

        events = await read_until(
            bootstrap, topics.events, lambda rs: any(b"MessageOpened.v1" in r.value for r in rs)
        )

        async def opened_row() -> bool:
            row = await db.fetchrow("select opened_at from enrollments where contact_id = 'ada'")
            return row is not None and row["opened_at"] is not None

        await eventually(opened_row, what="the enrollments row's opened_at set")

        # A second endpoint process (nothing remembered) loading it again: the decider's duplicate.
        second = UnsubscribeServer(bootstrap, topics, [KEY.encode()], port=0)
        await second.start()
        try:
            again = url.replace(pixel_server.base_url, second.base_url)
            async with http.get(again, headers={"User-Agent": "Thunderbird/128.0"}) as pixel:
                assert pixel.status == 200
        finally:
            await second.stop()  # waits for its publish
        commands = await read_until(bootstrap, topics.commands, lambda rs: len(opens_in(rs)) >= 2)
        results = await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: sum(b'"open:' in r.value for r in rs) >= 2,
        )

    # The first process published once for five loads; the second once; both the same command id.
    assert pixel_server.opens_published == 1 and second.opens_published == 1
    published = opens_in(commands)
    assert len(published) == 2 and len({c["command_id"] for c in published}) == 1
    assert published[0]["data"]["machine"] == "privacy_prefetch"  # the first load was Apple's proxy
    statuses = sorted(json.loads(r.value)["status"] for r in results if b'"open:' in r.value)
    assert statuses == ["accepted", "duplicate"]
    events = await read_until(bootstrap, topics.events, lambda rs: len(rs) >= len(events))
    opened = [e for e in map(parse_event, (r.value for r in events)) if e.type == "MessageOpened.v1"]
    assert len(opened) == 1
    assert opened[0].data.first_open and opened[0].data.machine == "privacy_prefetch"  # type: ignore[union-attr]
    assert await db.fetchval("select count(*) from enrollments where opened_at is not null") == 1


async def test_forged_and_tampered_pixels_are_404_and_publish_nothing(
    settings: Settings, topics: Topics, pixel_server: UnsubscribeServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    claims = OpenClaims("acct", "ada", "enr-1", 0, 1, 0)
    good = sign_open_token(claims, KEY.encode())
    payload, _, mac = good.partition(".")
    bob = sign_open_token(OpenClaims("acct", "bob", "enr-1", 0, 1, 0), KEY.encode()).partition(".")[0]
    other_account = sign_open_token(OpenClaims("acct-b", "ada", "enr-1", 0, 1, 0), KEY.encode())
    bad_paths = [
        f"{bob}.{mac}.gif",  # another contact's message under ada's signature
        f"{other_account.partition('.')[0]}.{mac}.gif",  # another account's
        f"{sign_open_token(claims, b'someone-elses-key-0123456789')}.gif",  # not our key
        f"{sign_unsubscribe_token(UnsubscribeClaims('acct', 'ada', 'enr-1'), KEY.encode())}.gif",
        f"{payload}.gif",  # no signature
        "not-a-token.gif",
        good,  # not the pixel's path
        "A" * 4000 + ".gif",
    ]
    async with aiohttp.ClientSession() as http:
        for path in bad_paths:
            async with http.get(f"{pixel_server.base_url}/o/{path}") as response:
                assert response.status == 404, path
        # A token of the older key still verifies (rotation): its open ends the read below.
        older = sign_open_token(OpenClaims("acct", "ada", "enr-2", 0, 1, 0), OLDER_KEY)
        async with http.get(f"{pixel_server.base_url}/o/{older}.gif") as response:
            assert response.status == 200
    commands = await read_until(bootstrap, topics.commands, lambda rs: len(rs) >= 1)
    assert [c["data"]["enrollment_id"] for c in opens_in(commands)] == ["enr-2"]
    assert await records_in(bootstrap, topics.commands, settings.partitions) == 1


async def test_a_campaign_with_tracking_off_sends_no_pixel(
    settings: Settings, topics: Topics, smtp_server: RecordingSmtpServer
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    account = f"acct-{uuid.uuid4().hex[:6]}"
    await publish_campaign(bootstrap, topics.campaigns, campaign(account, track_opens=False))
    tracking = sending(settings, smtp_server).model_copy(
        update={"open_tracking_url": "https://t.acme.example/o"}
    )
    async with running_worker(tracking, roles=ROLES):
        await publish_enroll(bootstrap, topics.commands, account, "ada", "ada@example.org")

        async def sent() -> bool:
            return bool(smtp_server.received_for("ada@example.org"))

        await eventually(sent, timeout=60, what="the step sent")
    [received] = smtp_server.received_for("ada@example.org")
    assert received.message.get_content_type() == "text/plain"
    assert b"t.acme.example" not in received.message.as_bytes()
    assert received.message.get_content().strip() == "Hello"
