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

Records come in poll batches (all the partitions owned, up to `max_batch`): one ledger read, chunks
of `started` rows each committed before any of its content goes out, the sends side by side over the
SMTP connection pool, outcomes written as the sends end; then, while the next batch sends, all reports
published and acknowledged, one `mark_reported`, one offset commit, batches settling in order
(docs/delivery.md, "Batches"). Nothing waits for a rate limit: a
deferral is a ledger row and a report, so the other senders' and channels' messages keep flowing.

/healthz reports the dispatcher stuck (`Progress`, per partition) when one record has failed
`stuck_retries` times in a row (PostgreSQL away: the ledger cannot be read or written, so nothing is
sent) or has been in hand for longer than `stuck_after_s`. An outcome of the send (bounced, failed,
unknown) is the record done, not a failure of the role.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
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
    WireMessage,
    build_step_wire_message,
    contact_fields,
    render,
)
from enrollstream.adapters.mail.smtp import SmtpConfig, SmtpSender
from enrollstream.adapters.postgres.errors import is_connection_error, retry_while_unavailable
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
    WindowLimit,
    WindowRanks,
    next_send_at_ranked,
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
    async def send(self, message: WireMessage) -> SendResult: ...


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
class _Settling:
    """A batch whose sends have all ended, being reported and committed (`_settle`) in the background."""

    task: asyncio.Task[None]
    first: dict[TopicPartition, int]  # its first offset per partition: read again from here if it fails


@dataclass(frozen=True)
class _Begun:
    """A chunk's ledger rows as `_start` wrote them: the sends to make, and the rows already final
    (an unusable message) or deferred."""

    started: list[tuple[Mapping[str, Any], _Prepared]]
    written: list[Mapping[str, Any]]


@dataclass(frozen=True)
class _Prepared:
    """What one attempt sends, or why it cannot be sent."""

    sender: str
    recipient: str
    message: WireMessage | None = None
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
        max_batch: int = 500,
        start_ahead: int = 32,
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
        self._identities: dict[str, SenderIdentity] = {}  # per account (a Reply-To naming the account)
        self._sender_key = parseaddr(identity.from_address)[1].lower()  # the rate-limit key
        self.limits = limits or SendLimits()
        self.sms = sms
        self.clock = clock
        self.max_batch = max_batch
        if start_ahead < 1:
            raise ValueError("start_ahead must be at least 1")
        self.start_ahead = start_ahead
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
        self.assigned = asyncio.Event()  # set once the group gave this instance its partitions
        # Counters for tests and logs.
        self.sends = 0
        self.reports = 0
        self.deferrals = 0  # dispatches deferred by a sender's rate limit

    def _identity_of(self, account_id: str) -> SenderIdentity:
        identity = self._identities.get(account_id)
        if identity is None:
            if len(self._identities) >= 10_000:  # bounded: accounts beyond it are built again
                self._identities.clear()
            identity = self._identities[account_id] = self.identity.for_account(account_id)
        return identity

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
            open_tracking_url=settings.open_tracking_url or None,
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
        if isinstance(self.email, SmtpSender):
            await self.email.aclose()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def assignment(self) -> set[int]:
        """The partitions of the events topic this instance owns now."""
        return {tp.partition for tp in self._consumer.assignment()} if self._consumer is not None else set()

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        assert consumer is not None, "start() the dispatcher first"
        watcher = asyncio.create_task(_forward(stop, self._stop))
        settling: _Settling | None = None  # the last batch's reports and offset commit, still running
        try:
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=self.max_batch)
                if batch:
                    settling = await self._process_batch(consumer, batch, settling)
                elif settling is not None:  # nothing new to send beside it: wait for it here
                    self._rewind(consumer, {} if await self._settled(settling) else settling.first)
                    settling = None
            if settling is not None:  # a clean stop reports and commits what it sent
                self._rewind(consumer, {} if await self._settled(settling) else settling.first)
                settling = None
        finally:
            if settling is not None:  # cancelled or failed: not committed, read again by the next owner
                settling.task.cancel()
            watcher.cancel()

    async def _process_batch(
        self,
        consumer: AIOKafkaConsumer,
        batch: Mapping[TopicPartition, list[Any]],
        previous: _Settling | None,
    ) -> _Settling | None:
        """One poll batch, all its partitions together: the ledger read, the `started` inserts, the
        outcomes and the reports are one statement (or one round of acks) each for the whole batch;
        the sends overlap over the SMTP connection pool.

        The batch's reports, `mark_reported` and offset commit run in the background (the answer)
        while the next batch sends: every row they report is final already. Offsets are committed in
        order: this batch settles only after `previous` did, and not at all if `previous` failed
        (both are read again from `previous`'s offsets; their rows are final, so they are reported
        again, never sent again)."""

        def owned() -> dict[TopicPartition, list[Any]]:
            return {tp: rs for tp, rs in batch.items() if tp in consumer.assignment()}

        def retrying(exc: BaseException) -> None:
            metrics.POSTGRES_RETRIES.labels("dispatcher").inc()
            for tp, records in owned().items():
                self.progress.retried(tp.partition, records[0].offset)
            log.warning("dispatcher: PostgreSQL unavailable (%s); trying the batch again", exc)

        for tp in owned():
            self.progress.working(tp.partition)
        # A partition revoked while PostgreSQL is away is left to its next owner; the rest go on.
        handled: dict[TopicPartition, list[Any]] = {}
        reports: list[tuple[Mapping[str, Any], int]] = []

        async def work() -> None:
            handled.clear()
            handled.update(owned())
            reports[:] = await self._handle_records(handled)

        try:
            done = await retry_while_unavailable(work, self._stop, retrying, lambda: bool(owned()))
        except BaseException:
            if previous is not None:
                previous.task.cancel()  # not committed: read again from its offsets by the next owner
            raise
        rewind = {tp: rs[0].offset for tp, rs in batch.items() if not done or tp not in handled}
        if previous is not None and not await self._settled(previous):
            # This batch's offsets may not be committed past the previous one's: read both again.
            rewind = {tp: rs[0].offset for tp, rs in batch.items()} | previous.first
            done = False
        self._rewind(consumer, rewind)
        if not done:
            return None
        for tp in handled:  # `_settled` restarted the clock of the partitions it settled
            self.progress.working(tp.partition)
        return _Settling(
            asyncio.create_task(self._settle(consumer, handled, reports)),
            {tp: rs[0].offset for tp, rs in handled.items()},
        )

    async def _settle(
        self,
        consumer: AIOKafkaConsumer,
        handled: Mapping[TopicPartition, list[Any]],
        reports: list[tuple[Mapping[str, Any], int]],
    ) -> None:
        """A batch whose sends have all ended: publish its reports, wait for their acks, mark them
        reported, commit its offsets."""
        await self._report(reports)
        offsets = {tp: rs[-1].offset + 1 for tp, rs in handled.items() if tp in consumer.assignment()}
        if offsets:
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:  # a rebalance: the next owner re-reports
                log.warning("dispatcher: commit of %s failed: %s", offsets, exc)

    async def _settled(self, settling: _Settling) -> bool:
        """Wait for a batch's `_settle`: True once it is reported and committed, False if PostgreSQL
        was unavailable for `mark_reported` (the caller reads the batch again); anything else is
        raised, as a failed report always was."""
        try:
            await settling.task
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            metrics.POSTGRES_RETRIES.labels("dispatcher").inc()
            for tp, offset in settling.first.items():
                self.progress.retried(tp.partition, offset)
            log.warning(
                "dispatcher: PostgreSQL unavailable for a batch's reports (%s); reading it again", exc
            )
            return False
        for tp in settling.first:
            self.progress.advanced(tp.partition)
        return True

    @staticmethod
    def _rewind(consumer: AIOKafkaConsumer, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if tp in consumer.assignment():
                consumer.seek(tp, offset)  # read them again

    async def _handle_records(
        self, batch: Mapping[TopicPartition, list[Any]]
    ) -> list[tuple[Mapping[str, Any], int]]:
        """The batch's sends, every outcome recorded; its reports are the answer (not published)."""
        dispatched: list[StepDispatched] = []
        for tp, records in batch.items():
            for record in records:
                try:
                    event = parse_event(record.value or b"")
                except (ValidationError, ValueError) as exc:
                    log.error(
                        "dispatcher: undecodable event at %s offset %s: dead-lettered", tp, record.offset
                    )
                    await self._dead_letter(
                        DeadLetter.of(record, "not a valid event", exc, role="dispatcher")
                    )
                    continue
                if isinstance(event, StepDispatched):
                    dispatched.append(event)
        return await self._send_batch(dispatched)

    # --- a batch of StepDispatched --------------------------------------------------------------

    async def dispatch(self, event: StepDispatched) -> None:
        """Send the attempt once, or defer it, or recall what happened to it; report the outcome."""
        await self.dispatch_batch([event])

    async def dispatch_batch(self, events: list[StepDispatched]) -> None:
        """`dispatch` for each event."""
        await self._report(await self._send_batch(events))

    async def _send_batch(self, events: list[StepDispatched]) -> list[tuple[Mapping[str, Any], int]]:
        """Each event sent once, deferred or recalled, its row final or deferred: the rows to report,
        in order, with the dispatch each answers. Events of one attempt are taken in turns, in order
        (a topic read from the start holds a deferred dispatch and the next one of the same attempt)."""
        reports: list[tuple[Mapping[str, Any], int]] = []
        wave: list[StepDispatched] = []
        keys: set[_Key] = set()
        for event in events:
            key = _key(event)
            if key in keys:
                reports += await self._dispatch_wave(wave)
                wave, keys = [], set()
            wave.append(event)
            keys.add(key)
        if wave:
            reports += await self._dispatch_wave(wave)
        return reports

    async def _dispatch_wave(self, events: list[StepDispatched]) -> list[tuple[Mapping[str, Any], int]]:
        """Events of distinct attempts: one ledger read, one write per kind of row, the sends side by
        side, the outcomes; the rows to report."""
        assert self._pool is not None
        keys = [_key(e) for e in events]
        rows = await self._rows(keys)
        fresh = [
            e
            for e, key in zip(events, keys, strict=True)
            if (row := rows.get(key)) is None
            or (row["state"] == "deferred" and row["dispatch"] < e.data.dispatch)
        ]
        outcomes: dict[_Key, SendResult] = {}
        for key, row in rows.items():
            if row["state"] == "started":
                log.warning(
                    "dispatcher: attempt %s (%s) was started at %s and has no outcome: a restart inside "
                    "the send; reported unknown, never resent",
                    key,
                    row["message_id"],
                    row["started_at"].isoformat(),
                )
                outcomes[key] = SendResult(
                    SendOutcome.UNKNOWN,
                    f"the attempt was started at {row['started_at'].isoformat()} and its outcome was "
                    "never recorded (the dispatcher stopped inside the send); not resent by policy",
                )
        # What is reported as found: final rows and deferrals of this dispatch or later. The others
        # are written now (or were by another instance first: read again below).
        rows = {k: r for k, r in rows.items() if k not in outcomes}
        for e in fresh:
            rows.pop(_key(e), None)
        if fresh:
            self._in_flight.enter()
            try:
                rows.update(await self._attempt(fresh, outcomes))
            finally:
                self._in_flight.leave()
        else:
            rows.update(await self._finish(outcomes))
        missing = [key for key in keys if key not in rows]  # another instance wrote them first
        if missing:
            rows.update(await self._rows(missing))
        return [(rows[key], e.data.dispatch) for e, key in zip(events, keys, strict=True)]

    async def _rows(self, keys: list[_Key]) -> dict[_Key, Mapping[str, Any]]:
        assert self._pool is not None
        found = await self._pool.fetch(query("ledger_rows", LEDGER), *_columns(keys, 3))
        return {(r["enrollment_id"], r["step_index"], r["attempt"]): r for r in found}

    async def _attempt(
        self, events: list[StepDispatched], outcomes: dict[_Key, SendResult]
    ) -> dict[_Key, Mapping[str, Any]]:
        """The first processing of these dispatches: their final or deferred rows (those another
        instance wrote first are missing). `outcomes` (of rows found `started`) are finished first."""
        rows: dict[_Key, Mapping[str, Any]] = {}
        # The content may go out only once its `started` row is committed. Rows are started in chunks
        # of `start_ahead` (each chunk's messages built just before it, so the pool is not idle while
        # the whole batch is built), the next chunk while the sends of the last ones run (so the SMTP
        # pool does not wait for the ledger), and only while at most `start_ahead` sends are started
        # and not ended: a crash leaves `unknown` at most 2 x `start_ahead` attempts (those in progress
        # and those waiting for a connection), however large the poll batch. Outcomes are recorded as
        # the sends end (one statement for all that ended together).
        rows.update(await self._finish(outcomes))
        chunks = [events[i : i + self.start_ahead] for i in range(0, len(events), self.start_ahead)]
        chunks.reverse()  # popped from the end: in order
        starting: asyncio.Future[_Begun] | None = None
        sending: dict[asyncio.Future[SendResult], Mapping[str, Any]] = {}
        failure: BaseException | None = None
        try:
            while True:
                if starting is None and chunks and len(sending) <= self.start_ahead:
                    starting = asyncio.ensure_future(self._start(chunks.pop()))
                waiting: set[asyncio.Future[Any]] = set(sending)
                if starting is not None:
                    waiting.add(starting)
                if not waiting:
                    break
                ended, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if starting is not None and starting in ended:
                    ended.discard(starting)
                    begun = starting.result()  # PostgreSQL away: the batch is retried
                    starting = None
                    rows.update({_row_key(r): r for r in begun.written})
                    self.sends += len(begun.started)
                    for r, p in begun.started:
                        sending[asyncio.ensure_future(self._send(p, r["message_id"]))] = r
                outcomes_now: dict[_Key, SendResult] = {}
                for task in ended:
                    row = sending.pop(task)
                    if task.exception() is not None:  # left `started`: reported unknown when read again
                        failure = failure or task.exception()
                        continue
                    result = task.result()
                    log.info(
                        "dispatcher: attempt %s -> %s (%s)",
                        _row_key(row),
                        result.outcome.value,
                        result.detail,
                    )
                    outcomes_now[_row_key(row)] = result
                if outcomes_now:
                    rows.update(await self._finish(outcomes_now))
        finally:
            for task in sending:  # cancelled (a crash, for the ledger): their rows stay `started`
                task.cancel()
            if starting is not None:
                starting.cancel()
        if failure is not None:
            raise failure
        return rows

    async def _start(self, events: list[StepDispatched]) -> _Begun:
        """Build the chunk's messages; then (in one transaction when a sender is rate-limited) those
        that cannot be sent get their final row, those within their sender's limits become `started`,
        the rest `deferred` with the time the sender may send again; nothing waits. An attempt another
        instance's row holds already is in neither answer."""
        assert self._pool is not None
        windows = self.limits.windows
        prepared = {_key(e): (e, self._prepare(e)) for e in events}
        unusable = [(e, p) for e, p in prepared.values() if p.unusable is not None]
        sendable = [(e, p) for e, p in prepared.values() if p.unusable is None]
        for e, p in unusable:
            assert p.unusable is not None
            log.warning("dispatcher: attempt %s not sendable: %s", _key(e), p.unusable.detail)
        # The transaction holds the senders' advisory locks while their sends are counted; with no
        # limit to count, each insert commits on its own (one round trip instead of three).
        limited = bool(windows) and any(p.sender != SMS_SENDER for _, p in sendable)
        async with self._pool.acquire() as conn, conn.transaction() if limited else nullcontext():
            now = self.clock()
            finals: list[Mapping[str, Any]] = []
            if unusable:
                results = [p.unusable for _, p in unusable if p.unusable is not None]
                finals = await conn.fetch(
                    query("insert_final", LEDGER),
                    *_columns([_values(e, p) for e, p in unusable], 10),
                    [_state(r) for r in results],
                    [r.retryable for r in results],
                    [r.detail for r in results],
                    [r.code for r in results],
                    [r.provider_message_id for r in results],
                    now,
                    [e.data.dispatch for e, _ in unusable],
                )
            go: list[tuple[StepDispatched, _Prepared]] = []
            wait: list[tuple[StepDispatched, _Prepared, datetime]] = []
            room: dict[str, int] = {}  # sends of each rate-limited sender in this chunk
            for _, p in sendable:
                if windows and p.sender != SMS_SENDER:
                    room[p.sender] = room.get(p.sender, 0) + 1
            ranks: dict[str, list[WindowRanks]] = {}
            for sender in sorted(room):  # in order: two instances lock their senders in the same order
                await conn.execute(query("lock_sender", LEDGER), sender)
                ranks[sender] = [
                    await self._window_ranks(conn, sender, window, now, room[sender]) for window in windows
                ]
            added: dict[str, int] = {}  # sends of each sender allowed so far in this chunk
            for e, p in sendable:
                if p.sender not in ranks:
                    go.append((e, p))
                    continue
                at = next_send_at_ranked(ranks[p.sender], now, added.get(p.sender, 0))
                if at <= now:
                    added[p.sender] = added.get(p.sender, 0) + 1
                    go.append((e, p))
                else:
                    wait.append((e, p, at))
            started: list[Mapping[str, Any]] = []
            if go:
                started = await conn.fetch(
                    query("insert_started", LEDGER),
                    *_columns([_values(e, p) for e, p in go], 10),
                    now,
                    [e.data.dispatch for e, _ in go],
                )
            deferred: list[Mapping[str, Any]] = []
            if wait:
                deferred = await conn.fetch(
                    query("insert_deferred", LEDGER),
                    *_columns([_values(e, p) for e, p, _ in wait], 10),
                    [f"sender {p.sender} is at its rate limit until {at.isoformat()}" for _, p, at in wait],
                    now,
                    [e.data.dispatch for e, _, _ in wait],
                    [at for _, _, at in wait],
                )
        for row in deferred:
            self.deferrals += 1
            metrics.SENDS.labels(row["channel"], "deferred").inc()
            log.info(
                "dispatcher: sender %s is at its limit; %s deferred until %s",
                row["sender"],
                _row_key(row),
                row["retry_at"],
            )
        return _Begun(
            started=[(r, prepared[_row_key(r)][1]) for r in started],
            written=[*finals, *deferred],
        )

    @staticmethod
    async def _window_ranks(
        conn: asyncpg.Connection, sender: str, window: WindowLimit, now: datetime, room: int
    ) -> WindowRanks:
        """The sender's recorded sends that this window's limit can look at in a batch of `room` of
        its sends: `room` rows at most, however many it sent in the window."""
        row = await conn.fetchrow(
            query("sender_window_ranks", LEDGER),
            sender,
            now,
            now - window.window,
            WindowRanks.first_rank(window.limit, room),
            room,
        )
        assert row is not None
        return WindowRanks(window=window, ahead=row["ahead"], room=room, ranked=tuple(row["ranked"]))

    def _prepare(self, event: StepDispatched) -> _Prepared:
        d = event.data
        assert event.enrollment_id is not None
        if d.channel is Channel.SMS:
            try:
                body = render(d.content.body, contact_fields(d.contact_name, ""))
            except TemplateFieldMissing as exc:
                return _Prepared(SMS_SENDER, d.to, unusable=SendResult(SendOutcome.ERROR, f"template: {exc}"))
            return _Prepared(SMS_SENDER, d.to, sms_body=body)
        sender = self._sender_key
        try:
            message = build_step_wire_message(
                sender=self._identity_of(event.account_id),
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
        return _Prepared(sender, d.to, message=message, message_id_header=message.message_id)

    async def _send(self, prepared: _Prepared, message_id: str) -> SendResult:
        if prepared.message is not None:
            return await self.email.send(prepared.message)
        assert self.sms is not None and prepared.sms_body is not None
        return await self.sms.send(prepared.recipient, prepared.sms_body, message_id)

    async def _finish(self, outcomes: Mapping[_Key, SendResult]) -> dict[_Key, Mapping[str, Any]]:
        """`started` -> each outcome, in one statement. An attempt whose row is no longer `started`
        (someone else recorded an outcome first: theirs stands) is missing from the answer."""
        assert self._pool is not None
        if not outcomes:
            return {}
        keys = list(outcomes)
        results = [outcomes[k] for k in keys]
        found = await self._pool.fetch(
            query("finish", LEDGER),
            *_columns(keys, 3),
            [_state(r) for r in results],
            [r.retryable for r in results],
            [r.detail for r in results],
            [r.code for r in results],
            [r.provider_message_id for r in results],
            self.clock(),
        )
        rows = {_row_key(r): r for r in found}
        for key in keys:
            if key not in rows:
                log.warning("dispatcher: attempt %s already had an outcome; it stands", key)
        for row in found:
            metrics.SENDS.labels(row["channel"], row["state"]).inc()
        return rows

    def _command(self, row: Mapping[str, Any], dispatch: int) -> DeliveryReported:
        """The row's DeliveryReported.

        A deferral is reported for the dispatch it deferred. A final outcome is the attempt's, whichever
        dispatch sent it: it is reported for the dispatch at hand too (never older than the row's), so
        the dispatch the decider has in flight always gets it."""
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
        return DeliveryReported(
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

    async def _report(self, reports: list[tuple[Mapping[str, Any], int]]) -> None:
        """Publish each row's DeliveryReported (in order), wait for every ack; then mark them all
        reported in one statement."""
        assert self._producer is not None and self._pool is not None
        if not reports:
            return
        acks = []
        for i, (row, dispatch) in enumerate(reports):
            if i and i % 32 == 0:
                # A batch's reports are built while the next batch sends: let its replies in between.
                await asyncio.sleep(0)
            acks.append(
                await self._producer.send(
                    self.topics.commands,
                    encode(self._command(row, dispatch)),
                    key=key_bytes(aggregate_key(row["account_id"], row["contact_id"])),
                )
            )
        await asyncio.gather(*acks)
        self.reports += len(reports)
        rows = [row for row, _ in reports]
        await self._pool.execute(
            query("mark_reported", LEDGER),
            *_columns([_row_key(r) for r in rows], 3),
            [r["state"] for r in rows],
            [r["dispatch"] for r in rows],
            self.clock(),
        )

    async def _dead_letter(self, letter: DeadLetter) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(
            self.topics.dead_letters, letter.value, key=letter.key, headers=letter.headers
        )


_Key = tuple[str, int, int]  # (enrollment, step, attempt): the ledger's key


def _key(event: StepDispatched) -> _Key:
    assert event.enrollment_id is not None
    return (event.enrollment_id, event.data.step_index, event.data.attempt)


def _row_key(row: Mapping[str, Any]) -> _Key:
    return (row["enrollment_id"], row["step_index"], row["attempt"])


def _values(event: StepDispatched, prepared: _Prepared) -> tuple[Any, ...]:
    """A new row's identifying columns, in the order of the ledger's insert statements."""
    return (
        *_key(event),
        event.data.message_id,
        prepared.message_id_header,
        event.account_id,
        event.contact_id,
        event.data.channel.value,
        prepared.sender,
        prepared.recipient,
    )


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows -> one list per column, the arrays an `unnest` statement takes."""
    return [[row[i] for row in rows] for i in range(width)]


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
        self.service.assigned.set()
