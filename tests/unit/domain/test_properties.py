"""Property tests over random command sequences for one contact.

Commands are drawn with a bias towards the ones that move things (the current step, at its due time),
so runs reach deep lifecycles: queues, retries, expiry, triggers, endings while a step is in flight.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrollstream import schemas_gen
from enrollstream.domain import (
    Accepted,
    Channel,
    ContactCommand,
    ContactState,
    Rejection,
    decide,
    decide_and_fold,
    evolve,
    fold,
    initial_state,
    parse_event,
    snapshot_bytes,
    state_from_snapshot,
    to_integration_events,
)
from enrollstream.domain.commands import command_adapter
from enrollstream.domain.integration import integration_event_adapter

from .scenario import ACCOUNT, CONTACT, DAY, HOUR, T0, blast, campaign, contact, eid, step

CAMPAIGNS = [
    campaign(campaign_id="seq", re_enrollment="after_finished", max_attempts=2),
    campaign(
        campaign_id="queued",
        kind="multi_module",  # expires 7 days after delivery
        when_in_other_campaign="queue",
        queue_timeout=DAY,
        reply_action="handoff",
        steps=[step(Channel.SMS), step(Channel.SMS, delay=HOUR)],
    ),
    blast(campaign_id="auto", awaits_trigger=True, trigger_timeout=2 * DAY, when_in_other_campaign="queue"),
    campaign(campaign_id="cont", reply_action="continue", expiry_after_delivery=DAY),
]
PAUSE_HISTORIES = st.sampled_from(
    [
        [],
        [{"started_at": T0 + HOUR, "ended_at": T0 + DAY}],
        [{"started_at": T0, "ended_at": T0 + HOUR}, {"started_at": T0 + 2 * DAY, "ended_at": None}],
    ]
)
# Weighted by repetition: mostly the commands that move a sequence forward; opt-out ends it all.
KINDS = [
    *["enroll"] * 3,
    *["advance"] * 12,  # the due step if one is scheduled, else a report for the one in flight
    *["due"] * 2,
    *["report"] * 2,
    "reply",
    "open",
    "bounce",
    "opt_out",
    "trigger",
    "trigger",
    "expiry",
    "wait",
    "stop",
    "unenroll",
    "finish",
]


def _command(data: st.DataObject, state: ContactState, now: Any, n: int) -> ContactCommand:
    enrollments = list(state.enrollments.values())
    kind = data.draw(st.sampled_from(KINDS)) if enrollments else "enroll"
    running = [e for e in enrollments if not e.status.is_terminal or e.in_flight]
    pool = running if running and data.draw(st.integers(0, 4)) else enrollments
    target = data.draw(st.sampled_from(pool)) if pool else None
    enrollment_id = target.enrollment_id if target else eid("seq")
    # Reusing an earlier command id now and then exercises idempotency.
    reuse = n and not data.draw(st.integers(0, 5))
    command_id = f"c-{data.draw(st.integers(0, n))}" if reuse else f"c-{n}"
    base: dict[str, Any] = {"command_id": command_id, "account_id": ACCOUNT, "issued_at": now, "actor": "p"}
    on: dict[str, Any] = {"contact_id": CONTACT, "enrollment_id": enrollment_id}
    step_index, attempt = 0, 1
    if target is not None:
        ref = target.scheduled or target.in_flight
        if ref is not None and data.draw(st.integers(0, 4)):
            step_index, attempt = ref.step_index, ref.attempt
        else:
            step_index, attempt = data.draw(st.integers(0, 2)), data.draw(st.integers(1, 3))
    if kind == "advance" and target is not None:
        kind = "report" if target.in_flight else "due"
    if kind == "enroll":
        cmp = data.draw(st.sampled_from(CAMPAIGNS))
        facts = contact(line_type=data.draw(st.sampled_from(["mobile"] * 5 + ["landline"])))
        payload = {
            "contact_id": CONTACT,
            "campaign_id": cmp.campaign_id,
            "campaign": cmp,
            "contact": facts,
            "source": data.draw(st.sampled_from(["api", "bulk_import"])),
            "batch_number": data.draw(st.integers(0, 3)),
            "priority": data.draw(st.booleans()),
        }
        return command_adapter.validate_python({**base, "type": "Enroll.v1", "data": payload})  # type: ignore[return-value]
    payloads: dict[str, tuple[str, dict[str, Any]]] = {
        "advance": ("OpenDetected.v1", on),  # only without a target, which never happens here
        "due": (
            "StepDue.v1",
            {
                **on,
                "step_index": step_index,
                "attempt": attempt,
                "campaign_status": data.draw(st.sampled_from(["active"] * 5 + ["paused"])),
            },
        ),
        "report": (
            "DeliveryReported.v1",
            {
                **on,
                "step_index": step_index,
                "attempt": attempt,
                "outcome": data.draw(
                    st.sampled_from(["sent", "sent", "sent", "failed", "bounced", "unknown", "error"])
                ),
                "retryable": data.draw(st.booleans()),
                "bounce_type": data.draw(st.sampled_from(["hard", "soft", None])),
            },
        ),
        "reply": ("ReplyDetected.v1", on),
        "open": ("OpenDetected.v1", on),
        "bounce": ("BounceDetected.v1", {**on, "bounce_type": data.draw(st.sampled_from(["hard", "soft"]))}),
        "opt_out": ("OptOut.v1", {"contact_id": CONTACT}),
        "trigger": ("ExternalTrigger.v1", on),
        "expiry": ("ExpiryDue.v1", {**on, "campaign_pauses": data.draw(PAUSE_HISTORIES)}),
        "wait": ("WaitTimeout.v1", {**on, "campaign_pauses": data.draw(PAUSE_HISTORIES)}),
        "stop": ("Stop.v1", on),
        "unenroll": ("Unenroll.v1", on),
        "finish": ("MarkFinished.v1", on),
    }
    type_name, payload = payloads[kind]
    return command_adapter.validate_python({**base, "type": type_name, "data": payload})  # type: ignore[return-value]


def _schema_validators() -> dict[str, Any]:
    """Validators for the committed event schemas, when jsonschema is installed (not a dependency yet)."""
    try:
        import jsonschema
    except ImportError:
        return {}
    rendered = schemas_gen.render()
    return {
        path.removeprefix("events/").removesuffix(".json"): jsonschema.Draft202012Validator(json.loads(text))
        for path, text in rendered.items()
        if path.startswith("events/")
    }


VALIDATORS = _schema_validators()


def _lifecycle(state: ContactState) -> dict[str, tuple[str, str | None]]:
    return {k: (e.status.value, e.stop_reason) for k, e in state.enrollments.items()}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_command_sequences_keep_every_invariant(data: st.DataObject) -> None:
    state = initial_state(ACCOUNT, CONTACT)
    history = []
    now = T0
    deliveries: Counter[tuple[str, int]] = Counter()
    integration_ids: set[str] = set()
    for n in range(data.draw(st.integers(1, 40))):
        # Time moves forward; often far enough for the current step or expiry to be due.
        now = now + data.draw(st.sampled_from([timedelta(0), HOUR, HOUR, DAY, DAY, 3 * DAY, 8 * DAY]))
        command = _command(data, state, now, n)
        before = state.model_dump_json()
        decision = decide(command, state)
        assert decide(command, state) == decision  # deterministic
        assert state.model_dump_json() == before  # decide never mutates its input
        if isinstance(decision, Rejection):
            refused, unchanged = decide_and_fold(command, state)
            assert refused == decision and unchanged is state
            continue
        assert isinstance(decision, Accepted)
        terminal_before = {
            k: v for k, v in _lifecycle(state).items() if state.enrollments[k].status.is_terminal
        }
        after = state
        for index, event in enumerate(decision.events):
            assert event.version == state.version + index + 1  # versions increase by one
            after = evolve(after, event)  # never raises on decide's output
            assert parse_event(event.model_dump_json()) == event  # the event matches its model
            if VALIDATORS:  # ... and the committed JSON Schema
                VALIDATORS[event.type].validate(json.loads(event.model_dump_json()))
            for public in to_integration_events(event):
                # Validated as its own class, not through the union: it must be what the union gives.
                assert integration_event_adapter.validate_json(public.model_dump_json()) == public
                assert public.id not in integration_ids
                integration_ids.add(public.id)
            if event.type == "StepDelivered.v1":
                deliveries[(event.enrollment_id or "", event.data.step_index)] += 1  # type: ignore[union-attr]
        assert state.model_dump_json() == before  # evolve never mutates its input
        # The runtime's one call: the same decision, and the working state it applied the events to
        # equal to folding them (the state itself when nothing happened), the input still untouched.
        also, folded = decide_and_fold(command, state)
        assert also == decision and folded == after and (folded is state) == (not decision.events)
        assert state.model_dump_json() == before
        state = after
        history.extend(decision.events)
        assert all(count == 1 for count in deliveries.values()), "a step was delivered twice"
        for key, before in terminal_before.items():
            assert _lifecycle(state)[key] == before, "a terminal enrollment changed its lifecycle"
        for e in state.enrollments.values():
            assert len(set(e.delivered_steps)) == len(e.delivered_steps)
            assert not (e.status.is_terminal and e.scheduled is not None)
    assert fold(initial_state(ACCOUNT, CONTACT), history) == state  # replay gives the same state
    assert ContactState.model_validate_json(state.model_dump_json()) == state  # snapshot round trip
    # ... and through the compact snapshot, every definition by reference to the catalog's version
    versions = {(ACCOUNT, e.campaign_id, e.campaign_version): e.campaign for e in state.enrollments.values()}
    compact = snapshot_bytes(state, lambda account, definition: True)
    assert state_from_snapshot(compact, lambda *version: versions.get(version)) == state


def test_emitted_events_validate_against_the_committed_json_schemas() -> None:
    jsonschema = pytest.importorskip("jsonschema")  # optional: not in the test extra yet
    schemas = {path: json.loads(text) for path, text in schemas_gen.render().items()}
    from .scenario import enroll, sent
    from .scenario import given as scenario_given

    result = scenario_given(enroll(), sent(0)[0]).when(sent(0)[1])
    for event in result.events:
        schema = schemas[f"events/{event.type}.json"]
        jsonschema.validate(json.loads(event.model_dump_json()), schema)
