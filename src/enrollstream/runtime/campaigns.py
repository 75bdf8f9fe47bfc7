"""The campaign table every decider holds: the compacted campaigns topic, read to its end and followed.

A campaign is identified by (account_id, campaign_id): two accounts may use the same campaign id, and
each has its own definition, status and pause history. The topic's key says so (`campaign_key`: a JSON
array `["account", "campaign"]`, unambiguous whatever the ids contain), so compaction keeps the latest
definition per account and campaign. Records written before that were keyed by the campaign id alone:
they still load, under the account their value names.

Every version stays resolvable, for the enrollments that refer to it (compact snapshots keep only the
reference, domain/state.py): `publish_campaign` also writes each definition under a versioned key
(`campaign_version_key`: `["account","campaign",version]`), in the same topic, before the latest one.
Compaction keeps one record per versioned key, so an old version survives the compaction of its
`["account","campaign"]` record; a tombstone of a campaign removes its latest definition (no new
enrollments), not the versions its enrollments still use. A version is immutable once published: a
definition re-published under the same version replaces it for every enrollment that refers to it.
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
VersionRef = tuple[str, str, int]  # (account_id, campaign_id, version)


def campaign_key(account_id: str, campaign_id: str) -> bytes:
    """The campaigns topic key of one account's campaign: `["account","campaign"]` (JSON, so no id can
    make two campaigns share a key)."""
    return json.dumps([account_id, campaign_id], separators=(",", ":"), ensure_ascii=False).encode()


def campaign_version_key(account_id: str, campaign_id: str, version: int) -> bytes:
    """The key of one version of a campaign: `["account","campaign",version]`."""
    return json.dumps([account_id, campaign_id, version], separators=(",", ":"), ensure_ascii=False).encode()


def parse_campaign_version_key(key: bytes | None) -> VersionRef | None:
    """(account, campaign, version) of a key written by `campaign_version_key`, else None."""
    if key is None or not key.startswith(b"["):
        return None
    try:
        parsed = json.loads(key)
    except (UnicodeDecodeError, ValueError):
        return None
    if (
        isinstance(parsed, list)
        and len(parsed) == 3
        and isinstance(parsed[0], str)
        and isinstance(parsed[1], str)
        and type(parsed[2]) is int
    ):
        return parsed[0], parsed[1], parsed[2]
    return None


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
    """Latest definition per (account, campaign), by version; and every version still on the topic
    (`get_version`), one shared object per version.

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
        self._versions: dict[VersionRef, CampaignDefinition] = {}
        # Versions read under their versioned key, which compaction keeps: only these may be referred to
        # (one published before versioned keys lives only as long as it is its campaign's latest).
        self._durable: set[VersionRef] = set()
        # (account, pipeline, stage) -> the campaign ids whose latest definition enrols from that stage
        # (seed 002), kept with `_campaigns`, so a StageChanged finds its campaigns without a scan.
        self._by_stage: dict[tuple[str, str, str], set[str]] = {}

    def get(self, account_id: str, campaign_id: str) -> CampaignDefinition | None:
        return self._campaigns.get((account_id, campaign_id))

    def get_version(self, account_id: str, campaign_id: str, version: int) -> CampaignDefinition | None:
        """The definition of that version (also of a deleted campaign, or one compaction dropped from the
        latest key), or None if it was never on the topic under a key that keeps it."""
        return self._versions.get((account_id, campaign_id, version))

    def resolves(self, account_id: str, campaign: CampaignDefinition) -> bool:
        """Whether a snapshot may keep `campaign` as a reference: the catalog resolves its version to
        this very definition (the object shared with the enrollment, or an equal one), from a record
        compaction keeps."""
        ref = (account_id, campaign.campaign_id, campaign.version)
        known = self._versions.get(ref)
        return known is not None and (known is campaign or known == campaign) and ref in self._durable

    def of_account(self, account_id: str) -> list[CampaignDefinition]:
        """The account's campaigns, by campaign id."""
        found = [c for (account, _), c in self._campaigns.items() if account == account_id]
        return sorted(found, key=lambda c: c.campaign_id)

    def linked_to(self, account_id: str, pipeline_id: str, stage_id: str) -> list[CampaignDefinition]:
        """The account's campaigns whose latest definition enrols from that job stage (seed 002), by
        campaign id. Another account's campaign linked to a stage of the same names is not among them."""
        ids = self._by_stage.get((account_id, pipeline_id, stage_id), ())
        return [self._campaigns[(account_id, campaign_id)] for campaign_id in sorted(ids)]

    def paused(self) -> list[CampaignRef]:
        """(account_id, campaign_id) of the campaigns whose latest definition is paused."""
        return sorted(ref for ref, c in self._campaigns.items() if c.status is CampaignStatus.PAUSED)

    def __len__(self) -> int:
        return len(self._campaigns)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        versioned = parse_campaign_version_key(key)
        if versioned is not None:
            self._apply_version(versioned, value)
            return
        ref = parse_campaign_key(key)
        if value is None:  # a tombstone: the campaign was deleted
            deleted = [r for r, k in self._keys.items() if k == key]
            for gone in [*deleted, *([ref] if ref is not None else [])]:
                self._unlink_stages(gone)
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
        campaign = self._shared(campaign)
        known = self._campaigns.get(named)
        if known is None or campaign.version >= known.version:
            self._unlink_stages(named)
            self._campaigns[named] = campaign
            for stage in campaign.enrolling_stages:
                self._by_stage.setdefault((named[0], stage.pipeline_id, stage.stage_id), set()).add(named[1])
            if key is not None:
                self._keys[named] = key

    def _unlink_stages(self, ref: CampaignRef) -> None:
        """Forget the stages the latest definition of `ref` enrolled from (it is replaced or deleted)."""
        known = self._campaigns.get(ref)
        for stage in known.enrolling_stages if known is not None else ():
            key = (ref[0], stage.pipeline_id, stage.stage_id)
            linked = self._by_stage.get(key)
            if linked is not None:
                linked.discard(ref[1])
                if not linked:
                    del self._by_stage[key]

    def _apply_version(self, ref: VersionRef, value: bytes | None) -> None:
        if value is None:
            return  # versions are never deleted: an enrollment may still refer to it
        try:
            campaign = CampaignDefinition.model_validate_json(value)
        except ValidationError:
            log.warning("ignoring an invalid campaign definition on the campaigns topic (key %r)", ref)
            return
        if (campaign.account_id, campaign.campaign_id, campaign.version) != ref:
            log.warning("ignoring a campaign definition under the versioned key of %r", ref)
            return
        self._shared(campaign)
        self._durable.add(ref)

    def _shared(self, campaign: CampaignDefinition) -> CampaignDefinition:
        """The one object kept for this version (an equal definition read again is not kept twice)."""
        ref = (campaign.account_id, campaign.campaign_id, campaign.version)
        known = self._versions.get(ref)
        if known is not None and known == campaign:
            return known
        self._versions[ref] = campaign
        return campaign


async def publish_campaign(bootstrap: str, topic: str, campaign: CampaignDefinition) -> None:
    """Upsert a campaign definition: under its version's key (kept by compaction for the enrollments that
    refer to it), then under the account and campaign's key (compaction keeps the latest)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        value = encode(campaign)
        versioned = campaign_version_key(campaign.account_id, campaign.campaign_id, campaign.version)
        await producer.send_and_wait(topic, value, key=versioned, partition=0)
        key = campaign_key(campaign.account_id, campaign.campaign_id)
        await producer.send_and_wait(topic, value, key=key, partition=0)
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
