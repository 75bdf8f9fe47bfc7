"""Migrations apply once, in order, under a lock, and the schema they build is stable."""

from __future__ import annotations

import asyncio
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
