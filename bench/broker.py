"""Broker ceiling: Kafka's own `org.apache.kafka.tools.ProducerPerformance` on the same broker, for context.

Run from the kafka-tools jar of the local stack's Kafka (`java -cp <libs>/*`), records the size of the
mean command, acks=all, idempotent, to a fresh topic with the deployment's partition count; once plain
and once transactional (a transaction per 100 ms). This bounds what any client could push through this
broker on this machine; the decider's passthrough baseline is the bound that matters for it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import workload
from bench.common import Result, Sizes, median, not_run, run_id
from enrollstream.stack.local_kafka import kafka_libs_dir

TARGET = "context only (no target)"
LINE = re.compile(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency")


async def _topic(bootstrap: str, partitions: int) -> str:
    name = f"bench-{run_id()}.producer-performance"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def _perf(
    libs: Path, bootstrap: str, topic: str, records: int, size: int, txn: bool
) -> dict[str, float]:
    java = shutil.which("java") or "java"
    args = [
        java,
        "-Xmx512m",
        "-cp",
        f"{libs}/*",
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(records),
        "--record-size",
        str(size),
        "--throughput",
        "-1",
        "--producer-props",
        f"bootstrap.servers={bootstrap}",
        "acks=all",
        "enable.idempotence=true",
        "linger.ms=5",
    ]
    if txn:
        args += ["--transactional-id", f"bench-perf-{run_id()}", "--transaction-duration-ms", "100"]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    matches = LINE.findall(text)
    if proc.returncode != 0 or not matches:
        raise RuntimeError(f"ProducerPerformance failed ({proc.returncode}): {text[-1500:]}")
    sent, rate, mb, latency = matches[-1]  # the last line is the summary
    return {
        "records": float(sent),
        "records_per_s": float(rate),
        "mb_per_s": float(mb),
        "avg_ms": float(latency),
    }


async def scenario(bootstrap: str, cache_dir: Path, sizes: Sizes, say: Callable[[str], None]) -> Result:
    libs = kafka_libs_dir(cache_dir)
    if not any(libs.glob("kafka-tools-*.jar")):
        return not_run(
            "records/s", TARGET, f"no kafka-tools jar in {libs} (the broker is not the local stack)"
        )
    sample = workload.commands(2_000)
    size = round(sum(len(r.value) for r in sample) / len(sample))
    n = sizes.broker_records
    topic = await _topic(bootstrap, sizes.partitions)
    await _perf(libs, bootstrap, topic, max(10_000, n // 10), size, txn=False)  # warm-up
    plain = []
    txn = []
    for rep in range(sizes.reps):
        plain.append(await _perf(libs, bootstrap, topic, n, size, txn=False))
        txn.append(await _perf(libs, bootstrap, topic, n, size, txn=True))
        say(
            f"broker rep {rep + 1}/{sizes.reps}: {plain[-1]['records_per_s']:,.0f} records/s plain, "
            f"{txn[-1]['records_per_s']:,.0f} transactional"
        )
    value = median([p["records_per_s"] for p in plain])
    return Result(
        status="measured",
        unit="records/s",
        target=TARGET,
        value=value,
        runs=[p["records_per_s"] for p in plain],
        params={
            "tool": "org.apache.kafka.tools.ProducerPerformance (kafka-tools 3.9.1)",
            "records": n,
            "record_bytes": size,
            "partitions": sizes.partitions,
            "producer_props": "acks=all enable.idempotence=true linger.ms=5",
            "mb_per_s": median([p["mb_per_s"] for p in plain]),
            "avg_latency_ms": median([p["avg_ms"] for p in plain]),
            "transactional_records_per_s": median([t["records_per_s"] for t in txn]),
            "transaction_duration_ms": 100,
            "reps": sizes.reps,
        },
    )
