"""Issue 11 item 8: a command's result explains the decision by itself (command, actor, enrollment,
time, reason), also when the decider refused or ignored it, so "why" needs nothing but the results."""

from __future__ import annotations

from enrollstream.domain import command_result
from enrollstream.domain.rejections import Ignored

from .scenario import DAY, HOUR, T0, eid, enroll, given, step_due, stop


def test_a_refused_stop_names_its_enrollment_actor_time_code_and_reason() -> None:
    then = given(enroll(), stop(at=T0 + HOUR)).when(stop(at=T0 + DAY, command_id="stop-again"))
    then.then_rejected("invalid_transition")

    result = command_result(then.command, then.decision, then.before.version)

    assert (result.command_id, result.command_type, result.status) == ("stop-again", "Stop.v1", "rejected")
    assert (result.code, result.actor, result.issued_at) == ("invalid_transition", "test", T0 + DAY)
    assert result.enrollment_id == eid()
    assert "stopped" in result.message
    assert result.contact_version == then.before.version  # it changed nothing: the version it found


def test_a_refused_enroll_names_the_campaign_it_asked_for() -> None:
    then = given().when(enroll(campaign=None, campaign_id="nowhere", command_id="enroll-nowhere"))
    then.then_rejected("campaign_not_found")

    result = command_result(then.command, then.decision, 0)

    assert (result.campaign_id, result.enrollment_id, result.code) == ("nowhere", None, "campaign_not_found")
    assert result.message and result.contact_version == 0


def test_an_ignored_command_says_why_it_changed_nothing() -> None:
    first = enroll(command_id="enroll-1")
    duplicate = given(first).when(first).then_ignored(Ignored.DUPLICATE)
    stale = given(enroll()).when(step_due(0, attempt=2, at=T0 + 2 * HOUR)).then_ignored(Ignored.STALE)
    deferred = given(enroll()).when(step_due(0, at=T0 - HOUR))  # before the step is due

    for then, kind in ((duplicate, Ignored.DUPLICATE), (stale, Ignored.STALE), (deferred, Ignored.DEFERRED)):
        then.then_ignored(kind)
        result = command_result(then.command, then.decision, then.before.version)
        assert (result.status, result.code) == (kind.value, kind.value)
        assert result.message, f"{kind}: no reason given"
        assert result.actor == "test" and result.issued_at == then.command.issued_at
    assert command_result(stale.command, stale.decision).enrollment_id == eid()
