"""The campaign table every decider holds: the compacted campaigns topic, read to its end and followed.

A campaign is identified by (account_id, campaign_id): two accounts may use the same campaign id, and
each has its own definition, status and pause history. The topic's key says so (`campaign_key`: a JSON
array `["account", "campaign"]`, unambiguous whatever the ids contain), so compaction keeps the latest
definition per account and campaign. Records written before that were keyed by the campaign id alone:
they still load, under the account their value names.
"""

from __future__ import annotations

import contextlib
import json
import logging

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from enrollstream.adapters.kafka.compacted_table import CompactedTable
from enrollstream.adapters.kafka.records import encode
from enrollstream.domain import CampaignDefinition
from enrollstream.domain.campaign import CampaignStatus

log = logging.getLogger(__name__)

CampaignRef = tuple[str, str]  # (account_id, campaign_id)


def campaign_key(account_id: str, campaign_id: str) -> bytes:
    """The campaigns topic key of one account's campaign: `["account","campaign"]` (JSON, so no id can
    make two campaigns share a key)."""
    return json.dumps([account_id, campaign_id], separators=(",", ":"), ensure_ascii=False).encode()


def parse_campaign_key(key: bytes | None) -> CampaignRef | None:
    """(account, campaign) of a key written by `campaign_key`; None for a legacy key (the campaign id
    alone) or anything else."""
    if key is None:
        return None
    try:
        parsed = json.loads(key)
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(parsed, list) and len(parsed) == 2 and all(isinstance(p, str) for p in parsed):
        return parsed[0], parsed[1]
    return None


class CampaignCatalog(CompactedTable):
    """Latest definition per (account, campaign), by version.

    `catch_up()` reads up to the topic's current end, so a campaign published before a command is
    known when that command is decided; one published after is not, and the command is rejected with
    `campaign_not_found` rather than guessed at. Another account's campaign with the same id is another
    campaign: `get` never returns it.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self._campaigns: dict[CampaignRef, CampaignDefinition] = {}
        # The key each definition was read under: a tombstone deletes what its key wrote, also for a
        # legacy key (the campaign id alone), which does not name the account.
        self._keys: dict[CampaignRef, bytes] = {}

    def get(self, account_id: str, campaign_id: str) -> CampaignDefinition | None:
        return self._campaigns.get((account_id, campaign_id))

    def of_account(self, account_id: str) -> list[CampaignDefinition]:
        """The account's campaigns, by campaign id."""
        found = [c for (account, _), c in self._campaigns.items() if account == account_id]
        return sorted(found, key=lambda c: c.campaign_id)

    def paused(self) -> list[CampaignRef]:
        """(account_id, campaign_id) of the campaigns whose latest definition is paused."""
        return sorted(ref for ref, c in self._campaigns.items() if c.status is CampaignStatus.PAUSED)

    def __len__(self) -> int:
        return len(self._campaigns)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        ref = parse_campaign_key(key)
        if value is None:  # a tombstone: the campaign was deleted
            deleted = [r for r, k in self._keys.items() if k == key]
            for gone in [*deleted, *([ref] if ref is not None else [])]:
                self._campaigns.pop(gone, None)
                self._keys.pop(gone, None)
            return
        try:
            campaign = CampaignDefinition.model_validate_json(value)
        except ValidationError:
            log.warning("ignoring an invalid campaign definition on the campaigns topic (key %r)", key)
            return
        named = (campaign.account_id, campaign.campaign_id)
        if ref is not None and ref != named and key != campaign.campaign_id.encode():
            log.warning("ignoring a campaign definition for %r under the key of %r", named, ref)
            return
        known = self._campaigns.get(named)
        if known is None or campaign.version >= known.version:
            self._campaigns[named] = campaign
            if key is not None:
                self._keys[named] = key


async def publish_campaign(bootstrap: str, topic: str, campaign: CampaignDefinition) -> None:
    """Upsert a campaign definition (keyed by account and campaign, so compaction keeps the latest)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        key = campaign_key(campaign.account_id, campaign.campaign_id)
        await producer.send_and_wait(topic, encode(campaign), key=key, partition=0)
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
