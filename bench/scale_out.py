"""Scale out: the decider and the dispatcher, each as 1 and as 2 worker processes on the same workload.

Each run is the real deployment: `enrollstream worker --roles ROLE` (one process) against
`enrollstream worker --roles ROLE --processes 2` (a supervisor and two children in one consumer group),
in fresh topics with `sizes.partitions` partitions, a fresh database and a fresh state directory. The
decider's input is the decider bench's seeded commands (`workload.commands`); the dispatcher's, the
dispatcher bench's StepDispatched email steps (`bench/dispatcher.py`), sent to an SMTP sink in this process.

The input is produced before the workers start, inside one Kafka transaction left open: both roles read
`read_committed`, so they see none of it until the bench commits that transaction. The workers start, the
role's group becomes stable with every partition owned by the expected number of members (and, for the
decider, its log lines announcing the partitions it took stop), then the transaction commits and the clock
starts: every process begins with the whole workload at the same moment, none of it done while the second
child was still joining. The clock stops when the decider's committed offsets reach the end of the
commands topic (committed in each batch's transaction), or when the sink holds every email. The order of
the two alternates between repetitions, so a drift in the machine's load does not favour one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.group import MemberAssignment

from bench import dispatcher as dispatcher_bench
from bench import machine, workload
from bench.common import Result, Sizes, Stopwatch, median, migrated_database, run_id
from bench.machine import cpu_seconds, machine_cpu
from enrollstream.adapters.kafka.records import encode
from enrollstream.adapters.kafka.topics import Topics, delete_topics, ensure_topics
from enrollstream.adapters.postgres.databases import drop_database
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.smtp_sink import SmtpSink

TARGET = "2 processes >= 1.5x one process, given a free core per process (the partitions bound it)"


@dataclass
class Run:
    processes: int
    rate: float  # commands/s
    commands: int  # commands timed
    seconds: float
    worker_cores: float  # CPU seconds of the worker processes per second of the timed window
    machine_busy: float  # the share of the machine's CPU time busy (anyone) in the timed window


def _worker_pids(process_pid: int, log_path: Path) -> list[int]:
    """The worker process and, under a supervisor, its children (from the supervisor's log lines)."""
    pids = [process_pid]
    for line in log_path.read_text(errors="replace").splitlines():
        if '"started worker-' in line:
            with contextlib.suppress(ValueError, KeyError):
                pids.append(int(json.loads(line)["pid"]))
    return pids


async def _prepared_topics(bootstrap: str, sizes: Sizes) -> Topics:
    topics = Topics(prefix=f"bench-scale-{run_id()}.")
    await ensure_topics(bootstrap, topics, sizes.partitions)
    for campaign in workload.campaigns():
        await publish_campaign(bootstrap, topics.campaigns, campaign)
    return topics


async def _held_back(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]
) -> AIOKafkaProducer:
    """The records sent inside a transaction left open (invisible to read_committed consumers): commit
    it to release them all at once."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"bench-scale-{run_id()}",
        enable_idempotence=True,
        acks="all",
        linger_ms=20,
        max_batch_size=256 * 1024,
        transaction_timeout_ms=600_000,  # open while the workers start and their group settles
    )
    await producer.start()
    await producer.begin_transaction()
    pending = [await producer.send(topic, value, key=key) for key, value in records]
    for sent in pending:
        await sent
    return producer


def _announced(log_path: Path, line: str) -> int:
    """How many partitions the workers have said they took (one line per partition taken)."""
    return log_path.read_text(errors="replace").count(line)


async def _members(admin: AIOKafkaAdminClient, group: str) -> list[set[int]]:
    """The partitions each member of a stable group owns ([] while it rebalances)."""
    [response] = await admin.describe_consumer_groups([group])
    described = response.to_object()["groups"][0]
    if described["state"] != "Stable":
        return []
    return [
        {
            p
            for _, partitions in MemberAssignment.decode(m["member_assignment"]).assignment
            for p in partitions
        }
        for m in described["members"]
    ]


async def _committed(admin: AIOKafkaAdminClient, group: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(meta.offset for meta in offsets.values() if meta.offset >= 0)


def _environment(
    bootstrap: str, database_url: str, topics: Topics, sizes: Sizes, state_dir: Path
) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("ENROLLSTREAM_")}
    return {
        **inherited,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": database_url,
        "ENROLLSTREAM_TOPIC_PREFIX": topics.prefix,
        "ENROLLSTREAM_GROUP_ID": f"{topics.prefix}group",
        "ENROLLSTREAM_PARTITIONS": str(sizes.partitions),
        "ENROLLSTREAM_STATE_DIR": str(state_dir),
        "ENROLLSTREAM_HTTP_PORT": "0",
        "ENROLLSTREAM_LOG_FORMAT": "json",
    }


@dataclass
class Role:
    """What one run measures: the role, the topic its input is held back on, and how to tell it is done."""

    name: str  # decider | dispatcher
    topic: Callable[[Topics], str]
    env: dict[str, str]
    # How many inputs are done so far: the group's committed offsets, or the SMTP sink's messages.
    done: Callable[[AIOKafkaAdminClient, str], Awaitable[int]]
    announces: str | None = None  # a log line each member writes per partition it takes, if any


async def run_worker(
    bootstrap: str,
    database_url: str,
    topics: Topics,
    sizes: Sizes,
    records: list[tuple[bytes | None, bytes]],
    processes: int,
    workdir: Path,
    role: Role,
) -> Run:
    """`enrollstream worker --roles ROLE --processes P` until it has done all the records."""
    n = len(records)
    group = f"{topics.prefix}group.{role.name}"
    log_path = workdir / f"{topics.prefix}log"
    args = ["--roles", role.name] + (["--processes", str(processes)] if processes > 1 else [])
    held = await _held_back(bootstrap, role.topic(topics), records)
    env = {
        **_environment(bootstrap, database_url, topics, sizes, workdir / f"{topics.prefix}state"),
        **role.env,
    }
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "enrollstream", "worker", *args,
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()

    def failed() -> None:
        if process.returncode is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the worker exited with status {process.returncode}: {tail}")

    try:
        deadline = Stopwatch()
        announced, quiet_since = -1, Stopwatch()
        while True:
            failed()
            if deadline.elapsed() > 120:
                raise TimeoutError(f"the {role.name} group not stable with {processes} members within 120 s")
            await asyncio.sleep(0.1)
            owned = await _members(admin, group)
            if not (len(owned) == processes and all(owned) and sum(map(len, owned)) == sizes.partitions):
                announced = -1
                continue
            # Settled: no member still taking partitions (or, for a role that does not say, stable 2 s).
            now_announced = _announced(log_path, role.announces) if role.announces else 0
            if now_announced != announced:
                announced, quiet_since = now_announced, Stopwatch()
            elif quiet_since.elapsed() > 2.0 and (not role.announces or now_announced >= sizes.partitions):
                break
        pids = _worker_pids(process.pid, log_path)
        cpu_before, machine_before = cpu_seconds(pids), machine_cpu()
        base = await role.done(admin, group)
        await held.commit_transaction()
        clock = Stopwatch()
        limit = 120 + n / 100
        while (done := await role.done(admin, group) - base) < n:
            failed()
            if clock.elapsed() > limit:
                raise TimeoutError(f"only {done} of {n} done by the {role.name} after {limit:.0f} s")
            await asyncio.sleep(0.02)
        seconds = clock.elapsed()
        worker_cpu, machine_after = cpu_seconds(pids) - cpu_before, machine_cpu()
    finally:
        await held.stop()
        await admin.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"the worker did not stop cleanly (status {process.returncode})")
    busy, total = (after - before for after, before in zip(machine_after, machine_before, strict=True))
    return Run(processes, n / seconds, n, seconds, worker_cpu / seconds, busy / total if total else 0.0)


async def _pairs(
    bootstrap: str,
    server_url: str,
    sizes: Sizes,
    say: Callable[[str], None],
    role: Role,
    records: Callable[[], list[tuple[bytes | None, bytes]]],
    unit: str,
) -> dict[int, list[Run]]:
    """`reps` pairs (1 process, 2 processes) of one role, alternating which goes first; a fresh database
    (the dispatcher's ledger) and fresh topics per run."""
    runs: dict[int, list[Run]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="enrollstream-bench-scale-") as tmp:
        for rep in range(sizes.reps):
            for processes in (1, 2) if rep % 2 == 0 else (2, 1):
                topics = await _prepared_topics(bootstrap, sizes)
                name = f"bench_scale_{run_id()}"
                database_url = await migrated_database(server_url, name)
                try:
                    run = await run_worker(
                        bootstrap, database_url, topics, sizes, records(), processes, Path(tmp), role
                    )
                finally:
                    await drop_database(server_url, name)
                    await delete_topics(bootstrap, topics.prefix)
                runs[processes].append(run)
                say(
                    f"scale_out {role.name} rep {rep + 1}/{sizes.reps}: {processes} process(es) "
                    f"{run.rate:,.0f} {unit} ({run.commands} in {run.seconds:.2f} s), workers "
                    f"using {run.worker_cores:.2f} cores, machine {run.machine_busy:.0%} busy"
                )
    return runs


def _summary(runs: dict[int, list[Run]]) -> dict[str, Any]:
    return {
        "per_s_1": median([r.rate for r in runs[1]]),
        "per_s_2": median([r.rate for r in runs[2]]),
        "ratio": round(median([r.rate for r in runs[2]]) / median([r.rate for r in runs[1]]), 3),
        "runs_1": [round(r.rate, 1) for r in runs[1]],
        "runs_2": [round(r.rate, 1) for r in runs[2]],
        "ratio_per_rep": [round(two.rate / one.rate, 3) for one, two in zip(runs[1], runs[2], strict=True)],
        # Whether the second process had a core to use: the workers' CPU per wall second, and how busy
        # the whole machine (broker, database, anything else) was, in each timed window.
        "worker_cores_1": [round(r.worker_cores, 2) for r in runs[1]],
        "worker_cores_2": [round(r.worker_cores, 2) for r in runs[2]],
        "machine_busy_1": [round(r.machine_busy, 3) for r in runs[1]],
        "machine_busy_2": [round(r.machine_busy, 3) for r in runs[2]],
        "seconds_1": [round(r.seconds, 2) for r in runs[1]],
        "seconds_2": [round(r.seconds, 2) for r in runs[2]],
    }


async def scenario(bootstrap: str, server_url: str, sizes: Sizes, say: Callable[[str], None]) -> Result:
    """The decider, then the dispatcher: `reps` pairs (1 process, 2 processes) each; medians of each."""
    load_at_start = machine.load_average()
    n = sizes.decider_commands
    commands: list[tuple[bytes | None, bytes]] = [
        (r.key if isinstance(r.key, bytes) else r.key.encode(), r.value) for r in workload.commands(n)
    ]

    async def committed(admin: AIOKafkaAdminClient, group: str) -> int:
        return await _committed(admin, group)

    decider = Role(
        "decider",
        lambda topics: topics.commands,
        # The workload's commands carry a fixed issued_at (as in the decider bench: skew unchecked).
        {"ENROLLSTREAM_COMMAND_MAX_FUTURE_SKEW_S": "0", "ENROLLSTREAM_COMMAND_MAX_AGE_S": "0"},
        committed,
        announces='"decider owns ',
    )
    deciders = await _pairs(bootstrap, server_url, sizes, say, decider, lambda: commands, "commands/s")

    emails = dispatcher_bench.emails(sizes)
    with SmtpSink() as sink:

        async def received(admin: AIOKafkaAdminClient, group: str) -> int:
            return len(sink.messages)

        def step_events() -> list[tuple[bytes | None, bytes]]:
            run = run_id()  # new enrollments each run: a message id is sent once per ledger
            events = [dispatcher_bench.step_dispatched(run, i) for i in range(emails)]
            return [(f"{e.account_id}/{e.contact_id}".encode(), encode(e)) for e in events]

        identity = dispatcher_bench.IDENTITY
        dispatcher = Role(
            "dispatcher",
            lambda topics: topics.events,
            {
                "ENROLLSTREAM_SMTP_HOST": sink.host,
                "ENROLLSTREAM_SMTP_PORT": str(sink.port),
                "ENROLLSTREAM_SMTP_STARTTLS": "false",
                "ENROLLSTREAM_SENDER_FROM": identity.from_address,
                "ENROLLSTREAM_UNSUBSCRIBE_KEYS": identity.signing_key.decode(),
                "ENROLLSTREAM_UNSUBSCRIBE_URL": identity.unsubscribe_url or "",
            },
            received,
        )
        dispatchers = await _pairs(bootstrap, server_url, sizes, say, dispatcher, step_events, "emails/s")
    value = median([r.rate for r in deciders[2]])
    baseline = median([r.rate for r in deciders[1]])
    return Result(
        status="measured",
        unit="commands/s",
        target=TARGET,
        value=value,
        baseline=baseline,
        baseline_name="the same decider as one process (`enrollstream worker --roles decider`)",
        runs=[r.rate for r in deciders[2]],
        baseline_runs=[r.rate for r in deciders[1]],
        target_met=value >= 1.5 * baseline,
        params={
            "commands": n,
            "reps": sizes.reps,
            "partitions": sizes.partitions,
            "processes": [1, 2],
            "decider": _summary(deciders),
            "dispatcher": {
                "emails": emails,
                "unit": "emails/s",
                **_summary(dispatchers),
                "sink": "enrollstream.smtp_sink.SmtpSink in the bench process, no rate limits",
                "database": "fresh per run (the delivery ledger)",
            },
            "how": "enrollstream worker --roles ROLE [--processes 2], real subprocesses; the input held in "
            "an open transaction until the role's group is stable, the clock from its commit to the "
            "decider's committed offsets at the topic's end / the sink holding every email",
            "state": "ENROLLSTREAM_STATE_DIR fresh per run, shared by the children; STATE_CACHE_MB 128 each",
            "workload": "decider: enrollstream.chaos.workload mix without BulkEnroll, ~5 commands per "
            "contact, seeded; dispatcher: StepDispatched email steps (bench/dispatcher.py)",
            "cpus_usable": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": machine.load_average(),
        },
    )
