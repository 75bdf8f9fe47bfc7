"""A local SMTP sink on 127.0.0.1 for the demo and the crash suite: accepts every message and keeps
what it needs to check delivery (recipient, subject, Message-ID). Recipients on its reject list are
refused with 550 at RCPT, the way a mailbox that does not exist bounces. Not for production mail."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import default as default_policy
from typing import Any, TextIO

from aiosmtpd.controller import Controller

from enrollstream.stack.processes import free_port


@dataclass(frozen=True)
class SunkMessage:
    recipient: str
    subject: str
    message_id: str
    received_at: float = field(default_factory=time.time)  # wall clock, when its DATA was accepted


async def _ehlo_with_pipelining(session: Any, hostname: str, responses: list[str]) -> list[str]:
    """The EHLO answer with PIPELINING (RFC 2920) offered, as relays offer it: aiosmtpd reads the
    commands of a pipelined group in order from its buffer."""
    session.host_name = hostname
    return [*responses[:-1], "250-PIPELINING", responses[-1]]


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        return await _ehlo_with_pipelining(session, hostname, responses)

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


# --- the sink in a process of its own (benchmarks) ---------------------------------------------------
#
# A sink in the sender's own process shares its event loop / GIL: the figure measured would be the
# sink's as much as the sender's. `SinkProcess` runs `python -m enrollstream.smtp_sink` with
# `processes` listeners on one port (SO_REUSEPORT: the kernel spreads the connections over them); each
# accepted message is one line "<accept time>\t<Message-ID>\t<recipient>" in the record file. The
# Message-ID is read from the header block with a regular expression, not the `email` parser: the
# sink should cost as little CPU as it can, the machine's cores being shared with the sender.

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*?)\r?$", re.IGNORECASE | re.MULTILINE)


class _RecordingHandler:
    def __init__(self, record: TextIO) -> None:
        self.record = record

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        return await _ehlo_with_pipelining(session, hostname, responses)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        end = content.find(b"\r\n\r\n")
        found = _MESSAGE_ID.search(content, 0, end if end >= 0 else len(content))
        message_id = found.group(1).decode("ascii", "replace") if found else ""
        now = time.time()
        for recipient in envelope.rcpt_tos:
            self.record.write(f"{now:.6f}\t{message_id}\t{recipient.lower()}\n")
        return "250 2.0.0 Ok: queued"


def _listen(port: int, record_path: str) -> None:
    from aiosmtpd.smtp import SMTP

    async def serve(record: TextIO) -> None:
        handler = _RecordingHandler(record)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="sink.local", data_size_limit=None),
            SmtpSink.host,
            port,
            reuse_port=True,
        )
        print("listening", flush=True)
        async with server:
            await server.serve_forever()

    # line-buffered: each accepted message is readable at once
    with open(record_path, "a", buffering=1) as record, contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(record))


class SinkProcess:
    """`processes` sink processes listening on one port of 127.0.0.1; `received()` reads what they
    accepted (accept time, Message-ID, recipient)."""

    host = "127.0.0.1"

    def __init__(self, processes: int = 1) -> None:
        if not 1 <= processes <= 16:
            raise ValueError("processes must be between 1 and 16")
        self.processes = processes
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="enrollstream-sink-")
        self._children: list[subprocess.Popen[str]] = []
        self._read = [0] * processes  # bytes of each record file parsed into _received
        self._received: list[SunkMessage] = []

    def __enter__(self) -> SinkProcess:
        try:
            for i in range(self.processes):
                child = subprocess.Popen(
                    [sys.executable, "-m", "enrollstream.smtp_sink", str(self.port), self._record(i)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                self._children.append(child)
                assert child.stdout is not None
                if child.stdout.readline().strip() != "listening":
                    raise RuntimeError(f"sink process {i} did not start (exit code {child.poll()})")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for child in self._children:
            child.terminate()
        for child in self._children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._children = []
        self._dir.cleanup()

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children]

    def _record(self, i: int) -> str:
        return os.path.join(self._dir.name, f"received-{i}.tsv")

    def received(self) -> list[SunkMessage]:
        """Every message accepted so far, in no particular order (complete lines only). Reads only
        what was appended since the last call."""
        for i in range(self.processes):
            try:
                with open(self._record(i), "rb") as record:
                    record.seek(self._read[i])
                    text = record.read()
            except FileNotFoundError:
                continue
            end = text.rfind(b"\n") + 1  # a line being written is left for the next call
            self._read[i] += end
            for line in text[:end].decode().splitlines():
                at, message_id, recipient = line.split("\t")
                self._received.append(SunkMessage(recipient, "", message_id, float(at)))
        return list(self._received)


def main(argv: list[str] | None = None) -> int:
    """`python -m enrollstream.smtp_sink PORT RECORD_FILE`: one sink listener (see SinkProcess)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[0].isdigit():
        print("usage: python -m enrollstream.smtp_sink PORT RECORD_FILE", file=sys.stderr)
        return 2
    _listen(int(args[0]), args[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
