"""`enrollstream demo`: the whole path on a small workload, with progress, then what it did.

It brings the stack up (or reuses it), creates a fresh topic prefix and database for this run, runs the
worker in-process, publishes a demo campaign and a few hundred commands the way an upstream system
would, follows their results and the read model, prints a summary and stops what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from enrollstream import stack
from enrollstream.adapters.kafka.topics import Topics, ensure_topics
from enrollstream.adapters.postgres.migrations import migrate
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition, aggregate_key
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.worker import Worker

ACCOUNT = "demo-account"
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John", "Radia", "Ken")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Backus", "Perlman")


def demo_campaign() -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": "demo-welcome",
            "account_id": ACCOUNT,
            "version": 1,
            "name": "Welcome sequence (demo)",
            "kind": "sequence",
            "steps": [
                {
                    "channel": "email",
                    "delay": "PT2S",
                    "content": {"subject": "Welcome", "body": "Hello {name}"},
                },
                {
                    "channel": "email",
                    "delay": "PT4S",
                    "content": {"subject": "Getting started", "body": "Tips"},
                },
                {
                    "channel": "email",
                    "delay": "PT6S",
                    "content": {"subject": "Still there?", "body": "Reply!"},
                },
            ],
            "reply_action": "stop",
        }
    )


@dataclass
class DemoReport:
    commands: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    events: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _command(command_type: str, contact_id: str, data: dict[str, object]) -> dict[str, object]:
    return {
        "command_id": f"demo-{uuid.uuid4()}",
        "type": command_type,
        "account_id": ACCOUNT,
        "issued_at": datetime.now(UTC).isoformat(),
        "actor": "demo",
        "data": {"contact_id": contact_id, **data},
    }


def demo_commands(contacts: int) -> list[tuple[str, bytes]]:
    """(key, value) pairs: enrollments, then a few operator actions and some bad input."""
    out: list[tuple[str, bytes]] = []
    ids = [f"c{i:04d}" for i in range(contacts)]
    for i, contact_id in enumerate(ids):
        name = f"{FIRST_NAMES[i % len(FIRST_NAMES)]} {LAST_NAMES[i % len(LAST_NAMES)]}"
        facts = {"name": name, "email": f"{contact_id}@example.org", "mobile": f"+1555{i:07d}"}
        enroll = _command(
            "Enroll.v1",
            contact_id,
            {
                "campaign_id": "demo-welcome",
                "contact": facts,
                "batch_number": 1 + i // 50,
                "priority": i % 40 == 0,
            },
        )
        out.append((aggregate_key(ACCOUNT, contact_id), json.dumps(enroll).encode()))
    # Seed 001's refusals: an enrollment for a campaign that does not exist, and enrolling twice.
    unknown = _command("Enroll.v1", ids[0], {"campaign_id": "no-such-campaign", "contact": {"name": "X"}})
    again = _command("Enroll.v1", ids[1], {"campaign_id": "demo-welcome", "contact": {"name": "Again"}})
    out += [(aggregate_key(ACCOUNT, ids[0]), json.dumps(unknown).encode())]
    out += [(aggregate_key(ACCOUNT, ids[1]), json.dumps(again).encode())]
    # Bad input goes to the dead-letter topic and loses nothing.
    out += [(aggregate_key(ACCOUNT, ids[2]), b"{not json")]
    out += [(aggregate_key(ACCOUNT, ids[3]), json.dumps({"type": "Enroll.v1", "data": {}}).encode())]
    return out


def operator_commands(enrollment_ids: dict[str, str]) -> list[tuple[str, bytes]]:
    """Seed 000's Stop and seed 004's Unenroll for a few contacts."""
    out: list[tuple[str, bytes]] = []
    picked = sorted(enrollment_ids)[5:15]
    for n, contact_id in enumerate(picked):
        command_type = "Stop.v1" if n % 2 == 0 else "Unenroll.v1"
        command = _command(command_type, contact_id, {"enrollment_id": enrollment_ids[contact_id]})
        out.append((aggregate_key(ACCOUNT, contact_id), json.dumps(command).encode()))
    return out


async def _publish(bootstrap: str, topic: str, records: list[tuple[str, bytes]], progress: Progress) -> None:
    task = progress.add_task(f"publishing {len(records)} commands", total=len(records))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key.encode())
            progress.advance(task)
        await producer.flush()
    finally:
        await producer.stop()


async def _follow(
    bootstrap: str, topics: Topics, expected: int, report: DemoReport, progress: Progress, timeout: float
) -> None:
    """Count command results and dead letters until every published command is accounted for."""
    task = progress.add_task("decided (results + dead letters)", total=expected)
    consumer = AIOKafkaConsumer(
        topics.command_results,
        topics.dead_letters,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    deadline = time.monotonic() + timeout
    seen = 0
    try:
        while seen < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for record in records:
                    if tp.topic == topics.dead_letters:
                        report.dead_letters += 1
                    else:
                        result = json.loads(record.value)
                        report.results[result["status"]] += 1
                        if result.get("code"):
                            report.codes[result["code"]] += 1
                    seen += 1
                    progress.advance(task)
    finally:
        await consumer.stop()


async def _wait_projected(database_url: str, expected_rows: int, progress: Progress, timeout: float) -> None:
    task = progress.add_task("projected into Postgres (enrollments rows)", total=expected_rows)
    conn = await asyncpg.connect(database_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            rows = await conn.fetchval("select count(*) from enrollments")
            progress.update(task, completed=rows)
            if rows >= expected_rows:
                return
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def _enrollment_ids(database_url: str) -> dict[str, str]:
    conn = await asyncpg.connect(database_url)
    try:
        return {r["contact_id"]: r["enrollment_id"] for r in await conn.fetch("select * from enrollments")}
    finally:
        await conn.close()


async def _recreate_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
        await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    return f"{server_url.rpartition('/')[0]}/{name}"


async def run_demo(
    settings: Settings, endpoints: stack.Endpoints, contacts: int, console: Console
) -> DemoReport:
    started = time.monotonic()
    report = DemoReport()
    run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    topics = Topics(prefix=f"demo-{run_id}.")
    demo_settings = settings.model_copy(update={"topic_prefix": topics.prefix, "group_id": f"demo-{run_id}"})
    bootstrap = endpoints.kafka_bootstrap_servers
    console.print(f"[bold]topics[/bold] under prefix {topics.prefix!r}, {settings.partitions} partitions")
    await ensure_topics(bootstrap, topics, settings.partitions, settings.replication_factor)
    database_url = await _recreate_database(endpoints.database_url, "enrollstream_demo")
    conn = await asyncpg.connect(database_url)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    console.print(f"[bold]database[/bold] enrollstream_demo, {len(applied)} migrations applied")
    campaign = demo_campaign()
    await publish_campaign(bootstrap, topics.campaigns, campaign)
    console.print(f"[bold]campaign[/bold] {campaign.campaign_id!r}: {len(campaign.steps)} email steps")

    worker = Worker(demo_settings, bootstrap, database_url)
    ready = asyncio.Event()
    worker_task = asyncio.create_task(worker.run(ready))
    await asyncio.wait({worker_task, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if worker_task.done():
        worker_task.result()
    console.print("[bold]worker[/bold] running decider + projector in this process")
    try:
        first = demo_commands(contacts)
        with _progress(console) as progress:
            await _publish(bootstrap, topics.commands, first, progress)
            await _follow(bootstrap, topics, len(first), report, progress, timeout=120)
            await _wait_projected(database_url, contacts, progress, timeout=120)
        report.commands["Enroll"] = contacts + 2
        report.commands["malformed"] = 2
        second = operator_commands(await _enrollment_ids(database_url))
        report.commands["Stop/Unenroll"] = len(second)
        with _progress(console) as progress:
            await _publish(bootstrap, topics.commands, second, progress)
            report.results.clear()
            report.codes.clear()
            report.dead_letters = 0
            await _follow(bootstrap, topics, len(first) + len(second), report, progress, timeout=120)
        # The projector lags the results by a moment; wait until it has folded the operator actions.
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(100):
                finished = await conn.fetchval(
                    "select count(*) from enrollments where status in ('stopped', 'unenrolled')"
                )
                if finished >= len(second):
                    break
                await asyncio.sleep(0.1)
            report.statuses = {
                r["status"]: r["n"]
                for r in await conn.fetch(
                    "select status, count(*) as n from enrollments group by 1 order by 1"
                )
            }
        finally:
            await conn.close()
        assert worker.decider is not None
        report.events = worker.decider.emitted_events
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(worker_task, timeout=30)
    report.seconds = time.monotonic() - started
    return report


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def print_report(report: DemoReport, console: Console) -> None:
    table = Table(title="what the demo did", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, count in report.commands.items():
        table.add_row(f"commands published: {name}", str(count))
    for status, count in sorted(report.results.items()):
        table.add_row(f"results: {status}", str(count))
    for code, count in sorted(report.codes.items()):
        table.add_row(f"  rejected with code {code}", str(count))
    table.add_row("dead letters (malformed input, kept with the reason)", str(report.dead_letters))
    table.add_row("events appended (exactly once, in Kafka transactions)", str(report.events))
    for status, count in report.statuses.items():
        table.add_row(f"enrollments rows: {status}", str(count))
    console.print(table)
    console.print(f"demo finished in {report.seconds:.1f}s")
