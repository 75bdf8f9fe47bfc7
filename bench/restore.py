"""Restore: decider partition restore time and resident memory per contact, by contacts on the partition.

Snapshots are realistic: a template contact enrolled in two campaigns by real Enroll commands and the
real `fold`, serialised once, then given each contact its own contact id, enrollment ids and command
ids, and produced to partition 0 of a one-partition changelog topic. Each measurement runs in a fresh
subprocess (`bench.restore_child`): time of `DeciderService._restore(0)`, and memory as the RSS delta
around it (VmRSS, after gc, states kept). The baseline reads the same partition to its end with the same
consumer settings, parsing nothing. Sizes above what the machine's free memory would hold, by the
per-contact figure of the size before, are not run (and say so).
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

from bench import workload
from bench.common import Result, Sizes, median, produce, run_id
from enrollstream.adapters.kafka.topics import Topics, ensure_topics
from enrollstream.domain import CampaignDefinition, ContactState

TARGET = "1M contacts restored < 30 s, < 1 KiB resident per contact"


def mem_available() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


async def _changelog(bootstrap: str, contacts: int) -> Topics:
    topics = Topics(prefix=f"bench-{run_id()}.")
    await ensure_topics(bootstrap, topics, 1)
    template = workload.template_snapshot().model_dump_json()
    chunk = 50_000
    for start in range(0, contacts, chunk):
        records = [workload.snapshot_bytes(template, i) for i in range(start, min(contacts, start + chunk))]
        await produce(bootstrap, topics.aggregates, [(k, v) for k, v in records])
    return topics


async def _child(bootstrap: str, topics: Topics, mode: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.restore_child",
        bootstrap,
        topics.prefix,
        mode,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"restore child ({mode}) failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def heap_per_contact(sample: int = 2_000, *, share_campaigns: bool = False) -> int:
    """Python heap held per restored ContactState (tracemalloc, in process, parsed from memory): a check
    on the RSS figure, and what sharing one CampaignDefinition per campaign would save."""
    template = workload.template_snapshot().model_dump_json()
    values = [workload.snapshot_bytes(template, i)[1] for i in range(sample)]
    gc.collect()
    tracemalloc.start()
    try:
        states = [ContactState.model_validate_json(v) for v in values]
        if share_campaigns:
            shared: dict[str, CampaignDefinition] = {}
            for state in states:
                for e in state.enrollments.values():
                    e.campaign = shared.setdefault(e.campaign.campaign_id, e.campaign)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del states
    return round(held / sample)


async def scenario(bootstrap: str, sizes: Sizes, say: Callable[[str], None]) -> Result:
    template = workload.template_snapshot()
    snapshot_bytes = len(template.model_dump_json())
    per_size: dict[str, dict[str, Any]] = {}
    per_contact_estimate: float | None = None
    last: dict[str, Any] | None = None
    for contacts in sizes.restore_contacts:
        if per_contact_estimate is not None and per_contact_estimate * contacts > 0.6 * mem_available():
            per_size[str(contacts)] = {
                "status": "not_run",
                "reason": f"would need about {per_contact_estimate * contacts / 2**30:.1f} GiB resident, "
                f"more than 60% of the {mem_available() / 2**30:.1f} GiB available",
            }
            say(f"restore {contacts:,}: not run ({per_size[str(contacts)]['reason']})")
            continue
        say(f"restore {contacts:,}: producing snapshots")
        topics = await _changelog(bootstrap, contacts)
        reps = sizes.reps if contacts <= 100_000 else sizes.restore_reps_above_100k
        await _child(bootstrap, topics, "raw")  # warm-up: page cache, broker
        restores = [await _child(bootstrap, topics, "restore") for _ in range(reps)]
        raws = [await _child(bootstrap, topics, "raw") for _ in range(reps)]
        for r in restores:
            if r["contacts"] != contacts:
                raise RuntimeError(f"restored {r['contacts']} contacts, expected {contacts}")
        seconds = median([r["seconds"] for r in restores])
        per_contact = median([(r["rss_after"] - r["rss_before"]) / contacts for r in restores])
        per_contact_estimate = per_contact
        last = per_size[str(contacts)] = {
            "status": "measured",
            "contacts": contacts,
            "reps": reps,
            "restore_seconds": round(seconds, 3),
            "restore_runs": [round(r["seconds"], 3) for r in restores],
            "raw_read_seconds": round(median([r["seconds"] for r in raws]), 3),
            "raw_read_runs": [round(r["seconds"], 3) for r in raws],
            "contacts_per_s": round(contacts / seconds),
            "rss_bytes_per_contact": round(per_contact),
            "rss_delta_mib": round(per_contact * contacts / 2**20, 1),
        }
        say(
            f"restore {contacts:,}: {seconds:.2f} s ({contacts / seconds:,.0f} contacts/s), "
            f"{per_contact:,.0f} B/contact resident; raw read {last['raw_read_seconds']:.2f} s"
        )
    if last is None:
        raise RuntimeError("no restore size could run")
    largest = last["contacts"]
    million = per_size.get("1000000", {})
    # Memory per contact is a per-contact target: any size over 1 KiB misses it; so does a 1M that could
    # not run for want of memory. Otherwise the 1M row decides; without one (quick mode), time is open.
    measured = [s for s in per_size.values() if s["status"] == "measured"]
    met: bool | None = None
    if any(s["rss_bytes_per_contact"] >= 1024 for s in measured) or million.get("status") == "not_run":
        met = False
    elif million.get("status") == "measured":
        met = million["restore_seconds"] < 30
    return Result(
        status="measured",
        unit="s",
        target=TARGET,
        value=last["restore_seconds"],
        baseline=last["raw_read_seconds"],
        baseline_name="reading the same changelog partition to its end, nothing parsed (ratio: times slower)",
        runs=last["restore_runs"],
        baseline_runs=last["raw_read_runs"],
        target_met=met,
        params={
            "headline_contacts": largest,
            "sizes": per_size,
            "tracemalloc_bytes_per_contact": heap_per_contact(),
            "tracemalloc_bytes_per_contact_campaigns_shared": heap_per_contact(share_campaigns=True),
            "memory_method": "RSS delta (VmRSS) around DeciderService._restore(0) in a fresh subprocess, "
            "after gc, states kept",
            "snapshot": f"ContactState, {len(template.enrollments)} enrollments, {snapshot_bytes} bytes JSON",
            "changelog": "one partition, uncompressed as the decider writes it, all contacts on partition 0",
        },
    )
