"""`enrollstream backtest` (issue 16, docs/time-travel.md "Backtest"): a changed definition re-run against a
campaign's recorded enrollments, read from the real commands topic after a real decider decided them,
compared with the current definition; checked against answers computed by hand, and shown to publish and
write nothing."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from enrollstream.adapters.kafka.topics import Topics, partition_numbers
from enrollstream.config import Settings
from enrollstream.domain import CampaignDefinition, ids
from enrollstream.runtime.backtest import BacktestInputError, backtest, report
from enrollstream.runtime.campaigns import publish_campaign
from tests.integration.test_decider_runtime import enroll, results_by_id, send
from tests.support import read_until, running_worker

ACCOUNT, OTHER = "acct-a", "acct-b"
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # a Monday, 08:00 UTC
SINCE, UNTIL = T0 - timedelta(hours=1), T0 + timedelta(days=1)
H = timedelta(hours=1)


def drip(account: str = ACCOUNT, **changes: Any) -> dict[str, Any]:
    """The recorded campaign: three emails, two hours apart; a reply does not stop it."""
    steps = [{"channel": "email", "delay": delay, "content": {"subject": "Hi", "body": f"step {i + 1}"}}
             for i, delay in enumerate(("PT0S", "PT2H", "PT2H"))]  # fmt: skip
    return {"campaign_id": "drip", "account_id": account, "version": 1, "reply_action": "continue",
            "steps": steps, **changes}  # fmt: skip


def command(kind: str, contact: str, at: datetime, account: str = ACCOUNT, **data: Any) -> dict[str, Any]:
    return {
        "command_id": f"cmd-{uuid.uuid4()}",
        "type": f"{kind}.v1",
        "account_id": account,
        "issued_at": at.isoformat(),
        "actor": "test",
        "data": {"contact_id": contact, **data},
    }


def at(when: datetime, account: str = ACCOUNT, **data: Any) -> dict[str, Any]:
    return {**enroll(account_id=account, campaign_id="drip", **data), "issued_at": when.isoformat()}


def eid(contact: str, account: str = ACCOUNT) -> str:
    return ids.enrollment_id(account, contact, "drip", 1)


async def _record_a_run(settings: Settings, topics: Topics) -> None:
    """The recorded run, decided by a real decider (and projected): ann and ben enrolled at 08:00, cay at
    08:30; the scheduler's StepDue for ann's step 1 and its report; ben replies at 11:30; cay's first email
    bounces. Around them: another account's ann in its own `drip`, dan in another campaign, and a reply
    for eve, whose Enroll is no longer held."""
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, CampaignDefinition.model_validate(drip()))
    await publish_campaign(bootstrap, topics.campaigns, CampaignDefinition.model_validate(drip(OTHER)))
    step_1: dict[str, Any] = {"step_index": 0, "attempt": 1}
    ann, cay = eid("ann"), eid("cay")
    recorded = [
        (ACCOUNT, "ann", {**enroll("ann", "drip"), "issued_at": T0.isoformat()}),
        (ACCOUNT, "ben", {**enroll("ben", "drip"), "issued_at": T0.isoformat()}),
        (ACCOUNT, "ann", command("StepDue", "ann", T0, enrollment_id=ann, **step_1)),
        (ACCOUNT, "ann", command("DeliveryReported", "ann", T0, enrollment_id=ann, **step_1, outcome="sent")),
        (ACCOUNT, "cay", {**enroll("cay", "drip"), "issued_at": (T0 + H / 2).isoformat()}),
        (ACCOUNT, "cay", command("DeliveryReported", "cay", T0 + H / 2, enrollment_id=cay, **step_1,
                                 outcome="bounced", detail="550 5.1.1 no such user")),
        (ACCOUNT, "ben", command("ReplyDetected", "ben", T0 + 3.5 * H, enrollment_id=eid("ben"))),
        (OTHER, "ann", {**enroll("ann", "drip", account_id=OTHER), "issued_at": T0.isoformat()}),
        (ACCOUNT, "dan", {**enroll("dan", "other"), "issued_at": T0.isoformat()}),
        (ACCOUNT, "eve", command("ReplyDetected", "eve", T0 + H, enrollment_id=eid("eve"))),
    ]  # fmt: skip
    async with running_worker(settings):
        for account, contact, cmd in recorded:
            await send(settings, topics, cmd, f"{account}/{contact}")
        wanted = {cmd["command_id"] for _, _, cmd in recorded}
        await read_until(bootstrap, topics.command_results, lambda rs: wanted <= set(results_by_id(rs)))


async def _end_offsets(bootstrap: str, prefix: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = sorted(n for n in await admin.list_topics() if n.startswith(prefix))
    finally:
        await admin.close()
    partitions = [TopicPartition(n, p) for n in names for p in await partition_numbers(bootstrap, n)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {f"{tp.topic}/{tp.partition}": offset for tp, offset in ends.items()}


async def _row_counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            "SELECT schemaname, tablename FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        return {
            f"{t['schemaname']}.{t['tablename']}": await conn.fetchval(
                f'SELECT count(*) FROM "{t["schemaname"]}"."{t["tablename"]}"'
            )
            for t in tables
        }
    finally:
        await conn.close()


def lines(found: dict[str, Any], contact: str, which: str) -> list[tuple[datetime, str]]:
    (sample,) = [s for s in found["sample"] if s["contact_id"] == contact]
    return [(datetime.fromisoformat(h["at"]), h["what"]) for h in sample[which]]


def counts(found: dict[str, Any], which: str) -> dict[str, int]:
    return {metric: row[which] for metric, row in found["counts"].items() if row[which]}


# The current definition's simulation, by hand: every email two hours after the previous delivery.
CURRENT_ANN = [(T0, "enrolled"), (T0, "sent step 1"), (T0 + 2 * H, "sent step 2"),
               (T0 + 4 * H, "sent step 3"), (T0 + 4 * H, "completed")]  # fmt: skip
CURRENT_BEN = [(T0, "enrolled"), (T0, "sent step 1"), (T0 + 2 * H, "sent step 2"),
               (T0 + 3.5 * H, "replied"), (T0 + 4 * H, "sent step 3"), (T0 + 4 * H, "completed")]  # fmt: skip
CURRENT_COUNTS = {
    "enrolled": 3,
    "sent": 7,
    "delivered": 6,
    "bounced": 1,
    "replied": 1,
    "completed": 2,
    "failed": 1,
}


async def test_a_backtest_of_a_reply_stop_rule_a_shorter_delay_and_a_send_window_against_a_recorded_run(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap and settings.database_url
    await _record_a_run(settings, topics)
    offsets_before = await _end_offsets(bootstrap, topics.prefix)
    rows_before = await _row_counts(settings.database_url)
    assert len(offsets_before) > 10 and sum(offsets_before.values()) > 0
    assert rows_before["public.enrollments"] > 0 and rows_before["public.enrollment_timeline"] > 0

    async def run(**changes: Any) -> dict[str, Any]:
        changed = CampaignDefinition.model_validate(drip(version=2, **changes))
        return report(await backtest(bootstrap, topics, ACCOUNT, "drip", changed, SINCE, UNTIL), sample=10)

    reply_stops = await run(reply_action="stop")
    hourly = await run(
        steps=[{**s, "delay": d} for s, d in zip(drip()["steps"], ("PT0S", "PT1H", "PT1H"), strict=True)]
    )
    eleven_to_noon = {
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        "start_hour": 11,
        "end_hour": 12,
    }
    windowed_steps = [dict(s) for s in drip()["steps"]]
    windowed_steps[1]["window"] = eleven_to_noon
    windowed = await run(steps=windowed_steps)

    for found in (reply_stops, hourly, windowed):
        assert found["contacts"] == 3  # ann, ben, cay: not dan (another campaign), eve, nor account B's ann
        assert counts(found, "current") == CURRENT_COUNTS
        assert found["out_of_reach"] == ["eve"]
    # A reply stops ben after his second email: one email fewer, a stop instead of a completion.
    assert reply_stops["differing_contacts"] == 1
    assert counts(reply_stops, "changed") == {
        **CURRENT_COUNTS,
        "sent": 6,
        "delivered": 5,
        "completed": 1,
        "stopped": 1,
    }
    assert lines(reply_stops, "ben", "current") == CURRENT_BEN
    assert lines(reply_stops, "ben", "changed") == [
        (T0, "enrolled"), (T0, "sent step 1"), (T0 + 2 * H, "sent step 2"), (T0 + 3.5 * H, "replied"),
        (T0 + 3.5 * H, "stopped: replied"),
    ]  # fmt: skip
    # An hour between emails: the same emails, sooner; ben's reply now comes after he completed. The
    # recorded StepDue for ann (old timing) is not replayed; cay's recorded bounce is reused in both.
    assert hourly["differing_contacts"] == 2 and counts(hourly, "changed") == CURRENT_COUNTS
    assert lines(hourly, "ann", "current") == CURRENT_ANN
    assert lines(hourly, "ann", "changed") == [
        (T0, "enrolled"), (T0, "sent step 1"), (T0 + H, "sent step 2"), (T0 + 2 * H, "sent step 3"),
        (T0 + 2 * H, "completed"),
    ]  # fmt: skip
    assert lines(hourly, "ben", "changed")[-2:] == [(T0 + 2 * H, "completed"), (T0 + 3.5 * H, "replied")]
    # Step 2 only between 11:00 and 12:00: due at 10:00, it waits for 11:00, and step 3 follows at 13:00.
    assert windowed["differing_contacts"] == 2 and counts(windowed, "changed") == CURRENT_COUNTS
    assert lines(windowed, "ben", "current") == CURRENT_BEN
    assert lines(windowed, "ben", "changed") == [
        (T0, "enrolled"), (T0, "sent step 1"), (T0 + 3 * H, "sent step 2"), (T0 + 3.5 * H, "replied"),
        (T0 + 5 * H, "sent step 3"), (T0 + 5 * H, "completed"),
    ]  # fmt: skip
    assert [s["contact_id"] for s in windowed["sample"]] == ["ann", "ben"]  # cay bounced in both

    # Account B sees its own ann only, whatever ids it names.
    other = await backtest(bootstrap, topics, OTHER, "drip", CampaignDefinition.model_validate(drip(OTHER)),
                           SINCE, UNTIL)  # fmt: skip
    assert sorted(other.comparison.baseline) == ["ann"] and other.out_of_reach == []

    # It read; it published nothing and wrote nothing.
    assert await _end_offsets(bootstrap, topics.prefix) == offsets_before
    assert await _row_counts(settings.database_url) == rows_before


async def test_a_backtest_refuses_what_is_out_of_its_bounds(settings: Settings, topics: Topics) -> None:
    bootstrap = settings.kafka_bootstrap_servers
    assert bootstrap
    await publish_campaign(bootstrap, topics.campaigns, CampaignDefinition.model_validate(drip()))
    changed = CampaignDefinition.model_validate(drip(version=2))
    other_accounts = CampaignDefinition.model_validate(drip(OTHER))

    async def refused(*args: Any, **kw: Any) -> str:
        with pytest.raises(BacktestInputError) as caught:
            await backtest(bootstrap, topics, *args, **kw)
        return str(caught.value)

    assert "more than a backtest covers" in await refused(
        ACCOUNT, "drip", changed, T0 - timedelta(days=40), T0
    )
    assert "after --to" in await refused(ACCOUNT, "drip", changed, T0, T0 - H)
    assert "account" in await refused("a/b", "drip", changed, SINCE, UNTIL)
    assert "time" in await refused(ACCOUNT, "drip", changed, datetime(1999, 1, 1, tzinfo=UTC), T0)
    assert "not 'drip' of 'acct-a'" in await refused(ACCOUNT, "drip", other_accounts, SINCE, UNTIL)
    assert "unknown campaign" in await refused(OTHER, "drip", other_accounts, SINCE, UNTIL)
    assert "max-contacts" in await refused(ACCOUNT, "drip", changed, SINCE, UNTIL, max_contacts=0)
    for contact in ("ann", "ben"):  # recorded inputs: the backtest reads them whether decided or not
        await send(
            settings, topics, {**enroll(contact, "drip"), "issued_at": T0.isoformat()}, f"{ACCOUNT}/{contact}"
        )
    assert "narrow --from/--to" in await refused(ACCOUNT, "drip", changed, SINCE, UNTIL, max_contacts=1)


async def test_the_backtest_command_prints_both_runs_and_refuses_a_file_too_large(
    settings: Settings, topics: Topics, tmp_path: Path
) -> None:
    from tests.integration.test_cli_operations import cli, cli_env

    await _record_a_run(settings, topics)
    changed = tmp_path / "drip.yaml"
    changed.write_text(yaml.safe_dump(drip(version=2, reply_action="stop")))
    huge = tmp_path / "huge.yaml"
    huge.write_text(yaml.safe_dump(drip(version=2, name="x")) + "#" * 300_000)
    env = {**cli_env(settings), "ENROLLSTREAM_ACCOUNT": ACCOUNT}
    window = ("--from", SINCE.isoformat(), "--to", UNTIL.isoformat())
    table = await cli("backtest", "--campaign", "drip", "--definition", str(changed), *window, env=env)
    as_json = await cli(
        "backtest", "--campaign", "drip", "--definition", str(changed), *window, "--json", env=env
    )
    too_large = await cli("backtest", "--campaign", "drip", "--definition", str(huge), *window, env=env)

    assert table.code == 0, table.err
    assert "1 of 3 contacts would go differently" in table.out and "contact ben" in table.out
    assert "stopped: replied" in table.out and "nothing was published" in table.out
    assert as_json.code == 0, as_json.err
    assert json.loads(as_json.out)["counts"]["stopped"] == {"current": 0, "changed": 1, "difference": 1}
    assert (
        too_large.code == 1
        and too_large.one_error_line
        and "more than a campaign definition" in too_large.err
    )
