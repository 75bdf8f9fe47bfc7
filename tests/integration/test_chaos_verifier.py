"""The chaos verifier finds each kind of damage it claims to find, on a real log and a real database.

Without this the crash suite's `lost=0 duplicate_events=0 projection_mismatches=0` could be a verifier
that never counts anything.
"""

from __future__ import annotations

import dataclasses
import json

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.chaos import (
    CALENDAR_EDGES,
    CAMPAIGNS,
    POISON_MARKER,
    ChaosPlan,
    ChaosReport,
    Published,
    chaos_campaign,
    drive,
    poison_id,
    settle,
    verify,
    workload,
)
from enrollstream.config import Settings
from enrollstream.runtime.campaigns import publish_campaign
from tests.support import publish, read_until, running_worker


async def test_the_verifier_counts_lost_commands_duplicate_events_and_projection_mismatches(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    for campaign_id in CAMPAIGNS:
        await publish_campaign(bootstrap, topics.campaigns, chaos_campaign(campaign_id))
    records = workload(ChaosPlan(commands=150, contacts=20, seed=7), run="verifier")
    async with running_worker(settings):
        await drive(bootstrap, topics.commands, records, seconds=0.5)
        # decider and projector only: no step is sent, so quiet does not wait for sends
        assert await settle(
            bootstrap, topics, database_url, records, timeout=60, group_id=settings.group_id, sends=False
        ), "the decider and projector did not settle in 60 s"

    clean = ChaosReport(commands=len(records))
    await verify(bootstrap, topics, database_url, records, clean)
    assert (clean.lost, clean.duplicate_events, clean.projection_mismatches) == (0, 0, 0), clean.details
    assert clean.row_mismatches == 0, clean.details
    assert clean.line().endswith(" row_mismatches=0")
    pills = [r for r in records if r.command_id is None]
    assert any(not r.value.startswith(POISON_MARKER) for r in pills), "commands the contract refuses"
    # one dead letter each, found by its id
    assert any(line.endswith(f"; dead letters: {len(pills)}") for line in clean.details), clean.details

    # A command that never got a result is lost.
    never_sent = Published("acct/x", b"{}", "chaos-never-published")
    report = ChaosReport()
    await verify(bootstrap, topics, database_url, [*records, never_sent], report)
    assert (report.lost, report.duplicate_events, report.projection_mismatches) == (1, 0, 0)

    # A read-model row that differs from the fold of the log is a projection mismatch.
    conn = await asyncpg.connect(database_url)
    try:
        changed = await conn.execute(
            "update enrollments set status = 'completed'"
            " where enrollment_id = (select min(enrollment_id) from enrollments where status <> 'completed')"
        )
    finally:
        await conn.close()
    assert changed == "UPDATE 1"
    report = ChaosReport()
    await verify(bootstrap, topics, database_url, records, report)
    assert (report.lost, report.duplicate_events) == (0, 0)
    assert report.projection_mismatches >= 1, report.details
    assert report.row_mismatches == 1, report.details  # the domain's snapshot says otherwise

    # One column of another row, against what the domain's snapshot says of that enrollment.
    conn = await asyncpg.connect(database_url)
    try:
        changed = await conn.execute(
            "update enrollments set batch_number = batch_number + 100"
            " where enrollment_id = (select max(enrollment_id) from enrollments where status <> 'completed')"
        )
    finally:
        await conn.close()
    assert changed == "UPDATE 1"
    report = ChaosReport()
    await verify(bootstrap, topics, database_url, records, report)
    assert report.row_mismatches == 2, report.details
    assert any("batch_number" in line for line in report.details), report.details
    assert report.line().endswith(" row_mismatches=2")
    assert not report.clean

    # The same event appended twice (what a non-transactional retry would do) is a duplicate.
    events = await read_until(bootstrap, topics.events, lambda rs: len(rs) > 0)
    first = events[0]
    await publish(bootstrap, topics.events, first.value, key=first.key.decode())
    report = ChaosReport()
    await verify(bootstrap, topics, database_url, records, report)
    assert report.duplicate_events == 1, report.details


def test_the_workload_is_seeded_and_covers_every_kind_of_input() -> None:
    plan = ChaosPlan(commands=2000, contacts=50)
    first, again = workload(plan, run="r"), workload(plan, run="r")
    assert first == again
    kinds = {r.value.split(b'"type": "')[1].split(b'"')[0].decode() for r in first if r.command_id}
    assert {"Enroll.v1", "BulkEnroll.v1", "Stop.v1", "Unenroll.v1", "OptOut.v1", "ReplyDetected.v1"} <= kinds
    assert not kinds & {"StepDue.v1", "DeliveryReported.v1"}, "the scheduler and dispatcher issue those"
    assert any(r.command_id is None for r in first), "some poison pills"
    pills = [r for r in first if r.command_id is None]
    commands = [json.loads(r.value) for r in pills if not r.value.startswith(POISON_MARKER)]
    assert all(poison_id(r.value) for r in pills), "each known by an id its dead letter keeps"
    assert {c["issued_at"] for c in commands} >= set(CALENDAR_EDGES)
    assert any("\x00" in c["data"]["contact"]["name"] for c in commands), "a NUL in a name"
    assert any("/" in c["data"]["contact_id"] for c in commands), "the key separator in an id"
    assert any("P999999999D" in json.dumps(c["data"].get("campaign")) for c in commands), "an overflow"
    assert any(isinstance(r.key, bytes) and r.key.startswith(b"\xff") for r in pills), "a key not UTF-8"
    assert any(r.children for r in first), "some fanned-out children"
    other = workload(dataclasses.replace(plan, seed=plan.seed + 1), run="r")
    assert other != first
