"""The public integration-event contract: every transition maps to its public type, every internal
event type is either mapped or explicitly bookkeeping, ids are deterministic, and every public event
validates against its committed, versioned JSON Schema."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jsonschema
import pytest

from enrollstream.domain import ids
from enrollstream.domain.events import (
    EVENT_TYPES,
    ContactEnrolled,
    EnrollmentCompleted,
    EnrollmentExpired,
    EnrollmentFailed,
    EnrollmentHandedOff,
    EnrollmentSkipped,
    EnrollmentStopped,
    EnrollmentUnenrolled,
    EventEnvelope,
    MessageBounced,
    MessageOpened,
    ReplyReceived,
    StepBounced,
    StepDelivered,
    event_adapter,
)
from enrollstream.domain.integration import (
    INTEGRATION_EVENT_TYPES,
    integration_event_adapter,
    to_integration_events,
)

from .scenario import ACCOUNT, CAMPAIGN, CONTACT, T0, eid, enroll, given

SCHEMAS = pathlib.Path(__file__).resolve().parents[3] / "schemas"

PUBLIC_TYPES = {
    "enrollment.enrolled",
    "enrollment.skipped",
    "enrollment.sent",
    "enrollment.opened",
    "enrollment.replied",
    "enrollment.bounced",
    "enrollment.unsubscribed",
    "enrollment.stopped",
    "enrollment.completed",
    "enrollment.failed",
    "enrollment.expired",
    "enrollment.handed_off",
    "enrollment.unenrolled",
}

# Internal events that are no transition a subscriber sees (scheduling, attempts, bulk bookkeeping).
# A new internal event type must be added here or mapped in to_integration_events.
BOOKKEEPING = {
    "EnrollmentQueued.v1",
    "EnrollmentReleased.v1",
    "TriggerAwaited.v1",
    "TriggerReceived.v1",
    "StepScheduled.v1",
    "StepDispatched.v1",
    "StepDeferred.v1",  # not a status transition: the step is scheduled again (StepScheduled)
    "StepFailed.v1",
    "StepDeliveryUnknown.v1",
    "ExpiryScheduled.v1",
    "ExpiryCancelled.v1",
    "WaitTimeoutExtended.v1",
    "ContactProfileSet.v1",  # a directory entry, not an enrollment transition (and no PII to relays)
    "ContactOptedOut.v1",  # contact-wide; each running enrollment gets its own EnrollmentStopped
    "BulkEnrollAccepted.v1",
}

_serial = iter(range(1_000_000))


def _event(cls: type[EventEnvelope], data: dict[str, Any]) -> Any:
    n = next(_serial)
    return event_adapter.validate_python(
        {
            "event_id": ids.stable_id("test-event", n),
            "type": cls.model_fields["type"].default,
            "account_id": ACCOUNT,
            "contact_id": CONTACT,
            "campaign_id": CAMPAIGN,
            "enrollment_id": eid(),
            "version": n + 1,
            "occurred_at": T0,
            "causation_id": f"cmd-{n}",
            "data": data,
        }
    )


STEP = {"step_index": 1, "attempt": 1, "step_count": 3}

CASES: list[tuple[str, Any, list[str]]] = [
    (
        "delivered",
        lambda: _event(StepDelivered, {**STEP, "message_id": "es-1"}),
        ["enrollment.sent"],
    ),
    (
        "first open",
        lambda: _event(MessageOpened, {"step_index": 1, "first_open": True}),
        ["enrollment.opened"],
    ),
    ("later open", lambda: _event(MessageOpened, {"step_index": 1, "first_open": False}), []),
    (
        "first reply",
        lambda: _event(
            ReplyReceived,
            {"replied_at": T0, "hours_to_reply": 2.0, "reply_action": "stop", "first_reply": True},
        ),
        ["enrollment.replied"],
    ),
    (
        "later reply",
        lambda: _event(
            ReplyReceived,
            {"replied_at": T0, "hours_to_reply": 2.0, "reply_action": "stop", "first_reply": False},
        ),
        [],
    ),
    (
        "hard step bounce",
        lambda: _event(StepBounced, {**STEP, "bounce_type": "hard", "will_retry": False}),
        ["enrollment.bounced"],
    ),
    (
        "soft step bounce",
        lambda: _event(StepBounced, {**STEP, "bounce_type": "soft", "will_retry": True}),
        [],
    ),
    (
        "hard async bounce",
        lambda: _event(MessageBounced, {"bounce_type": "hard", "step_index": 0}),
        ["enrollment.bounced"],
    ),
    ("soft async bounce", lambda: _event(MessageBounced, {"bounce_type": "soft"}), []),
    (
        "opt-out stop",
        lambda: _event(EnrollmentStopped, {"reason": "opted_out", "outcome": "stopped", "note": "link"}),
        ["enrollment.unsubscribed", "enrollment.stopped"],
    ),
    (
        "manual stop",
        lambda: _event(EnrollmentStopped, {"reason": "manual", "outcome": "stopped"}),
        ["enrollment.stopped"],
    ),
    (
        "completed",
        lambda: _event(EnrollmentCompleted, {"status": "completed", "outcome": "no_response"}),
        ["enrollment.completed"],
    ),
    (
        "failed",
        lambda: _event(EnrollmentFailed, {"step_index": 2, "detail": "550"}),
        ["enrollment.failed"],
    ),
    (
        "expired",
        lambda: _event(EnrollmentExpired, {"expires_at": T0, "outcome": "no_response"}),
        ["enrollment.expired"],
    ),
    (
        "handed off",
        lambda: _event(EnrollmentHandedOff, {"outcome": "responded"}),
        ["enrollment.handed_off"],
    ),
    (
        "unenrolled",
        lambda: _event(EnrollmentUnenrolled, {"outcome": "stopped"}),
        ["enrollment.unenrolled"],
    ),
    (
        "skipped",
        lambda: _event(EnrollmentSkipped, {"kind": "mx_invalid", "reason": "no MX", "evidence": {}}),
        ["enrollment.skipped"],
    ),
    (
        "enrolled",
        lambda: next(e for e in given().when(enroll()).events if isinstance(e, ContactEnrolled)),
        ["enrollment.enrolled"],
    ),
]


@pytest.mark.parametrize(("name", "make", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_domain_event_maps_to_its_public_type(name: str, make: Any, expected: list[str]) -> None:
    event = make()
    public = to_integration_events(event)
    assert [p.type for p in public] == expected
    for p in public:
        # Keyed and addressed by the enrollment; the source is named for tracing.
        assert (p.account_id, p.contact_id, p.campaign_id) == (ACCOUNT, CONTACT, CAMPAIGN)
        assert p.enrollment_id == event.enrollment_id
        assert p.source_event_id == event.event_id
        assert p.occurred_at == event.occurred_at
        assert p.version == 1


def test_the_cases_cover_every_public_type() -> None:
    covered = {t for _, _, expected in CASES for t in expected}
    assert covered == PUBLIC_TYPES
    assert {cls.model_fields["type"].default for cls in INTEGRATION_EVENT_TYPES} == PUBLIC_TYPES


def test_every_internal_event_type_is_mapped_or_bookkeeping() -> None:
    internal = {cls.model_fields["type"].default for cls in EVENT_TYPES}
    mapped = {make().type for _, make, expected in CASES if expected}
    assert mapped | BOOKKEEPING == internal
    assert not mapped & BOOKKEEPING


def test_ids_are_deterministic_and_distinct_per_public_event() -> None:
    seen: set[str] = set()
    for _, make, _ in CASES:
        event = make()
        first = [p.id for p in to_integration_events(event)]
        # The same source event, decoded again from its bytes (a replay), maps to the same ids.
        replayed = event_adapter.validate_json(event.model_dump_json())
        assert [p.id for p in to_integration_events(replayed)] == first
        for public_id, public in zip(first, to_integration_events(event), strict=True):
            assert public_id == ids.stable_id("integration", event.event_id, public.type)
        assert not seen & set(first)
        seen |= set(first)
    # One source event with two public events (opt-out stop): two different ids.
    stop = _event(EnrollmentStopped, {"reason": "opted_out", "outcome": "stopped"})
    unsubscribed, stopped = to_integration_events(stop)
    assert unsubscribed.id != stopped.id


def test_public_events_validate_against_their_versioned_schemas() -> None:
    envelope = json.loads((SCHEMAS / "envelopes" / "integration_event.json").read_text())
    for _, make, _ in CASES:
        for public in to_integration_events(make()):
            body = json.loads(public.model_dump_json())
            schema = json.loads(
                (SCHEMAS / "integration" / f"{public.type}.v{public.version}.json").read_text()
            )
            jsonschema.validate(body, schema)
            jsonschema.validate(body, envelope)
            assert integration_event_adapter.validate_json(public.model_dump_json()) == public


def test_a_machine_open_is_flagged_for_subscribers() -> None:
    event = _event(MessageOpened, {"step_index": 1, "first_open": True, "machine": "privacy_prefetch"})
    [opened] = to_integration_events(event)
    assert opened.data.model_dump(mode="json") == {"step_index": 1, "machine": "privacy_prefetch"}
