"""End to end (issue 15): Enrolls at a fixed rate, one worker process per role, p99 Enroll -> SMTP accept.

The deployment is the documented one: four `enrollstream worker --roles ROLE` processes (decider,
projector, scheduler, dispatcher), each with the default settings except the scheduler's tick (100 ms
instead of 500 ms, said in `params`), against fresh topics and a fresh database; the SMTP sink runs in a
process of its own (`enrollstream.smtp_sink.SinkProcess`) and records each message's accept time.

The campaign's only step is an email due at once, so each Enroll is decided, projected into a timer,
fired by the scheduler, decided again (StepDispatched), and sent. Latency = the sink's accept time - the
time the broker acknowledged the Enroll. The clock starts after a warm-up that proved the whole path
(every warm-up email arrived).

Rates: first `end_to_end_rate` for `end_to_end_seconds` (the issue's 500/s for 60 s); then the highest
rate at which p99 stays under 2 s: up by half while rates are met, then by bisection between the highest
met and the lowest missed rate, at most `end_to_end_searches` more runs, each on new contacts. The next
rate starts only once every email of the previous one has arrived; a rate whose backlog does not drain
within `DRAIN_LIMIT_S` (600 s) ends the search.
The CPU seconds each process used per second of a run say which role bounds it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import Result, Sizes, migrated_database, run_id
from bench.machine import cpu_seconds, listening_pid, machine_cpu, tree_cpu_seconds
from enrollstream.adapters.kafka.reading import batches_to_end
from enrollstream.adapters.kafka.topics import Topics, delete_topics, ensure_topics
from enrollstream.adapters.postgres.databases import drop_database
from enrollstream.domain import CampaignDefinition
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.smtp_sink import SinkProcess

P99_LIMIT_S = 2.0
TARGET = "500 Enrolls/s for 60 s, one worker process per role: p99 Enroll -> SMTP accept < 2 s"
ACCOUNT = "bench"
ROLES = ("decider", "projector", "scheduler", "dispatcher")
SCHEDULER_INTERVAL_MS = 100
WARM_UP = 50
DRAIN_LIMIT_S = 600  # after a rate that left a backlog: how long to wait for it before the next rate


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _campaign() -> CampaignDefinition:
    return CampaignDefinition.model_validate(
        {
            "campaign_id": "bench-e2e",
            "account_id": ACCOUNT,
            "version": 1,
            "steps": [{"channel": "email", "delay": "PT0S", "content": {"subject": "Hi", "body": "Hello"}}],
        }
    )


@dataclass
class RateRun:
    rate: int
    sent: int
    received: int
    p50: float
    p99: float
    drained_s: float  # from the last Enroll to the last email
    cores: dict[str, float]  # CPU seconds per second of the run, per process
    machine_busy: float
    published: dict[str, float]

    @property
    def met(self) -> bool:
        return self.received == self.sent and self.p99 < P99_LIMIT_S

    def as_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate, "enrolls": self.sent, "emails": self.received, "p50_s": round(self.p50, 3),
            "p99_s": round(self.p99, 3), "drained_s": round(self.drained_s, 2), "met": self.met,
            "cores": {k: round(v, 2) for k, v in self.cores.items()},
            "machine_busy": round(self.machine_busy, 2),
        }  # fmt: skip


class _Sink:
    """What the sink processes accepted: recipient -> accept time, read as it arrives."""

    def __init__(self, processes: SinkProcess) -> None:
        self._processes = processes
        self._seen = 0  # messages of `received()` already taken in
        self.received: dict[str, float] = {}

    def update(self) -> None:
        messages = self._processes.received()
        for message in messages[self._seen :]:
            self.received.setdefault(message.recipient, message.received_at)
        self._seen = len(messages)

    @property
    def pids(self) -> list[int]:
        return self._processes.pids


def _environment(
    bootstrap: str, url: str, topics: Topics, partitions: int, sink_port: int, state: Path
) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("ENROLLSTREAM_")}
    return {
        **inherited,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": url,
        "ENROLLSTREAM_TOPIC_PREFIX": topics.prefix,
        "ENROLLSTREAM_GROUP_ID": f"{topics.prefix}group",
        "ENROLLSTREAM_PARTITIONS": str(partitions),
        "ENROLLSTREAM_STATE_DIR": str(state),
        "ENROLLSTREAM_HTTP_PORT": "0",
        "ENROLLSTREAM_LOG_FORMAT": "json",
        "ENROLLSTREAM_LOG_LEVEL": "WARNING",
        "ENROLLSTREAM_SCHEDULER_INTERVAL_MS": str(SCHEDULER_INTERVAL_MS),
        "ENROLLSTREAM_SMTP_HOST": "127.0.0.1",
        "ENROLLSTREAM_SMTP_PORT": str(sink_port),
        "ENROLLSTREAM_SMTP_STARTTLS": "false",
        "ENROLLSTREAM_SENDER_FROM": "Bench <bench@bench.example>",
        "ENROLLSTREAM_UNSUBSCRIBE_URL": "https://u.bench.example/u",
        "ENROLLSTREAM_UNSUBSCRIBE_KEYS": "bench-unsubscribe-key-0123456789",
    }


class _Workers:
    """One `enrollstream worker --roles ROLE` process per role."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    async def start(self) -> None:
        for role in ROLES:
            with (self.logs / f"{role}.log").open("wb") as log:
                self.processes[role] = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "enrollstream", "worker", "--roles", role,
                    env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=log,
                )  # fmt: skip

    def check(self) -> None:
        for role, process in self.processes.items():
            if process.returncode is not None:
                tail = (self.logs / f"{role}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the {role} worker exited with status {process.returncode}: {tail}")

    def cpu(self) -> dict[str, float]:
        return {role: cpu_seconds([p.pid]) for role, p in self.processes.items()}

    async def stop(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _publish(
    producer: AIOKafkaProducer, topic: str, tag: str, rate: int, count: int
) -> dict[str, float]:
    """`count` Enrolls of new contacts at `rate`/s; recipient -> when the broker acknowledged its Enroll."""
    published: dict[str, float] = {}

    async def acknowledged(recipient: str, sent: asyncio.Future[Any]) -> None:
        await sent
        published[recipient] = time.time()

    acks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    for i in range(count):
        await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        contact = f"{tag}-{i:06d}"
        command = {
            "command_id": f"bench-enroll-{tag}-{i}", "type": "Enroll.v1", "account_id": ACCOUNT,
            "issued_at": datetime.now(UTC).isoformat(), "actor": "bench",
            "data": {"contact_id": contact, "campaign_id": "bench-e2e",
                     "contact": {"name": contact, "email": f"{contact}@bench.example"}},
        }  # fmt: skip
        sent = await producer.send(topic, json.dumps(command).encode(), key=f"{ACCOUNT}/{contact}".encode())
        acks.append(asyncio.create_task(acknowledged(f"{contact}@bench.example", sent)))
    await asyncio.gather(*acks)
    return published


async def _drained(sink: _Sink, workers: _Workers, published: dict[str, float], limit: float) -> bool:
    """Wait (at most `limit` s) until the sink holds an email for every one of these Enrolls."""
    deadline = time.monotonic() + limit
    while True:
        sink.update()
        if all(r in sink.received for r in published):
            return True
        workers.check()
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)


async def _run_rate(
    producer: AIOKafkaProducer,
    topics: Topics,
    sink: _Sink,
    workers: _Workers,
    rate: int,
    seconds: int,
    tag: str,
    servers: dict[str, int],
) -> RateRun:
    cpu_before, machine_before, clock = workers.cpu(), machine_cpu(), time.monotonic()
    sink_before = cpu_seconds(sink.pids)
    servers_before = {name: tree_cpu_seconds(pid) for name, pid in servers.items()}
    bench_before = _own_cpu_seconds()
    published = await _publish(producer, topics.commands, tag, rate, rate * seconds)
    last_enroll = time.time()
    await _drained(sink, workers, published, seconds + 120)
    elapsed = time.monotonic() - clock
    cores = {role: (after - cpu_before[role]) / elapsed for role, after in workers.cpu().items()}
    cores["smtp sink"] = (cpu_seconds(sink.pids) - sink_before) / elapsed
    for name, pid in servers.items():
        cores[name] = (tree_cpu_seconds(pid) - servers_before[name]) / elapsed
    cores["bench (publisher, sink reader)"] = (_own_cpu_seconds() - bench_before) / elapsed
    busy, total = (a - b for a, b in zip(machine_cpu(), machine_before, strict=True))
    latencies = [sink.received[r] - at for r, at in published.items() if r in sink.received]
    arrived = [sink.received[r] for r in published if r in sink.received]
    return RateRun(
        rate=rate,
        sent=len(published),
        received=len(latencies),
        p50=_percentile(latencies, 0.5) if latencies else float("inf"),
        p99=_percentile(latencies, 0.99) if len(latencies) == len(published) else float("inf"),
        drained_s=(max(arrived) - last_enroll) if arrived else float("inf"),
        cores=cores,
        machine_busy=busy / total if total else 0.0,
        published=published,
    )


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _servers(bootstrap: str, server_url: str) -> dict[str, int]:
    """The broker's and PostgreSQL's processes, found by the ports this run talks to (when on this machine),
    so a run says how much of the machine the servers took beside the workers."""
    ports = {
        "kafka broker": int(bootstrap.split(",")[0].rsplit(":", 1)[1]),
        "postgresql": urlsplit(server_url).port or 5432,
    }
    found = {name: listening_pid(port) for name, port in ports.items()}
    return {name: pid for name, pid in found.items() if pid is not None}


# Where an email's time goes, hop by hop: from the Enroll's acknowledgement to each record's timestamp
# (the time its producer made it, inside the transaction that then commits), then the sink's accept.
HOPS = (
    ("ContactEnrolled.v1", "decided (ContactEnrolled)"),
    ("StepDue.v1", "fired (StepDue)"),
    ("StepDispatched.v1", "dispatched (StepDispatched)"),
)


async def _hops(
    bootstrap: str, topics: Topics, partitions: int, sink: _Sink, published: dict[str, float]
) -> dict[str, float]:
    """p50 seconds from the Enroll to each hop, read back from the events and commands topics."""
    seen: dict[str, dict[str, float]] = {}
    wanted = {kind for kind, _ in HOPS}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        for topic in (topics.events, topics.commands):
            assigned = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            async for batch in batches_to_end(consumer, assigned):
                for records in batch.values():
                    for record in records:
                        value = json.loads(record.value)
                        kind = value.get("type")
                        if kind in wanted:
                            contact = value.get("contact_id") or value["data"]["contact_id"]
                            seen.setdefault(f"{contact}@bench.example", {}).setdefault(
                                kind, record.timestamp / 1000
                            )
    finally:
        await consumer.stop()
    out: dict[str, float] = {}
    for kind, label in HOPS:
        spans = [seen[r][kind] - at for r, at in published.items() if kind in seen.get(r, {})]
        if spans:
            out[label] = round(_percentile(spans, 0.5), 3)
    out["accepted by the SMTP sink"] = round(
        _percentile([sink.received[r] - at for r, at in published.items() if r in sink.received], 0.5), 3
    )
    return out


def _next_rate(runs: list[RateRun], target: int) -> int | None:
    """The highest rate with p99 under the limit: up by half while every rate is met, then bisection
    between the highest met and the lowest missed rate (to the nearest 5 % of the target, and 10/s).

    Going up when the target is met is what makes the reported figure the machine's ceiling rather than
    the issue's number; the search budget (`end_to_end_searches`) bounds it."""
    failed = min((r.rate for r in runs if not r.met), default=None)
    if failed is None:
        return max(r.rate for r in runs) * 3 // 2
    passed = max((r.rate for r in runs if r.met and r.rate < failed), default=0)
    if failed - passed <= max(10, target // 20):
        return None
    return (passed + failed) // 2


async def scenario(bootstrap: str, server_url: str, sizes: Sizes, say: Callable[[str], None]) -> Result:
    topics = Topics(prefix=f"bench-e2e-{run_id()}.")
    name = f"bench_e2e_{run_id()}"
    await ensure_topics(bootstrap, topics, sizes.partitions)
    url = await migrated_database(server_url, name)
    await publish_campaign(bootstrap, topics.campaigns, _campaign())
    runs: list[RateRun] = []
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as work, SinkProcess() as processes:
            sink = _Sink(processes)
            state = Path(work) / "state"
            env = _environment(bootstrap, url, topics, sizes.partitions, processes.port, state)
            workers = _Workers(env, Path(work))
            try:
                await workers.start()
                await producer.start()
                # Warm-up: the whole path proven live (every role started, partitions assigned) first.
                warm = await _publish(producer, topics.commands, "warm", WARM_UP, WARM_UP)
                if not await _drained(sink, workers, warm, 180):
                    raise TimeoutError("the warm-up's emails did not all arrive within 180 s")
                servers = _servers(bootstrap, server_url)
                rate: int | None = sizes.end_to_end_rate
                while rate is not None and len(runs) <= sizes.end_to_end_searches:
                    run = await _run_rate(
                        producer,
                        topics,
                        sink,
                        workers,
                        rate,
                        sizes.end_to_end_seconds,
                        f"r{len(runs)}",
                        servers,
                    )
                    runs.append(run)
                    say(
                        f"end to end at {rate}/s: {run.received:,}/{run.sent:,} emails, p50 {run.p50:.3f} s, "
                        f"p99 {run.p99:.3f} s, cores "
                        + ", ".join(f"{k} {v:.2f}" for k, v in run.cores.items())
                    )
                    if not await _drained(sink, workers, run.published, DRAIN_LIMIT_S):
                        break  # a lower rate would start behind this backlog
                    rate = _next_rate(runs, sizes.end_to_end_rate)
                hops = await _hops(bootstrap, topics, sizes.partitions, sink, runs[0].published)
                say(f"end to end at {runs[0].rate}/s, p50 s from the Enroll: {hops}")
            finally:
                await producer.stop()
                await workers.stop()
    finally:
        await drop_database(server_url, name)
        await delete_topics(bootstrap, topics.prefix)
    first = runs[0]
    highest = max((r.rate for r in runs if r.met), default=0)
    return Result(
        status="measured",
        unit="s (p99)",
        target=TARGET,
        value=first.p99,
        runs=[first.p99],
        target_met=first.met and first.rate >= 500,
        params={
            "enrollments_per_s": first.rate,
            "seconds": sizes.end_to_end_seconds,
            "p50_s": round(first.p50, 4),
            "p50_s_from_enroll_to": hops,
            "highest_rate_p99_under_2s": highest,
            "rates": [r.as_json() for r in runs],
            "scheduler_interval_ms": SCHEDULER_INTERVAL_MS,
            "roles": "one `enrollstream worker --roles ROLE` process per role; the sink in its own process",
        },
    )
