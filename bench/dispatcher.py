"""Dispatcher: emails/s from StepDispatched events to a local SMTP sink, against a raw aiosmtplib client.

N StepDispatched events (one email step each, distinct enrollments, keys spread over the partitions)
are produced once to an events topic. Each repetition gets a fresh database with every migration
applied and a fresh consumer group, and runs one `DispatcherService` (the worker's code: ledger,
SMTP, DeliveryReported) against `enrollstream.smtp_sink.SinkProcess` on 127.0.0.1 (sink processes of
their own, so the sink does not share the dispatcher's event loop and GIL), no rate limits. The
figure is N / (the sink's accept time of the last message - the moment the dispatcher's consumer had
its partitions assigned; the join itself is in `params`).

The baseline pushes the same N messages (built by the same message builder, before the clock starts)
with raw aiosmtplib over as many connections as the dispatcher's SMTP pool, `sendmail` one after the
other on each: the cost of getting the bytes into the same sink at all, with no ledger and no Kafka.
The one-connection figure is kept in `params`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiosmtplib
import asyncpg

from bench.common import Result, Sizes, median, migrated_database, produce, run_id
from enrollstream.adapters.kafka.records import encode
from enrollstream.adapters.kafka.topics import Topics, ensure_topics
from enrollstream.adapters.mail.message import SenderIdentity, build_step_wire_message
from enrollstream.adapters.mail.smtp import SmtpConfig, SmtpSender
from enrollstream.adapters.postgres.databases import drop_database
from enrollstream.domain import ids
from enrollstream.domain.campaign import Channel, StepContent
from enrollstream.domain.events import StepDispatched, StepDispatchedData
from enrollstream.runtime.dispatcher import DispatcherService
from enrollstream.smtp_sink import SinkProcess

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


SINK_PROCESSES = 1


async def run_dispatcher(
    bootstrap: str, server_url: str, topics: Topics, sink: SinkProcess, n: int
) -> tuple[float, dict[str, int]]:
    """emails/s from the consumer group's join to the sink's accept of the last message."""
    name = f"bench_{run_id()}"
    url = await migrated_database(server_url, name)
    try:
        before = len(sink.received())
        sender = SmtpSender(SmtpConfig(host=sink.host, port=sink.port, starttls=False, timeout=10.0))
        service = DispatcherService(
            bootstrap, topics, url, f"bench-{run_id()}", email=sender, identity=IDENTITY
        )
        await service.start()
        stop = asyncio.Event()
        began = time.time()
        task = asyncio.create_task(service.run(stop))
        try:
            deadline = time.monotonic() + max(120.0, n / 20)
            # The clock starts once the group is joined (as for the decider): the join is a fixed
            # cost of a starting consumer, not of sending.
            await asyncio.wait(
                [asyncio.ensure_future(service.assigned.wait()), task],
                timeout=60,
                return_when=asyncio.FIRST_COMPLETED,
            )
            started = time.time()
            while len(received := sink.received()) < before + n:
                if task.done():
                    task.result()
                    raise RuntimeError("the dispatcher stopped before sending everything")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the sink has {len(received) - before} of {n} messages")
                await asyncio.sleep(0.05)  # the sink's accept times are the clock, not this poll
            received = sorted(received, key=lambda m: m.received_at)[before:]
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
        return n / (last - started), {
            "sent": states["sent"],
            "connections": sender_connections(sender),
            "join_ms": round((started - began) * 1000),
        }
    finally:
        await drop_database(server_url, name)


def sender_connections(sender: SmtpSender) -> int:
    return int(getattr(sender, "connections_opened", -1))  # -1: a sender that does not count them


async def run_raw(sink: SinkProcess, payloads: list[tuple[str, str, bytes]], connections: int) -> float:
    """`sendmail` of every payload, one after the other on each of `connections` connections."""
    before = len(sink.received())

    async def one(share: list[tuple[str, str, bytes]]) -> None:
        client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, start_tls=False, timeout=10.0)
        await client.connect()
        try:
            for sender, recipient, content in share:
                await client.sendmail(sender, [recipient], content)
        finally:
            await client.quit()

    started = time.time()
    await asyncio.gather(*(one(payloads[i::connections]) for i in range(connections)))
    deadline = time.monotonic() + 30
    while len(received := sink.received()) < before + len(payloads):
        if time.monotonic() > deadline:
            raise RuntimeError(f"raw client: the sink has {len(received) - before} of {len(payloads)}")
        await asyncio.sleep(0.01)
    received = sorted(received, key=lambda m: m.received_at)[before:]
    return len(payloads) / (max(m.received_at for m in received) - started)


async def scenario(
    bootstrap: str, server_url: str, sizes: Sizes, say: Callable[[str], None], profile: Any = None
) -> Result:
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
        message = build_step_wire_message(
            sender=IDENTITY,
            account_id=e.account_id,
            contact_id=e.contact_id,
            enrollment_id=e.enrollment_id,
            step=e.data,
            date=AT,
        )
        payloads.append(("bench@bench.example", e.data.to, message.content))
    dispatched: list[float] = []
    raw: list[float] = []
    raw_one: list[float] = []
    seen: dict[str, int] = {}
    pool = SmtpSender(SmtpConfig(host="127.0.0.1")).pool_size
    with SinkProcess(SINK_PROCESSES) as sink:
        await run_raw(sink, payloads[: min(n, 500)], pool)  # warm-up
        for rep in range(sizes.reps):
            raw.append(await run_raw(sink, payloads, pool))
            raw_one.append(await run_raw(sink, payloads, 1))
            rate, seen = await run_dispatcher(bootstrap, server_url, topics, sink, n)
            dispatched.append(rate)
            if profile is not None and rep == 0:  # an extra run, profiled (pyinstrument: not a figure)
                with profile("dispatcher"):
                    await run_dispatcher(bootstrap, server_url, topics, sink, n)
            say(
                f"dispatcher rep {rep + 1}/{sizes.reps}: {rate:,.0f} emails/s "
                f"({seen['connections']} SMTP connections, group join {seen['join_ms']} ms), "
                f"raw aiosmtplib {raw[-1]:,.0f} emails/s "
                f"over {pool} connections, {raw_one[-1]:,.0f} over one"
            )
    value, baseline = median(dispatched), median(raw)
    return Result(
        status="measured",
        unit="emails/s",
        target=TARGET,
        value=value,
        baseline=baseline,
        baseline_name=f"raw aiosmtplib sendmail of the same messages over {pool} reused connections",
        runs=dispatched,
        baseline_runs=raw,
        target_met=value >= 1_000,
        params={
            "emails": n,
            "reps": sizes.reps,
            "partitions": sizes.partitions,
            "smtp_connections_last_rep": seen.get("connections"),
            "group_join_ms_last_rep": seen.get("join_ms"),
            "raw_one_connection_runs": raw_one,
            "raw_one_connection": median(raw_one),
            "rate_limits": "none",
            "sink": f"enrollstream.smtp_sink.SinkProcess ({SINK_PROCESSES} aiosmtpd process(es) of its own)",
            "database": "fresh database per repetition, every migration applied",
        },
    )
