"""Local state for the decider: a store per owned partition that caches the aggregates changelog.

The changelog (the compacted aggregates topic) is the truth; a store is a cache of it on local disk that
records, in the same atomic write as its data, the changelog offset it has applied. It is written only
after the Kafka transaction that produced the data commits, so it always holds a prefix of the
changelog, and on assignment only the tail after that offset is read. A missing, foreign or corrupt
store is rebuilt from the changelog.
"""

from enrollstream.state.cache import DecodedCache
from enrollstream.state.partition import PartitionState
from enrollstream.state.recovery import RecoveryReport, recover
from enrollstream.state.rocksdb import RocksDBStore, StoreOptions, open_rocksdb_store
from enrollstream.state.store import MemoryStore, PartitionStore, StoreIdentity

__all__ = [
    "DecodedCache",
    "MemoryStore",
    "PartitionState",
    "PartitionStore",
    "RecoveryReport",
    "RocksDBStore",
    "StoreIdentity",
    "StoreOptions",
    "open_rocksdb_store",
    "recover",
]
