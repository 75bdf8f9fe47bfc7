"""Migrations apply once, in order, under a lock, and the schema they build is stable."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest

from enrollstream.adapters.postgres.migrations import MigrationError, load_migrations, migrate

SCHEMA_SNAPSHOT = """
select 'column' as kind, table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
       || ' ' || coalesce(column_default, '') as item
  from information_schema.columns where table_schema = 'public'
union all
select 'index', indexname || ' ' || indexdef from pg_indexes where schemaname = 'public'
union all
select 'constraint', conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  from pg_constraint where connamespace = 'public'::regnamespace
union all
select 'view', viewname || ' ' || definition from pg_views where schemaname = 'public'
union all
select 'migration', version || ' ' || name || ' ' || checksum from schema_migrations
order by 1, 2
"""


async def snapshot(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    return [(row["kind"], row["item"]) for row in await conn.fetch(SCHEMA_SNAPSHOT)]


async def test_a_fresh_database_migrated_twice_is_unchanged_the_second_time(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        applied = await migrate(conn)
        assert [m.version for m in applied] == [m.version for m in load_migrations()]
        first = await snapshot(conn)
        assert await migrate(conn) == []
        second = await snapshot(conn)
    finally:
        await conn.close()
    assert first == second
    tables = {item.split(".")[0] for kind, item in first if kind == "column"}
    assert {"schema_migrations", "projection_checkpoints", "enrollments"} <= tables


async def test_concurrent_migrators_apply_each_migration_exactly_once(empty_database_url: str) -> None:
    conns = [await asyncpg.connect(empty_database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(conn) for conn in conns))
        applied = sorted(m.version for result in results for m in result)
        assert applied == [m.version for m in load_migrations()]
        assert await conns[0].fetchval("select count(*) from schema_migrations") == len(applied)
    finally:
        for conn in conns:
            await conn.close()


async def test_a_migration_edited_after_it_was_applied_is_refused(
    empty_database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_first.sql").write_text("create table first_table (id int);")
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, load_migrations(tmp_path))
        (tmp_path / "0001_first.sql").write_text("create table first_table (id bigint);")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, load_migrations(tmp_path))
    finally:
        await conn.close()


async def test_migration_0012_fills_mx_check_of_existing_rows_from_their_enrolled_event(
    empty_database_url: str,
) -> None:
    """Rows projected before 0012 get what their ContactEnrolled recorded, like the domain reads an event
    recorded before `mx_check` existed."""
    from dataclasses import asdict

    from enrollstream.domain import MxAnswer
    from enrollstream.domain.events import ContactEnrolled
    from enrollstream.read_models import enrollments
    from tests.unit.domain.scenario import T0, campaign, enroll, given

    timeout = MxAnswer(domain="x.org", has_mx=False, checked_at=T0, detail="timeout", answered=False)
    found = MxAnswer(domain="x.org", has_mx=True, checked_at=T0, detail="mx: 10 mx.x.org.")
    cases = {
        "unverified": enroll(campaign(verify_email_mx=True), mx=timeout),
        "verified": enroll(campaign(verify_email_mx=True), mx=found),
        "not_required": enroll(campaign(), mx=found),
    }
    before = [m for m in load_migrations() if m.version < 12]
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, before)
        for want, command in cases.items():
            event = given().when(command).events[0]
            assert isinstance(event, ContactEnrolled)
            event = event.model_copy(update={"enrollment_id": f"e-{want}"})
            row = asdict(enrollments.apply(None, event))  # type: ignore[arg-type]
            del row["mx_check"]
            await conn.execute(
                f"insert into enrollments ({', '.join(row)}) values "
                f"({', '.join(f'${i + 1}' for i in range(len(row)))})",
                *row.values(),
            )
            data = event.data.model_dump(mode="json", exclude={"mx_check"})
            await conn.execute(
                "insert into enrollment_timeline (event_id, account_id, contact_id, campaign_id,"
                " enrollment_id, version, type, occurred_at, causation_id, data)"
                " values ($1, $2, $3, $4, $5, 1, $6, $7, $8, $9::jsonb)",
                f"ev-{want}", event.account_id, event.contact_id, event.campaign_id, event.enrollment_id,
                event.type, event.occurred_at, event.causation_id, json.dumps(data),
            )  # fmt: skip
        await migrate(conn)
        rows = await conn.fetch("select enrollment_id, mx_check from enrollment_table order by 1")
    finally:
        await conn.close()
    assert {r["enrollment_id"]: r["mx_check"] for r in rows} == {f"e-{w}": w for w in cases}
