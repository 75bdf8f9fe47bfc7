"""Dispatcher: emails/s from StepDispatched events to a local SMTP sink, against a raw aiosmtplib client.

N StepDispatched events (one email step each, distinct enrollments, keys spread over the partitions)
are produced once to an events topic. Each repetition gets a fresh database with every migration
applied and a fresh consumer group, and runs one `DispatcherService` (the worker's code: ledger,
SMTP, DeliveryReported) against `enrollstream.smtp_sink.SmtpSink` on 127.0.0.1, no rate limits. The
figure is N / (the sink's accept time of the last message - the moment `run()` started).

The baseline pushes the same N messages (built by the same message builder, before the clock starts)
through one aiosmtplib connection, `sendmail` one after the other: the cost of getting the bytes into
the same sink at all, with no ledger and no Kafka.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import aiosmtplib
import asyncpg

from bench.common import Result, Sizes, median, migrated_database, produce, run_id
from enrollstream.adapters.kafka.records import encode
from enrollstream.adapters.kafka.topics import Topics, ensure_topics
from enrollstream.adapters.mail.message import WIRE_POLICY, SenderIdentity, build_step_message
from enrollstream.adapters.mail.smtp import SmtpConfig, SmtpSender
from enrollstream.adapters.postgres.databases import drop_database
from enrollstream.domain import ids
from enrollstream.domain.campaign import Channel, StepContent
from enrollstream.domain.events import StepDispatched, StepDispatchedData
from enrollstream.runtime.dispatcher import DispatcherService
from enrollstream.smtp_sink import SmtpSink

TARGET = ">= 1,000 emails/s to the local SMTP sink from one dispatcher process (issue 15)"
ACCOUNT = "bench"
IDENTITY = SenderIdentity(
    from_address="Bench <bench@bench.example>",
    signing_key=b"bench-unsubscribe-key-0123456789abcdef",
    unsubscribe_url="https://u.bench.example/u",
)
AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def emails(sizes: Sizes) -> int:
    return 1_000 if sizes.mode == "quick" else 5_000


def step_dispatched(run: str, i: int) -> StepDispatched:
    contact = f"c{i:07d}"
    enrollment = ids.enrollment_id(ACCOUNT, contact, f"campaign-{run}", 1)
    return StepDispatched(
        event_id=f"ev-{run}-{i}",
        account_id=ACCOUNT,
        contact_id=contact,
        campaign_id=f"campaign-{run}",
        enrollment_id=enrollment,
        version=3,
        occurred_at=AT,
        causation_id=f"step-due-{run}-{i}",
        data=StepDispatchedData(
            step_index=0,
            attempt=1,
            step_count=3,
            message_id=ids.message_id(enrollment, 0, 1),
            channel=Channel.EMAIL,
            to=f"{contact}@example.org",
            content=StepContent(subject="Hello {{ first_name }}", body="Hi {{ first_name }},\nwelcome.\n"),
            contact_name=f"Contact {i}",
        ),
    )


async def run_dispatcher(
    bootstrap: str, server_url: str, topics: Topics, sink: SmtpSink, n: int
) -> tuple[float, dict[str, int]]:
    name = f"bench_{run_id()}"
    url = await migrated_database(server_url, name)
    try:
        before = len(sink.messages)
        sender = SmtpSender(SmtpConfig(host=sink.host, port=sink.port, starttls=False, timeout=10.0))
        service = DispatcherService(
            bootstrap, topics, url, f"bench-{run_id()}", email=sender, identity=IDENTITY
        )
        await service.start()
        stop = asyncio.Event()
        started = time.time()
        task = asyncio.create_task(service.run(stop))
        try:
            deadline = time.monotonic() + max(120.0, n / 20)
            while len(sink.messages) < before + n:
                if task.done():
                    task.result()
                    raise RuntimeError("the dispatcher stopped before sending everything")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the sink has {len(sink.messages) - before} of {n} messages")
                await asyncio.sleep(0.01)
            received = sink.messages[before:]
            last = max(m.received_at for m in received)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
            await service.stop()
        conn = await asyncpg.connect(url)
        try:
            states = dict(await conn.fetch("select state, count(*) from delivery_ledger group by state"))
        finally:
            await conn.close()
        if states.get("sent", 0) != n or len({m.message_id for m in received}) != n:
            raise RuntimeError(f"ledger {states}, {len(received)} messages received for {n}")
        return n / (last - started), {"sent": states["sent"], "connections": sender_connections(sender)}
    finally:
        await drop_database(server_url, name)


def sender_connections(sender: SmtpSender) -> int:
    return int(getattr(sender, "connections_opened", -1))  # -1: a sender that does not count them


async def run_raw(sink: SmtpSink, payloads: list[tuple[str, str, bytes]]) -> float:
    before = len(sink.messages)
    client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, start_tls=False, timeout=10.0)
    started = time.time()
    await client.connect()
    try:
        for sender, recipient, content in payloads:
            await client.sendmail(sender, [recipient], content)
    finally:
        await client.quit()
    received = sink.messages[before:]
    if len(received) != len(payloads):
        raise RuntimeError(f"raw client: the sink has {len(received)} of {len(payloads)}")
    return len(payloads) / (max(m.received_at for m in received) - started)


async def scenario(bootstrap: str, server_url: str, sizes: Sizes, say: Callable[[str], None]) -> Result:
    n = emails(sizes)
    run = run_id()
    topics = Topics(prefix=f"bench-{run}.")
    await ensure_topics(bootstrap, topics, sizes.partitions)
    events = [step_dispatched(run, i) for i in range(n)]
    say(f"dispatcher: producing {n:,} StepDispatched events")
    await produce(
        bootstrap, topics.events, [(f"{e.account_id}/{e.contact_id}".encode(), encode(e)) for e in events]
    )
    payloads = []
    for e in events:
        assert e.enrollment_id is not None
        message = build_step_message(
            sender=IDENTITY,
            account_id=e.account_id,
            contact_id=e.contact_id,
            enrollment_id=e.enrollment_id,
            step=e.data,
            date=AT,
        )
        payloads.append(("bench@bench.example", e.data.to, message.as_bytes(policy=WIRE_POLICY)))
    dispatched: list[float] = []
    raw: list[float] = []
    seen: dict[str, int] = {}
    with SmtpSink() as sink:
        await run_raw(sink, payloads[: min(n, 500)])  # warm-up
        for rep in range(sizes.reps):
            raw.append(await run_raw(sink, payloads))
            rate, seen = await run_dispatcher(bootstrap, server_url, topics, sink, n)
            dispatched.append(rate)
            say(
                f"dispatcher rep {rep + 1}/{sizes.reps}: {rate:,.0f} emails/s "
                f"({seen['connections']} SMTP connections), raw aiosmtplib {raw[-1]:,.0f} emails/s"
            )
    value, baseline = median(dispatched), median(raw)
    return Result(
        status="measured",
        unit="emails/s",
        target=TARGET,
        value=value,
        baseline=baseline,
        baseline_name="raw aiosmtplib sendmail of the same messages over one reused connection",
        runs=dispatched,
        baseline_runs=raw,
        target_met=value >= 1_000,
        params={
            "emails": n,
            "reps": sizes.reps,
            "partitions": sizes.partitions,
            "smtp_connections_last_rep": seen.get("connections"),
            "rate_limits": "none",
            "sink": "enrollstream.smtp_sink.SmtpSink (aiosmtpd, a thread of the same process)",
            "database": "fresh database per repetition, every migration applied",
        },
    )
