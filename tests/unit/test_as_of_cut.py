"""As of T keeps, per contact, the prefix of its history up to its first event after T (docs/time-travel.md
"Which time"): occurred_at may step back within the accepted skew, and a state is a fold of a prefix."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from enrollstream.domain.events import Event
from enrollstream.runtime.as_of import _prefix
from enrollstream.runtime.replay import Cut

T = datetime(2026, 11, 22, 11, 30, tzinfo=UTC)


@dataclass
class Record:  # what the rebuild's cut reads of a Kafka record
    key: bytes
    value: bytes


def record(key: str, hour: int, minute: int = 0, account: str = "a", campaign: str = "welcome") -> Record:
    at = datetime(2026, 11, 22, hour, minute, tzinfo=UTC).isoformat()
    doc = {"occurred_at": at, "account_id": account, "campaign_id": campaign}
    return Record(key.encode(), json.dumps(doc).encode())


def test_the_cut_keeps_each_contacts_prefix_up_to_its_first_event_after_t() -> None:
    keep = Cut(T).keeper()
    records = [
        record("a/1", 10),
        record("a/2", 11),
        record("a/1", 12),  # after T: a/1's history stops here...
        record("a/1", 11, 29),  # ...so this one, stepped back within the skew, is not folded either
        record("a/2", 11, 30),  # at T exactly: kept
    ]
    assert [keep(r) for r in records] == [True, True, False, False, True]


def test_the_cut_keeps_one_accounts_campaign_only() -> None:
    keep = Cut(T, "a", "welcome").keeper()
    records = [
        record("a/1", 10),
        record("b/1", 10, account="b"),
        record("a/1", 10, 5, campaign="other"),
        Record(b"a/1", b"not json"),  # unreadable: not this account's to claim
    ]
    assert [keep(r) for r in records] == [True, False, False, False]
    assert Cut(T).keeper()(Record(b"a/1", b"not json"))  # the whole topic: kept, the projector quarantines it


@dataclass
class Happened:
    occurred_at: datetime


def test_one_contacts_history_as_of_t_is_its_prefix() -> None:
    times = [datetime(2026, 11, 22, h, m, tzinfo=UTC) for h, m in ((9, 0), (10, 0), (11, 31), (11, 29))]
    events = cast(list[Event], [Happened(t) for t in times])
    assert [cast(Any, e).occurred_at for e in _prefix(events, T)] == times[:2]
    assert _prefix(events, datetime(2026, 11, 22, 8, tzinfo=UTC)) == []
