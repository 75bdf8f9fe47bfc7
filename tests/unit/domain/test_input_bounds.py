"""Every input is bounded where it enters (issue 12): a command outside the bounds is schema-invalid,
never an OverflowError, never an event PostgreSQL refuses, never an ambiguous aggregate key.

Given a valid command, when one field is pushed past its bound, then parsing refuses it with a
ValidationError (the runtime's dead letter); at the bound it still parses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from enrollstream.domain import CampaignDefinition, aggregate_key, decide, initial_state, parse_command
from enrollstream.domain.bounds import EARLIEST, INT32_MAX, LATEST, MAX_DURATION

from .scenario import ACCOUNT, CONTACT, campaign, enroll, step_due


def raw_enroll(**data: Any) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(enroll().model_dump_json())
    raw["data"].update(data)
    return raw


def campaign_raw(**fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(campaign().model_dump_json())
    raw.update(fields)
    return raw


@pytest.mark.parametrize(
    "issued_at",
    [
        "0001-01-01T00:00:00+01:00",  # UTC would be year 0: an OverflowError before the bound
        "9999-12-31T23:59:59-01:00",  # UTC would be year 10000
        "9999-12-31T00:00:00+00:00",  # representable, but a step delay after it is not
        "1970-01-01T00:00:00+00:00",
        (EARLIEST - timedelta(seconds=1)).isoformat(),
        LATEST.isoformat(),
    ],
)
def test_issued_at_outside_the_calendar_bounds_is_schema_invalid(issued_at: str) -> None:
    raw = raw_enroll()
    raw["issued_at"] = issued_at
    with pytest.raises(ValidationError, match="time out of range"):
        parse_command(raw)


def test_issued_at_within_the_bounds_is_normalised_to_utc() -> None:
    raw = raw_enroll()
    raw["issued_at"] = "2199-12-31T23:59:59+01:00"
    assert parse_command(raw).issued_at == datetime(2199, 12, 31, 22, 59, 59, tzinfo=UTC)
    raw["issued_at"] = EARLIEST.isoformat()
    assert parse_command(raw).issued_at == EARLIEST


def test_a_bounded_enroll_at_the_latest_time_with_the_longest_delays_decides_without_overflow() -> None:
    # Given the longest delays and retries a campaign may have, when a contact is enrolled at the last
    # accepted instant, then deciding (and the first step's due time) stays in the calendar.
    longest = campaign_raw(
        steps=[{"channel": "email", "delay": "P3650D", "content": {"subject": "s", "body": "b"}}] * 3,
        retry_delay="P3650D",
        max_attempts=100,
        expiry_after_delivery="P3650D",
    )
    command = parse_command(
        {**raw_enroll(campaign=longest), "issued_at": (LATEST - timedelta(seconds=1)).isoformat()}
    )
    decision = decide(command, initial_state(ACCOUNT, CONTACT))
    assert getattr(decision, "events", None), decision


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", [{"channel": "email", "delay": "P3651D", "content": {"body": "b"}}]),
        ("steps", [{"channel": "email", "delay": "-PT1S", "content": {"body": "b"}}]),
        ("expiry_after_delivery", "P3651D"),
        ("queue_timeout", "P99999999D"),
        ("trigger_timeout", "P3651D"),
        ("retry_delay", "P3651D"),
        ("max_attempts", 101),
        ("version", INT32_MAX + 1),
        ("name", "Spring\x00sale"),
        ("campaign_id", "a/b"),
        ("account_id", "acc\n1"),
    ],
)
def test_a_campaign_definition_past_its_bounds_is_refused(field: str, value: Any) -> None:
    raw = campaign_raw(**{field: value})
    if field in ("queue_timeout",):
        raw["when_in_other_campaign"] = "queue"
    with pytest.raises(ValidationError):
        CampaignDefinition.model_validate(raw)


def test_durations_and_integers_at_their_bounds_are_accepted() -> None:
    days = f"P{MAX_DURATION.days}D"
    definition = CampaignDefinition.model_validate(
        campaign_raw(version=INT32_MAX, retry_delay=days, expiry_after_delivery=days)
    )
    assert definition.version == INT32_MAX and definition.retry_delay == MAX_DURATION
    assert parse_command(raw_enroll(batch_number=INT32_MAX)).data.batch_number == INT32_MAX  # type: ignore[union-attr]


@pytest.mark.parametrize("batch_number", [INT32_MAX + 1, -1])
def test_a_batch_number_postgresql_cannot_store_is_refused(batch_number: int) -> None:
    with pytest.raises(ValidationError, match="batch_number"):
        parse_command(raw_enroll(batch_number=batch_number))


@pytest.mark.parametrize(
    "contact",
    [
        {"name": "Ada\x00Lovelace"},
        {"name": "Ada\x1b[31m"},
        {"name": "Ada\x85Lovelace"},  # C1 next line
        {"name": "Ada", "email": "ada@example.org\r\nBcc: eve@example.org"},
        {"name": "Ada", "mobile": "+1555\x00"},
    ],
)
def test_contact_facts_with_nul_or_control_characters_are_refused(contact: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        parse_command(raw_enroll(contact=contact))


def test_free_text_keeps_tabs_and_newlines_but_not_nul() -> None:
    stop = json.loads(step_due(step_index=0).model_dump_json())
    stop["type"] = "Stop.v1"
    stop["data"] = {"contact_id": CONTACT, "enrollment_id": "e-1", "note": "line one\n\tline two\r\n"}
    assert parse_command(stop).data.note == "line one\n\tline two\r\n"  # type: ignore[union-attr]
    stop["data"]["note"] = "nul\x00"
    with pytest.raises(ValidationError):
        parse_command(stop)


def test_the_aggregate_key_collides_for_ids_with_the_separator_so_such_ids_are_refused() -> None:
    # Given ids that contain the separator, the key alone cannot tell the two contacts apart ...
    assert aggregate_key("a/crm", "88") == aggregate_key("a", "crm/88")
    # ... so when either is sent, then it is refused at the contract.
    for account_id, contact_id in (("a/crm", "88"), ("a", "crm/88")):
        raw = raw_enroll(contact_id=contact_id)
        raw["account_id"] = account_id
        with pytest.raises(ValidationError, match="pattern"):
            parse_command(raw)


@pytest.mark.parametrize("field", ["contact_id", "campaign_id"])
def test_ids_used_in_keys_refuse_the_separator_and_control_characters(field: str) -> None:
    for bad in ("x/y", "x\x00", "", "x" * 257):
        with pytest.raises(ValidationError):
            parse_command(raw_enroll(**{field: bad}))
