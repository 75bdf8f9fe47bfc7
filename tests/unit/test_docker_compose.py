"""docker-compose.yml cannot run here (no Docker engine); this checks it agrees with the code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from enrollstream.config import Settings
from enrollstream.stack.local_kafka import KAFKA_VERSION, SERVER_PROPERTIES

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_it_runs_kafka_postgres_and_the_worker() -> None:
    assert set(compose()["services"]) == {"kafka", "postgres", "worker"}


def test_kafka_is_the_pinned_version_configured_for_transactions_on_one_node() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    env = kafka["environment"]
    # The same settings the local stack writes into its server.properties.
    for prop in (
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "offsets.topic.replication.factor=1",
        "auto.create.topics.enable=false",
    ):
        assert prop in SERVER_PROPERTIES
        name, value = prop.split("=")
        assert env["KAFKA_" + name.upper().replace(".", "_")] == value
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_ports_are_published_on_loopback_only() -> None:
    for service in compose()["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:")


def test_the_worker_environment_is_what_the_settings_read_and_points_at_the_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    env = services["worker"]["environment"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.kafka_bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]
    assert settings.database_url == env["DATABASE_URL"]
    assert settings.partitions == int(env["ENROLLSTREAM_PARTITIONS"])
    assert settings.topic_prefix == env["ENROLLSTREAM_TOPIC_PREFIX"]
    known = {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"} | {
        f"ENROLLSTREAM_{name.upper()}" for name in Settings.model_fields
    }
    assert set(env) <= known, f"variables the code does not read: {set(env) - known}"
    # The worker reaches Kafka on the listener Kafka advertises inside the compose network.
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"PLAINTEXT://{env['KAFKA_BOOTSTRAP_SERVERS']}" in advertised
    pg = services["postgres"]["environment"]
    assert env["DATABASE_URL"].endswith(f"@postgres:5432/{pg['POSTGRES_DB']}")
    assert {"kafka", "postgres"} <= set(services["worker"]["depends_on"])
