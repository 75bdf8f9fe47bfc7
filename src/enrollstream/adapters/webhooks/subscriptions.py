"""Webhook subscriptions: a compacted one-partition topic, latest record per `<account_id> <url>`.

Every relay reads the whole table (it is small: a few URLs per account) and catches up before each
delivery, so a subscription published before an event is used for it. A tombstone (null value) or
`active: false` stops deliveries to that URL.
"""

from __future__ import annotations

import contextlib
import logging

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from enrollstream.adapters.kafka.compacted_table import CompactedTable

log = logging.getLogger(__name__)


class WebhookSubscription(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account_id: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://\S+$")
    secret: str = Field(min_length=16)
    active: bool = True

    @property
    def key(self) -> str:
        return subscription_key(self.account_id, self.url)


def subscription_key(account_id: str, url: str) -> str:
    return f"{account_id} {url}"  # a URL has no spaces: the last space splits the key


class WebhookSubscriptionCatalog(CompactedTable):
    """The active subscriptions per account, from the compacted subscriptions topic."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self._by_key: dict[str, WebhookSubscription] = {}

    def for_account(self, account_id: str) -> list[WebhookSubscription]:
        found = [s for s in self._by_key.values() if s.account_id == account_id and s.active]
        return sorted(found, key=lambda s: s.url)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            if key is not None:
                self._by_key.pop(key.decode(), None)
            return
        try:
            subscription = WebhookSubscription.model_validate_json(value)
        except ValidationError:
            log.warning("ignoring an invalid webhook subscription (key %r)", key)
            return
        self._by_key[subscription.key] = subscription


async def publish_subscription(bootstrap: str, topic: str, subscription: WebhookSubscription) -> None:
    """Add or update a subscription (compaction keeps the latest per account and URL)."""
    await _send(bootstrap, topic, subscription.key, subscription.model_dump_json().encode())


async def delete_subscription(bootstrap: str, topic: str, account_id: str, url: str) -> None:
    """A tombstone: no more deliveries to this URL, and compaction forgets its secret."""
    await _send(bootstrap, topic, subscription_key(account_id, url), None)


async def _send(bootstrap: str, topic: str, key: str, value: bytes | None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key.encode(), partition=0)
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
