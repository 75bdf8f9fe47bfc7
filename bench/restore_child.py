"""One restore measured in a fresh process, so its resident memory is its own.

`python -m bench.restore_child BOOTSTRAP PREFIX restore|raw` prints one JSON line:
- restore: `DeciderService._restore(0)` (what the decider runs on assignment) into its dict of
  ContactState; seconds, contacts, and the RSS delta (VmRSS from /proc/self/status before and after,
  after gc, with the states still referenced);
- raw: the same partition read to its end with the same consumer settings, nothing parsed or kept.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from enrollstream.adapters.kafka.reading import batches_to_end
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.runtime.campaigns import CampaignCatalog
from enrollstream.runtime.decider import DeciderService


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def restore(bootstrap: str, topics: Topics) -> dict[str, float]:
    catalog = CampaignCatalog(bootstrap, topics.campaigns)
    await catalog.start()  # the worker starts it before the decider takes partitions
    service = DeciderService(bootstrap, topics, "bench-restore", catalog)
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    states = await service._restore(0)
    seconds = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()
    await catalog.stop()
    return {"seconds": seconds, "contacts": len(states), "rss_before": before, "rss_after": after}


async def raw(bootstrap: str, topics: Topics) -> dict[str, float]:
    tp = TopicPartition(topics.aggregates, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    started = time.perf_counter()
    records = 0
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        async for batch in batches_to_end(consumer, [tp]):
            records += len(batch[tp])
    finally:
        await consumer.stop()
    return {"seconds": time.perf_counter() - started, "contacts": records}


def main() -> None:
    bootstrap, prefix, mode = sys.argv[1:4]
    topics = Topics(prefix=prefix)
    out = asyncio.run(restore(bootstrap, topics) if mode == "restore" else raw(bootstrap, topics))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
