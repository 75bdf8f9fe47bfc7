"""The AsyncAPI document covers every topic the deployment creates, with the models' messages."""

from __future__ import annotations

import json

from enrollstream.adapters.kafka.topics import Topics
from enrollstream.asyncapi import PREFIX, render
from enrollstream.domain import COMMAND_TYPES, EVENT_TYPES, INTEGRATION_EVENT_TYPES


def test_every_topic_is_a_channel() -> None:
    document = json.loads(render())
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {spec.name for spec in Topics(PREFIX).specs(1)}


def test_every_command_event_and_integration_event_is_a_described_message() -> None:
    schemas = json.loads(render())["components"]["schemas"]
    names = {model.__name__ for model in (*COMMAND_TYPES, *EVENT_TYPES, *INTEGRATION_EVENT_TYPES)}
    assert names <= set(schemas), sorted(names - set(schemas))
