"""The projector against the real broker and database: batches and checkpoints move together."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.postgres.read_side import contact_why
from enrollstream.config import Settings
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.projector import PROJECTION, ProjectorService
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll, results_by_id, send
from tests.support import eventually, publish, read_until, running_worker


async def count(database_url: str, sql: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def test_bulk_enroll_fans_out_once_in_numbered_batches_and_every_enrollment_is_projected(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    contacts = [f"contact-{i}" for i in range(7)]
    bulk = {
        "command_id": f"bulk-{uuid.uuid4()}",
        "type": "BulkEnroll.v1",
        "account_id": ACCOUNT,
        "issued_at": datetime(2026, 11, 22, 9, 0, tzinfo=UTC).isoformat(),
        "actor": "import",
        "data": {
            "campaign_id": "welcome",
            "contact_import_id": "import-1",
            "batch_size": 3,
            "contacts": [
                {"contact_id": c, "contact": {"name": c, "email": f"{c}@example.org"}} for c in contacts
            ],
        },
    }
    async with running_worker(settings):
        await publish(bootstrap, topics.commands, json.dumps(bulk).encode(), key=f"{ACCOUNT}/import-1")
        # The same BulkEnroll delivered twice (an upstream retry) enrolls nobody twice.
        await publish(bootstrap, topics.commands, json.dumps(bulk).encode(), key=f"{ACCOUNT}/import-1")

        async def all_projected() -> bool:
            return await count(database_url, "select count(*) from enrollments") >= len(contacts)

        await eventually(all_projected, what="seven enrollments rows")
        results = await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: sum(json.loads(r.value)["command_type"] == "Enroll.v1" for r in rs) >= 14,
        )
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("select contact_id, batch_number from enrollments order by contact_id")
    finally:
        await conn.close()
    assert [(r["contact_id"], r["batch_number"]) for r in rows] == [
        (c, 1 + i // 3) for i, c in enumerate(contacts)
    ]
    child_statuses = sorted(
        json.loads(r.value)["status"] for r in results if json.loads(r.value)["command_type"] == "Enroll.v1"
    )
    assert child_statuses == ["accepted"] * 7 + ["duplicate"] * 7
    assert results_by_id(results)[bulk["command_id"]]["status"] == "accepted"


async def test_a_batch_applied_twice_changes_nothing_and_checkpoints_only_move_forward(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    commands = [enroll(f"p{i}") for i in range(5)]
    async with running_worker(settings, roles=("decider",)):
        for command in commands:
            await send(settings, topics, command, f"{ACCOUNT}/{command['data']['contact_id']}")
        await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: {c["command_id"] for c in commands} <= set(results_by_id(rs)),
        )
    events = await read_until(bootstrap, topics.events, lambda rs: len(rs) >= 5)

    projector = ProjectorService(bootstrap, topics.events, database_url, settings.group_id)
    await projector.start()
    try:
        from aiokafka import TopicPartition

        batch: dict[TopicPartition, list[object]] = {}
        for record in events:
            batch.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
        first = await projector.apply_batch(batch)
        snapshot = await count(database_url, "select count(*) from enrollments")
        checkpoints = await projector.checkpoints()
        again = await projector.apply_batch(batch)  # a redelivery after a crash before the Kafka commit
        assert again == 0
        assert await projector.checkpoints() == checkpoints
        assert await count(database_url, "select count(*) from enrollments") == snapshot == 5
        assert first == len(events)
        assert checkpoints == {tp.partition: records[-1].offset + 1 for tp, records in batch.items()}
    finally:
        await projector.stop()
    assert await count(
        database_url, f"select count(*) from projection_checkpoints where projection = '{PROJECTION}'"
    ) == len(batch)


async def test_skips_and_the_timeline_answer_why(settings: Settings, topics: Topics) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    first = enroll("hedy")
    bulk = {
        "command_id": f"bulk-{uuid.uuid4()}",
        "type": "BulkEnroll.v1",
        "account_id": ACCOUNT,
        "issued_at": datetime(2026, 11, 22, 10, 0, tzinfo=UTC).isoformat(),
        "actor": "import",
        "data": {
            "campaign_id": "welcome",
            "contact_import_id": "import-2",
            "batch_size": 50,
            "contacts": [
                {"contact_id": "hedy", "contact": {"name": "Hedy", "email": "hedy@example.org"}},
                {"contact_id": "ida", "contact": {"name": "Ida", "email": "ida@example.org"}},
            ],
        },
    }
    async with running_worker(settings):
        await send(settings, topics, first, f"{ACCOUNT}/hedy")
        await read_until(
            bootstrap, topics.command_results, lambda rs: first["command_id"] in results_by_id(rs)
        )
        await publish(bootstrap, topics.commands, json.dumps(bulk).encode(), key=f"{ACCOUNT}/import-2")
        events = await read_until(
            bootstrap,
            topics.events,
            lambda rs: (
                any(b'"EnrollmentSkipped.v1"' in r.value for r in rs) and any(b'"ida"' in r.value for r in rs)
            ),
        )

        async def timeline_complete() -> bool:
            return await count(database_url, "select count(*) from enrollment_timeline") >= len(events)

        await eventually(timeline_complete, what="every event in the timeline")

        async def skip_decided() -> bool:  # the bulk's child Enrolls' results are projected too
            return await count(database_url, "select count(*) from decisions where actor = 'import'") >= 3

        await eventually(skip_decided, what="the bulk enroll's results in `decisions`")
    conn = await asyncpg.connect(database_url)
    try:
        skip = await conn.fetchrow("select * from enrollment_skips")
        why = await conn.fetch(
            "select type, causation_id from enrollment_timeline where contact_id = 'hedy' order by version"
        )
        hedy = await contact_why(conn, ACCOUNT, "hedy")
    finally:
        await conn.close()
    # The skip is part of the why, with the command that decided it and who asked.
    skipped = next(w for w in hedy if w["what"] == "EnrollmentSkipped.v1")
    assert (skipped["command_type"], skipped["actor"], skipped["kind"]) == ("Enroll.v1", "import", "event")
    assert skipped["data"]["kind"] == "already_enrolled"
    assert (skip["contact_id"], skip["kind"], skip["email"]) == (
        "hedy",
        "already_enrolled",
        "hedy@example.org",
    )
    assert skip["contact_import_id"] == "import-2"
    assert why[0]["causation_id"] == first["command_id"] and why[0]["type"] == "ContactEnrolled.v1"
    assert why[-1]["type"] == "EnrollmentSkipped.v1" and why[-1]["causation_id"].startswith(
        bulk["command_id"]
    )


def _command(
    kind: str, contact_id: str, at: datetime, account_id: str = ACCOUNT, **data: Any
) -> dict[str, Any]:
    return {
        "command_id": f"{kind.lower()}-{uuid.uuid4()}",
        "type": f"{kind}.v1",
        "account_id": account_id,
        "issued_at": at.isoformat(),
        "actor": "ops@acct-a",
        "data": {"contact_id": contact_id, **data},
    }


async def test_refused_and_ignored_decisions_are_kept_with_their_cause_and_answer_why_in_order(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    enrolled = enroll("ada")  # issued 09:00; its one step is due an hour later
    at = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
    refused = enroll("ada", campaign_id="no-such-campaign")
    # Another account's command about a contact with the same id: a wall between accounts.
    elsewhere = enroll("ada", account_id="acct-b")
    async with running_worker(settings):
        await send(settings, topics, enrolled, f"{ACCOUNT}/ada")
        results = await read_until(
            bootstrap, topics.command_results, lambda rs: enrolled["command_id"] in results_by_id(rs)
        )
        [enrollment_id] = results_by_id(results)[enrolled["command_id"]]["enrollment_ids"]
        on_it = {"enrollment_id": enrollment_id}
        early = _command("StepDue", "ada", at, step_index=0, attempt=1, **on_it)  # deferred: not due yet
        stale = _command("StepDue", "ada", at, step_index=0, attempt=2, **on_it)  # not the current attempt
        stop = _command("Stop", "ada", at, **on_it)
        stop_again = _command("Stop", "ada", at + timedelta(minutes=1), **on_it)  # the enrollment ended
        sequence = [refused, enrolled, early, stale, stop, stop_again]  # `enrolled` again: a duplicate
        for command in sequence:
            await send(settings, topics, command, f"{ACCOUNT}/ada")
        await send(settings, topics, elsewhere, "acct-b/ada")
        everything = {c["command_id"] for c in [*sequence, elsewhere]}
        await read_until(bootstrap, topics.command_results, lambda rs: everything <= set(results_by_id(rs)))

        async def all_decisions_projected() -> bool:
            return await count(database_url, "select count(*) from decisions") >= 1 + len(sequence) + 1

        await eventually(all_decisions_projected, what="every result in `decisions`")
        await eventually(
            lambda: _stopped_projected(database_url, enrollment_id), what="the stop in the timeline"
        )

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "select * from decisions where account_id = $1 and contact_id = 'ada' order by result_offset",
            ACCOUNT,
        )
        why = await contact_why(conn, ACCOUNT, "ada")
        why_in_campaign = await contact_why(conn, ACCOUNT, "ada", "welcome")
        other_account = await contact_why(conn, "acct-b", "ada")
        nobody = await contact_why(conn, "acct-c", "ada")
    finally:
        await conn.close()

    by_command = {(r["command_id"], r["status"]): r for r in rows}
    expected = [
        (refused, "rejected", "campaign_not_found", None),
        (enrolled, "duplicate", "duplicate", None),
        (early, "deferred", "deferred", enrollment_id),
        (stale, "stale", "stale", enrollment_id),
        (stop_again, "rejected", "invalid_transition", enrollment_id),
    ]
    for command, status, code, on_enrollment in expected:
        row = by_command[(command["command_id"], status)]
        assert (row["command_type"], row["actor"], row["code"]) == (command["type"], command["actor"], code)
        assert row["message"], f"{status}: no reason"
        assert row["enrollment_id"] == on_enrollment
        assert row["issued_at"] == datetime.fromisoformat(command["issued_at"])
    assert by_command[(enrolled["command_id"], "accepted")]["event_ids"]

    # "Why": the events and the decisions that changed nothing, in the order they were made.
    story = [(w["kind"], w["what"] if w["kind"] == "event" else w["status"], w["command_id"]) for w in why]
    decisions_only = [(status, command_id) for kind, status, command_id in story if kind == "decision"]
    assert decisions_only == [
        ("rejected", refused["command_id"]),
        ("duplicate", enrolled["command_id"]),
        ("deferred", early["command_id"]),
        ("stale", stale["command_id"]),
        ("rejected", stop_again["command_id"]),
    ]

    def at_(what: str, command: dict[str, Any] | None = None) -> int:
        return next(
            i for i, (_, said, command_id) in enumerate(story)
            if said == what and (command is None or command_id == command["command_id"])
        )  # fmt: skip

    assert (
        at_("ContactEnrolled.v1")
        < at_("rejected", refused)
        < at_("duplicate")
        < at_("deferred")
        < at_("stale")
        < at_("EnrollmentStopped.v1")
        < at_("rejected", stop_again)
    ), story
    enrolled_event = next(w for w in why if w["what"] == "ContactEnrolled.v1")
    assert (enrolled_event["actor"], enrolled_event["command_type"]) == ("test", "Enroll.v1")
    refusal = why[story.index(("decision", "rejected", stop_again["command_id"]))]
    assert (refusal["code"], refusal["actor"], refusal["campaign_id"]) == (
        "invalid_transition",
        "ops@acct-a",
        "welcome",
    )
    assert "stopped" in refusal["reason"]
    # One campaign: the refused Enroll into another campaign is not part of it.
    assert refused["command_id"] not in {w["command_id"] for w in why_in_campaign}
    assert len(why_in_campaign) == len(why) - 1
    # Accounts are walls: acct-b sees only its own refusal, an account with nothing sees nothing.
    assert [(w["status"], w["command_id"]) for w in other_account] == [("rejected", elsewhere["command_id"])]
    assert nobody == []


async def _stopped_projected(database_url: str, enrollment_id: str) -> bool:
    return bool(
        await count(
            database_url,
            "select count(*) from enrollment_timeline where type = 'EnrollmentStopped.v1' "
            f"and enrollment_id = '{enrollment_id}'",
        )
    )
