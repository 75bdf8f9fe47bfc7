"""The projector's light parse reads every record as the full model does (issue 15, the projector's parse).

`EventReader.read` validates a ContactEnrolled's campaign definition once per distinct definition and
splices its dump into the timeline's `data`; everything else is the full model's validation. These
properties hold it to `parse_event` + `event.data.model_dump_json()` (the path the projector took
before): the same event, field for field (so no field a fold reads, today or later, can be dropped), the
same timeline text, the same enrollment rows and timers from the folds; and a record the full model
refuses is refused with the same errors, also when its definition differs by one value from one the
reader holds validated.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from bench import workload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from enrollstream.adapters.kafka.records import encode
from enrollstream.domain import Accepted, decide, evolve, initial_state
from enrollstream.domain.events import Event, parse_event
from enrollstream.read_models import enrollments, event_reader, timers
from enrollstream.read_models.event_reader import MAX_DEFINITIONS, EventReader
from tests.unit.domain.scenario import ACCOUNT, CONTACT, T0
from tests.unit.read_models.test_enrollment_row_property import GAPS, _command

BENCH_MIX = [encode(d.event) for d in workload.events(3000)]
# One reader for every example, as the projector keeps one: definitions validated by earlier examples
# are in its cache when a later example brings a definition that differs from one of them.
READER = EventReader()


def _full(raw: bytes) -> tuple[Event, str]:
    """The reference: what the projector parsed and stored before the light path."""
    event = parse_event(raw)
    return event, event.data.model_dump_json()


FALLBACKS: list[bytes] = []  # the records a light read handed to `parse_event`


def _counting_parse_event(raw: bytes) -> Event:
    FALLBACKS.append(raw)
    return parse_event(raw)


@pytest.fixture(autouse=True, scope="module")
def _count_fallbacks() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(event_reader, "parse_event", _counting_parse_event)
        yield


def _light(raw: bytes, reader: EventReader = READER) -> tuple[Event, str]:
    event, dump = reader.read(raw)
    return event, event.data.model_dump_json() if dump is None else dump


def _compact(doc: dict[str, Any]) -> bytes:
    """JSON as the decider writes it (no spaces), so the light path takes it."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _folded(events: list[Event]) -> tuple[dict[str, enrollments.EnrollmentRow], Any]:
    """The rows and timer changes the projector's folds make of `events` (as `_write_enrollments` and
    `_write_timers` run them)."""
    rows: dict[str, enrollments.EnrollmentRow] = {}
    fold = timers.TimerFold({})
    for event in events:
        fold.apply(event)
        if event.enrollment_id:
            after = enrollments.apply(rows.get(event.enrollment_id), event)
            if after is not None:
                rows[event.enrollment_id] = after
    return rows, (fold.upserts(), fold.deletes())


def _same_reading(raws: list[bytes]) -> None:
    full = [_full(raw) for raw in raws]
    light = [_light(raw) for raw in raws]
    for raw, (event, dump), (light_event, light_dump) in zip(raws, full, light, strict=True):
        assert type(light_event) is type(event), raw[:200]
        assert light_event.model_dump() == event.model_dump(), raw[:200]
        assert light_event.model_fields_set == event.model_fields_set
        assert light_event.data.model_fields_set == event.data.model_fields_set
        assert light_dump == dump, raw[:200]
    assert _folded([e for e, _ in light]) == _folded([e for e, _ in full])


def test_the_bench_mix_reads_as_the_full_model_reads_it() -> None:
    enrolled = [raw for raw in BENCH_MIX if b'"ContactEnrolled.v1"' in raw]
    assert len(enrolled) > 100  # the light path is exercised, with the cache hit again and again
    FALLBACKS.clear()
    _same_reading(BENCH_MIX)
    assert not set(FALLBACKS) & set(enrolled), "every ContactEnrolled of the mix took the light path"
    rows, _ = _folded([_light(raw)[0] for raw in BENCH_MIX])
    assert rows, "the mix makes enrollment rows"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=True))
def test_events_of_random_command_sequences_read_as_the_full_model_reads_them(rng: random.Random) -> None:
    """Every campaign of the row property's set (sequences, blasts, queues, triggers, MX checks), every
    command type, every event the decider emits from them."""
    state = initial_state(ACCOUNT, CONTACT)
    now = T0
    raws: list[bytes] = []
    for n in range(rng.randint(1, 25)):
        now = now + rng.choice(GAPS)
        decision = decide(_command(rng, state, now, n), state)
        if isinstance(decision, Accepted):
            for event in decision.events:
                state = evolve(state, event)
                raws.append(encode(event))
    _same_reading(raws)


def _enrolled_doc() -> dict[str, Any]:
    raw = next(raw for raw in BENCH_MIX if b'"ContactEnrolled.v1"' in raw)
    READER.read(raw)  # its definition is in the cache: a mutated copy must not be taken for it
    doc: dict[str, Any] = json.loads(raw)
    return doc


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


def _outcome(read: Any, raw: bytes) -> tuple[str, Any]:
    try:
        event, dump = read(raw)
    except ValidationError as exc:
        return "refused", json.loads(exc.json(include_url=False))  # exceptions in `ctx` as their text
    return "read", (type(event).__name__, event.model_dump(mode="json"), dump)


REPLACEMENTS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([0.5, 1.0, "", "x", "never", "PT0S", "P1D", "2026-01-01", "2026-01-01T00:00:00"]),
    st.just([]),
    st.just({}),
    st.just({"unknown": 1}),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_changed_contact_enrolled_is_read_or_refused_as_the_full_model_does(data: st.DataObject) -> None:
    """One value of a real ContactEnrolled (its definition's above all) replaced, removed, or a key added:
    the light path accepts exactly what the full model accepts, as the same event, and refuses the rest
    with the same errors, although the reader holds the unchanged definition validated."""
    doc = _enrolled_doc()
    paths = [p for p in _paths(doc) if p]
    campaign_paths = [p for p in paths if p[:2] == ("data", "campaign")]
    path = data.draw(st.sampled_from(campaign_paths) | st.sampled_from(paths))
    *parents, last = path
    container = doc
    for key in parents:
        container = container[key]
    action = data.draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "replace":
        container[last] = data.draw(REPLACEMENTS)
    elif action == "remove" and isinstance(container, dict):
        del container[last]
    elif isinstance(container, dict):
        container[f"{last}_extra"] = data.draw(REPLACEMENTS)
    raw = _compact(doc)
    FALLBACKS.clear()
    light = _outcome(_light, raw)
    assert light == _outcome(_full, raw)
    if light[0] == "read" and action == "replace" and path[:2] == ("data", "campaign"):
        assert not FALLBACKS, "an accepted change of the definition was read by the light path"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"type":"ContactEnrolled.v1"}',
        b'{"event_id":"e","type":"ContactEnrolled.v1","data":{"campaign":"x"}}',
        b'{"event_id":"e","type":"ContactEnrolled.v1","data":[]}',
        b'{"event_id":"e","type":"ContactEnrolled.v1","data":{"campaign":{"campaign_id":"c"}}}',
    ],
)
def test_what_is_no_contact_enrolled_is_refused_with_the_full_models_errors(raw: bytes) -> None:
    assert _outcome(_light, raw)[0] == "refused"
    assert _outcome(_light, raw) == _outcome(_full, raw)


def test_a_duplicated_key_reads_as_the_full_model_reads_it() -> None:
    """JSON with a key twice: both parsers keep the last; the light path must not differ."""
    raw = next(raw for raw in BENCH_MIX if b'"ContactEnrolled.v1"' in raw)
    doubled = raw.replace(b'"data":{"campaign":', b'"data":{"sequence":1,"campaign":', 1)
    doubled = doubled.replace(b',"time_zone":', b',"time_zone":"Europe/Oslo","time_zone":', 1)
    assert _outcome(_light, doubled) == _outcome(_full, doubled)
    assert _outcome(_full, doubled)[0] == "read"


def test_the_definition_cache_stays_bounded() -> None:
    reader = EventReader()
    doc = json.loads(next(raw for raw in BENCH_MIX if b'"ContactEnrolled.v1"' in raw))
    for version in range(1, 2 * MAX_DEFINITIONS + 2):
        doc["data"]["campaign"]["version"] = version
        FALLBACKS.clear()
        event, _ = reader.read(_compact(doc))
        assert not FALLBACKS
        assert event.data.campaign.version == version  # type: ignore[union-attr]
        assert len(reader._definitions) <= MAX_DEFINITIONS
