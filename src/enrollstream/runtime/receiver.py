"""The `receiver` role: replies received without a separate bridge (docs/delivery.md "Receiving replies").

Two sources, both publishing `InboundEmailReceived` to the `inbound-email` topic (keyed
`account/<Message-ID>`, so a repeat is recognisable downstream) for the `inbound` role to match:

- **SMTP listener** (aiosmtpd, on the worker's own event loop; 127.0.0.1:2525 by default): RCPT is
  accepted only for a reply address of `ENROLLSTREAM_RECEIVER_DOMAIN` that names an account (others:
  550), a message over `receiver_max_message_bytes` is 552, and the end of DATA is answered 250 only
  after Kafka acknowledged the record (451 when it did not: the sending server tries again later).
- **IMAP poller** (aioimaplib; one connection per mailbox, IDLE where the server supports it, polling
  every `receiver_imap_poll_interval_s` otherwise): reads messages by UID after its checkpoint
  (`inbound_imap_checkpoints`: UIDVALIDITY and the last UID per mailbox), one at a time, and advances
  the checkpoint only after the message's record was acknowledged, so a restart reads no message twice
  (except the one in hand if the process died between the acknowledgement and the checkpoint: the same
  key and command ids then). A changed UIDVALIDITY means the old UIDs name nothing any more: the poller
  logs it and reads the mailbox again from its first message (repeats recognisable as above) rather
  than risk skipping mail. A message no reply address of ours names an account for is kept in
  `inbound_unmatched` (account null). An advisory lock per mailbox keeps a second process off it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aioimaplib
import asyncpg
from aiokafka import AIOKafkaProducer
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import ValidationError

from enrollstream import observability as metrics
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.adapters.mail.inbound_message import AccountResolver, header_recipients, parse_inbound
from enrollstream.adapters.postgres.queries import query
from enrollstream.config import Settings
from enrollstream.domain.inbound import InboundEmailReceived, inbound_record_key
from enrollstream.observability import Progress
from enrollstream.runtime.inbound import keep_unmatched

log = logging.getLogger(__name__)

ROLE = "receiver"
NO_ACCOUNT = "(none)"  # the record's account when no reply address named one (kept, never published)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class InboundPublisher:
    """InboundEmailReceived onto the inbound-email topic; `publish` returns once Kafka acknowledged it."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, email: InboundEmailReceived) -> None:
        assert self._producer is not None, "start() the publisher first"
        await asyncio.wait_for(
            self._producer.send_and_wait(
                self.topic,
                email.model_dump_json(by_alias=True).encode(),
                key=inbound_record_key(email.account_id, email.message_id).encode(),
            ),
            self.timeout_s,
        )


class _BoundedSmtp(SMTP):
    """aiosmtpd's SMTP, counting its connections: past the listener's limit a new one is told 421 (the
    sending server tries again later) and closed, so many idle clients cannot hold the process."""

    def __init__(self, listener: SmtpListener, *args: Any, **kwargs: Any) -> None:
        self._listener = listener
        self._counted = False
        super().__init__(*args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._counted:  # STARTTLS's second call: the same connection
            return
        if self._listener.connections >= self._listener.max_connections:
            metrics.INBOUND_RECEIVED.labels("smtp", "rejected").inc()
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(b"421 4.3.2 too many connections, try again later\r\n")
            transport.close()
            return
        self._listener.connections += 1
        self._counted = True

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._listener.connections -= 1
            self._counted = False
        super().connection_lost(error)


class SmtpListener:
    """aiosmtpd's SMTP protocol on a listener of our own loop; the handler below decides each step."""

    def __init__(
        self,
        resolver: AccountResolver,
        publisher: InboundPublisher,
        *,
        host: str = "127.0.0.1",
        port: int = 2525,
        max_message_bytes: int = 10 * 2**20,
        max_recipients: int = 50,
        max_connections: int = 100,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.resolver = resolver
        self.max_connections = max_connections
        self.connections = 0
        self.publisher = publisher
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.max_recipients = max_recipients
        self.clock = clock
        self._server: asyncio.AbstractServer | None = None
        self.published = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _BoundedSmtp(
                self,
                self,
                data_size_limit=self.max_message_bytes,
                enable_SMTPUTF8=True,
                decode_data=False,
                hostname=self.resolver.domain,
                ident="enrollstream receiver",
                timeout=60,
                loop=loop,
            ),
            self.host,
            self.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("receiver: SMTP listener on %s:%s for @%s", self.host, self.port, self.resolver.domain)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    # aiosmtpd handler hooks -------------------------------------------------------------------------
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.resolver.in_domain(address):
            metrics.INBOUND_RECEIVED.labels("smtp", "rejected").inc()
            return f"550 5.7.1 not a reply address of {self.resolver.domain}: relaying denied"
        if self.resolver.account_for(address) is None:
            metrics.INBOUND_RECEIVED.labels("smtp", "rejected").inc()
            return "550 5.1.1 no such reply address"
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        mail_from = envelope.mail_from or ""
        received_at = self.clock()
        records: dict[str, InboundEmailReceived] = {}
        try:
            for rcpt in envelope.rcpt_tos:
                account = self.resolver.account_for(rcpt)
                if account is not None and account not in records:
                    records[account] = parse_inbound(
                        raw,
                        account_id=account,
                        received_at=received_at,
                        recipient=rcpt,
                        envelope_from=mail_from.strip("<>"),
                    )
        except (ValidationError, ValueError) as exc:
            metrics.INBOUND_RECEIVED.labels("smtp", "rejected").inc()
            log.warning("receiver: a message from %r could not be read: %s", mail_from, exc)
            return "554 5.6.0 message could not be read"
        try:
            for email in records.values():
                await self.publisher.publish(email)
        except Exception as exc:  # Kafka away, a timeout: the sender keeps the message and tries again
            metrics.INBOUND_RECEIVED.labels("smtp", "failed").inc()
            log.warning("receiver: publishing a received message failed, answered 451: %r", exc)
            return "451 4.3.0 temporarily unable to accept the message, try again later"
        self.published += len(records)
        metrics.INBOUND_RECEIVED.labels("smtp", "published").inc(len(records))
        return "250 2.0.0 accepted"


@dataclass(frozen=True)
class ImapConfig:
    host: str
    port: int
    username: str
    password: str
    tls: bool = True
    poll_interval_s: float = 60.0
    idle_s: float = 600.0
    batch: int = 100
    max_message_bytes: int = 10 * 2**20
    timeout_s: float = 30.0


class ImapError(RuntimeError):
    """The IMAP server answered a command with NO or BAD."""


_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")


def _ok(response: Any, what: str) -> Any:
    if response.result != "OK":
        raise ImapError(f"{what}: {response.result} {response.lines[-1:]!r}")
    return response


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class ImapPoller:
    """One mailbox: read what is new after the checkpoint, publish, checkpoint, wait for more."""

    def __init__(
        self,
        config: ImapConfig,
        mailbox: str,
        publisher: InboundPublisher,
        pool: asyncpg.Pool,
        resolver: AccountResolver,
        *,
        unmatched_max_rows: int = 10_000,
        clock: Callable[[], datetime] = _utc_now,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.mailbox = mailbox
        self.publisher = publisher
        self.pool = pool
        self.resolver = resolver
        self.unmatched_max_rows = unmatched_max_rows
        self.clock = clock
        self.key = f"{config.username}@{config.host}:{config.port}/{mailbox}"
        self.published = 0
        self.kept = 0
        self.uidvalidity_changes = 0
        self.idle_waits = 0  # waits for new mail with IDLE
        self.poll_waits = 0  # waits of poll_interval_s (the server does not announce IDLE)
        self.last_error: str | None = None
        # /healthz: a mailbox whose rounds fail `stuck_retries` times in a row (server, Kafka or
        # PostgreSQL away) or one round that hangs longer than `stuck_after_s` is reported stuck.
        self.progress = progress or Progress(ROLE)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            try:
                await self._locked_session(stop)
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost connection, a refusing server, Kafka or PostgreSQL away
                self.last_error = repr(exc)
                self.progress.retried(self.key)
                metrics.INBOUND_RECEIVED.labels("imap", "failed").inc()
                log.warning("receiver: IMAP %s failed (%r); again in %.0fs", self.key, exc, backoff)
                await _wait(stop, backoff)
                backoff = min(backoff * 2, 60.0)

    async def _locked_session(self, stop: asyncio.Event) -> None:
        async with self.pool.acquire() as lock:
            if not await lock.fetchval(query("try_lock_mailbox", "inbound.sql"), self.key):
                log.info("receiver: another process reads %s; waiting", self.key)
                await _wait(stop, self.config.poll_interval_s)
                return
            try:
                await self._session(stop)
            finally:
                await lock.execute(
                    "select pg_advisory_unlock(hashtextextended('enrollstream.imap:' || $1, 0))", self.key
                )

    async def _session(self, stop: asyncio.Event) -> None:
        config = self.config
        client: aioimaplib.IMAP4
        if config.tls:
            client = aioimaplib.IMAP4_SSL(
                config.host, config.port, timeout=config.timeout_s, ssl_context=ssl.create_default_context()
            )
        else:
            client = aioimaplib.IMAP4(config.host, config.port, timeout=config.timeout_s)
        await client.wait_hello_from_server()
        try:
            _ok(await client.login(config.username, config.password), "LOGIN")
            while not stop.is_set():
                response = _ok(await client.select(self.mailbox), f"SELECT {self.mailbox}")
                uidvalidity = next(
                    (int(m.group(1)) for line in response.lines if (m := _UIDVALIDITY.search(bytes(line)))),
                    None,
                )
                if uidvalidity is None:
                    raise ImapError(f"SELECT {self.mailbox} named no UIDVALIDITY")
                last_uid = await self._checkpoint(uidvalidity)
                self.progress.working(self.key)
                more = await self._read_new(client, uidvalidity, last_uid, stop)
                self.progress.advanced(self.key)
                if more:
                    continue  # a full batch: there may be more at once
                await self._wait_for_mail(client, stop)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.logout(), 5)

    async def _checkpoint(self, uidvalidity: int) -> int:
        row = await self.pool.fetchrow(query("load_imap_checkpoint", "inbound.sql"), self.key)
        if row is not None and row["uidvalidity"] == uidvalidity:
            return int(row["last_uid"])
        if row is not None:
            # The server renumbered the mailbox (RFC 3501 2.3.1.1): the old UIDs name nothing any more.
            # Reading it again from the start may repeat messages (same keys and command ids downstream);
            # skipping to the end could lose mail that arrived meanwhile.
            self.uidvalidity_changes += 1
            log.warning(
                "receiver: UIDVALIDITY of %s changed from %s to %s: reading the mailbox again from the start",
                self.key,
                row["uidvalidity"],
                uidvalidity,
            )
        await self.pool.execute(query("save_imap_checkpoint", "inbound.sql"), self.key, uidvalidity, 0)
        return 0

    async def _read_new(
        self, client: aioimaplib.IMAP4, uidvalidity: int, last_uid: int, stop: asyncio.Event
    ) -> bool:
        """Publish the messages after `last_uid` (a batch at most), checkpointing each one; True when
        more are waiting."""
        response = _ok(await client.uid("fetch", f"{last_uid + 1}:*", "(UID RFC822.SIZE)"), "UID FETCH")
        found: list[tuple[int, int]] = []
        for line in response.lines:
            text = bytes(line)
            uid_match, size_match = _UID.search(text), _SIZE.search(text)
            # `n:*` names the last UID when none is newer: only greater ones are new.
            if uid_match is not None and int(uid_match.group(1)) > last_uid:
                found.append((int(uid_match.group(1)), int(size_match.group(1)) if size_match else 0))
        found.sort()
        for uid, size in found[: self.config.batch]:
            if stop.is_set():
                return False
            # Over the size bound only the header is read: a reply is matched by its headers alone.
            part = "BODY.PEEK[]" if size <= self.config.max_message_bytes else "BODY.PEEK[HEADER]"
            fetched = _ok(await client.uid("fetch", str(uid), f"(UID {part})"), "UID FETCH")
            raw = next((bytes(line) for line in fetched.lines if isinstance(line, bytearray)), None)
            if raw is not None:
                await self._take(raw)
            await self.pool.execute(query("save_imap_checkpoint", "inbound.sql"), self.key, uidvalidity, uid)
        return len(found) > self.config.batch

    async def _take(self, raw: bytes) -> None:
        account = self.resolver.first_account(header_recipients(raw))
        try:
            email = parse_inbound(raw, account_id=account or NO_ACCOUNT, received_at=self.clock())
        except (ValidationError, ValueError) as exc:
            metrics.INBOUND_RECEIVED.labels("imap", "rejected").inc()
            log.warning("receiver: a message in %s could not be read, skipped: %s", self.key, exc)
            return
        if account is None:
            await keep_unmatched(
                self.pool,
                email,
                None,
                f"no reply address of {self.resolver.domain} names an account",
                self.unmatched_max_rows,
            )
            self.kept += 1
            metrics.INBOUND_RECEIVED.labels("imap", "no_account").inc()
            metrics.INBOUND_UNMATCHED.labels("no_account").inc()
            return
        await self.publisher.publish(email)
        self.published += 1
        metrics.INBOUND_RECEIVED.labels("imap", "published").inc()

    async def _wait_for_mail(self, client: aioimaplib.IMAP4, stop: asyncio.Event) -> None:
        if not client.has_capability("IDLE"):
            self.poll_waits += 1
            await _wait(stop, self.config.poll_interval_s)
            return
        self.idle_waits += 1
        idle = await client.idle_start(timeout=self.config.idle_s)
        push = asyncio.ensure_future(client.wait_server_push(timeout=self.config.idle_s + 5))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({push, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (push, stopped):
                task.cancel()
            client.idle_done()
            await asyncio.wait_for(idle, self.config.timeout_s)


class ReceiverService:
    """The role: the SMTP listener (unless turned off) and one IMAP poller per configured mailbox."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        database_url: str,
        resolver: AccountResolver,
        *,
        smtp_host: str | None = "127.0.0.1",
        smtp_port: int = 2525,
        imap: ImapConfig | None = None,
        imap_mailboxes: tuple[str, ...] = ("INBOX",),
        max_message_bytes: int = 10 * 2**20,
        max_recipients: int = 50,
        max_connections: int = 100,
        publish_timeout_s: float = 10.0,
        unmatched_max_rows: int = 10_000,
        clock: Callable[[], datetime] = _utc_now,
        stuck_after_s: float = 300.0,
        stuck_retries: int = 5,
    ) -> None:
        self.database_url = database_url
        self.progress = Progress(ROLE, stuck_after_s=stuck_after_s, max_retries=stuck_retries)
        self.resolver = resolver
        self.imap = imap
        self.imap_mailboxes = imap_mailboxes
        self.unmatched_max_rows = unmatched_max_rows
        self.clock = clock
        self.publisher = InboundPublisher(bootstrap, topics.inbound_email, publish_timeout_s)
        self.smtp = (
            SmtpListener(
                resolver,
                self.publisher,
                host=smtp_host,
                port=smtp_port,
                max_message_bytes=max_message_bytes,
                max_recipients=max_recipients,
                max_connections=max_connections,
                clock=clock,
            )
            if smtp_host is not None
            else None
        )
        self.pollers: list[ImapPoller] = []
        self._pool: asyncpg.Pool | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, bootstrap: str, database_url: str, clock: Callable[[], datetime] = _utc_now
    ) -> ReceiverService:
        assert settings.receiver_domain, "the receiver role needs ENROLLSTREAM_RECEIVER_DOMAIN"
        imap = None
        if settings.receiver_imap_host:
            assert settings.receiver_imap_username and settings.receiver_imap_password
            imap = ImapConfig(
                host=settings.receiver_imap_host,
                port=settings.receiver_imap_port,
                username=settings.receiver_imap_username,
                password=settings.receiver_imap_password.get_secret_value(),
                tls=settings.receiver_imap_tls,
                poll_interval_s=settings.receiver_imap_poll_interval_s,
                idle_s=settings.receiver_imap_idle_s,
                batch=settings.receiver_imap_batch,
                max_message_bytes=settings.receiver_max_message_bytes,
            )
        mailboxes = tuple(m.strip() for m in settings.receiver_imap_mailboxes.split(",") if m.strip())
        return cls(
            bootstrap,
            Topics(settings.topic_prefix),
            database_url,
            AccountResolver.from_settings(
                settings.receiver_domain, settings.receiver_mailboxes, settings.receiver_account
            ),
            smtp_host=settings.receiver_smtp_host if settings.receiver_smtp_enabled else None,
            smtp_port=settings.receiver_smtp_port,
            imap=imap,
            imap_mailboxes=mailboxes or ("INBOX",),
            max_message_bytes=settings.receiver_max_message_bytes,
            max_recipients=settings.receiver_max_recipients,
            max_connections=settings.receiver_max_connections,
            publish_timeout_s=settings.receiver_publish_timeout_s,
            unmatched_max_rows=settings.inbound_unmatched_max_rows,
            clock=clock,
            stuck_after_s=settings.stuck_after_s,
            stuck_retries=settings.stuck_retries,
        )

    async def start(self) -> None:
        await self.publisher.start()
        if self.imap is not None:
            # One connection per mailbox holds its advisory lock, one more for the checkpoints.
            self._pool = await asyncpg.create_pool(
                self.database_url, min_size=1, max_size=len(self.imap_mailboxes) + 1
            )
            self.pollers = [
                ImapPoller(
                    self.imap,
                    mailbox,
                    self.publisher,
                    self._pool,
                    self.resolver,
                    unmatched_max_rows=self.unmatched_max_rows,
                    clock=self.clock,
                    progress=self.progress,
                )
                for mailbox in self.imap_mailboxes
            ]
        if self.smtp is not None:
            await self.smtp.start()

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(stop.wait(), *(poller.run(stop) for poller in self.pollers))

    async def stop(self) -> None:
        if self.smtp is not None:
            await self.smtp.stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await self.publisher.stop()
