"""The inbound role: received email in, `ReplyDetected` for the enrollment it answers.

Reads `InboundEmailReceived` records from the `inbound-email` topic (consumer group `<group>.inbound`).
Per record:

- not a valid `InboundEmailReceived` -> dead-letter topic, reason `not a valid InboundEmailReceived`;
- none of its `In-Reply-To` / `References` ids is a Message-ID of ours (the delivery ledger), or the
  one it names belongs to another account -> dead-letter topic, reason `unmatched: ...`;
- `Auto-Submitted` present and not `no` (RFC 3834: vacation notices, auto-replies) -> not a reply,
  logged with the reason, nothing published;
- otherwise `ReplyDetected` (id `reply:<inbound Message-ID>`, so a redelivered record is a duplicate)
  for the matched enrollment, on the commands topic keyed `account/contact`.

Offsets are committed after what a record produced was acknowledged (at least once; the command id
and the dead letter's original offset make repeats recognisable).

/healthz reports the role stuck (`Progress`, per partition) when one record has failed `stuck_retries`
times in a row (PostgreSQL away: the ledger cannot be asked) or has been in hand for longer than
`stuck_after_s`. A record that matches nothing is a dead letter, i.e. done.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, KafkaError
from pydantic import ValidationError

from enrollstream import observability as metrics
from enrollstream.adapters.kafka.reading import group_consumer
from enrollstream.adapters.kafka.records import DeadLetter, encode, key_bytes
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.postgres.errors import retry_while_unavailable
from enrollstream.adapters.postgres.queries import query
from enrollstream.domain import aggregate_key
from enrollstream.domain.commands import ReplyDetected, ReplyDetectedData
from enrollstream.domain.inbound import (
    InboundEmailReceived,
    auto_reply_reason,
    referenced_message_ids,
    reply_command_id,
)
from enrollstream.observability import Progress

log = logging.getLogger(__name__)

ROLE = "inbound"


class InboundService:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        database_url: str,
        group_id: str,
        *,
        max_batch: int = 200,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        stuck_after_s: float = 300.0,
        stuck_retries: int = 5,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.database_url = database_url
        self.group_id = f"{group_id}.inbound"
        self.max_batch = max_batch
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._pool: asyncpg.Pool | None = None
        self.replies = 0
        self.auto_replies = 0
        self.dead_letters = 0
        self.progress = Progress(ROLE, stuck_after_s=stuck_after_s, max_retries=stuck_retries)

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=2)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True
        )
        await self._producer.start()
        self._consumer = group_consumer(
            self.bootstrap,
            self.group_id,
            self.topics.inbound_email,
            max_poll_records=self.max_batch,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        assert consumer is not None, "start() the inbound role first"
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=self.max_batch)
            for tp, records in batch.items():
                done: int | None = None
                for record in records:
                    self.progress.working(tp.partition)
                    if not await self._handle_retrying(record, stop):
                        break
                    self.progress.advanced(tp.partition)
                    done = record.offset + 1
                if done is not None:
                    try:
                        await consumer.commit({tp: done})
                    except (CommitFailedError, KafkaError) as exc:
                        log.warning("inbound: commit of %s failed: %s", tp, exc)
                if done != records[-1].offset + 1 and tp in consumer.assignment():
                    consumer.seek(tp, done if done is not None else records[0].offset)

    async def _handle_retrying(self, record: Any, stop: asyncio.Event) -> bool:
        """`handle`, waiting out a lost PostgreSQL connection; False if stopped before it was handled."""

        def retrying(exc: BaseException) -> None:
            metrics.POSTGRES_RETRIES.labels(ROLE).inc()
            self.progress.retried(record.partition, record.offset)
            log.warning("inbound: PostgreSQL unavailable (%s); trying offset %s again", exc, record.offset)

        return await retry_while_unavailable(lambda: self.handle(record), stop, retrying)

    async def handle(self, record: Any) -> None:
        try:
            email = InboundEmailReceived.model_validate_json(record.value or b"")
        except ValidationError as exc:
            await self._dead_letter(record, "not a valid InboundEmailReceived", exc)
            return
        candidates = referenced_message_ids(email)
        if not candidates:
            await self._dead_letter(record, "unmatched: no In-Reply-To or References")
            return
        assert self._pool is not None
        rows = await self._pool.fetch(query("match_message_ids", "ledger.sql"), candidates)
        by_header = {row["message_id_header"]: row for row in rows}
        match = next((by_header[c] for c in candidates if c in by_header), None)
        if match is None:
            await self._dead_letter(
                record, f"unmatched: none of {', '.join(candidates)[:500]} is a Message-ID we sent"
            )
            return
        if match["account_id"] != email.account_id:
            await self._dead_letter(
                record, f"unmatched: {match['message_id_header']} was sent by another account"
            )
            return
        reason = auto_reply_reason(email)
        if reason is not None:
            self.auto_replies += 1
            log.info(
                "inbound: %s answers %s (enrollment %s) but is not a reply: %s",
                email.message_id,
                match["message_id_header"],
                match["enrollment_id"],
                reason,
            )
            return
        command = ReplyDetected(
            command_id=reply_command_id(email.message_id),
            account_id=email.account_id,
            issued_at=email.received_at,
            actor=ROLE,
            data=ReplyDetectedData(
                contact_id=match["contact_id"],
                enrollment_id=match["enrollment_id"],
                replied_at=email.received_at,
                inbound_message_id=email.message_id,
                excerpt=email.subject[:200],
            ),
        )
        assert self._producer is not None
        await self._producer.send_and_wait(
            self.topics.commands,
            encode(command),
            key=key_bytes(aggregate_key(email.account_id, match["contact_id"])),
        )
        self.replies += 1
        log.info("inbound: %s is a reply to enrollment %s", email.message_id, match["enrollment_id"])

    async def _dead_letter(self, record: Any, reason: str, error: BaseException | None = None) -> None:
        assert self._producer is not None
        letter = DeadLetter.of(record, reason, error, role=ROLE)
        await self._producer.send_and_wait(
            self.topics.dead_letters, letter.value, key=letter.key, headers=letter.headers
        )
        self.dead_letters += 1
        log.warning("inbound: dead-lettered offset %s of %s: %s", record.offset, record.topic, reason)
