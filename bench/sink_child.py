"""The local SMTP sink as a process of its own, so the bench's own CPU does not slow what it receives
from, and what it parses does not slow the bench: `python -m bench.sink_child`.

Prints `port <n>` once listening, then one line per accepted message, `<received_at> <recipient>`
(wall-clock seconds, as `SmtpSink` records them), flushed at once; runs until stdin closes.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from aiosmtpd.controller import Controller

from enrollstream.smtp_sink import SmtpSink


class _Recipients:
    """Accepts every message and prints its recipients, without parsing it: the bench needs only when
    each arrived, and parsing with the `email` package would take the CPU the workers compete for."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        at = time.time()
        sys.stdout.write("".join(f"{at:.6f} {r.lower()}\n" for r in envelope.rcpt_tos))
        sys.stdout.flush()
        return "250 2.0.0 Ok: queued"


class _PrintingSink(SmtpSink):
    def __init__(self) -> None:
        super().__init__()
        self._controller = Controller(_Recipients(), hostname=self.host, port=self.port)


def main() -> None:
    with _PrintingSink() as sink:
        print(f"port {sink.port}", flush=True)
        sys.stdin.read()  # the bench closes it (or dies): then stop


if __name__ == "__main__":
    main()
