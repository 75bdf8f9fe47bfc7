"""The committed JSON Schemas under schemas/ are exactly what the pydantic models generate."""

from __future__ import annotations

import json
import pathlib

from enrollstream import schemas_gen

SCHEMAS = pathlib.Path(__file__).resolve().parents[2] / "schemas"


def test_committed_schemas_match_the_models() -> None:
    problems = schemas_gen.drift(SCHEMAS)
    assert problems == [], "run: PYTHONPATH=src python -m enrollstream.schemas_gen --write"


def test_every_command_event_and_integration_event_has_a_schema() -> None:
    rendered = schemas_gen.render()
    assert "commands/Enroll.v1.json" in rendered
    assert "events/ContactEnrolled.v1.json" in rendered
    assert "integration/enrollment.sent.v1.json" in rendered
    assert "envelopes/command.json" in rendered
    for content in rendered.values():
        assert json.loads(content)


def test_drift_is_reported(tmp_path: pathlib.Path) -> None:
    schemas_gen.write(tmp_path)
    assert schemas_gen.drift(tmp_path) == []
    (tmp_path / "events" / "ContactEnrolled.v1.json").write_text("{}\n")
    (tmp_path / "events" / "Old.v0.json").write_text("{}\n")
    assert schemas_gen.drift(tmp_path) == [
        "differs: events/ContactEnrolled.v1.json",
        "stale: events/Old.v0.json",
    ]
    assert schemas_gen.main(["--check", "--dir", str(tmp_path)]) == 1
