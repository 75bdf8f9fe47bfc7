"""A local SMTP sink on 127.0.0.1 for the demo and the crash suite: accepts every message and keeps
what it needs to check delivery (recipient, subject, Message-ID). Not for production mail."""

from __future__ import annotations

import threading
import time
from collections import Counter
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

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[SunkMessage] = []
        self.port = free_port()
        self._controller = Controller(_Handler(self), hostname=self.host, port=self.port)

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def record(self, message: SunkMessage) -> None:
        with self._lock:
            self._messages.append(message)

    @property
    def messages(self) -> list[SunkMessage]:
        with self._lock:
            return list(self._messages)

    def message_id_counts(self) -> Counter[str]:
        return Counter(m.message_id for m in self.messages)
