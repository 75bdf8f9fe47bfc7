"""The bench's peer scenario (issue 15): a Quix Streams application in its own venv beside the decider,
at tiny sizes, and the check that fails the scenario when the two decided differently. Nothing here
looks at a timing (benchmarks report, they never gate)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from bench import decider as bench_decider
from bench.common import Sizes
from bench.peer import scenario as peer
from bench.peer.scenario import check_same_decisions, peer_prefix, read_topic
from bench.run import run_scenarios
from rich.console import Console

from enrollstream import stack
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings


def tiny() -> Sizes:
    sizes = Sizes.quick()
    sizes.reps = 1
    sizes.decider_commands, sizes.decider_warmup = 300, 50
    return sizes


@pytest.mark.soak
@pytest.mark.timeout(900)  # the first run on a machine also makes bench/peer/.venv (about a minute)
async def test_peer_scenario_runs_quix_beside_the_decider_on_the_same_commands(
    endpoints: stack.Endpoints, tmp_path: Path
) -> None:
    console = Console(file=(tmp_path / "bench.log").open("w"), width=160)
    results = await run_scenarios(endpoints, Settings(), tiny(), ("peer",), console=console)
    row = json.loads(json.dumps(results))["peer"]

    assert row["status"] == "measured", row
    params = row["params"]
    assert params["commands"] == 300 and params["peer"]["quixstreams"] == "3.28.1"
    assert params["peer"]["processing_guarantee"] == "exactly-once"
    decider, quix, passthrough = (
        params["decider_commands_per_s"],
        params["peer_commands_per_s"],
        params["passthrough_commands_per_s"],
    )
    assert decider > 0 and quix > 0 and passthrough > 0
    assert row["value"] == pytest.approx(decider, rel=0.01) and row["baseline"] == pytest.approx(
        quix, rel=0.01
    )
    assert params["decider_over_peer"] == pytest.approx(decider / quix, rel=0.01)
    assert params["decider_over_passthrough"] == pytest.approx(decider / passthrough, rel=0.01)
    assert row["ratio"] == pytest.approx(decider / quix, rel=0.01)
    same = params["same_decisions"]
    # Every command answered once (a result or a dead letter), by both, alike (else the row had failed).
    assert sum(same["results_by_status"].values()) + same["dead_letters"] == 300
    assert same["events_by_type"]["ContactEnrolled.v1"] > 0 and same["dead_letters"] > 0


async def test_reading_a_topic_to_its_end_takes_the_transactions_committed_before_it_was_read(
    endpoints: stack.Endpoints, topics: Topics
) -> None:
    """What a bench check reads right after the decider's (or the peer's) last commit: a committed
    transaction whose markers the broker has not written yet is part of the topic. An open transaction
    stands for it here: the read waits until it is decided, then returns its records."""
    bootstrap = endpoints.kafka_bootstrap_servers
    topic = f"{topics.prefix}peer-read"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topics.prefix}writer")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed", partition=0)
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"decided later", partition=1)
        reading = asyncio.create_task(read_topic(bootstrap, topic, 2))
        done, _ = await asyncio.wait({reading}, timeout=3)
        assert not done, "the read stopped at the last stable offset, before the open transaction"
        await producer.commit_transaction()
        records = await asyncio.wait_for(reading, timeout=60)
    finally:
        await producer.stop()
    assert sorted(r.value for r in records) == [b"committed", b"decided later"]


async def _copy(bootstrap: str, source: str, target: str, partitions: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for record in await read_topic(bootstrap, source, partitions):
            await producer.send_and_wait(target, record.value, key=record.key, partition=record.partition)
    finally:
        await producer.stop()


@pytest.mark.soak
async def test_the_scenario_fails_loudly_when_the_peer_decided_one_command_otherwise(
    endpoints: stack.Endpoints,
) -> None:
    bootstrap, sizes, n = endpoints.kafka_bootstrap_servers, tiny(), 200
    topics: Topics = await bench_decider._prepared_topics(bootstrap, sizes, n)
    await bench_decider.run_decider(bootstrap, topics, sizes, n)
    prefix = peer_prefix(topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{prefix}{name}", sizes.partitions, 1) for name in peer.OUTPUTS])
    finally:
        await admin.close()
    # A "peer" that wrote exactly what the decider wrote passes...
    await _copy(bootstrap, topics.events, f"{prefix}events", sizes.partitions)
    await _copy(bootstrap, topics.dead_letters, f"{prefix}dead_letters", sizes.partitions)
    await _copy(bootstrap, topics.command_results, f"{prefix}results", sizes.partitions)
    same = await check_same_decisions(bootstrap, topics, sizes, n)
    assert sum(same["results_by_status"].values()) + same["dead_letters"] == n

    # ... until it answers one command otherwise (its last result for a command is the one compared).
    results = await read_topic(bootstrap, f"{prefix}results", sizes.partitions)
    accepted = next(r for r in results if json.loads(r.value)["status"] == "accepted")
    changed = {**json.loads(accepted.value), "status": "rejected", "code": "campaign_not_found"}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            f"{prefix}results", json.dumps(changed).encode(), key=accepted.key, partition=accepted.partition
        )
    finally:
        await producer.stop()
    # ... but one command whose result differs fails the check, naming the counts and the command.
    with pytest.raises(RuntimeError, match="did not decide as the decider did") as failure:
        await check_same_decisions(bootstrap, topics, sizes, n)
    assert "results by status" in str(failure.value)
    assert "1 commands' results differ" in str(failure.value)
