"""State engines: the local state store's engine chosen by measurement (issue 14, deliverable 2).

The store is a cache of the compacted aggregates changelog: raw snapshot bytes per aggregate key, and
the changelog offset applied, written in the same atomic write as the data. Each engine runs the same
four phases on N realistic snapshots (`workload.snapshot_bytes` of the compact template, as the
decider writes them), each phase in a fresh subprocess (`python -m bench.state_engines PHASE ENGINE
DIR N ...`) so its resident memory is its own:

1. load: N (key, value) written in shuffled key order (a partition's changelog is in hash order, not
   key order) in batches of 2,000, each batch one atomic write that also stores the applied offset;
   seconds, RSS delta (VmRSS; RssAnon and RssFile apart: LMDB's mmap pages count as RssFile), peak
   RSS (VmHWM) and bytes on disk after close;
2. open: reopen the store and read the applied offset (a warm restart; the files are in the page cache);
3. gets: random point gets (a decider's cache miss), one lookup per key;
4. tail: overwrite random keys in batches of 500, each with the offset (a changelog tail applied).

Engines, with the settings a product would run (each survives a process kill with every committed
batch; after an OS crash each is consistent, possibly without its last batches):
- rocksdict: RocksDB, raw bytes keys, a WriteBatch per batch, WAL on, no fsync per write; block cache
  32 MiB, write buffer 16 MiB x 2, bloom filter 10 bits/key, LZ4 (index and filter blocks are kept
  outside the block cache: inside it, data blocks evicted them and point gets ran 2-5x slower);
- lmdb: one environment, one write transaction per batch, `metasync=False` (one fsync per commit, the
  meta page's own left out: a crash can undo the last transaction, never corrupt the tree),
  `readahead=False` (random reads);
- sqlite: WAL, `synchronous=NORMAL`, one transaction per batch, `INSERT OR REPLACE` into a WITHOUT
  ROWID table, page cache 32 MiB; sqlite-rowid: the same into an ordinary (rowid) table, because a
  WITHOUT ROWID row over about 1 KB spills to an overflow page (a 1.2 KB snapshot then costs 4 KiB).
The baseline is the raw bound of a cold load: the same bytes appended to one file (no index, no fsync).
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from bench import workload
from bench.common import Result, Sizes, median
from enrollstream.domain import snapshot_bytes

ENGINES = ("rocksdict", "lmdb", "sqlite", "sqlite-rowid")
CHOSEN = "rocksdict"
LOAD_BATCH = 2_000
TAIL_BATCH = 500
OFFSET_KEY = b"\x00applied-offset"  # sorts before every aggregate key, which is text
CACHE_BYTES = 32 * 2**20
WRITE_BUFFER_BYTES = 16 * 2**20
SEED = 20261203
TARGET = (
    "the store's share of a cold rebuild: N contacts written within issue 14's 1M-in-60 s pace, "
    "under 1 KiB of RSS per contact (chosen engine)"
)


class Store(Protocol):
    def write(self, items: list[tuple[bytes, bytes]], offset: int) -> None: ...
    def get(self, key: bytes) -> bytes | None: ...
    def applied_offset(self) -> int | None: ...
    def close(self) -> None: ...


def _offset_bytes(offset: int) -> bytes:
    return offset.to_bytes(8, "big")


class RocksStore:
    def __init__(self, path: Path) -> None:
        from rocksdict import BlockBasedOptions, Cache, DBCompressionType, Options, Rdict

        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(2)
        options.set_compression_type(DBCompressionType.lz4())
        table = BlockBasedOptions()
        table.set_block_cache(Cache(CACHE_BYTES))
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        self.db = Rdict(str(path), options)

    def write(self, items: list[tuple[bytes, bytes]], offset: int) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for key, value in items:
            batch.put(key, value)
        batch.put(OFFSET_KEY, _offset_bytes(offset))
        self.db.write(batch)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.db.get(key)
        return value

    def applied_offset(self) -> int | None:
        value = self.get(OFFSET_KEY)
        return None if value is None else int.from_bytes(value, "big")

    def close(self) -> None:
        self.db.close()


class LmdbStore:
    def __init__(self, path: Path, contacts: int, *, sync: bool = True) -> None:
        import lmdb

        map_size = max(2**30, contacts * 8 * 2**10)  # virtual only: the file grows with the data
        self.env = lmdb.open(str(path), map_size=map_size, sync=sync, metasync=False, readahead=False)

    def write(self, items: list[tuple[bytes, bytes]], offset: int) -> None:
        with self.env.begin(write=True) as txn:
            for key, value in items:
                txn.put(key, value)
            txn.put(OFFSET_KEY, _offset_bytes(offset))

    def get(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            value: bytes | None = txn.get(key)
            return value

    def applied_offset(self) -> int | None:
        value = self.get(OFFSET_KEY)
        return None if value is None else int.from_bytes(value, "big")

    def close(self) -> None:
        self.env.close()


class SqliteStore:
    def __init__(self, path: Path, *, without_rowid: bool = True) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path / "state.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(f"PRAGMA cache_size=-{CACHE_BYTES // 1024}")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS state (key BLOB PRIMARY KEY, value BLOB NOT NULL)"
            + (" WITHOUT ROWID" if without_rowid else "")
        )

    def write(self, items: list[tuple[bytes, bytes]], offset: int) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", items)
        self.db.execute(
            "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (OFFSET_KEY, _offset_bytes(offset))
        )
        self.db.execute("COMMIT")

    def get(self, key: bytes) -> bytes | None:
        row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def applied_offset(self) -> int | None:
        value = self.get(OFFSET_KEY)
        return None if value is None else int.from_bytes(value, "big")

    def close(self) -> None:
        self.db.close()


def open_store(engine: str, path: Path, contacts: int) -> Store:
    if engine == "rocksdict":
        return RocksStore(path)
    if engine == "lmdb":
        return LmdbStore(path, contacts)
    if engine == "sqlite":
        return SqliteStore(path)
    if engine == "sqlite-rowid":
        return SqliteStore(path, without_rowid=False)
    raise ValueError(f"unknown engine {engine!r}")


# ---- the child: one phase in a fresh process ----


def memory() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM (peak) of this process, in bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            name = line.split(":", 1)[0]
            if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[name] = int(line.split()[1]) * 1024
    return out


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk (blocks, not apparent sizes: LMDB's file may be sparse)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def _template() -> str:
    return snapshot_bytes(workload.template_snapshot(), lambda account, campaign: True).decode()


def _batches(order: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


def _load(store: Store, template: str, contacts: int) -> float:
    order = list(range(contacts))
    random.Random(SEED).shuffle(order)
    seconds = 0.0
    offset = 0
    for numbers in _batches(order, LOAD_BATCH):
        items = [workload.snapshot_bytes(template, i) for i in numbers]  # made outside the clock
        offset += len(items)
        started = time.perf_counter()
        store.write(items, offset - 1)
        seconds += time.perf_counter() - started
    return seconds


def _baseline(path: Path, template: str, contacts: int) -> float:
    """The same bytes appended to one file, length-prefixed: what any store's cold load is bound by."""
    order = list(range(contacts))
    random.Random(SEED).shuffle(order)
    seconds = 0.0
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "raw.bin", "wb") as out:
        for numbers in _batches(order, LOAD_BATCH):
            items = [workload.snapshot_bytes(template, i) for i in numbers]
            started = time.perf_counter()
            framed = (len(k).to_bytes(4, "big") + k + len(v).to_bytes(4, "big") + v for k, v in items)
            out.write(b"".join(framed))
            seconds += time.perf_counter() - started
        started = time.perf_counter()
        out.flush()
        seconds += time.perf_counter() - started
    return seconds


def child(phase: str, engine: str, path: Path, contacts: int, count: int) -> dict[str, Any]:
    template = _template() if phase in ("load", "baseline", "tail") else ""
    numbers = random.Random(SEED + 1).choices(range(contacts), k=count)
    keys = [workload.snapshot_bytes("", i)[0] for i in numbers]
    gc.collect()
    before = memory()
    out: dict[str, Any] = {"phase": phase, "engine": engine, "contacts": contacts}
    if phase == "baseline":
        out["seconds"] = _baseline(path, template, contacts)
        out["disk_bytes"] = disk_bytes(path)
        return out
    started = time.perf_counter()
    store = open_store(engine, path, contacts)
    applied = store.applied_offset()
    out["open_seconds"] = time.perf_counter() - started
    out["applied_offset"] = applied
    if phase == "load":
        out["seconds"] = _load(store, template, contacts)
    elif phase == "gets":
        started = time.perf_counter()
        found = sum(store.get(key) is not None for key in keys)
        out["seconds"] = time.perf_counter() - started
        out["found"] = found
    elif phase == "tail":
        offset = applied or 0
        seconds = 0.0
        for chunk in _batches(list(range(count)), TAIL_BATCH):
            items = [(keys[j], workload.snapshot_bytes(template, j)[1]) for j in chunk]
            offset += len(items)
            started = time.perf_counter()
            store.write(items, offset)
            seconds += time.perf_counter() - started
        out["seconds"] = seconds
    gc.collect()
    after = memory()
    out["memory_before"] = before
    out["memory_after"] = after
    started = time.perf_counter()
    store.close()
    out["close_seconds"] = time.perf_counter() - started
    out["disk_bytes"] = disk_bytes(path)
    return out


def main() -> None:
    phase, engine, path, contacts, count = sys.argv[1:6]
    print(json.dumps(child(phase, engine, Path(path), int(contacts), int(count))))


# ---- the scenario: phases per engine, each in its own process ----


async def _run_child(phase: str, engine: str, path: Path, contacts: int, count: int = 0) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.state_engines",
        phase,
        engine,
        str(path),
        str(contacts),
        str(count),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"state engine child ({phase} {engine}) failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def _delta(r: dict[str, Any], field: str) -> int:
    return int(r["memory_after"][field] - r["memory_before"][field])


async def measure_engine(
    engine: str, contacts: int, gets: int, overwrites: int, workdir: Path
) -> dict[str, Any]:
    path = workdir / engine
    shutil.rmtree(path, ignore_errors=True)
    load = await _run_child("load", engine, path, contacts)
    reads = await _run_child("gets", engine, path, contacts, gets)
    tail = await _run_child("tail", engine, path, contacts, overwrites)
    if reads["applied_offset"] != contacts - 1 or reads["found"] != gets:
        raise RuntimeError(
            f"{engine}: read back offset {reads['applied_offset']}, {reads['found']}/{gets} keys"
        )
    if tail["applied_offset"] != contacts - 1:
        raise RuntimeError(f"{engine}: the tail opened at offset {tail['applied_offset']}")
    figures = {
        "contacts": contacts,
        "load_seconds": round(load["seconds"], 3),
        "load_contacts_per_s": round(contacts / load["seconds"]),
        "load_rss_delta_mib": round(_delta(load, "VmRSS") / 2**20, 1),
        "load_rss_anon_delta_mib": round(_delta(load, "RssAnon") / 2**20, 1),
        "load_rss_file_delta_mib": round(_delta(load, "RssFile") / 2**20, 1),
        "load_rss_bytes_per_contact": round(_delta(load, "VmRSS") / contacts),
        "load_peak_rss_delta_mib": round(
            (load["memory_after"]["VmHWM"] - load["memory_before"]["VmRSS"]) / 2**20, 1
        ),
        "load_close_seconds": round(load["close_seconds"], 3),
        "disk_mib": round(load["disk_bytes"] / 2**20, 1),
        "disk_bytes_per_contact": round(load["disk_bytes"] / contacts),
        "warm_open_seconds": round(reads["open_seconds"], 4),
        "gets": gets,
        "gets_per_s": round(gets / reads["seconds"]),
        "gets_rss_delta_mib": round(_delta(reads, "VmRSS") / 2**20, 1),
        "gets_rss_anon_delta_mib": round(_delta(reads, "RssAnon") / 2**20, 1),
        "gets_rss_file_delta_mib": round(_delta(reads, "RssFile") / 2**20, 1),
        "tail_keys": overwrites,
        "tail_seconds": round(tail["seconds"], 3),
        "tail_keys_per_s": round(overwrites / tail["seconds"]),
        "tail_rss_delta_mib": round(_delta(tail, "VmRSS") / 2**20, 1),
        "disk_mib_after_tail": round(tail["disk_bytes"] / 2**20, 1),
    }
    shutil.rmtree(path, ignore_errors=True)
    return figures


async def scenario(sizes: Sizes, say: Callable[[str], None], workdir: Path | None = None) -> Result:
    contacts = sizes.state_engine_contacts
    reps = sizes.reps if contacts <= 100_000 else sizes.restore_reps_above_100k
    template = _template()
    with _scratch(workdir) as tmp:
        root = Path(tmp)
        runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in ENGINES}
        baselines: list[float] = []
        for rep in range(reps):
            for engine in ENGINES:
                figures = await measure_engine(
                    engine, contacts, sizes.state_engine_gets, sizes.state_engine_overwrites, root
                )
                runs[engine].append(figures)
                say(
                    f"state engine {engine} ({contacts:,}, rep {rep + 1}/{reps}): load "
                    f"{figures['load_seconds']:.2f} s (RSS +{figures['load_rss_delta_mib']} MiB: anon "
                    f"+{figures['load_rss_anon_delta_mib']}, file +{figures['load_rss_file_delta_mib']}), "
                    f"{figures['disk_mib']} MiB on disk; open {figures['warm_open_seconds'] * 1000:.1f} ms; "
                    f"{figures['gets_per_s']:,} gets/s; tail {figures['tail_keys_per_s']:,} keys/s"
                )
            raw = await _run_child("baseline", "raw", root / "raw", contacts)
            shutil.rmtree(root / "raw", ignore_errors=True)
            baselines.append(raw["seconds"])
    per_engine = {engine: _median_figures(rows) for engine, rows in runs.items()}
    chosen = per_engine[CHOSEN]
    budget = 60 * contacts / 1_000_000
    return Result(
        status="measured",
        unit="s",
        target=TARGET,
        value=chosen["load_seconds"],
        baseline=median(baselines),
        baseline_name="the same bytes appended to one file, no index, no fsync (ratio: times slower)",
        runs=[r["load_seconds"] for r in runs[CHOSEN]],
        baseline_runs=[round(b, 3) for b in baselines],
        target_met=chosen["load_seconds"] < budget and chosen["load_rss_bytes_per_contact"] < 1024,
        params={
            "chosen": CHOSEN,
            "contacts": contacts,
            "reps": reps,
            "snapshot_bytes": len(workload.snapshot_bytes(template, 0)[1]),
            "load_batch": LOAD_BATCH,
            "tail_batch": TAIL_BATCH,
            "engines": per_engine,
            "settings": {
                "rocksdict": "raw_mode bytes keys, WriteBatch per batch, WAL on, no fsync per write, "
                "block cache 32 MiB (index and filter blocks outside it), write buffer 16 MiB x 2, "
                "bloom 10 bits/key, LZ4",
                "lmdb": "one env, map_size max(1 GiB, 8 KiB x N), one write txn per batch, sync on, "
                "metasync off, readahead off",
                "sqlite": "WAL, synchronous=NORMAL, one transaction per batch, INSERT OR REPLACE, "
                "WITHOUT ROWID (key BLOB PRIMARY KEY, value BLOB), cache_size 32 MiB",
                "sqlite-rowid": "the same as sqlite in an ordinary rowid table (values stored inline)",
            },
            "memory_method": "VmRSS / RssAnon / RssFile deltas (and VmHWM peak) from /proc/self/status "
            "around each phase, in a fresh subprocess per phase, after gc",
            "order": "cold load in shuffled key order (a changelog partition is in hash order)",
        },
    )


def _scratch(workdir: Path | None) -> tempfile.TemporaryDirectory[str]:
    """A scratch directory under `workdir` (the cache dir: on disk, where /tmp may be tmpfs)."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix="bench-state-", dir=workdir)


def _median_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: median([r[key] for r in rows]) for key in rows[0]}


if __name__ == "__main__":
    main()
