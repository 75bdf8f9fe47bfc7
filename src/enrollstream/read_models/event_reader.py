"""The projector's parse of an event record: the same event `parse_event` gives, cheaper for ContactEnrolled.

A ContactEnrolled embeds the whole campaign definition it runs under (about 60 fields, two thirds of the
record), and a batch holds the same few definitions over and over. `parse_event` validates each copy
again and the timeline dumps each copy again: that, and the garbage collections the thousands of short-
lived definition objects set off, was most of the projector's parse time (docs/benchmarks.md, "Projector
after the light parse").

So `EventReader.read` parses a ContactEnrolled in two steps: the record into plain JSON values
(pydantic-core's own parser, no models), then the campaign definition is looked up by its canonical JSON
(`to_json` of the parsed value) in a bounded cache of definitions validated before (in JSON mode, as
`parse_event` validates them), and the event validated with that instance in place (pydantic accepts a
validated model instance as is). Everything else of the event is validated as `parse_event` validates it,
every field, every rule. Other event types are small: `parse_event` itself. `read_referenced` gives a
ContactEnrolled's data without its definition, and the definition's dump and SHA-256 apart: the timeline
stores the definition once and refers to it (migration 0020).

Rejections stay `parse_event`'s: whenever the light path refuses a record, the record goes through
`parse_event` itself, which raises the same `ValidationError` as before (so the projector quarantines it
the same way), or, if it accepts it, its event is the one used. The light path can only be wrong by
accepting what `parse_event` refuses or by building a different event; the property tests in
tests/unit/read_models/test_event_reader.py check both on the bench's mix and on generated events.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from pydantic_core import from_json, to_json

from enrollstream.domain.campaign import CampaignDefinition
from enrollstream.domain.events import ContactEnrolled, Event, parse_event

_TYPE = "ContactEnrolled.v1"
_CONTACT_ENROLLED = b'"type":"ContactEnrolled.v1"'
# Where the type sits in a record the decider wrote (`{"event_id":"<id>","type":...`); only a routing
# hint: a record with the type elsewhere takes `parse_event`, which gives the same event.
_TYPE_WITHIN = 256
# Bounds of the definition cache: a definition is at most a record (1 MiB); the cache is emptied when
# either bound is passed (a batch names a few campaigns, so it refills at once with those it uses).
MAX_DEFINITIONS = 256
MAX_DEFINITION_BYTES = 16 * 1024 * 1024


class DefinitionDump(NamedTuple):
    """A campaign definition as the timeline stores it: its JSON (as `model_dump_json` gives it) and the
    SHA-256 (hex) of that JSON, which a ContactEnrolled's timeline row names (migration 0020)."""

    json: str
    digest: str


class EventReader:
    """Parses event records for the projector; holds the definitions it validated (bounded)."""

    def __init__(self) -> None:
        # canonical JSON of a definition -> (the validated definition, its dump as the timeline stores it)
        self._definitions: dict[bytes, tuple[CampaignDefinition, DefinitionDump]] = {}
        self._definition_bytes = 0

    def read(self, raw: bytes) -> tuple[Event, str | None]:
        """The event `parse_event(raw)` gives (or its error), and, for a ContactEnrolled, its data as
        `event.data.model_dump_json()` gives it (None for the other types: the caller dumps those)."""
        event, rest, definition = self.read_referenced(raw)
        if rest is None or definition is None:
            return event, rest
        # `data.model_dump_json()` with the definition's dump spliced in: the same text (campaign first).
        return event, '{"campaign":' + definition.json + ("," + rest[1:] if rest != "{}" else "}")

    def read_referenced(self, raw: bytes) -> tuple[Event, str | None, DefinitionDump | None]:
        """`read`, with a ContactEnrolled's data apart from its campaign definition: the data without the
        `campaign` key, and the definition's dump and digest (what the timeline stores, migration 0020).
        (event, None, None) for the other types, and for a record only `parse_event` reads."""
        if raw.find(_CONTACT_ENROLLED, 0, _TYPE_WITHIN) < 0:
            return parse_event(raw), None, None
        try:
            return self._contact_enrolled(raw)
        except Exception:
            # Not a valid ContactEnrolled for the light path: `parse_event` says what it is (an event
            # after all, or the ValidationError the projector has always quarantined).
            return parse_event(raw), None, None

    def _contact_enrolled(self, raw: bytes) -> tuple[Event, str, DefinitionDump]:
        doc = from_json(raw)
        if not isinstance(doc, dict) or doc.get("type") != _TYPE:
            raise ValueError("not a ContactEnrolled")
        data = doc.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("campaign"), dict):
            raise ValueError("no campaign definition")
        definition, dump = self._definition(to_json(data["campaign"]))
        data["campaign"] = definition
        event = ContactEnrolled.model_validate(doc)
        return event, event.data.model_dump_json(exclude={"campaign"}), dump

    def _definition(self, canonical: bytes) -> tuple[CampaignDefinition, DefinitionDump]:
        known = self._definitions.get(canonical)
        if known is not None:
            return known
        definition = CampaignDefinition.model_validate_json(canonical)
        if (
            len(self._definitions) >= MAX_DEFINITIONS
            or self._definition_bytes + len(canonical) > MAX_DEFINITION_BYTES
        ):
            self._definitions.clear()
            self._definition_bytes = 0
        text = definition.model_dump_json()
        known = (definition, DefinitionDump(text, hashlib.sha256(text.encode()).hexdigest()))
        self._definitions[canonical] = known
        self._definition_bytes += len(canonical)
        return known
