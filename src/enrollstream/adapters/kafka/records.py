"""Encoding of records and the dead-letter format."""

from __future__ import annotations

import hashlib
import traceback
from dataclasses import dataclass
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from pydantic import BaseModel

# Anything larger is refused before parsing: a command is a few KiB at most, and a huge one is a bug
# (or an attack) upstream that must not stall the partition.
MAX_COMMAND_BYTES = 256 * 1024

# The largest record our producers write (their `max_request_size`, Kafka's default; the topics'
# `max.message.bytes`, 1 MiB + 12 B by default, must not be lower). Whatever one record would exceed it
# can never be written, however often it is retried: it is refused before it is produced.
MAX_RECORD_BYTES = 1024 * 1024
# What the decider lets one output record (an event, a snapshot) be: the limit, less room for the record
# batch's own overhead and the headers.
MAX_OUTPUT_BYTES = MAX_RECORD_BYTES - 16 * 1024

# A dead letter that would not fit keeps its original by reference: size, sha256, the original headers
# up to a budget and this much of the original's first bytes, with `original.truncated: true`.
DEAD_LETTER_PREFIX_BYTES = 64 * 1024
DEAD_LETTER_KEY_BYTES = 1024
DEAD_LETTER_HEADER_BYTES = 16 * 1024


def record_size(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
) -> int:
    """The upper bound a producer checks against its `max_request_size` (aiokafka's own estimate)."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers or [])))


def encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


def key_bytes(key: str) -> bytes:
    return key.encode()


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be processed, with why, kept with its original bytes, or by reference
    (size, sha256 and a prefix) when those could never be written as one record."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def truncated(self) -> bool:
        return header(self.headers, "original.truncated") == "true"

    @classmethod
    def of(
        cls, record: Any, reason: str, error: BaseException | None = None, role: str = "decider"
    ) -> DeadLetter:
        headers = [
            ("error.reason", reason.encode()),
            ("error.role", role.encode()),
            ("original.topic", str(record.topic).encode()),
            ("original.partition", str(record.partition).encode()),
            ("original.offset", str(record.offset).encode()),
            ("original.timestamp", str(record.timestamp).encode()),
        ]
        if error is not None:
            headers.append(("error.class", type(error).__name__.encode()))
            detail = "".join(traceback.format_exception_only(type(error), error)).strip()
            headers.append(("error.message", detail[:4000].encode()))
        budget = DEAD_LETTER_HEADER_BYTES
        dropped = 0
        for k, v in record.headers or ():
            name, data = f"original.header.{k}", bytes(v or b"")
            if len(name) + len(data) > budget:
                dropped += 1
                continue
            budget -= len(name) + len(data)
            headers.append((name, data))
        if dropped:
            headers.append(("original.headers.dropped", str(dropped).encode()))
        key: bytes | None = record.key
        value: bytes | None = record.value
        if record_size(key, value, headers) <= MAX_OUTPUT_BYTES:
            return cls(key, value, headers)
        # By reference: whatever is left of it fits however large the original was.
        headers.append(("original.truncated", b"true"))
        if value is not None:
            headers.append(("original.size", str(len(value)).encode()))
            headers.append(("original.sha256", hashlib.sha256(value).hexdigest().encode()))
            value = value[:DEAD_LETTER_PREFIX_BYTES]
            headers.append(("original.prefix.bytes", str(len(value)).encode()))
        if key is not None and len(key) > DEAD_LETTER_KEY_BYTES:
            headers.append(("original.key.size", str(len(key)).encode()))
            headers.append(("original.key.sha256", hashlib.sha256(key).hexdigest().encode()))
            key = key[:DEAD_LETTER_KEY_BYTES]
        return cls(key, value, headers)


def header(headers: Any, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return bytes(value).decode()
    return None
