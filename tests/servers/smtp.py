"""A real SMTP server (aiosmtpd) on 127.0.0.1, in a thread of its own, that records what it receives
and misbehaves per recipient on request.

    with RecordingSmtpServer() as smtp:
        smtp.behave("gone@example.org", Behaviour.REJECT_RCPT)   # 550 at RCPT
        ...
        smtp.messages  # every message whose content arrived, in order

Recipients without a behaviour are accepted. The server runs on its own event loop, so tests can
drive it from any loop (or none) and a client in the test's loop can never deadlock it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from enum import StrEnum
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


class Behaviour(StrEnum):
    ACCEPT = "accept"  # 250 after DATA, message recorded
    REJECT_RCPT = "reject_rcpt"  # 550 5.1.1 at RCPT
    DEFER_RCPT = "defer_rcpt"  # 451 4.3.0 at RCPT
    DROP_AT_RCPT = "drop_at_rcpt"  # close the connection instead of answering RCPT
    DROP_AT_DATA = "drop_at_data"  # close the connection on the DATA command, before the 354
    REJECT_DATA = "reject_data"  # 554 5.7.1 after the content (recorded)
    DEFER_DATA = "defer_data"  # 451 4.3.0 after the content (recorded)
    DROP_AFTER_DATA = "drop_after_data"  # read the whole content (recorded), then drop without a reply
    HANG_AFTER_DATA = "hang_after_data"  # read the whole content (recorded), then never reply
    HOLD_AFTER_DATA = "hold_after_data"  # read the content (recorded), 250 only once the test releases it


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes  # as received after the DATA dot-unstuffing, CRLF line endings
    behaviour: Behaviour

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _Handler:
    def __init__(self, server: RecordingSmtpServer) -> None:
        self.server = server

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        behaviour = self.server.behaviour_for(address)
        if behaviour is Behaviour.REJECT_RCPT:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if behaviour is Behaviour.DEFER_RCPT:
            return f"451 4.3.0 <{address}>: Temporary lookup failure"
        if behaviour is Behaviour.DROP_AT_RCPT:
            assert server.transport is not None
            server.transport.abort()
            return "421 4.3.0 closing"  # never arrives: the connection is gone
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        behaviours = {self.server.behaviour_for(rcpt) for rcpt in envelope.rcpt_tos}
        behaviour = next(iter(sorted(behaviours - {Behaviour.ACCEPT}, key=str)), Behaviour.ACCEPT)
        content = envelope.original_content or b""
        received = ReceivedMessage(str(envelope.mail_from), tuple(envelope.rcpt_tos), content, behaviour)
        self.server.record(received)
        if behaviour is Behaviour.REJECT_DATA:
            return "554 5.7.1 Message rejected as spam"
        if behaviour is Behaviour.DEFER_DATA:
            return "451 4.3.0 Try again later"
        if behaviour is Behaviour.DROP_AFTER_DATA:
            assert server.transport is not None
            server.transport.abort()
            return "250 2.0.0 never sent: the connection is gone"
        if behaviour is Behaviour.HOLD_AFTER_DATA:
            hold = self.server.hold_for(envelope.rcpt_tos[0])
            await asyncio.get_running_loop().run_in_executor(None, hold.wait, 60)
        elif behaviour is Behaviour.HANG_AFTER_DATA:
            await self.server.released.wait()  # until the server stops
            return "421 4.3.0 shutting down"
        self.server.queued += 1
        return f"250 2.0.0 Ok: queued as TEST{self.server.queued:05d}"


class _PipeliningHandler(_Handler):
    """Offers PIPELINING (RFC 2920) in its EHLO answer, as relays do; aiosmtpd reads the commands in
    order from its buffer either way."""

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


class _RecordingSMTP(SMTP):  # type: ignore[misc]
    def __init__(self, recorder: RecordingSmtpServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recorder = recorder

    def connection_made(self, transport: Any) -> None:
        self._recorder.opened(transport)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._recorder.closed(self.transport)
        super().connection_lost(exc)

    async def smtp_MAIL(self, arg: str) -> None:
        # RCPT and DATA already read along with MAIL: the client pipelined them (RFC 2920).
        buffered = bytes(getattr(self._reader, "_buffer", b""))
        if b"RCPT TO:" in buffered and b"DATA\r\n" in buffered:
            self._recorder.count_pipelined()
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        rcpts = self.envelope.rcpt_tos if self.envelope is not None else []
        if any(self._recorder.behaviour_for(r) is Behaviour.DROP_AT_DATA for r in rcpts):
            assert self.transport is not None
            self.transport.abort()
            return
        await super().smtp_DATA(arg)


class RecordingSmtpServer:
    """`tls=(certfile, keyfile)`: offer and require STARTTLS. `credentials`: require AUTH PLAIN/LOGIN.
    `pipelining`: offer PIPELINING."""

    host = "127.0.0.1"

    def __init__(
        self,
        tls: tuple[str, str] | None = None,
        credentials: dict[str, str] | None = None,
        *,
        pipelining: bool = False,
    ) -> None:
        self._tls = tls
        self.pipelining = pipelining
        self._credentials = credentials
        self._lock = threading.Lock()
        self._behaviours: dict[str, Behaviour] = {}
        self._messages: list[ReceivedMessage] = []
        self.queued = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self.released = asyncio.Event()  # bound to the server's loop on first use there
        self._holds: dict[str, threading.Event] = {}
        self.connections = 0  # connections accepted so far
        self.pipelined = 0  # transactions whose MAIL, RCPT and DATA arrived together
        self._open: set[Any] = set()  # their transports, while open

    # --- configuration and observations -----------------------------------------------------------

    def behave(self, recipient: str, behaviour: Behaviour) -> None:
        with self._lock:
            self._behaviours[recipient.lower()] = behaviour

    def hold_for(self, recipient: str) -> threading.Event:
        with self._lock:
            return self._holds.setdefault(recipient.lower(), threading.Event())

    def release(self, recipient: str) -> None:
        """Let a HOLD_AFTER_DATA message of this recipient get its 250."""
        self.hold_for(recipient).set()

    def behaviour_for(self, address: str) -> Behaviour:
        with self._lock:
            return self._behaviours.get(address.lower(), Behaviour.ACCEPT)

    def record(self, received: ReceivedMessage) -> None:
        with self._lock:
            self._messages.append(received)

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._messages)

    def count_pipelined(self) -> None:
        with self._lock:
            self.pipelined += 1

    def opened(self, transport: Any) -> None:
        with self._lock:
            self.connections += 1
            self._open.add(transport)

    def closed(self, transport: Any) -> None:
        with self._lock:
            self._open.discard(transport)

    def drop_connections(self) -> int:
        """Close every open connection from the server's side, as a relay does to idle clients: how
        many were open."""
        assert self._loop is not None

        async def drop() -> int:
            with self._lock:
                transports = list(self._open)
            for transport in transports:
                transport.abort()
            return len(transports)

        return asyncio.run_coroutine_threadsafe(drop(), self._loop).result(timeout=10)

    def received_for(self, recipient: str) -> list[ReceivedMessage]:
        return [m for m in self.messages if recipient.lower() in (r.lower() for r in m.rcpt_tos)]

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> RecordingSmtpServer:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="recording-smtp", daemon=True)
        self._thread.start()
        sock = socket.create_server((self.host, 0))
        self.port = sock.getsockname()[1]
        self._server = asyncio.run_coroutine_threadsafe(self._serve(sock), loop).result(timeout=10)
        return self

    async def _serve(self, sock: socket.socket) -> asyncio.Server:
        handler = _PipeliningHandler(self) if self.pipelining else _Handler(self)
        options: dict[str, Any] = {}
        if self._tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self._tls)
            options.update(tls_context=context, require_starttls=True)
        if self._credentials is not None:
            options.update(authenticator=self._authenticate, auth_required=True)
            options.update(auth_require_tls=self._tls is not None)

        def factory() -> Any:
            return _RecordingSMTP(
                self,
                handler,
                hostname="mx.recording.test",
                ident="RecordingSmtpServer",
                timeout=30,
                **options,
            )

        return await asyncio.get_running_loop().create_server(factory, sock=sock)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self._credentials is not None
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            if self._credentials.get(login) == password:
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    async def _shutdown(self) -> None:
        self.released.set()
        with self._lock:
            for hold in self._holds.values():
                hold.set()
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None
        self._thread = None

    def __enter__(self) -> RecordingSmtpServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
