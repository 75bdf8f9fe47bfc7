"""The decider's local state store against the real broker: a restart reads only the changelog's tail,
a store that is missing or behind is brought up to the changelog, and a crash between the Kafka commit
and the store's write loses nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.chaos import DYING_WORKER
from enrollstream.config import Settings
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.state import RecoveryReport, StoreIdentity, open_rocksdb_store
from tests.integration.test_decider_runtime import ACCOUNT, campaign, decider_state, enroll
from tests.integration.test_worker_lifecycle import worker_env
from tests.support import eventually, read_until, running_worker


def results_by_id(records: list[Any]) -> dict[str, dict[str, Any]]:
    return {r["command_id"]: r for r in (json.loads(record.value) for record in records)}


async def decide_all(settings: Settings, topics: Topics, commands: list[dict[str, Any]]) -> dict[str, Any]:
    """Publish the commands and wait for each one's result."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for command in commands:
            key = f"{ACCOUNT}/{command['data']['contact_id']}".encode()
            await producer.send(topics.commands, json.dumps(command).encode(), key=key)
        await producer.flush()
    finally:
        await producer.stop()
    wanted = {c["command_id"] for c in commands}
    records = await read_until(
        bootstrap, topics.command_results, lambda rs: wanted <= set(results_by_id(rs)), timeout=60
    )
    return {k: v for k, v in results_by_id(records).items() if k in wanted}


async def restores_on_assignment(worker: Any, partitions: int) -> list[RecoveryReport]:
    """The restores the decider ran when it took its partitions (one each)."""
    decider = worker.decider
    assert decider is not None

    async def all_restored() -> bool:
        return len(decider.restores) >= partitions

    await eventually(all_restored, what="the decider restoring every partition it owns")
    return list(decider.restores)


def store_dir(settings: Settings) -> Path:
    return settings.state_dir / f"{settings.group_id}.decider"


async def test_a_restart_replays_only_the_changelog_tail_and_a_deleted_store_is_rebuilt(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    enrolls = [enroll(f"c{i}") for i in range(30)]
    async with running_worker(settings, roles=("decider",)) as worker:
        results = await decide_all(settings, topics, enrolls)
        assert {r["status"] for r in results.values()} == {"accepted"}
        restores = await restores_on_assignment(worker, settings.partitions)
    assert all(r.cold and r.records == 0 for r in restores)  # new stores, an empty changelog

    # Warm: every store is at the end of its changelog partition; nothing is read but commit markers.
    again = {**enrolls[0], "command_id": "cmd-c0-again"}
    async with running_worker(settings, roles=("decider",)) as worker:
        restores = await restores_on_assignment(worker, settings.partitions)
        results = await decide_all(settings, topics, [enrolls[0], again, enroll("late")])
        assert decider_state(worker, f"{ACCOUNT}/c29") is not None  # read from the store on demand
    assert len(restores) == settings.partitions
    assert [(r.cold, r.records) for r in restores] == [(False, 0)] * settings.partitions
    assert results[enrolls[0]["command_id"]]["status"] == "duplicate"
    assert results["cmd-c0-again"]["code"] == "contact_already_enrolled"
    assert results[next(iter(results.keys() - {enrolls[0]["command_id"], "cmd-c0-again"}))]["status"] == (
        "accepted"
    )

    # Without a store on disk (deleted, or a new host): rebuilt from the changelog, decisions unchanged.
    shutil.rmtree(store_dir(settings))
    third = {**enrolls[1], "command_id": "cmd-c1-again"}
    async with running_worker(settings, roles=("decider",)) as worker:
        restores = await restores_on_assignment(worker, settings.partitions)
        results = await decide_all(settings, topics, [third])
    assert all(r.cold for r in restores)
    assert sum(r.records for r in restores) == 31  # one snapshot per accepted Enroll
    assert results["cmd-c1-again"]["code"] == "contact_already_enrolled"

    # The same restart with the store in memory reads every partition from the beginning.
    async with running_worker(settings.model_copy(update={"state_store": "memory"}), ("decider",)) as worker:
        restores = await restores_on_assignment(worker, settings.partitions)
    assert all(r.cold for r in restores) and sum(r.records for r in restores) == 31


async def test_a_decider_killed_after_its_kafka_commit_and_before_its_store_write_applies_the_tail(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    trigger = tmp_path / "die-at-store-write"
    env = worker_env(settings, ENROLLSTREAM_STATE_DIR=str(settings.state_dir))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "enrollstream.chaos", DYING_WORKER, str(trigger), "decider", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await decide_all(settings, topics, [enroll("ada")])  # committed and stored
        trigger.touch()
        bob = enroll("bob")
        results = await decide_all(settings, topics, [bob])  # committed to Kafka...
        assert results[bob["command_id"]]["status"] == "accepted"
        code = await asyncio.wait_for(process.wait(), 30)  # ... and killed before the store's write
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == -signal.SIGKILL and not trigger.exists()

    # On disk the store of bob's partition has neither his snapshot nor the offset past it.
    records = await read_until(bootstrap, topics.command_results, lambda rs: len(rs) >= 2)
    result = next(r for r in records if json.loads(r.value)["command_id"] == bob["command_id"])
    path = store_dir(settings) / f"{topics.aggregates}-{result.partition}"
    store, found = open_rocksdb_store(path, StoreIdentity(topics.aggregates, result.partition))
    try:
        assert found == "opened"
        behind = store.applied_offset()
        assert store.get(f"{ACCOUNT}/bob".encode()) is None
    finally:
        store.close()
    snapshots = await read_until(bootstrap, topics.aggregates, lambda rs: len(rs) >= 2)
    bobs = [s for s in snapshots if s.key == f"{ACCOUNT}/bob".encode()]
    assert len(bobs) == 1 and behind is not None and behind <= bobs[0].offset

    # The restart applies the tail: bob is known (his second Enroll is refused) and now in the store.
    bob_again = {**bob, "command_id": "cmd-bob-again"}
    async with running_worker(settings, roles=("decider",)) as worker:
        restores = await restores_on_assignment(worker, settings.partitions)
        tails = [r for r in restores if r.partition.partition == result.partition]
        results = await decide_all(settings, topics, [bob, bob_again])
        assert worker.decider is not None
        owner = next(o for tp, o in worker.decider.owners.items() if tp.partition == result.partition)
        stored = owner.state.store.get(f"{ACCOUNT}/bob".encode())
    assert [(r.cold, r.records) for r in tails] == [(False, 1)]
    assert results[bob["command_id"]]["status"] == "duplicate"
    assert results["cmd-bob-again"]["code"] == "contact_already_enrolled"
    assert stored is not None and json.loads(stored)["contact_id"] == "bob"
    events = await read_until(bootstrap, topics.events, lambda rs: len(rs) >= 2)
    enrolled = [json.loads(e.value)["contact_id"] for e in events if b"ContactEnrolled" in e.value]
    assert sorted(enrolled) == ["ada", "bob"]  # exactly once each


async def test_a_cache_smaller_than_the_partition_decides_from_the_store(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    small = settings.model_copy(update={"state_cache_mb": 8})
    enrolls = [enroll(f"m{i}") for i in range(120)]
    async with running_worker(small, roles=("decider",)) as worker:
        decider = worker.decider
        assert decider is not None
        budget = 16 * 1024  # two or three decoded contacts per partition, against 40 per partition here
        decider.state_cache_bytes = budget * len(decider.owners)
        decider._share_cache()
        results = await decide_all(small, topics, enrolls)
        assert {r["status"] for r in results.values()} == {"accepted"}
        again = [{**e, "command_id": f"{e['command_id']}-again"} for e in enrolls[:40]]
        repeated = await decide_all(small, topics, again)
        caches = [owner.state.cache for owner in decider.owners.values()]
    assert all(c.weight <= budget for c in caches)
    assert sum(len(c) for c in caches) < 20
    # Evicted contacts were read back from the store: every repeat is refused as already enrolled.
    assert {r["code"] for r in repeated.values()} == {"contact_already_enrolled"}


async def test_a_transaction_writes_one_snapshot_per_contact_with_its_last_state_and_a_restart_restores_it(
    settings: Settings, topics: Topics
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    await publish_campaign(bootstrap, topics.campaigns, campaign(campaign_id="news"))
    key = f"{ACCOUNT}/ada"
    # Given three commands for ada in the commands topic before the decider starts (so its first poll
    # takes them together, into one transaction) ...
    commands = [enroll("ada"), enroll("ada", "news"), enroll("ada", "welcome")]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for command in commands:
            await producer.send(topics.commands, json.dumps(command).encode(), key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()
    wanted = {c["command_id"] for c in commands}
    async with running_worker(settings, roles=("decider",)) as worker:
        records = await read_until(
            bootstrap, topics.command_results, lambda rs: wanted <= set(results_by_id(rs)), timeout=60
        )
        decided = decider_state(worker, key)
    results = results_by_id(records)
    assert [results[c["command_id"]]["status"] for c in commands] == ["accepted", "accepted", "rejected"]
    assert decided is not None and set(e.campaign_id for e in decided.enrollments.values()) == {
        "welcome",
        "news",
    }

    # ... then the changelog has one snapshot of ada, her state after the last of them.
    def last_state_read(rs: list[Any]) -> bool:
        return any(r.key == key.encode() and json.loads(r.value)["version"] == decided.version for r in rs)

    snapshots = [
        s for s in await read_until(bootstrap, topics.aggregates, last_state_read) if s.key == key.encode()
    ]
    assert len(snapshots) == 1

    # A restart without a store on disk rebuilds ada from that one snapshot.
    shutil.rmtree(store_dir(settings))
    again = enroll("ada", "news")
    async with running_worker(settings, roles=("decider",)) as worker:
        restores = await restores_on_assignment(worker, settings.partitions)
        results = await decide_all(settings, topics, [again])
        restored = decider_state(worker, key)
    assert sum(r.records for r in restores) == 1
    assert restored is not None and restored.version == decided.version
    assert set(restored.enrollments) == set(decided.enrollments)
    assert results[again["command_id"]]["code"] == "contact_already_enrolled"


async def test_a_restore_killed_before_its_writes_are_persisted_leaves_no_offset_ahead_of_its_data(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    """A rebuild writes without RocksDB's WAL (fast, and redone on a crash). Killed after its last write
    and before the flush persisted it, the store must not claim an applied offset whose data it lost: on
    reopening, either its offset is behind (that tail is read again) or everything up to it is there."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    changelog = topics.aggregates
    snapshots = {f"{ACCOUNT}/c{i:03d}".encode(): f'{{"n": {i}}}'.encode() for i in range(50)}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in snapshots.items():
            await producer.send(changelog, value, key=key, partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    path = tmp_path / "store"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.restore_child", bootstrap, changelog, str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == -signal.SIGKILL, stderr.decode()[-2000:]

    store, found = open_rocksdb_store(path, StoreIdentity(changelog, 0))
    try:
        assert found == "opened"
        applied = store.applied_offset()
        kept = {key: store.get(key) for key in snapshots}
        # Offsets 0..49 hold the 50 snapshots, in order: an applied offset of n promises the first n.
        promised = list(snapshots)[: applied or 0]
        missing = sum(kept[key] != snapshots[key] for key in promised)
        assert missing == 0, f"applied offset {applied}, but {missing} of the snapshots before it are missing"
    finally:
        store.close()
