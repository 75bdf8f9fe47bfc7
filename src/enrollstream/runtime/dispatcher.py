"""The dispatcher: StepDispatched events in, one send per attempt, DeliveryReported commands out.

Per StepDispatched (read with `read_committed` in the consumer group `<group>.dispatcher`):

1. The delivery ledger (Postgres, projections/0008 and 0010) is asked about the attempt
   (enrollment, step, attempt):
   - no row, or a deferral of an earlier dispatch of the attempt: build the message and check the
     sender's rate limits. Over a limit, nothing starts: the row becomes `deferred` with the time the
     sender may send (`retry_at`) and that deferral is reported; the decider schedules the step again
     and it comes back as a new StepDispatched (the next `dispatch`). Within the limits: insert
     `started` and **commit it before connecting**, send, record the outcome;
   - a final row (sent / bounced / failed / unknown / error) or a deferral of this dispatch: nothing is
     sent; its report is published again (the command id is deterministic, so the decider drops it as
     a duplicate);
   - a `started` row: a crash happened somewhere inside that send. By policy (docs/delivery.md) it
     is never sent again: the row becomes `unknown` and `unknown` is reported.
2. The outcome goes to the commands topic as `DeliveryReported` (key `account/contact`, id
   `delivery:<message id>`, or `delivery-deferred:<message id>:<dispatch>` for a deferral), and only
   after the broker acknowledged it is the ledger row marked reported and the consumer offset
   committed. A crash anywhere repeats at most a report.

Records are processed one at a time, in order, per partition; partitions go side by side. Nothing
waits for a rate limit: a deferral is one ledger write and one report, so the other senders' and
channels' messages behind it on the partition keep flowing.

/healthz reports the dispatcher stuck (`Progress`, per partition) when one record has failed
`stuck_retries` times in a row (PostgreSQL away: the ledger cannot be read or written, so nothing is
sent) or has been in hand for longer than `stuck_after_s`. An outcome of the send (bounced, failed,
unknown) is the record done, not a failure of the role.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any, Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from pydantic import ValidationError

from enrollstream import observability as metrics
from enrollstream.adapters.kafka.reading import group_consumer
from enrollstream.adapters.kafka.records import DeadLetter, encode, key_bytes
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.mail.message import (
    HeaderInjectionRefused,
    InvalidAddress,
    SenderIdentity,
    TemplateFieldMissing,
    build_step_message,
    contact_fields,
    render,
)
from enrollstream.adapters.mail.smtp import SmtpConfig, SmtpSender
from enrollstream.adapters.postgres.errors import retry_while_unavailable
from enrollstream.adapters.postgres.queries import query
from enrollstream.adapters.sms import OutboundSmsTopicChannel, SmsChannel
from enrollstream.config import Settings, require_settings, unsubscribe_key_list
from enrollstream.domain import aggregate_key, parse_event
from enrollstream.domain.campaign import Channel
from enrollstream.domain.commands import (
    DeliveryOutcome,
    DeliveryReported,
    DeliveryReportedData,
    delivery_deferral_command_id,
    delivery_report_command_id,
)
from enrollstream.domain.delivery_policy import (
    SendLimits,
    SendOutcome,
    SendResult,
    next_send_at,
    report_fields,
)
from enrollstream.domain.events import StepDispatched
from enrollstream.observability import Progress

log = logging.getLogger(__name__)

SMS_SENDER = "sms"
LEDGER = "ledger.sql"
# A ledger state is the reported outcome; back to the transport's view for `report_fields`.
_STATE_TO_SEND = {
    DeliveryOutcome.SENT: SendOutcome.SENT,
    DeliveryOutcome.BOUNCED: SendOutcome.BOUNCED,
    DeliveryOutcome.FAILED: SendOutcome.TEMPORARY,
    DeliveryOutcome.UNKNOWN: SendOutcome.UNKNOWN,
    DeliveryOutcome.ERROR: SendOutcome.ERROR,
    DeliveryOutcome.INVALID_RECIPIENT: SendOutcome.INVALID_RECIPIENT,
}


class EmailTransport(Protocol):
    async def send(self, message: EmailMessage) -> SendResult: ...


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class _InFlight:
    """How many sends are between `started` and their outcome; `idle()` waits until none are."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self._count += 1
        self._idle.clear()

    def leave(self) -> None:
        self._count -= 1
        if self._count == 0:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


@dataclass(frozen=True)
class _Prepared:
    """What one attempt sends, or why it cannot be sent."""

    sender: str
    recipient: str
    message: EmailMessage | None = None
    sms_body: str | None = None
    message_id_header: str | None = None
    unusable: SendResult | None = None


class DispatcherService:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        database_url: str,
        group_id: str,
        *,
        email: EmailTransport,
        identity: SenderIdentity,
        limits: SendLimits | None = None,
        sms: SmsChannel | None = None,  # default: OutboundSmsTopicChannel on our producer
        clock: Clock = utc_now,
        max_batch: int = 100,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        stuck_after_s: float = 300.0,
        stuck_retries: int = 5,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.database_url = database_url
        self.group_id = f"{group_id}.dispatcher"
        self.progress = Progress("dispatcher", stuck_after_s=stuck_after_s, max_retries=stuck_retries)
        self.email = email
        self.identity = identity
        self.limits = limits or SendLimits()
        self.sms = sms
        self.clock = clock
        self.max_batch = max_batch
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._pool: asyncpg.Pool | None = None
        self._stop = asyncio.Event()
        # Sends between their `started` insert and their recorded outcome: a revocation waits until there
        # are none, so the next owner never finds a `started` row of a send still running here. Sends of
        # different partitions overlap (a lock here would make one instance send one message at a time).
        self._in_flight = _InFlight()
        # Counters for tests and logs.
        self.sends = 0
        self.reports = 0
        self.deferrals = 0  # dispatches deferred by a sender's rate limit

    @classmethod
    def from_settings(
        cls, settings: Settings, bootstrap: str, database_url: str, **kwargs: Any
    ) -> DispatcherService:
        require_settings(settings, ["dispatcher"])  # MissingSettings (a ValueError) names them
        assert settings.smtp_host and settings.sender_from
        # The unsubscribe endpoint accepts every listed key; messages are signed with the first one.
        signing_key = unsubscribe_key_list(settings)[0]
        smtp = SmtpSender(
            SmtpConfig(
                host=settings.smtp_host,
                port=settings.smtp_port,
                starttls=settings.smtp_starttls and not settings.smtp_implicit_tls,
                implicit_tls=settings.smtp_implicit_tls,
                username=settings.smtp_username,
                password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
                timeout=settings.smtp_timeout,
                validate_certs=settings.smtp_validate_certs,
                envelope_from=settings.smtp_envelope_from,
            )
        )
        identity = SenderIdentity(
            from_address=settings.sender_from,
            signing_key=signing_key,
            reply_to=settings.sender_reply_to,
            unsubscribe_url=settings.unsubscribe_url or None,
            unsubscribe_mailto=settings.unsubscribe_mailto or None,
            message_id_domain=settings.message_id_domain,
        )
        limits = SendLimits(per_hour=settings.sender_per_hour, per_day=settings.sender_per_day)
        return cls(
            bootstrap,
            Topics(settings.topic_prefix),
            database_url,
            settings.group_id,
            email=smtp,
            identity=identity,
            limits=limits,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            stuck_after_s=settings.stuck_after_s,
            stuck_retries=settings.stuck_retries,
            **kwargs,
        )

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=8)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True
        )
        await self._producer.start()
        if self.sms is None:
            self.sms = OutboundSmsTopicChannel(self._producer, self.topics, self.clock)
        self._consumer = group_consumer(
            self.bootstrap,
            self.group_id,
            max_poll_records=self.max_batch,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
        )
        await self._consumer.start()
        self._consumer.subscribe([self.topics.events], listener=_WaitForSends(self))

    async def stop(self) -> None:
        self._stop.set()
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
        assert consumer is not None, "start() the dispatcher first"
        watcher = asyncio.create_task(_forward(stop, self._stop))
        try:
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=self.max_batch)
                # Partitions side by side, each in order: one slow SMTP exchange holds back only its own
                # partition, and the sends of a batch overlap (each opens its own connection).
                await asyncio.gather(
                    *(self._process_partition(consumer, tp, records) for tp, records in batch.items())
                )
        finally:
            watcher.cancel()

    async def _process_partition(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[Any]
    ) -> None:
        done: int | None = None
        for record in records:
            if self._stop.is_set() or tp not in consumer.assignment():
                break
            self.progress.working(tp.partition)
            if not await self._handle_retrying(consumer, record, tp):
                break
            self.progress.advanced(tp.partition)
            done = record.offset + 1
        if done is not None:
            try:
                await consumer.commit({tp: done})
            except (CommitFailedError, KafkaError) as exc:  # a rebalance: the next owner re-reports
                log.warning("dispatcher: commit of %s at %d failed: %s", tp, done, exc)
        last = records[-1].offset + 1
        if (done or records[0].offset) < last and tp in consumer.assignment():
            consumer.seek(tp, done if done is not None else records[0].offset)  # read the rest again

    async def _handle_retrying(self, consumer: AIOKafkaConsumer, record: Any, tp: TopicPartition) -> bool:
        """`handle`, waiting out a lost PostgreSQL connection (the ledger makes a second try safe: an
        attempt started and not finished is reported unknown, never resent). False if stopped or
        revoked before it was handled."""

        def retrying(exc: BaseException) -> None:
            metrics.POSTGRES_RETRIES.labels("dispatcher").inc()
            self.progress.retried(tp.partition, record.offset)
            log.warning(
                "dispatcher: PostgreSQL unavailable (%s); trying %s offset %s again", exc, tp, record.offset
            )

        return await retry_while_unavailable(
            lambda: self.handle(record, tp), self._stop, retrying, lambda: tp in consumer.assignment()
        )

    # --- one record -----------------------------------------------------------------------------

    async def handle(self, record: Any, tp: TopicPartition | None = None) -> None:
        try:
            event = parse_event(record.value or b"")
        except (ValidationError, ValueError) as exc:
            log.error("dispatcher: undecodable event at %s offset %s: dead-lettered", tp, record.offset)
            await self._dead_letter(DeadLetter.of(record, "not a valid event", exc, role="dispatcher"))
            return
        if isinstance(event, StepDispatched):
            await self.dispatch(event)

    async def dispatch(self, event: StepDispatched) -> None:
        """Send the attempt once, or defer it, or recall what happened to it; report the outcome."""
        assert self._pool is not None and event.enrollment_id is not None
        d = event.data
        key = (event.enrollment_id, d.step_index, d.attempt)
        row = await self._pool.fetchrow(query("ledger_row", LEDGER), *key)
        if row is None or (row["state"] == "deferred" and row["dispatch"] < d.dispatch):
            row = await self._attempt(event)
            if row is None:  # another instance wrote the row between our read and our write
                row = await self._pool.fetchrow(query("ledger_row", LEDGER), *key)
                assert row is not None
        if row["state"] == "started":
            log.warning(
                "dispatcher: attempt %s (%s) was started at %s and has no outcome: a restart inside "
                "the send; reported unknown, never resent",
                key,
                row["message_id"],
                row["started_at"].isoformat(),
            )
            row = await self._finish(
                key,
                SendResult(
                    SendOutcome.UNKNOWN,
                    f"the attempt was started at {row['started_at'].isoformat()} and its outcome was "
                    "never recorded (the dispatcher stopped inside the send); not resent by policy",
                ),
            )
        await self._report(row, d.dispatch)

    async def _attempt(self, event: StepDispatched) -> Mapping[str, Any] | None:
        """The first processing of this dispatch: its final or deferred ledger row, or None if another
        instance wrote the row first."""
        assert self._pool is not None and event.enrollment_id is not None
        d = event.data
        key = (event.enrollment_id, d.step_index, d.attempt)
        prepared = self._prepare(event)
        values = (
            *key,
            d.message_id,
            prepared.message_id_header,
            event.account_id,
            event.contact_id,
            d.channel.value,
            prepared.sender,
            prepared.recipient,
        )
        if prepared.unusable is not None:
            result = prepared.unusable
            log.warning("dispatcher: attempt %s not sendable: %s", key, result.detail)
            now = self.clock()
            inserted = await self._pool.fetchval(
                query("insert_final", LEDGER),
                *values,
                _state(result),
                result.retryable,
                result.detail,
                result.code,
                result.provider_message_id,
                now,
                d.dispatch,
            )
            if inserted is None:
                return None
            final: Mapping[str, Any] | None = await self._pool.fetchrow(query("ledger_row", LEDGER), *key)
            assert final is not None
            return final
        self._in_flight.enter()
        try:
            row = await self._start(values, prepared.sender, d.dispatch)
            if row is None or row["state"] != "started":
                return row  # another instance's row (None), or a deferral: nothing was started
            self.sends += 1
            result = await self._send(prepared, d.message_id)
            log.info("dispatcher: attempt %s -> %s (%s)", key, result.outcome.value, result.detail)
            return await self._finish(key, result)
        finally:
            self._in_flight.leave()

    async def _start(self, values: tuple[Any, ...], sender: str, dispatch: int) -> Mapping[str, Any] | None:
        """Within the sender's limits: insert `started`. Over them: insert `deferred` with the time
        the sender may send again; nothing waits. None if another instance's row is there already."""
        assert self._pool is not None
        windows = self.limits.windows
        async with self._pool.acquire() as conn, conn.transaction():
            now = self.clock()
            at = now
            if windows and sender != SMS_SENDER:
                await conn.execute(query("lock_sender", LEDGER), sender)
                since = now - max(w.window for w in windows)
                recent = await conn.fetch(query("sender_sends_since", LEDGER), sender, since)
                at = next_send_at([r["started_at"] for r in recent], now, self.limits)
            if at <= now:
                row: Mapping[str, Any] | None = await conn.fetchrow(
                    query("insert_started", LEDGER), *values, now, dispatch
                )
                return row
            deferred: Mapping[str, Any] | None = await conn.fetchrow(
                query("insert_deferred", LEDGER),
                *values,
                f"sender {sender} is at its rate limit until {at.isoformat()}",
                now,
                dispatch,
                at,
            )
            if deferred is not None:
                self.deferrals += 1
                metrics.SENDS.labels(values[7], "deferred").inc()
                log.info(
                    "dispatcher: sender %s is at its limit; %s deferred until %s", sender, values[:3], at
                )
            return deferred

    def _prepare(self, event: StepDispatched) -> _Prepared:
        d = event.data
        assert event.enrollment_id is not None
        if d.channel is Channel.SMS:
            try:
                body = render(d.content.body, contact_fields(d.contact_name, ""))
            except TemplateFieldMissing as exc:
                return _Prepared(SMS_SENDER, d.to, unusable=SendResult(SendOutcome.ERROR, f"template: {exc}"))
            return _Prepared(SMS_SENDER, d.to, sms_body=body)
        sender = parseaddr(self.identity.from_address)[1].lower()
        try:
            message = build_step_message(
                sender=self.identity,
                account_id=event.account_id,
                contact_id=event.contact_id,
                enrollment_id=event.enrollment_id,
                step=d,
                date=self.clock(),
            )
        except InvalidAddress as exc:
            # The contact's address, not ours: no attempt can reach it (the enrollment fails).
            outcome = SendOutcome.INVALID_RECIPIENT if exc.header == "To" else SendOutcome.ERROR
            return _Prepared(sender, d.to, unusable=SendResult(outcome, f"message: InvalidAddress: {exc}"))
        except (HeaderInjectionRefused, TemplateFieldMissing, ValueError) as exc:
            kind = type(exc).__name__
            return _Prepared(sender, d.to, unusable=SendResult(SendOutcome.ERROR, f"message: {kind}: {exc}"))
        return _Prepared(sender, d.to, message=message, message_id_header=str(message["Message-ID"]))

    async def _send(self, prepared: _Prepared, message_id: str) -> SendResult:
        if prepared.message is not None:
            return await self.email.send(prepared.message)
        assert self.sms is not None and prepared.sms_body is not None
        return await self.sms.send(prepared.recipient, prepared.sms_body, message_id)

    async def _finish(self, key: tuple[str, int, int], result: SendResult) -> Mapping[str, Any]:
        assert self._pool is not None
        row: Mapping[str, Any] | None = await self._pool.fetchrow(
            query("finish", LEDGER),
            *key,
            _state(result),
            result.retryable,
            result.detail,
            result.code,
            result.provider_message_id,
            self.clock(),
        )
        if row is None:  # no longer `started`: someone else recorded an outcome first; theirs stands
            row = await self._pool.fetchrow(query("ledger_row", LEDGER), *key)
            log.warning("dispatcher: attempt %s already had the outcome %s", key, row and row["state"])
        assert row is not None
        metrics.SENDS.labels(row["channel"], row["state"]).inc()
        return row

    async def _report(self, row: Mapping[str, Any], dispatch: int) -> None:
        """Publish the row's DeliveryReported and wait for the broker's ack; then mark it reported.

        A deferral is reported for the dispatch it deferred. A final outcome is the attempt's, whichever
        dispatch sent it: it is reported for the dispatch at hand too (never older than the row's), so
        the dispatch the decider has in flight always gets it."""
        assert self._producer is not None and self._pool is not None
        state = DeliveryOutcome(row["state"])
        if state is DeliveryOutcome.DEFERRED:
            reported_dispatch = row["dispatch"]
            command_id = delivery_deferral_command_id(row["message_id"], reported_dispatch)
            fields: dict[str, object] = {
                "outcome": state,
                "detail": row["detail"],
                "retry_at": row["retry_at"],
            }
        else:
            reported_dispatch = max(row["dispatch"], dispatch)
            command_id = delivery_report_command_id(row["message_id"])
            fields = report_fields(
                SendResult(_STATE_TO_SEND[state], row["detail"], row["code"], row["provider_message_id"])
            )
        command = DeliveryReported(
            command_id=command_id,
            account_id=row["account_id"],
            issued_at=row["finished_at"],  # from the ledger: a re-report is the same command
            actor="dispatcher",
            data=DeliveryReportedData.model_validate(
                {
                    "contact_id": row["contact_id"],
                    "enrollment_id": row["enrollment_id"],
                    "step_index": row["step_index"],
                    "attempt": row["attempt"],
                    "dispatch": reported_dispatch,
                    **fields,
                }
            ),
        )
        await self._producer.send_and_wait(
            self.topics.commands,
            encode(command),
            key=key_bytes(aggregate_key(row["account_id"], row["contact_id"])),
        )
        self.reports += 1
        await self._pool.execute(
            query("mark_reported", LEDGER),
            row["enrollment_id"],
            row["step_index"],
            row["attempt"],
            self.clock(),
            row["state"],
            row["dispatch"],
        )

    async def _dead_letter(self, letter: DeadLetter) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(
            self.topics.dead_letters, letter.value, key=letter.key, headers=letter.headers
        )


def _state(result: SendResult) -> str:
    """The ledger state (= the reported outcome) of a result."""
    outcome = report_fields(result)["outcome"]
    assert isinstance(outcome, DeliveryOutcome)
    return outcome.value


async def _forward(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


class _WaitForSends(ConsumerRebalanceListener):  # type: ignore[misc]
    """A partition is handed over only when no send of ours is between `started` and its outcome."""

    def __init__(self, service: DispatcherService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.service._in_flight.idle()
        for tp in revoked:
            self.service.progress.forget(tp.partition)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None
