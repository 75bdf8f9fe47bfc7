"""`as-of T` (issue 16, docs/time-travel.md): the rows and stats cards as they were at T, rebuilt from the
events topic through the real broker and database; one contact from its own records only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain import ids
from enrollstream.runtime.as_of import AsOfInputError, campaign_as_of, contact_as_of
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.worker import Worker
from tests.api_support import client_for, new_key, running_api
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll, results_by_id, send
from tests.support import eventually, read_until, running_worker

OTHER = "acct-b"
ENROLLED = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
DUE = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
SENT = datetime(2026, 11, 22, 10, 1, tzinfo=UTC)
BETWEEN = datetime(2026, 11, 22, 11, 30, tzinfo=UTC)  # after the step went out, before the reply
REPLIED = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _command(kind: str, contact: str, at: datetime, actor: str, **data: Any) -> dict[str, Any]:
    return {
        "command_id": f"cmd-{uuid.uuid4()}",
        "type": f"{kind}.v1",
        "account_id": ACCOUNT,
        "issued_at": at.isoformat(),
        "actor": actor,
        "data": {"contact_id": contact, **data},
    }


async def _record_a_sequence(settings: Settings, topics: Topics) -> int:
    """A two-step campaign, then `send_a_sequence` through a decider and a projector."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    two_steps = campaign().model_copy(update={"steps": campaign().steps * 2})
    await publish_campaign(bootstrap, topics.campaigns, two_steps)
    async with running_worker(settings) as worker:
        return await send_a_sequence(settings, topics, worker)


async def send_a_sequence(settings: Settings, topics: Topics, worker: Worker) -> int:
    """Through a running worker (decider and projector), in account ACCOUNT's campaign `welcome`: alice
    enrolled, her step 1 due, sent, then a reply (the campaign stops on reply); bob enrolled only.
    Returns how many events the decider wrote, once the live projector applied them all."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    alice = ids.enrollment_id(ACCOUNT, "alice", "welcome", 1)
    step = {"enrollment_id": alice, "step_index": 0, "attempt": 1}
    commands = [
        ("alice", enroll("alice")),
        ("bob", enroll("bob")),
        ("alice", _command("StepDue", "alice", DUE, "scheduler", **step)),
        ("alice", _command("DeliveryReported", "alice", SENT, "dispatcher", **step, outcome="sent")),
        ("alice", _command("ReplyDetected", "alice", REPLIED, "inbound", enrollment_id=alice)),
    ]
    for contact, command in commands:
        await send(settings, topics, command, f"{ACCOUNT}/{contact}")
        await read_until(
            bootstrap, topics.command_results, lambda rs, c=command: c["command_id"] in results_by_id(rs)
        )
    assert worker.decider is not None and worker.projector is not None
    emitted = worker.decider.emitted_events
    projector = worker.projector

    async def caught_up() -> bool:
        return projector.applied_events >= emitted

    await eventually(caught_up, what="the live projector caught up")
    return emitted


async def _timeline_count(database_url: str, account: str, contact: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "select count(*) from enrollment_timeline where account_id = $1 and contact_id = $2",
            account,
            contact,
        )
        return count
    finally:
        await conn.close()


async def test_one_contact_as_of_a_time_reads_only_its_own_records_and_folds_them_like_the_projector(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    emitted = await _record_a_sequence(settings, topics)
    alice_events = await _timeline_count(database_url, ACCOUNT, "alice")
    assert 0 < alice_events < emitted  # bob's events are on the topic too

    conn = await asyncpg.connect(database_url)
    try:
        then = await contact_as_of(bootstrap, topics.events, conn, ACCOUNT, "alice", BETWEEN)
        now = await contact_as_of(bootstrap, topics.events, conn, ACCOUNT, "alice", datetime.now(UTC))
        before = await contact_as_of(bootstrap, topics.events, conn, ACCOUNT, "alice", datetime(2026, 1, 1))
        live = await conn.fetchrow("select * from enrollments where contact_id = 'alice'")
        # Account B asking with A's contact and campaign ids: nothing of A's.
        walled = await contact_as_of(bootstrap, topics.events, conn, OTHER, "alice", datetime.now(UTC))
        # Rows written before migration 0017 have no record positions: the key's partition is scanned.
        await conn.execute("update enrollment_timeline set event_partition = null, event_offset = null")
        scanned = await contact_as_of(bootstrap, topics.events, conn, ACCOUNT, "alice", BETWEEN)
    finally:
        await conn.close()

    [row] = then.rows
    assert (row.status, row.stage, row.current_step, row.total_steps) == ("active", "sent", 2, 2)
    assert (row.sent_at, row.replied_at, row.completed_at) == (SENT, None, None)
    assert then.method == "timeline index"
    # Only alice's records up to T were fetched: her events that occurred by 11:30 (not the reply's).
    assert then.records_read == alice_events - 2  # ReplyReceived and EnrollmentStopped came after T

    [row_now] = now.rows
    assert (row_now.status, row_now.stage, row_now.stop_reason) == ("stopped", "replied", "replied")
    assert row_now.replied_at == REPLIED
    assert now.records_read == alice_events
    assert live is not None and row_now == type(row_now)(**dict(live))  # as of now = the live row

    assert before.rows == [] and before.records_read == 0
    assert walled.rows == [] and walled.records_read == 0

    assert scanned.method == "partition scan" and scanned.rows == then.rows
    assert scanned.records_read >= alice_events  # the whole partition: her records and any other's


async def test_a_campaign_as_of_a_time_is_rebuilt_up_to_it_and_its_schema_dropped(
    settings: Settings, topics: Topics
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    emitted = await _record_a_sequence(settings, topics)

    then = await campaign_as_of(bootstrap, topics.events, database_url, ACCOUNT, "welcome", BETWEEN)
    now = await campaign_as_of(bootstrap, topics.events, database_url, ACCOUNT, "welcome", datetime.now(UTC))
    walled = await campaign_as_of(bootstrap, topics.events, database_url, OTHER, "welcome", datetime.now(UTC))

    assert {r.contact_id: r.status for r in then.rows} == {"alice": "active", "bob": "pending"}
    assert then.cards is not None
    assert (then.cards["total"], then.cards["active"], then.cards["stopped"]) == (2, 2, 0)
    assert then.method == "rebuild" and then.records_read == emitted  # the whole topic

    assert {r.contact_id: r.status for r in now.rows} == {"alice": "stopped", "bob": "pending"}
    assert now.cards is not None
    assert (now.cards["total"], now.cards["active"], now.cards["stopped"]) == (2, 1, 1)
    conn = await asyncpg.connect(database_url)
    try:
        live = [
            dict(r) for r in await conn.fetch("select * from enrollments order by enrolled_at, enrollment_id")
        ]
        leftover = await conn.fetchval("select count(*) from pg_namespace where nspname like 'asof_%'")
    finally:
        await conn.close()
    assert [r.__dict__ for r in now.rows] == live  # as of now = the live rows
    assert leftover == 0

    assert walled.rows == [] and walled.cards is not None and walled.cards["total"] == 0


async def test_as_of_refuses_times_and_ids_out_of_bounds(settings: Settings, topics: Topics) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(AsOfInputError, match="time out of range"):
            await contact_as_of(bootstrap, topics.events, conn, ACCOUNT, "alice", datetime(1999, 12, 31))
        with pytest.raises(AsOfInputError, match="contact"):
            await contact_as_of(bootstrap, topics.events, conn, ACCOUNT, "a/b", datetime.now(UTC))
        with pytest.raises(AsOfInputError, match="contact"):
            await contact_as_of(bootstrap, topics.events, conn, ACCOUNT, "x" * 257, datetime.now(UTC))
    finally:
        await conn.close()
    with pytest.raises(AsOfInputError, match="campaign"):
        await campaign_as_of(bootstrap, topics.events, database_url, ACCOUNT, "c\x00", datetime.now(UTC))


async def test_the_as_of_endpoint_answers_for_the_keys_account_only(
    settings: Settings, topics: Topics
) -> None:
    database_url = settings.database_url
    assert database_url
    await _record_a_sequence(settings, topics)
    key_a, key_b = await new_key(database_url, ACCOUNT), await new_key(database_url, OTHER)
    async with running_api(settings) as api:
        async with client_for(api, key_a) as a:
            one = await a.get("/as-of", params={"at": BETWEEN.isoformat(), "contact_id": "alice"})
            whole = await a.get("/as-of", params={"at": "2026-11-22T11:30:00", "campaign_id": "welcome"})
            bad_time = await a.get("/as-of", params={"at": "1999-01-01T00:00:00Z", "contact_id": "alice"})
            neither = await a.get("/as-of", params={"at": BETWEEN.isoformat()})
            bad_id = await a.get("/as-of", params={"at": BETWEEN.isoformat(), "contact_id": "a/b"})
        async with client_for(api, key_b) as b:
            b_contact = await b.get("/as-of", params={"at": BETWEEN.isoformat(), "contact_id": "alice"})
            b_campaign = await b.get("/as-of", params={"at": BETWEEN.isoformat(), "campaign_id": "welcome"})
        async with client_for(api, None) as anonymous:
            unauthorized = await anonymous.get(
                "/as-of", params={"at": BETWEEN.isoformat(), "contact_id": "x"}
            )

    assert one.status_code == 200, one.text
    [row] = one.json()["rows"]
    assert (row["status"], row["stage"], row["current_step"]) == ("active", "sent", 2)
    assert one.json()["cards"] is None and one.json()["method"] == "timeline index"
    assert whole.status_code == 200, whole.text
    assert whole.json()["cards"]["active"] == 2 and whole.json()["cards"]["total"] == 2
    assert {r["contact_id"] for r in whole.json()["rows"]} == {"alice", "bob"}
    assert whole.json()["at"].startswith("2026-11-22T11:30:00")  # no zone: UTC
    for refused in (bad_time, neither, bad_id):
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_request"
    assert b_contact.status_code == 200 and b_contact.json()["rows"] == []
    assert b_campaign.status_code == 404 and b_campaign.json()["error"]["code"] == "campaign_not_found"
    assert unauthorized.status_code == 401


async def test_the_as_of_command_prints_the_rows_and_cards_then(settings: Settings, topics: Topics) -> None:
    from tests.integration.test_cli_operations import cli, cli_env

    await _record_a_sequence(settings, topics)
    env = {**cli_env(settings), "ENROLLSTREAM_ACCOUNT": ACCOUNT}
    one = await cli("as-of", "2026-11-22T11:30", "--contact", "alice", env=env)
    whole = await cli("as-of", "2026-11-22T11:30:00Z", "--campaign", "welcome", env=env)
    later = await cli("as-of", "now", "--contact", "alice", env=env)
    walled = await cli("as-of", "now", "--campaign", "welcome", env={**env, "ENROLLSTREAM_ACCOUNT": OTHER})
    bad = await cli("as-of", "yesterday", "--contact", "alice", env=env)
    neither = await cli("as-of", "now", env=env)

    assert one.code == 0, one.err
    assert "active" in one.out and "2 of 2" in one.out and "timeline index" in one.out
    assert whole.code == 0, whole.err
    assert "rebuild" in whole.out and "pending" in whole.out and "active" in whole.out
    assert later.code == 0 and "stopped (replied)" in later.out
    assert walled.code == 1 and walled.one_error_line and "welcome" in walled.err
    assert bad.code == 1 and bad.one_error_line and "not a time" in bad.err
    assert neither.code == 1 and neither.one_error_line
