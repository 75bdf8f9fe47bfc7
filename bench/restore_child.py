"""One restore measured in a fresh process, so its resident memory is its own.

`python -m bench.restore_child BOOTSTRAP PREFIX raw|store [STATE_DIR]` prints one JSON line:
- store: `DeciderService._open_state(0)` (what the decider runs on assignment) with its state store under
  STATE_DIR: an empty directory is a cold rebuild, one a previous run left is a warm restore of the tail;
  seconds, records copied, whether cold, and the RSS delta (VmRSS from /proc/self/status before and after,
  after gc, with the store still open);
- raw: the same partition read to its end with the same consumer settings, nothing parsed or kept.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from enrollstream.adapters.kafka.reading import batches_to_end
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.runtime.campaigns import CampaignCatalog
from enrollstream.runtime.decider import DeciderService
from enrollstream.state import StoreOptions
from enrollstream.state.recovery import restore_consumer

# What the worker gives the decider with the default ENROLLSTREAM_STATE_CACHE_MB=128.
CACHE_BYTES = 96 * 2**20
STORE_BYTES = 32 * 2**20


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def store(bootstrap: str, topics: Topics, state_dir: Path) -> dict[str, Any]:
    catalog = CampaignCatalog(bootstrap, topics.campaigns)
    await catalog.start()  # the worker starts it before the decider takes partitions
    service = DeciderService(
        bootstrap, topics, "bench-restore", catalog, state_dir=state_dir,
        state_cache_bytes=CACHE_BYTES, store_options=StoreOptions(memory_bytes=STORE_BYTES),
    )  # fmt: skip
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    state = await service._open_state(0)
    seconds = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()
    report = service.restores[-1]
    state.close()
    await catalog.stop()
    return {
        "seconds": seconds,
        "records": report.records,
        "cold": report.cold,
        "rss_before": before,
        "rss_after": after,
    }


async def raw(bootstrap: str, topics: Topics) -> dict[str, Any]:
    tp = TopicPartition(topics.aggregates, 0)
    consumer = restore_consumer(bootstrap)
    await consumer.start()
    started = time.perf_counter()
    records = 0
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        async for batch in batches_to_end(consumer, [tp], max_records=10_000):
            records += len(batch[tp])
    finally:
        await consumer.stop()
    return {"seconds": time.perf_counter() - started, "records": records}


def main() -> None:
    bootstrap, prefix, mode = sys.argv[1:4]
    topics = Topics(prefix=prefix)
    if mode == "raw":
        result = asyncio.run(raw(bootstrap, topics))
    else:
        result = asyncio.run(store(bootstrap, topics, Path(sys.argv[4])))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
