from __future__ import annotations

import pytest

from enrollstream.state import MemoryStore, PartitionState, StoreIdentity
from enrollstream.state.partition import StateStoreError
from enrollstream.state.store import Changes


class FailingStore(MemoryStore):
    """A disk that fails: the only double here, for what a real disk will not do on demand."""

    failing = False

    def get(self, key: bytes) -> bytes | None:
        if self.failing:
            raise OSError("I/O error")
        return super().get(key)

    def write(self, changes: Changes, applied_offset: int) -> None:
        if self.failing:
            raise OSError("No space left on device")
        super().write(changes, applied_offset)


def _state(store: MemoryStore, budget: int = 1_000) -> PartitionState[str]:
    store.reset(StoreIdentity("t", 0))
    decoded: list[bytes] = []

    def decode(raw: bytes) -> str:
        decoded.append(raw)
        return raw.decode().upper()

    state = PartitionState(store, decode, cache_bytes=budget, weigh=len)
    state.decoded = decoded  # type: ignore[attr-defined]
    return state


def test_a_committed_aggregate_is_hot_and_an_evicted_one_is_decoded_from_the_store() -> None:
    store = MemoryStore()
    state = _state(store, budget=10)
    state.commit({"acct/ada": (b"ada-v1", "ADA-V1"), "acct/bob": (b"bob-v1", "BOB-V1")}, 4)
    assert store.applied_offset() == 4 and store.get(b"acct/ada") == b"ada-v1"
    assert state.get("acct/bob") == "BOB-V1" and state.decoded == []  # type: ignore[attr-defined]
    assert state.get("acct/ada") == "ADA-V1"  # evicted by bob (6 + 6 > 10): read from the store
    assert state.decoded == [b"ada-v1"]  # type: ignore[attr-defined]
    assert state.get("acct/nobody") is None


def test_a_failing_store_is_a_state_store_error_not_the_commands_failure() -> None:
    store = FailingStore()
    state = _state(store)
    state.commit({"acct/ada": (b"ada-v1", "ADA-V1")}, 4)
    store.failing = True
    with pytest.raises(StateStoreError):
        state.commit({"acct/ada": (b"ada-v2", "ADA-V2")}, 7)
    assert len(state.cache) == 0  # nothing stale stays hot
    with pytest.raises(StateStoreError):
        state.get("acct/ada")
    store.failing = False
    assert state.get("acct/ada") == "ADA-V1" and store.applied_offset() == 4
