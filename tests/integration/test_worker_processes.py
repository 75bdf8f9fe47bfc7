"""`enrollstream worker --processes N` as an operator runs it: real processes, the real broker and database.

The children of one supervisor join the same consumer groups, so the decider's partitions are split
between them; a child killed with SIGKILL is restarted and its partitions are taken over; SIGTERM drains
them all. What was decided is checked on the log itself with the chaos verifier (one result per command,
versions 1..n once each, snapshots equal to folds, projections equal to a rebuild).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.group import MemberAssignment

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.chaos import (
    CAMPAIGNS,
    ChaosPlan,
    ChaosReport,
    Published,
    chaos_campaign,
    drive,
    settle,
    verify,
    workload,
)
from enrollstream.config import Settings
from enrollstream.runtime.campaigns import publish_campaign
from tests.conftest import TEST_PARTITIONS
from tests.integration.test_worker_lifecycle import WorkerProcess, worker_env
from tests.support import eventually

EVERY_PARTITION = set(range(TEST_PARTITIONS))


def supervisor_env(settings: Settings, state_dir: Path, **extra: str) -> dict[str, str]:
    return worker_env(
        settings,
        # A killed child holds its partitions until the group's session times out: keep that short.
        ENROLLSTREAM_SESSION_TIMEOUT_MS="6000",
        ENROLLSTREAM_HEARTBEAT_INTERVAL_MS="500",
        # Both children share one state directory, as processes on one host do.
        ENROLLSTREAM_STATE_DIR=str(state_dir),
        **extra,
    )


async def decider_members(settings: Settings) -> list[set[int]]:
    """The partitions of the commands topic each member of the decider's group owns (a stable group)."""
    assert settings.kafka_bootstrap_servers
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([f"{settings.group_id}.decider"])
    finally:
        await admin.close()
    group = response.to_object()["groups"][0]
    if group["state"] != "Stable":
        return []
    owned = []
    for member in group["members"]:
        assignment = MemberAssignment.decode(member["member_assignment"])
        owned.append({p for topic, partitions in assignment.assignment for p in partitions})
    return owned


async def split_between(settings: Settings, members: int) -> bool:
    """Every partition owned, by exactly `members` members, each owning some and none twice."""
    owned = await decider_members(settings)
    every = [p for partitions in owned for p in partitions]
    return (
        len(owned) == members
        and all(owned)
        and sorted(every) == sorted(EVERY_PARTITION)
    )  # fmt: skip


def children(supervisor: WorkerProcess) -> dict[str, list[int]]:
    """Each child's pids in the order the supervisor started them."""
    out: dict[str, list[int]] = {}
    for entry in supervisor.logs():
        if entry.get("message", "").startswith("started worker-"):
            out.setdefault(entry["child"], []).append(int(entry["pid"]))
    return out


def stopped_cleanly(supervisor: WorkerProcess) -> set[str]:
    return {e.get("worker", "") for e in supervisor.logs() if e.get("message") == "worker stopped cleanly"}


@contextlib.asynccontextmanager
async def two_deciding_children(
    settings: Settings, topics: Topics, tmp_path: Path
) -> AsyncIterator[WorkerProcess]:
    """`worker --roles decider,projector --processes 2` (the chaos campaigns published), handed over once
    its two children split the decider's partitions; stopped with SIGTERM after the block, which it
    must survive with exit code 0 and both children saying they stopped cleanly."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    for campaign_id in CAMPAIGNS:
        await publish_campaign(bootstrap, topics.campaigns, chaos_campaign(campaign_id))
    supervisor = WorkerProcess(
        supervisor_env(settings, tmp_path / "state"), "--roles", "decider,projector", "--processes", "2"
    )
    await supervisor.start()
    try:
        await eventually(
            lambda: split_between(settings, 2), timeout=90, what="the decider's partitions split in two"
        )
        yield supervisor
        assert supervisor.process is not None
        supervisor.process.send_signal(signal.SIGTERM)
        assert await supervisor.wait(timeout=60) == 0
    finally:
        if supervisor.process is not None and supervisor.process.returncode is None:
            supervisor.process.kill()
            await supervisor.wait(timeout=30)
    assert stopped_cleanly(supervisor) == {"worker-0", "worker-1"}


async def assert_decided_once(settings: Settings, topics: Topics, records: list[Published]) -> None:
    """No command lost, no event twice, the read model equal to the events (the chaos verifier)."""
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    report = ChaosReport(commands=len(records))
    await verify(bootstrap, topics, database_url, records, report)
    assert report.clean, "\n".join(report.details)


async def test_two_processes_split_the_decider_partitions_and_decide_every_command_once(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    records = workload(ChaosPlan(commands=300, contacts=60, seed=5), run="processes")
    async with two_deciding_children(settings, topics, tmp_path) as supervisor:
        assert set(children(supervisor)) == {"worker-0", "worker-1"}
        await drive(bootstrap, topics.commands, records, seconds=1.0)
        assert await settle(
            bootstrap, topics, database_url, records, timeout=90, group_id=settings.group_id, sends=False
        )
        # Both children decided some of them (each names itself in its logs).
        deciding = {
            e.get("worker") for e in supervisor.logs() if str(e.get("message", "")).startswith("decider owns")
        }
        assert deciding == {"worker-0", "worker-1"}
    await assert_decided_once(settings, topics, records)


async def test_a_child_killed_with_sigkill_is_restarted_and_its_partitions_taken_over(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    records = workload(ChaosPlan(commands=360, contacts=60, seed=7), run="restart")
    halves = [records[:180], records[180:]]
    async with two_deciding_children(settings, topics, tmp_path) as supervisor:
        await drive(bootstrap, topics.commands, halves[0], seconds=0.5)
        assert await settle(
            bootstrap, topics, database_url, halves[0], timeout=90, group_id=settings.group_id, sends=False
        )
        [victim] = children(supervisor)["worker-1"]
        os.kill(victim, signal.SIGKILL)
        # Commands keep coming while it is dead and while its replacement joins.
        driving = asyncio.create_task(drive(bootstrap, topics.commands, halves[1], seconds=3.0))

        async def restarted() -> bool:
            return len(children(supervisor).get("worker-1", [])) == 2

        await eventually(restarted, timeout=30, what="worker-1 started again")
        await driving
        assert await settle(
            bootstrap, topics, database_url, records, timeout=90, group_id=settings.group_id, sends=False
        )
        await eventually(
            lambda: split_between(settings, 2),
            timeout=90,
            what="the partitions split again after the restart",
        )
        unexpected = [e for e in supervisor.logs() if "exited unexpectedly" in e.get("message", "")]
        assert [(e["child"], e["pid"], e["exit_code"]) for e in unexpected] == [
            ("worker-1", victim, -signal.SIGKILL)
        ]
    await assert_decided_once(settings, topics, records)


async def test_a_child_failing_again_and_again_soon_after_its_start_stops_the_supervisor(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    env = supervisor_env(
        settings,
        tmp_path / "state",
        ENROLLSTREAM_WORKER_RESTART_LIMIT="2",
        ENROLLSTREAM_WORKER_RESTART_BACKOFF_S="0.1",
    )
    supervisor = WorkerProcess(env, "--roles", "decider", "--processes", "2")
    await supervisor.start()
    try:
        # Both running, so the stop the supervisor sends worker-0 finds it draining, not starting.
        await eventually(
            lambda: split_between(settings, 2), timeout=90, what="the decider's partitions split in two"
        )
        for attempt in (1, 2):

            async def running(attempt: int = attempt) -> bool:
                return len(children(supervisor).get("worker-1", [])) == attempt

            await eventually(running, timeout=30, what=f"worker-1's start number {attempt}")
            os.kill(children(supervisor)["worker-1"][-1], signal.SIGKILL)
        started = time.monotonic()
        assert await supervisor.wait(timeout=60) == 1
        assert time.monotonic() - started < 60
    finally:
        if supervisor.process is not None and supervisor.process.returncode is None:
            supervisor.process.kill()
            await supervisor.wait(timeout=30)
    assert children(supervisor)["worker-1"][2:] == []  # not started a third time
    gave_up = [e["message"] for e in supervisor.logs() if "giving up" in e.get("message", "")]
    assert len(gave_up) == 1 and gave_up[0].startswith("worker-1 failed 2 times in a row")
    assert "worker-0" in stopped_cleanly(supervisor)  # the other child was drained, not killed
