"""Numbered `.sql` migrations from `projections/`, applied once each under an advisory lock."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

# pg_advisory_lock key: any constant shared by every process that migrates this database.
MIGRATION_LOCK_KEY = 0x656E726F6C6C  # "enroll"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# The whole schema in one generated file, next to the migrations but not one of them (schema_dump.py).
SCHEMA_FILE = "schema.sql"


@dataclass(frozen=True, order=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """The database's applied migrations disagree with the files."""


def projections_dir() -> Path:
    """`projections/` in a source checkout; `enrollstream/_projections` inside an installed wheel."""
    source_tree = Path(__file__).resolve().parents[4] / "projections"
    if source_tree.is_dir():
        return source_tree
    return Path(str(resources.files("enrollstream").joinpath("_projections")))


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or projections_dir()
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        if path.name == SCHEMA_FILE:
            continue
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in found]
    # Numbers are unique and increasing; a gap is allowed, because branches reserve numbers and merge
    # in any order (`migrate` applies whatever is not applied yet, in file order).
    if len(set(versions)) != len(versions) or 0 in versions:
        raise MigrationError(f"migration versions must be unique and start at 1, found {versions}")
    return found


async def applied_versions(conn: asyncpg.Connection) -> dict[int, str]:
    exists = await conn.fetchval("select to_regclass('schema_migrations') is not null")
    if not exists:
        return {}
    rows = await conn.fetch("select version, checksum from schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply what is not applied yet, each in its own transaction; returns what this call applied.

    Concurrent callers serialise on an advisory lock, so a fleet of workers starting at once is safe.
    An applied migration whose file changed since is an error, not something to paper over.
    """
    migrations = migrations if migrations is not None else load_migrations()
    await conn.execute("select pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """
            create table if not exists schema_migrations (
                version    integer     primary key,
                name       text        not null,
                checksum   text        not null,
                applied_at timestamptz not null default now()
            )
            """
        )
        applied = await applied_versions(conn)
        done: list[Migration] = []
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed after it was applied"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "insert into schema_migrations (version, name, checksum) values ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration)
        return done
    finally:
        await conn.execute("select pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def pending_migrations(conn: asyncpg.Connection) -> list[Migration]:
    applied = await applied_versions(conn)
    return [m for m in load_migrations() if m.version not in applied]
