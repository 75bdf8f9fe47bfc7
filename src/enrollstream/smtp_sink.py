"""A local SMTP sink on 127.0.0.1 for the demo and the crash suite: accepts every message and keeps
what it needs to check delivery (recipient, subject, Message-ID). Recipients on its reject list are
refused with 550 at RCPT, the way a mailbox that does not exist bounces. Not for production mail."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.controller import Controller

from enrollstream.stack.processes import free_port


@dataclass(frozen=True)
class SunkMessage:
    recipient: str
    subject: str
    message_id: str
    received_at: float = field(default_factory=time.time)  # wall clock, when its DATA was accepted


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.sink.refuses(address):
            self.sink.count_refused(address)
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        parsed = message_from_bytes(content, policy=default_policy)
        for recipient in envelope.rcpt_tos:
            self.sink.record(
                SunkMessage(recipient.lower(), str(parsed["Subject"] or ""), str(parsed["Message-ID"] or ""))
            )
        return "250 2.0.0 Ok: queued"


class SmtpSink:
    host = "127.0.0.1"

    def __init__(self, reject: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._messages: list[SunkMessage] = []
        self._reject = {address.lower() for address in reject}
        self._refused: Counter[str] = Counter()
        self.port = free_port()
        self._controller = Controller(_Handler(self), hostname=self.host, port=self.port)

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def reject(self, address: str) -> None:
        """From now on, refuse this recipient with 550 5.1.1 at RCPT."""
        with self._lock:
            self._reject.add(address.lower())

    def refuses(self, address: str) -> bool:
        with self._lock:
            return address.lower() in self._reject

    def count_refused(self, address: str) -> None:
        with self._lock:
            self._refused[address.lower()] += 1

    @property
    def refused(self) -> Counter[str]:
        """How many times each rejected recipient was refused."""
        with self._lock:
            return Counter(self._refused)

    def record(self, message: SunkMessage) -> None:
        with self._lock:
            self._messages.append(message)

    @property
    def messages(self) -> list[SunkMessage]:
        with self._lock:
            return list(self._messages)

    def message_id_counts(self) -> Counter[str]:
        return Counter(m.message_id for m in self.messages)
