"""Issue 12, the decider's inputs: exactly each bad record through the real broker to a running worker.

Each test publishes its bad records and then a valid command on the same partition (partition 0, in
order, from one producer) and shows: a dead letter or a coded result for each bad record, the valid
command decided after them (so the partition was not stopped), and the worker still running."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

import enrollstream.runtime.decider as decider_runtime
from enrollstream.adapters.kafka.records import header
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.worker import Worker
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll, results_by_id
from tests.servers.dns import LocalDnsServer
from tests.support import read_until, running_worker

Record = tuple[bytes | None, bytes]  # (key, value), published as is


def command_record(command: dict[str, Any], key: str | None = None) -> Record:
    if key is None:
        key = f"{command['account_id']}/{command['data']['contact_id']}"
    return key.encode(), json.dumps(command).encode()


async def publish_in_order(
    settings: Settings, topics: Topics, records: Iterable[Record], partition: int | None = 0
) -> None:
    """Every record to partition 0, in this order: the bad ones stand right before the valid one.
    (partition None: where its key hashes to, as the scheduler publishes.)"""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topics.commands, value, key=key, partition=partition)
    finally:
        await producer.stop()


async def dead_letters(settings: Settings, topics: Topics, count: int) -> list[Any]:
    assert settings.kafka_bootstrap_servers
    return await read_until(
        settings.kafka_bootstrap_servers, topics.dead_letters, lambda rs: len(rs) >= count, timeout=15
    )


async def results_for(settings: Settings, topics: Topics, *commands: dict[str, Any]) -> dict[str, Any]:
    assert settings.kafka_bootstrap_servers
    wanted = {c["command_id"] for c in commands}
    records = await read_until(
        settings.kafka_bootstrap_servers,
        topics.command_results,
        lambda rs: wanted <= set(results_by_id(rs)),
        timeout=20,
    )
    return results_by_id(records)


def still_running(worker: Worker) -> None:
    assert worker.decider is not None and worker.decider.failure is None
    assert worker.decider.owners, "the decider still owns its partitions"


def original_command_id(letter: Any) -> str:
    return str(json.loads(letter.value)["command_id"])


def with_issued_at(command: dict[str, Any], issued_at: str | datetime) -> dict[str, Any]:
    command["issued_at"] = issued_at if isinstance(issued_at, str) else issued_at.isoformat()
    return command


def definition(**fields: Any) -> dict[str, Any]:
    return {**json.loads(campaign().model_dump_json()), **fields}


# --- items 1 and 2: times at the edge of the calendar, date arithmetic that overflows ----------------


async def test_times_at_the_calendar_edge_or_overflowing_in_decide_are_dead_letters(
    settings: Settings, topics: Topics
) -> None:
    assert settings.kafka_bootstrap_servers
    await publish_campaign(settings.kafka_bootstrap_servers, topics.campaigns, campaign())  # delay PT1H
    bad = [
        with_issued_at(enroll("ada"), "0001-01-01T00:00:00+01:00"),  # OverflowError while parsing
        with_issued_at(enroll("ada"), "9999-12-31T23:59:59-01:00"),  # OverflowError while parsing
        with_issued_at(enroll("ada"), "9999-12-31T00:00:00+00:00"),  # + the step's hour overflows in decide
        enroll("ada", campaign=definition(expiry_after_delivery="P999999999D")),  # a huge duration
        enroll("ada", campaign=definition(steps=[{"channel": "email", "delay": "P999999999D",
                                                  "content": {"body": "b"}}])),
    ]  # fmt: skip
    good = enroll("ada")
    async with running_worker(settings, roles=("decider",)) as worker:
        await publish_in_order(settings, topics, [*map(command_record, bad), command_record(good)])
        results = await results_for(settings, topics, good)
        letters = await dead_letters(settings, topics, len(bad))
        still_running(worker)
    assert results[good["command_id"]]["status"] == "accepted"
    assert [original_command_id(r) for r in letters] == [c["command_id"] for c in bad]
    assert {header(r.headers, "error.reason") for r in letters} == {"not a valid command"}
    assert "time out of range" in (header(letters[0].headers, "error.message") or "")
    assert not {c["command_id"] for c in bad} & set(results), "no bad record was decided"


async def test_any_failure_while_deciding_one_record_is_its_dead_letter(
    settings: Settings, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last line of defence: whatever the bounds miss, a record that makes deciding raise is its
    own dead letter, with nothing of it half-sent, and the next record is decided."""
    assert settings.kafka_bootstrap_servers
    await publish_campaign(settings.kafka_bootstrap_servers, topics.campaigns, campaign())
    cursed = enroll("ada")
    real_decide = decider_runtime.decide_and_fold

    def decide(command: Any, state: Any) -> Any:
        if command.command_id == cursed["command_id"]:
            raise ArithmeticError("a defect no bound caught")
        return real_decide(command, state)

    monkeypatch.setattr(decider_runtime, "decide_and_fold", decide)
    good = enroll("ada")
    async with running_worker(settings, roles=("decider",)) as worker:
        await publish_in_order(settings, topics, [command_record(cursed), command_record(good)])
        results = await results_for(settings, topics, good)
        letters = await dead_letters(settings, topics, 1)
        still_running(worker)
    assert results[good["command_id"]]["status"] == "accepted"
    assert cursed["command_id"] not in results
    assert original_command_id(letters[0]) == cursed["command_id"]
    assert header(letters[0].headers, "error.reason") == "could not be decided"
    assert header(letters[0].headers, "error.class") == "ArithmeticError"


# --- item 3: a key that is not UTF-8 ------------------------------------------------------------------


async def test_a_record_key_that_is_not_utf8_is_a_dead_letter(settings: Settings, topics: Topics) -> None:
    assert settings.kafka_bootstrap_servers
    await publish_campaign(settings.kafka_bootstrap_servers, topics.campaigns, campaign())
    bad = enroll("ada")
    good = enroll("ada")
    async with running_worker(settings, roles=("decider",)) as worker:
        await publish_in_order(
            settings, topics, [(b"\xff\xfe", command_record(bad)[1]), command_record(good)]
        )
        results = await results_for(settings, topics, good)
        letters = await dead_letters(settings, topics, 1)
        still_running(worker)
    assert results[good["command_id"]]["status"] == "accepted"
    assert letters[0].key == b"\xff\xfe"  # the original bytes, kept
    assert header(letters[0].headers, "error.reason") == "record key is not UTF-8"
    assert header(letters[0].headers, "error.class") == "UnicodeDecodeError"


# --- item 4 (the decider's side): values PostgreSQL refuses never become events -----------------------


async def test_values_postgresql_cannot_store_are_refused_before_they_become_events(
    settings: Settings, topics: Topics
) -> None:
    assert settings.kafka_bootstrap_servers
    await publish_campaign(settings.kafka_bootstrap_servers, topics.campaigns, campaign())
    nul_name = enroll("ada")
    nul_name["data"]["contact"]["name"] = "Ada\x00Lovelace"
    bad = [
        nul_name,
        enroll("ada", batch_number=2**31),
        enroll("ada", campaign=definition(version=2**31)),
    ]
    good = enroll("ada")
    # The projector too: on main it was the one that died on these, taking the worker with it.
    async with running_worker(settings, roles=("decider", "projector")) as worker:
        await publish_in_order(settings, topics, [*map(command_record, bad), command_record(good)])
        results = await results_for(settings, topics, good)
        letters = await dead_letters(settings, topics, len(bad))
        still_running(worker)
    assert results[good["command_id"]]["status"] == "accepted"
    assert [original_command_id(r) for r in letters] == [c["command_id"] for c in bad]
    assert {header(r.headers, "error.class") for r in letters} == {"ValidationError"}


# --- item 8: the aggregate key is unambiguous -----------------------------------------------------------


async def test_ids_with_the_key_separator_are_dead_letters_not_one_shared_aggregate(
    settings: Settings, topics: Topics
) -> None:
    assert settings.kafka_bootstrap_servers
    await publish_campaign(settings.kafka_bootstrap_servers, topics.campaigns, campaign())
    # Both name the key "a/crm/88": contact 88 of account a/crm, and contact crm/88 of account a.
    first = enroll("88", account_id="a/crm")
    second = enroll("crm/88", account_id="a")
    good = enroll("ada")
    async with running_worker(settings, roles=("decider",)) as worker:
        await publish_in_order(
            settings,
            topics,
            [command_record(first, "a/crm/88"), command_record(second, "a/crm/88"), command_record(good)],
        )
        results = await results_for(settings, topics, good)
        letters = await dead_letters(settings, topics, 2)
        still_running(worker)
    assert results[good["command_id"]]["status"] == "accepted"
    assert [original_command_id(r) for r in letters] == [first["command_id"], second["command_id"]]
    assert all("pattern" in (header(r.headers, "error.message") or "") for r in letters)


# --- item 9: lookups are the runtime's; issued_at is checked against the broker timestamp --------------


async def test_a_command_cannot_bring_its_own_campaign_definition(settings: Settings, topics: Topics) -> None:
    assert settings.kafka_bootstrap_servers
    archived = CampaignDefinition.model_validate({**definition(campaign_id="old", status="archived")})
    await publish_campaign(settings.kafka_bootstrap_servers, topics.campaigns, archived)
    # Its own definition of a campaign the catalog does not know, and an active copy of an archived one.
    unknown = enroll("ada", campaign_id="ghost", campaign=definition(campaign_id="ghost"))
    revived = enroll("bob", campaign_id="old", campaign=definition(campaign_id="old", status="active"))
    async with running_worker(settings, roles=("decider",)) as worker:
        await publish_in_order(settings, topics, [command_record(unknown), command_record(revived)])
        results = await results_for(settings, topics, unknown, revived)
        still_running(worker)
    assert (results[unknown["command_id"]]["status"], results[unknown["command_id"]]["code"]) == (
        "rejected",
        "campaign_not_found",
    )
    assert (results[revived["command_id"]]["status"], results[revived["command_id"]]["code"]) == (
        "rejected",
        "campaign_archived",
    )


async def test_a_command_cannot_bring_its_own_mx_answer(
    settings: Settings, topics: Topics, dns_server: LocalDnsServer
) -> None:
    dns_server.add("nomx.test", "A", "192.0.2.1")  # answers, without MX
    settings = settings.model_copy(
        update={"dns_nameservers": f"127.0.0.1:{dns_server.port}", "dns_timeout_s": 0.5}
    )
    assert settings.kafka_bootstrap_servers
    verifying = CampaignDefinition.model_validate(definition(campaign_id="verified", verify_email_mx=True))
    await publish_campaign(settings.kafka_bootstrap_servers, topics.campaigns, verifying)
    forged_mx = {"domain": "nomx.test", "has_mx": True, "checked_at": "2026-11-22T09:00:00Z"}
    forged = enroll("cyd", campaign_id="verified", mx=forged_mx)
    forged["data"]["contact"]["email"] = "cyd@nomx.test"
    async with running_worker(settings, roles=("decider",)) as worker:
        await publish_in_order(settings, topics, [command_record(forged)])
        results = await results_for(settings, topics, forged)
        still_running(worker)
    assert (results[forged["command_id"]]["status"], results[forged["command_id"]]["code"]) == (
        "skipped",
        "mx_invalid",
    )
    assert dns_server.query_count("nomx.test") >= 1, "the runtime asked DNS itself"


def with_the_default_skew(settings: Settings) -> Settings:
    """The suite's settings switch the skew check off (fixed test days); these run with the defaults."""
    defaults = Settings.model_fields
    return settings.model_copy(
        update={
            "command_max_future_skew_s": defaults["command_max_future_skew_s"].default,
            "command_max_age_s": defaults["command_max_age_s"].default,
        }
    )


async def test_issued_at_outside_the_skew_of_the_broker_timestamp_is_rejected_with_a_code(
    settings: Settings, topics: Topics
) -> None:
    settings = with_the_default_skew(settings)
    assert settings.command_max_future_skew_s == 300 and settings.command_max_age_s == 7 * 24 * 3600
    assert settings.kafka_bootstrap_servers
    await publish_campaign(settings.kafka_bootstrap_servers, topics.campaigns, campaign())
    now = datetime.now(UTC)
    stale = with_issued_at(enroll("ada"), now - timedelta(days=8))  # "an Enroll from long ago"
    early_step = {  # "a StepDue from the future dispatches a day early"
        "command_id": f"step-due-{uuid.uuid4()}",
        "type": "StepDue.v1",
        "account_id": ACCOUNT,
        "issued_at": (now + timedelta(days=1)).isoformat(),
        "actor": "scheduler",
        "data": {"contact_id": "ada", "enrollment_id": "e-1", "step_index": 0, "attempt": 1},
    }
    slightly_ahead = with_issued_at(enroll("bob"), now + timedelta(minutes=2))  # within 5 minutes
    good = with_issued_at(enroll("ada"), now)
    async with running_worker(settings, roles=("decider",)) as worker:
        await publish_in_order(
            settings,
            topics,
            [command_record(c) for c in (stale, early_step, slightly_ahead, good)],
        )
        results = await results_for(settings, topics, stale, early_step, slightly_ahead, good)
        still_running(worker)
    for refused in (stale, early_step):
        result = results[refused["command_id"]]
        assert (result["status"], result["code"]) == ("rejected", "issued_at_out_of_range"), result
        assert set(result["details"]) == {"issued_at", "broker_timestamp"}
    assert results[slightly_ahead["command_id"]]["status"] == "accepted"
    assert results[good["command_id"]]["status"] == "accepted"


async def test_the_schedulers_own_step_due_passes_the_default_skew_check(
    settings: Settings, topics: Topics
) -> None:
    """The scheduler stamps issued_at with its clock when it publishes, so the broker timestamp is the
    same moment: with the default bounds its StepDue is decided, not rejected."""
    settings = with_the_default_skew(settings)
    assert settings.kafka_bootstrap_servers
    quick = CampaignDefinition.model_validate(
        definition(steps=[{"channel": "email", "delay": "PT1S", "content": {"subject": "s", "body": "b"}}])
    )
    await publish_campaign(settings.kafka_bootstrap_servers, topics.campaigns, quick)
    first = with_issued_at(enroll("ada"), datetime.now(UTC))
    async with running_worker(settings, roles=("decider", "projector", "scheduler")):
        await publish_in_order(settings, topics, [command_record(first)], partition=None)

        def step_due_decided(records: list[Any]) -> bool:
            return any(json.loads(r.value)["command_type"] == "StepDue.v1" for r in records)

        records = await read_until(
            settings.kafka_bootstrap_servers, topics.command_results, step_due_decided, timeout=20
        )
    step_due = next(
        json.loads(r.value) for r in records if json.loads(r.value)["command_type"] == "StepDue.v1"
    )
    assert step_due["status"] == "accepted", (step_due["code"], step_due["message"])
