"""Decider with many contacts resident on disk: commands/s when every command is for a contact that is
in the partition's store but not in the decoded cache, against the transactional passthrough.

Each partition's changelog first holds `resident` contacts (the bench's template snapshot, each contact
with its own ids, produced keyed like the decider writes them), and the decider restores them into its
RocksDB stores before the clock starts (cold, raw). Then `commands` Enrolls, each for a different
resident contact, into a campaign none of them is in: every one is read from the store, decoded,
decided, and written back. In the same run: the same commands through the passthrough, and through a
decider whose partitions hold no other contact (the cost of the store is the difference). The decider's
resident memory is sampled before its restore and after its last command (same process, after gc).
"""

from __future__ import annotations

import gc
import json
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import workload
from bench.common import Result, Sizes, median, produce
from bench.decider import Run, fresh_topics, run_decider, run_passthrough
from bench.restore import produce_snapshots
from bench.restore_child import rss_bytes
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.chaos import ACCOUNT, chaos_campaign

TARGET = "with 1M contacts resident: >= 0.5 of the same decider with none (the store's cost per command)"
CAMPAIGN = "bench-resident"


def _enroll(i: int) -> tuple[bytes, bytes]:
    contact = f"c{i:08d}"
    command = {
        "command_id": f"resident-{uuid.uuid4()}",
        "type": "Enroll.v1",
        "account_id": ACCOUNT,
        "issued_at": "2026-01-06T09:00:00+00:00",
        "actor": "bench",
        "data": {
            "contact_id": contact,
            "campaign_id": CAMPAIGN,
            "contact": {"name": "Resident Contact", "email": f"{contact}@example.org"},
        },
    }
    return f"{ACCOUNT}/{contact}".encode(), json.dumps(command).encode()


async def _topics(bootstrap: str, sizes: Sizes, resident: int, commands: int) -> Topics:
    topics = await fresh_topics(
        bootstrap, sizes.partitions, [*workload.campaigns(), chaos_campaign(CAMPAIGN)]
    )
    await produce_snapshots(bootstrap, topics.aggregates, resident)
    step = max(1, resident // commands) if resident else 1
    await produce(bootstrap, topics.commands, [_enroll(i * step) for i in range(commands)])
    return topics


async def _decider(bootstrap: str, topics: Topics, sizes: Sizes, n: int, work: Path) -> tuple[Run, int]:
    gc.collect()
    before = rss_bytes()
    state_dir = Path(tempfile.mkdtemp(dir=work))
    run = await run_decider(bootstrap, topics, sizes, n, state_dir=state_dir)
    gc.collect()
    return run, rss_bytes() - before


async def scenario(bootstrap: str, sizes: Sizes, say: Callable[[str], None]) -> Result:
    resident, n = sizes.resident_contacts, sizes.resident_commands
    with tempfile.TemporaryDirectory(prefix="enrollstream-bench-resident-") as tmp:
        work = Path(tmp)
        say(f"decider_resident: producing {resident:,} resident contacts and {n:,} commands")
        loaded = await _topics(bootstrap, sizes, resident, n)
        empty = await _topics(bootstrap, sizes, 0, n)
        # One run each: a second decider run on the same commands would decide duplicates, not Enrolls.
        runs: dict[str, list[Any]] = {}
        resident_run, rss = await _decider(bootstrap, loaded, sizes, n, work)
        runs["resident"] = [resident_run]
        runs["rss"] = [rss]
        runs["empty"] = [(await _decider(bootstrap, empty, sizes, n, work))[0]]
        runs["passthrough"] = [await run_passthrough(bootstrap, loaded, sizes, n)]
        resident_rate = median([r.rate for r in runs["resident"]])
        empty_rate = median([r.rate for r in runs["empty"]])
        passthrough_rate = median([r.rate for r in runs["passthrough"]])
        say(
            f"decider_resident: {resident_rate:,.0f} commands/s with {resident:,} contacts resident, "
            f"{empty_rate:,.0f} with none, passthrough {passthrough_rate:,.0f}; "
            f"RSS +{runs['rss'][0] / 2**20:,.0f} MiB"
        )
    return Result(
        status="measured",
        unit="commands/s",
        target=TARGET,
        value=resident_rate,
        baseline=passthrough_rate,
        baseline_name="aiokafka transactional passthrough of the same commands",
        runs=[r.rate for r in runs["resident"]],
        baseline_runs=[r.rate for r in runs["passthrough"]],
        target_met=resident_rate >= 0.5 * empty_rate if resident >= 1_000_000 else None,
        params={
            "resident_contacts": resident,
            "commands": n,
            "partitions": sizes.partitions,
            "decider_with_no_resident_contacts": round(empty_rate),
            "ratio_to_no_resident_contacts": round(resident_rate / empty_rate, 3),
            "rss_growth_bytes": runs["rss"][0],
            "rss_growth_bytes_per_resident_contact": round(runs["rss"][0] / max(1, resident), 1),
            "state": "RocksDB stores on disk, cache 96 MiB decoded + 32 MiB RocksDB (the worker's defaults)",
            "commands_are": "Enroll into a campaign no resident contact is in, each for a different contact",
        },
    )
