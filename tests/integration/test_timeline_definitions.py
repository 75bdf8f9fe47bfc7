"""A ContactEnrolled's timeline row refers to its campaign definition; its readers still get the event
whole (issue 15, migration 0020).

The definition was most of the timeline's bytes, repeated for every enrollment. The projector now keeps
each definition once per account (`campaign_definitions`, by the SHA-256 of its JSON) and the row's data
without it; `contact_timeline` and `contact_why` (the CLI, the API and the console read those) return the
event's data whole, definition included, read through `enrollment_timeline_events`. Rows written before
the migration, with the definition inside, read the same. Accounts are walls: another account enrolling
under the same definition has a definition row of its own, and each row finds its own account's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg
from aiokafka import TopicPartition
from bench import workload

from enrollstream.adapters.kafka.records import encode
from enrollstream.adapters.postgres.read_side import contact_timeline, contact_why
from enrollstream.domain.events import ContactEnrolled
from enrollstream.runtime.projector import ProjectorService

TOPIC = "events"
OTHER_ACCOUNT = "another-account"


@dataclass(frozen=True)
class Record:
    offset: int
    value: bytes


def _enrolled() -> list[ContactEnrolled]:
    events = [d.event for d in workload.events(60) if isinstance(d.event, ContactEnrolled)]
    assert len(events) >= 3
    return events[:3]


async def test_the_timeline_refers_to_the_definition_and_its_readers_get_the_event_whole(
    database_url: str,
) -> None:
    ours = _enrolled()
    # The same enrollment's event under another account: same definition, same digest, its own row.
    theirs = ours[0].model_copy(update={"account_id": OTHER_ACCOUNT, "event_id": f"{ours[0].event_id}-b"})
    records = [Record(offset, encode(event)) for offset, event in enumerate([*ours, theirs])]
    projector = ProjectorService("unused:9092", TOPIC, database_url, "test")
    await projector.open_pool()
    try:
        assert await projector.apply_batch({TopicPartition(TOPIC, 0): records}) == len(records)
    finally:
        await projector.stop()

    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetch(
            "select account_id, data, campaign_definition from enrollment_timeline order by event_offset"
        )
        definitions = await conn.fetch("select account_id, digest from campaign_definitions")
        for event in [*ours, theirs]:
            whole = json.loads(event.data.model_dump_json())
            for rows in (
                await contact_timeline(conn, event.account_id, event.contact_id),
                await contact_why(conn, event.account_id, event.contact_id),
            ):
                [row] = [r for r in rows if r["data"].get("campaign") is not None]
                assert row["data"] == whole

        # A row written before migration 0020 carries its definition and no reference: read the same.
        old = ours[1]
        await conn.execute("delete from enrollment_timeline where event_id = $1", old.event_id)
        await conn.execute(
            "insert into enrollment_timeline (event_id, account_id, contact_id, campaign_id, enrollment_id,"
            " version, type, occurred_at, causation_id, data)"
            " values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            old.event_id,
            old.account_id,
            old.contact_id,
            old.campaign_id,
            old.enrollment_id,
            old.version,
            old.type,
            old.occurred_at,
            old.causation_id,
            old.data.model_dump_json(),
        )
        [row] = await contact_timeline(conn, old.account_id, old.contact_id)
        assert row["data"] == json.loads(old.data.model_dump_json())

        # Another account's definition row is its own: without ours, our rows do not read theirs.
        digest = stored[0]["campaign_definition"]
        await conn.execute(
            "delete from campaign_definitions where account_id = $1 and digest = $2",
            ours[0].account_id,
            digest,
        )
        [row] = await contact_timeline(conn, ours[0].account_id, ours[0].contact_id)
        assert row["data"]["campaign"] is None
        [row] = await contact_timeline(conn, OTHER_ACCOUNT, theirs.contact_id)
        assert row["data"] == json.loads(theirs.data.model_dump_json())
    finally:
        await conn.close()

    assert all(r["campaign_definition"] is not None for r in stored)
    assert all("campaign" not in json.loads(r["data"]) for r in stored)
    assert len({r["campaign_definition"] for r in stored}) < len(stored), "enrollments share a definition"
    assert {(r["account_id"], r["digest"]) for r in definitions} == {
        (r["account_id"], r["campaign_definition"]) for r in stored
    }
