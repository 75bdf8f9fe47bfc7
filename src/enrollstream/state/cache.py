"""A bounded cache of decoded aggregates: the hot contacts stay parsed, the rest are read from the store."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class DecodedCache(Generic[T]):
    """Least recently used first out, by weight: an entry weighs what the caller says its decoded form
    holds in memory (estimated from its encoded size), and the total stays under `budget_bytes`."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.weight = 0
        self._entries: OrderedDict[str, tuple[T, int]] = OrderedDict()

    def get(self, key: str) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: str, value: T, weight: int) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.weight -= old[1]
        if weight > self.budget_bytes:
            return  # larger than the whole cache: read from the store each time
        self._entries[key] = (value, weight)
        self.weight += weight
        self.resize(self.budget_bytes)

    def resize(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        while self.weight > self.budget_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.weight -= evicted

    def discard(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.weight -= old[1]

    def clear(self) -> None:
        self._entries.clear()
        self.weight = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries
