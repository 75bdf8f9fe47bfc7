"""The inbound role: received email in, `ReplyDetected` (or `BounceDetected`) for the enrollment it answers.

Reads `InboundEmailReceived` records from the `inbound-email` topic (consumer group `<group>.inbound`),
published by the `receiver` role (runtime/receiver.py: SMTP listener, IMAP poller) or any other relay.
Per record (docs/delivery.md "Receiving replies"):

- not a valid `InboundEmailReceived` -> dead-letter topic, reason `not a valid InboundEmailReceived`
  (a broken record, not mail);
- a delivery status notification (`delivery_status` set: multipart/report; report-type=delivery-status)
  about one of this account's messages -> `BounceDetected` (hard for 5.x.x, soft for 4.x.x; id
  `dsn:<inbound Message-ID>`); a report of a delivery (2.x.x) is no bounce: counted, nothing published;
- an auto-reply (`domain.inbound.auto_reply_reason`: Auto-Submitted, Precedence, X-Autoreply,
  X-Autorespond, weak signals two together) -> not a reply: counted, logged, nothing published;
- none of its `In-Reply-To` / `References` ids (for a DSN: the reported message's id) is a Message-ID
  this account sent (the delivery ledger; another account's never matches) -> kept for inspection in
  the bounded `inbound_unmatched` table and counted, not dead-lettered;
- otherwise `ReplyDetected` (id `reply:<inbound Message-ID>`, so a redelivered record is a duplicate)
  for the matched enrollment, on the commands topic keyed `account/contact`.

Offsets are committed after what a record produced was acknowledged (at least once; the command ids
and the inspection table's one row per message make repeats recognisable).

/healthz reports the role stuck (`Progress`, per partition) when one record has failed `stuck_retries`
times in a row (PostgreSQL away: the ledger cannot be asked) or has been in hand for longer than
`stuck_after_s`. A record that matches nothing is kept, i.e. done.
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
from enrollstream.domain.commands import (
    BounceDetected,
    BounceDetectedData,
    ReplyDetected,
    ReplyDetectedData,
)
from enrollstream.domain.inbound import (
    InboundEmailReceived,
    auto_reply_reason,
    bounce_command_id,
    bounce_of,
    dsn_referenced_message_ids,
    printable,
    referenced_message_ids,
    reply_command_id,
)
from enrollstream.observability import Progress

log = logging.getLogger(__name__)

ROLE = "inbound"
UNMATCHED_MAX_ROWS = 10_000  # the inspection table's default bound (ENROLLSTREAM_INBOUND_UNMATCHED_MAX_ROWS)
UNMATCHED_RECORD_CHARS = 16_384  # of one kept message's record


async def keep_unmatched(
    pool: asyncpg.Pool, email: InboundEmailReceived, account_id: str | None, reason: str, max_rows: int
) -> bool:
    """Keep a received message that matched nothing in `inbound_unmatched` (one row per account and
    Message-ID; the newest `max_rows` kept). False if it was kept already."""
    async with pool.acquire() as conn, conn.transaction():
        kept = await conn.fetchval(
            query("keep_unmatched", "inbound.sql"),
            account_id,
            email.message_id,
            reason[:1000],
            email.from_[:1000],
            email.subject[:1000],
            email.received_at,
            email.model_dump_json(by_alias=True)[:UNMATCHED_RECORD_CHARS],
        )
        if kept is not None:
            await conn.execute(query("prune_unmatched", "inbound.sql"), max_rows)
    return kept is not None


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
        unmatched_max_rows: int = UNMATCHED_MAX_ROWS,
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
        self.unmatched_max_rows = unmatched_max_rows
        self.replies = 0
        self.bounces = 0
        self.auto_replies = 0
        self.unmatched = 0
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
        if email.delivery_status is not None:
            await self._handle_delivery_status(email)
            return
        reason = auto_reply_reason(email)
        if reason is not None:
            self.auto_replies += 1
            metrics.INBOUND_AUTO_REPLIES.labels(reason.split(":", 1)[0]).inc()
            log.info("inbound: %s is not a reply: %s", email.message_id, reason)
            return
        candidates = referenced_message_ids(email)
        if not candidates:
            await self._keep(email, "reply", "no In-Reply-To or References")
            return
        match = await self._match(email, candidates)
        if match is None:
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
                excerpt=printable(email.subject, 200),
            ),
        )
        await self._publish(command, email.account_id, match["contact_id"])
        self.replies += 1
        log.info("inbound: %s is a reply to enrollment %s", email.message_id, match["enrollment_id"])

    async def _handle_delivery_status(self, email: InboundEmailReceived) -> None:
        """A DSN: a bounce of the message it reports on, when that is one of this account's."""
        assert email.delivery_status is not None
        bounce = bounce_of(email.delivery_status)
        if bounce is None:
            self.auto_replies += 1
            metrics.INBOUND_AUTO_REPLIES.labels("delivery report").inc()
            log.info("inbound: %s reports a delivery, not a failure", email.message_id)
            return
        candidates = dsn_referenced_message_ids(email)
        if not candidates:
            await self._keep(email, "dsn", "delivery status notification naming no Message-ID")
            return
        match = await self._match(email, candidates, kind="dsn")
        if match is None:
            return
        bounce_type, detail = bounce
        command = BounceDetected(
            command_id=bounce_command_id(email.message_id),
            account_id=email.account_id,
            issued_at=email.received_at,
            actor=ROLE,
            data=BounceDetectedData(
                contact_id=match["contact_id"],
                enrollment_id=match["enrollment_id"],
                bounce_type=bounce_type,
                step_index=match["step_index"],
                detail=printable(f"DSN {email.message_id}: {detail}", 1000),
            ),
        )
        await self._publish(command, email.account_id, match["contact_id"])
        self.bounces += 1
        log.info(
            "inbound: %s reports a %s bounce of enrollment %s",
            email.message_id,
            bounce_type.value,
            match["enrollment_id"],
        )

    async def _match(
        self, email: InboundEmailReceived, candidates: list[str], kind: str = "reply"
    ) -> Any | None:
        """The ledger row of the first candidate this account sent; None (the message kept for
        inspection) when there is none. Another account's Message-ID never matches: accounts are walls."""
        assert self._pool is not None
        rows = await self._pool.fetch(query("match_message_ids", "ledger.sql"), candidates)
        ours = {row["message_id_header"]: row for row in rows if row["account_id"] == email.account_id}
        match = next((ours[c] for c in candidates if c in ours), None)
        if match is not None:
            return match
        foreign = [row["message_id_header"] for row in rows]
        if foreign:
            reason = f"{foreign[0]} was sent by another account"
        else:
            reason = f"none of {', '.join(candidates)[:500]} is a Message-ID we sent"
        await self._keep(email, kind, reason)
        return None

    async def _keep(self, email: InboundEmailReceived, kind: str, reason: str) -> None:
        assert self._pool is not None
        await keep_unmatched(self._pool, email, email.account_id, reason, self.unmatched_max_rows)
        self.unmatched += 1
        metrics.INBOUND_UNMATCHED.labels(kind).inc()
        log.info("inbound: %s matched nothing, kept for inspection: %s", email.message_id, reason)

    async def _publish(
        self, command: ReplyDetected | BounceDetected, account_id: str, contact_id: str
    ) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(
            self.topics.commands, encode(command), key=key_bytes(aggregate_key(account_id, contact_id))
        )

    async def _dead_letter(self, record: Any, reason: str, error: BaseException | None = None) -> None:
        assert self._producer is not None
        letter = DeadLetter.of(record, reason, error, role=ROLE)
        await self._producer.send_and_wait(
            self.topics.dead_letters, letter.value, key=letter.key, headers=letter.headers
        )
        self.dead_letters += 1
        log.warning("inbound: dead-lettered offset %s of %s: %s", record.offset, record.topic, reason)
