"""Where the decider's wall-clock time goes: its awaits timed by wrapping them (not a sampling profile).

`python -m bench.phases [--commands N] [--try catalog,batch]` runs the decider and the passthrough once
each on fresh topics of the local stack (ENROLLSTREAM_STACK_DIR / KAFKA_BOOTSTRAP_SERVERS as usual) and
prints the time spent in each awaited call. The decider is mostly idle (pyinstrument: CPU time is a small
part of wall time), so a sampling profile of its task shows the event loop waiting, not on what.

`--try` patches the decider *in this process only*, to measure changes docs/benchmarks.md proposes:
- `catalog`: the campaign and contact-import catalogs keep their partition paused between catch-ups
  and ask for the end offset first, so their ListOffsets no longer waits behind a long-poll fetch;
- `batch`: the decider's transactional producers get `max_batch_size` 1 MiB instead of 16 KiB.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from bench import decider as bench_decider
from bench.common import Sizes
from enrollstream import stack
from enrollstream.config import Settings
from enrollstream.runtime.campaigns import CampaignCatalog
from enrollstream.runtime.contact_imports import ContactImportCatalog
from enrollstream.runtime.decider import DeciderService

SPENT: dict[str, float] = {}
CALLS: Counter[str] = Counter()


def _timed(cls: Any, name: str) -> None:
    original: Callable[..., Awaitable[Any]] = getattr(cls, name)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            key = f"{cls.__name__}.{name}"
            SPENT[key] = SPENT.get(key, 0.0) + time.perf_counter() - started
            CALLS[key] += 1

    setattr(cls, name, wrapper)


def _paused_catalog(cls: Any) -> None:
    start, catch_up = cls.start, cls.catch_up

    async def paused_start(self: Any) -> None:
        await start(self)
        self._consumer.pause(self._partition)

    async def paused_catch_up(self: Any) -> None:
        consumer, tp = self._consumer, self._partition
        if consumer.paused() and await consumer.position(tp) >= (await consumer.end_offsets([tp]))[tp]:
            return
        consumer.resume(tp)
        try:
            await catch_up(self)
        finally:
            consumer.pause(tp)

    cls.start, cls.catch_up = paused_start, paused_catch_up


def _big_batches() -> None:
    async def new_producer(self: DeciderService, tp: TopicPartition) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            transactional_id=self._transactional_id(tp),
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=1024 * 1024,
        )
        await producer.start()
        return producer

    DeciderService._new_producer = new_producer  # type: ignore[method-assign]


def _report(title: str, run: bench_decider.Run) -> None:
    print(f"{title}: {run.rate:,.0f} records/s ({run.records} in {run.seconds:.2f} s)")
    for name, spent in sorted(SPENT.items(), key=lambda kv: -kv[1]):
        print(f"  {name:48s} {spent:7.3f} s  {CALLS[name]:6d} calls")
    SPENT.clear()
    CALLS.clear()


async def main_async(bootstrap: str, n: int) -> None:
    sizes = Sizes.quick()
    topics = await bench_decider._prepared_topics(bootstrap, sizes, n)
    _report("decider", await bench_decider.run_decider(bootstrap, topics, sizes, n))
    _report("passthrough", await bench_decider.run_passthrough(bootstrap, topics, sizes, n))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.phases", description=__doc__)
    parser.add_argument("--commands", type=int, default=3_000)
    parser.add_argument("--try", dest="changes", default="", help="catalog,batch (in this process only)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    changes = {c.strip() for c in args.changes.split(",") if c.strip()}
    if "catalog" in changes:
        _paused_catalog(CampaignCatalog)
        _paused_catalog(ContactImportCatalog)
    if "batch" in changes:
        _big_batches()
    for cls, name in [
        (CampaignCatalog, "catch_up"),
        (ContactImportCatalog, "catch_up"),
        (DeciderService, "_prepare"),
        (DeciderService, "_process"),
        (AIOKafkaProducer, "begin_transaction"),
        (AIOKafkaProducer, "send"),
        (AIOKafkaProducer, "send_offsets_to_transaction"),
        (AIOKafkaProducer, "commit_transaction"),
    ]:
        _timed(cls, name)
    settings = Settings()
    state = stack.up(settings)
    try:
        print(f"changes tried: {sorted(changes) or 'none'}")
        asyncio.run(main_async(state.endpoints.kafka_bootstrap_servers, args.commands))
    finally:
        if state.started:
            stack.down(settings)


if __name__ == "__main__":
    main()
