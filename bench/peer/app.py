"""The peer: the decider's decisions as a Quix Streams application (exactly-once, RocksDB state).

Runs in its own virtual environment (bench/peer/.venv: quixstreams pins older pydantic and
confluent-kafka), started by bench/peer/scenario.py as a subprocess:

    bench/peer/.venv/bin/python -m bench.peer.app --bootstrap HOST:PORT --commands TOPIC ...

It reads the commands topic and decides each command with enrollstream's own pure domain (`parse_command`,
`decide_and_fold`, `command_result`, `to_integration_events`, `snapshot_bytes` / `state_from_snapshot`),
imported from this checkout, exactly as the decider's `_prepare_one` and `_decide` use it: the campaign
comes from the campaigns topic (read to its end at start), never from the command; a record that is
empty, too large, keyed by bytes that are not UTF-8 or not a valid command becomes a dead letter; a
record keyed by another contact is refused with `account_mismatch`. What the decider does besides (MX
lookups, BulkEnroll fan-out, `issued_at` skew, `state_too_large`) the bench workload never reaches;
a difference would show in the scenario's check of the outputs.

The contact's state lives in the Quix state store (RocksDB, changelog topic), as the compact snapshot
bytes the decider writes to its changelog. A memo keeps the parsed state next to the bytes it was parsed
from, and is used only while the store still holds those very bytes (so the store stays the truth, and
an unchanged contact is not re-parsed on every command, as the decider keeps its states in memory).

Outputs go, in Quix's transaction, to `<prefix>events`, `<prefix>integration`, `<prefix>results` and
`<prefix>dead_letters`. The first processed record prints `{"started": <time.monotonic()>}` on stdout
(the bench's clock starts there); SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from quixstreams import Application
from quixstreams.models.serializers import Serializer

from enrollstream.domain import (
    BulkEnroll,
    CampaignDefinition,
    ContactState,
    Enroll,
    aggregate_key,
    command_result,
    decide_and_fold,
    initial_state,
    parse_command,
    snapshot_bytes,
    state_from_snapshot,
    to_integration_events,
)
from enrollstream.domain.rejections import Accepted, Rejection, RejectionCode

log = logging.getLogger("bench.peer")

MAX_COMMAND_BYTES = 256 * 1024  # as enrollstream.adapters.kafka.records (which imports aiokafka)
MEMO_LIMIT = 200_000  # parsed states kept; cleared when full (a memo, not the state)
STATE_KEY = "snapshot"

Output = tuple[str, bytes | None, bytes | None]  # (topic suffix, key, value)


class Catalog:
    """The campaigns topic read to its end once at start: latest definition per (account, campaign) and
    every version published under its versioned key (what `CampaignCatalog` resolves)."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str], CampaignDefinition] = {}
        self.versions: dict[tuple[str, str, int], CampaignDefinition] = {}

    def load(self, bootstrap: str, topic: str) -> None:
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "bench-peer-catalog", "enable.auto.commit": False}
        )
        try:
            metadata = consumer.list_topics(topic, timeout=30)
            partitions = list(metadata.topics[topic].partitions)
            ends: dict[int, int] = {}
            for p in partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                ends[p] = high
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            done = {p for p, end in ends.items() if end == 0}
            deadline = time.monotonic() + 60
            while len(done) < len(partitions):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"campaigns topic {topic} not read to its end within 60 s")
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                self._apply(message.key(), message.value())
                if message.offset() + 1 >= ends[message.partition()]:
                    done.add(message.partition())
        finally:
            consumer.close()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None or value is None:
            return
        ref = json.loads(key)
        campaign = CampaignDefinition.model_validate_json(value)
        versioned = (campaign.account_id, campaign.campaign_id, campaign.version)
        known = self.versions.get(versioned)
        if known is None or known != campaign:
            self.versions[versioned] = campaign
        shared = self.versions[versioned]
        if len(ref) == 2:
            latest = self.latest.get((campaign.account_id, campaign.campaign_id))
            if latest is None or campaign.version >= latest.version:
                self.latest[(campaign.account_id, campaign.campaign_id)] = shared

    def get_version(self, account_id: str, campaign_id: str, version: int) -> CampaignDefinition | None:
        return self.versions.get((account_id, campaign_id, version))

    def resolves(self, account_id: str, campaign: CampaignDefinition) -> bool:
        known = self.versions.get((account_id, campaign.campaign_id, campaign.version))
        return known is not None and (known is campaign or known == campaign)


def encode(model: Any) -> bytes:
    return model.model_dump_json().encode()  # type: ignore[no-any-return]


def dead_letter(key: bytes | None, value: bytes | None) -> list[Output]:
    return [("dead_letters", key, value)]


class Decider:
    """One record in, its outputs out; the contact's state read from and written to the Quix state."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.memo: dict[str, tuple[bytes, ContactState]] = {}
        self.started = False

    def process(
        self, value: bytes | None, key: bytes | None, timestamp: int, headers: Any, state: Any
    ) -> list[Output]:
        if not self.started:
            self.started = True
            print(json.dumps({"started": time.monotonic()}), flush=True)
        if value is None or len(value) > MAX_COMMAND_BYTES:
            return dead_letter(key, value)
        try:
            record_key = None if key is None else key.decode()
        except UnicodeDecodeError:
            return dead_letter(key, value)
        try:
            command = parse_command(value)
        except Exception:
            return dead_letter(key, value)
        if isinstance(command, BulkEnroll):
            return dead_letter(key, value)  # no fan-out in the peer (the bench workload has none)
        if isinstance(command, Enroll):
            # Only the catalog says what the campaign is (upstream's, and an MX answer, are dropped).
            campaign = self.catalog.latest.get((command.account_id, command.data.campaign_id))
            data = command.data.model_copy(update={"campaign": campaign, "mx": None})
            command = command.model_copy(update={"data": data})
        try:
            return self._decide(command, record_key, state)
        except Exception:
            log.warning("could not decide a record", exc_info=True)
            return dead_letter(key, value)

    def _decide(self, command: Any, record_key: str | None, state: Any) -> list[Output]:
        key = aggregate_key(command.account_id, command.contact_id)
        out_key = key.encode()
        if record_key != key:
            rejection = Rejection(
                RejectionCode.ACCOUNT_MISMATCH,
                f"record key {record_key!r} is not the command's aggregate key {key!r}",
            )
            return [("results", out_key, encode(command_result(command, rejection)))]
        before = self._state(key, state, command)
        decision, after = decide_and_fold(command, before)
        changed = isinstance(decision, Accepted) and bool(decision.events)
        outputs: list[Output] = []
        if isinstance(decision, Accepted) and changed:
            for event in decision.events:
                outputs.append(("events", out_key, encode(event)))
                public_key = (event.enrollment_id or key).encode()
                outputs.extend(("integration", public_key, encode(p)) for p in to_integration_events(event))
            snapshot = snapshot_bytes(after, self.catalog.resolves)
            state.set_bytes(STATE_KEY, snapshot)
            if len(self.memo) >= MEMO_LIMIT:
                self.memo.clear()
            self.memo[key] = (snapshot, after)
        outputs.append(("results", out_key, encode(command_result(command, decision, after.version))))
        return outputs

    def _state(self, key: str, state: Any, command: Any) -> ContactState:
        stored = state.get_bytes(STATE_KEY)
        if stored is None:
            return initial_state(command.account_id, command.contact_id)
        memo = self.memo.get(key)
        if memo is not None and (memo[0] is stored or memo[0] == stored):
            return memo[1]
        parsed = state_from_snapshot(stored, self.catalog.get_version)
        self.memo[key] = (stored, parsed)
        return parsed


class Payload(Serializer):  # type: ignore[misc]
    """An output's value as it was encoded (the output tuple's third item)."""

    def __call__(self, value: Output, ctx: Any) -> bytes | None:
        return value[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer.app", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--commands", required=True, help="the commands topic")
    parser.add_argument("--campaigns", required=True, help="the campaigns topic")
    parser.add_argument("--prefix", required=True, help="prefix of the output topics")
    parser.add_argument("--group", required=True, help="consumer group")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--commit-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    catalog = Catalog()
    catalog.load(args.bootstrap, args.campaigns)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_interval=args.commit_interval,
        state_dir=args.state_dir,
        loglevel="WARNING",
    )
    commands = app.topic(args.commands, key_deserializer="bytes", value_deserializer="bytes")
    outputs = {
        name: app.topic(f"{args.prefix}{name}", key_serializer="bytes", value_serializer=Payload())
        for name in ("events", "integration", "results", "dead_letters")
    }
    decider = Decider(catalog)
    sdf = app.dataframe(commands)
    sdf = sdf.apply(decider.process, stateful=True, metadata=True, expand=True)
    sdf.to_topic(lambda value, key, timestamp, headers: outputs[value[0]], key=lambda value: value[1])
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
