"""The HTTP API under test: a real ApiServer (uvicorn on a free port) over the test's topics and database,
keys made the way `enrollstream api-key create` makes them, and an httpx client per key."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import httpx

from enrollstream.adapters.postgres.api_keys import create_api_key
from enrollstream.api import ApiServer
from enrollstream.config import Settings
from enrollstream.runtime.worker import Worker


@contextlib.asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[ApiServer]:
    """The API alone (role `api`), listening on a free port of 127.0.0.1 until the block ends."""
    assert settings.kafka_bootstrap_servers and settings.database_url
    settings = settings.model_copy(update={"api_port": 0})
    worker = Worker(settings, settings.kafka_bootstrap_servers, settings.database_url, ("api",))
    started = asyncio.Event()
    task = asyncio.create_task(worker.run(started))
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert started.is_set() and worker.api is not None, "the API did not start within 60s"
    try:
        yield worker.api
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=30)


async def new_key(database_url: str, account_id: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        _, key = await create_api_key(conn, account_id, "test")
    finally:
        await conn.close()
    return key


def client_for(api: ApiServer, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.AsyncClient(base_url=api.url, headers=headers, timeout=30)
