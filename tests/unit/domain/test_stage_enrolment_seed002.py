"""Seed 002: "When an application is created or moved into a job stage linked to a campaign, an enrolment is
automatically created for that campaign." StageChanged, once per stage entry, with the queue rule and the
campaign's re-enrollment policy."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from enrollstream.domain import (
    CampaignDefinition,
    ContactEnrolled,
    EnrollmentCompleted,
    EnrollmentQueued,
    EnrollmentReleased,
    EnrollmentSkipped,
    Ignored,
    StageChanged,
    StepDelivered,
    StepScheduled,
    command_result,
    parse_command,
)
from enrollstream.domain.campaign import MAX_ENROLLING_STAGES

from .scenario import (
    ACCOUNT,
    CONTACT,
    DAY,
    T0,
    campaign,
    contact,
    eid,
    enroll,
    ev,
    given,
    put_contact,
    reported,
    sent,
    step_due,
)

# Two jobs, each with its own pipeline; the "screening" stage of each is linked to its own campaign, and
# both campaigns queue (seed 002 "Queued ... a candidate submits a second application before completing
# the first").
JOB_A, JOB_B = "pipeline-job-a", "pipeline-job-b"
SCREENING = {"pipeline_id": JOB_A, "stage_id": "screening"}
FIRST = campaign(
    campaign_id="cmp-first",
    kind="multi_module",
    when_in_other_campaign="queue",
    steps=campaign().steps[:2],
    enrolling_stages=[SCREENING],
)
SECOND = campaign(
    campaign_id="cmp-second",
    kind="multi_module",
    when_in_other_campaign="queue",
    enrolling_stages=[{"pipeline_id": JOB_B, "stage_id": "screening"}],
)


def stage_changed(
    *campaigns: CampaignDefinition,
    application: str = "app-1",
    pipeline: str = JOB_A,
    stage: str = "screening",
    entered_at: datetime = T0,
    at: datetime | None = None,
    command_id: str | None = None,
    **data: Any,
) -> StageChanged:
    """Upstream's StageChanged, with the linked campaigns the runtime fills in from its catalog."""
    command = parse_command(
        {
            "type": "StageChanged.v1",
            "command_id": command_id or f"stage-{application}-{pipeline}-{stage}-{entered_at.isoformat()}",
            "account_id": ACCOUNT,
            "issued_at": at or entered_at,
            "actor": "ats",
            "data": {
                "contact_id": CONTACT,
                "application_id": application,
                "pipeline_id": pipeline,
                "stage_id": stage,
                "entered_at": entered_at,
                **data,
            },
        }
    )
    assert isinstance(command, StageChanged)
    data_with_lookups = command.data.model_copy(update={"campaigns": list(campaigns)})
    return command.model_copy(update={"data": data_with_lookups})


def test_an_application_moved_into_a_linked_stage_is_enrolled_from_the_stage_change() -> None:
    result = given(put_contact()).when(stage_changed(FIRST))
    result.then(
        ev(ContactEnrolled, campaign_id="cmp-first", enrollment_id=eid("cmp-first"), source="stage_change"),
        ev(StepScheduled, enrollment_id=eid("cmp-first"), step_index=0, due_at=T0),
    )
    enrolled = result.events[0]
    assert isinstance(enrolled, ContactEnrolled)
    entry = enrolled.data.stage_entry
    assert entry is not None
    assert (entry.application_id, entry.pipeline_id, entry.stage_id, entry.entered_at) == (
        "app-1",
        JOB_A,
        "screening",
        T0,
    )
    assert enrolled.data.contact.name == "Ada Lovelace"  # the directory's profile
    assert result.enrollment(eid("cmp-first")).status == "pending"


def test_inline_contact_facts_are_used_like_an_enrolls() -> None:
    result = given().when(stage_changed(FIRST, contact=contact(name="Grace").model_dump()))
    result.then(ev(ContactEnrolled, source="stage_change"), ev(StepScheduled))
    assert result.enrollment(eid("cmp-first")).contact.name == "Grace"


def test_a_contact_neither_in_the_directory_nor_inline_is_not_found() -> None:
    given().when(stage_changed(FIRST)).then_rejected("contact_not_found")


def test_the_same_stage_entry_twice_enrols_once() -> None:
    first = stage_changed(FIRST, command_id="ats-msg-1")
    # Redelivered as is: the command id was decided before.
    given(put_contact(), first).when(first).then_ignored(Ignored.DUPLICATE)
    # Published again under another command id (an upstream retry), even past the idempotency window:
    # the same application, stage and entry time is the same entry.
    retry = stage_changed(FIRST, command_id="ats-msg-1-retry", at=T0 + 30 * DAY)
    given(put_contact(), first).when(retry).then_ignored(Ignored.DUPLICATE)


def test_re_entering_the_stage_later_while_enrolled_is_a_skip_not_a_second_enrollment() -> None:
    again = stage_changed(FIRST, entered_at=T0 + DAY)
    result = given(put_contact(), stage_changed(FIRST)).when(again)
    result.then(
        ev(
            EnrollmentSkipped,
            kind="already_enrolled",
            source="stage_change",
            enrollment_id=eid("cmp-first", 2),
        )
    )
    assert command_result(again, result.decision).status == "skipped"


def _first_completed() -> list[Any]:
    return [
        put_contact(),
        stage_changed(FIRST),
        sent(0, enrollment=eid("cmp-first")),
        step_due(1, at=T0 + DAY, enrollment=eid("cmp-first")),
        reported("sent", 1, at=T0 + DAY, enrollment=eid("cmp-first")),
    ]


def test_re_entering_after_the_campaign_finished_follows_its_re_enrollment_policy() -> None:
    later = T0 + 2 * DAY
    # re_enrollment never (the default): a finished campaign is not sent again.
    assert given(*_first_completed()).state.enrollments[eid("cmp-first")].status == "completed"
    given(*_first_completed()).when(stage_changed(FIRST, entered_at=later)).then(
        ev(EnrollmentSkipped, kind="already_enrolled")
    )
    # after_finished: the new entry enrols again, a new enrollment (sequence 2).
    again = FIRST.model_copy(update={"re_enrollment": "after_finished"})
    given(*_first_completed()).when(stage_changed(again, entered_at=later)).then(
        ev(ContactEnrolled, enrollment_id=eid("cmp-first", 2), sequence=2, source="stage_change"),
        ev(StepScheduled, enrollment_id=eid("cmp-first", 2)),
    )


def test_a_second_application_before_completing_the_first_is_queued_then_delivered() -> None:
    second_application = stage_changed(SECOND, application="app-2", pipeline=JOB_B, at=T0 + DAY)
    result = given(put_contact(), stage_changed(FIRST)).when(second_application)
    result.then(
        ev(ContactEnrolled, enrollment_id=eid("cmp-second"), source="stage_change"),
        ev(EnrollmentQueued, behind_enrollment_id=eid("cmp-first"), behind_campaign_id="cmp-first"),
    )
    assert result.enrollment(eid("cmp-second")).status == "queued"
    # "Once the candidate completes the first application, the queued campaign ... is delivered."
    history = [put_contact(), stage_changed(FIRST), second_application, sent(0, enrollment=eid("cmp-first"))]
    at = T0 + DAY
    given(*history, step_due(1, at=at, enrollment=eid("cmp-first"))).when(
        reported("sent", 1, at=at, enrollment=eid("cmp-first"))
    ).then(
        ev(StepDelivered, enrollment_id=eid("cmp-first")),
        ev(EnrollmentCompleted, enrollment_id=eid("cmp-first")),
        ev(EnrollmentReleased, enrollment_id=eid("cmp-second")),
        ev(StepScheduled, enrollment_id=eid("cmp-second"), step_index=0),
    )


def test_a_stage_of_another_pipeline_or_an_unlinked_stage_enrols_no_one() -> None:
    other_pipeline = stage_changed(FIRST, pipeline=JOB_B)
    given(put_contact()).when(other_pipeline).then_rejected("stage_not_linked")
    given(put_contact()).when(stage_changed(FIRST, stage="interview")).then_rejected("stage_not_linked")
    given(put_contact()).when(stage_changed()).then_rejected("stage_not_linked")  # no campaign at all
    refused = given(put_contact()).when(other_pipeline).decision
    assert command_result(other_pipeline, refused).details == {"pipeline_id": JOB_B, "stage_id": "screening"}


def test_another_accounts_campaign_linked_to_the_same_stage_names_is_never_used() -> None:
    theirs = campaign(account_id="acc-2", campaign_id="cmp-theirs", enrolling_stages=[SCREENING])
    given(put_contact()).when(stage_changed(theirs)).then_rejected("stage_not_linked")
    result = given(put_contact()).when(stage_changed(theirs, FIRST))
    result.then(ev(ContactEnrolled, campaign_id="cmp-first"), ev(StepScheduled))


def test_a_stage_linked_to_two_campaigns_enrols_into_both_and_a_skip_does_not_hide_the_enrollment() -> None:
    parallel = campaign(campaign_id="cmp-parallel", enrolling_stages=[SCREENING])
    result = given(put_contact()).when(stage_changed(parallel, FIRST))
    result.then(
        ev(ContactEnrolled, campaign_id="cmp-first"),
        ev(StepScheduled, enrollment_id=eid("cmp-first")),
        ev(ContactEnrolled, campaign_id="cmp-parallel"),
        ev(StepScheduled, enrollment_id=eid("cmp-parallel")),
    )
    # Already in cmp-first through the API, the same stage entry still enrols into cmp-parallel.
    command = stage_changed(parallel, FIRST)
    mixed = given(put_contact(), enroll(FIRST, contact=None)).when(command)
    mixed.then(
        ev(EnrollmentSkipped, campaign_id="cmp-first", kind="already_enrolled"),
        ev(ContactEnrolled, campaign_id="cmp-parallel"),
        ev(StepScheduled),
    )
    result_of = command_result(command, mixed.decision)
    assert (result_of.status, result_of.enrollment_ids) == ("accepted", [eid("cmp-parallel")])


def test_an_archived_linked_campaign_takes_no_new_enrollments() -> None:
    archived = FIRST.model_copy(update={"status": "archived"})
    given(put_contact()).when(stage_changed(archived)).then_rejected("campaign_archived")


@pytest.mark.parametrize(
    "data",
    [
        {"application_id": "a/b"},
        {"pipeline_id": ""},
        {"stage_id": "s\x00"},
        {"entered_at": "1999-12-31T23:59:59Z"},
        {"entered_at": "2026-03-02T09:00:00"},  # no time zone
    ],
)
def test_a_stage_change_past_its_bounds_is_refused_at_the_edge(data: dict[str, Any]) -> None:
    raw = {
        "type": "StageChanged.v1",
        "command_id": "c",
        "account_id": ACCOUNT,
        "issued_at": T0.isoformat(),
        "data": {
            "contact_id": CONTACT,
            "application_id": "app-1",
            "pipeline_id": JOB_A,
            "stage_id": "screening",
            "entered_at": T0.isoformat(),
            **data,
        },
    }
    with pytest.raises(ValidationError):
        parse_command(raw)


def test_a_campaigns_enrolling_stages_are_bounded() -> None:
    stages = [{"pipeline_id": JOB_A, "stage_id": f"s{i}"} for i in range(MAX_ENROLLING_STAGES + 1)]
    with pytest.raises(ValidationError):
        campaign(enrolling_stages=stages)
    with pytest.raises(ValidationError):
        campaign(enrolling_stages=[{"pipeline_id": JOB_A, "stage_id": "a/b\n"}])


# One campaign linked to the "applied" stage of every job (e.g. "thanks for applying"), sent again to a
# candidate once a previous one finished.
APPLIED = campaign(
    campaign_id="cmp-applied",
    kind="multi_module",
    steps=campaign().steps[:2],
    re_enrollment="after_finished",
    enrolling_stages=[
        {"pipeline_id": JOB_A, "stage_id": "applied"},
        {"pipeline_id": JOB_B, "stage_id": "applied"},
    ],
)


def applied(application: str, pipeline: str, at: datetime, cmp: CampaignDefinition = APPLIED) -> StageChanged:
    return stage_changed(cmp, application=application, pipeline=pipeline, stage="applied", entered_at=at)


def test_a_second_application_into_the_same_campaign_waits_for_the_first_then_is_delivered() -> None:
    first, second = eid("cmp-applied", 1), eid("cmp-applied", 2)
    result = given(put_contact(), applied("app-1", JOB_A, T0)).when(applied("app-2", JOB_B, T0 + DAY))
    result.then(
        ev(ContactEnrolled, enrollment_id=second, sequence=2, source="stage_change"),
        ev(
            EnrollmentQueued,
            enrollment_id=second,
            behind_enrollment_id=first,
            behind_campaign_id="cmp-applied",
        ),
    )
    history = [
        put_contact(),
        applied("app-1", JOB_A, T0),
        applied("app-2", JOB_B, T0),
        sent(0, enrollment=first),
    ]
    at = T0 + DAY
    given(*history, step_due(1, at=at, enrollment=first)).when(
        reported("sent", 1, at=at, enrollment=first)
    ).then(
        ev(StepDelivered, enrollment_id=first),
        ev(EnrollmentCompleted, enrollment_id=first),
        ev(EnrollmentReleased, enrollment_id=second, after_enrollment_id=first),
        ev(StepScheduled, enrollment_id=second, step_index=0),
    )


def test_the_same_application_re_entering_while_enrolled_or_a_campaign_sent_once_is_a_skip() -> None:
    # The same application back in the stage while its enrollment runs: already enrolled.
    given(put_contact(), applied("app-1", JOB_A, T0)).when(applied("app-1", JOB_A, T0 + DAY)).then(
        ev(EnrollmentSkipped, kind="already_enrolled")
    )
    # A campaign sent once per candidate (re_enrollment never): another application does not get it again.
    once = APPLIED.model_copy(update={"re_enrollment": "never"})
    given(put_contact(), applied("app-1", JOB_A, T0, once)).when(
        applied("app-2", JOB_B, T0 + DAY, once)
    ).then(ev(EnrollmentSkipped, kind="already_enrolled"))
