"""Idempotency by time through the real broker, decider and projector (issue 11 item 11): a command
re-published after 200 other commands for the same contact has no second effect."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain import ids
from enrollstream.runtime.campaigns import publish_campaign
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll, results_by_id
from tests.support import eventually, read_until, running_worker

CONTACT = "rita"
KEY = f"{ACCOUNT}/{CONTACT}"  # one key: one partition, in publish order
ISSUED = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def on_enrollment(kind: str, n: int, **data: Any) -> dict[str, Any]:
    return {
        "command_id": f"{kind}-{n}-{uuid.uuid4()}",
        "type": f"{kind}.v1",
        "account_id": ACCOUNT,
        "issued_at": (ISSUED + timedelta(minutes=n)).isoformat(),
        "actor": "test",
        "data": {
            "contact_id": CONTACT,
            "enrollment_id": ids.enrollment_id(ACCOUNT, CONTACT, "welcome", 1),
            **data,
        },
    }


async def test_a_reply_republished_after_200_other_commands_is_recorded_once(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    started = time.monotonic()
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    the_reply = on_enrollment("ReplyDetected", 1, excerpt="Yes, let's talk")  # no message id: the window only
    others = [on_enrollment("OpenDetected", 2 + n) for n in range(200)]
    commands = [enroll(CONTACT), the_reply, *others, the_reply]
    async with running_worker(settings):
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for command in commands:
                await producer.send(topics.commands, json.dumps(command).encode(), key=KEY.encode())
            await producer.flush()
        finally:
            await producer.stop()
        records = await read_until(bootstrap, topics.command_results, lambda rs: len(rs) >= len(commands))
        last = json.loads(records[-1].value)
        assert last["command_id"] == the_reply["command_id"]

        async def fetch(sql: str) -> int:
            conn = await asyncpg.connect(database_url)
            try:
                return int(await conn.fetchval(sql, CONTACT))
            finally:
                await conn.close()

        # Every event decided up to the last result, from the log (the source of truth) ...
        events = [
            json.loads(r.value)
            for r in await read_until(
                bootstrap,
                topics.events,
                lambda rs: any(json.loads(r.value)["version"] >= last["contact_version"] for r in rs),
            )
        ]
        event_ids = {e["event_id"] for e in events}

        async def all_projected() -> bool:  # ... and each of them in PostgreSQL
            projected = "select count(distinct event_id) from enrollment_timeline where contact_id = $1"
            return await fetch(projected) == len(event_ids)

        await eventually(all_projected, what="every event in the timeline")
    statuses = [
        result["status"]
        for result in (json.loads(r.value) for r in records)
        if result["command_id"] == the_reply["command_id"]
    ]
    assert statuses == ["accepted", "duplicate"]
    assert {results_by_id(records)[c["command_id"]]["status"] for c in others} == {"accepted"}
    replies = await fetch("select count(*) from replies where contact_id = $1")
    received = [e for e in events if e["type"] == "ReplyReceived.v1"]
    assert (replies, len(received)) == (1, 1)
    assert time.monotonic() - started < 30
