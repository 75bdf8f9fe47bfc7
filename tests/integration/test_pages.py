"""The queries behind the pages (seed 000 Enrollments, seed 001 /enrollments, /replies, /skips)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from enrollstream.adapters.postgres.queries import query
from enrollstream.adapters.postgres.read_side import (
    EnrollmentFilter,
    PageCursor,
    campaign_replies,
    campaign_skips,
    enrollments_page,
)

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
STATUSES = ["pending", "active", "processing", "completed", "stopped", "failed"]
NAMES = ["Ann Lee", "Joann Park", "ANNA Kowalski", "Bob Stone", "Carla 50%_off", "Dan Brown", None]


async def seed_enrollments(db: asyncpg.Connection, n: int = 95) -> list[dict[str, Any]]:
    """n rows in campaign c of account a (several sharing one enrolled_at), plus noise elsewhere."""
    rows = []
    for i in range(n):
        rows.append(
            {
                "enrollment_id": f"e{i:03d}",
                "account_id": "a",
                "contact_id": f"k{i:03d}",
                "campaign_id": "c",
                "contact_name": None if NAMES[i % 7] is None else f"{NAMES[i % 7]} {i}",
                "status": STATUSES[i % 6],
                "batch_number": i % 5,
                "current_step": i % 3 + 1,
                "total_steps": 3,
                # ties on purpose: every five rows share a timestamp, so the id must break them
                "enrolled_at": T0 + timedelta(minutes=i // 5),
            }
        )
    noise = [
        {**rows[0], "enrollment_id": "other-campaign", "campaign_id": "c2"},
        {**rows[0], "enrollment_id": "other-account", "account_id": "b"},
    ]
    for row in [*rows, *noise]:
        full = {**row, "last_version": 1, "updated_at": T0}
        names = ", ".join(full)
        params = ", ".join(f"${i}" for i in range(1, len(full) + 1))
        await db.execute(f"insert into enrollments ({names}) values ({params})", *full.values())
    return rows


async def all_pages(
    db: asyncpg.Connection, where: EnrollmentFilter | None = None, limit: int = 20
) -> list[list[str]]:
    pages: list[list[str]] = []
    after: PageCursor | None = None
    while True:
        page = await enrollments_page(db, "a", "c", where, after, limit)
        pages.append([r["enrollment_id"] for r in page.rows])
        if page.next is None:
            return pages
        after = page.next
        assert len(pages) < 100, "paging does not end"


def ordered(rows: list[dict[str, Any]]) -> list[str]:
    return [r["enrollment_id"] for r in sorted(rows, key=lambda r: (r["enrolled_at"], r["enrollment_id"]))]


async def test_pages_of_20_in_a_stable_order_with_no_row_twice_and_none_missing(
    db: asyncpg.Connection,
) -> None:
    rows = await seed_enrollments(db)
    pages = await all_pages(db)
    assert [len(p) for p in pages] == [20, 20, 20, 20, 15]
    flat = [e for p in pages for e in p]
    assert flat == ordered(rows)  # every row of the campaign, once, in order; nothing from elsewhere
    assert len(set(flat)) == len(flat) == 95
    # Pages of another size over the same rows agree; a filter pages the same way.
    assert [e for p in await all_pages(db, limit=7) for e in p] == flat
    active = EnrollmentFilter(statuses=["pending", "active"])
    assert [e for p in await all_pages(db, active, limit=6) for e in p] == ordered(
        [r for r in rows if r["status"] in ("pending", "active")]
    )
    # A row enrolled while someone pages (it sorts before the cursor) neither repeats nor shifts rows.
    first = await enrollments_page(db, "a", "c")
    await db.execute(
        "insert into enrollments (enrollment_id, account_id, contact_id, campaign_id, status, enrolled_at,"
        " last_version, updated_at) values ('e-early', 'a', 'k-early', 'c', 'pending', $1, 1, $1)",
        T0 - timedelta(days=1),
    )
    second = await enrollments_page(db, "a", "c", after=first.next)
    assert [r["enrollment_id"] for r in second.rows] == flat[20:40]


async def test_filters_by_status_batch_and_step(db: asyncpg.Connection) -> None:
    rows = await seed_enrollments(db)

    async def ids(where: EnrollmentFilter) -> list[str]:
        return [e for p in await all_pages(db, where) for e in p]

    assert await ids(EnrollmentFilter(statuses=["failed"])) == ordered(
        [r for r in rows if r["status"] == "failed"]
    )
    assert await ids(EnrollmentFilter(batch_number=2)) == ordered([r for r in rows if r["batch_number"] == 2])
    assert await ids(EnrollmentFilter(current_step=3)) == ordered([r for r in rows if r["current_step"] == 3])
    combined = EnrollmentFilter(statuses=["stopped", "completed"], batch_number=1, current_step=2)
    expected = [
        r
        for r in rows
        if r["status"] in ("stopped", "completed") and r["batch_number"] == 1 and r["current_step"] == 2
    ]
    assert expected and await ids(combined) == ordered(expected)
    assert await ids(EnrollmentFilter(statuses=[])) == []
    page = await enrollments_page(db, "a", "c", EnrollmentFilter(current_step=2))
    assert {r["step_label"] for r in page.rows} == {"Step 2 of 3"}


async def test_seed_001s_status_is_the_stage_filter_and_rows_name_the_latest_attempts_sender(
    db: asyncpg.Connection,
) -> None:
    rows = await seed_enrollments(db, n=10)
    stages = ["pending", "sent", "opened", "replied", "bounced"]
    for i, row in enumerate(rows):
        await db.execute(
            "update enrollments set stage = $2 where enrollment_id = $1", row["enrollment_id"], stages[i % 5]
        )
    for step_index, attempt, sender in (
        (0, 1, "first@example.org"),
        (1, 1, "old@example.org"),
        (1, 2, "new@example.org"),
    ):
        await db.execute(
            "insert into delivery_ledger (enrollment_id, step_index, attempt, message_id, account_id,"
            " contact_id, channel, sender, recipient, started_at)"
            " values ('e001', $1, $2, $3, 'a', 'k001', 'email', $4, 'k001@example.org', $5)",
            step_index, attempt, f"es-{step_index}-{attempt}", sender, T0,
        )  # fmt: skip
    sent = await enrollments_page(db, "a", "c", EnrollmentFilter(stages=["sent", "opened"]))
    assert [r["enrollment_id"] for r in sent.rows] == ["e001", "e002", "e006", "e007"]
    assert {r["enrollment_id"]: r["sender"] for r in sent.rows}["e001"] == "new@example.org"
    assert all(r["sender"] is None for r in sent.rows if r["enrollment_id"] != "e001")
    bounced = await enrollments_page(db, "a", "c", EnrollmentFilter(stages=["bounced"], batch_number=4))
    assert [r["enrollment_id"] for r in bounced.rows] == ["e004", "e009"]


async def test_search_by_contact_name_is_a_case_insensitive_substring(db: asyncpg.Connection) -> None:
    rows = await seed_enrollments(db)

    async def found(name: str) -> set[str]:
        return {e for p in await all_pages(db, EnrollmentFilter(name=name)) for e in p}

    def expected(needle: str) -> set[str]:
        return {
            r["enrollment_id"]
            for r in rows
            if r["contact_name"] is not None and needle.lower() in r["contact_name"].lower()
        }

    ann = await found("aNn")
    assert ann == expected("ann") and any("Joann" in (r["contact_name"] or "") for r in rows)
    assert {r["contact_name"].split()[0] for r in rows if r["enrollment_id"] in ann} == {
        "Ann",
        "Joann",
        "ANNA",
    }
    # % and _ are the characters themselves, not wildcards
    assert await found("50%_") == expected("50%_") != set()
    assert await found("n%") == set()
    assert await found("_") == expected("_")
    # combined with a filter
    both = await all_pages(db, EnrollmentFilter(name="ann", statuses=["active"]))
    assert {e for p in both for e in p} == {
        r["enrollment_id"] for r in rows if r["enrollment_id"] in ann and r["status"] == "active"
    }


async def test_replies_newest_first_with_hours_to_reply_and_skips_by_kind(db: asyncpg.Connection) -> None:
    await seed_enrollments(db, n=10)
    for i in range(5):
        await db.execute(
            "insert into replies (event_id, account_id, contact_id, campaign_id, enrollment_id, replied_at,"
            " hours_to_reply, first_reply, reply_action) values ($1, 'a', $2, $3, $4, $5, $6, true, 'stop')",
            f"r{i}",
            f"k{i:03d}",
            "c" if i < 4 else "c2",
            f"e{i:03d}",
            T0 + timedelta(hours=i),
            i + 0.5,
        )
    replies = await campaign_replies(db, "a", "c", limit=3)
    assert [r["event_id"] for r in replies] == ["r3", "r2", "r1"]
    assert [float(r["hours_to_reply"]) for r in replies] == [3.5, 2.5, 1.5]
    assert replies[0]["contact_name"] == NAMES[3] + " 3"
    assert await campaign_replies(db, "b", "c") == []

    for i, kind in enumerate(["mx_invalid", "already_enrolled", "mx_invalid", "cross_campaign_duplicate"]):
        await db.execute(
            "insert into enrollment_skips (event_id, account_id, contact_id, campaign_id, kind, reason,"
            " evidence, skipped_at) values ($1, 'a', $2, 'c', $3, 'because', $4, $5)",
            f"s{i}",
            f"k{i}",
            kind,
            json.dumps({"domain": f"d{i}.example"}),
            T0 + timedelta(minutes=i),
        )
    mx = await campaign_skips(db, "a", "c", kind="mx_invalid")
    assert [(s["event_id"], s["evidence"]["domain"]) for s in mx] == [
        ("s0", "d0.example"),
        ("s2", "d2.example"),
    ]
    assert [s["event_id"] for s in await campaign_skips(db, "a", "c", limit=3)] == ["s0", "s1", "s2"]
    assert await campaign_skips(db, "a", "c", kind="landline") == []


async def plan(db: asyncpg.Connection, *args: Any) -> str:
    async with db.transaction():
        await db.execute(query("force_custom_plans"))
        return str(await db.fetchval("explain (format json) " + query("enrollments_page"), *args))


async def test_the_name_search_and_the_status_filter_use_indexes_on_a_large_table(
    db: asyncpg.Connection,
) -> None:
    # 20,000 enrollments over 5 campaigns; statuses skewed as in life (few failed); a handful of Quixotes.
    await db.execute(
        """
        insert into enrollments (enrollment_id, account_id, contact_id, campaign_id, contact_name, status,
                                 enrolled_at, last_version, updated_at)
        select 'g' || i, 'a', 'k' || i, 'c' || (i % 5),
               case when i % 4000 = 0 then 'Zelda Quixote ' || i else 'Contact ' || md5(i::text) end,
               case when i % 200 = 0 then 'failed' when i % 3 = 0 then 'completed' else 'active' end,
               timestamptz '2026-01-01' + i * interval '1 minute', 1, now()
          from generate_series(1, 20000) as i
        """
    )
    await db.execute("analyze enrollments")
    base: list[Any] = ["a", "c0", None, None, None, None, None, None, 21, None]

    search = base.copy()
    search[5] = "quixo"
    search_plan = await plan(db, *search)
    assert "enrollments_contact_name_trgm" in search_plan, search_plan
    assert "Seq Scan" not in search_plan

    failed = base.copy()
    failed[2] = ["failed"]
    failed_plan = await plan(db, *failed)
    assert "enrollments_campaign_status_page" in failed_plan, failed_plan
    assert "Seq Scan" not in failed_plan

    later = base.copy()
    later[6], later[7] = datetime(2026, 1, 10, tzinfo=UTC), "g1"
    assert "Seq Scan" not in await plan(db, *later)  # a late page is an index range read too

    page = await enrollments_page(db, "a", "c0", EnrollmentFilter(name="QUIXOTE"))
    assert len(page.rows) == 5 and page.next is None
