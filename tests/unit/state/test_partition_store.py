"""The store's contract, one test case run against every backend (in memory, RocksDB on disk)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enrollstream.state import (
    MemoryStore,
    PartitionStore,
    RocksDBStore,
    StoreIdentity,
    StoreOptions,
    open_rocksdb_store,
)
from enrollstream.state.store import APPLIED_OFFSET_KEY

IDENTITY = StoreIdentity("app.aggregates", 3)


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PartitionStore]:
    made: PartitionStore
    if request.param == "memory":
        made = MemoryStore()
        made.reset(IDENTITY)
    else:
        made, found = open_rocksdb_store(tmp_path / "p3", IDENTITY)
        assert found == "created"
    yield made
    made.close()


def test_a_new_store_has_applied_nothing(store: PartitionStore) -> None:
    assert store.applied_offset() is None
    assert store.get(b"acct/ada") is None
    assert store.identity() == IDENTITY.encode()


def test_values_and_the_applied_offset_are_written_together(store: PartitionStore) -> None:
    store.write({b"acct/ada": b"snapshot-1", b"acct/bob": b"snapshot-2"}, 17)
    assert store.get(b"acct/ada") == b"snapshot-1"
    assert store.get(b"acct/bob") == b"snapshot-2"
    assert store.applied_offset() == 17
    store.write([(b"acct/ada", b"snapshot-3"), (b"acct/bob", None)], 21)  # None: a tombstone
    assert store.get(b"acct/ada") == b"snapshot-3"
    assert store.get(b"acct/bob") is None
    assert store.applied_offset() == 21
    assert store.approximate_count() >= 1


def test_a_write_with_a_key_in_the_metadata_range_changes_nothing(store: PartitionStore) -> None:
    store.write({b"acct/ada": b"v1"}, 5)
    with pytest.raises(ValueError):
        store.write({b"acct/ada": b"v2", APPLIED_OFFSET_KEY: b"\x00" * 8}, 6)
    assert store.get(b"acct/ada") == b"v1"
    assert store.applied_offset() == 5


def test_a_reset_empties_the_store_and_stamps_its_identity(store: PartitionStore) -> None:
    store.write({b"acct/ada": b"v1"}, 5)
    other = StoreIdentity("app.aggregates", 4)
    store.reset(other)
    assert store.get(b"acct/ada") is None
    assert store.applied_offset() is None
    assert store.identity() == other.encode()


# --- on disk only ---------------------------------------------------------------------------------


def _opened(tmp_path: Path, identity: StoreIdentity = IDENTITY) -> tuple[RocksDBStore, str]:
    return open_rocksdb_store(tmp_path / "p3", identity)


def test_a_store_on_disk_keeps_its_data_and_offset_across_a_reopen(tmp_path: Path) -> None:
    store, found = _opened(tmp_path)
    store.write({b"acct/ada": b"v1"}, 9)
    store.close()
    again, found = _opened(tmp_path)
    assert found == "opened"
    assert again.get(b"acct/ada") == b"v1" and again.applied_offset() == 9
    again.close()


def test_a_store_made_for_another_partition_is_rebuilt_not_trusted(tmp_path: Path) -> None:
    store, _ = _opened(tmp_path)
    store.write({b"acct/ada": b"v1"}, 9)
    store.close()
    other, found = _opened(tmp_path, StoreIdentity("app.aggregates", 4))
    assert found == "created"
    assert other.get(b"acct/ada") is None and other.applied_offset() is None
    other.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: (path / "CURRENT").write_bytes(b"garbage\n"),
        lambda path: [f.write_bytes(b"\x00" * 64) for f in path.glob("MANIFEST-*")],
    ],
    ids=["current", "manifest"],
)
def test_a_corrupt_store_is_deleted_and_starts_empty(
    tmp_path: Path, damage: Callable[[Path], object]
) -> None:
    store, _ = _opened(tmp_path)
    store.write({b"acct/ada": b"v1"}, 9)
    store.close()
    damage(tmp_path / "p3")
    rebuilt, found = _opened(tmp_path)
    assert found == "rebuilt-corrupt"
    assert rebuilt.applied_offset() is None and rebuilt.get(b"acct/ada") is None
    rebuilt.write({b"acct/ada": b"v2"}, 10)
    rebuilt.close()
    assert _opened(tmp_path)[1] == "opened"


def test_a_store_another_owner_holds_open_gives_a_private_copy_deleted_on_close(tmp_path: Path) -> None:
    held, _ = _opened(tmp_path)
    held.write({b"acct/ada": b"v1"}, 9)
    private, found = open_rocksdb_store(tmp_path / "p3", IDENTITY, StoreOptions(lock_wait_s=0.2))
    assert found == "private" and private.path != held.path
    assert private.applied_offset() is None  # rebuilt from the changelog by its caller
    private.close()
    assert not private.path.exists()
    assert held.get(b"acct/ada") == b"v1"
    held.close()
