"""`python -m tests.integration.restore_child BOOTSTRAP TOPIC PATH`: rebuild the store at PATH from
partition 0 of TOPIC (the decider's `recover`), then SIGKILL this process when the restore flushes: a
crash after the restore's last write and before RocksDB persisted what it wrote without the WAL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from aiokafka import TopicPartition

from enrollstream.state import StoreIdentity, open_rocksdb_store
from enrollstream.state.recovery import recover


def main(bootstrap: str, topic: str, path: str) -> None:
    identity = StoreIdentity(topic, 0)
    store, _ = open_rocksdb_store(Path(path), identity)
    store.flush = lambda: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign]
    asyncio.run(recover(store, bootstrap, TopicPartition(topic, 0), identity))


if __name__ == "__main__":
    main(*sys.argv[1:4])
