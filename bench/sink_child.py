"""The local SMTP sink as a process of its own, so the bench's own CPU does not slow what it receives
from, and what it parses does not slow the bench: `python -m bench.sink_child`.

Prints `port <n>` once listening, then one line per accepted message, `<received_at> <recipient>`
(wall-clock seconds, as `SmtpSink` records them), flushed at once; runs until stdin closes.
"""

from __future__ import annotations

import sys

from enrollstream.smtp_sink import SmtpSink, SunkMessage


class _PrintingSink(SmtpSink):
    def record(self, message: SunkMessage) -> None:
        sys.stdout.write(f"{message.received_at:.6f} {message.recipient}\n")
        sys.stdout.flush()


def main() -> None:
    with _PrintingSink() as sink:
        print(f"port {sink.port}", flush=True)
        sys.stdin.read()  # the bench closes it (or dies): then stop


if __name__ == "__main__":
    main()
