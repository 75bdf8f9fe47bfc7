"""A table held in memory from a one-partition compacted topic (campaigns, contact imports, webhook
subscriptions), brought up to the topic's current end on demand.

`catch_up()` is called before work that must see everything published before it (the decider calls it
before each batch), so it must be cheap when nothing is new. The end offset is asked through a second,
never-assigned consumer: on the reading consumer's own connection the request would queue behind its
background long-poll fetch (up to `fetch.max.wait.ms`, 500 ms) every time.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from enrollstream.adapters.kafka.reading import batches_to_end


class CompactedTable(ABC):
    def __init__(self, bootstrap: str, topic: str, **consumer_options: Any) -> None:
        self._bootstrap = bootstrap
        self._partition = TopicPartition(topic, 0)
        self._options = consumer_options
        self._consumer: AIOKafkaConsumer | None = None
        self._probe: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    @abstractmethod
    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        """Fold one record (a null value is a tombstone) into the table."""

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            **self._options,
        )
        self._probe = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, isolation_level="read_committed", enable_auto_commit=False
        )
        await self._consumer.start()
        await self._probe.start()
        self._consumer.assign([self._partition])
        await self._consumer.seek_to_beginning(self._partition)
        await self.catch_up()

    async def stop(self) -> None:
        for consumer in (self._consumer, self._probe):
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await consumer.stop()
        self._consumer = self._probe = None

    async def catch_up(self) -> None:
        consumer = self._consumer
        assert consumer is not None, "start() the table first"
        async with self._lock:
            batches = batches_to_end(consumer, [self._partition], timeout_ms=200, ends_from=self._probe)
            async for batch in batches:
                for record in batch[self._partition]:
                    self._apply(record.key, record.value)
