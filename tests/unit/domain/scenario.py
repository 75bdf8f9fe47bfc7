"""given(*history).when(command).then(*expected): decider tests that read like the documents.

History items are events (applied with evolve) or commands (decided, must be accepted, then folded),
so a test can set the scene with the same commands users send.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from enrollstream.domain import (
    Accepted,
    BounceDetected,
    CampaignDefinition,
    Channel,
    ContactCommand,
    ContactFacts,
    ContactState,
    DeliveryReported,
    Enroll,
    Event,
    EventEnvelope,
    ExpiryDue,
    ExternalTrigger,
    Ignored,
    MarkFinished,
    OpenDetected,
    OptOut,
    PutContact,
    Rejection,
    ReplyDetected,
    Step,
    StepContent,
    StepDue,
    Stop,
    Unenroll,
    WaitTimeout,
    decide,
    evolve,
    fold,
    ids,
    initial_state,
)

ACCOUNT = "acc-1"
CONTACT = "contact-1"
CAMPAIGN = "cmp-1"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday, 09:00 UTC
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

_ids = itertools.count(1)


def step(channel: Channel = Channel.EMAIL, delay: timedelta = timedelta(0), **kw: Any) -> Step:
    subject = "Hello" if channel is Channel.EMAIL else None
    return Step(channel=channel, delay=delay, content=StepContent(subject=subject, body="Hi {{name}}"), **kw)


def campaign(**kw: Any) -> CampaignDefinition:
    fields: dict[str, Any] = {
        "campaign_id": CAMPAIGN,
        "account_id": ACCOUNT,
        "version": 1,
        "name": "Welcome",
        "steps": [step(), step(delay=DAY), step(delay=2 * DAY)],
    }
    fields.update(kw)
    return CampaignDefinition(**fields)


def blast(**kw: Any) -> CampaignDefinition:
    return campaign(kind="blast", steps=[step()], **kw)


def contact(**kw: Any) -> ContactFacts:
    fields: dict[str, Any] = {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "mobile": "+15550100",
        "line_type": "mobile",
    }
    fields.update(kw)
    return ContactFacts(**fields)


def eid(campaign_id: str = CAMPAIGN, sequence: int = 1) -> str:
    return ids.enrollment_id(ACCOUNT, CONTACT, campaign_id, sequence)


def _envelope(at: datetime, command_id: str | None, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "command_id": command_id or f"cmd-{next(_ids)}",
        "account_id": ACCOUNT,
        "issued_at": at,
        "actor": "test",
        "data": {"contact_id": CONTACT, **data},
    }


def enroll(
    cmp: CampaignDefinition | None = None,
    at: datetime = T0,
    command_id: str | None = None,
    **data: Any,
) -> Enroll:
    cmp = cmp if cmp is not None else campaign()
    fields: dict[str, Any] = {"campaign_id": cmp.campaign_id, "campaign": cmp, "contact": contact()}
    fields.update(data)
    return Enroll.model_validate(_envelope(at, command_id, fields))


def step_due(
    step_index: int = 0,
    attempt: int = 1,
    at: datetime = T0,
    enrollment: str | None = None,
    command_id: str | None = None,
    **data: Any,
) -> StepDue:
    fields = {"enrollment_id": enrollment or eid(), "step_index": step_index, "attempt": attempt, **data}
    return StepDue.model_validate(_envelope(at, command_id, fields))


def reported(
    outcome: str = "sent",
    step_index: int = 0,
    attempt: int = 1,
    at: datetime = T0,
    enrollment: str | None = None,
    command_id: str | None = None,
    **data: Any,
) -> DeliveryReported:
    fields = {
        "enrollment_id": enrollment or eid(),
        "step_index": step_index,
        "attempt": attempt,
        "outcome": outcome,
        **data,
    }
    return DeliveryReported.model_validate(_envelope(at, command_id, fields))


def sent(step_index: int = 0, at: datetime = T0, enrollment: str | None = None) -> list[ContactCommand]:
    """The scheduler fires the step and the dispatcher reports it sent."""
    return [
        step_due(step_index, at=at, enrollment=enrollment),
        reported("sent", step_index, at=at, enrollment=enrollment),
    ]


def _on_enrollment(
    cls: type[Any], at: datetime, enrollment: str | None, command_id: str | None, **data: Any
) -> Any:
    return cls.model_validate(_envelope(at, command_id, {"enrollment_id": enrollment or eid(), **data}))


def reply(
    at: datetime = T0, enrollment: str | None = None, command_id: str | None = None, **d: Any
) -> ReplyDetected:
    result: ReplyDetected = _on_enrollment(ReplyDetected, at, enrollment, command_id, **d)
    return result


def opened(at: datetime = T0, enrollment: str | None = None, **d: Any) -> OpenDetected:
    result: OpenDetected = _on_enrollment(OpenDetected, at, enrollment, None, **d)
    return result


def bounce(at: datetime = T0, enrollment: str | None = None, **d: Any) -> BounceDetected:
    result: BounceDetected = _on_enrollment(BounceDetected, at, enrollment, None, **d)
    return result


def stop(at: datetime = T0, enrollment: str | None = None, command_id: str | None = None) -> Stop:
    result: Stop = _on_enrollment(Stop, at, enrollment, command_id)
    return result


def unenroll(at: datetime = T0, enrollment: str | None = None) -> Unenroll:
    result: Unenroll = _on_enrollment(Unenroll, at, enrollment, None)
    return result


def mark_finished(at: datetime = T0, enrollment: str | None = None) -> MarkFinished:
    result: MarkFinished = _on_enrollment(MarkFinished, at, enrollment, None)
    return result


def trigger(at: datetime = T0, enrollment: str | None = None) -> ExternalTrigger:
    result: ExternalTrigger = _on_enrollment(ExternalTrigger, at, enrollment, None, trigger="availability")
    return result


def paused(*periods: tuple[datetime, datetime | None]) -> list[dict[str, Any]]:
    """A campaign's pause history (`campaign_pauses` of a timer command): (started, ended or None)."""
    return [{"started_at": start, "ended_at": end} for start, end in periods]


def expiry_due(
    at: datetime, enrollment: str | None = None, pauses: list[dict[str, Any]] | None = None
) -> ExpiryDue:
    extra = {"campaign_pauses": pauses} if pauses is not None else {}
    result: ExpiryDue = _on_enrollment(ExpiryDue, at, enrollment, None, **extra)
    return result


def wait_timeout(
    at: datetime, enrollment: str | None = None, pauses: list[dict[str, Any]] | None = None
) -> WaitTimeout:
    extra = {"campaign_pauses": pauses} if pauses is not None else {}
    result: WaitTimeout = _on_enrollment(WaitTimeout, at, enrollment, None, **extra)
    return result


def put_contact(at: datetime = T0, command_id: str | None = None, **profile: Any) -> PutContact:
    """The contact's directory entry (PutContact): Ada's profile unless told otherwise."""
    fields: dict[str, Any] = {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "mobile": "+15550100",
        "line_type": "mobile",
        "time_zone": "Europe/London",
    }
    fields.update(profile)
    return PutContact.model_validate(_envelope(at, command_id, fields))


def opt_out(at: datetime = T0) -> OptOut:
    return OptOut.model_validate(_envelope(at, None, {"channel": "sms", "detail": "STOP"}))


@dataclass(frozen=True)
class Expect:
    cls: type[EventEnvelope]
    fields: dict[str, Any]

    def check(self, event: EventEnvelope, index: int) -> None:
        assert isinstance(event, self.cls), f"event {index}: expected {self.cls.__name__}, got {event.type}"
        for name, want in self.fields.items():
            source = event if name in EventEnvelope.model_fields else getattr(event, "data")  # noqa: B009
            got = getattr(source, name)
            assert got == want, f"event {index} {event.type}.{name}: expected {want!r}, got {got!r}"


def ev(cls: type[EventEnvelope], **fields: Any) -> Expect:
    return Expect(cls, fields)


History = Event | ContactCommand | Iterable[Event | ContactCommand]


def _flatten(items: Iterable[History]) -> list[Event | ContactCommand]:
    flat: list[Event | ContactCommand] = []
    for item in items:
        if isinstance(item, EventEnvelope) or hasattr(item, "command_id"):
            flat.append(item)  # type: ignore[arg-type]
        else:
            flat.extend(_flatten(item))  # type: ignore[arg-type]
    return flat


def play(state: ContactState, command: ContactCommand) -> ContactState:
    decision = decide(command, state)
    assert isinstance(decision, Accepted), f"{command.type} in the history was rejected: {decision}"
    assert decision.events, f"{command.type} in the history changed nothing ({decision.ignored})"
    return fold(state, decision.events)


class Scenario:
    def __init__(self, state: ContactState) -> None:
        self.state = state

    def when(self, command: ContactCommand) -> Then:
        return Then(self.state, command, decide(command, self.state))


def given(*history: History) -> Scenario:
    state = initial_state(ACCOUNT, CONTACT)
    for item in _flatten(history):
        state = evolve(state, item) if isinstance(item, EventEnvelope) else play(state, item)  # type: ignore[arg-type]
    return Scenario(state)


class Then:
    def __init__(self, before: ContactState, command: ContactCommand, decision: Accepted | Rejection) -> None:
        self.before = before
        self.command = command
        self.decision = decision

    @property
    def events(self) -> list[Event]:
        assert isinstance(self.decision, Accepted), f"rejected: {self.decision}"
        return self.decision.events

    @property
    def state(self) -> ContactState:
        return fold(self.before, self.events)

    def then(self, *expected: Expect) -> Then:
        events = self.events
        types = [e.type for e in events]
        assert len(events) == len(expected), f"expected {[x.cls.__name__ for x in expected]}, got {types}"
        for index, (event, want) in enumerate(zip(events, expected, strict=True)):
            want.check(event, index)
        return self

    def then_rejected(self, code: str) -> Then:
        assert isinstance(self.decision, Rejection), f"expected rejection {code}, got {self.decision}"
        assert self.decision.code == code, f"expected {code}, got {self.decision.code}"
        return self

    def then_ignored(self, reason: Ignored) -> Then:
        assert isinstance(self.decision, Accepted), f"expected {reason}, got {self.decision}"
        assert self.decision.events == [], f"expected no events, got {[e.type for e in self.decision.events]}"
        assert self.decision.ignored is reason, f"expected {reason}, got {self.decision.ignored}"
        return self

    def enrollment(self, enrollment: str | None = None) -> Any:
        return self.state.enrollments[enrollment or eid()]
