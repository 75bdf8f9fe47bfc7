"""What the operator commands of the CLI do, apart from printing: files, lookups, the dead letters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from enrollstream.adapters.kafka.reading import batches_to_end
from enrollstream.adapters.kafka.records import header
from enrollstream.adapters.kafka.topics import Topics, partition_numbers
from enrollstream.domain import CampaignDefinition, CampaignStatus, with_pause_history
from enrollstream.runtime.campaigns import CampaignCatalog, publish_campaign


class OperatorError(Exception):
    """A failure the operator can fix, said in one line (unknown campaign, bad file, ...)."""


def load_campaign_file(path: Path) -> CampaignDefinition:
    """A campaign definition from YAML or JSON, validated against the model the decider uses."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise OperatorError(f"{path}: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise OperatorError(f"{path}: not valid {kind}: {first_line}") from None
    if not isinstance(raw, dict):
        raise OperatorError(f"{path}: expected a mapping of campaign fields, got {type(raw).__name__}")
    try:
        return CampaignDefinition.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(top)'}: {error['msg']}"
            for error in exc.errors()[:3]
        )
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        raise OperatorError(f"{path}: not a valid campaign: {problems}{more}") from None


async def known_campaign(
    bootstrap: str, topics: Topics, account_id: str, campaign_id: str
) -> CampaignDefinition:
    """The account's campaign as the deciders know it; an unknown one is an OperatorError (another
    account's campaign with the same id is another campaign)."""
    campaign = await _latest(bootstrap, topics, account_id, campaign_id)
    if campaign is None:
        raise OperatorError(f"unknown campaign {campaign_id!r} for account {account_id!r}")
    return campaign


async def _latest(
    bootstrap: str, topics: Topics, account_id: str, campaign_id: str
) -> CampaignDefinition | None:
    catalog = CampaignCatalog(bootstrap, topics.campaigns)
    await catalog.start()
    try:
        return catalog.get(account_id, campaign_id)
    finally:
        await catalog.stop()


async def apply_campaign(
    bootstrap: str, topics: Topics, campaign: CampaignDefinition, at: datetime
) -> CampaignDefinition:
    """Publish `campaign` as of `at`, keeping the pause history of the version it replaces (a pause is
    opened or closed when the status changes): paused time must not count toward expiry or timeouts."""
    previous = await _latest(bootstrap, topics, campaign.account_id, campaign.campaign_id)
    published = with_pause_history(previous, campaign, at)
    await publish_campaign(bootstrap, topics.campaigns, published)
    return published


async def set_campaign_status(
    bootstrap: str, topics: Topics, account_id: str, campaign_id: str, status: CampaignStatus, at: datetime
) -> CampaignDefinition:
    """Pause, resume (active) or archive a known campaign: its next version with `status`, as of `at`."""
    previous = await known_campaign(bootstrap, topics, account_id, campaign_id)
    if previous.status is status:
        raise OperatorError(f"campaign {campaign_id!r} is already {status.value}")
    changed = previous.model_copy(update={"status": status, "version": previous.version + 1})
    published = with_pause_history(previous, changed, at)
    await publish_campaign(bootstrap, topics.campaigns, published)
    return published


@dataclass(frozen=True)
class DeadLetterRecord:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    reason: str
    role: str
    error: str
    original_topic: str
    original_partition: str
    original_offset: str
    # Kept by reference (the original was too large to copy): its size and sha256; `value` is a prefix.
    truncated: bool = False
    original_size: int | None = None
    original_sha256: str = ""

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def stored(self) -> str:
        """What the letter holds of its original: all its bytes, or a prefix of how many."""
        held = len(self.value or b"")
        if not self.truncated:
            return str(held)
        return f"{held} of {self.original_size} (truncated, sha256 {self.original_sha256[:12]})"


async def unprojectable_events(database_url: str, limit: int = 50) -> list[dict[str, Any]]:
    """The newest `limit` events the projector quarantined (`unprojectable_events`), oldest first."""
    import asyncpg

    from enrollstream.adapters.postgres.queries import query

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(query("unprojectable_events"), limit)
    finally:
        await conn.close()
    return [dict(row) for row in reversed(rows)]


async def dead_letters(bootstrap: str, topics: Topics) -> list[DeadLetterRecord]:
    """Every record of the dead-letter topic, oldest first per partition."""
    names = await partition_numbers(bootstrap, topics.dead_letters)
    partitions = [TopicPartition(topics.dead_letters, p) for p in names]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    out: list[DeadLetterRecord] = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        async for batch in batches_to_end(consumer, partitions):
            for tp, records in batch.items():
                out.extend(_letter(tp.partition, record) for record in records)
    finally:
        await consumer.stop()
    return sorted(out, key=lambda letter: (letter.timestamp_ms, letter.partition, letter.offset))


def _letter(partition: int, record: Any) -> DeadLetterRecord:
    headers = record.headers
    return DeadLetterRecord(
        partition=partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        value=record.value,
        reason=header(headers, "error.reason") or "",
        role=header(headers, "error.role") or "",
        error=header(headers, "error.message") or "",
        original_topic=header(headers, "original.topic") or "",
        original_partition=header(headers, "original.partition") or "",
        original_offset=header(headers, "original.offset") or "",
        truncated=header(headers, "original.truncated") == "true",
        original_size=int(size) if (size := header(headers, "original.size")) else None,
        original_sha256=header(headers, "original.sha256") or "",
    )


async def retry_dead_letters(bootstrap: str, topics: Topics, ids: list[str]) -> list[DeadLetterRecord]:
    """Publish the chosen letters' original bytes to their original topic again (e.g. after a fix).

    Retrying is safe to repeat: a command that was accepted once is a duplicate the second time.
    """
    letters = {letter.id: letter for letter in await dead_letters(bootstrap, topics)}
    unknown = [i for i in ids if i not in letters]
    if unknown:
        raise OperatorError(f"no dead letter {', '.join(unknown)} (ids are partition:offset, see `dlq list`)")
    chosen = [letters[i] for i in ids]
    for letter in chosen:
        if not letter.original_topic:
            raise OperatorError(f"dead letter {letter.id} does not say which topic it came from")
        if letter.truncated:
            raise OperatorError(
                f"dead letter {letter.id} keeps only the first {len(letter.value or b'')} of its original's "
                f"{letter.original_size} bytes (sha256 {letter.original_sha256}), so it cannot be retried; "
                "publish the original again from where it came from"
            )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for letter in chosen:
            await producer.send_and_wait(
                letter.original_topic,
                letter.value,
                key=letter.key,
                headers=[("retry.of", f"{topics.dead_letters}:{letter.id}".encode())],
            )
    finally:
        await producer.stop()
    return chosen
