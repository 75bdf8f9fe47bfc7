"""`make chaos`: crash the workers while commands flow, then prove nothing was lost or done twice.

A driver publishes a bounded, seeded stream of numbered commands over many contacts (every command type
the decider takes, a few BulkEnrolls and some poison pills: records that are not JSON, and commands that
break the contract's bounds (issue 12): an `issued_at` at the edge of the calendar, a NUL in a contact
name, the key separator `/` in a contact id, a step delay that would overflow the calendar, a record key
that is not UTF-8). Meanwhile worker processes run
`enrollstream worker` and a killer sends SIGKILL to the primary at random moments and restarts it; a
second worker joins mid-run and leaves again, so partitions move between processes. Afterwards one
worker runs until everything is decided and projected, and the verifier checks from the logs alone:

- every command has exactly one result, every poison pill exactly one dead letter and no result (else
  `lost` or `duplicate_events`), every fanned-out child command exactly one result;
- per aggregate, event versions run 1..n with none twice (`duplicate_events`) and none missing (`lost`);
- each aggregate's last snapshot in the changelog equals the fold of its events;
- the read models equal a clean rebuild from the events topic (`enrollstream replay`), and the stats
  cards equal counting the enrollments table (`projection_mismatches`);
- every enrollments row equals, column by column, what the domain says of its enrollment in the
  aggregate's last changelog snapshot (`read_models.enrollments.row_of`): `row_mismatches`. A replay
  compares the projection with itself; this compares it with the decider's own fold.

The last line printed is `chaos: kills=K commands=N lost=L duplicate_events=D projection_mismatches=P
duplicate_sends=S unknown_sends=U row_mismatches=R`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console

from enrollstream import stack
from enrollstream.adapters.kafka.reading import batches_to_end
from enrollstream.adapters.kafka.topics import Topics, ensure_topics, partition_numbers
from enrollstream.adapters.postgres.databases import create_database
from enrollstream.adapters.postgres.migrations import migrate
from enrollstream.adapters.postgres.queries import query
from enrollstream.adapters.postgres.read_side import campaign_stats_mismatches
from enrollstream.config import Settings
from enrollstream.domain import (
    CampaignDefinition,
    ContactState,
    aggregate_key,
    fold,
    initial_state,
    state_from_snapshot,
)
from enrollstream.domain.commands import child_command_id
from enrollstream.domain.events import BulkEnrollAccepted, parse_event
from enrollstream.domain.ids import enrollment_id
from enrollstream.read_models.enrollments import EnrollmentRow, differences, row_of
from enrollstream.runtime.campaigns import CampaignCatalog, publish_campaign
from enrollstream.runtime.projector import PROJECTION
from enrollstream.runtime.replay import replay
from enrollstream.smtp_sink import SmtpSink

ACCOUNT = "chaos-account"
CAMPAIGNS = ("chaos-a", "chaos-b")
POISON_MARKER = b"chaos-poison:"


@dataclass(frozen=True)
class ChaosPlan:
    commands: int = 4000
    contacts: int = 400
    kills: int = 12
    seconds: float = 150.0  # how long the driver spreads the commands over
    partitions: int = 6
    seed: int = 20261122
    # A killed worker holds its partitions until the group's session times out: keep that short.
    session_timeout_ms: int = 6_000
    settle_timeout: float = 180.0  # bound on waiting for the last worker to decide and project all
    # Run the scheduler and the dispatcher too, sending every step to a local SMTP sink.
    sends: bool = True


@dataclass
class ChaosReport:
    kills: int = 0
    commands: int = 0
    lost: int = 0
    duplicate_events: int = 0
    projection_mismatches: int = 0
    duplicate_sends: int = 0  # a step delivered to the SMTP server more than once (or without a ledger row)
    unknown_sends: int = 0  # sends caught in the ambiguous window by a kill: reported unknown, never resent
    store_write_kills: int = 0  # kills between a decider's Kafka commit and its state store's write
    row_mismatches: int = 0  # enrollments rows that differ from the domain's snapshot (or have none)
    details: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return (
            self.lost == 0
            and self.duplicate_events == 0
            and self.projection_mismatches == 0
            and self.duplicate_sends == 0
            and self.row_mismatches == 0
        )

    def line(self) -> str:
        return (
            f"chaos: kills={self.kills} commands={self.commands} lost={self.lost} "
            f"duplicate_events={self.duplicate_events} projection_mismatches={self.projection_mismatches} "
            f"duplicate_sends={self.duplicate_sends} unknown_sends={self.unknown_sends} "
            f"row_mismatches={self.row_mismatches}"
        )


# --- the workload -----------------------------------------------------------------------------------


def chaos_campaign(campaign_id: str) -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": campaign_id,
            "account_id": ACCOUNT,
            "version": 1,
            "name": f"Chaos {campaign_id}",
            "kind": "sequence",
            "steps": [
                {"channel": "email", "delay": "PT1S", "content": {"subject": "One", "body": "1"}},
                {"channel": "email", "delay": "PT1S", "content": {"subject": "Two", "body": "2"}},
                {"channel": "email", "delay": "PT1S", "content": {"subject": "Three", "body": "3"}},
            ],
            "reply_action": "stop",
        }
    )


@dataclass(frozen=True)
class Published:
    key: str | bytes  # bytes: published as is (a poison pill's key that is not UTF-8)
    value: bytes
    command_id: str | None  # None: a poison pill, expected once in the dead-letter topic
    children: tuple[str, ...] = ()  # a BulkEnroll's child command ids


# The poison pills besides records that are not JSON: valid JSON commands the contract refuses, each a
# dead letter of its own (docs/client.md "Bounds"). Named by the kind in the workload.
POISON_COMMANDS = ("poison-calendar", "poison-nul", "poison-slash", "poison-duration", "poison-key")
CALENDAR_EDGES = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00")


def poison_id(value: bytes) -> str | None:
    """The id a poison pill is known by, from its bytes (a dead letter keeps them): the number after
    the marker of one that is not JSON, else the command id of a command the contract refused."""
    if value.startswith(POISON_MARKER):
        return value[len(POISON_MARKER) :].split(b" ")[0].decode(errors="replace")
    try:
        command_id = json.loads(value)["command_id"]
    except (ValueError, TypeError, KeyError):
        return None
    return command_id if isinstance(command_id, str) else None


def _poison_command(
    kind: str, command_id: str, contact_id: str, campaign_id: str, issued: datetime, i: int
) -> Published:
    """An Enroll that breaks one bound of the contract (the decider dead-letters it)."""
    key: str | bytes = aggregate_key(ACCOUNT, contact_id)
    issued_at = issued.isoformat()
    contact = _facts(contact_id)
    data: dict[str, Any] = {"contact_id": contact_id, "campaign_id": campaign_id}
    if kind == "poison-calendar":
        issued_at = CALENDAR_EDGES[i % 2]  # out of the bounds (once an OverflowError while parsing)
    elif kind == "poison-nul":
        contact["name"] = f"Contact\x00{contact_id}"  # PostgreSQL refuses NUL in text and jsonb
    elif kind == "poison-slash":
        data["contact_id"] = f"{contact_id}/x"  # the key separator: an ambiguous aggregate key
        key = f"{ACCOUNT}/{contact_id}/x"
    elif kind == "poison-duration":
        campaign = chaos_campaign(campaign_id).model_dump(mode="json")
        campaign["steps"][0]["delay"] = "P999999999D"  # issued_at + delay: past year 9999
        data["campaign"] = campaign
    else:  # poison-key
        key = b"\xff\xfe" + aggregate_key(ACCOUNT, contact_id).encode()
    envelope = {
        "command_id": command_id,
        "type": "Enroll.v1",
        "account_id": ACCOUNT,
        "issued_at": issued_at,
        "actor": "chaos",
        "data": {**data, "contact": contact},
    }
    return Published(key, json.dumps(envelope).encode(), None)


def _facts(contact_id: str) -> dict[str, str]:
    return {"name": f"Contact {contact_id}", "email": f"{contact_id}@example.org"}


def recent_issued_at() -> datetime:
    """An hour ago, to the second: past any step delay of the chaos campaigns, well within the skew."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def workload(plan: ChaosPlan, run: str, issued: datetime | None = None) -> list[Published]:
    """The numbered commands, seeded: the same plan and `issued` always publish the same stream.

    `issued` is every command's `issued_at`: a worker with the default skew check (docs/client.md
    "Time") rejects one more than 7 days old, so a run passes an hour ago (`recent_issued_at`)."""
    rng = random.Random(plan.seed)
    contacts = [f"ch{j:05d}" for j in range(plan.contacts)]
    kinds = {
        # StepDue, ExpiryDue and DeliveryReported come from the scheduler and the dispatcher, not upstream.
        "Enroll.v1": 40,
        "OpenDetected.v1": 8,
        "ReplyDetected.v1": 8,
        "Stop.v1": 7,
        "Unenroll.v1": 5,
        "BounceDetected.v1": 4,
        "OptOut.v1": 3,
        "MarkFinished.v1": 2,
        "BulkEnroll.v1": 1,
        "poison": 4,  # in turn: not JSON, then each of POISON_COMMANDS (no draw: the stream stays put)
    }
    names, weights = list(kinds), list(kinds.values())
    out: list[Published] = []
    pills = 0
    issued = issued or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    for i in range(plan.commands):
        kind = rng.choices(names, weights)[0]
        contact_id = rng.choice(contacts)
        campaign_id = rng.choice(CAMPAIGNS)
        command_id = f"chaos-{run}-{i:06d}"
        key = aggregate_key(ACCOUNT, contact_id)
        if kind == "poison":
            kind = ("poison", *POISON_COMMANDS)[pills % (1 + len(POISON_COMMANDS))]
            pills += 1
        if kind == "poison":
            value = POISON_MARKER + f"{command_id} {{not json".encode()
            out.append(Published(key, value, None))
            continue
        if kind in POISON_COMMANDS:
            out.append(_poison_command(kind, command_id, contact_id, campaign_id, issued, i))
            continue
        envelope: dict[str, Any] = {
            "command_id": command_id,
            "type": kind,
            "account_id": ACCOUNT,
            "issued_at": issued.isoformat(),
            "actor": "chaos",
        }
        enrollment = enrollment_id(ACCOUNT, contact_id, campaign_id, 1)
        step = rng.randrange(3)
        data: dict[str, Any] = {"contact_id": contact_id}
        children: tuple[str, ...] = ()
        if kind == "Enroll.v1":
            data |= {"campaign_id": campaign_id, "contact": _facts(contact_id), "batch_number": 1 + i % 4}
        elif kind == "BulkEnroll.v1":
            members = rng.sample(contacts, 8)
            key = f"{ACCOUNT}/"
            data = {
                "campaign_id": campaign_id,
                "contact_import_id": f"import-{i}",
                "batch_size": 3,
                "contacts": [{"contact_id": c, "contact": _facts(c)} for c in members],
            }
            children = tuple(child_command_id(command_id, c) for c in dict.fromkeys(members))
        elif kind == "StepDue.v1":
            data |= {"enrollment_id": enrollment, "step_index": step, "attempt": 1}
        elif kind == "DeliveryReported.v1":
            outcome = rng.choice(["sent", "sent", "sent", "failed", "bounced", "unknown"])
            data |= {"enrollment_id": enrollment, "step_index": step, "attempt": 1, "outcome": outcome}
        elif kind == "OpenDetected.v1":
            data |= {"enrollment_id": enrollment, "step_index": step}
        elif kind == "BounceDetected.v1":
            data |= {"enrollment_id": enrollment, "step_index": step, "detail": "550 mailbox unavailable"}
        elif kind == "OptOut.v1":
            data |= {"channel": "email"}
        else:
            data |= {"enrollment_id": enrollment}
        envelope["data"] = data
        out.append(Published(key, json.dumps(envelope).encode(), command_id, children))
    return out


# --- processes ----------------------------------------------------------------------------------------


class WorkerProcess:
    """`enrollstream worker` in a child process with this run's settings; logs to a file. Each has a
    state directory of its own, as each host of a deployment would, and a trigger file: while it
    exists, the worker's decider kills itself between a Kafka commit and the store's write."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, roles: str) -> None:
        self.name = name
        self.state_dir = log_dir / f"{name}-state"
        self.env = {**env, "ENROLLSTREAM_STATE_DIR": str(self.state_dir)}
        self.roles = roles
        self.log_path = log_dir / f"{name}.log"
        self.trigger = log_dir / f"{name}.die-at-store-write"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "enrollstream.chaos",
                DYING_WORKER,
                str(self.trigger),
                self.roles,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()

    async def die_at_store_write(self, timeout: float) -> bool:
        """Let the decider kill itself at its next store write; True if it did within `timeout` (else
        it is killed from outside, as any other kill)."""
        self.trigger.touch()
        try:
            if self.process is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.process.wait(), timeout)
            return not self.running and not self.trigger.exists()
        finally:
            self.trigger.unlink(missing_ok=True)
            await self.kill()

    def delete_state(self) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def terminate(self, timeout: float = 30.0) -> None:
        """SIGTERM: the worker drains and leaves the group; SIGKILL if it does not within the bound."""
        if not self.running:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            await self.kill()


# --- the run ------------------------------------------------------------------------------------------


async def run_chaos(
    plan: ChaosPlan, endpoints: stack.Endpoints, work_dir: Path, console: Console
) -> ChaosReport:
    run = datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
    topics = Topics(prefix=f"chaos-{run}.")
    bootstrap = endpoints.kafka_bootstrap_servers
    await ensure_topics(bootstrap, topics, plan.partitions)
    database_url = await create_database(endpoints.database_url, f"chaos_{run}")
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    for campaign_id in CAMPAIGNS:
        await publish_campaign(bootstrap, topics.campaigns, chaos_campaign(campaign_id))

    log_dir = work_dir / f"chaos-{run}"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": database_url,
        "ENROLLSTREAM_TOPIC_PREFIX": topics.prefix,
        "ENROLLSTREAM_PARTITIONS": str(plan.partitions),
        "ENROLLSTREAM_GROUP_ID": f"chaos-{run}",
        "ENROLLSTREAM_SESSION_TIMEOUT_MS": str(plan.session_timeout_ms),
        "ENROLLSTREAM_HEARTBEAT_INTERVAL_MS": "1000",
        "ENROLLSTREAM_HTTP_PORT": "0",  # two workers on one host: any free port each
        "ENROLLSTREAM_SCHEDULER_INTERVAL_MS": "200",
        "ENROLLSTREAM_SMTP_STARTTLS": "false",
        "ENROLLSTREAM_SMTP_TIMEOUT": "10",
        "ENROLLSTREAM_SENDER_FROM": "Chaos <chaos@chaos.example>",
        "ENROLLSTREAM_UNSUBSCRIBE_URL": "https://u.chaos.example/u",
        "ENROLLSTREAM_UNSUBSCRIBE_KEYS": "chaos-unsubscribe-key-0123456789",
    }
    roles = "decider,projector,scheduler,dispatcher" if plan.sends else "decider,projector"
    sink = SmtpSink()
    env["ENROLLSTREAM_SMTP_HOST"], env["ENROLLSTREAM_SMTP_PORT"] = sink.host, str(sink.port)
    records = workload(plan, run, recent_issued_at())
    console.print(
        f"chaos run {run}: {len(records)} commands over {plan.contacts} contacts, "
        f"{plan.kills} kills, {plan.partitions} partitions; logs in {log_dir}"
    )
    report = ChaosReport(commands=len(records))
    primary = WorkerProcess("primary", env, log_dir, roles)
    second = WorkerProcess("second", env, log_dir, roles)
    rng = random.Random(plan.seed + 1)
    with sink:
        await primary.start()
        try:
            await _run(
                plan,
                bootstrap,
                topics,
                database_url,
                env["ENROLLSTREAM_GROUP_ID"],
                records,
                primary,
                second,
                rng,
                report,
                console,
            )
        finally:
            await primary.terminate()
            await second.terminate()
        await verify(bootstrap, topics, database_url, records, report, sink if plan.sends else None)
    console.print(
        f"{report.store_write_kills} of the kills landed between a decider's Kafka commit and its state "
        "store's write; every fourth restart began with the state store deleted"
    )
    for line in report.details:
        console.print(line, markup=False)  # data (dead-letter bytes, ids), never rich markup
    return report


async def _run(
    plan: ChaosPlan,
    bootstrap: str,
    topics: Topics,
    database_url: str,
    group_id: str,
    records: list[Published],
    primary: WorkerProcess,
    second: WorkerProcess,
    rng: random.Random,
    report: ChaosReport,
    console: Console,
) -> None:
    published = asyncio.create_task(drive(bootstrap, topics.commands, records, plan.seconds))
    killer = asyncio.create_task(_kill_repeatedly(primary, plan, rng, report, console))
    joiner = asyncio.create_task(_join_and_leave(second, plan, console))
    await asyncio.gather(published, killer, joiner)
    if not primary.running:
        await primary.start()
    console.print("driver done; waiting for the last worker to decide, send and project everything")
    await settle(bootstrap, topics, database_url, records, plan.settle_timeout, group_id=group_id)


async def drive(bootstrap: str, topic: str, records: list[Published], seconds: float) -> None:
    """Publish at a steady pace so the kills land while commands flow; idempotent, so none twice."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        started = time.monotonic()
        chunk = max(1, len(records) // max(1, int(seconds * 10)))
        for n in range(0, len(records), chunk):
            for record in records[n : n + chunk]:
                key = record.key if isinstance(record.key, bytes) else record.key.encode()
                await producer.send(topic, record.value, key=key)
            await asyncio.sleep(max(0.0, started + seconds * (n + chunk) / len(records) - time.monotonic()))
        await producer.flush()
    finally:
        await producer.stop()


async def _kill_repeatedly(
    worker: WorkerProcess, plan: ChaosPlan, rng: random.Random, report: ChaosReport, console: Console
) -> None:
    """SIGKILL at random moments: during start-up and restore, mid-batch, mid-transaction."""
    gap = plan.seconds / (plan.kills + 1)
    for n in range(plan.kills):
        await asyncio.sleep(rng.uniform(0.3 * gap, 1.7 * gap))
        how = "SIGKILL to the primary worker"
        # Every third kill lands between a Kafka commit and the state store's write (if the decider
        # writes within the bound), every fourth restart starts with no state store on disk.
        if n % 3 == 1 and await worker.die_at_store_write(timeout=gap / 2):
            report.store_write_kills += 1
            how = "the primary's decider killed between its Kafka commit and its state store's write"
        await worker.kill()
        report.kills += 1
        if n % 4 == 3:
            worker.delete_state()
            how += "; its state store deleted"
        console.print(f"  kill {report.kills}/{plan.kills}: {how}; restarting it")
        await worker.start()


async def _join_and_leave(worker: WorkerProcess, plan: ChaosPlan, console: Console) -> None:
    await asyncio.sleep(plan.seconds * 0.3)
    console.print("  a second worker joins the groups")
    await worker.start()
    await asyncio.sleep(plan.seconds * 0.4)
    console.print("  the second worker leaves (SIGTERM)")
    await worker.terminate()


async def settle(
    bootstrap: str,
    topics: Topics,
    database_url: str,
    records: list[Published],
    timeout: float,
    group_id: str | None = None,
    sends: bool = True,
) -> bool:
    """Until every command has a result (or dead letter), the projector has reached the events' end and,
    when the run sends (`sends`: a scheduler and a dispatcher run), no step is due or being sent: twice in
    a row, a second apart, so nothing is in flight. Whether it settled before `timeout`.

    A run without the sending roles must say so: its step timers stay due forever, and waiting for
    them would only wait out the timeout."""
    expected = sum(1 + len(r.children) for r in records)
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline and quiet < 2:
        decided = await _count_to_end(bootstrap, [topics.command_results, topics.dead_letters])
        still = (
            decided >= expected
            and (group_id is None or await _decider_caught_up(bootstrap, topics.commands, group_id))
            and await _projector_caught_up(bootstrap, topics.events, database_url)
            and await _projector_caught_up(bootstrap, topics.command_results, database_url)
            and not (sends and await _sends_in_flight(database_url))
        )
        quiet = quiet + 1 if still else 0
        if quiet < 2:
            # The confirming look comes a second after a quiet one; while work is still visibly in
            # flight, look again sooner (a quiet look found late only delays the confirmation).
            await asyncio.sleep(1.0 if quiet else 0.25)
    # Not settled: the chaos run's verifier reports what is missing rather than hiding it.
    return quiet >= 2


async def _sends_in_flight(database_url: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return bool(await conn.fetchval(query("chaos_sends_in_flight")))
    finally:
        await conn.close()


async def _count_to_end(bootstrap: str, topic_names: list[str]) -> int:
    count = 0
    async for _ in _read_all(bootstrap, topic_names):
        count += 1
    return count


async def _projector_caught_up(bootstrap: str, events_topic: str, database_url: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(query("read_checkpoints"), PROJECTION, events_topic)
    finally:
        await conn.close()
    return await _nothing_after(
        bootstrap, events_topic, {row["partition"]: row["next_offset"] for row in rows}
    )


async def _decider_caught_up(bootstrap: str, commands_topic: str, group_id: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(f"{group_id}.decider")
    finally:
        await admin.close()
    offsets = {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == commands_topic}
    return await _nothing_after(bootstrap, commands_topic, offsets)


async def _nothing_after(bootstrap: str, topic: str, positions: dict[int, int]) -> bool:
    """Whether no committed record sits at or after the given positions (absent: from the start).

    Read, not computed from end offsets: transaction markers take offsets too, so only reading tells a
    marker from an unprocessed record."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await partition_numbers(bootstrap, topic)]
        consumer.assign(partitions)
        for tp in partitions:
            if tp.partition in positions:
                consumer.seek(tp, positions[tp.partition])
        unread = [tp for tp in partitions if tp.partition not in positions]
        if unread:
            await consumer.seek_to_beginning(*unread)  # one reset: each call waits a fetcher round
        async for batch in batches_to_end(consumer, partitions):
            if any(batch.values()):
                return False
        return True
    finally:
        await consumer.stop()


async def _read_all(bootstrap: str, topic_names: list[str]) -> AsyncIterator[tuple[str, Any]]:
    """Every committed record of the topics, up to their current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(name, p) for name in topic_names for p in await partition_numbers(bootstrap, name)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        async for batch in batches_to_end(consumer, partitions):
            for tp, records in batch.items():
                for record in records:
                    yield tp.topic, record
    finally:
        await consumer.stop()


# --- the verifier ----------------------------------------------------------------------------------


async def verify(
    bootstrap: str,
    topics: Topics,
    database_url: str,
    records: list[Published],
    report: ChaosReport,
    sink: SmtpSink | None = None,
) -> None:
    await _verify_results(bootstrap, topics, records, report)
    states = await _verify_events(bootstrap, topics, report)
    await _verify_projections(bootstrap, topics, database_url, report)
    await _verify_rows(database_url, states, report)
    if sink is not None:
        await _verify_sends(database_url, sink, report)


async def _verify_sends(database_url: str, sink: SmtpSink, report: ChaosReport) -> None:
    """Each step reached the SMTP server at most once, and only with a ledger row written before it."""
    conn = await asyncpg.connect(database_url)
    try:
        ledger = await conn.fetch(query("chaos_ledger"))
    finally:
        await conn.close()
    step_of = {row["message_id_header"]: (row["enrollment_id"], row["step_index"]) for row in ledger}
    received = sink.message_id_counts()
    per_step: Counter[tuple[str, int]] = Counter()
    for message_id, n in received.items():
        step = step_of.get(message_id)
        if step is None:
            report.duplicate_sends += n
            report.details.append(f"sent without a ledger row: {message_id} ({n}x)")
            continue
        per_step[step] += n
    twice = {key: n for key, n in per_step.items() if n > 1}
    report.duplicate_sends += sum(n - 1 for n in twice.values())
    for (enrollment, index), n in list(twice.items())[:5]:
        report.details.append(f"step {index} of {enrollment} reached the SMTP server {n} times")
    states = Counter(row["state"] for row in ledger)
    report.unknown_sends = states["unknown"]
    lost = [
        row["message_id_header"]
        for row in ledger
        if row["state"] == "sent" and not received[row["message_id_header"]]
    ]
    report.lost += len(lost)
    if lost:
        report.details.append(f"{len(lost)} sends recorded as sent that the SMTP server never received")
    report.details.append(
        f"sends: {sum(received.values())} messages received by the SMTP sink; ledger "
        + ", ".join(f"{state}={n}" for state, n in sorted(states.items()))
    )


async def _verify_results(
    bootstrap: str, topics: Topics, records: list[Published], report: ChaosReport
) -> None:
    results: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    poison: Counter[str] = Counter()
    pills = {poison_id(r.value) for r in records if r.command_id is None}
    async for topic, record in _read_all(bootstrap, [topics.command_results, topics.dead_letters]):
        if topic == topics.dead_letters:
            value = record.value or b""
            if poison_id(value) in pills:
                poison[str(poison_id(value))] += 1
            else:
                report.details.append(f"unexpected dead letter at offset {record.offset}: {value[:80]!r}")
                report.lost += 1  # a valid command the decider could not read
        else:
            result = json.loads(record.value)
            results[result["command_id"]] += 1
            statuses[result["status"]] += 1
    expected: list[tuple[str, Counter[str]]] = []
    for r in records:
        if r.command_id is None:
            expected.append((str(poison_id(r.value)), poison))
        else:
            expected.append((r.command_id, results))
            expected.extend((child, results) for child in r.children)
    report.details.append(
        "results: "
        + ", ".join(f"{status}={n}" for status, n in sorted(statuses.items()))
        + f"; dead letters: {sum(poison.values())}"
    )
    missing = [cid for cid, seen in expected if seen[cid] == 0]
    twice = [cid for cid, seen in expected if seen[cid] > 1]
    decided = sorted(str(cid) for cid in pills if cid in results)  # a poison pill has no result
    twice += decided
    report.lost += len(missing)
    report.duplicate_events += len(twice)
    if decided:
        report.details.append(f"{len(decided)} poison pills decided, e.g. {decided[:3]}")
    if missing:
        report.details.append(f"{len(missing)} commands without a result, e.g. {missing[:3]}")
    if twice:
        report.details.append(f"{len(twice)} commands with more than one result, e.g. {twice[:3]}")


async def _verify_events(bootstrap: str, topics: Topics, report: ChaosReport) -> dict[str, ContactState]:
    """Versions and snapshots; returns each aggregate's state as its last changelog snapshot says."""
    versions: dict[str, Counter[int]] = {}
    events_by_key: dict[str, list[Any]] = {}
    async for _, record in _read_all(bootstrap, [topics.events]):
        event = parse_event(record.value)
        if isinstance(event, BulkEnrollAccepted):
            # Its own one-event aggregate, the BulkEnroll: once per BulkEnroll command, no snapshot.
            bulk = versions.setdefault(f"{event.account_id}/bulk-enroll/{event.causation_id}", Counter())
            bulk[event.version] += 1
            continue
        key = aggregate_key(event.account_id, event.contact_id)
        versions.setdefault(key, Counter())[event.version] += 1
        events_by_key.setdefault(key, []).append(event)
    for key, seen in versions.items():
        twice = sum(n - 1 for n in seen.values() if n > 1)
        gaps = max(seen) - len(seen)
        report.duplicate_events += twice
        report.lost += gaps
        if twice or gaps:
            report.details.append(f"{key}: {twice} versions twice, {gaps} missing")

    snapshots: dict[str, ContactState] = {}
    catalog = CampaignCatalog(bootstrap, topics.campaigns)  # snapshots refer to its versions
    await catalog.start()
    try:
        async for _, record in _read_all(bootstrap, [topics.aggregates]):
            if record.key is not None and record.value is not None:
                snapshots[record.key.decode()] = state_from_snapshot(record.value, catalog.get_version)
    finally:
        await catalog.stop()
    for key, events in events_by_key.items():
        account_id, _, contact_id = key.partition("/")
        folded = fold(initial_state(account_id, contact_id), events)
        snapshot = snapshots.get(key)
        if snapshot is None or snapshot.model_dump() != folded.model_dump():
            report.projection_mismatches += 1
            report.details.append(f"{key}: the changelog snapshot is not the fold of its events")
    report.details.append(
        f"events: {sum(len(e) for e in events_by_key.values())} over {len(events_by_key)} aggregates"
    )
    return snapshots


async def _verify_rows(database_url: str, states: dict[str, ContactState], report: ChaosReport) -> None:
    """Every enrollments row is what the domain says of its enrollment (row_of), column by column."""
    conn = await asyncpg.connect(database_url)
    try:
        records = await conn.fetch(query("chaos_enrollments"))
    finally:
        await conn.close()
    rows = {record["enrollment_id"]: EnrollmentRow(**dict(record)) for record in records}
    expected = {
        e.enrollment_id: row_of(state, e) for state in states.values() for e in state.enrollments.values()
    }
    for key in sorted(rows.keys() | expected.keys()):
        want = expected.get(key)
        wrong = differences(rows.get(key), want) if want is not None else {"enrollment_id": ("row", None)}
        if wrong:
            report.row_mismatches += 1
            if report.row_mismatches <= 5:
                report.details.append(f"enrollments row {key} is not what the domain says: {wrong}")


async def _verify_projections(bootstrap: str, topics: Topics, database_url: str, report: ChaosReport) -> None:
    rebuilt = await replay(bootstrap, topics.events, database_url, results_topic=topics.command_results)
    if rebuilt.live_lag:
        report.details.append(f"the live projector is {rebuilt.live_lag} records behind")
        report.projection_mismatches += rebuilt.live_lag
    for table in rebuilt.tables:
        report.projection_mismatches += table.only_live + table.only_replayed
        if not table.equal:
            report.details.append(
                f"{table.table}: {table.only_live} rows only live, {table.only_replayed} only in the rebuild"
            )
    conn = await asyncpg.connect(database_url)
    try:
        stats = await campaign_stats_mismatches(conn)
    finally:
        await conn.close()
    report.projection_mismatches += len(stats)
    for mismatch in stats:
        report.details.append(f"stats card differs from the count: {mismatch}")


# --- a worker that can die between the Kafka commit and the store write -------------------------------

DYING_WORKER = "worker-dying-at-store-write"


def run_worker_dying_at_store_write(trigger: Path, roles: str) -> None:
    """`enrollstream worker --roles ROLES`, except that while `trigger` exists the decider SIGKILLs
    itself right after a Kafka transaction committed and before its state store recorded it: the
    window the store must survive (it holds less than the changelog; the restart replays the tail).
    The trigger is removed as it fires."""
    from enrollstream.cli import app
    from enrollstream.state.partition import PartitionState

    commit = PartitionState.commit

    def commit_or_die(self: PartitionState[Any], changes: Any, applied_offset: int) -> None:
        if trigger.exists():
            trigger.unlink(missing_ok=True)
            os.kill(os.getpid(), signal.SIGKILL)
        commit(self, changes, applied_offset)

    PartitionState.commit = commit_or_die  # type: ignore[method-assign]
    app(["worker", "--roles", roles])


def main(plan: ChaosPlan, settings: Settings, console: Console) -> int:
    state = stack.up(settings)
    try:
        report = asyncio.run(run_chaos(plan, state.endpoints, settings.stack_dir / "chaos", console))
    finally:
        if state.started:
            with contextlib.suppress(Exception):
                stack.down(settings)
    print(report.line(), flush=True)  # plain: the last line is parsed by people and scripts
    return 0 if report.clean else 1


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != DYING_WORKER:
        sys.exit(f"usage: python -m enrollstream.chaos {DYING_WORKER} TRIGGER_FILE ROLES")
    run_worker_dying_at_store_write(Path(sys.argv[2]), sys.argv[3])
