"""The store behind a small interface: raw values by key, and the changelog offset applied, written
together in one atomic write."""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Metadata lives beside the data under keys no aggregate key can take (ids are bounded and refuse NUL).
META_PREFIX = b"\x00"
APPLIED_OFFSET_KEY = META_PREFIX + b"applied-offset"
IDENTITY_KEY = META_PREFIX + b"identity"
# What a write takes: values by key (None: delete the key).
Changes = Mapping[bytes, bytes | None] | Iterable[tuple[bytes, bytes | None]]
FORMAT = 1  # bump when the layout changes: a store of another format is rebuilt, never read


@dataclass(frozen=True)
class StoreIdentity:
    """What a store is a cache of. A store found under a path but made for something else (another
    topic, partition or format) is rebuilt rather than trusted."""

    topic: str
    partition: int
    format: int = FORMAT

    def encode(self) -> bytes:
        return f"{self.format}|{self.partition}|{self.topic}".encode()


def encode_offset(offset: int) -> bytes:
    return struct.pack(">q", offset)


def decode_offset(raw: bytes) -> int:
    (offset,) = struct.unpack(">q", raw)
    return int(offset)


class PartitionStore(ABC):
    """Raw changelog values by key, for one partition, with the offset applied.

    `write` is atomic: the changes and the new applied offset are visible together or not at all, also
    after a crash in the middle of it."""

    @abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def write(self, changes: Changes, applied_offset: int, *, logged: bool = True) -> None:
        """Put each value (None: delete the key) and record `applied_offset`, the next changelog offset
        to read, in one atomic write. Not `logged`: a crash before the next `flush` may take the store
        back to an earlier write (whole writes, never a part of one): for bulk copies from the changelog."""

    def flush(self) -> None:  # noqa: B027 - a store kept in memory has nothing to flush
        """Make every write so far survive a crash of the process."""

    @abstractmethod
    def applied_offset(self) -> int | None:
        """The next changelog offset to read (None: nothing applied, a new or emptied store)."""

    @abstractmethod
    def identity(self) -> bytes | None: ...

    @abstractmethod
    def reset(self, identity: StoreIdentity) -> None:
        """Empty the store and stamp it with `identity`: the start of a rebuild."""

    @abstractmethod
    def approximate_count(self) -> int: ...

    @abstractmethod
    def close(self) -> None: ...


class MemoryStore(PartitionStore):
    """The same contract in a dict: for a decider without a state directory, and for unit tests."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def write(self, changes: Changes, applied_offset: int, *, logged: bool = True) -> None:
        items = changes.items() if isinstance(changes, Mapping) else changes
        staged = dict(items)  # validated in full before anything changes: all or nothing
        for key in staged:
            check_key(key)
        for key, value in staged.items():
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value
        self._data[APPLIED_OFFSET_KEY] = encode_offset(applied_offset)

    def applied_offset(self) -> int | None:
        raw = self._data.get(APPLIED_OFFSET_KEY)
        return None if raw is None else decode_offset(raw)

    def identity(self) -> bytes | None:
        return self._data.get(IDENTITY_KEY)

    def reset(self, identity: StoreIdentity) -> None:
        self._data = {IDENTITY_KEY: identity.encode()}

    def approximate_count(self) -> int:
        return sum(1 for key in self._data if not key.startswith(META_PREFIX))

    def close(self) -> None:
        pass


def check_key(key: bytes) -> None:
    """A data key may not take the metadata's range (it would overwrite the applied offset)."""
    if key.startswith(META_PREFIX):
        raise ValueError(f"a data key may not start with {META_PREFIX!r}: {key!r}")
