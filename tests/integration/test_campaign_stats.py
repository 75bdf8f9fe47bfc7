"""The stats cards table: maintained by the projector's upsert, always equal to counting `enrollments`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from enrollstream.adapters.kafka.reading import batches_to_end
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.postgres.migrations import load_migrations, migrate
from enrollstream.adapters.postgres.queries import query
from enrollstream.adapters.postgres.read_side import campaign_stats_mismatches, recount_campaign_stats
from enrollstream.config import Settings
from enrollstream.domain import ids
from enrollstream.domain.statuses import EnrollmentStatus
from enrollstream.read_models.enrollments import COLUMNS
from enrollstream.runtime.campaigns import publish_campaign
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll, results_by_id, send
from tests.support import eventually, read_until, running_worker

STATUSES = [s.value for s in EnrollmentStatus]


async def counted_by_status(db: asyncpg.Connection) -> dict[tuple[str, str, str], int]:
    rows = await db.fetch(
        "select account_id, campaign_id, status, count(*) as n from enrollments group by 1, 2, 3"
    )
    return {(r["account_id"], r["campaign_id"], r["status"]): r["n"] for r in rows}


async def stored_by_status(db: asyncpg.Connection) -> dict[tuple[str, str, str], int]:
    out: dict[tuple[str, str, str], int] = {}
    for row in await db.fetch("select * from campaign_stats"):
        assert row["total"] == sum(row[s] for s in STATUSES), dict(row)
        for status in STATUSES:
            if row[status]:
                out[(row["account_id"], row["campaign_id"], status)] = row[status]
    return out


async def assert_stats_equal_counting(db: asyncpg.Connection) -> None:
    assert await stored_by_status(db) == await counted_by_status(db)
    assert await campaign_stats_mismatches(db) == []


def test_the_table_has_a_counter_for_every_enrollment_status() -> None:
    sql = (load_migrations()[3]).sql
    for status in STATUSES:
        assert f"    {status} " in sql and f"status = '{status}'" in sql, status
        assert f"status = '{status}'" in query("merge_enrollments_stage")
        assert f"status = '{status}'" in query("campaign_stats_mismatches")


async def test_the_migration_backfills_the_counters_from_existing_enrollments(
    empty_database_url: str,
) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, load_migrations()[:3])
        now = datetime.now(UTC)
        for i, status in enumerate(["pending", "active", "active", "completed", "stopped", "delivered"]):
            await conn.execute(
                "insert into enrollments (enrollment_id, account_id, contact_id, campaign_id, status,"
                " enrolled_at, last_version, updated_at) values ($1, 'a', $1, $2, $3, $4, 1, $4)",
                f"e{i}",
                "c1" if i < 4 else "c2",
                status,
                now,
            )
        await migrate(conn)
        await assert_stats_equal_counting(conn)
        cards = await conn.fetchrow("select * from campaign_stats_cards where campaign_id = 'c1'")
        assert cards is not None
        assert (cards["total"], cards["active"], cards["completed"]) == (4, 3, 1)
    finally:
        await conn.close()


async def stage_and_merge(db: asyncpg.Connection, rows: list[dict[str, Any]]) -> None:
    """The projector's write path: COPY into the stage, then the one merge statement."""
    async with db.transaction():
        await db.execute(query("create_enrollments_stage"))
        now = datetime.now(UTC)
        defaults: dict[str, Any] = {c: None for c in COLUMNS} | {
            "account_id": "a",
            "campaign_id": "c",
            "stage": "pending",
            "enrolled_at": now,
            "batch_number": 0,
            "priority": False,
            "updated_at": now,
            "mx_check": "not_required",
        }
        full = [defaults | {"contact_id": r["enrollment_id"]} | r for r in rows]
        records = [tuple(r[c] for c in COLUMNS) for r in full]
        await db.copy_records_to_table("enrollments_stage", records=records, columns=list(COLUMNS))
        await db.execute(query("merge_enrollments_stage"))


async def test_deltas_count_only_the_rows_the_version_guard_let_through(db: asyncpg.Connection) -> None:
    await stage_and_merge(
        db,
        [
            {"enrollment_id": "e1", "status": "pending", "last_version": 1},
            {"enrollment_id": "e2", "status": "pending", "last_version": 1},
            {"enrollment_id": "e3", "status": "active", "last_version": 1, "campaign_id": "other"},
        ],
    )
    await assert_stats_equal_counting(db)
    # e1 moves on; e2's stale redelivery (same version) and a step back (older version) change nothing.
    await stage_and_merge(
        db,
        [
            {"enrollment_id": "e1", "status": "stopped", "last_version": 3},
            {"enrollment_id": "e2", "status": "failed", "last_version": 1},
            {"enrollment_id": "e3", "status": "pending", "last_version": 0, "campaign_id": "other"},
        ],
    )
    await assert_stats_equal_counting(db)
    row = await db.fetchrow("select * from campaign_stats where campaign_id = 'c'")
    assert row is not None
    assert (row["total"], row["pending"], row["stopped"], row["failed"]) == (2, 1, 1, 0)
    # A row written behind the projector's back is what the verifier is for.
    await db.execute("update enrollments set status = 'completed' where enrollment_id = 'e2'")
    mismatches = await campaign_stats_mismatches(db)
    assert [(m.account_id, m.campaign_id) for m in mismatches] == [("a", "c")]
    assert mismatches[0].stored["pending"] == 1 and mismatches[0].counted["pending"] == 0
    assert mismatches[0].counted["completed"] == 1
    # ... and the repair: recount from the table.
    assert await recount_campaign_stats(db) == 2
    await assert_stats_equal_counting(db)


# --- a realistic mixed workload through the real decider and projector ----------------------------


def at(hours: float) -> str:
    return (datetime(2026, 11, 22, 9, 0, tzinfo=UTC) + timedelta(hours=hours)).isoformat()


def command(kind: str, contact_id: str, campaign_id: str = "welcome", **data: Any) -> dict[str, Any]:
    return {
        "command_id": f"cmd-{uuid.uuid4()}",
        "type": f"{kind}.v1",
        "account_id": ACCOUNT,
        "issued_at": data.pop("issued_at", at(30)),
        "actor": "test",
        "data": {
            "contact_id": contact_id,
            "enrollment_id": ids.enrollment_id(ACCOUNT, contact_id, campaign_id, 1),
            **data,
        },
    }


async def caught_up(settings: Settings, topics: Topics, database_url: str) -> None:
    """Wait until the projector's checkpoints are past the last committed event of every partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    last: dict[int, int] = {}
    try:
        partitions = [TopicPartition(topics.events, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        async for batch in batches_to_end(consumer, partitions):
            for tp, records in batch.items():
                last[tp.partition] = records[-1].offset
    finally:
        await consumer.stop()

    async def done() -> bool:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "select partition, next_offset from projection_checkpoints where topic = $1", topics.events
            )
        finally:
            await conn.close()
        stored = {r["partition"]: r["next_offset"] for r in rows}
        return all(stored.get(partition, 0) > offset for partition, offset in last.items())

    await eventually(done, what="the projector past the last event")


async def test_after_each_phase_of_a_mixed_workload_the_table_equals_counting(
    settings: Settings, topics: Topics, database_url: str
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    await publish_campaign(bootstrap, topics.campaigns, campaign(campaign_id="nurture"))
    people = [f"p{i:02d}" for i in range(24)]

    async def run_phase(commands: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for c in commands:
            await send(settings, topics, c, f"{ACCOUNT}/{c['data']['contact_id']}")
        wanted = {c["command_id"] for c in commands}
        records = await read_until(
            bootstrap, topics.command_results, lambda rs: wanted <= set(results_by_id(rs)), timeout=60
        )
        await caught_up(settings, topics, database_url)
        conn = await asyncpg.connect(database_url)
        try:
            await assert_stats_equal_counting(conn)
        finally:
            await conn.close()
        return results_by_id(records)

    def step_due(p: str, campaign_id: str = "welcome") -> dict[str, Any]:
        return command("StepDue", p, campaign_id, step_index=0, attempt=1)

    def report(p: str, outcome: str) -> dict[str, Any]:
        return command("DeliveryReported", p, step_index=0, attempt=1, outcome=outcome)

    def opt_out(p: str) -> dict[str, Any]:
        c = command("OptOut", p)
        del c["data"]["enrollment_id"]
        return c

    async with running_worker(settings):
        # 1. everyone into "welcome", half of them into "nurture" too (and one enrolled twice: refused)
        results = await run_phase(
            [enroll(p) for p in people]
            + [enroll(p, campaign_id="nurture") for p in people[:12]]
            + [enroll(people[0])]
        )
        assert sum(r["status"] == "accepted" for r in results.values()) == 36
        # 2. steps become due: dispatched (processing) for p00..p11 in welcome, p00..p03 in nurture
        await run_phase([step_due(p) for p in people[:12]] + [step_due(p, "nurture") for p in people[:4]])
        # 3. deliveries: sent (completed, one-step campaign), failed, and some left processing
        await run_phase([report(p, "sent") for p in people[:6]] + [report(p, "failed") for p in people[6:9]])
        # 4. operators and contacts: stops, unenrolls, an account-wide opt-out, a stop of a finished one
        await run_phase(
            [command("Stop", p) for p in people[12:15]]
            + [command("Unenroll", p) for p in people[15:18]]
            + [command("Unenroll", p, "nurture") for p in people[4:6]]
            + [opt_out(people[18]), opt_out(people[1])]
            + [command("Stop", people[0])]  # already completed: refused, nothing changes
        )
        # 5. a redelivered batch of old commands changes nothing
        await run_phase([step_due(p) for p in people[:3]])

    conn = await asyncpg.connect(database_url)
    try:
        welcome = await conn.fetchrow("select * from campaign_stats where campaign_id = 'welcome'")
        cards = await conn.fetchrow("select * from campaign_stats_cards where campaign_id = 'welcome'")
    finally:
        await conn.close()
    assert welcome is not None and cards is not None
    assert welcome["total"] == 24
    assert (welcome["completed"], welcome["failed"], welcome["processing"]) == (6, 3, 3)
    assert (welcome["stopped"], welcome["unenrolled"], welcome["pending"]) == (4, 3, 5)
    assert (cards["active"], cards["completed"], cards["stopped"]) == (5, 6, 4)
