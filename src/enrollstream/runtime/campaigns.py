"""The campaign table every decider holds: the compacted campaigns topic, read to its end and followed."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from enrollstream.adapters.kafka.reading import batches_to_end
from enrollstream.adapters.kafka.records import encode
from enrollstream.domain import CampaignDefinition
from enrollstream.domain.campaign import CampaignStatus

log = logging.getLogger(__name__)


class CampaignCatalog:
    """Latest definition per campaign id, by version.

    `catch_up()` reads up to the topic's current end, so a campaign published before a command is
    known when that command is decided; one published after is not, and the command is rejected with
    `campaign_not_found` rather than guessed at.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._partition = TopicPartition(topic, 0)
        self._campaigns: dict[str, CampaignDefinition] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    def get(self, campaign_id: str) -> CampaignDefinition | None:
        return self._campaigns.get(campaign_id)

    def paused(self) -> list[str]:
        """The ids of the campaigns whose latest definition is paused."""
        return sorted(c.campaign_id for c in self._campaigns.values() if c.status is CampaignStatus.PAUSED)

    def __len__(self) -> int:
        return len(self._campaigns)

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, isolation_level="read_committed", enable_auto_commit=False
        )
        await self._consumer.start()
        self._consumer.assign([self._partition])
        await self._consumer.seek_to_beginning(self._partition)
        await self.catch_up()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def catch_up(self) -> None:
        consumer = self._consumer
        assert consumer is not None, "start() the catalog first"
        async with self._lock:
            async for batch in batches_to_end(consumer, [self._partition], timeout_ms=200):
                for record in batch[self._partition]:
                    self._apply(record.key, record.value)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:  # a tombstone: the campaign was deleted
            if key is not None:
                self._campaigns.pop(key.decode(), None)
            return
        try:
            campaign = CampaignDefinition.model_validate_json(value)
        except ValidationError:
            log.warning("ignoring an invalid campaign definition on the campaigns topic (key %r)", key)
            return
        known = self._campaigns.get(campaign.campaign_id)
        if known is None or campaign.version >= known.version:
            self._campaigns[campaign.campaign_id] = campaign


async def publish_campaign(bootstrap: str, topic: str, campaign: CampaignDefinition) -> None:
    """Upsert a campaign definition (keyed by its id, so compaction keeps the latest)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, encode(campaign), key=campaign.campaign_id.encode(), partition=0)
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
