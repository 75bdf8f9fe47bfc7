"""The store on local disk: RocksDB through rocksdict (why RocksDB: docs/architecture.md "Local state").

Memory is bounded per process, not per partition: every store of the process shares one block cache, and
the memtables of all of them are charged to that same cache by one write buffer manager, so owning more
partitions does not add memory (RocksDB flushes earlier instead).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from enrollstream.state.store import (
    APPLIED_OFFSET_KEY,
    IDENTITY_KEY,
    Changes,
    PartitionStore,
    StoreIdentity,
    check_key,
    decode_offset,
    encode_offset,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreOptions:
    # RocksDB's share of memory for the whole process: the block cache, with the memtables charged to it.
    memory_bytes: int = 32 * 2**20
    # How long to wait for a store another owner (this process or another one) still holds open before
    # using a private copy rebuilt from the changelog.
    lock_wait_s: float = 10.0


_shared: dict[int, tuple[Cache, WriteBufferManager]] = {}


def _memory(limit: int) -> tuple[Cache, WriteBufferManager]:
    if limit not in _shared:
        cache = Cache(limit)
        # Memtables up to half the limit, charged to the cache, so the two together stay within it.
        _shared[limit] = (
            cache,
            WriteBufferManager.new_write_buffer_manager_with_cache(limit // 2, False, cache),
        )
    return _shared[limit]


def _options(settings: StoreOptions) -> Options:
    cache, buffers = _memory(settings.memory_bytes)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_manager(buffers)
    options.set_write_buffer_size(min(16 * 2**20, settings.memory_bytes // 4))
    options.set_max_write_buffer_number(2)
    options.set_compression_type(DBCompressionType.lz4())
    options.set_keep_log_file_num(2)
    options.set_max_log_file_size(1 * 2**20)
    options.set_max_background_jobs(2)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    # Index and filter blocks outside the cache (a few MiB per million keys): inside it, data blocks evict
    # them and point gets ran 2-5 times slower (bench/state_engines.py).
    table.set_cache_index_and_filter_blocks(False)
    table.set_bloom_filter(10, False)  # a miss (a new contact) costs no read of the data blocks
    options.set_block_based_table_factory(table)
    return options


class RocksDBStore(PartitionStore):
    def __init__(self, path: Path, settings: StoreOptions, *, private: bool = False) -> None:
        self.path = path
        self.private = private  # a copy of its own (the shared path was locked): deleted on close
        self._settings = settings
        self._db: Rdict | None = Rdict(str(path), _options(settings))
        # The decider's writes go through the WAL (a killed process loses none; no fsync: what a power loss
        # takes is read again from the changelog). Bulk copies from the changelog skip it and flush at the
        # end, every write of the copy unlogged (its closing offset too: a logged write after unlogged ones
        # would outlive them): a crash in between leaves an earlier whole write, and the copy is redone.
        self._logged = WriteOptions()
        self._unlogged = WriteOptions()
        self._unlogged.disable_wal = True  # type: ignore[method-assign,assignment]  # a property; the stub says a method

    @property
    def db(self) -> Rdict:
        if self._db is None:
            raise RuntimeError(f"the store at {self.path} is closed")
        return self._db

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.db.get(key)
        return value

    def write(self, changes: Changes, applied_offset: int, *, logged: bool = True) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items() if isinstance(changes, Mapping) else changes:
            check_key(key)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(APPLIED_OFFSET_KEY, encode_offset(applied_offset))
        self.db.write(batch, self._logged if logged else self._unlogged)

    def flush(self) -> None:
        self.db.flush()

    def applied_offset(self) -> int | None:
        raw = self.db.get(APPLIED_OFFSET_KEY)
        return None if raw is None else decode_offset(raw)

    def identity(self) -> bytes | None:
        value: bytes | None = self.db.get(IDENTITY_KEY)
        return value

    def reset(self, identity: StoreIdentity) -> None:
        self.db.close()
        self._db = None
        Rdict.destroy(str(self.path))
        self._db = Rdict(str(self.path), _options(self._settings))
        self._db.put(IDENTITY_KEY, identity.encode())

    def approximate_count(self) -> int:
        count = self.db.property_int_value("rocksdb.estimate-num-keys")
        return max(0, (count or 0) - 2)  # the two metadata keys

    def close(self) -> None:
        if self._db is not None:
            self._db.flush()  # what unlogged writes left in memory
            self._db.close()
            self._db = None
        if self.private:
            shutil.rmtree(self.path, ignore_errors=True)


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and (
        "hold" in text or "resource temporarily unavailable" in text or "lock file" in text
    )


def open_rocksdb_store(
    path: Path, identity: StoreIdentity, settings: StoreOptions | None = None
) -> tuple[RocksDBStore, str]:
    """The store at `path` for `identity`, and what was found there: "opened", "created" (nothing was
    there, or another identity's or format's store), "rebuilt-corrupt" (it could not be opened) or
    "private" (another owner still held it: a private copy, rebuilt from the changelog). Any of these
    but "opened" starts empty: the caller rebuilds it from the changelog."""
    settings = settings or StoreOptions()
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    deadline = time.monotonic() + settings.lock_wait_s
    while True:
        try:
            store = RocksDBStore(path, settings)
            break
        except Exception as exc:  # rocksdict raises plain exceptions carrying RocksDB's status text
            if _is_lock_error(exc):
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                private = path.with_name(f"{path.name}.private-{os.getpid()}-{uuid.uuid4().hex[:8]}")
                log.warning(
                    "state store %s is held by another owner (%s); using a private copy %s",
                    path,
                    exc,
                    private,
                )
                store = RocksDBStore(private, settings, private=True)
                store.reset(identity)
                return store, "private"
            log.warning(
                "state store %s cannot be opened (%s); deleting it and rebuilding from the changelog",
                path,
                exc,
            )
            shutil.rmtree(path, ignore_errors=True)
            store = RocksDBStore(path, settings)
            store.reset(identity)
            return store, "rebuilt-corrupt"
    found = store.identity()
    if found != identity.encode():
        if existed and found is not None:
            log.warning(
                "state store %s was made for %r, not %r; rebuilding it", path, found, identity.encode()
            )
        store.reset(identity)
        return store, "created"
    return store, "opened"
