"""docker-compose.yml cannot run here (no Docker engine); this checks it agrees with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from enrollstream.config import Settings
from enrollstream.runtime.worker import DEFAULT_ROLES, check_settings
from enrollstream.stack.local_kafka import KAFKA_VERSION, SERVER_PROPERTIES

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


_DEFAULTED = re.compile(r"^\$\{(\w+):-(.*)\}$")


def interpolated(name: str, value: str) -> str:
    """What compose passes when the variable is not set: `${NAME:-default}` -> default."""
    match = _DEFAULTED.match(value)
    if match is None:
        assert "$" not in value, f"{name}: only ${{{name}:-default}} interpolation is checked here"
        return value
    assert match.group(1) == name, f"{name} defaults from another variable: {value}"
    return match.group(2)


def worker_environment() -> dict[str, str]:
    return {
        name: interpolated(name, str(value))
        for name, value in compose()["services"]["worker"]["environment"].items()
    }


def test_it_runs_kafka_postgres_an_smtp_sink_the_worker_and_the_api() -> None:
    assert set(compose()["services"]) == {"kafka", "postgres", "mailpit", "worker", "api"}
    api = compose()["services"]["api"]
    assert api["command"][-1].endswith("enrollstream api")
    # The same topics and database as the worker, so the API's commands reach its decider.
    shared = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "ENROLLSTREAM_TOPIC_PREFIX", "ENROLLSTREAM_GROUP_ID")
    for name in shared:
        assert api["environment"][name] == compose()["services"]["worker"]["environment"][name]
    assert api["ports"] == [f"127.0.0.1:{api['environment']['ENROLLSTREAM_API_PORT']}:8080"]


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
    env = worker_environment()
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


def test_the_worker_runs_the_default_roles_with_every_setting_they_need(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"ENROLLSTREAM_{name.upper()}", raising=False)
    for name, value in worker_environment().items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    # `enrollstream worker` without --roles, here and in the image: the roles a sequence needs.
    assert services["worker"]["command"][-1].endswith("enrollstream worker")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["enrollstream", "worker"]' in dockerfile
    assert {"decider", "projector", "scheduler", "dispatcher"} <= set(DEFAULT_ROLES)
    check_settings(settings, DEFAULT_ROLES)  # raises InvalidSettings naming what is missing
    # The dispatcher sends to the sink's SMTP port inside the compose network, in the clear (the sink
    # offers no TLS), and the worker waits for it.
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_starttls) == ("mailpit", 1025, False)
    assert "mailpit" in services["worker"]["depends_on"]


def test_the_worker_is_restarted_when_it_exits_on_a_failure() -> None:
    assert compose()["services"]["worker"]["restart"] in ("on-failure", "unless-stopped", "always")
