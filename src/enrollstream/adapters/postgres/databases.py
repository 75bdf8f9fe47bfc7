"""Databases of their own on one server: the demo, the crash suite and the benchmarks each make one."""

from __future__ import annotations

import asyncpg


def database_url(server_url: str, database: str) -> str:
    """The server's URL with another database name."""
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{database}"


async def create_database(server_url: str, name: str, *, replace: bool = False) -> str:
    """Create the database (first dropping one of that name when `replace`); returns its URL."""
    conn = await asyncpg.connect(server_url)
    try:
        if replace:
            await conn.execute(f'drop database if exists "{name}" with (force)')
        await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    return database_url(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()
