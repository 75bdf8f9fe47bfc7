"""The poison-pill suite (issue 12): every class of bad record in one run, through one worker process.

One `enrollstream worker --roles decider,projector` process runs with the default `issued_at` skew
bounds (the suite's settings switch them off). Into its commands topic go, interleaved with valid
Enrolls issued now, one record of every class that once stopped a worker or was trusted too much:
calendar-edge `issued_at`s, date arithmetic that would overflow in `decide`, a key that is not UTF-8,
values PostgreSQL refuses, ids with the key separator, a command carrying its own campaign or MX answer,
an `issued_at` outside the skew of its broker timestamp, a contact whose snapshot would outgrow a record
and a 2 MB gzip-compressed command; into its events topic, events the projector cannot write.

Afterwards: the same process is still running and healthy, every bad record is accounted for as what it
must be (a dead letter with its reason, a result with its code, or a quarantine row), every valid
command was accepted, and the decider's group and the projector have nothing left to read.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from enrollstream.adapters.kafka.records import header
from enrollstream.adapters.kafka.topics import Topics
from enrollstream.chaos import _decider_caught_up, _projector_caught_up
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition
from enrollstream.runtime.campaigns import publish_campaign
from enrollstream.runtime.projector import PROJECTION
from tests.integration.test_decider_runtime import ACCOUNT, campaign, enroll, results_by_id
from tests.integration.test_oversized_records import html_campaign, publish_unversioned
from tests.integration.test_worker_lifecycle import WorkerProcess, get, worker_env
from tests.servers.dns import LocalDnsServer
from tests.support import eventually, read_until

INT32_MAX = 2**31 - 1

# What became of a bad record: ("dead letter", reason or class) or ("result", status, code) or quarantine.
Expected = tuple[str, ...]


def now_enroll(contact_id: str, **extra: Any) -> dict[str, Any]:
    command = enroll(contact_id, **extra)
    command["issued_at"] = datetime.now(UTC).isoformat()
    return command


def definition(**fields: Any) -> dict[str, Any]:
    return {**json.loads(campaign().model_dump_json()), **fields}


def big_campaign(i: int) -> CampaignDefinition:
    return html_campaign(f"news-{i}", 290_000).model_copy(update={"account_id": ACCOUNT})


class Run:
    """The records as published, in order, each with what it must become."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes, Expected | None]] = []  # None: valid, accepted
        self.valid: list[str] = []

    def add(
        self, command: dict[str, Any] | bytes, expected: Expected | None, key: bytes | str | None = None
    ) -> None:
        value = command if isinstance(command, bytes) else json.dumps(command).encode()
        if key is None and isinstance(command, dict):
            key = f"{command['account_id']}/{command['data']['contact_id']}"
        self.records.append((key.encode() if isinstance(key, str) else key, value, expected))

    def good(self) -> None:
        command = now_enroll(f"ok-{len(self.valid)}")
        self.valid.append(command["command_id"])
        self.add(command, None)


def bad_records(run: Run) -> None:
    now = datetime.now(UTC)
    not_valid = ("dead letter", "not a valid command")
    # items 1 and 2: the calendar's edges, arithmetic that would overflow in decide, huge durations
    for issued_at in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "9999-12-31T00:00:00+00:00"):
        run.add({**now_enroll("cal"), "issued_at": issued_at}, not_valid)
        run.good()
    run.add(now_enroll("dur", campaign=definition(expiry_after_delivery="P999999999D")), not_valid)
    run.add(
        now_enroll("dur", campaign=definition(steps=[{"channel": "email", "delay": "P999999999D",
                                                      "content": {"body": "b"}}])),
        not_valid,
    )  # fmt: skip
    run.good()
    # item 3: a key that is not UTF-8
    run.add(now_enroll("key"), ("dead letter", "record key is not UTF-8"), key=b"\xff\xfe")
    run.good()
    # item 4: values PostgreSQL refuses (the decider's side; the projector's side is below)
    nul = now_enroll("nul")
    nul["data"]["contact"]["name"] = "Ada\x00Lovelace"
    run.add(nul, not_valid)
    run.add(now_enroll("int", batch_number=INT32_MAX + 1), not_valid)
    run.add(now_enroll("int", campaign=definition(version=INT32_MAX + 1)), not_valid)
    run.good()
    # item 8: ids with the key separator (both would be the key a/crm/88)
    run.add(now_enroll("88", account_id="a/crm"), not_valid, key="a/crm/88")
    run.add(now_enroll("crm/88", account_id="a"), not_valid, key="a/crm/88")
    run.good()
    # item 9: its own campaign, its own MX answer, an issued_at outside the broker timestamp's skew
    run.add(now_enroll("own", campaign_id="ghost", campaign=definition(campaign_id="ghost")),
            ("result", "rejected", "campaign_not_found"))  # fmt: skip
    forged = now_enroll(
        "mx",
        campaign_id="verified",
        mx={"domain": "nomx.test", "has_mx": True, "checked_at": now.isoformat()},
    )
    forged["data"]["contact"]["email"] = "mx@nomx.test"
    run.add(forged, ("result", "skipped", "mx_invalid"))
    run.good()
    run.add({**now_enroll("old"), "issued_at": (now - timedelta(days=8)).isoformat()},
            ("result", "rejected", "issued_at_out_of_range"))  # fmt: skip
    early_step = {
        "command_id": f"step-due-{uuid.uuid4()}",
        "type": "StepDue.v1",
        "account_id": ACCOUNT,
        "issued_at": (now + timedelta(days=1)).isoformat(),
        "actor": "scheduler",
        "data": {"contact_id": "early", "enrollment_id": "e-1", "step_index": 0, "attempt": 1},
    }
    run.add(early_step, ("result", "rejected", "issued_at_out_of_range"))
    run.good()
    # item 5: one contact in four campaigns of ~290 KB each: the snapshot would outgrow a record
    for i in range(1, 5):
        run.add(now_enroll("full", campaign_id=f"news-{i}"), ("state", "news"))
    run.good()
    # item 6: a 2 MB Stop, gzip-compressed to a few KB: a dead letter by reference
    huge_stop = {
        **now_enroll("huge"),
        "type": "Stop.v1",
        "data": {"contact_id": "huge", "enrollment_id": "enr-1", "note": "x" * 2_000_000},
    }
    run.add(huge_stop, ("dead letter", "exceeds"))
    run.good()


async def publish_all(bootstrap: str, topic: str, run: Run) -> dict[tuple[int, int], Expected | None]:
    """Publish in order from one gzip producer; where each record landed -> what it must become."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type="gzip",
        max_request_size=4 * 2**20,
    )
    await producer.start()
    landed: dict[tuple[int, int], Expected | None] = {}
    try:
        for key, value, expected in run.records:
            meta = await producer.send_and_wait(topic, value, key=key)
            landed[(meta.partition, meta.offset)] = expected
    finally:
        await producer.stop()
    return landed


async def test_every_poison_pill_in_one_run_is_accounted_for_and_the_worker_never_stops(
    settings: Settings, topics: Topics, dns_server: LocalDnsServer
) -> None:
    bootstrap, database_url = settings.kafka_bootstrap_servers, settings.database_url
    assert bootstrap and database_url
    dns_server.add("nomx.test", "A", "192.0.2.1")  # answers, without MX
    await publish_campaign(bootstrap, topics.campaigns, campaign())
    verifying = CampaignDefinition.model_validate(definition(campaign_id="verified", verify_email_mx=True))
    await publish_campaign(bootstrap, topics.campaigns, verifying)
    for i in range(1, 5):
        await publish_unversioned(bootstrap, topics.campaigns, big_campaign(i))  # embedded in snapshots

    defaults = Settings.model_fields
    env = worker_env(
        settings,
        # The real defaults: commands here are issued now, not on the suite's fixed days.
        ENROLLSTREAM_COMMAND_MAX_FUTURE_SKEW_S=str(defaults["command_max_future_skew_s"].default),
        ENROLLSTREAM_COMMAND_MAX_AGE_S=str(defaults["command_max_age_s"].default),
        ENROLLSTREAM_DNS_NAMESERVERS=f"127.0.0.1:{dns_server.port}",
        ENROLLSTREAM_DNS_TIMEOUT_S="0.5",
    )
    assert env["ENROLLSTREAM_COMMAND_MAX_FUTURE_SKEW_S"] == "300.0"
    worker = WorkerProcess(env, "--roles", "decider,projector")
    await worker.start()
    assert worker.process is not None
    pid = worker.process.pid
    try:
        port = await worker.port()

        async def ready() -> bool:
            return (await get(port, "/readyz"))[0] == 200

        await eventually(ready, timeout=30, what="/readyz 200")
        run = Run()
        run.good()
        bad_records(run)
        landed = await publish_all(bootstrap, topics.commands, run)

        # The projector's side of item 4: events it cannot write, straight into the events topic (as an
        # older decider wrote them), next to the events of the valid commands.
        events = await read_until(
            bootstrap,
            topics.events,
            lambda rs: any(json.loads(r.value)["type"] == "ContactEnrolled.v1" for r in rs),
            timeout=20,
        )
        template = next(
            json.loads(r.value) for r in events if json.loads(r.value)["type"] == "ContactEnrolled.v1"
        )
        bad_event = {**template, "event_id": f"evt-{uuid.uuid4()}", "contact_id": "nul-event"}
        bad_event["data"] = {
            **template["data"],
            "contact": {**template["data"]["contact"], "name": "Bad\x00Name"},
        }
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            await producer.send_and_wait(
                topics.events, json.dumps(bad_event).encode(), key=f"{ACCOUNT}/nul-event".encode()
            )
            await producer.send_and_wait(
                topics.events, b"\xff not an event", key=f"{ACCOUNT}/garbage".encode()
            )
        finally:
            await producer.stop()

        # Lag back to 0: the decider's group committed past every command, the projector's checkpoints
        # are at the end of the events and results topics.
        async def drained() -> bool:
            assert worker.process is not None and worker.process.returncode is None, worker.lines[-10:]
            return (
                await _decider_caught_up(bootstrap, topics.commands, settings.group_id)
                and await _projector_caught_up(bootstrap, topics.events, database_url)
                and await _projector_caught_up(bootstrap, topics.command_results, database_url)
            )

        await eventually(drained, timeout=40, what="decider and projector lag back to 0")
        status, body = await get(port, "/healthz")
        assert status == 200, body
        # The process's own counts: each bad record once, nothing retried as if it were transient.
        status, text = await get(port, "/metrics")
        assert status == 200
        metrics = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
        letters_expected = sum(1 for e in landed.values() if e and e[0] == "dead letter")
        assert float(metrics['enrollstream_dead_letters_total{role="decider"}']) == letters_expected
        assert float(metrics[f'enrollstream_quarantined_events_total{{topic="{topics.events}"}}']) == 2
        assert not [k for k, v in metrics.items() if k.startswith("enrollstream_retries_total") and float(v)]

        # Worker restarts 0: the same process, still running.
        assert worker.process.returncode is None and worker.process.pid == pid
        os.kill(pid, 0)
    finally:
        if worker.process.returncode is None:
            worker.process.send_signal(signal.SIGTERM)
    assert await worker.wait(timeout=40) == 0, worker.lines[-10:]

    letters = await read_until(
        bootstrap,
        topics.dead_letters,
        lambda rs: len(rs) >= sum(1 for e in landed.values() if e and e[0] == "dead letter"),
        timeout=10,
    )
    results = results_by_id(
        await read_until(
            bootstrap,
            topics.command_results,
            lambda rs: len(rs) >= sum(1 for e in landed.values() if e is None or e[0] != "dead letter"),
            timeout=10,
        )
    )
    by_position = {
        (
            int(header(r.headers, "original.partition") or -1),
            int(header(r.headers, "original.offset") or -1),
        ): r
        for r in letters
    }
    assert len(by_position) == len(letters), "one dead letter per record"
    commands = {(p, o): value for (p, o), value in zip(landed, (v for _, v, _ in run.records), strict=True)}

    full: list[dict[str, Any]] = []
    for position, expected in landed.items():
        letter = by_position.get(position)
        if expected is not None and expected[0] == "dead letter":
            assert letter is not None, (expected, commands[position][:200])
            why = f"{header(letter.headers, 'error.reason')} {header(letter.headers, 'error.class')}"
            assert expected[1] in why, (why, commands[position][:200])
            continue
        assert letter is None, (header(letter.headers, "error.reason"), commands[position][:200])
        result = results[json.loads(commands[position])["command_id"]]
        if expected is None:
            assert result["status"] == "accepted", result
        elif expected[0] == "result":
            assert (result["status"], result["code"]) == expected[1:], result
        else:  # the four enrolls of one contact: accepted until its snapshot is full, then state_too_large
            full.append(result)
    refused = [r for r in full if r["status"] == "rejected"]
    assert refused and all(r["code"] == "state_too_large" for r in refused), full
    assert full == [r for r in full if r["status"] == "accepted"] + refused
    # The 2 MB command's dead letter keeps it by reference.
    [huge] = [r for r in letters if header(r.headers, "original.truncated") == "true"]
    assert int(header(huge.headers, "original.size") or 0) > 2_000_000
    assert dns_server.query_count("nomx.test") >= 1, "the runtime asked DNS itself"
    assert len(run.valid) == 12 and all(results[c]["status"] == "accepted" for c in run.valid)

    conn = await asyncpg.connect(database_url)
    try:
        quarantined = await conn.fetch(
            "select event_id, type, reason from unprojectable_events where projection = $1", PROJECTION
        )
    finally:
        await conn.close()
    rows = {r["event_id"]: r for r in quarantined}
    assert set(rows) == {bad_event["event_id"], None} and len(quarantined) == 2
    nul_reason = rows[bad_event["event_id"]]["reason"]
    assert any(why in nul_reason for why in ("CharacterNotInRepertoire", "0x00", "ValidationError")), (
        nul_reason
    )
    assert rows[None]["type"] is None and rows[None]["reason"]  # not an event at all
