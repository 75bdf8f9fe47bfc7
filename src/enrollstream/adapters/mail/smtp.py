"""Sending one message over SMTP with aiosmtplib, classifying the outcome by *where* it ended.

One envelope recipient per message; connections are pooled per sender (`SmtpSender`), one
transaction per message. The SMTP dialogue is driven step by step
(connect, STARTTLS, AUTH, MAIL, RCPT, DATA) rather than with `send_message`, because the outcome of
a broken connection depends on the phase:

- before the message content was handed to the transport: nothing can have been delivered ->
  `temporary` (safe to retry);
- after the content was handed over and before the final reply: the server may have queued it ->
  `unknown` (never retried automatically; see docs/delivery.md).

aiosmtplib's `SMTP.data()` writes `DATA`, waits for 354, writes the content and waits for the final
reply inside one call, so a disconnect in it cannot be placed. We therefore send `DATA` as a plain
command and, after the 354, write the dot-stuffed content and read the final reply through the
connection's `SMTPProtocol` (`write` / `read_response`, both public methods of aiosmtplib's protocol).

Replies: 2xx final -> `sent`; 5xx at RCPT / DATA -> `bounced` (hard: the recipient or its provider
refused for good; the enrollment fails); 4xx anywhere -> `temporary`; 5xx at MAIL (our envelope sender
refused), authentication problems (530, 534, 535, 538, or our credentials refused), STARTTLS required
but not offered -> `error` (our configuration; retrying or failing the contact is wrong).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses

import aiosmtplib
from aiosmtplib import (
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.email import quote_address
from aiosmtplib.errors import SMTPReadTimeoutError
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.response import SMTPResponse

from enrollstream.domain.delivery_policy import SendOutcome, SendResult

from .message import WIRE_POLICY, WireMessage

# Reply codes that mean our side is misconfigured, not that the recipient refused.
_AUTH_CODES = frozenset({530, 534, 535, 538})
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 587
    starttls: bool = True  # upgrade with STARTTLS; refuse to send if the server does not offer it
    implicit_tls: bool = False  # TLS from the first byte (port 465); excludes starttls
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0  # per step of the dialogue (connect, each command, the final reply)
    validate_certs: bool = True
    tls_context: ssl.SSLContext | None = None
    local_hostname: str | None = None  # our EHLO name
    envelope_from: str | None = None  # MAIL FROM (bounce address); default: the From header's address

    def __post_init__(self) -> None:
        if self.starttls and self.implicit_tls:
            raise ValueError("starttls and implicit_tls are mutually exclusive")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")


def data_payload(message: bytes) -> bytes:
    """The DATA content: CRLF line endings, leading dots doubled (RFC 5321 4.5.2), and the final `.`."""
    lines = _LINE_BREAK.split(message)
    if lines and lines[-1] == b"":
        lines.pop()
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"\r\n".join([*stuffed, b"."]) + b"\r\n"


def _single_address(message: EmailMessage, header: str) -> str:
    addresses = [addr for _, addr in getaddresses([str(v) for v in message.get_all(header, [])]) if addr]
    if len(addresses) != 1:
        raise ValueError(f"expected exactly one {header} address, found {addresses!r}")
    return addresses[0]


def _classify(code: int, message: str, phase: str) -> SendResult:
    detail = f"{phase}: {code} {message}".strip()
    if code in _AUTH_CODES or (phase in ("ehlo", "mail") and 500 <= code < 600):
        return SendResult(SendOutcome.ERROR, detail, code)
    if 500 <= code < 600:
        return SendResult(SendOutcome.BOUNCED, detail, code)
    return SendResult(SendOutcome.TEMPORARY, detail, code)  # 4xx, and anything unexpected


class _PipelinedReplies(asyncio.Protocol):
    """Reads the replies to a pipelined group of commands. aiosmtplib's protocol keeps one reply at a
    time and drops data that arrives while one is waiting to be picked up, so while a group's replies
    come in, this protocol takes the connection's data instead (`transport.set_protocol`), then gives
    the connection back. Whatever ends the connection in between ends the read: the caller closes it."""

    def __init__(self, expected: int) -> None:
        self._buffer = bytearray()
        self._replies: list[SMTPResponse] = []
        self._expected = expected
        self._lost: BaseException | None = None
        self._changed = asyncio.Event()

    def attach(self, protocol: SMTPProtocol) -> None:
        if protocol.transport is None:
            raise SMTPServerDisconnected("Connection lost")
        protocol.transport.set_protocol(self)

    def detach(self, protocol: SMTPProtocol) -> None:
        if protocol.transport is not None and self._lost is None:
            protocol.transport.set_protocol(protocol)

    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        while len(self._replies) < self._expected:
            end = _reply_end(self._buffer)
            if end is None:
                break
            lines = bytes(self._buffer[:end]).split(b"\n")[:-1]
            del self._buffer[:end]
            try:
                code = int(lines[0][:3])
            except ValueError:
                self._lost = SMTPResponseException(-1, f"malformed reply {lines[0][:80]!r}")
                break
            text = "\n".join(line[4:].strip(b" \t\r").decode("utf-8", "surrogateescape") for line in lines)
            self._replies.append(SMTPResponse(code, text))
        if len(self._buffer) > 65_536:
            self._lost = SMTPResponseException(-1, "reply too long")
        self._changed.set()

    def eof_received(self) -> bool:
        self.connection_lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = self._lost or SMTPServerDisconnected(f"Connection lost{f': {exc}' if exc else ''}")
        self._changed.set()

    async def next(self, timeout: float) -> SMTPResponse:
        """The next reply in order."""
        if self._replies:  # a pipelined group's replies mostly arrive together: no timer for those
            return self._replies.pop(0)
        async with asyncio.timeout(timeout):
            try:
                while not self._replies:
                    if self._lost is not None:
                        raise self._lost
                    self._changed.clear()
                    await self._changed.wait()
            except TimeoutError:
                raise SMTPReadTimeoutError("Timed out waiting for server response") from None
        return self._replies.pop(0)


_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def _quoted(address: str) -> bytes:
    """`<address>` as aiosmtplib's `mail` / `rcpt` send it; a plain address needs no parsing."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return b"<%s>" % address.encode("ascii")
    return quote_address(address).encode("ascii")


def _reply_end(buffer: bytearray) -> int | None:
    """Where the first complete (possibly multiline, "250-...") reply in `buffer` ends, or None."""
    start = 0
    while (end := buffer.find(b"\n", start)) != -1:
        if buffer[start + 3 : start + 4] != b"-":
            return end + 1
        start = end + 1
    return None


class SmtpSender:
    """Sends over a small pool of connections to the relay (`pool_size`, default 8): a connection is
    kept only when its last transaction ended with a reply (the final reply after the content, or a
    refusal followed by a successful RSET), so every message is its own MAIL/RCPT/DATA transaction and
    the unknown window is exactly "content written, final reply not read" for that message alone. A
    connection that failed in any way is closed, never reused. A kept connection the server closed
    while it was idle fails at MAIL, before anything of the message was sent: the message goes once
    more over a new connection. `aclose()` closes the idle connections."""

    def __init__(self, config: SmtpConfig, pool_size: int = 8) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.config = config
        self.pool_size = pool_size
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots: asyncio.Semaphore | None = None
        self.connections_opened = 0  # for tests and the benchmark

    def _client(self) -> aiosmtplib.SMTP:
        c = self.config
        return aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            timeout=c.timeout,
            use_tls=c.implicit_tls,
            start_tls=False,  # we upgrade explicitly below, so a missing STARTTLS is an error
            validate_certs=c.validate_certs,
            tls_context=c.tls_context,
            local_hostname=c.local_hostname,
        )

    async def send(self, message: EmailMessage | WireMessage) -> SendResult:
        """Deliver `message` to its one To address. Never raises for SMTP or network trouble."""
        try:
            if isinstance(message, WireMessage):  # built as bytes already (the dispatcher's)
                sender = self.config.envelope_from or message.from_address
                recipient = message.to_address
                payload = data_payload(message.content)
            else:
                sender = self.config.envelope_from or _single_address(message, "From")
                recipient = _single_address(message, "To")
                payload = data_payload(message.as_bytes(policy=WIRE_POLICY))
        except (ValueError, TypeError, UnicodeError) as exc:
            return SendResult(SendOutcome.ERROR, f"message: {exc}")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.pool_size)
        async with self._slots:
            while self._idle:
                smtp = self._idle.pop()
                if not smtp.is_connected:
                    continue
                result, keep = await self._transaction(smtp, sender, recipient, payload, reused=True)
                if result is not None:
                    return await self._release(smtp, result, keep)
                # The kept connection was gone before MAIL was answered: nothing of this message was
                # sent; try the next idle one, or a new one.
            smtp = self._client()
            opened = await self._open(smtp)
            if opened is not None:
                await self._discard(smtp)
                return opened
            result, keep = await self._transaction(smtp, sender, recipient, payload, reused=False)
            assert result is not None
            return await self._release(smtp, result, keep)

    async def _open(self, smtp: aiosmtplib.SMTP) -> SendResult | None:
        """Connect, STARTTLS and AUTH as configured: None when ready for MAIL, else the outcome."""
        phase = "connect"
        try:
            self.connections_opened += 1
            await smtp.connect()
            if self.config.starttls:
                phase = "starttls"
                try:
                    await smtp.starttls()
                except (SMTPServerDisconnected, SMTPTimeoutError):
                    raise
                except (SMTPException, ssl.SSLError) as exc:  # not offered, or the certificate failed
                    return SendResult(SendOutcome.ERROR, f"starttls: {exc}")  # never send in the clear
            if self.config.username is not None and self.config.password is not None:
                phase = "auth"
                try:
                    await smtp.login(self.config.username, self.config.password)
                except (SMTPServerDisconnected, SMTPTimeoutError):
                    raise
                except SMTPException as exc:  # refused, or no mechanism in common: our configuration
                    code = exc.code if isinstance(exc, SMTPResponseException) else None
                    return SendResult(SendOutcome.ERROR, f"auth: {exc}", code)
            if smtp.is_ehlo_or_helo_needed:  # before the first MAIL: do they offer PIPELINING?
                phase = "ehlo"
                try:
                    await smtp.ehlo()
                except SMTPHeloError:
                    await smtp.helo()
            return None
        except SMTPNotSupported as exc:
            return SendResult(SendOutcome.ERROR, f"{phase}: {exc}")
        except SMTPResponseException as exc:
            if phase == "connect":  # e.g. a 554 greeting: the server takes nothing right now
                return SendResult(SendOutcome.TEMPORARY, f"connect: {exc.code} {exc.message}", exc.code)
            return _classify(exc.code, exc.message, phase)
        except (SMTPServerDisconnected, SMTPTimeoutError, SMTPException, OSError) as exc:
            smtp.close()
            kind = "timeout" if isinstance(exc, TimeoutError) else "connection lost"
            return SendResult(SendOutcome.TEMPORARY, f"{phase}: {kind}: {exc}")
        except BaseException:
            smtp.close()
            raise

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, sender: str, recipient: str, payload: bytes, *, reused: bool
    ) -> tuple[SendResult | None, bool]:
        """One MAIL/RCPT/DATA transaction: (the outcome, whether the connection may be kept).
        (None, False) when a reused connection turned out closed before MAIL was answered."""
        phase = "mail"
        handed_over = False
        timeout = self.config.timeout
        try:
            protocol = smtp.protocol
            if protocol is not None and smtp.supports_extension("pipelining"):
                # RFC 2920: MAIL, RCPT and DATA in one write, their three replies read in order. The
                # content still goes only after a 354, so nothing about the unknown window changes.
                commands = b"MAIL FROM:%s\r\nRCPT TO:%s\r\nDATA\r\n" % (
                    _quoted(sender),
                    _quoted(recipient),
                )
                replies = _PipelinedReplies(3)
                try:
                    replies.attach(protocol)
                    protocol.write(commands)
                    mail = await replies.next(timeout)
                    if mail.code == 421 and reused:  # the server closed the idle connection
                        smtp.close()
                        return None, False
                    phase = "rcpt"
                    rcpt = await replies.next(timeout)
                    phase = "data"
                    start = await replies.next(timeout)
                except BaseException:
                    smtp.close()  # out of step with the server (or gone): never reused
                    raise
                finally:
                    replies.detach(protocol)
                refused = next(
                    (
                        (reply, at)
                        for reply, at in ((mail, "mail"), (rcpt, "rcpt"))
                        if reply.code not in (250, 251)
                    ),
                    None,
                )
                if refused is not None or start.code != 354:
                    reply, at = refused or (start, "data")
                    # A 354 after a refusal would take whatever came next as content: hang up instead.
                    keep = start.code != 354 and 421 not in (mail.code, rcpt.code, start.code)
                    if not keep:
                        smtp.close()
                    return _classify(reply.code, reply.message, at), keep
            else:
                await smtp.mail(sender)
                phase = "rcpt"
                await smtp.rcpt(recipient)
                phase = "data"
                start = await smtp.execute_command(b"DATA")
                if start.code != 354:
                    return _classify(start.code, start.message, phase), True
                protocol = smtp.protocol
                if protocol is None:
                    raise SMTPServerDisconnected("Connection lost after 354")
            phase = "data-end"
            protocol.write(payload)
            # From here on the server may hold the whole message: a broken connection is `unknown`.
            handed_over = True
            reply = await protocol.read_response(timeout=timeout)
            if 200 <= reply.code < 300:
                result = SendResult(
                    SendOutcome.SENT, f"{reply.code} {reply.message}", reply.code, reply.message
                )
                return result, True
            return _classify(reply.code, reply.message, phase), True
        except SMTPNotSupported as exc:
            return SendResult(SendOutcome.ERROR, f"{phase}: {exc}"), False
        except SMTPResponseException as exc:
            if reused and phase == "mail" and exc.code == 421:  # the server closed the idle connection
                smtp.close()
                return None, False
            return _classify(exc.code, exc.message, phase), exc.code != 421
        except (SMTPServerDisconnected, SMTPTimeoutError, SMTPException, OSError) as exc:
            smtp.close()  # after a timeout the dialogue is out of step: no QUIT, just hang up
            if reused and phase == "mail" and not isinstance(exc, TimeoutError):
                return None, False
            kind = "timeout" if isinstance(exc, TimeoutError) else "connection lost"
            detail = f"{phase}: {kind}: {exc}"
            if handed_over:
                return SendResult(SendOutcome.UNKNOWN, f"{detail} (after the content was handed over)"), False
            return SendResult(SendOutcome.TEMPORARY, detail), False
        except BaseException:  # cancelled: the ledger, not this call, knows whether content went out
            smtp.close()
            raise

    async def _release(self, smtp: aiosmtplib.SMTP, result: SendResult, keep: bool) -> SendResult:
        """Keep the connection for the next message if its transaction ended cleanly; else close it."""
        if keep and smtp.is_connected and result.outcome is not SendOutcome.SENT:
            try:  # a refusal may leave the transaction open: reset it before the next message
                await smtp.rset()
            except (SMTPException, OSError):
                keep = False
        if keep and smtp.is_connected and len(self._idle) < self.pool_size:
            self._idle.append(smtp)
        else:
            await self._discard(smtp)
        return result

    async def _discard(self, smtp: aiosmtplib.SMTP) -> None:
        if not smtp.is_connected:
            return
        try:
            await smtp.quit(timeout=min(self.config.timeout, 5.0))
        except (SMTPException, OSError):
            smtp.close()

    async def aclose(self) -> None:
        """QUIT the idle connections."""
        idle, self._idle = self._idle, []
        for smtp in idle:
            await self._discard(smtp)
