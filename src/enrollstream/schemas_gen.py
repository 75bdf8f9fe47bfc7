"""Generate the JSON Schemas of every command, event and integration event into schemas/.

    python -m enrollstream.schemas_gen --write [--dir schemas]
    python -m enrollstream.schemas_gen --check [--dir schemas]   # exit 1 when schemas/ drifted

The pydantic models are the source; the files are the published contract, checked in CI.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from enrollstream.domain import (
    COMMAND_TYPES,
    EVENT_TYPES,
    INTEGRATION_EVENT_TYPES,
    CommandResult,
    ContactImport,
    ContactState,
)
from enrollstream.domain.commands import command_adapter
from enrollstream.domain.events import event_adapter
from enrollstream.domain.inbound import InboundEmailReceived
from enrollstream.domain.integration import integration_event_adapter

SUBDIRS = ("commands", "events", "integration", "envelopes")


def _type_name(model: type[Any]) -> str:
    return str(model.model_fields["type"].default)


def render() -> dict[str, str]:
    """Relative path -> file content, for every schema."""
    schemas: dict[str, dict[str, Any]] = {}
    for command in COMMAND_TYPES:
        schemas[f"commands/{_type_name(command)}.json"] = command.model_json_schema()
    for event in EVENT_TYPES:
        schemas[f"events/{_type_name(event)}.json"] = event.model_json_schema()
    for integration in INTEGRATION_EVENT_TYPES:
        schemas[f"integration/{_type_name(integration)}.v1.json"] = integration.model_json_schema()
    # The unions parse_command / parse_event validate against.
    schemas["envelopes/command.json"] = command_adapter.json_schema()
    schemas["envelopes/event.json"] = event_adapter.json_schema()
    schemas["envelopes/integration_event.json"] = integration_event_adapter.json_schema()
    schemas["envelopes/command_result.json"] = CommandResult.model_json_schema()
    schemas["envelopes/contact_state_snapshot.json"] = ContactState.model_json_schema()
    # What upstream publishes on the contact-imports topic (BulkEnroll without inline contacts).
    schemas["envelopes/contact_import.json"] = ContactImport.model_json_schema()
    # What an inbound mail relay publishes on the inbound-email topic (reply detection).
    schemas["envelopes/inbound_email.json"] = InboundEmailReceived.model_json_schema()
    return {path: json.dumps(schema, indent=2, sort_keys=True) + "\n" for path, schema in schemas.items()}


def drift(root: pathlib.Path) -> list[str]:
    """Differences between the committed files under root and the models; empty when in sync."""
    expected = render()
    problems = []
    for path, content in sorted(expected.items()):
        file = root / path
        if not file.exists():
            problems.append(f"missing: {path}")
        elif file.read_text() != content:
            problems.append(f"differs: {path}")
    for sub in SUBDIRS:
        for file in sorted((root / sub).glob("*.json")):
            if f"{sub}/{file.name}" not in expected:
                problems.append(f"stale: {sub}/{file.name}")
    return problems


def write(root: pathlib.Path) -> None:
    expected = render()
    for sub in SUBDIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
        for file in (root / sub).glob("*.json"):
            if f"{sub}/{file.name}" not in expected:
                file.unlink()
    for path, content in expected.items():
        (root / path).write_text(content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="fail when schemas/ differs from the models")
    mode.add_argument("--write", action="store_true", help="regenerate schemas/")
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("schemas"))
    args = parser.parse_args(argv)
    if args.write:
        write(args.dir)
        print(f"wrote {len(render())} schemas to {args.dir}")
        return 0
    problems = drift(args.dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("schemas drifted: run python -m enrollstream.schemas_gen --write", file=sys.stderr)
        return 1
    print(f"{len(render())} schemas in sync")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
