"""Events PostgreSQL refuses are quarantined, not fatal (issue 12, item 4).

The events topic is kept forever, so an event the projector cannot write would stop it for good. Here
such events are written straight to the events topic, as a buggy older decider would have written them
(the decider refuses the inputs today): a NUL character in a contact name, a `batch_number` and a
campaign `version` above 2^31-1, and a record that is not an event at all. They sit in one batch with
good events; the good ones are projected, the bad ones land in `unprojectable_events` with why, the
metric counts them, `enrollstream dlq list --quarantined` lists them, the worker stays up and goes on
with the next events.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
from prometheus_client import REGISTRY

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.projector import PROJECTION
from tests.integration.test_cli_operations import cli, cli_env
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll, send
from tests.support import eventually, publish, read_until, running_worker

INT4_MAX = 2**31 - 1


def enrolled_event(records: list[Any], contact_id: str) -> dict[str, Any]:
    for record in records:
        event = json.loads(record.value)
        if event["type"] == "ContactEnrolled.v1" and event["contact_id"] == contact_id:
            return event  # type: ignore[no-any-return]
    raise AssertionError(f"no ContactEnrolled for {contact_id}")


def variant(template: dict[str, Any], contact_id: str) -> dict[str, Any]:
    """The template's ContactEnrolled for another contact (new ids), to be made bad."""
    event = json.loads(json.dumps(template))
    event.update(
        event_id=f"evt-{uuid.uuid4()}",
        contact_id=contact_id,
        enrollment_id=f"enr-{uuid.uuid4()}",
        causation_id=f"cmd-{uuid.uuid4()}",
    )
    return event


def quarantined_total(topic: str) -> float:
    return REGISTRY.get_sample_value("enrollstream_quarantined_events_total", {"topic": topic}) or 0.0


async def test_events_postgres_refuses_are_quarantined_and_the_projector_goes_on(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    # The good events first, decided without a projector, so that bad and good share one batch later.
    async with running_worker(settings, roles=("decider",)):
        await send(settings, topics, enroll("good-1"), key=f"{ACCOUNT}/good-1")
        await send(settings, topics, enroll("good-2"), key=f"{ACCOUNT}/good-2")
        events = await read_until(
            bootstrap,
            topics.events,
            lambda rs: sum(json.loads(r.value)["type"] == "ContactEnrolled.v1" for r in rs) >= 2,
        )
    template = enrolled_event(events, "good-1")

    nul = variant(template, "nul-name")
    nul["data"]["contact"]["name"] = "Bad\x00Name"
    big_batch = variant(template, "big-batch")
    big_batch["data"]["batch_number"] = INT4_MAX + 1
    big_version = variant(template, "big-version")
    big_version["data"]["campaign"]["version"] = INT4_MAX + 1
    bad = {"nul-name": nul, "big-batch": big_batch, "big-version": big_version}
    for contact_id, event in bad.items():
        await publish(bootstrap, topics.events, json.dumps(event).encode(), key=f"{ACCOUNT}/{contact_id}")
    await publish(bootstrap, topics.events, b"\xff not an event", key=f"{ACCOUNT}/garbage")

    before = quarantined_total(topics.events)
    async with running_worker(settings) as worker:

        async def quarantined() -> int:
            return await fetch_int(database_url, "select count(*) from unprojectable_events")

        async def goods_projected() -> bool:
            return (
                await fetch_int(
                    database_url,
                    "select count(*) from enrollments where contact_id in ('good-1', 'good-2')",
                )
                == 2
            )

        await eventually(lambda: _ge(quarantined(), 4), what="four quarantined records")
        await eventually(goods_projected, what="the good events of the batch projected")
        # The next events after the bad ones go on being projected, by the same worker.
        await send(settings, topics, enroll("good-3"), key=f"{ACCOUNT}/good-3")

        async def next_projected() -> bool:
            return (
                await fetch_int(database_url, "select count(*) from enrollments where contact_id = 'good-3'")
                == 1
            )

        await eventually(next_projected, what="the next good event projected")
        assert worker.failure is None
        assert not worker.stop_event.is_set(), "the worker is still running"
        assert worker.projector is not None and worker.projector.quarantined == 4

        listed = await cli("dlq", "list", "--quarantined", env=cli_env(settings))
    assert quarantined_total(topics.events) - before == 4

    conn = await asyncpg.connect(database_url)
    try:
        rows = {
            row["event_id"]: row
            for row in await conn.fetch(
                'select * from unprojectable_events where projection = $1 order by partition, "offset"',
                PROJECTION,
            )
        }
        refused = await conn.fetchval(
            "select count(*) from enrollments where contact_id = any($1::text[])", list(bad)
        )
        checkpoints = {
            r["partition"]: r["next_offset"]
            for r in await conn.fetch(
                "select partition, next_offset from projection_checkpoints where topic = $1", topics.events
            )
        }
    finally:
        await conn.close()

    assert refused == 0
    assert set(rows) == {nul["event_id"], big_batch["event_id"], big_version["event_id"], None}
    nul_row = rows[nul["event_id"]]
    assert nul_row["type"] == "ContactEnrolled.v1" and nul_row["account_id"] == ACCOUNT
    assert nul_row["topic"] == topics.events
    # Refused by the event contract (its bounds) or, for events older than them, by PostgreSQL itself.
    assert any(why in nul_row["reason"] for why in ("CharacterNotInRepertoire", "0x00", "ValidationError"))
    assert json.loads(nul_row["value"]) == nul  # the raw record, byte for byte
    assert nul_row["value_size"] == len(json.dumps(nul).encode())
    for event in (big_batch, big_version):
        reason = rows[event["event_id"]]["reason"]
        assert any(
            why in reason for why in ("out of int32 range", "NumericValueOutOfRange", "ValidationError")
        )
    assert rows[None]["value"] == b"\xff not an event" and rows[None]["type"] is None
    # Each quarantined record's checkpoint moved past it, with the data.
    for row in rows.values():
        assert checkpoints[row["partition"]] > row["offset"]

    assert listed.code == 0, listed.err
    assert "4 quarantined events" in listed.out
    assert nul["event_id"] in listed.out and "ContactEnrolled.v1" in listed.out


async def fetch_int(database_url: str, sql: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def _ge(value: Any, least: int) -> bool:
    return int(await value) >= least


async def test_an_event_the_contract_accepts_and_postgresql_refuses_is_quarantined(
    settings: Settings, topics: Topics
) -> None:
    """The refusal comes from the real server: a CHECK constraint added to this test's database refuses
    one contact's row (as a column limit or a later constraint would refuse an event already in the log),
    so the event passes its contract and fails at INSERT. It is quarantined with PostgreSQL's reason, the
    batch's other rows are written, and the projector goes on."""
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "alter table enrollments add constraint refuse_one check (contact_id <> 'refused-by-pg')"
        )
    finally:
        await conn.close()
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    async with running_worker(settings, roles=("decider",)):
        for contact_id in ("before-pg", "refused-by-pg", "beside-pg"):
            await send(settings, topics, enroll(contact_id), key=f"{ACCOUNT}/{contact_id}")
        await read_until(
            bootstrap,
            topics.events,
            lambda rs: sum(json.loads(r.value)["type"] == "ContactEnrolled.v1" for r in rs) >= 3,
        )
    async with running_worker(settings) as worker:

        async def settled() -> bool:
            quarantined = await fetch_int(database_url, "select count(*) from unprojectable_events")
            projected = await fetch_int(
                database_url,
                "select count(*) from enrollments where contact_id in ('before-pg', 'beside-pg')",
            )
            return quarantined >= 1 and projected == 2

        await eventually(settled, what="the refused event quarantined and the others projected")
        await send(settings, topics, enroll("after-pg"), key=f"{ACCOUNT}/after-pg")
        await eventually(
            lambda: _ge(
                fetch_int(database_url, "select count(*) from enrollments where contact_id = 'after-pg'"), 1
            ),
            what="the next event projected",
        )
        assert worker.failure is None and not worker.stop_event.is_set()
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("select * from unprojectable_events")
    finally:
        await conn.close()
    assert len(rows) == 1
    row = rows[0]
    assert row["account_id"] == ACCOUNT and row["type"] == "ContactEnrolled.v1"
    assert "refuse_one" in row["reason"] or "CheckViolation" in row["reason"], row["reason"]
    assert json.loads(row["value"])["contact_id"] == "refused-by-pg"
