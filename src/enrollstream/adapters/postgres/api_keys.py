"""The HTTP API's keys: created, listed and revoked by `enrollstream api-key`, checked on every request.

A key reads `es_<key_id>_<secret>`: `key_id` (public, 12 hex digits) names it in lists and revocations;
the whole key is kept only as its SHA-256 (migration 0015 says why a fast hash is enough).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from enrollstream.adapters.postgres.queries import query

_FILE = "api_keys.sql"
# What a key looks like; anything else is refused before the database is asked.
KEY_PATTERN = re.compile(r"^es_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    account_id: str
    label: str
    created_at: datetime
    revoked_at: datetime | None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def create_api_key(conn: asyncpg.Connection, account_id: str, label: str = "") -> tuple[ApiKey, str]:
    """A new key for the account: its record, and the key itself (shown once, never stored)."""
    key_id = secrets.token_hex(6)
    key = f"es_{key_id}_{secrets.token_urlsafe(32)}"
    row = await conn.fetchrow(query("insert_api_key", _FILE), key_id, account_id, _digest(key), label)
    return ApiKey(**dict(row)), key


async def account_of_key(conn: asyncpg.Connection | asyncpg.Pool, key: str) -> str | None:
    """The account a live key belongs to; None for a malformed, unknown or revoked key."""
    if not KEY_PATTERN.match(key):
        return None
    account: str | None = await conn.fetchval(query("account_of_api_key", _FILE), _digest(key))
    return account


async def list_api_keys(conn: asyncpg.Connection, account_id: str | None = None) -> list[ApiKey]:
    return [ApiKey(**dict(row)) for row in await conn.fetch(query("list_api_keys", _FILE), account_id)]


async def revoke_api_key(conn: asyncpg.Connection, key_id: str) -> ApiKey | None:
    """Revoke the key (again: no change); None when there is no such key."""
    row = await conn.fetchrow(query("revoke_api_key", _FILE), key_id)
    return None if row is None else ApiKey(**dict(row))
