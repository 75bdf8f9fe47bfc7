"""Snapshots: bytes written to the changelog per command, and heap per restored contact, for the
snapshot as it was (every enrollment embeds its campaign definition, every field written) and as it is
(compact: the definition by reference to its version in the catalog, fields at their default left out).

In process, no broker: the seeded commands (bench.workload) decided by the real pure domain; every
accepted command that changed a contact writes one snapshot, measured both ways. Then the contacts'
final states are parsed back both ways under tracemalloc (before: `ContactState.model_validate_json`
of the embedded form, each enrollment its own definition; after: `state_from_snapshot` of the compact
form, the catalog's one definition per version shared). Value: compact bytes per command; baseline: the
embedded form's bytes per command (ratio = after / before). Deterministic figures, no timing.
"""

from __future__ import annotations

import gc
import statistics
import tracemalloc
from collections.abc import Callable

from bench import workload
from bench.common import Result, Sizes
from enrollstream.domain import (
    CampaignDefinition,
    ContactState,
    Enroll,
    aggregate_key,
    decide,
    fold,
    initial_state,
    parse_command,
    snapshot_bytes,
    state_from_snapshot,
)
from enrollstream.domain.rejections import Accepted

TARGET = "no repeated campaign definitions in a snapshot (issue 14); bytes per command, before and after"


def _heap_per_contact(parse: Callable[[bytes], ContactState], values: list[bytes]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        states = [parse(v) for v in values]
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del states
    return round(held / len(values))


def measure(commands: int) -> dict[str, float]:
    catalog = {(c.account_id, c.campaign_id, c.version): c for c in workload.campaigns()}
    latest = {c.campaign_id: c for c in workload.campaigns()}

    def get_version(account_id: str, campaign_id: str, version: int) -> CampaignDefinition | None:
        return catalog.get((account_id, campaign_id, version))

    def resolves(account_id: str, campaign: CampaignDefinition) -> bool:
        return get_version(account_id, campaign.campaign_id, campaign.version) is campaign

    states: dict[str, ContactState] = {}
    before: list[int] = []
    after: list[int] = []
    for record in workload.commands(commands):
        if record.command_id is None:
            continue  # a poison pill: no snapshot
        command = parse_command(record.value)
        if isinstance(command, Enroll) and command.data.campaign is None:
            data = command.data.model_copy(update={"campaign": latest[command.data.campaign_id]})
            command = command.model_copy(update={"data": data})
        key = aggregate_key(command.account_id, command.contact_id)
        state = states.get(key) or initial_state(command.account_id, command.contact_id)
        decision = decide(command, state)
        if isinstance(decision, Accepted) and decision.events:
            states[key] = state = fold(state, decision.events)
            before.append(len(state.model_dump_json()))
            after.append(len(snapshot_bytes(state, resolves)))
    final = list(states.values())
    embedded = [s.model_dump_json().encode() for s in final]
    compact = [snapshot_bytes(s, resolves) for s in final]
    return {
        "snapshots": len(before),
        "contacts": len(final),
        "bytes_per_command_before": statistics.fmean(before),
        "bytes_per_command_after": statistics.fmean(after),
        "largest_before": max(before),
        "largest_after": max(after),
        "heap_per_contact_before": _heap_per_contact(ContactState.model_validate_json, embedded),
        "heap_per_contact_after": _heap_per_contact(lambda v: state_from_snapshot(v, get_version), compact),
    }


async def scenario(sizes: Sizes, say: Callable[[str], None]) -> Result:
    figures = measure(sizes.decider_commands)
    before, after = figures["bytes_per_command_before"], figures["bytes_per_command_after"]
    say(
        f"snapshots: {after:,.0f} B per command (was {before:,.0f}); heap per restored contact "
        f"{figures['heap_per_contact_after']:,} B (was {figures['heap_per_contact_before']:,})"
    )
    return Result(
        status="measured",
        unit="B",
        target=TARGET,
        value=round(after, 1),
        baseline=round(before, 1),
        baseline_name="the same snapshots, every definition embedded (before issue 14; ratio: after/before)",
        target_met=after < before,
        params={key: round(value, 1) for key, value in figures.items()},
    )
