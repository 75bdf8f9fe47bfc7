"""projections/schema.sql equals what the migrations build, catalog by catalog (procrastinate-style)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from enrollstream.adapters.postgres.schema_dump import catalog, schema_file
from enrollstream.stack import Endpoints

REGENERATE = "run: python -m enrollstream.adapters.postgres.schema_dump --write"


@pytest.fixture
async def schema_sql_database(endpoints: Endpoints) -> AsyncIterator[str]:
    """A second fresh database, built from projections/schema.sql alone."""
    name = f"test_schema_{uuid.uuid4().hex[:12]}"
    base, _, _ = endpoints.database_url.rpartition("/")
    admin = await asyncpg.connect(endpoints.database_url)
    try:
        await admin.execute(f'create database "{name}"')
        url = f"{base}/{name}"
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(schema_file().read_text())
        finally:
            await conn.close()
        yield url
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


async def catalog_of(url: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(url)  # a new session: schema.sql empties its search_path
    try:
        return await catalog(conn)
    finally:
        await conn.close()


def difference(left: list[tuple[str, str, str]], right: list[tuple[str, str, str]]) -> list[str]:
    return [f"- {item}" for item in sorted(set(left) - set(right))] + [
        f"+ {item}" for item in sorted(set(right) - set(left))
    ]


async def test_schema_sql_builds_the_same_catalogs_as_the_migrations(
    database_url: str, schema_sql_database: str
) -> None:
    migrated = await catalog_of(database_url)
    from_file = await catalog_of(schema_sql_database)
    assert difference(migrated, from_file) == [], REGENERATE
    assert migrated == from_file  # same objects, same column order
    kinds = {kind for kind, _, _ in migrated}
    assert {"column", "constraint", "index", "view", "relation", "extension"} <= kinds
    names = {name for _, name, _ in migrated}
    assert {
        "campaign_stats",
        "bulk_enrollments",
        "bulk_enroll_summaries",
        "enrollments_contact_name_trgm",
    } <= names
    assert not any(name.startswith("schema_migrations") for name in names)


async def test_the_comparison_sees_a_default_an_index_and_a_view_change(schema_sql_database: str) -> None:
    before = await catalog_of(schema_sql_database)
    conn = await asyncpg.connect(schema_sql_database)
    try:
        await conn.execute(
            """
            alter table public.enrollments alter column stage set default 'sent';
            create index extra on public.replies (excerpt);
            create or replace view public.campaign_stats_cards as
                select account_id, campaign_id, total, pending + active as active, processing,
                       completed as completed, stopped, failed, queued, awaiting_trigger, expired,
                       handed_off, unenrolled
                  from public.campaign_stats;
            """
        )
    finally:
        await conn.close()
    changed = difference(before, await catalog_of(schema_sql_database))
    assert any("enrollments" in line and "'sent'" in line for line in changed), changed
    assert any("'extra'" in line for line in changed), changed
    assert any("campaign_stats_cards" in line and "view" in line for line in changed), changed
