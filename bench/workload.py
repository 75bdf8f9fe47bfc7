"""The fixed, seeded data the scenarios use.

Commands come from the chaos suite's generator (`enrollstream.chaos.workload`): every contact command
type in realistic proportions over a pool of contacts, some poison pills, so the decider accepts,
rejects, defers and dead-letters like in production. BulkEnrolls are left out (their fan-out feeds the
commands topic again, which would blur commands/s). Events for the projector and snapshots for the
restore are decided by the real pure domain (`decide` + `fold`) from the same commands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from enrollstream.chaos import ACCOUNT, CAMPAIGNS, ChaosPlan, Published, chaos_campaign, workload
from enrollstream.domain import (
    CampaignDefinition,
    ContactState,
    Enroll,
    Event,
    aggregate_key,
    decide,
    fold,
    initial_state,
    parse_command,
)
from enrollstream.domain.ids import enrollment_id
from enrollstream.domain.rejections import Accepted

SEED = 20261122
CONTACTS_PER_COMMAND = 0.2  # 5 commands per contact on average


def campaigns() -> list[CampaignDefinition]:
    return [chaos_campaign(c) for c in CAMPAIGNS]


def commands(n: int, seed: int = SEED) -> list[Published]:
    """`n` commands (no BulkEnroll), the same for the same `n` and seed."""
    contacts = max(10, int(n * CONTACTS_PER_COMMAND))
    out: list[Published] = []
    plan = ChaosPlan(commands=int(n * 1.05) + 10, contacts=contacts, seed=seed)
    for record in workload(plan, f"bench{seed}"):
        if record.children or (isinstance(record.key, str) and record.key.endswith("/")):
            continue  # a BulkEnroll
        out.append(record)
        if len(out) == n:
            break
    return out


@dataclass(frozen=True)
class DecidedEvent:
    key: str
    event: Event


def events(n: int, seed: int = SEED) -> list[DecidedEvent]:
    """At least `n` domain events, decided in process from the seeded commands by the pure domain."""
    catalog = {c.campaign_id: c for c in campaigns()}
    out: list[DecidedEvent] = []
    states: dict[str, ContactState] = {}
    size = max(100, 2 * n)  # about 0.6 events per command in this mix
    while len(out) < n:
        out.clear()
        states.clear()
        for record in commands(size, seed):
            if record.command_id is None:
                continue  # a poison pill: no events
            command = parse_command(record.value)
            if isinstance(command, Enroll) and command.data.campaign is None:
                campaign = catalog[command.data.campaign_id]
                data = command.data.model_copy(update={"campaign": campaign})
                command = command.model_copy(update={"data": data})
            key = aggregate_key(command.account_id, command.contact_id)
            state = states.get(key) or initial_state(command.account_id, command.contact_id)
            decision = decide(command, state)
            if isinstance(decision, Accepted) and decision.events:
                states[key] = fold(state, decision.events)
                out.extend(DecidedEvent(key, e) for e in decision.events)
        size = size * 3 // 2
    return out[:n]


TEMPLATE_CONTACT = "tplcontact"


def template_snapshot() -> ContactState:
    """A contact enrolled in two campaigns (first step scheduled in each): real Enrolls, the real fold."""
    catalog = {c.campaign_id: c for c in campaigns()}
    state = initial_state(ACCOUNT, TEMPLATE_CONTACT)
    for n, campaign_id in enumerate(CAMPAIGNS):
        raw = {
            "command_id": f"tpl-enroll-{n}",
            "type": "Enroll.v1",
            "account_id": ACCOUNT,
            "issued_at": "2026-01-05T09:00:00+00:00",
            "actor": "bench",
            "data": {
                "contact_id": TEMPLATE_CONTACT,
                "campaign_id": campaign_id,
                "campaign": json.loads(catalog[campaign_id].model_dump_json()),
                "contact": {"name": "Template Contact", "email": f"{TEMPLATE_CONTACT}@example.org"},
                "batch_number": 1,
            },
        }
        decision = decide(parse_command(raw), state)
        assert isinstance(decision, Accepted), decision
        state = fold(state, decision.events)
    return state


def snapshot_bytes(template_json: str, i: int) -> tuple[bytes, bytes]:
    """The template snapshot for contact number `i`: its own contact id, enrollment ids, command ids."""
    contact = f"c{i:08d}"
    text = template_json
    for campaign_id in CAMPAIGNS:
        text = text.replace(
            enrollment_id(ACCOUNT, TEMPLATE_CONTACT, campaign_id, 1),
            enrollment_id(ACCOUNT, contact, campaign_id, 1),
        )
    text = text.replace("tpl-enroll-", f"{contact}-enroll-").replace(TEMPLATE_CONTACT, contact)
    return aggregate_key(ACCOUNT, contact).encode(), text.encode()
