"""Idempotency by time (issue 11 item 11): a command id is remembered for COMMAND_ID_WINDOW of the
contact's time, longer than the commands topic keeps a command; a reply (by its inbound message id) and
an Enroll (by its command id, on the enrollment) are never applied twice, even past the window."""

from __future__ import annotations

import json
from datetime import timedelta

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.domain import (
    COMMAND_ID_WINDOW,
    ContactEnrolled,
    ContactState,
    Ignored,
    OpenDetected,
    ReplyReceived,
    StepScheduled,
)

from .scenario import HOUR, T0, Scenario, campaign, enroll, ev, given, opened, play, reply, sent, stop

SECOND = timedelta(seconds=1)
AFTER_FINISHED = campaign(re_enrollment="after_finished")


def _others(count: int, start: timedelta, spread: timedelta) -> list[OpenDetected]:
    """`count` other commands for the same contact (opens, each with its own id), from T0 + start."""
    return [opened(at=T0 + start + spread * n / count) for n in range(count)]


def test_a_reply_republished_after_200_other_commands_is_not_recorded_twice() -> None:
    the_reply = reply(at=T0 + HOUR, command_id="reply-1")  # no inbound message id: only the window
    given(enroll(), sent(0), the_reply, _others(200, 2 * HOUR, 3 * 24 * HOUR)).when(the_reply).then_ignored(
        Ignored.DUPLICATE
    )


def test_an_enroll_republished_after_200_other_commands_does_not_enroll_twice_after_finished() -> None:
    the_enroll = enroll(AFTER_FINISHED, command_id="enroll-1")
    given(the_enroll, sent(0), stop(at=T0 + HOUR), _others(200, 2 * HOUR, 3 * 24 * HOUR)).when(
        the_enroll
    ).then_ignored(Ignored.DUPLICATE)


def test_a_command_id_is_forgotten_only_after_the_window() -> None:
    the_reply = reply(at=T0 + HOUR, command_id="reply-1")
    inside = T0 + HOUR + COMMAND_ID_WINDOW - SECOND
    given(enroll(), sent(0), the_reply, opened(at=inside)).when(the_reply).then_ignored(Ignored.DUPLICATE)
    past = T0 + HOUR + COMMAND_ID_WINDOW + SECOND
    given(enroll(), sent(0), the_reply, opened(at=past)).when(the_reply).then(
        ev(ReplyReceived, first_reply=False)  # no message id to recognise it by: decided again
    )


def test_a_command_decided_again_past_the_window_writes_events_with_new_ids() -> None:
    # The projector and webhook subscribers keep events by id: a second decision must not look like the first.
    the_reply = reply(at=T0 + HOUR, command_id="reply-1")
    first = given(enroll(), sent(0)).when(the_reply).events
    past = T0 + HOUR + COMMAND_ID_WINDOW + SECOND
    again = given(enroll(), sent(0), the_reply, opened(at=past)).when(the_reply).events
    assert [e.type for e in again] == ["ReplyReceived.v1"] == [e.type for e in first][:1]
    assert {e.event_id for e in again}.isdisjoint({e.event_id for e in first})


def test_the_window_is_counted_from_the_decision_not_from_an_older_issued_at() -> None:
    # A dispatcher re-report carries the ledger's time; the contact's clock does not go back for it.
    late = reply(at=T0, command_id="reply-late")
    after = T0 + 5 * 24 * HOUR
    later = _others(200, 5 * 24 * HOUR + HOUR, COMMAND_ID_WINDOW - 2 * HOUR)
    given(enroll(), sent(0), opened(at=after), late, later).when(late).then_ignored(Ignored.DUPLICATE)


def test_the_same_inbound_reply_is_never_recorded_twice_even_past_the_window() -> None:
    the_reply = reply(at=T0 + HOUR, command_id="reply-1", inbound_message_id="<m-1@mail.example>")
    later = _others(200, 2 * HOUR, 2 * COMMAND_ID_WINDOW)
    given(enroll(), sent(0), the_reply, later).when(the_reply).then_ignored(Ignored.DUPLICATE)
    relayed_again = reply(
        at=T0 + 30 * 24 * HOUR, command_id="reply-2", inbound_message_id="<m-1@mail.example>"
    )
    given(enroll(), sent(0), the_reply).when(relayed_again).then_ignored(Ignored.DUPLICATE)
    another_email = reply(at=T0 + 2 * HOUR, inbound_message_id="<m-2@mail.example>")
    given(enroll(), sent(0), the_reply).when(another_email).then(ev(ReplyReceived, first_reply=False))


def test_an_enroll_never_enrolls_twice_even_past_the_window() -> None:
    the_enroll = enroll(AFTER_FINISHED, command_id="enroll-1")
    later = _others(200, 2 * HOUR, 2 * COMMAND_ID_WINDOW)
    given(the_enroll, sent(0), stop(at=T0 + HOUR), later).when(the_enroll).then_ignored(Ignored.DUPLICATE)
    # Another Enroll (another command id) re-enrolls as the campaign allows.
    again = enroll(AFTER_FINISHED, at=T0 + 20 * 24 * HOUR)
    given(the_enroll, sent(0), stop(at=T0 + HOUR), later).when(again).then(
        ev(ContactEnrolled), ev(StepScheduled)
    )


def test_a_snapshot_from_before_the_window_keeps_its_ids_a_full_window_from_the_next_decision() -> None:
    the_reply = reply(at=T0 + HOUR, command_id="reply-1")
    snapshot = json.loads(given(enroll(), sent(0), the_reply).state.model_dump_json())
    snapshot["processed_command_ids"] = list(snapshot["processed_command_ids"])  # the old shape: ids only
    restored = ContactState.model_validate(snapshot)
    assert restored.has_processed("reply-1")
    next_decision = T0 + 10 * 24 * HOUR  # the snapshot says nothing of when its ids were decided
    history = [opened(at=next_decision), *_others(200, 10 * 24 * HOUR, COMMAND_ID_WINDOW - HOUR)]
    state = restored
    for command in history:
        state = play(state, command)
    assert state.processed_command_ids["reply-1"] == int(next_decision.timestamp())
    Scenario(state).when(the_reply).then_ignored(Ignored.DUPLICATE)


def test_the_window_outlasts_the_commands_topic_retention() -> None:
    # A command the topic can still redeliver (or a client re-publish within it) is always a duplicate.
    topics = Topics()
    (commands,) = [spec for spec in topics.specs(1) if spec.name == topics.commands]
    retention = timedelta(milliseconds=int(commands.config["retention.ms"]))
    assert timedelta(0) < retention < COMMAND_ID_WINDOW
