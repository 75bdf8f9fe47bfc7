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
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from enum import StrEnum
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class Behaviour(StrEnum):
    ACCEPT = "accept"  # 250 after DATA, message recorded
    REJECT_RCPT = "reject_rcpt"  # 550 5.1.1 at RCPT
    DEFER_RCPT = "defer_rcpt"  # 451 4.3.0 at RCPT
    DROP_AT_RCPT = "drop_at_rcpt"  # close the connection instead of answering RCPT
    REJECT_DATA = "reject_data"  # 554 5.7.1 after the content (recorded)
    DEFER_DATA = "defer_data"  # 451 4.3.0 after the content (recorded)
    DROP_AFTER_DATA = "drop_after_data"  # read the whole content (recorded), then drop without a reply
    HANG_AFTER_DATA = "hang_after_data"  # read the whole content (recorded), then never reply


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
        if behaviour is Behaviour.HANG_AFTER_DATA:
            await self.server.released.wait()  # until the server stops
            return "421 4.3.0 shutting down"
        self.server.queued += 1
        return f"250 2.0.0 Ok: queued as TEST{self.server.queued:05d}"


class RecordingSmtpServer:
    host = "127.0.0.1"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._behaviours: dict[str, Behaviour] = {}
        self._messages: list[ReceivedMessage] = []
        self.queued = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self.released = asyncio.Event()  # bound to the server's loop on first use there

    # --- configuration and observations -----------------------------------------------------------

    def behave(self, recipient: str, behaviour: Behaviour) -> None:
        with self._lock:
            self._behaviours[recipient.lower()] = behaviour

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
        handler = _Handler(self)

        def factory() -> Any:
            return SMTP(handler, hostname="mx.recording.test", ident="RecordingSmtpServer", timeout=30)

        return await asyncio.get_running_loop().create_server(factory, sock=sock)

    async def _shutdown(self) -> None:
        self.released.set()
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
