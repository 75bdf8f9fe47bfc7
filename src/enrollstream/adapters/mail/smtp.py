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
    SMTPNotSupported,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from enrollstream.domain.delivery_policy import SendOutcome, SendResult

from .message import WIRE_POLICY

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
    if code in _AUTH_CODES or (phase == "mail" and 500 <= code < 600):
        return SendResult(SendOutcome.ERROR, detail, code)
    if 500 <= code < 600:
        return SendResult(SendOutcome.BOUNCED, detail, code)
    return SendResult(SendOutcome.TEMPORARY, detail, code)  # 4xx, and anything unexpected


class SmtpSender:
    """Sends over a small pool of connections to the relay (`pool_size`, default 4): a connection is
    kept only when its last transaction ended with a reply (the final reply after the content, or a
    refusal followed by a successful RSET), so every message is its own MAIL/RCPT/DATA transaction and
    the unknown window is exactly "content written, final reply not read" for that message alone. A
    connection that failed in any way is closed, never reused. A kept connection the server closed
    while it was idle fails at MAIL, before anything of the message was sent: the message goes once
    more over a new connection. `aclose()` closes the idle connections."""

    def __init__(self, config: SmtpConfig, pool_size: int = 4) -> None:
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

    async def send(self, message: EmailMessage) -> SendResult:
        """Deliver `message` to its one To address. Never raises for SMTP or network trouble."""
        try:
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
        try:
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
            reply = await protocol.read_response(timeout=self.config.timeout)
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
