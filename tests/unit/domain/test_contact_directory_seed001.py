"""Seed 001's contact directory: `enroll_contact` names only a `contact_id` that "must be in the same
account", and answers `contact_not_found` otherwise. A contact's profile is a fact of its aggregate
(PutContact -> ContactProfileSet); an Enroll without inline facts takes the profile."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from enrollstream.domain import (
    BulkEnroll,
    Channel,
    ContactEnrolled,
    ContactOptedOut,
    ContactProfileSet,
    EnrollmentSkipped,
    EnrollmentStopped,
    PutContact,
    StepDispatched,
    StepScheduled,
    decide,
    fan_out_bulk_enroll,
    initial_state,
)
from enrollstream.domain.commands import MAX_CONTACT_NAME, MAX_EMAIL
from enrollstream.domain.rejections import Rejection

from .scenario import (
    ACCOUNT,
    CAMPAIGN,
    CONTACT,
    HOUR,
    T0,
    campaign,
    contact,
    eid,
    enroll,
    ev,
    given,
    opt_out,
    put_contact,
    step,
    step_due,
)


def enroll_by_id(**data: Any) -> Any:
    """seed 001 `POST /campaigns/:id/enroll_contact {contact_id, batch_number, priority}`: no facts."""
    return enroll(contact=None, **data)


# --- PutContact ---------------------------------------------------------------------------------


def test_put_contact_sets_the_profile_of_the_contact() -> None:
    result = (
        given()
        .when(put_contact())
        .then(
            ev(
                ContactProfileSet,
                campaign_id=None,
                enrollment_id=None,
                profile=contact(time_zone="Europe/London"),
            )
        )
    )
    assert result.state.profile == contact(time_zone="Europe/London")


def test_put_contact_replaces_the_whole_profile() -> None:
    result = given(put_contact()).when(put_contact(name="Ada King", email="ada@king.example", mobile=None))
    result.then(ev(ContactProfileSet))
    profile = result.state.profile
    assert (profile.name, profile.email, profile.mobile) == ("Ada King", "ada@king.example", None)


def test_put_contact_with_an_empty_email_stores_none() -> None:
    assert given().when(put_contact(email="")).state.profile.email is None


# --- enroll_contact by id -------------------------------------------------------------------------


def test_enroll_contact_with_unknown_contact_id_is_contact_not_found() -> None:
    given().when(enroll_by_id()).then_rejected("contact_not_found")


def test_enroll_contact_with_another_accounts_contact_id_is_contact_not_found() -> None:
    """Account B put a contact with the same id: account A's aggregate (its own key) has no profile."""
    other_account = initial_state("acc-2", CONTACT)
    put_b = put_contact().model_copy(update={"account_id": "acc-2"})
    assert decide(put_b, other_account).events  # type: ignore[union-attr]
    given().when(enroll_by_id()).then_rejected("contact_not_found")


def test_enroll_contact_by_id_takes_the_facts_of_the_profile() -> None:
    result = given(put_contact(name="Grace Hopper", email="grace@example.com", time_zone="America/New_York"))
    then = result.when(enroll_by_id(batch_number=2, priority=True)).then(
        ev(ContactEnrolled, batch_number=2, priority=True, time_zone="America/New_York"),
        ev(StepScheduled, step_index=0),
    )
    enrolled = then.events[0]
    assert isinstance(enrolled, ContactEnrolled)
    assert (enrolled.data.contact.name, enrolled.data.contact.email) == ("Grace Hopper", "grace@example.com")


def test_the_step_goes_to_the_profiles_email() -> None:
    given(put_contact(email="grace@example.com"), enroll_by_id()).when(step_due()).then(
        ev(StepDispatched, to="grace@example.com", channel=Channel.EMAIL)
    )


def test_inline_facts_still_enroll_without_a_profile_and_leave_the_directory_alone() -> None:
    then = (
        given()
        .when(enroll(contact=contact(email="inline@example.com")))
        .then(ev(ContactEnrolled), ev(StepScheduled))
    )
    assert then.state.profile is None
    assert then.events[0].data.contact.email == "inline@example.com"  # type: ignore[union-attr]


def test_inline_facts_win_over_the_profile_for_that_enrollment() -> None:
    then = given(put_contact(email="profile@example.com")).when(
        enroll(contact=contact(email="inline@example.com"))
    )
    assert then.events[0].data.contact.email == "inline@example.com"  # type: ignore[union-attr]
    assert then.state.profile.email == "profile@example.com"


def test_a_later_profile_does_not_change_an_existing_enrollment() -> None:
    """Like the campaign version: an enrollment keeps the facts it was enrolled with."""
    history = [put_contact(email="old@example.com"), enroll_by_id(), put_contact(email="new@example.com")]
    given(*history).when(step_due()).then(ev(StepDispatched, to="old@example.com"))


def test_profile_without_email_is_skipped_for_an_email_campaign() -> None:
    given(put_contact(email=None)).when(enroll_by_id()).then(ev(EnrollmentSkipped, kind="missing_address"))


def test_profile_landline_is_skipped_for_an_sms_campaign() -> None:
    sms = campaign(steps=[step(Channel.SMS)])
    given(put_contact(line_type="landline")).when(enroll_by_id(cmp=sms)).then(
        ev(EnrollmentSkipped, kind="landline")
    )


# --- Opt-out agrees with OptOut -----------------------------------------------------------------


def test_put_contact_opted_out_opts_the_contact_out_and_stops_its_running_enrollments() -> None:
    then = given(put_contact(), enroll_by_id()).when(put_contact(opted_out=True, at=T0 + HOUR))
    then.then(
        ev(ContactProfileSet),
        ev(ContactOptedOut, channel="profile"),
        ev(EnrollmentStopped, enrollment_id=eid(), reason="opted_out"),
    )
    assert then.state.opted_out and then.state.profile.opted_out


def test_put_contact_never_resubscribes_an_opted_out_contact() -> None:
    then = given(put_contact(), opt_out()).when(put_contact(opted_out=False, name="Ada L."))
    then.then(ev(ContactProfileSet))
    assert then.state.opted_out
    assert then.state.profile.opted_out and then.state.profile.name == "Ada L."
    given(put_contact(), opt_out(), put_contact(opted_out=False)).when(enroll_by_id()).then(
        ev(EnrollmentSkipped, kind="opted_out")
    )


def test_an_opt_out_before_the_profile_keeps_the_profile_opted_out() -> None:
    then = given(opt_out()).when(put_contact())
    assert then.state.profile.opted_out


def test_opt_out_marks_the_profile_opted_out() -> None:
    then = given(put_contact()).when(opt_out())
    assert then.state.profile.opted_out


# --- Bulk import by ids ---------------------------------------------------------------------------


def test_an_import_child_without_facts_or_profile_is_skipped_contact_not_found() -> None:
    bulk = BulkEnroll.model_validate(
        {
            "command_id": "bulk-1",
            "account_id": ACCOUNT,
            "issued_at": T0,
            "data": {
                "campaign_id": CAMPAIGN,
                "campaign": campaign(),
                "contact_import_id": "imp-1",
                "contacts": [{"contact_id": CONTACT}],
            },
        }
    )
    (child,) = fan_out_bulk_enroll(bulk)
    given().when(child).then(ev(EnrollmentSkipped, kind="contact_not_found", bulk_enroll_id="bulk-1"))
    given(put_contact()).when(child).then(ev(ContactEnrolled, bulk_enroll_id="bulk-1"), ev(StepScheduled))


# --- Bounds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("name", "Ada\x00", "string_pattern_mismatch"),
        ("name", "A" * (MAX_CONTACT_NAME + 1), "string_too_long"),
        ("email", "a" * MAX_EMAIL + "@example.com", "string_too_long"),
        ("mobile", "+1" * 1000, "string_too_long"),
        ("mobile", "+1555\n0100", "string_pattern_mismatch"),
        ("time_zone", "Mars/Olympus_Mons", "value_error"),
        ("time_zone", "../../etc/passwd", "value_error"),
        ("line_type", "pager", "enum"),
        ("contact_id", "crm/88", "string_pattern_mismatch"),
        ("contact_id", "x" * 257, "string_too_long"),
    ],
)
def test_a_profile_out_of_bounds_is_refused_with_a_code_naming_the_field(
    field: str, value: str, error: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        put_contact(**{field: value})
    (problem,) = refused.value.errors()
    assert problem["loc"] == ("data", field)
    assert problem["type"] == error


def test_put_contact_is_a_command_of_its_own_type() -> None:
    assert put_contact().type == "PutContact.v1"
    assert isinstance(put_contact(), PutContact)
    assert not isinstance(decide(put_contact(), initial_state(ACCOUNT, CONTACT)), Rejection)
