"""`enrollstream backtest`: a changed campaign definition run against the recorded inputs of the
campaign's enrollments, beside the current one, through the same simulation (`domain.backtest`;
docs/time-travel.md "Backtest").

It only reads: the commands topic (from its log start to its end now, committed records) and the
campaigns topic (the current definition). It publishes nothing, writes no table and sends nothing.

Inputs come from the commands topic, not from the events: the events keep only what the OLD definition
made of an input, and the inputs that matter most to a changed definition are exactly the ones it ignored.
A reply that came after the old sequence completed, or a Stop for an enrollment that had already ended,
left no event (an ignored command records nothing), yet under a longer or slower sequence it stops one
that is still running. The price is the commands topic's retention (7 days): an enrollment whose Enroll
is no longer held cannot be re-run and is reported out of reach, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from enrollstream.adapters.kafka.reading import batches_to_end
from enrollstream.adapters.kafka.topics import Topics, partition_numbers
from enrollstream.domain import ids, parse_command
from enrollstream.domain.backtest import (
    EXTERNAL_INPUTS,
    METRICS,
    Comparison,
    ContactRun,
    compare,
    recorded_outcomes,
)
from enrollstream.domain.bounds import EARLIEST, KEY_SEPARATOR
from enrollstream.domain.campaign import CampaignDefinition
from enrollstream.domain.commands import ContactCommand, DeliveryReported, Enroll
from enrollstream.runtime.as_of import AsOfInputError, bounded_id, bounded_time
from enrollstream.runtime.campaigns import CampaignCatalog

MAX_DEFINITION_BYTES = 256 * 1024  # a definition file; real ones are a few KiB
MAX_RANGE = timedelta(days=31)  # --from..--to; the commands topic holds 7 days anyway
DEFAULT_MAX_CONTACTS = 10_000
MAX_CONTACTS = 100_000  # the largest --max-contacts: both runs of every contact are held in memory
MAX_RECORDS_KEPT = 2_000_000  # the account's commands kept while reading, whatever the contacts' cap
SEQUENCES_CHECKED = 16  # re-enrollments looked for when naming an enrollment's contact out of reach


class BacktestInputError(ValueError):
    """A bad file, id, time range or cap, said in one line."""


@dataclass
class Backtest:
    account_id: str
    campaign_id: str
    since: datetime
    until: datetime
    baseline: CampaignDefinition  # the campaign's current definition
    changed: CampaignDefinition
    comparison: Comparison
    records_read: int  # command records read (every account's)
    log_start: datetime | None  # the account's oldest command still held (its issued_at)
    out_of_reach: list[str] = field(default_factory=list)  # inputs for the campaign, its Enroll not held
    notes: list[str] = field(default_factory=list)


def check_definition_file(path: Path) -> None:
    """A definition file is read whole: bounded before it is."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BacktestInputError(f"{path}: {exc.strerror or exc}") from None
    if size > MAX_DEFINITION_BYTES:
        raise BacktestInputError(
            f"{path}: {size} bytes, more than a campaign definition may have ({MAX_DEFINITION_BYTES})"
        )


def bounded_range(since: datetime | None, until: datetime) -> tuple[datetime, datetime]:
    """--from..--to within the bounds of every time, at most MAX_RANGE; no --from: MAX_RANGE before --to
    (more than the commands topic holds)."""
    until = bounded_time(until)
    since = bounded_time(since) if since is not None else max(until - MAX_RANGE, EARLIEST)
    if since > until:
        raise BacktestInputError(f"--from {since.isoformat()} is after --to {until.isoformat()}")
    if until - since > MAX_RANGE:
        raise BacktestInputError(
            f"--from..--to spans {until - since}, more than a backtest covers ({MAX_RANGE.days} days)"
        )
    return since, until


async def backtest(
    bootstrap: str,
    topics: Topics,
    account_id: str,
    campaign_id: str,
    changed: CampaignDefinition,
    since: datetime | None,
    until: datetime,
    max_contacts: int = DEFAULT_MAX_CONTACTS,
) -> Backtest:
    """Re-run the account's recorded inputs of every contact enrolled into the campaign within
    [since, until] under its current definition and under `changed`, up to `until`."""
    try:
        account_id = bounded_id("account", account_id)
        campaign_id = bounded_id("campaign", campaign_id)
        since, until = bounded_range(since, until)
    except AsOfInputError as exc:  # the same bounds as as-of's, said as this command's refusal
        raise BacktestInputError(str(exc)) from None
    if not 1 <= max_contacts <= MAX_CONTACTS:
        raise BacktestInputError(f"--max-contacts must be within 1..{MAX_CONTACTS}")
    if (changed.account_id, changed.campaign_id) != (account_id, campaign_id):
        raise BacktestInputError(
            f"the definition is campaign {changed.campaign_id!r} of account {changed.account_id!r}, "
            f"not {campaign_id!r} of {account_id!r}"
        )
    catalog = CampaignCatalog(bootstrap, topics.campaigns)
    await catalog.start()
    try:
        baseline = catalog.get(account_id, campaign_id)
    finally:
        await catalog.stop()
    if baseline is None:
        raise BacktestInputError(f"unknown campaign {campaign_id!r} for account {account_id!r}")

    recorded = await _read_account(bootstrap, topics.commands, account_id)
    enrolled = sorted(
        {
            c.contact_id
            for c in recorded.commands
            if isinstance(c, Enroll) and c.data.campaign_id == campaign_id and since <= c.issued_at <= until
        }
    )
    if len(enrolled) > max_contacts:
        raise BacktestInputError(
            f"{len(enrolled)} contacts were enrolled into {campaign_id!r} between {since.isoformat()} and "
            f"{until.isoformat()}: more than --max-contacts {max_contacts} (at most {MAX_CONTACTS}); "
            "narrow --from/--to or raise --max-contacts"
        )
    in_scope = set(enrolled)
    inputs: dict[str, list[ContactCommand]] = {c: [] for c in enrolled}
    reports: list[DeliveryReported] = []
    for command in recorded.commands:
        contact = command.contact_id
        if contact not in in_scope:
            continue
        if isinstance(command, DeliveryReported):
            reports.append(command)
        elif isinstance(command, Enroll) and not since <= command.issued_at <= until:
            continue  # an enrollment outside the range is not this backtest's
        elif isinstance(command, EXTERNAL_INPUTS):
            inputs[contact].append(command)
    comparison = compare(account_id, baseline, changed, inputs, recorded_outcomes(reports), until)
    notes = list(recorded.notes)
    truncated = [c for c, r in comparison.changed.items() if r.truncated] + [
        c for c, r in comparison.baseline.items() if r.truncated
    ]
    if truncated:
        notes.append(
            f"{len(set(truncated))} contacts stopped at the decisions' bound: {sorted(set(truncated))[:5]}"
        )
    return Backtest(
        account_id=account_id,
        campaign_id=campaign_id,
        since=since,
        until=until,
        baseline=baseline,
        changed=changed,
        comparison=comparison,
        records_read=recorded.records_read,
        log_start=recorded.log_start,
        out_of_reach=_out_of_reach(recorded.commands, account_id, campaign_id, in_scope, since, until),
        notes=notes,
    )


@dataclass
class _Recorded:
    commands: list[ContactCommand] = field(default_factory=list)
    records_read: int = 0
    log_start: datetime | None = None
    notes: list[str] = field(default_factory=list)


async def _read_account(bootstrap: str, topic: str, account_id: str) -> _Recorded:
    """The account's decodable contact commands on the commands topic, every partition, from its log start
    to its end now (committed records only: an aborted transaction's fan-out is not an input)."""
    numbers = await partition_numbers(bootstrap, topic)
    if not numbers:
        raise BacktestInputError(f"no topic {topic!r}")
    partitions = [TopicPartition(topic, p) for p in numbers]
    prefix = f"{account_id}{KEY_SEPARATOR}".encode()
    found = _Recorded()
    undecodable = 0
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        async for batch in batches_to_end(consumer, partitions):
            for records in batch.values():
                for record in records:
                    found.records_read += 1
                    # The key names the account (`account/contact`); the command's own account must too.
                    if record.key is None or not record.key.startswith(prefix) or record.value is None:
                        continue
                    try:
                        command = parse_command(record.value)
                    except (ValidationError, ValueError, json.JSONDecodeError):
                        undecodable += 1  # a dead letter then, and not an input now
                        continue
                    if command.account_id != account_id or not command.contact_id:
                        continue  # BulkEnroll: its children are on the topic as Enrolls
                    if len(found.commands) >= MAX_RECORDS_KEPT:
                        raise BacktestInputError(
                            f"account {account_id!r} has more than {MAX_RECORDS_KEPT} commands held: "
                            "too many for one backtest"
                        )
                    found.commands.append(command)  # type: ignore[arg-type]
                    if found.log_start is None or command.issued_at < found.log_start:
                        found.log_start = command.issued_at
    finally:
        await consumer.stop()
    if undecodable:
        found.notes.append(f"{undecodable} of the account's records could not be read as commands (left out)")
    return found


def _out_of_reach(
    commands: list[ContactCommand],
    account_id: str,
    campaign_id: str,
    in_scope: set[str],
    since: datetime,
    until: datetime,
) -> list[str]:
    """Contacts with recorded inputs for an enrollment of this campaign within the range whose Enroll is not
    held (before the commands' log start or before --from): their history cannot be re-run."""
    missing: set[str] = set()
    ids_of: dict[str, set[str]] = {}
    for command in commands:
        contact = command.contact_id
        if contact in in_scope or contact in missing or isinstance(command, Enroll):
            continue
        enrollment_id = getattr(command.data, "enrollment_id", None)
        if enrollment_id is None or not since <= command.issued_at <= until:
            continue
        if contact not in ids_of:
            ids_of[contact] = {
                ids.enrollment_id(account_id, contact, campaign_id, s)
                for s in range(1, SEQUENCES_CHECKED + 1)
            }
        if enrollment_id in ids_of[contact]:
            missing.add(contact)
    return sorted(missing)


def report(found: Backtest, sample: int = 5) -> dict[str, object]:
    """The backtest as data (`enrollstream backtest --json`): the counts of both runs and their difference,
    the contacts that differ, and the two timelines of the first `sample` of them."""
    comparison = found.comparison
    baseline, changed = comparison.totals("baseline"), comparison.totals("changed")
    differing = comparison.differing()

    def lines(run: ContactRun) -> list[dict[str, str]]:
        return [{"at": h.at.isoformat(), "what": h.what} for h in run.timeline]

    return {
        "account_id": found.account_id,
        "campaign_id": found.campaign_id,
        "from": found.since.isoformat(),
        "to": found.until.isoformat(),
        "baseline_version": found.baseline.version,
        "contacts": len(comparison.baseline),
        "counts": {
            metric: {
                "current": baseline[metric],
                "changed": changed[metric],
                "difference": changed[metric] - baseline[metric],
            }
            for metric in METRICS
        },
        "differing_contacts": len(differing),
        "sample": [
            {
                "contact_id": c,
                "current": lines(comparison.baseline[c]),
                "changed": lines(comparison.changed[c]),
            }
            for c in differing[:sample]
        ],
        "out_of_reach": found.out_of_reach,
        "log_start": found.log_start.isoformat() if found.log_start else None,
        "records_read": found.records_read,
        "notes": found.notes,
    }
