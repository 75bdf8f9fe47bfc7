"""Compact snapshots: an enrollment refers to the campaign version it was enrolled under, and keeps
sending that version's steps after the campaign is edited, also when restored from a snapshot whose
definitions live only in the catalog (domain/state.py `snapshot_bytes`, `state_from_snapshot`)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from enrollstream.domain import (
    CampaignDefinition,
    Channel,
    ContactState,
    Step,
    StepContent,
    StepDispatched,
    snapshot_bytes,
    state_from_snapshot,
)

from .scenario import ACCOUNT, CAMPAIGN, DAY, T0, Scenario, campaign, enroll, ev, given, sent, step_due

V1 = campaign()  # three email steps
V2 = campaign(version=2, steps=[Step(channel=Channel.SMS, content=StepContent(body="v2 only"))])


class Catalog:
    """What the runtime's campaign catalog answers: the definition of (account, campaign, version)."""

    def __init__(self, *definitions: CampaignDefinition) -> None:
        self.versions = {(c.account_id, c.campaign_id, c.version): c for c in definitions}

    def get_version(self, account_id: str, campaign_id: str, version: int) -> CampaignDefinition | None:
        return self.versions.get((account_id, campaign_id, version))

    def resolves(self, account_id: str, definition: CampaignDefinition) -> bool:
        return self.get_version(account_id, definition.campaign_id, definition.version) == definition


def restored(scenario: Scenario, written_with: Catalog, read_with: Catalog | None = None) -> Scenario:
    """The scenario's state written as a snapshot and restored, as the decider does after a restart."""
    raw = snapshot_bytes(scenario.state, written_with.resolves)
    return Scenario(state_from_snapshot(raw, (read_with or written_with).get_version))


def test_an_enrollment_keeps_the_steps_of_its_version_after_an_edit_and_a_restore() -> None:
    # Enrolled under v1, then the campaign is edited (v2 is the catalog's latest), then the decider restarts.
    before_restart = given(enroll(V1), sent(0))
    after_restart = restored(before_restart, Catalog(V1, V2))
    after_restart.when(step_due(1, at=T0 + DAY)).then(
        ev(StepDispatched, step_index=1, channel="email", content=V1.steps[1].content)
    )
    assert after_restart.state.enrollments[next(iter(after_restart.state.enrollments))].step_count == 3


def test_a_snapshot_refers_to_the_version_instead_of_embedding_it() -> None:
    state = given(enroll(V1), sent(0)).state
    raw = snapshot_bytes(state, Catalog(V1, V2).resolves)
    assert b'"steps"' not in raw and b'"campaign_version":1' in raw
    assert len(raw) < len(state.model_dump_json()) / 2


def test_restored_enrollments_share_the_catalogs_definition() -> None:
    catalog = Catalog(V1)
    state = restored(given(enroll(V1)), catalog).state
    (enrollment,) = state.enrollments.values()
    assert enrollment.campaign is catalog.get_version(ACCOUNT, CAMPAIGN, 1)
    assert enrollment.campaign_version == 1


def test_a_version_the_catalog_does_not_keep_stays_embedded_and_restores_without_it() -> None:
    # v1 was published before versions were kept: compaction left only v2 in the catalog.
    after_restart = restored(given(enroll(V1), sent(0)), written_with=Catalog(V2), read_with=Catalog(V2))
    after_restart.when(step_due(1, at=T0 + DAY)).then(
        ev(StepDispatched, step_index=1, channel="email", content=V1.steps[1].content)
    )


def test_a_definition_that_differs_from_the_catalogs_version_is_embedded() -> None:
    # The same version number re-published with other content: the enrollment keeps what it enrolled under.
    edited_in_place = V1.model_copy(update={"name": "Renamed"})
    state = given(enroll(V1)).state
    raw = snapshot_bytes(state, Catalog(edited_in_place).resolves)
    assert b'"steps"' in raw
    (enrollment,) = state_from_snapshot(raw, Catalog(edited_in_place).get_version).enrollments.values()
    assert enrollment.campaign == V1


def test_an_old_format_snapshot_loads_as_a_reference_to_the_catalogs_definition() -> None:
    state = given(enroll(V1), sent(0)).state
    legacy = state.model_dump_json()  # how every snapshot was written before: the definition embedded
    legacy_without_reference = legacy.replace('"campaign_version":1,', "")
    catalog = Catalog(V1, V2)
    restored_state = state_from_snapshot(legacy_without_reference, catalog.get_version)
    (enrollment,) = restored_state.enrollments.values()
    assert enrollment.campaign_version == 1
    assert enrollment.campaign is catalog.get_version(ACCOUNT, CAMPAIGN, 1)
    assert restored_state == state
    Scenario(restored_state).when(step_due(1, at=T0 + DAY)).then(ev(StepDispatched, step_index=1))


def test_an_old_format_snapshot_loads_when_the_catalog_lost_its_version() -> None:
    state = given(enroll(V1)).state
    legacy = state.model_dump_json().replace('"campaign_version":1,', "")
    assert state_from_snapshot(legacy, Catalog(V2).get_version) == state


def test_a_reference_the_catalog_cannot_resolve_is_refused_not_guessed() -> None:
    raw = snapshot_bytes(given(enroll(V1)).state, Catalog(V1).resolves)
    with pytest.raises(ValidationError, match="not in the catalog"):
        state_from_snapshot(raw, Catalog(V2).get_version)
    with pytest.raises(ValidationError, match="campaigns lookup"):
        ContactState.model_validate_json(raw)
