"""Reference webhook relay: a FastStream Kafka subscriber on the integration-events topic that POSTs each
public event, signed, to the URLs its account subscribed (docs/webhooks.md).

- Order per enrollment: records are keyed by enrollment, so one enrollment's events share a partition.
  A consumer handles its records one at a time (FastStream's default subscriber; with
  `relay_consumers > 1`, FastStream's between-partitions subscriber: several consumers in the group,
  each sequential over the partitions it owns). A failing URL holds back every later record of that
  consumer until it succeeds or its attempts run out.
- At least once: offsets are committed (manual ack) only after a record was delivered to every URL or
  dead-lettered. A crash in between repeats the record; subscribers dedupe on `Enrollstream-Event-Id`.
- After the last attempt the record goes to the dead-letter topic with `webhook.*` headers (url,
  attempts, last status, last error), and the relay moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.middlewares import AckPolicy
from pydantic import ValidationError

from enrollstream.adapters.kafka.records import DeadLetter
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.webhooks.signing import (
    ATTEMPT_HEADER,
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    InvalidSignature,
    sign,
    verify_signature,
)
from enrollstream.adapters.webhooks.subscriptions import WebhookSubscription, WebhookSubscriptionCatalog
from enrollstream.config import Settings
from enrollstream.domain.integration import integration_event_adapter

__all__ = [
    "SIGNATURE_HEADER",
    "DeliveryOutcome",
    "InvalidSignature",
    "RetryPolicy",
    "WebhookRelayService",
    "verify_signature",
]

log = logging.getLogger(__name__)

USER_AGENT = "enrollstream-webhook-relay/1"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_s: float = 1.0
    factor: float = 2.0
    max_delay_s: float = 60.0

    def delay_after(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1-based): base * factor^(attempt-1), capped."""
        return float(min(self.base_s * self.factor ** (attempt - 1), self.max_delay_s))

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.relay_max_attempts,
            base_s=settings.relay_retry_base_s,
            factor=settings.relay_retry_factor,
            max_delay_s=settings.relay_retry_max_s,
        )


@dataclass(frozen=True)
class DeliveryOutcome:
    url: str
    delivered: bool
    attempts: int
    last_status: int | None  # the last HTTP status, None if no response came
    last_error: str  # "" when delivered
    interrupted: bool = False  # the relay stopped before the URL succeeded or exhausted its attempts


class WebhookRelayService:
    """The `relay` role. start() joins the group; run(stop) relays until stop is set; stop() leaves."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        group_id: str,
        *,
        policy: RetryPolicy | None = None,
        request_timeout_s: float = 10.0,
        consumers: int = 1,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.group_id = group_id
        self.policy = policy or RetryPolicy()
        self.request_timeout_s = request_timeout_s
        self.clock = clock
        self.catalog = WebhookSubscriptionCatalog(bootstrap, topics.webhook_subscriptions)
        self._stopping = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._producer: AIOKafkaProducer | None = None
        self.delivered = 0  # records fully handled (delivered or dead-lettered), for status and tests
        self.dead_lettered = 0
        self.broker = KafkaBroker(bootstrap, logger=log, graceful_timeout=30.0)
        subscriber = self.broker.subscriber(
            topics.integration_events,
            group_id=group_id,
            # The decider writes integration events in its transactions: never relay an aborted one.
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,  # we ack after delivery or dead letter, never before
            max_workers=consumers if consumers > 1 else None,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            # A retrying record may hold the consumer for minutes; do not get kicked out meanwhile.
            max_poll_interval_ms=max(5 * 60 * 1000, int(self._longest_record_s() * 1000 * 2)),
            max_poll_records=50,
            title="webhook-relay",
            description="POSTs each integration event to its account's webhook subscriptions",
        )
        subscriber(self._handle)

    @classmethod
    def from_settings(cls, settings: Settings, bootstrap: str) -> WebhookRelayService:
        return cls(
            bootstrap,
            Topics(settings.topic_prefix),
            settings.relay_group_id or f"{settings.group_id}.webhook-relay",
            policy=RetryPolicy.from_settings(settings),
            request_timeout_s=settings.relay_request_timeout_s,
            consumers=settings.relay_consumers,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
        )

    def _longest_record_s(self) -> float:
        p = self.policy
        waits = sum(p.delay_after(n) for n in range(1, p.max_attempts))
        return waits + p.max_attempts * self.request_timeout_s

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
            headers={"User-Agent": USER_AGENT},
        )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True
        )
        await self._producer.start()
        await self.catalog.start()
        await self.broker.start()

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopping.set()

    async def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(Exception):
            await self.broker.stop()
        await self.catalog.stop()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- one record ---------------------------------------------------------------------------------

    async def _handle(self, msg: KafkaMessage) -> None:
        record: Any = msg.raw_message
        if self._stopping.is_set():
            return  # neither ack nor nack: the committed offset stays before it, so it comes again
        try:
            finished = await self.relay_record(record)
        except Exception:
            # Kafka or the catalog failed us (not the subscriber): try this record again, in order.
            where = (record.topic, record.partition, record.offset)
            log.exception("relaying %s-%s@%s failed; retrying it", *where)
            await self._pause(self.policy.delay_after(1) or 1.0)
            await msg.nack()  # seeks back to this record
            return
        if not finished:
            return  # stopped mid-retry: no ack, so it is delivered again after the restart
        try:
            await msg.ack()  # commits this consumer's consumed offsets: all of them are handled
        except Exception:
            # A rebalance took the partition: its next owner repeats the record (at least once).
            log.warning("could not commit after %s-%s@%s", record.topic, record.partition, record.offset)

    async def relay_record(self, record: Any) -> bool:
        """Deliver one record to each active subscription of its account, dead-lettering the URLs that
        exhaust their attempts. True when every URL is settled; False if the relay stopped first."""
        body: bytes | None = record.value
        try:
            event = integration_event_adapter.validate_json(body or b"")
        except ValidationError as exc:
            await self._dead_letter(DeadLetter.of(record, "not a valid integration event", exc, role="relay"))
            self.dead_lettered += 1
            self.delivered += 1
            return True
        assert body is not None
        await self.catalog.catch_up()
        subscriptions = self.catalog.for_account(event.account_id)
        outcomes = await asyncio.gather(*(self.deliver(s, body, event.id, event.type) for s in subscriptions))
        if any(o.interrupted for o in outcomes):
            return False
        for outcome in outcomes:
            if not outcome.delivered:
                await self._dead_letter(self._webhook_dead_letter(record, event.account_id, outcome))
                self.dead_lettered += 1
        self.delivered += 1
        return True

    async def deliver(
        self, subscription: WebhookSubscription, body: bytes, event_id: str, event_type: str
    ) -> DeliveryOutcome:
        """POST with retries: any 2xx is delivered; other statuses, timeouts and connection errors retry."""
        session = self._session
        assert session is not None, "start() the relay first"
        status: int | None = None
        error = ""
        attempt = 0
        for attempt in range(1, self.policy.max_attempts + 1):
            if self._stopping.is_set():
                return DeliveryOutcome(subscription.url, False, attempt - 1, status, error, interrupted=True)
            timestamp = int(self.clock())
            headers = {
                "Content-Type": "application/json",
                EVENT_ID_HEADER: event_id,
                EVENT_TYPE_HEADER: event_type,
                ATTEMPT_HEADER: str(attempt),
                SIGNATURE_HEADER: sign(subscription.secret, body, timestamp),
            }
            try:
                async with session.post(subscription.url, data=body, headers=headers) as response:
                    status = response.status
                    await response.read()
                if 200 <= status < 300:
                    return DeliveryOutcome(subscription.url, True, attempt, status, "")
                error = f"HTTP {status}"
            except TimeoutError:
                status, error = None, f"timeout after {self.request_timeout_s}s"
            except aiohttp.ClientError as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
            log.info("webhook %s to %s failed (attempt %d): %s", event_id, subscription.url, attempt, error)
            if attempt < self.policy.max_attempts and not await self._pause(self.policy.delay_after(attempt)):
                return DeliveryOutcome(subscription.url, False, attempt, status, error, interrupted=True)
        return DeliveryOutcome(subscription.url, False, attempt, status, error)

    async def _pause(self, seconds: float) -> bool:
        """Wait, unless the relay is stopping (then False at once)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return not self._stopping.is_set()

    def _webhook_dead_letter(self, record: Any, account_id: str, outcome: DeliveryOutcome) -> DeadLetter:
        letter = DeadLetter.of(record, "webhook delivery failed", role="relay")
        extra = [
            ("webhook.account_id", account_id),
            ("webhook.url", outcome.url),
            ("webhook.attempts", str(outcome.attempts)),
            ("webhook.last_status", "" if outcome.last_status is None else str(outcome.last_status)),
            ("webhook.last_error", outcome.last_error[:4000]),
        ]
        return DeadLetter(letter.key, letter.value, [*letter.headers, *((k, v.encode()) for k, v in extra)])

    async def _dead_letter(self, letter: DeadLetter) -> None:
        producer = self._producer
        assert producer is not None, "start() the relay first"
        await producer.send_and_wait(
            self.topics.dead_letters, letter.value, key=letter.key, headers=letter.headers
        )
