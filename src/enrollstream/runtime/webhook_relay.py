"""Reference webhook relay: a Kafka consumer group on the integration-events topic that POSTs each public
event, signed, to the URLs its account subscribed (docs/webhooks.md).

- One lane per subscription (account and URL): an in-memory queue with its own task, delivering its
  events one at a time in the order they were consumed. Records are keyed by enrollment, so one
  enrollment's events share a partition and reach each lane in order: each subscriber sees an
  enrollment's events in order. Retries wait in their lane only: a failing URL holds back its own later
  events (parked in order), never another subscriber's.
- Circuit breaker per lane: the wait before an attempt grows with the URL's consecutive failed attempts
  across events (a 2xx closes it); a lane holding `backlog` events dead-letters further ones at once.
- No redirects are followed: a 3xx is a failed attempt like any other non-2xx.
- At least once: per partition, the committed offset never passes a record that some lane has not
  delivered or dead-lettered yet. The lanes live in memory: after a crash, restart or rebalance, every
  record from the committed offset on comes again (also to subscribers that had it already);
  subscribers dedupe on `Enrollstream-Event-Id`.
- After its last attempt an event goes to the dead-letter topic with `webhook.*` headers (url, attempts,
  last status, last error), and the lane moves on to its next event.
- /healthz reports the relay stuck (`Progress`) when the relay itself cannot advance its consumer: a
  record it cannot hand to the lanes (the subscriptions catalog or a dead letter cannot be written) that
  failed `stuck_retries` times in a row or has been in hand for longer than `stuck_after_s`, fetching
  that fails `stuck_retries` times in a row, or a dead letter a lane cannot write. Subscribers that fail,
  all of them even, are not: that is their lanes' retries and breakers, and the main path goes on.
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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
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
from enrollstream.observability import Lane, Progress

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
# The relay's lanes of work besides its partitions, for Progress.
FETCHING = "fetching"
DEAD_LETTERS = "dead letters"  # written by the subscribers' lanes


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_s: float = 1.0
    factor: float = 2.0
    max_delay_s: float = 60.0

    def delay_after(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1-based): base * factor^(attempt-1), capped."""
        try:  # a URL failing for days counts many attempts: factor^n overflows a float long before
            grown = self.base_s * self.factor ** (attempt - 1)
        except OverflowError:
            grown = self.max_delay_s
        return float(min(grown, self.max_delay_s))

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


class Breaker:
    """A URL's circuit: its consecutive failed attempts, across events. While it has any, every attempt
    waits `policy.delay_after(failures)` first (so after an event ran out of attempts the next one
    starts at the longest wait reached, not at `base`); a 2xx closes it."""

    def __init__(self) -> None:
        self.failures = 0

    @property
    def open(self) -> bool:
        return self.failures > 0


class _PartitionTrack:
    """One assigned partition of one consumer: the records consumed and not yet settled by every lane."""

    def __init__(self) -> None:
        self.pending: dict[int, int] = {}  # offset -> lanes still to settle it; ascending (consumed order)
        self.next_offset: int | None = None  # one past the last record consumed
        self.committed: int | None = None

    def consumed(self, offset: int, lanes: int) -> None:
        self.next_offset = offset + 1
        if lanes:
            self.pending[offset] = lanes

    def settle(self, offset: int) -> bool:
        """One lane is done with the record; True when it was the last one."""
        left = self.pending.get(offset)
        if left is None:
            return False
        if left > 1:
            self.pending[offset] = left - 1
            return False
        del self.pending[offset]
        return True

    def committable(self) -> int | None:
        """The offset to commit: the oldest unsettled record, else one past the last consumed."""
        return next(iter(self.pending), self.next_offset)


@dataclass(frozen=True, eq=False)
class _Delivery:
    record: Any
    track: _PartitionTrack
    subscription: WebhookSubscription
    body: bytes
    event_id: str
    event_type: str


class _Lane:
    """One subscription's deliveries, one at a time in arrival order, behind its own circuit breaker."""

    def __init__(self, relay: WebhookRelayService, capacity: int) -> None:
        self.relay = relay
        self.capacity = capacity
        self.queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        self.held = 0  # deliveries queued or being attempted
        self.breaker = Breaker()
        self.task = asyncio.create_task(self._run())

    def offer(self, delivery: _Delivery) -> bool:
        """Queue the delivery, unless the lane already holds `capacity` events (then False)."""
        if self.held >= self.capacity:
            return False
        self.held += 1
        self.queue.put_nowait(delivery)
        return True

    async def _run(self) -> None:
        relay = self.relay
        while True:
            d = await self.queue.get()
            outcome = await relay.deliver(d.subscription, d.body, d.event_id, d.event_type, self.breaker)
            if outcome.interrupted:
                return
            if not outcome.delivered:
                letter = relay._webhook_dead_letter(d.record, d.subscription.account_id, outcome)
                if not await relay._dead_letter_until_written(letter, DEAD_LETTERS):
                    return
                relay.dead_lettered += 1
            self.held -= 1
            relay._settle(d.track, d.record.offset)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commit what is settled before a partition goes; start a partition afresh when it comes."""

    def __init__(self, relay: WebhookRelayService, consumer: AIOKafkaConsumer) -> None:
        self.relay = relay
        self.consumer = consumer
        self.tracks: dict[TopicPartition, _PartitionTrack] = {}

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.relay._commit(self.consumer, {tp: t for tp, t in self.tracks.items() if tp in revoked})
        for tp in revoked:
            self.tracks.pop(tp, None)  # its queued deliveries still go out; the next owner repeats them
            self.relay.progress.forget(tp.partition)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self.tracks[tp] = _PartitionTrack()


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
        backlog: int = 1000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        clock: Callable[[], float] = time.time,
        stuck_after_s: float = 300.0,
        stuck_retries: int = 5,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.group_id = group_id
        self.policy = policy or RetryPolicy()
        self.request_timeout_s = request_timeout_s
        self.consumers = consumers
        self.backlog = backlog
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.clock = clock
        self.catalog = WebhookSubscriptionCatalog(bootstrap, topics.webhook_subscriptions)
        self._stopping = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._producer: AIOKafkaProducer | None = None
        self._consumers: list[tuple[AIOKafkaConsumer, _Rebalance]] = []
        self._lanes: dict[str, _Lane] = {}
        self.delivered = 0  # records fully handled (delivered or dead-lettered), for status and tests
        self.progress = Progress("relay", stuck_after_s=stuck_after_s, max_retries=stuck_retries)
        self.dead_lettered = 0

    @classmethod
    def from_settings(cls, settings: Settings, bootstrap: str) -> WebhookRelayService:
        return cls(
            bootstrap,
            Topics(settings.topic_prefix),
            settings.relay_group_id or f"{settings.group_id}.webhook-relay",
            policy=RetryPolicy.from_settings(settings),
            request_timeout_s=settings.relay_request_timeout_s,
            consumers=settings.relay_consumers,
            backlog=settings.relay_subscriber_backlog,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            stuck_after_s=settings.stuck_after_s,
            stuck_retries=settings.stuck_retries,
        )

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            # No pool limit: lanes that hang until their timeout must not queue the other lanes' requests
            # (at most one request per lane is in flight).
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
            headers={"User-Agent": USER_AGENT},
        )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True
        )
        await self._producer.start()
        await self.catalog.start()
        for _ in range(self.consumers):
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=self.group_id,
                # The decider writes integration events in its transactions: never relay an aborted one.
                isolation_level="read_committed",
                auto_offset_reset="earliest",
                enable_auto_commit=False,  # committed only up to what every lane has settled
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=self.heartbeat_interval_ms,
            )
            await consumer.start()
            listener = _Rebalance(self, consumer)
            consumer.subscribe([self.topics.integration_events], listener=listener)
            self._consumers.append((consumer, listener))

    async def run(self, stop: asyncio.Event) -> None:
        loops = [asyncio.create_task(self._consume(c, listener)) for c, listener in self._consumers]
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stopped, *loops], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stopping.set()
            stopped.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            for loop in loops:
                if not loop.cancelled() and loop.exception() is not None:
                    raise loop.exception()  # type: ignore[misc]

    async def stop(self) -> None:
        self._stopping.set()
        lanes = [lane.task for lane in self._lanes.values()]
        for task in lanes:
            task.cancel()  # a lane between attempts has returned already; one mid-POST is cut short
        await asyncio.gather(*lanes, return_exceptions=True)
        self._lanes.clear()
        for consumer, listener in self._consumers:
            await self._commit(consumer, listener.tracks)  # what the lanes settled before the stop
            with contextlib.suppress(Exception):
                await consumer.stop()
        self._consumers.clear()
        await self.catalog.stop()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- the main path: consume, hand to lanes, commit what is settled --------------------------------

    async def _consume(self, consumer: AIOKafkaConsumer, listener: _Rebalance) -> None:
        while not self._stopping.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=200, max_records=100)
            except KafkaError as exc:
                self.progress.retried(FETCHING)
                log.warning("relay: fetching failed (%s); trying again", exc)
                await self._pause(1.0)
                continue
            self.progress.advanced(FETCHING)
            for tp, records in batch.items():
                track = listener.tracks.setdefault(tp, _PartitionTrack())
                for record in records:
                    # Handing a record to the lanes never waits for a delivery: a record in hand for
                    # long, or failing again and again, is the relay's own (catalog, dead letters).
                    self.progress.working(tp.partition)
                    if not await self._dispatch(track, record):
                        return  # stopping: nothing past the settled records is committed
                    self.progress.advanced(tp.partition)
            await self._commit(consumer, listener.tracks)

    async def _dispatch(self, track: _PartitionTrack, record: Any) -> bool:
        """Hand the record to the lane of each active subscription of its account (never waits for a
        delivery). False if the relay stopped first."""
        body: bytes | None = record.value
        try:
            event = integration_event_adapter.validate_json(body or b"")
        except ValidationError as exc:
            letter = DeadLetter.of(record, "not a valid integration event", exc, role="relay")
            if not await self._dead_letter_until_written(letter, record.partition, record.offset):
                return False
            self.dead_lettered += 1
            track.consumed(record.offset, 0)
            self.delivered += 1
            return True
        assert body is not None
        while True:  # the catalog is Kafka: retry it, in order, until it answers or we stop
            try:
                await self.catalog.catch_up()
                break
            except Exception:
                self.progress.retried(record.partition, record.offset)
                log.exception("relay: catching up on webhook subscriptions failed; retrying")
                if not await self._pause(self.policy.delay_after(1) or 1.0):
                    return False
        subscriptions = self.catalog.for_account(event.account_id)
        track.consumed(record.offset, len(subscriptions))
        if not subscriptions:
            self.delivered += 1
            return True
        for subscription in subscriptions:
            lane = self._lanes.get(subscription.key)
            if lane is None:
                lane = self._lanes[subscription.key] = _Lane(self, self.backlog)
            delivery = _Delivery(record, track, subscription, body, event.id, event.type)
            if lane.offer(delivery):
                continue
            # The lane is full (its URL has been failing for a long while): park this one durably.
            outcome = DeliveryOutcome(
                subscription.url,
                False,
                0,
                None,
                f"not attempted: {lane.held} earlier events wait for this URL (backlog full)",
            )
            letter = self._webhook_dead_letter(record, event.account_id, outcome)
            if not await self._dead_letter_until_written(letter, record.partition, record.offset):
                return False
            self.dead_lettered += 1
            self._settle(track, record.offset)
        return True

    def _settle(self, track: _PartitionTrack, offset: int) -> None:
        if track.settle(offset):
            self.delivered += 1

    async def _commit(
        self, consumer: AIOKafkaConsumer, tracks: dict[TopicPartition, _PartitionTrack]
    ) -> None:
        offsets = {}
        for tp, track in tracks.items():
            target = track.committable()
            if target is not None and target != track.committed:
                offsets[tp] = target
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:  # a rebalance: the next owner repeats (at least once)
            log.warning("relay: commit of %s failed: %s", offsets, exc)
            return
        for tp, offset in offsets.items():
            tracks[tp].committed = offset

    # --- one delivery -------------------------------------------------------------------------------

    async def deliver(
        self,
        subscription: WebhookSubscription,
        body: bytes,
        event_id: str,
        event_type: str,
        breaker: Breaker | None = None,
    ) -> DeliveryOutcome:
        """POST with retries: any 2xx is delivered; other statuses (3xx included: redirects are not
        followed), timeouts and connection errors are failed attempts. Each attempt waits first while
        the URL's breaker is open."""
        session = self._session
        assert session is not None, "start() the relay first"
        breaker = breaker or Breaker()
        status: int | None = None
        error = ""
        attempt = 0
        for attempt in range(1, self.policy.max_attempts + 1):
            if breaker.open and not await self._pause(self.policy.delay_after(breaker.failures)):
                return DeliveryOutcome(subscription.url, False, attempt - 1, status, error, interrupted=True)
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
                async with session.post(
                    subscription.url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    await response.read()
                if 200 <= status < 300:
                    breaker.failures = 0
                    return DeliveryOutcome(subscription.url, True, attempt, status, "")
                error = f"HTTP {status}"
                if 300 <= status < 400:
                    error += " (redirect not followed)"
            except TimeoutError:
                status, error = None, f"timeout after {self.request_timeout_s}s"
            except Exception as exc:  # ClientError, and a URL aiohttp cannot use (UnicodeError, ...)
                status, error = None, f"{type(exc).__name__}: {exc}"
            breaker.failures += 1
            log.info("webhook %s to %s failed (attempt %d): %s", event_id, subscription.url, attempt, error)
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

    async def _dead_letter_until_written(
        self, letter: DeadLetter, lane: Lane, offset: int | None = None
    ) -> bool:
        """Write the dead letter, retrying Kafka errors (each a failed attempt at `lane`, `offset` for
        /healthz); False if the relay stopped first."""
        while True:
            try:
                await self._dead_letter(letter)
                if lane == DEAD_LETTERS:
                    self.progress.advanced(DEAD_LETTERS)
                return True
            except KafkaError as exc:
                self.progress.retried(lane, offset)
                log.warning("relay: writing a dead letter failed (%s); retrying", exc)
                if not await self._pause(1.0):
                    return False

    async def _dead_letter(self, letter: DeadLetter) -> None:
        producer = self._producer
        assert producer is not None, "start() the relay first"
        await producer.send_and_wait(
            self.topics.dead_letters, letter.value, key=letter.key, headers=letter.headers
        )
