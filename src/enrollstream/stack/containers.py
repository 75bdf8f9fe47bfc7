"""Kafka and PostgreSQL in containers, for hosts where a Docker engine answers (testcontainers)."""

from __future__ import annotations

import os
import subprocess

# The same versions the local-process stack runs: Confluent Platform 7.9 ships Apache Kafka 3.9.
KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"
POSTGRES_IMAGE = "postgres:17-alpine"


def docker_engine_answers() -> bool:
    """True when a Docker engine (not just the client) responds to a ping."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
    except Exception:  # no socket, permission denied, engine down: all mean "no engine"
        return False
    return True


def start_kafka_container() -> tuple[str, str]:
    """Returns (container id, bootstrap servers). The container outlives this process; `down` removes it."""
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.kafka import KafkaContainer

    container = KafkaContainer(KAFKA_IMAGE).with_kraft()
    container.start()
    return container.get_wrapped_container().id, container.get_bootstrap_server()


def start_postgres_container() -> tuple[str, str]:
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer(POSTGRES_IMAGE, username="postgres", password="postgres", dbname="postgres")
    container.start()
    url = container.get_connection_url(driver=None)
    return container.get_wrapped_container().id, url


def remove_container(container_id: str) -> None:
    subprocess.run(["docker", "rm", "-f", container_id], capture_output=True, check=False)
