"""The contract the runtime codes against: parsing, keys, results, integration events."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from enrollstream.domain import (
    PROCESSED_COMMAND_IDS_CAP,
    Accepted,
    ContactState,
    Enroll,
    Rejection,
    RejectionCode,
    aggregate_key,
    command_result,
    decide,
    fold,
    initial_state,
    parse_command,
    parse_event,
    step_due_command_id,
    to_integration_events,
)
from enrollstream.domain.rejections import Ignored

from .scenario import (
    ACCOUNT,
    CONTACT,
    HOUR,
    T0,
    bounce,
    enroll,
    given,
    opened,
    opt_out,
    reply,
    reported,
    sent,
    step_due,
    stop,
)


def test_the_kafka_key_is_account_slash_contact() -> None:
    assert aggregate_key("acc-1", "contact-1") == "acc-1/contact-1"


def test_parse_command_from_bytes_and_dict_is_a_discriminated_union() -> None:
    command = enroll()
    raw = command.model_dump_json().encode()
    assert parse_command(raw) == command
    assert isinstance(parse_command(json.loads(raw)), Enroll)


def test_schema_invalid_commands_raise_validation_error() -> None:
    good = json.loads(enroll().model_dump_json())
    with pytest.raises(ValidationError):
        parse_command({**good, "type": "Enroll.v9"})
    with pytest.raises(ValidationError):
        parse_command({**good, "issued_at": "2026-03-02T09:00:00"})  # naive time
    with pytest.raises(ValidationError):
        parse_command({**good, "data": {**good["data"], "batch_number": -1}})
    with pytest.raises(ValidationError):
        parse_command(b"not json")


def test_issued_at_is_normalised_to_utc() -> None:
    good = json.loads(enroll().model_dump_json())
    parsed = parse_command({**good, "issued_at": "2026-03-02T10:00:00+01:00"})
    assert parsed.issued_at == T0 and parsed.issued_at.utcoffset() == timedelta(0)


def test_events_round_trip_through_json() -> None:
    for event in given().when(enroll()).events:
        assert parse_event(event.model_dump_json()) == event
        assert parse_event(json.loads(event.model_dump_json())) == event


def test_event_ids_are_deterministic_and_distinct() -> None:
    first = given().when(enroll(command_id="e-1")).events
    again = given().when(enroll(command_id="e-1")).events
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert len({e.event_id for e in first}) == len(first)
    assert all(e.causation_id == "e-1" for e in first)


def test_the_state_snapshot_round_trips() -> None:
    state = given(enroll(), sent(0), reply(at=T0 + HOUR)).state
    assert ContactState.model_validate_json(state.model_dump_json()) == state


def test_processed_command_ids_are_bounded_by_a_cap_even_inside_the_window() -> None:
    state = given(enroll()).state
    for n in range(PROCESSED_COMMAND_IDS_CAP + 10):  # one a second: all well inside the window
        command = opened(at=T0 + n * timedelta(seconds=1)).model_copy(update={"command_id": f"open-{n}"})
        decision = decide(command, state)
        assert isinstance(decision, Accepted)
        state = fold(state, decision.events)
    assert len(state.processed_command_ids) == PROCESSED_COMMAND_IDS_CAP
    assert list(state.processed_command_ids)[-1] == f"open-{PROCESSED_COMMAND_IDS_CAP + 9}"
    assert "open-9" not in state.processed_command_ids and "open-10" in state.processed_command_ids


def test_a_long_command_id_is_remembered_in_a_bounded_size() -> None:
    long_id = "upstream-" + "x" * 10_000
    command = opened(at=T0).model_copy(update={"command_id": long_id})
    state = given(enroll(), command).state
    assert all(len(key) <= 64 for key in state.processed_command_ids)
    assert (
        isinstance(decide(command, state), Accepted) and decide(command, state).ignored is Ignored.DUPLICATE
    )


def test_command_results_for_accepted_rejected_and_ignored_commands() -> None:
    command = enroll(command_id="r-1")
    accepted = command_result(command, decide(command, initial_state(ACCOUNT, CONTACT)))
    assert (accepted.status, accepted.command_type, accepted.contact_id) == ("accepted", "Enroll.v1", CONTACT)
    assert accepted.versions == [1, 2] and len(accepted.event_ids) == 2 and len(accepted.enrollment_ids) == 1
    state = given(command).state
    assert command_result(command, decide(command, state)).status == "duplicate"
    rejected = command_result(enroll(), decide(enroll(), state))
    assert (rejected.status, rejected.code) == ("rejected", "contact_already_enrolled")
    assert rejected.details["enrollment_id"] == accepted.enrollment_ids[0]
    stale = step_due(2)
    assert command_result(stale, decide(stale, state)).status == "stale"


def test_bulk_enroll_is_not_decided_directly() -> None:
    from .test_enroll_seed001 import _bulk

    decision = decide(_bulk(1, 1), initial_state(ACCOUNT, CONTACT))
    assert isinstance(decision, Rejection) and decision.code is RejectionCode.UNSUPPORTED_COMMAND


def test_scheduler_command_ids_are_deterministic_per_timer_due_time() -> None:
    due = datetime(2026, 3, 2, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    assert step_due_command_id("e", 1, 2, due) == "step-due:e:1:2:2026-03-02T09:00:00+00:00"
    # The same step rescheduled (a deferral, a closed window) fires as a new command.
    assert step_due_command_id("e", 1, 2, due + timedelta(hours=1)) != step_due_command_id("e", 1, 2, due)


def _public(*history: object, when: object) -> list[str]:
    result = given(*history).when(when)  # type: ignore[arg-type]
    return [p.type for e in result.events for p in to_integration_events(e)]


def test_each_transition_emits_one_integration_event() -> None:
    assert _public(when=enroll()) == ["enrollment.enrolled"]
    assert _public(enroll(), step_due(0), when=reported("sent", 0)) == ["enrollment.sent"]
    assert _public(enroll(), sent(0), when=opened()) == ["enrollment.opened"]
    assert _public(enroll(), sent(0), opened(), when=opened()) == []  # no transition
    assert _public(enroll(), sent(0), when=reply(at=T0 + HOUR)) == [
        "enrollment.replied",
        "enrollment.stopped",
    ]
    assert _public(enroll(), sent(0), when=bounce()) == ["enrollment.bounced", "enrollment.failed"]
    assert _public(enroll(), sent(0), when=opt_out()) == ["enrollment.unsubscribed", "enrollment.stopped"]
    assert _public(enroll(), when=stop()) == ["enrollment.stopped"]
    assert _public(opt_out(), when=enroll()) == ["enrollment.skipped"]


def test_integration_event_ids_are_stable() -> None:
    events = given(enroll(), sent(0)).when(bounce()).events
    first = [p.id for e in events for p in to_integration_events(e)]
    again = [p.id for e in events for p in to_integration_events(e)]
    assert first == again and len(set(first)) == len(first)


def test_ignored_reasons_are_the_result_statuses() -> None:
    assert {i.value for i in Ignored} <= {"duplicate", "stale", "deferred"}


def test_given_accepts_recorded_events_as_history() -> None:
    recorded = given().when(enroll()).events
    from_events = given(*recorded).state
    from_commands = given(enroll()).state
    assert from_events.enrollments.keys() == from_commands.enrollments.keys()
    assert from_events.version == 2


def test_upstream_enroll_carries_ids_only_and_the_runtime_fills_in_the_lookups() -> None:
    upstream = parse_command(
        {
            "command_id": "u-1",
            "type": "Enroll.v1",
            "account_id": ACCOUNT,
            "issued_at": "2026-03-02T09:00:00Z",
            "actor": "crm",
            "data": {"contact_id": CONTACT, "campaign_id": "cmp-1", "batch_number": 1, "priority": True},
        }
    )
    assert isinstance(upstream, Enroll) and upstream.data.campaign is None
    from .scenario import campaign, contact

    enriched = upstream.model_copy(
        update={"data": upstream.data.model_copy(update={"campaign": campaign(), "contact": contact()})}
    )
    assert isinstance(decide(enriched, initial_state(ACCOUNT, CONTACT)), Accepted)
    assert decide(upstream, initial_state(ACCOUNT, CONTACT)).code == "campaign_not_found"  # type: ignore[union-attr]
