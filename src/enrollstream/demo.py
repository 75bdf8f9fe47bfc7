"""`enrollstream demo`: the product in about a minute, on the real stack and the real clock.

It brings the stack up (or reuses it), makes a fresh topic prefix and database for this run, starts a
local SMTP sink and a local DNS responder, and runs every sending role of the worker in-process
(decider, projector, scheduler, dispatcher, inbound). Then it acts as the upstream system would:

1. publishes a three-step email campaign (delays of seconds, send window always open, MX checked);
2. enrolls a few hundred contacts (progress bar) - one on a domain without MX is skipped, two bad
   records go to the dead-letter topic, two Enrolls are refused;
3. watches the stats cards and the enrollment table update live while the scheduler and the
   dispatcher send; meanwhile three contacts reply (InboundEmailReceived with In-Reply-To = the
   Message-ID the sink received), one address bounces (550 at RCPT) and one contact is unenrolled;
4. prints a summary that checks itself: what the SMTP sink received equals what the read model and
   the delivery ledger say, and every special case landed once. Any mismatch fails the run.

Everything it started (worker, sink, DNS responder; the stack when it started it) is stopped again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from enrollstream import stack
from enrollstream.adapters.kafka.topics import Topics, ensure_topics
from enrollstream.adapters.postgres.api_keys import create_api_key
from enrollstream.adapters.postgres.databases import create_database
from enrollstream.adapters.postgres.migrations import migrate
from enrollstream.adapters.postgres.queries import query
from enrollstream.adapters.postgres.read_side import (
    campaign_stats_card,
    campaign_stats_mismatches,
    enrollments_page,
    latest_enrollment,
)
from enrollstream.config import Settings
from enrollstream.dns_sink import DnsSink
from enrollstream.domain import CampaignDefinition, aggregate_key
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.worker import Worker
from enrollstream.smtp_sink import SmtpSink

ACCOUNT = "demo-account"
CAMPAIGN = "demo-welcome"
DOMAIN = "example.org"  # has an MX record in the demo's DNS
NO_MX_DOMAIN = "nomx.example"  # exists (an A record) but has no MX: the contact is skipped
ROLES = ("decider", "projector", "scheduler", "dispatcher", "inbound", "api")  # api: the console
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John", "Radia", "Ken")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Backus", "Perlman")
SUBJECTS = ("Welcome, {{ first_name }}", "Getting started", "Still there?")
TERMINAL = ("completed", "delivered", "stopped", "unenrolled", "failed", "expired", "handed_off")

# The contacts with a part to play come first, so they lead the live enrollment table.
REPLIERS = ("c0000", "c0001", "c0002")
LEAVER = "c0003"
BOUNCER = "c0004"
NO_MX = "c0005"
SPECIAL = (*REPLIERS, LEAVER, BOUNCER, NO_MX)


@dataclass(frozen=True)
class DemoPlan:
    contacts: int = 300
    delays: tuple[int, ...] = (2, 2, 2)  # seconds: after enrollment, then after each delivery
    database: str = "enrollstream_demo"
    timeout: float = 180.0  # for the sending phase
    # Keep the worker (and the console) up after the summary until Enter, when stdin is a terminal;
    # `--no-wait` (CI) stops at once.
    wait: bool = True

    @classmethod
    def quick(cls, contacts: int = 40, database: str = "enrollstream_demo") -> DemoPlan:
        # Steps 2 and 3 two seconds apart: time for a reply or the unenroll to land before the last
        # step even on a busy CI machine, so the summary's expectations hold.
        return cls(contacts=contacts, delays=(1, 2, 2), database=database, timeout=120.0)

    @property
    def ordinary(self) -> int:
        return self.contacts - len(SPECIAL)


@dataclass(frozen=True)
class Check:
    what: str
    expected: int
    actual: int

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass
class DemoReport:
    contacts: int = 0
    results: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    events: int = 0
    sink_received: int = 0
    card: dict[str, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    timed_out: str | None = None
    seconds: float = 0.0
    console_url: str = ""  # the Enrollments console of the demo's worker (docs/console.md)
    printed: bool = False  # the summary was printed already (before waiting for Enter)

    @property
    def ok(self) -> bool:
        return self.timed_out is None and all(check.ok for check in self.checks)


def email_of(contact_id: str) -> str:
    return f"{contact_id}@{NO_MX_DOMAIN if contact_id == NO_MX else DOMAIN}"


def name_of(i: int) -> str:
    return f"{FIRST_NAMES[i % len(FIRST_NAMES)]} {LAST_NAMES[i % len(LAST_NAMES)]}"


def demo_campaign(delays: tuple[int, ...] = (2, 2, 2)) -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": CAMPAIGN,
            "account_id": ACCOUNT,
            "version": 1,
            "name": "Welcome sequence (demo)",
            "kind": "sequence",
            "verify_email_mx": True,
            "reply_action": "stop",
            "steps": [
                {
                    "channel": "email",
                    "delay": f"PT{delay}S",
                    "window": {"start_hour": 0, "end_hour": 24},  # every day, all day: always open
                    "content": {"subject": subject, "body": f"Hello {{{{ name }}}}, this is step {n + 1}."},
                }
                for n, (delay, subject) in enumerate(zip(delays, SUBJECTS, strict=True))
            ],
        }
    )


def _command(command_type: str, contact_id: str, data: Mapping[str, object]) -> dict[str, object]:
    return {
        "command_id": f"demo-{uuid.uuid4()}",
        "type": command_type,
        "account_id": ACCOUNT,
        "issued_at": datetime.now(UTC).isoformat(),
        "actor": "demo",
        "data": {"contact_id": contact_id, **data},
    }


def _record(contact_id: str, command: dict[str, object]) -> tuple[str, bytes]:
    return aggregate_key(ACCOUNT, contact_id), json.dumps(command).encode()


def demo_commands(contacts: int) -> list[tuple[str, bytes]]:
    """(key, value) pairs: the enrollments, then two refusals and two malformed records."""
    out: list[tuple[str, bytes]] = []
    ids = [f"c{i:04d}" for i in range(contacts)]
    for i, contact_id in enumerate(ids):
        facts = {"name": name_of(i), "email": email_of(contact_id)}
        enroll = _command(
            "Enroll.v1",
            contact_id,
            {"campaign_id": CAMPAIGN, "contact": facts, "batch_number": 1 + i // 50},
        )
        out.append(_record(contact_id, enroll))
    # Refused, with a reason in the command result: a campaign that does not exist, enrolling twice.
    last = ids[-1]
    unknown = {"campaign_id": "no-such-campaign", "contact": {"name": "X", "email": email_of(last)}}
    again = {"campaign_id": CAMPAIGN, "contact": {"name": "Again", "email": email_of(last)}}
    out.append(_record(last, _command("Enroll.v1", last, unknown)))
    out.append(_record(last, _command("Enroll.v1", last, again)))
    # Malformed input goes to the dead-letter topic with the reason, and blocks nothing.
    out.append((aggregate_key(ACCOUNT, last), b"{not json"))
    out.append((aggregate_key(ACCOUNT, last), json.dumps({"type": "Enroll.v1", "data": {}}).encode()))
    return out


# --- talking to Kafka and Postgres --------------------------------------------------------------------


async def _publish(
    producer: AIOKafkaProducer, topic: str, records: list[tuple[str, bytes]], progress: Progress
) -> None:
    task = progress.add_task(f"publishing {len(records)} commands", total=len(records))
    for key, value in records:
        await producer.send(topic, value, key=key.encode())
        progress.advance(task)
    await producer.flush()


async def _follow(
    bootstrap: str, topics: Topics, expected: int, report: DemoReport, progress: Progress, timeout: float
) -> None:
    """Count command results and dead letters until every published command is accounted for."""
    task = progress.add_task("decided (command results + dead letters)", total=expected)
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
                        if result["status"] == "rejected":  # a skip's code is its kind, not a refusal
                            report.codes[result["code"]] += 1
                    seen += 1
                    progress.advance(task)
    finally:
        await consumer.stop()
    if seen < expected:
        raise TimeoutError(f"only {seen} of {expected} commands were decided within {timeout:.0f}s")


@dataclass
class Snapshot:
    """One look at the read side, what the live view shows and the summary checks."""

    card: dict[str, int]
    rows: list[dict[str, Any]]
    enrollments: int
    unfinished: int
    delivered_events: int  # StepDelivered events projected into the timeline
    ledger: Counter[str]  # delivery_ledger rows by state (the dispatcher's record of each send)
    replies: int
    stop_reasons: Counter[str]
    mx_skips: int
    leaver_enrollment_id: str | None


async def _snapshot(conn: asyncpg.Connection, page_rows: int) -> Snapshot:
    card = await campaign_stats_card(conn, ACCOUNT, CAMPAIGN)
    page = await enrollments_page(conn, ACCOUNT, CAMPAIGN, limit=page_rows)
    row = await conn.fetchrow(query("demo_progress"), ACCOUNT, CAMPAIGN)
    by_status: Counter[str] = Counter(json.loads(row["statuses"]))
    leaver = await latest_enrollment(conn, ACCOUNT, LEAVER, CAMPAIGN)
    return Snapshot(
        card=card,
        rows=page.rows,
        enrollments=sum(by_status.values()),
        unfinished=sum(n for status, n in by_status.items() if status not in TERMINAL),
        delivered_events=row["delivered_events"],
        ledger=Counter(json.loads(row["ledger"])),
        replies=row["replies"],
        stop_reasons=Counter(json.loads(row["stop_reasons"])),
        mx_skips=row["mx_skips"],
        leaver_enrollment_id=None if leaver is None else leaver["enrollment_id"],
    )


# --- the live view ------------------------------------------------------------------------------------


def _cards(snapshot: Snapshot, sink: SmtpSink) -> Table:
    card = snapshot.card
    table = Table(title="campaign stats cards (read model: campaign_stats_cards)", expand=False)
    columns = ("total", "active", "completed", "stopped", "failed", "unenrolled")
    for name in (*columns, "sent (sink)", "replies", "MX skip"):
        table.add_column(name, justify="right")
    table.add_row(
        *(str(card.get(name, 0)) for name in columns),
        str(len(sink.messages)),
        str(snapshot.replies),
        str(snapshot.mx_skips),
    )
    return table


def _enrollment_table(snapshot: Snapshot) -> Table:
    table = Table(title=f"enrollments, first {len(snapshot.rows)} (read model: enrollment_table)")
    for name in ("id", "contact", "status", "step", "next", "stop reason"):
        table.add_column(name, no_wrap=True)
    now = datetime.now(UTC)
    for row in snapshot.rows:
        next_at = row["next_execution_at"]
        wait = "" if next_at is None else f"{max(0.0, (next_at - now).total_seconds()):.0f}s"
        cells = (row["contact_id"], row["contact_name"] or "", row["status"], row["step_label"] or "",
                 wait, row["stop_reason"] or "")  # fmt: skip
        table.add_row(*(Text(cell) for cell in cells))  # data, never rich markup
    return table


@dataclass
class Upstream:
    """What the demo does as the outside world while the worker sends: replies, an unenroll."""

    producer: AIOKafkaProducer
    topics: Topics
    sink: SmtpSink
    say: Callable[[str], None]
    replied: set[str] = field(default_factory=set)
    unenrolled: bool = False
    bounce_told: bool = False

    @property
    def done(self) -> bool:
        return len(self.replied) == len(REPLIERS) and self.unenrolled and self.bounce_told

    async def act(self, snapshot: Snapshot) -> None:
        received = {m.recipient: m for m in self.sink.messages}  # the latest per recipient
        for contact_id in REPLIERS:
            sent = received.get(email_of(contact_id))
            if contact_id in self.replied or sent is None:
                continue
            reply = {
                "type": "InboundEmailReceived.v1",
                "account_id": ACCOUNT,
                "from": email_of(contact_id),
                "to": "hello@acme.example",
                "subject": f"Re: {sent.subject}",
                "message_id": f"<reply-{contact_id}-{uuid.uuid4().hex[:8]}@{DOMAIN}>",
                "in_reply_to": sent.message_id,
                "received_at": datetime.now(UTC).isoformat(),
            }
            await self.producer.send_and_wait(
                self.topics.inbound_email, json.dumps(reply).encode(), key=ACCOUNT.encode()
            )
            self.replied.add(contact_id)
            self.say(
                f"[cyan]reply[/cyan]   {contact_id} answers {sent.subject!r}: the inbound role matches "
                "In-Reply-To to the sent Message-ID and the enrollment stops (reason: replied)"
            )
        enrollment_id = snapshot.leaver_enrollment_id
        if not self.unenrolled and enrollment_id and email_of(LEAVER) in received:
            command = _command("Unenroll.v1", LEAVER, {"enrollment_id": enrollment_id})
            key, value = _record(LEAVER, command)
            await self.producer.send_and_wait(self.topics.commands, value, key=key.encode())
            self.unenrolled = True
            self.say(
                f"[cyan]unenroll[/cyan] an operator unenrolls {LEAVER} after its first email: "
                "nothing more is sent to it"
            )
        if not self.bounce_told and self.sink.refused[email_of(BOUNCER)]:
            self.bounce_told = True
            self.say(
                f"[cyan]bounce[/cyan]  the SMTP server refused {email_of(BOUNCER)} with 550 at RCPT: the "
                "dispatcher reports the bounce and the enrollment fails (reason: bounced)"
            )


def _done(plan: DemoPlan, snapshot: Snapshot, upstream: Upstream, sink: SmtpSink) -> bool:
    return (
        upstream.done
        and snapshot.enrollments == plan.contacts - 1
        and snapshot.unfinished == 0
        and snapshot.replies == len(REPLIERS)
        and snapshot.ledger["started"] == 0
        and snapshot.delivered_events == len(sink.messages)
    )


# --- the run ------------------------------------------------------------------------------------------


async def run_demo(
    settings: Settings,
    endpoints: stack.Endpoints,
    plan: DemoPlan,
    console: Console,
) -> DemoReport:
    started = time.monotonic()
    report = DemoReport(contacts=plan.contacts)
    run_id = f"{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    topics = Topics(prefix=f"demo-{run_id}.")
    bootstrap = endpoints.kafka_bootstrap_servers

    def say(line: str) -> None:
        console.print(line)

    # The scheduler's timer job logs "skipped: maximum number of running instances reached" whenever a
    # claim takes longer than its interval, and a cancelled run when the worker stops; neither is news
    # here, and the summary's checks catch anything that went wrong.
    logging.getLogger("apscheduler").setLevel(logging.CRITICAL)

    say("\n[bold]1. Setting up[/bold]: fresh topics and database for this run, a local mail server and DNS")
    await ensure_topics(bootstrap, topics, settings.partitions, settings.replication_factor)
    say(f"   topics under the prefix {topics.prefix!r}, {settings.partitions} partitions")
    database_url = await create_database(endpoints.database_url, plan.database, replace=True)
    conn = await asyncpg.connect(database_url)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    say(f"   database {plan.database!r}: {len(applied)} migrations of the read models applied")

    with SmtpSink(reject=[email_of(BOUNCER)]) as sink:
        async with DnsSink() as dns:
            dns.add(DOMAIN, "MX", f"10 mx.{DOMAIN}.")
            dns.add(NO_MX_DOMAIN, "A", "192.0.2.7")
            say(
                f"   SMTP sink on {sink.host}:{sink.port} (refuses {email_of(BOUNCER)} with 550); "
                f"DNS on {dns.host}:{dns.port} ({DOMAIN} has MX, {NO_MX_DOMAIN} has none)"
            )
            demo_settings = settings.model_copy(
                update={
                    "topic_prefix": topics.prefix,
                    "group_id": f"demo-{run_id}",
                    "dns_nameservers": f"{dns.host}:{dns.port}",
                    "smtp_host": sink.host,
                    "smtp_port": sink.port,
                    "smtp_starttls": False,
                    "smtp_timeout": 10.0,
                    "sender_from": "Acme Onboarding <hello@acme.example>",
                    "unsubscribe_url": "https://u.acme.example/u",
                    "unsubscribe_keys": "demo-unsubscribe-key-0123456789",
                    "scheduler_interval_ms": 250,
                    # The console's port: ENROLLSTREAM_API_PORT when set, else any free one (printed).
                    "api_port": settings.api_port if "api_port" in settings.model_fields_set else 0,
                }
            )
            await _run(plan, demo_settings, bootstrap, topics, database_url, sink, report, say, console)
    report.seconds = time.monotonic() - started
    return report


async def _run(
    plan: DemoPlan,
    settings: Settings,
    bootstrap: str,
    topics: Topics,
    database_url: str,
    sink: SmtpSink,
    report: DemoReport,
    say: Callable[[str], None],
    console: Console,
) -> None:
    campaign = demo_campaign(plan.delays)
    await publish_campaign(bootstrap, topics.campaigns, campaign)
    say(
        f"\n[bold]2. The campaign[/bold] {campaign.name!r}: {len(campaign.steps)} emails, "
        f"{' / '.join(f'{d}s' for d in plan.delays)} apart, send window always open, MX checked at "
        "enrollment, a reply stops the sequence"
    )

    started = time.monotonic()
    worker = Worker(settings, bootstrap, database_url, roles=ROLES)
    ready = asyncio.Event()
    worker_task = asyncio.create_task(worker.run(ready))
    await asyncio.wait({worker_task, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if worker_task.done():
        worker_task.result()
    say(
        "   worker running in this process: decider (decides each command, exactly once), projector "
        "(Postgres read models), scheduler (due steps), dispatcher (SMTP), inbound (replies), api "
        "(the HTTP API and the console)"
    )
    if worker.api is not None:
        key_conn = await asyncpg.connect(database_url)
        try:
            _, key = await create_api_key(key_conn, ACCOUNT, "make demo")
        finally:
            await key_conn.close()
        report.console_url = f"{worker.api.url}/console/campaigns/{CAMPAIGN}/enrollments"
        console.print(f"   [bold]console[/bold]: {report.console_url}", highlight=False, soft_wrap=True)
        console.print(f"   [bold]key[/bold] (paste it into the login form): {key}", highlight=False,
                      soft_wrap=True)  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    conn = await asyncpg.connect(database_url)
    try:
        say(
            f"\n[bold]3. Enrolling {plan.contacts} contacts[/bold] the way an upstream system does: Enroll "
            f"commands on the commands topic, one result each (plus 2 refusals and 2 malformed records)"
        )
        records = demo_commands(plan.contacts)
        with _progress(console) as progress:
            await _publish(producer, topics.commands, records, progress)
            await _follow(bootstrap, topics, len(records), report, progress, timeout=plan.timeout)
        codes = ", ".join(f"{code}" for code in sorted(report.codes))
        say(
            f"   results: {dict(sorted(report.results.items()))} (refused: {codes}); "
            f"{report.dead_letters} dead letters kept with their reason"
        )
        say(f"   {NO_MX} ({email_of(NO_MX)}) was skipped: its domain has no MX record")

        say(
            "\n[bold]4. Sending[/bold]: the scheduler fires due steps, the dispatcher sends them to the SMTP "
            "sink; the cards and the table below are read from Postgres as the projector updates them"
        )
        upstream = Upstream(producer, topics, sink, say)
        deadline = time.monotonic() + plan.timeout
        snapshot = await _snapshot(conn, page_rows=12)
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            upstream.say = live.console.print
            while True:
                live.update(Group(_cards(snapshot, sink), _enrollment_table(snapshot)))
                await upstream.act(snapshot)
                if _done(plan, snapshot, upstream, sink):
                    break
                if time.monotonic() > deadline:
                    report.timed_out = f"the sending phase did not finish within {plan.timeout:.0f}s"
                    break
                await asyncio.sleep(0.3)
                snapshot = await _snapshot(conn, page_rows=12)
            live.update(Group(_cards(snapshot, sink), _enrollment_table(snapshot)))
        assert worker.decider is not None
        report.events = worker.decider.emitted_events
        await _summarize(plan, conn, snapshot, sink, report)
        if plan.wait and report.console_url and sys.stdin.isatty():
            report.seconds = time.monotonic() - started
            print_report(report, console)
            report.printed = True
            say(f"\nThe console stays open at {report.console_url} - press Enter to stop the demo.")
            await _enter_pressed()
    finally:
        await conn.close()
        await producer.stop()
        worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(worker_task, timeout=30)


async def _enter_pressed() -> None:
    """Until a line arrives on stdin (or it closes), without blocking the loop the worker runs on."""
    loop = asyncio.get_running_loop()
    pressed = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), pressed.set)
    try:
        await pressed.wait()
        sys.stdin.readline()
    finally:
        loop.remove_reader(sys.stdin.fileno())


async def _summarize(
    plan: DemoPlan, conn: asyncpg.Connection, snapshot: Snapshot, sink: SmtpSink, report: DemoReport
) -> None:
    messages = sink.messages
    per_recipient = Counter(m.recipient for m in messages)
    ordinary_emails = sum(n for r, n in per_recipient.items() if r.split("@")[0] not in SPECIAL)
    report.sink_received = len(messages)
    report.card = snapshot.card
    mismatches = await campaign_stats_mismatches(conn)
    steps = len(plan.delays)
    report.checks = [
        Check("emails the read model records as delivered (StepDelivered)", len(messages),
              snapshot.delivered_events),
        Check("emails the delivery ledger records as sent", len(messages), snapshot.ledger["sent"]),
        Check(f"emails to the {plan.ordinary} ordinary contacts ({steps} each)", plan.ordinary * steps,
              ordinary_emails),
        Check("Message-IDs received more than once", 0,
              sum(1 for n in sink.message_id_counts().values() if n > 1)),
        Check("replies (replies table)", len(REPLIERS), snapshot.replies),
        Check("stopped because they replied", len(REPLIERS), snapshot.stop_reasons["replied"]),
        Check("failed (550 at RCPT: Failed card, reason bounced)", 1, snapshot.card.get("failed", 0)),
        Check("emails the sink received for the bouncing address", 0, per_recipient[email_of(BOUNCER)]),
        Check("skipped: no MX record (enrollment_skips)", 1, snapshot.mx_skips),
        Check("unenrolled (stats card)", 1, snapshot.card.get("unenrolled", 0)),
        Check("completed all steps (stats card)", plan.ordinary, snapshot.card.get("completed", 0)),
        Check("enrollments still waiting or sending", 0, snapshot.unfinished),
        Check("stats cards that disagree with counting enrollments", 0, len(mismatches)),
    ]  # fmt: skip


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("   {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def print_report(report: DemoReport, console: Console) -> None:
    console.print(
        "\n[bold]5. Summary[/bold]: what the SMTP sink received against what the read models, the ledger "
        "and the stats cards say"
    )
    table = Table(title="the demo checks itself", show_header=True)
    table.add_column("check")
    table.add_column("expected", justify="right")
    table.add_column("actual", justify="right")
    table.add_column("", justify="center")
    for check in report.checks:
        table.add_row(
            check.what,
            str(check.expected),
            str(check.actual),
            "[green]ok[/green]" if check.ok else "[red]NO[/red]",
        )
    console.print(table)
    console.print(
        f"   {report.contacts} contacts, {report.sink_received} emails received by the SMTP sink, "
        f"{report.events} events appended exactly once, {report.dead_letters} dead letters, "
        f"{sum(report.codes.values())} refused commands"
    )
    if report.timed_out:
        console.print(f"[red]demo: {report.timed_out}[/red]")
    failed = sum(not check.ok for check in report.checks)
    verdict = "ok" if report.ok else "FAILED"
    console.print(
        f"demo: {verdict} contacts={report.contacts} emails={report.sink_received} failed_checks={failed} "
        f"seconds={report.seconds:.1f}",
        highlight=False,
    )
