"""What the scenarios share: the result shape, timing helpers, fresh topics and databases."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from enrollstream.adapters.postgres.databases import create_database, drop_database
from enrollstream.adapters.postgres.migrations import migrate

SCENARIOS = (
    "decider",
    "peer",
    "projector",
    "scheduler",
    "end_to_end",
    "restore",
    "decider_resident",
    "snapshots",
    "state_engines",
    "broker",
    "dispatcher",
    "scale_out",
)


@dataclass
class Sizes:
    """How big each scenario runs; `quick` is the CI smoke, `full` the figures we publish."""

    mode: str
    reps: int = 3
    decider_commands: int = 30_000
    decider_warmup: int = 2_000
    decider_max_batch: int = 500
    partitions: int = 6
    projector_events: int = 100_000
    projector_warmup: int = 4_000
    restore_contacts: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    restore_reps_above_100k: int = 1
    resident_contacts: int = 1_000_000
    resident_commands: int = 30_000
    broker_records: int = 1_000_000
    scheduler_burst: int = 100_000
    scheduler_steady_seconds: int = 10
    end_to_end_rate: int = 500
    end_to_end_seconds: int = 60
    end_to_end_searches: int = 4  # more rates tried to find the highest with p99 < 2 s
    state_engine_contacts: int = 1_000_000
    state_engine_gets: int = 100_000
    state_engine_overwrites: int = 10_000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            mode="quick",
            decider_commands=3_000,
            decider_warmup=500,
            projector_events=6_000,
            projector_warmup=1_000,
            restore_contacts=(10_000,),
            resident_contacts=20_000,
            resident_commands=3_000,
            broker_records=100_000,
            scheduler_burst=10_000,
            scheduler_steady_seconds=3,
            end_to_end_rate=50,
            end_to_end_seconds=5,
            end_to_end_searches=0,
            state_engine_contacts=100_000,
        )

    @classmethod
    def full(cls) -> Sizes:
        return cls(mode="full")


@dataclass
class Result:
    """One scenario's row: the figure, the raw baseline measured in the same run, and the target."""

    status: str  # measured | not_run
    unit: str
    target: str
    value: float | None = None
    baseline: float | None = None
    baseline_name: str | None = None
    reason: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    runs: list[float] = field(default_factory=list)
    baseline_runs: list[float] = field(default_factory=list)
    target_met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def as_json(self, mode: str) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "status": self.status,
            "mode": mode,
            "value": _round(self.value),
            "unit": self.unit,
            "baseline": _round(self.baseline),
            "baseline_name": self.baseline_name,
            "ratio": None if ratio is None else round(ratio, 3),
            "target": self.target,
            "target_met": self.target_met,
            "reason": self.reason,
            "runs": [_round(v) for v in self.runs],
            "baseline_runs": [_round(v) for v in self.baseline_runs],
            "params": self.params,
        }


def not_run(unit: str, target: str, reason: str, **params: Any) -> Result:
    return Result(status="not_run", unit=unit, target=target, reason=reason, params=params)


def _round(value: float | None) -> float | None:
    if value is None:
        return None
    return round(value, 4) if abs(value) < 100 else round(value, 1)


def median(values: list[float]) -> float:
    return statistics.median(values)


def run_id() -> str:
    return uuid.uuid4().hex[:10]


class Stopwatch:
    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]], **kw: Any) -> None:
    """Plain idempotent producer, acks=all, futures gathered at the end: the set-up, not the measurement."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=256 * 1024,
        max_request_size=8 * 1024 * 1024,
        **kw,
    )
    await producer.start()
    try:
        pending = []
        for i, (key, value) in enumerate(records):
            pending.append(await producer.send(topic, value, key=key))
            if i % 20_000 == 19_999:
                for fut in pending:
                    await fut
                pending.clear()
        for fut in pending:
            await fut
    finally:
        await producer.stop()


async def migrated_database(server_url: str, name: str) -> str:
    """A new database `name` with every migration applied (drop it with `drop_database`); dropped at once
    if it cannot be migrated."""
    url = await create_database(server_url, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
    except BaseException:
        await drop_database(server_url, name)
        raise
    return url
