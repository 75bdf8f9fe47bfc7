"""A PostgreSQL outage of ~10 s does not stop the worker (issue 12, item 14).

The worker reaches PostgreSQL through a TCP forwarder the test owns: stopping it (listener closed, every
connection cut) is a real network outage for the worker, without touching the shared PostgreSQL server.
During the outage the decider goes on deciding (its results appear), the projector and the scheduler
wait with backoff; afterwards the projector catches up with nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.stack.processes import free_port
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll, send
from tests.support import eventually, read_until, running_worker

OUTAGE_S = 10.0


class TcpForwarder:
    """127.0.0.1:<port> -> the target; `cut()` closes the listener and every connection, `restore()`
    listens again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def enrollments(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("select count(*) from enrollments"))
    finally:
        await conn.close()


def decided_during(records: list[Any]) -> set[str]:
    results = [json.loads(r.value) for r in records]
    return {
        r["contact_id"]
        for r in results
        if r["command_type"] == "Enroll.v1"
        and r["status"] == "accepted"
        and r["contact_id"].startswith("during-")
    }


async def steps_fired(database_url: str, n: int) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        fired = await conn.fetchval(
            "select count(distinct contact_id) from decisions"
            " where status = 'accepted' and command_type = 'StepDue.v1'"
        )
    finally:
        await conn.close()
    return int(fired) >= n


async def test_a_postgres_outage_is_waited_out_while_the_decider_keeps_deciding(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    real = urlsplit(database_url)
    assert real.hostname and real.port
    forwarder = TcpForwarder(real.hostname, real.port)
    await forwarder.restore()
    netloc = real.netloc.rsplit("@", 1)
    proxied_netloc = (netloc[0] + "@" if len(netloc) == 2 else "") + f"127.0.0.1:{forwarder.port}"
    proxied = settings.model_copy(
        update={
            "database_url": urlunsplit(real._replace(netloc=proxied_netloc)),
            "scheduler_interval_ms": 200,
        }
    )
    await publish_campaign(bootstrap, topics.campaigns, campaign())

    before = [f"before-{i}" for i in range(3)]
    during = [f"during-{i}" for i in range(5)]
    async with running_worker(proxied, roles=("decider", "projector", "scheduler")) as worker:
        for contact in before:
            await send(settings, topics, enroll(contact), key=f"{ACCOUNT}/{contact}")

        async def projected(n: int) -> bool:
            return await enrollments(database_url) >= n

        await eventually(lambda: projected(len(before)), what="the first enrollments projected")
        assert forwarder.connections > 0, "the worker reaches PostgreSQL through the forwarder"

        await forwarder.cut()
        cut_at = time.monotonic()
        for contact in during:
            await send(settings, topics, enroll(contact), key=f"{ACCOUNT}/{contact}")
        # The decider needs only Kafka: it decides while PostgreSQL is away.
        await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: decided_during(rs) == set(during),
            timeout=OUTAGE_S - 1,
        )
        assert time.monotonic() - cut_at < OUTAGE_S, "the results came during the outage"
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))
        assert await enrollments(database_url) == len(before), "nothing projected during the outage"
        assert worker.failure is None and not worker.stop_event.is_set(), "the worker is still running"
        assert worker.projector is not None and worker.projector.retries > 0

        # /healthz says so: the projector has records it cannot write. It takes STUCK_RETRIES failed
        # tries at one offset, which a loaded machine may not reach by the end of OUTAGE_S: the outage
        # lasts until it does.
        async def reported_stuck() -> bool:
            return worker.stuck() is not None

        await eventually(reported_stuck, timeout=30, what="the worker reporting the projector stuck")
        stuck = worker.stuck()
        assert stuck is not None and stuck.startswith("projector"), stuck

        await forwarder.restore()
        await eventually(
            lambda: projected(len(before) + len(during)), timeout=15, what="the projector caught up"
        )
        # The scheduler is back too: every enrollment's first step (overdue: the Enrolls are dated
        # 2026-11-22) fired, also the ones enrolled during the outage.
        await eventually(
            lambda: steps_fired(database_url, len(before) + len(during)), timeout=15, what="steps fired"
        )
        assert worker.failure is None and not worker.stop_event.is_set()
        assert worker.stuck() is None, "healthy again once the projector moved"
    await forwarder.cut()

    conn = await asyncpg.connect(database_url)
    try:
        contacts = sorted(r["contact_id"] for r in await conn.fetch("select contact_id from enrollments"))
        decided = await conn.fetchval(
            "select count(*) from decisions where status = 'accepted' and command_type = 'Enroll.v1'"
        )
    finally:
        await conn.close()
    assert contacts == sorted(before + during)
    assert decided == len(before) + len(during)  # every decision, none lost
