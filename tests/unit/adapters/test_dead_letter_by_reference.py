"""A dead letter always fits in one record: an original too large to copy is kept by reference."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

from enrollstream.adapters.kafka.records import (
    DEAD_LETTER_PREFIX_BYTES,
    MAX_OUTPUT_BYTES,
    DeadLetter,
    header,
    record_size,
)


def consumed(value: bytes, key: bytes = b"a/b", headers: list[tuple[str, bytes]] | None = None) -> object:
    return SimpleNamespace(topic="t.commands", partition=1, offset=9, timestamp=0, key=key, value=value,
                           headers=headers or [])  # fmt: skip


def test_a_small_original_is_kept_whole() -> None:
    letter = DeadLetter.of(consumed(b"{not json"), "not a valid command")
    assert letter.value == b"{not json" and not letter.truncated


def test_an_original_too_large_to_copy_keeps_its_size_hash_and_a_prefix() -> None:
    original = b"x" * 2_000_000
    letter = DeadLetter.of(consumed(original), "too large")
    assert letter.truncated
    assert letter.value == original[:DEAD_LETTER_PREFIX_BYTES]
    assert header(letter.headers, "original.size") == "2000000"
    assert header(letter.headers, "original.sha256") == hashlib.sha256(original).hexdigest()
    assert record_size(letter.key, letter.value, letter.headers) <= MAX_OUTPUT_BYTES


def test_huge_original_headers_and_key_are_bounded_too() -> None:
    headers = [(f"h{i}", b"y" * 100_000) for i in range(30)]
    letter = DeadLetter.of(consumed(b"{}", key=b"k" * 2_000_000, headers=headers), "too large")
    assert record_size(letter.key, letter.value, letter.headers) <= MAX_OUTPUT_BYTES
    assert header(letter.headers, "original.headers.dropped") is not None
    assert header(letter.headers, "original.key.size") == "2000000"
