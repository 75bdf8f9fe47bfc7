"""One owned partition's aggregates: a bounded cache of decoded ones over the store of encoded ones."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from enrollstream.state.cache import DecodedCache
from enrollstream.state.store import PartitionStore

T = TypeVar("T")


class StateStoreError(Exception):
    """The local store failed to read or write (disk, corruption): not the input's fault. The decider
    retries after rebuilding the store from the changelog, never dead-letters the command."""


class PartitionState(Generic[T]):
    def __init__(
        self,
        store: PartitionStore,
        decode: Callable[[bytes], T],
        *,
        cache_bytes: int,
        weigh: Callable[[bytes], int],
    ) -> None:
        self.store = store
        self.cache: DecodedCache[T] = DecodedCache(cache_bytes)
        self._decode = decode
        self._weigh = weigh

    def get(self, key: str) -> T | None:
        """The aggregate under `key` as of the last committed transaction (None: none yet). A snapshot
        that cannot be decoded raises whatever decoding raised: that command's failure alone."""
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        try:
            raw = self.store.get(key.encode())
        except Exception as exc:
            raise StateStoreError(f"reading {key!r} from the state store failed: {exc!r}") from exc
        if raw is None:
            return None
        value = self._decode(raw)
        self.cache.put(key, value, self._weigh(raw))
        return value

    def commit(self, changes: Mapping[str, tuple[bytes | None, T | None]], applied_offset: int) -> None:
        """After the Kafka transaction that wrote these snapshots committed: store them with the next
        changelog offset in one write, and keep their decoded forms hot."""
        try:
            self.store.write({key.encode(): raw for key, (raw, _) in changes.items()}, applied_offset)
        except Exception as exc:
            self.cache.clear()
            raise StateStoreError(
                f"writing {len(changes)} aggregates to the state store failed: {exc!r}"
            ) from exc
        for key, (raw, value) in changes.items():
            if raw is None or value is None:
                self.cache.discard(key)
            else:
                self.cache.put(key, value, self._weigh(raw))

    def applied_offset(self) -> int | None:
        return self.store.applied_offset()

    def close(self) -> None:
        self.cache.clear()
        self.store.close()
