"""The views behind the Enrollments page (seed 000) on the real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from tests.integration.test_campaign_stats import stage_and_merge


async def insert(
    db: asyncpg.Connection, enrollment_id: str, status: str, next_at: datetime | None, **cols: object
) -> None:
    now = datetime.now(UTC)
    row = {
        "enrollment_id": enrollment_id,
        "account_id": "a",
        "contact_id": enrollment_id,
        "campaign_id": "c",
        "status": status,
        "enrolled_at": now,
        "next_execution_at": next_at,
        "last_version": 1,
        "updated_at": now,
        **cols,
    }
    names = ", ".join(row)
    params = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    await db.execute(f"insert into enrollments ({names}) values ({params})", *row.values())


async def test_the_next_execution_indicator_and_the_step_label(db: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    await insert(db, "overdue", "active", now - timedelta(minutes=5), current_step=2, total_steps=5)
    await insert(db, "soon", "active", now + timedelta(minutes=30))
    await insert(db, "waiting", "pending", now + timedelta(hours=3))
    await insert(db, "done", "completed", None, current_step=5, total_steps=5)
    rows = {
        r["enrollment_id"]: (r["next_execution_indicator"], r["step_label"])
        for r in await db.fetch("select * from enrollment_table")
    }
    assert rows == {
        "overdue": ("Overdue", "Step 2 of 5"),
        "soon": ("Coming soon", None),
        "waiting": ("Waiting", None),
        "done": (None, "Step 5 of 5"),
    }


async def test_the_stats_cards_equal_counting_the_table(db: asyncpg.Connection) -> None:
    statuses = [
        "pending",
        "active",
        "active",
        "processing",
        "completed",
        "delivered",
        "stopped",
        "failed",
        "queued",
        "expired",
        "handed_off",
        "unenrolled",
        "awaiting_trigger",
    ]
    # Through the projector's write path: the counters are maintained by its upsert (projections/0004).
    await stage_and_merge(
        db, [{"enrollment_id": f"e{i}", "status": s, "last_version": 1} for i, s in enumerate(statuses)]
    )
    cards = dict(await db.fetchrow("select * from campaign_stats_cards where campaign_id = 'c'"))
    assert cards["total"] == len(statuses) == await db.fetchval("select count(*) from enrollments")
    assert (cards["active"], cards["processing"], cards["completed"]) == (3, 1, 2)
    assert (cards["stopped"], cards["failed"], cards["queued"], cards["expired"]) == (1, 1, 1, 1)
    assert (cards["handed_off"], cards["unenrolled"], cards["awaiting_trigger"]) == (1, 1, 1)


async def test_the_seed_003_label_says_failed_for_every_failed_enrollment_the_failed_card_counts(
    db: asyncpg.Connection,
) -> None:
    await insert(db, "invalid", "failed", None, failure_reason="invalid_recipient", stage="pending")
    await insert(db, "bounced", "failed", None, failure_reason="bounced", stage="bounced")
    await insert(db, "error", "stopped", None, stop_reason="error", outcome="stopped")
    await insert(db, "responded", "completed", None, outcome="responded")
    await insert(db, "late-reply", "stopped", None, stop_reason="manual", outcome="responded")
    await insert(db, "silent", "completed", None, outcome="no_response")
    await insert(db, "finished", "stopped", None, stop_reason="marked_finished", outcome="stopped")
    await insert(db, "opted", "stopped", None, stop_reason="opted_out", outcome="stopped")
    await insert(db, "going", "active", None)
    labels = dict(await db.fetch("select enrollment_id, sequence_status from enrollment_table"))
    assert labels == {
        "invalid": "Failed",
        "bounced": "Failed",
        "error": "Finished, stopped",  # our side failed: Stopped (reason Error), not the contact's Failed
        "responded": "Finished, responded",
        "late-reply": "Finished, responded",
        "silent": "Finished, no response",
        "finished": "Finished, stopped",
        "opted": "Opted Out",
        "going": "Pending",
    }
    failed_labels = sum(label == "Failed" for label in labels.values())
    failed_rows = await db.fetchval("select count(*) from enrollments where status = 'failed'")
    assert failed_labels == failed_rows == 2
