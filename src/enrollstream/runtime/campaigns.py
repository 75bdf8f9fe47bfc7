"""The campaign table every decider holds: the compacted campaigns topic, read to its end and followed."""

from __future__ import annotations

import contextlib
import logging

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from enrollstream.adapters.kafka.compacted_table import CompactedTable
from enrollstream.adapters.kafka.records import encode
from enrollstream.domain import CampaignDefinition
from enrollstream.domain.campaign import CampaignStatus

log = logging.getLogger(__name__)


class CampaignCatalog(CompactedTable):
    """Latest definition per campaign id, by version.

    `catch_up()` reads up to the topic's current end, so a campaign published before a command is
    known when that command is decided; one published after is not, and the command is rejected with
    `campaign_not_found` rather than guessed at.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self._campaigns: dict[str, CampaignDefinition] = {}

    def get(self, campaign_id: str) -> CampaignDefinition | None:
        return self._campaigns.get(campaign_id)

    def paused(self) -> list[str]:
        """The ids of the campaigns whose latest definition is paused."""
        return sorted(c.campaign_id for c in self._campaigns.values() if c.status is CampaignStatus.PAUSED)

    def __len__(self) -> int:
        return len(self._campaigns)

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
