"""Encoding of records and the dead-letter format."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

# Anything larger is refused before parsing: a command is a few KiB at most, and a huge one is a bug
# (or an attack) upstream that must not stall the partition.
MAX_COMMAND_BYTES = 256 * 1024


def encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


def key_bytes(key: str) -> bytes:
    return key.encode()


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be processed, with why, kept with its original bytes."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

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
        headers.extend((f"original.header.{k}", v) for k, v in (record.headers or ()))
        return cls(record.key, record.value, headers)


def header(headers: Any, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return bytes(value).decode()
    return None
